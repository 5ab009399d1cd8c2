"""Fixtures: the app in-process with chosen settings (no worker), and data/outside folders for path checks."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from backend.main import create_app
from backend.settings import Settings

TINY = {"backbone": "tiny-bert", "method": "full", "task": "sst2",
        "hyperparameters": {"epochs": 1, "max_train_samples": 32, "max_eval_samples": 32, "batch_size": 8,
                            "max_seq_len": 32}}


@pytest.fixture
def data_dir(tmp_path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture
def make_client(tmp_path, data_dir):
    """make_client(**settings) -> a TestClient on a fresh SQLite database in data_dir; closed at the end."""
    stack = contextlib.ExitStack()

    def make(**overrides) -> TestClient:
        settings = Settings(data_dir=data_dir, database_url=f"sqlite:///{data_dir / 'mefts.db'}", **overrides)
        return stack.enter_context(TestClient(create_app(settings, start_worker=False, frontend_dir=None), base_url="http://127.0.0.1"))

    with stack:
        yield make


def total_runs(client: TestClient) -> int:
    r = client.get("/api/runs", params={"limit": 1})
    assert r.status_code == 200, r.text
    return r.json()["total"]
