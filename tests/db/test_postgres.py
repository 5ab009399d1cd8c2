"""The store on PostgreSQL: the claim skips locked rows, concurrent start-ups migrate once, migrations go both ways
(the last one on SQLite too)."""

from __future__ import annotations

import multiprocessing as mp
import time

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, select, text
from sqlalchemy.dialects import postgresql

from db import crud
from db.models import Run, RunStatus
from db.session import alembic_config, make_engine, make_sessionmaker, session_scope, upgrade_database

from .test_crud import _add_runs, _fields


def test_claim_compiles_to_for_update_skip_locked():
    from sqlalchemy.orm import Session

    captured = []

    class Capture(Session):
        def execute(self, stmt, *a, **kw):
            captured.append(str(stmt.compile(dialect=postgresql.dialect())))
            raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        crud.claim_next_run(session=Capture(), worker_id="w", host="h", lease_seconds=5, slot="cpu:0")
    assert "FOR UPDATE SKIP LOCKED" in captured[0] and "RETURNING runs.id" in captured[0]


@pytest.mark.postgres
def test_a_claim_skips_a_row_another_transaction_holds(pg_url):
    upgrade_database(pg_url)
    engine = make_engine(pg_url)
    factory = make_sessionmaker(engine)
    first, second = _add_runs(factory, 2)
    with factory() as holder:  # another worker's claim, in the middle of its transaction
        assert holder.scalar(select(Run.id).where(Run.id == first).with_for_update()) == first
        t0 = time.monotonic()
        with session_scope(factory) as s:
            s.execute(text("SET lock_timeout = '3s'"))  # waiting on the lock would raise instead of hanging
            got = crud.claim_next_run(session=s, worker_id="w2", host="h", lease_seconds=5, slot="cpu:0")
        assert got.id == second and time.monotonic() - t0 < 2  # not blocked behind the lock: skipped it
        holder.rollback()
    with session_scope(factory) as s:
        assert crud.claim_next_run(session=s, worker_id="w1", host="h", lease_seconds=5, slot="cpu:0").id == first
    engine.dispose()


def _upgrade(url: str) -> None:
    upgrade_database(url)


@pytest.mark.postgres
def test_workers_starting_together_migrate_a_fresh_database_once(pg_url):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_upgrade, args=(pg_url,)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    engine = make_engine(pg_url)
    with engine.connect() as c:
        head = ScriptDirectory.from_config(alembic_config(pg_url)).get_current_head()
        assert c.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [head]
    engine.dispose()


def test_migrations_downgrade_to_base_and_back(db_url):
    """db_url (tests/db/conftest.py) is at head on SQLite or on PostgreSQL."""
    engine = make_engine(db_url)
    factory = make_sessionmaker(engine)
    (rid,) = _add_runs(factory, 1)
    command.downgrade(alembic_config(db_url), "0001")
    assert "peak_bytes" not in {c["name"] for c in inspect(engine).get_columns("runs")}
    command.downgrade(alembic_config(db_url), "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    upgrade_database(db_url)
    assert {"runs", "metric_points", "memory_reports", "sweeps", "workers"} <= set(inspect(engine).get_table_names())
    with session_scope(factory) as s:
        assert crud.create_run(session=s, fields=_fields(1)).id == 1  # the id sequence starts afresh
        assert crud.status_counts(session=s)[RunStatus.queued] == 1
    assert rid == 1
    engine.dispose()
