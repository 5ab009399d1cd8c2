"""Fixtures: the app in-process (httpx through TestClient, no worker) and a real `mefts serve` subprocess."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from backend.main import create_app
from backend.settings import Settings
from tests.serve import REPO, ServeProcess, kill_job_groups, wait_for

__all__ = ["DATABASES", "FAST_ENV", "LONG", "REPO", "TINY", "pid_alive", "wait_for"]

# Fast timings for tests: heartbeats twice a second, leases of a few seconds, progress written often.
FAST_ENV = {
    "MEFTS_HEARTBEAT_SECONDS": "0.5",
    "MEFTS_LEASE_SECONDS": "4",
    "MEFTS_POLL_SECONDS": "0.2",
    "MEFTS_MAX_IDLE_POLL_SECONDS": "0.5",
    "MEFTS_PROGRESS_INTERVAL_SECONDS": "0.2",
    "MEFTS_KILL_GRACE_SECONDS": "3",
    "MEFTS_CPU_SLOTS": "1",
    "MEFTS_CPU_COUNT": "1",  # one torch thread per job: the test machine has 2 cores
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
}

# A run that finishes in seconds, and one long enough to act on while it runs.
TINY = {"backbone": "tiny-bert", "method": "full", "task": "sst2",
        "hyperparameters": {"epochs": 1, "max_train_samples": 32, "max_eval_samples": 32, "batch_size": 8,
                            "max_seq_len": 32}}
LONG = {"backbone": "tiny-bert", "method": "full", "task": "sst2",
        "hyperparameters": {"epochs": 200, "max_train_samples": 256, "max_eval_samples": 16, "batch_size": 8,
                            "max_seq_len": 32, "patience": 1000, "measure_memory": False}}


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


# A module runs its tests on both databases with `pytestmark = pytest.mark.parametrize("db_backend", DATABASES,
# indirect=True)`; elsewhere `settings` is on SQLite.
DATABASES = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture
def db_backend(request) -> str:
    return getattr(request, "param", "sqlite")


@pytest.fixture
def settings(request, tmp_path, db_backend) -> Settings:
    if db_backend == "postgresql":
        return Settings(data_dir=tmp_path, database_url=request.getfixturevalue("pg_url"))
    return Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'mefts.db'}")


@pytest.fixture
def client(settings):
    """The real app (migrations, routes) through httpx's ASGI transport; no worker runs."""
    with TestClient(create_app(settings, start_worker=False, frontend_dir=None), base_url="http://127.0.0.1") as c:
        yield c


class Server(ServeProcess):
    """tests/serve.py's server with the embedded worker and FAST_ENV, an httpx client and run-status helpers."""

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None) -> None:
        super().__init__(data_dir, worker=True, env={**FAST_ENV, **(env or {})})
        self.http = httpx.Client(base_url=self.url, timeout=30)

    def run(self, run_id: int) -> dict:
        r = self.http.get(f"/api/runs/{run_id}")
        assert r.status_code == 200, r.text
        return r.json()

    def wait_status(self, run_id: int, statuses: set[str], timeout: float = 90) -> dict:
        return wait_for(lambda: (lambda r: r if r["status"] in statuses else None)(self.run(run_id)), timeout, 0.2,
                        f"run {run_id} to reach {statuses}")


@pytest.fixture
def make_server(tmp_path):
    """Start servers on one data directory (a restart is a second start); all are stopped at the end."""
    servers: list[Server] = []

    def start(env: dict[str, str] | None = None) -> Server:
        server = Server(tmp_path, env).start()
        servers.append(server)
        return server

    yield start
    for s in servers:
        s.stop()
        s.http.close()
    kill_job_groups(tmp_path / "mefts.db")
