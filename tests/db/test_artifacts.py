"""A run's kept model and its resumption in the store: migration 0004 on a database of the release before it (0003),
and the metric points of a resumed attempt (carried over once, never written twice)."""

from __future__ import annotations

import datetime as dt

import pytest
from alembic import command
from sqlalchemy import MetaData, inspect, select, text

from db import crud
from db.models import MetricPoint, RunStatus
from db.session import alembic_config, make_engine, make_sessionmaker, session_scope, upgrade_database

from .conftest import DATABASES, HEAD
from .test_crud import _add_runs, _fields

NEW_COLUMNS = {"artifact_path", "artifact_bytes", "artifact_sha256", "resumed_from_epoch"}


@pytest.fixture(params=DATABASES)
def empty_url(request, tmp_path) -> str:
    """A database with no schema yet, on SQLite or PostgreSQL."""
    if request.param == "postgresql":
        return request.getfixturevalue("pg_url")
    return f"sqlite:///{tmp_path / 'mefts.db'}"


def _seed_0003(engine) -> int:
    """A succeeded run with metric points and a memory report, written as release 0003 wrote them (its tables,
    reflected: the 0004 model does not describe them)."""
    meta = MetaData()
    meta.reflect(engine, only=["runs", "metric_points", "memory_reports"])
    runs, points, memory = meta.tables["runs"], meta.tables["metric_points"], meta.tables["memory_reports"]
    assert not NEW_COLUMNS & set(runs.c.keys())
    now = dt.datetime(2026, 1, 2, 3, 4, 5)
    with engine.begin() as c:
        rid = c.execute(runs.insert().values(
            config={"backbone": "tiny-bert", "method": "lora", "task": "sst2", "seed": 1}, backbone="tiny-bert",
            method="lora", method_label="lora(r=16)", task="sst2", seed=1, device="cpu", needs_gpu=False,
            status="succeeded", priority=0, attempts=1, max_attempts=3, cancel_requested=False, created_at=now,
            updated_at=now, progress=1.0, log_tail="epoch 1: done\n", score=0.75, peak_bytes=123456,
            result={"test_metrics": {"accuracy": 0.75}},
        ).returning(runs.c.id)).scalar_one()
        c.execute(points.insert(), [
            {"run_id": rid, "attempt": 1, "step": s, "epoch": 1, "name": "step_loss", "value": 1.0 / s,
             "created_at": now} for s in (1, 2, 3)
        ])
        c.execute(memory.insert().values(run_id=rid, attempt=1, created_at=now, peak_bytes=123456))
    return rid


def test_migration_0004_upgrades_a_0003_database_and_back(empty_url):
    engine = make_engine(empty_url)
    command.upgrade(alembic_config(empty_url), "0003")  # the schema of the release before this one
    rid = _seed_0003(engine)

    upgrade_database(empty_url)  # what `mefts serve` does at start-up
    columns = {c["name"]: c for c in inspect(engine).get_columns("runs")}
    assert NEW_COLUMNS <= set(columns) and all(columns[n]["nullable"] for n in NEW_COLUMNS)
    with engine.connect() as c:
        assert c.execute(text("SELECT version_num FROM alembic_version")).scalar() == HEAD
    factory = make_sessionmaker(engine)
    with session_scope(factory) as s:
        run = crud.get_run(session=s, run_id=rid)
        # the old run is intact and simply has no model: it trained before models were kept
        assert (run.status, run.method_label, run.score, run.peak_bytes) == ("succeeded", "lora(r=16)", 0.75, 123456)
        assert run.result == {"test_metrics": {"accuracy": 0.75}} and run.log_tail == "epoch 1: done\n"
        assert (run.artifact_path, run.artifact_bytes, run.artifact_sha256, run.resumed_from_epoch) == (None,) * 4
        assert [p.value for p in crud.metric_points(session=s, run_id=rid)] == [1.0, 0.5, 1.0 / 3]
        # and the new columns take values (a 64-character sha256, a size past 32 bits)
        run.artifact_path, run.artifact_bytes, run.artifact_sha256 = "runs/1/model.tar.gz", 5 * 2**32, "f" * 64
    with session_scope(factory) as s:
        assert crud.get_run(session=s, run_id=rid).artifact_bytes == 5 * 2**32

    command.downgrade(alembic_config(empty_url), "0003")
    assert not NEW_COLUMNS & {c["name"] for c in inspect(engine).get_columns("runs")}
    with engine.connect() as c:
        assert c.execute(text("SELECT status, score FROM runs WHERE id = :i"), {"i": rid}).one() == ("succeeded", 0.75)
    engine.dispose()


# ------------------------------------------------------------------------------------------------ resumed attempts
def _claim(factory, rid: int) -> int:
    with session_scope(factory) as s:
        run = crud.claim_next_run(session=s, worker_id="w", host="h", lease_seconds=60, slot="cpu:0")
        assert run.id == rid
        return run.attempts


def _requeue(factory, rid: int, attempt: int) -> None:
    with session_scope(factory) as s:
        assert crud.requeue_or_fail(session=s, run_id=rid, attempt=attempt, error="killed") == "queued"


def _epoch(epoch: int, steps: range, value: float) -> list[dict]:
    """The points one epoch reports: a loss per step, then the dev metric at the epoch's last step."""
    return ([{"step": s, "epoch": epoch, "name": "step_loss", "value": value + s} for s in steps]
            + [{"step": steps[-1], "epoch": epoch, "name": "dev_accuracy", "value": value}])


def _series(factory, rid: int, attempt: int) -> list[tuple[str, int, int, float]]:
    with session_scope(factory) as s:
        return [(p.name, p.epoch, p.step, p.value) for p in crud.metric_points(session=s, run_id=rid, attempt=attempt)]


def test_a_resumed_attempt_carries_the_restored_epochs_points_once(factory):
    with session_scope(factory) as s:
        rid = crud.create_run(session=s, fields=_fields(0, max_attempts=5)).id
    # attempt 1: epoch 1 complete (and checkpointed), killed in epoch 2 after two steps
    a1 = _claim(factory, rid)
    with session_scope(factory) as s:
        assert crud.add_metric_points(session=s, run_id=rid, attempt=a1, points=_epoch(1, range(1, 5), 0.5)) == 5
        assert crud.add_metric_points(session=s, run_id=rid, attempt=a1, points=_epoch(2, range(5, 7), 0.6)[:2]) == 2
        # a flush that arrives twice stores nothing the second time
        assert crud.add_metric_points(session=s, run_id=rid, attempt=a1, points=_epoch(1, range(1, 5), 0.5)) == 0
    epoch1 = [p for p in _series(factory, rid, a1) if p[1] == 1]
    _requeue(factory, rid, a1)

    # attempt 2 resumes from epoch 1: it takes epoch 1's points; attempt 1 keeps the epoch it did not finish
    a2 = _claim(factory, rid)
    with session_scope(factory) as s:
        assert crud.get_run(session=s, run_id=rid).resumed_from_epoch is None  # cleared by the claim
        assert crud.carry_metric_points(session=s, run_id=rid, attempt=a1, through_epoch=1) == 0  # fenced
        assert crud.carry_metric_points(session=s, run_id=rid, attempt=a2, through_epoch=1) == 5
        assert crud.carry_metric_points(session=s, run_id=rid, attempt=a2, through_epoch=1) == 0  # once
    assert _series(factory, rid, a2) == epoch1
    assert [(p[0], p[1], p[2]) for p in _series(factory, rid, a1)] == [("step_loss", 2, 5), ("step_loss", 2, 6)]
    # it trains epoch 2 again, and dies in epoch 3 before that epoch's checkpoint
    with session_scope(factory) as s:
        crud.add_metric_points(session=s, run_id=rid, attempt=a2, points=_epoch(2, range(5, 9), 0.7))
        crud.add_metric_points(session=s, run_id=rid, attempt=a2, points=_epoch(3, range(9, 10), 0.8)[:1])
    _requeue(factory, rid, a2)

    # attempt 3 resumes from epoch 2's checkpoint (attempt 2's): epochs 1 and 2 from attempt 2, each point once
    a3 = _claim(factory, rid)
    with session_scope(factory) as s:
        assert crud.carry_metric_points(session=s, run_id=rid, attempt=a3, through_epoch=2) == 10
        crud.add_metric_points(session=s, run_id=rid, attempt=a3, points=_epoch(3, range(9, 13), 0.9))
        assert crud.finish_run(session=s, run_id=rid, attempt=a3, status=RunStatus.succeeded)
    final = _series(factory, rid, a3)
    loss = [(p[1], p[2]) for p in final if p[0] == "step_loss"]
    assert loss == [(e, s) for e, s in zip([1] * 4 + [2] * 4 + [3] * 4, range(1, 13), strict=True)]
    assert [(p[1], p[3]) for p in final if p[0] == "dev_accuracy"] == [(1, 0.5), (2, 0.7), (3, 0.9)]
    assert [p for p in final if p[1] == 1] == epoch1  # the values stored by attempt 1, unchanged
    with session_scope(factory) as s:
        every = list(s.execute(select(MetricPoint.name, MetricPoint.step, MetricPoint.epoch, MetricPoint.attempt)
                               .where(MetricPoint.run_id == rid)))
    # nothing lost: 12 + 3 points of the final history, attempt 1's two and attempt 2's one unfinished-epoch points
    assert len(every) == 15 + 2 + 1
    assert sorted(a for *_, a in every) == [a1] * 2 + [a2] * 1 + [a3] * 15


def test_a_fresh_start_after_an_unfinished_first_epoch_carries_nothing(factory):
    (rid,) = _add_runs(factory, 1)
    a1 = _claim(factory, rid)
    with session_scope(factory) as s:
        crud.add_metric_points(session=s, run_id=rid, attempt=a1, points=_epoch(1, range(1, 3), 0.5)[:2])
    _requeue(factory, rid, a1)
    a2 = _claim(factory, rid)
    with session_scope(factory) as s:
        assert crud.carry_metric_points(session=s, run_id=rid, attempt=a2, through_epoch=0) == 0
    assert _series(factory, rid, a2) == [] and len(_series(factory, rid, a1)) == 2
