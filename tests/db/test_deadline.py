"""A run's stored deadline: migration 0005 on a database of the release before it (0004) with rows in it, and the
queries the dispatcher enforces it with (any worker's runs past it; a new attempt starts without one)."""

from __future__ import annotations

import datetime as dt

from alembic import command
from sqlalchemy import MetaData, inspect, text

from db import crud
from db.models import RunStatus
from db.session import alembic_config, make_engine, make_sessionmaker, session_scope, upgrade_database

from .conftest import HEAD
from .test_artifacts import empty_url  # noqa: F401  (the fixture: an empty database on SQLite or PostgreSQL)
from .test_crud import _add_runs

T0 = dt.datetime(2026, 1, 2, 3, 4, 5)


def _seed_0004(engine) -> dict[str, int]:
    """A succeeded run with its artifact and metric points and a running one, as release 0004 wrote them (reflected
    tables: the 0005 model does not describe them)."""
    meta = MetaData()
    meta.reflect(engine, only=["runs", "metric_points"])
    runs, points = meta.tables["runs"], meta.tables["metric_points"]
    assert "deadline_at" not in runs.c
    common = dict(config={"backbone": "tiny-bert", "method": "lora", "task": "sst2", "seed": 1, "timeout_s": 60},
                  backbone="tiny-bert", method="lora", method_label="lora(r=16)", task="sst2", seed=1, device="cpu",
                  needs_gpu=False, priority=0, attempts=1, max_attempts=3, cancel_requested=False, created_at=T0,
                  updated_at=T0, started_at=T0, log_tail="")
    ids = {}
    with engine.begin() as c:
        ids["done"] = c.execute(runs.insert().values(
            **common, status="succeeded", progress=1.0, score=0.75, artifact_path="runs/1/model.tar.gz",
            artifact_bytes=5 * 2**32, artifact_sha256="f" * 64, resumed_from_epoch=0,
        ).returning(runs.c.id)).scalar_one()
        ids["running"] = c.execute(runs.insert().values(
            **common, status="running", progress=0.5, worker_id="w", host="h", pid=4321,
            lease_expires_at=T0 + dt.timedelta(seconds=30),
        ).returning(runs.c.id)).scalar_one()
        c.execute(points.insert(), [{"run_id": ids["done"], "attempt": 1, "step": s, "epoch": 1, "name": "step_loss",
                                     "value": 1.0 / s, "created_at": T0} for s in (1, 2)])
    return ids


def test_migration_0005_upgrades_a_0004_database_with_rows(empty_url):  # noqa: F811
    engine = make_engine(empty_url)
    command.upgrade(alembic_config(empty_url), "0004")  # the schema of the release before this one
    ids = _seed_0004(engine)

    upgrade_database(empty_url)  # what `mefts serve` does at start-up
    column = {c["name"]: c for c in inspect(engine).get_columns("runs")}["deadline_at"]
    assert column["nullable"]
    with engine.connect() as c:
        assert c.execute(text("SELECT version_num FROM alembic_version")).scalar() == HEAD
    factory = make_sessionmaker(engine)
    with session_scope(factory) as s:
        done, running = (crud.get_run(session=s, run_id=ids[k]) for k in ("done", "running"))
        assert (done.status, done.score, done.artifact_bytes, done.artifact_sha256) == ("succeeded", 0.75,
                                                                                        5 * 2**32, "f" * 64)
        assert [p.value for p in crud.metric_points(session=s, run_id=ids["done"])] == [1.0, 0.5]
        assert (running.status, running.pid, running.lease_expires_at) == ("running", 4321, T0 + dt.timedelta(0, 30))
        # an attempt started by the old release has no deadline: nothing times it out by surprise after the upgrade
        assert done.deadline_at is None and running.deadline_at is None
        assert crud.runs_past_deadline(session=s, now=T0 + dt.timedelta(days=1)) == []
        running.deadline_at = T0 + dt.timedelta(seconds=60)
    with session_scope(factory) as s:
        assert [r.id for r in crud.runs_past_deadline(session=s, now=T0 + dt.timedelta(seconds=61))] == [ids["running"]]
    engine.dispose()


def test_runs_past_deadline_finds_any_workers_running_runs_and_a_claim_clears_it(factory):
    a, b, c = _add_runs(factory, 3)
    with session_scope(factory) as s:
        for worker in ("w1", "w2", "w3"):
            crud.claim_next_run(session=s, worker_id=worker, host="h", lease_seconds=60, slot="cpu:0")
        for rid, seconds in ((a, 10), (b, 100), (c, 10)):
            assert crud.set_run_info(session=s, run_id=rid, attempt=1, values={"deadline_at": T0 + dt.timedelta(0, seconds)})
        assert crud.finish_run(session=s, run_id=c, attempt=1, status=RunStatus.succeeded)
    with session_scope(factory) as s:
        # a's deadline passed (whichever worker runs it); b's has not; c finished before its deadline
        assert [r.id for r in crud.runs_past_deadline(session=s, now=T0 + dt.timedelta(seconds=11))] == [a]
        assert crud.requeue_or_fail(session=s, run_id=a, attempt=1, error="killed") == "queued"
    with session_scope(factory) as s:
        run = crud.claim_next_run(session=s, worker_id="w4", host="h", lease_seconds=60, slot="cpu:0")
        assert (run.id, run.attempts, run.deadline_at) == (a, 2, None)  # the new attempt's clock starts in its job
        assert crud.runs_past_deadline(session=s, now=T0 + dt.timedelta(seconds=11)) == []
