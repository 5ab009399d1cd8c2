"""The store: schema by migration, SQLite pragmas, the atomic claim, fencing and lease recovery."""

import datetime as dt
import multiprocessing as mp
import threading

from sqlalchemy import inspect, text

from db import crud
from db.models import RunStatus, utcnow
from db.session import make_engine, make_sessionmaker, session_scope

from .conftest import HEAD


def _fields(i: int = 0, **kw):
    cfg = {"backbone": "tiny-bert", "method": "full", "task": "sst2", "seed": i}
    return {"config": cfg, "backbone": "tiny-bert", "method": "full", "method_label": "full", "task": "sst2",
            "seed": i, **kw}


def _add_runs(factory, n: int) -> list[int]:
    with session_scope(factory) as s:
        return [crud.create_run(session=s, fields=_fields(i)).id for i in range(n)]


def test_migration_creates_schema_and_sqlite_pragmas(db_url):
    engine = make_engine(db_url)
    tables = set(inspect(engine).get_table_names())
    assert {"runs", "metric_points", "memory_reports", "sweeps", "workers", "bench_rows", "alembic_version"} <= tables
    indexes = {ix["name"] for ix in inspect(engine).get_indexes("runs")}
    assert {"ix_runs_claim", "ix_runs_status", "ix_runs_method", "ix_runs_updated_at"} <= indexes
    with engine.connect() as c:
        if engine.dialect.name == "sqlite":
            assert c.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert c.execute(text("PRAGMA foreign_keys")).scalar() == 1
            assert c.execute(text("PRAGMA busy_timeout")).scalar() >= 1000
        assert c.execute(text("SELECT version_num FROM alembic_version")).scalar() == HEAD


def _claim_all(url: str, worker: str, out) -> None:
    factory = make_sessionmaker(make_engine(url))
    mine = []
    while True:
        with session_scope(factory) as s:
            run = crud.claim_next_run(session=s, worker_id=worker, host="h", lease_seconds=60, slot="cpu:0")
            if run is None:
                break
            mine.append(run.id)
    out.put(mine) if hasattr(out, "put") else out.extend(mine)


def test_claim_processes_never_claim_a_run_twice(db_url, factory):
    ids = _add_runs(factory, 120)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_claim_all, args=(db_url, f"w{i}", q)) for i in range(4)]
    for p in procs:
        p.start()
    claimed = [rid for _ in procs for rid in q.get(timeout=120)]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert sorted(claimed) == sorted(ids)  # every run claimed exactly once
    with session_scope(factory) as s:
        assert crud.status_counts(session=s)[RunStatus.running] == 120
        _, runs = crud.list_runs(session=s, limit=None)
        assert {r.attempts for r in runs} == {1}


def test_claim_threads_never_claim_a_run_twice(db_url, factory):
    ids = _add_runs(factory, 80)
    results: list[list[int]] = [[] for _ in range(6)]
    threads = [threading.Thread(target=_claim_all, args=(db_url, f"t{i}", results[i])) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    claimed = [rid for r in results for rid in r]
    assert len(claimed) == len(set(claimed)) == len(ids)


def test_claim_order_priority_then_fifo_and_gpu_filter(factory):
    with session_scope(factory) as s:
        a = crud.create_run(session=s, fields=_fields(1)).id
        b = crud.create_run(session=s, fields=_fields(2, priority=5)).id
        g = crud.create_run(session=s, fields=_fields(3, priority=9, device="cuda", needs_gpu=True)).id
    with session_scope(factory) as s:
        got = [crud.claim_next_run(session=s, worker_id="w", host="h", lease_seconds=5, slot="cpu:0") for _ in range(3)]
    assert [r.id if r else None for r in got] == [b, a, None]  # the GPU run waits for a GPU slot
    with session_scope(factory) as s:
        r = crud.claim_next_run(session=s, worker_id="w", host="h", lease_seconds=5, slot="gpu:0", gpu_available=True)
        assert r.id == g


def test_writes_are_fenced_by_attempt(factory):
    (rid,) = _add_runs(factory, 1)
    with session_scope(factory) as s:
        run = crud.claim_next_run(session=s, worker_id="w", host="h", lease_seconds=5, slot="cpu:0")
        assert run.attempts == 1
        # a job of an older attempt cannot write
        assert not crud.update_progress(session=s, run_id=rid, attempt=0, step=1, total_steps=2, epoch=1, loss=0.5)
        assert not crud.finish_run(session=s, run_id=rid, attempt=2, status=RunStatus.succeeded)
        assert crud.finish_run(session=s, run_id=rid, attempt=1, status=RunStatus.succeeded)
        # a finished run cannot be finished again
        assert not crud.finish_run(session=s, run_id=rid, attempt=1, status=RunStatus.failed)
        assert crud.get_run(session=s, run_id=rid).status == RunStatus.succeeded


def test_expired_lease_requeues_then_fails_after_max_attempts(factory):
    with session_scope(factory) as s:
        rid = crud.create_run(session=s, fields=_fields(0, max_attempts=2)).id
    later = utcnow() + dt.timedelta(seconds=10)
    for attempt, expected in ((1, RunStatus.queued), (2, RunStatus.failed)):
        with session_scope(factory) as s:
            run = crud.claim_next_run(session=s, worker_id="w", host="h", lease_seconds=1, slot="cpu:0")
            assert (run.id, run.attempts) == (rid, attempt)
            assert crud.recover_expired_leases(session=s, now=utcnow()) == []  # lease still valid
            assert crud.recover_expired_leases(session=s, now=later) == [(rid, expected.value)]
            assert crud.get_run(session=s, run_id=rid).status == expected


def test_job_heartbeat_keeps_the_lease_and_reports_cancel(factory):
    (rid,) = _add_runs(factory, 1)
    with session_scope(factory) as s:
        crud.claim_next_run(session=s, worker_id="w", host="h", lease_seconds=1, slot="cpu:0")
        assert crud.job_heartbeat(session=s, run_id=rid, attempt=1, lease_seconds=60) == (True, False)
        assert crud.recover_expired_leases(session=s, now=utcnow() + dt.timedelta(seconds=5)) == []
        crud.request_cancel(session=s, run_id=rid)
        assert crud.job_heartbeat(session=s, run_id=rid, attempt=1, lease_seconds=60) == (True, True)
        assert crud.job_heartbeat(session=s, run_id=rid, attempt=2, lease_seconds=60) == (False, False)


def test_list_runs_filters_sorts_and_counts(factory):
    with session_scope(factory) as s:
        for i in range(30):
            crud.create_run(session=s, fields=_fields(i, method="lora" if i % 3 else "full", learning_rate=i * 1e-4))
    with session_scope(factory) as s:
        total, runs = crud.list_runs(session=s, method=["lora"], sort="learning_rate", descending=False, limit=5,
                                     offset=2)
        assert total == 20
        assert [r.seed for r in runs] == [4, 5, 7, 8, 10]
        total, runs = crud.list_runs(session=s, method=["full", "lora"], sort="seed", descending=True, limit=3)
        assert total == 30 and [r.seed for r in runs] == [29, 28, 27]


def test_runs_changed_since_filters_orders_and_limits(factory):
    """The event stream's poll: strictly after `since`, oldest change first, optionally only some runs."""
    t0 = utcnow() - dt.timedelta(minutes=1)
    ids = _add_runs(factory, 4)
    with session_scope(factory) as s:
        crud.ping(session=s)
        for i, rid in enumerate(reversed(ids)):  # the newest run changed first
            crud.get_run(session=s, run_id=rid).updated_at = t0 + dt.timedelta(seconds=i + 1)
    with session_scope(factory) as s:
        def changed(**kw) -> list[int]:
            return [r.id for r in crud.runs_changed_since(session=s, **kw)]

        assert changed(since=t0) == ids[::-1]
        assert changed(since=t0 + dt.timedelta(seconds=2)) == [ids[1], ids[0]]
        assert changed(since=t0, run_ids=[ids[0], ids[3]]) == [ids[3], ids[0]]
        assert changed(since=t0, limit=1) == [ids[3]]
