"""Migration 0006_data_source on a database of the release before it (0004): old runs get the source their stored
config implies (local with data_dir, packaged for the tasks that had a copy, hub otherwise), queued runs stay NULL."""

from __future__ import annotations

import datetime as dt

import pytest
from alembic import command
from sqlalchemy import MetaData, inspect, text

from db import crud
from db.session import alembic_config, make_engine, make_sessionmaker, session_scope, upgrade_database

from .conftest import DATABASES


@pytest.fixture(params=DATABASES)
def empty_url(request, tmp_path) -> str:
    if request.param == "postgresql":
        return request.getfixturevalue("pg_url")
    return f"sqlite:///{tmp_path / 'mefts.db'}"


OLD_RUNS = [  # (task, task_options, status, expected data_source)
    ("sst2", {}, "succeeded", "packaged"),
    ("sst2", {"data_dir": "/data/sst2"}, "succeeded", "local"),
    ("cola", {}, "failed", "hub"),
    ("local", {"train_file": "a.csv", "eval_file": "b.csv"}, "succeeded", "local"),
    ("rte", {}, "queued", None),
]


def _seed_0004(engine) -> list[int]:
    meta = MetaData()
    meta.reflect(engine, only=["runs"])
    runs = meta.tables["runs"]
    assert "data_source" not in runs.c
    now = dt.datetime(2026, 1, 2, 3, 4, 5)
    ids = []
    with engine.begin() as c:
        for task, options, status, _ in OLD_RUNS:
            ids.append(c.execute(runs.insert().values(
                config={"backbone": "tiny-bert", "method": "lora", "task": task, "seed": 1, "task_options": options},
                backbone="tiny-bert", method="lora", method_label="lora", task=task, seed=1, device="cpu",
                needs_gpu=False, status=status, priority=0, attempts=1, max_attempts=3, cancel_requested=False,
                created_at=now, updated_at=now, progress=1.0, score=0.5, log_tail="", result={"split": "old"},
            ).returning(runs.c.id)).scalar_one())
    return ids


def test_migration_0006_backfills_data_source_from_the_stored_config(empty_url):
    engine = make_engine(empty_url)
    command.upgrade(alembic_config(empty_url), "0004")
    ids = _seed_0004(engine)

    upgrade_database(empty_url)
    columns = {c["name"]: c for c in inspect(engine).get_columns("runs")}
    assert columns["data_source"]["nullable"]
    with session_scope(make_sessionmaker(engine)) as s:
        for rid, (task, _, status, expected) in zip(ids, OLD_RUNS):
            run = crud.get_run(session=s, run_id=rid)
            assert (run.task, run.status, run.data_source) == (task, status, expected)
            assert run.result == {"split": "old"} and run.score == 0.5  # nothing stored is lost

    command.downgrade(alembic_config(empty_url), "0004")
    assert "data_source" not in {c["name"] for c in inspect(engine).get_columns("runs")}
    with engine.connect() as c:
        assert c.execute(text("SELECT COUNT(*) FROM runs")).scalar() == len(OLD_RUNS)
