"""Keyword-only data access. Every state change of a run is a conditional UPDATE (compare-and-set on its status and
attempt number), so two processes can never both move the same run: the loser sees rowcount 0.

The attempt number is a fencing token: a job process writes only while the run is `running` at its attempt, so a job
that outlived its lease (and whose run was claimed again) cannot overwrite the newer attempt.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Select, and_, asc, delete, desc, func, or_, select, text, update
from sqlalchemy.orm import Session

from db.models import (
    MEMORY_FLOAT_FIELDS,
    MEMORY_INT_FIELDS,
    MEMORY_JSON_FIELDS,
    MEMORY_STR_FIELDS,
    TERMINAL,
    BenchRow,
    MemoryReportRow,
    MetricPoint,
    Run,
    RunStatus,
    Sweep,
    Worker,
    utcnow,
)

LOG_TAIL_CHARS = 20_000

# Columns GET /api/runs may sort by (memory columns come from the run's newest memory report).
SORTABLE_RUN_COLUMNS = (
    "id", "sweep_id", "name", "backbone", "method", "method_label", "task", "seed", "device", "learning_rate",
    "batch_size", "max_seq_len", "epochs", "status", "priority", "attempts", "max_attempts", "created_at",
    "updated_at", "started_at", "finished_at", "worker_id", "progress", "epoch", "loss", "main_metric", "score",
    "trainable_params", "total_params", "device_used", "stored_activation_bytes", "peak_bytes",
    "peak_activation_bytes", "data_source",
)
# Columns that are never NULL sort without a NULLS LAST clause (so an index can serve the ORDER BY).
_NOT_NULL = {"id", "backbone", "method", "method_label", "task", "seed", "device", "status", "priority", "attempts",
             "max_attempts", "created_at", "updated_at", "progress"}


# ---------------------------------------------------------------------------------------------------- create / read
def create_run(*, session: Session, fields: dict[str, Any], sweep_id: int | None = None) -> Run:
    """Insert one queued run. `fields` are Run columns (config, backbone, method, ...)."""
    now = utcnow()
    run = Run(**fields, sweep_id=sweep_id, status=RunStatus.queued, created_at=now, updated_at=now)
    session.add(run)
    session.flush()
    return run


def create_sweep(*, session: Session, name: str | None, spec: dict[str, Any], runs: Sequence[dict[str, Any]]) -> Sweep:
    """Insert a sweep and all its runs in the caller's transaction."""
    sweep = Sweep(name=name, spec=spec, n_runs=len(runs), created_at=utcnow())
    session.add(sweep)
    session.flush()
    now = utcnow()
    session.add_all(
        Run(**f, sweep_id=sweep.id, status=RunStatus.queued, created_at=now, updated_at=now) for f in runs
    )
    session.flush()
    return sweep


def get_run(*, session: Session, run_id: int) -> Run | None:
    return session.get(Run, run_id, populate_existing=True)


def get_sweep(*, session: Session, sweep_id: int) -> Sweep | None:
    return session.get(Sweep, sweep_id)


def sweep_named(*, session: Session, name: str) -> Sweep | None:
    """The oldest sweep of that name (the first start's demo sweep is found by its name)."""
    return session.scalars(select(Sweep).where(Sweep.name == name).order_by(Sweep.id).limit(1)).first()


def list_sweeps(*, session: Session, limit: int = 100, offset: int = 0) -> list[Sweep]:
    return list(session.scalars(select(Sweep).order_by(Sweep.id.desc()).limit(limit).offset(offset)))


def sweep_run_ids(*, session: Session, sweep_id: int) -> list[int]:
    return list(session.scalars(select(Run.id).where(Run.sweep_id == sweep_id).order_by(Run.id)))


def sweep_status_counts(*, session: Session, sweep_ids: Sequence[int]) -> dict[int, dict[str, int]]:
    out: dict[int, dict[str, int]] = {i: {} for i in sweep_ids}
    if not sweep_ids:
        return out
    rows = session.execute(
        select(Run.sweep_id, Run.status, func.count()).where(Run.sweep_id.in_(sweep_ids)).group_by(Run.sweep_id, Run.status)
    )
    for sid, status, n in rows:
        out[sid][status] = n
    return out


def _filtered(
    stmt: Select,
    *,
    status: Sequence[str] | None,
    method: Sequence[str] | None,
    backbone: Sequence[str] | None,
    task: Sequence[str] | None,
    sweep_id: int | None,
    updated_since: dt.datetime | None,
    ids: Sequence[int] | None = None,
) -> Select:
    for col, values in ((Run.status, status), (Run.method, method), (Run.backbone, backbone), (Run.task, task)):
        if values:
            stmt = stmt.where(col == values[0]) if len(values) == 1 else stmt.where(col.in_(values))
    if sweep_id is not None:
        stmt = stmt.where(Run.sweep_id == sweep_id)
    if updated_since is not None:
        stmt = stmt.where(Run.updated_at > updated_since)
    if ids:
        stmt = stmt.where(Run.id.in_(ids))
    return stmt


def list_runs(
    *,
    session: Session,
    status: Sequence[str] | None = None,
    method: Sequence[str] | None = None,
    backbone: Sequence[str] | None = None,
    task: Sequence[str] | None = None,
    sweep_id: int | None = None,
    updated_since: dt.datetime | None = None,
    ids: Sequence[int] | None = None,
    sort: str = "id",
    descending: bool = True,
    limit: int | None = 50,
    offset: int = 0,
    with_total: bool = True,
) -> tuple[int | None, list[Run]]:
    """Filtered, sorted, paginated runs and the total count of the filter. Raises ValueError on an unknown sort key.

    A page is fetched in two steps: the ids of the page (the sort then handles only the key and the id, not whole
    rows with their JSON), then those rows. This keeps deep pages and unindexed sorts fast at 10,000s of runs.
    """
    if sort not in SORTABLE_RUN_COLUMNS:
        raise ValueError(f"sort={sort!r}: not a sortable column; valid: {', '.join(SORTABLE_RUN_COLUMNS)}")
    filters = dict(
        status=status, method=method, backbone=backbone, task=task, sweep_id=sweep_id, updated_since=updated_since,
        ids=ids,
    )
    key = getattr(Run, sort)
    if sort == "id" and updated_since is not None:
        # "id + 0": SQLite would otherwise walk the whole table in id order instead of using ix_runs_updated_at
        # for the (selective) updated_since filter.
        key = Run.id + 0
    direction = desc if descending else asc
    order = [direction(key)] if sort in _NOT_NULL else [direction(key).nulls_last()]
    if sort != "id":
        order.append(direction(Run.id))  # a stable tie-break
    total = session.scalar(_filtered(select(func.count(Run.id)), **filters)) if with_total else None
    if limit is None:
        runs = list(session.scalars(_filtered(select(Run), **filters).order_by(*order).offset(offset)))
        return total, runs
    page = list(session.scalars(_filtered(select(Run.id), **filters).order_by(*order).offset(offset).limit(limit)))
    by_id = {r.id: r for r in session.scalars(select(Run).where(Run.id.in_(page)))} if page else {}
    return total, [by_id[i] for i in page if i in by_id]


def latest_memory_reports(*, session: Session, run_ids: Sequence[int]) -> dict[int, MemoryReportRow]:
    """The newest attempt's memory report of each run."""
    out: dict[int, MemoryReportRow] = {}
    for i in range(0, len(run_ids), 500):
        chunk = run_ids[i : i + 500]
        for row in session.scalars(
            select(MemoryReportRow).where(MemoryReportRow.run_id.in_(chunk)).order_by(MemoryReportRow.attempt)
        ):
            out[row.run_id] = row
    return out


def metric_points(*, session: Session, run_id: int, attempt: int | None = None) -> list[MetricPoint]:
    """Metric points of one attempt (default: the run's current attempt)."""
    if attempt is None:
        attempt = session.scalar(select(Run.attempts).where(Run.id == run_id)) or 0
    return list(
        session.scalars(
            select(MetricPoint)
            .where(MetricPoint.run_id == run_id, MetricPoint.attempt == attempt)
            .order_by(MetricPoint.name, MetricPoint.step, MetricPoint.id)
        )
    )


def status_counts(*, session: Session) -> dict[str, int]:
    counts = {s.value: 0 for s in RunStatus}
    for status, n in session.execute(select(Run.status, func.count()).group_by(Run.status)):
        counts[status] = n
    return counts


def queued_runs(*, session: Session, limit: int = 100) -> list[Run]:
    """Queued runs in claim order."""
    return list(
        session.scalars(
            select(Run).where(Run.status == RunStatus.queued).order_by(Run.priority.desc(), Run.id).limit(limit)
        )
    )


def ping(*, session: Session) -> None:
    """A round trip to the database (GET /api/health); raises if it cannot be reached."""
    session.execute(text("SELECT 1"))


def runs_changed_since(
    *, session: Session, since: dt.datetime, run_ids: Sequence[int] | None = None, limit: int = 500
) -> list[Run]:
    """Runs whose updated_at is after `since` (optionally only `run_ids`), oldest change first: the event stream's
    poll, served by the index on updated_at."""
    stmt = select(Run).where(Run.updated_at > since).order_by(Run.updated_at).limit(limit)
    if run_ids:
        stmt = stmt.where(Run.id.in_(run_ids))
    return list(session.scalars(stmt))


# ---------------------------------------------------------------------------------------------------- the queue
def claim_next_run(
    *,
    session: Session,
    worker_id: str,
    host: str,
    lease_seconds: float,
    slot: str,
    gpu_available: bool = False,
    now: dt.datetime | None = None,
) -> Run | None:
    """Atomically move the next queued run to `running` for this worker and return it, or None.

    One statement: UPDATE runs SET ... WHERE id = (SELECT id ... LIMIT 1 [FOR UPDATE SKIP LOCKED]) AND
    status = 'queued' RETURNING id. SQLite runs it under its single write lock; PostgreSQL's SKIP LOCKED lets many
    workers claim different rows at once. `attempts` increments here: it is the attempt's number.
    """
    now = now or utcnow()
    candidate = select(Run.id).where(Run.status == RunStatus.queued)
    if not gpu_available:
        candidate = candidate.where(Run.needs_gpu.is_(False))
    candidate = (
        candidate.order_by(Run.priority.desc(), Run.id).limit(1).with_for_update(skip_locked=True).scalar_subquery()
    )
    stmt = (
        update(Run)
        .where(Run.id == candidate, Run.status == RunStatus.queued)
        .values(
            status=RunStatus.running, attempts=Run.attempts + 1, worker_id=worker_id, host=host, slot=slot,
            cancel_requested=False, started_at=now, lease_expires_at=now + dt.timedelta(seconds=lease_seconds),
            progress=0.0, updated_at=now,
            # what a previous attempt left: cleared, so the new attempt starts from nothing
            **dict.fromkeys(("pid", "finished_at", "step", "total_steps", "epoch", "loss", "error", "traceback",
                             "resumed_from_epoch", "deadline_at")),
        )
        .returning(Run.id)
        .execution_options(synchronize_session=False)
    )
    run_id = session.execute(stmt).scalar_one_or_none()
    session.commit()
    if run_id is None:
        return None
    return session.get(Run, run_id, populate_existing=True)


def _fenced(run_id: int, attempt: int):
    return and_(Run.id == run_id, Run.attempts == attempt, Run.status == RunStatus.running)


def set_pid(*, session: Session, run_id: int, attempt: int, pid: int) -> bool:
    res = session.execute(update(Run).where(_fenced(run_id, attempt)).values(pid=pid, updated_at=utcnow()))
    session.commit()
    return res.rowcount == 1


def renew_leases(*, session: Session, worker_id: str, lease_seconds: float, now: dt.datetime | None = None) -> int:
    """Extend the lease of every run this worker is running. Returns how many."""
    now = now or utcnow()
    res = session.execute(
        update(Run)
        .where(Run.worker_id == worker_id, Run.status == RunStatus.running)
        .values(lease_expires_at=now + dt.timedelta(seconds=lease_seconds))
    )
    session.commit()
    return res.rowcount


def job_heartbeat(
    *, session: Session, run_id: int, attempt: int, lease_seconds: float, now: dt.datetime | None = None
) -> tuple[bool, bool]:
    """The job's own heartbeat: extend its lease. Returns (still owns the run, cancel requested)."""
    now = now or utcnow()
    res = session.execute(
        update(Run)
        .where(_fenced(run_id, attempt))
        .values(lease_expires_at=now + dt.timedelta(seconds=lease_seconds))
        .returning(Run.cancel_requested)
    )
    row = res.first()
    session.commit()
    return (row is not None, bool(row[0]) if row is not None else False)


def recover_expired_leases(*, session: Session, now: dt.datetime | None = None) -> list[tuple[int, str]]:
    """Runs whose lease expired (their worker and job died) go back to the queue, or fail after max_attempts.

    Returns [(run_id, new status)].
    """
    now = now or utcnow()
    expired = and_(Run.status == RunStatus.running, Run.lease_expires_at < now)
    moved: list[tuple[int, str]] = []
    for rid in session.scalars(
        update(Run)
        .where(expired, Run.cancel_requested.is_(True))
        .values(status=RunStatus.cancelled, finished_at=now, updated_at=now, lease_expires_at=None, pid=None)
        .returning(Run.id)
    ):
        moved.append((rid, RunStatus.cancelled.value))
    for rid in session.scalars(
        update(Run)
        .where(expired, Run.attempts < Run.max_attempts)
        .values(
            status=RunStatus.queued, worker_id=None, host=None, pid=None, slot=None, lease_expires_at=None, updated_at=now,
            error="the worker stopped heartbeating (lease expired); re-queued",
        )
        .returning(Run.id)
    ):
        moved.append((rid, RunStatus.queued.value))
    for rid in session.scalars(
        update(Run)
        .where(expired)
        .values(
            status=RunStatus.failed, finished_at=now, updated_at=now, lease_expires_at=None, pid=None,
            error="the worker stopped heartbeating (lease expired) and no attempts are left",
        )
        .returning(Run.id)
    ):
        moved.append((rid, RunStatus.failed.value))
    session.commit()
    return moved


def runs_past_deadline(*, session: Session, now: dt.datetime | None = None) -> list[Run]:
    """Running runs whose attempt's deadline has passed, whichever worker owns them."""
    now = now or utcnow()
    return list(session.scalars(
        select(Run).where(Run.status == RunStatus.running, Run.deadline_at.is_not(None), Run.deadline_at < now)
        .order_by(Run.id)
    ))


def running_on_host(*, session: Session, host: str, now: dt.datetime | None = None) -> list[Run]:
    """Runs with a live lease on `host` (from any worker, including job processes that outlived theirs)."""
    now = now or utcnow()
    return list(
        session.scalars(
            select(Run).where(Run.status == RunStatus.running, Run.host == host, Run.lease_expires_at >= now)
        )
    )


# ---------------------------------------------------------------------------------------------------- job writes
def update_progress(
    *, session: Session, run_id: int, attempt: int, step: int, total_steps: int, epoch: int, loss: float | None
) -> bool:
    progress = min(1.0, step / total_steps) if total_steps else 0.0
    res = session.execute(
        update(Run)
        .where(_fenced(run_id, attempt))
        .values(step=step, total_steps=total_steps, epoch=epoch, loss=loss, progress=progress, updated_at=utcnow())
    )
    session.commit()
    return res.rowcount == 1


def add_metric_points(*, session: Session, run_id: int, attempt: int, points: Iterable[dict[str, Any]]) -> int:
    """Insert metric points ({step, epoch, name, value}) of one attempt, skipping any (name, step, epoch) the attempt
    already has. Returns how many were inserted.

    The skip keeps a series single-valued when a point arrives twice: a flush retried after a failed commit, or a
    resumed attempt reporting a step it carried over (carry_metric_points).
    """
    points = list(points)
    if not points:
        return 0
    steps = [p.get("step") for p in points]
    existing = select(MetricPoint.name, MetricPoint.step, MetricPoint.epoch).where(
        MetricPoint.run_id == run_id, MetricPoint.attempt == attempt,
        MetricPoint.name.in_({p["name"] for p in points}),
    )
    if None not in steps:  # served by ix_metric_points_run (run_id, attempt, name, step)
        existing = existing.where(MetricPoint.step >= min(steps))
    seen = {tuple(row) for row in session.execute(existing)}
    rows = []
    for p in points:
        key = (p["name"], p.get("step"), p.get("epoch"))
        if key in seen:
            continue
        seen.add(key)
        rows.append(MetricPoint(run_id=run_id, attempt=attempt, step=key[1], epoch=key[2], name=key[0],
                                value=float(p["value"])))
    session.add_all(rows)
    session.commit()
    return len(rows)


def carry_metric_points(*, session: Session, run_id: int, attempt: int, through_epoch: int) -> int:
    """Move the points of epochs 1..`through_epoch` to `attempt`, which resumed from that epoch's checkpoint and
    does not report those epochs again. Fenced. Returns how many points moved.

    They come from the newest earlier attempt that has any: that is the attempt whose weights the checkpoint holds
    (or one that resumed from the same checkpoint and already carried them), so older attempts' copies of those
    epochs (from before a restart from scratch) stay where they are and nothing is counted twice. Points of later
    epochs stay with the attempt that wrote them: the resumed attempt trains those epochs again.
    """
    if through_epoch < 1:
        return 0
    owned = session.scalar(select(Run.id).where(_fenced(run_id, attempt)))
    if owned is None:
        return 0
    source = session.scalar(
        select(func.max(MetricPoint.attempt)).where(
            MetricPoint.run_id == run_id, MetricPoint.attempt < attempt, MetricPoint.epoch <= through_epoch
        )
    )
    if source is None:
        return 0
    res = session.execute(
        update(MetricPoint)
        .where(MetricPoint.run_id == run_id, MetricPoint.attempt == source, MetricPoint.epoch <= through_epoch)
        .values(attempt=attempt)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return res.rowcount


def memory_report_columns(report: dict[str, Any]) -> dict[str, Any]:
    """Split a MemoryReport dict into typed columns and `extra` (everything else, as reported)."""
    cols: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in report.items():
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if key in MEMORY_INT_FIELDS and number:
            cols[key] = int(value)
        elif key in MEMORY_FLOAT_FIELDS and number:
            cols[key] = float(value)
        elif key in MEMORY_STR_FIELDS and value is not None:
            cols[key] = str(value)
        elif key in MEMORY_JSON_FIELDS:
            cols[key] = value
        else:
            extra[key] = value
    shape = cols.get("batch_shape")
    if isinstance(shape, list | tuple) and shape and all(isinstance(d, int) for d in shape):
        cols.setdefault("batch_size", int(shape[0]))
        cols.setdefault("seq_len", int(shape[-1]))
    cols["extra"] = extra or None
    return cols


def add_memory_report(*, session: Session, run_id: int, attempt: int, report: dict[str, Any]) -> MemoryReportRow:
    """Store (or replace) the memory report of one attempt."""
    session.execute(
        delete(MemoryReportRow).where(MemoryReportRow.run_id == run_id, MemoryReportRow.attempt == attempt)
    )
    row = MemoryReportRow(run_id=run_id, attempt=attempt, **memory_report_columns(report))
    session.add(row)
    session.execute(
        update(Run)
        .where(Run.id == run_id, Run.attempts == attempt)
        .values(stored_activation_bytes=row.stored_activation_bytes, peak_bytes=row.peak_bytes,
                peak_activation_bytes=row.peak_activation_bytes, updated_at=utcnow())
    )
    session.commit()
    return row


def append_log(*, session: Session, run_id: int, lines: Sequence[str], max_chars: int = LOG_TAIL_CHARS) -> None:
    """Append lines to the run's log tail, keeping the last `max_chars` characters."""
    if not lines:
        return
    run = session.get(Run, run_id, populate_existing=True)
    if run is None:
        return
    text = (run.log_tail or "") + "".join(line if line.endswith("\n") else line + "\n" for line in lines)
    if len(text) > max_chars:
        text = text[-max_chars:]
        text = text[text.find("\n") + 1 :] if "\n" in text else text
    run.log_tail = text
    run.updated_at = utcnow()
    session.commit()


def finish_run(
    *,
    session: Session,
    run_id: int,
    attempt: int,
    status: RunStatus,
    values: dict[str, Any] | None = None,
    now: dt.datetime | None = None,
) -> bool:
    """Move the run from `running` (at `attempt`) to a terminal status with extra column values. Fenced."""
    now = now or utcnow()
    res = session.execute(
        update(Run)
        .where(_fenced(run_id, attempt))
        .values(status=status, finished_at=now, updated_at=now, lease_expires_at=None, **(values or {}))
    )
    session.commit()
    return res.rowcount == 1


def set_run_info(*, session: Session, run_id: int, attempt: int, values: dict[str, Any]) -> bool:
    """Update columns of a running attempt (versions, device, git revision ...). Fenced."""
    res = session.execute(update(Run).where(_fenced(run_id, attempt)).values(updated_at=utcnow(), **values))
    session.commit()
    return res.rowcount == 1


def requeue_or_fail(
    *, session: Session, run_id: int, attempt: int, error: str, refund_attempt: bool = False
) -> str | None:
    """After the job process died without a verdict: cancelled if asked, queued if attempts remain, else failed.

    `refund_attempt` (a graceful shutdown of the worker) does not count the attempt. Returns the new status.
    """
    now = utcnow()
    run = session.get(Run, run_id, populate_existing=True)
    if run is None or run.status != RunStatus.running or run.attempts != attempt:
        session.commit()
        return None
    if run.cancel_requested:
        new, values = RunStatus.cancelled, dict(finished_at=now, error="cancelled")
    elif refund_attempt or run.attempts < run.max_attempts:
        new = RunStatus.queued
        values = dict(worker_id=None, host=None, slot=None, error=error)
        if refund_attempt:
            values["max_attempts"] = run.max_attempts + 1
    else:
        new, values = RunStatus.failed, dict(finished_at=now, error=f"{error}; no attempts left ({run.attempts})")
    res = session.execute(
        update(Run)
        .where(_fenced(run_id, attempt))
        .values(status=new, updated_at=now, lease_expires_at=None, pid=None, **values)
    )
    session.commit()
    return new.value if res.rowcount == 1 else None


# ---------------------------------------------------------------------------------------------------- user actions
def request_cancel(*, session: Session, run_id: int) -> Run | None:
    """Queued: cancelled at once. Running: flag it; the worker kills the job's process group. Terminal: unchanged."""
    now = utcnow()
    session.execute(
        update(Run)
        .where(Run.id == run_id, Run.status == RunStatus.queued)
        .values(status=RunStatus.cancelled, cancel_requested=True, finished_at=now, updated_at=now, error="cancelled")
    )
    session.execute(
        update(Run)
        .where(Run.id == run_id, Run.status == RunStatus.running)
        .values(cancel_requested=True, updated_at=now)
    )
    session.commit()
    return get_run(session=session, run_id=run_id)


def cancel_sweep(*, session: Session, sweep_id: int) -> int:
    """Cancel every queued run of a sweep and flag its running ones. Returns how many runs were touched."""
    ids = list(
        session.scalars(
            select(Run.id).where(Run.sweep_id == sweep_id, Run.status.in_([RunStatus.queued, RunStatus.running]))
        )
    )
    for rid in ids:
        request_cancel(session=session, run_id=rid)
    return len(ids)


def retry_run(*, session: Session, run_id: int, extra_attempts: int) -> bool:
    """Put a finished, unsuccessful run back in the queue with `extra_attempts` more attempts."""
    now = utcnow()
    res = session.execute(
        update(Run)
        .where(Run.id == run_id, Run.status.in_([RunStatus.failed, RunStatus.cancelled, RunStatus.does_not_fit]))
        .values(
            status=RunStatus.queued, max_attempts=Run.attempts + extra_attempts, cancel_requested=False,
            error=None, traceback=None, finished_at=None, worker_id=None, host=None, pid=None, slot=None,
            lease_expires_at=None, progress=0.0, updated_at=now,
        )
    )
    session.commit()
    return res.rowcount == 1


def runs_to_kill(*, session: Session, worker_id: str) -> list[Run]:
    """This worker's running runs whose cancellation was requested."""
    return list(
        session.scalars(
            select(Run).where(
                Run.worker_id == worker_id, Run.status == RunStatus.running, Run.cancel_requested.is_(True)
            )
        )
    )


def is_terminal(status: str) -> bool:
    return status in {s.value for s in TERMINAL}


# ---------------------------------------------------------------------------------------------------- workers
def worker_heartbeat(
    *,
    session: Session,
    worker_id: str,
    host: str,
    pid: int,
    devices: list[dict[str, Any]],
    slots: int,
    slot_kind: str,
    busy: int,
    now: dt.datetime | None = None,
) -> None:
    now = now or utcnow()
    worker = session.get(Worker, worker_id)
    if worker is None:
        worker = Worker(id=worker_id, host=host, pid=pid, started_at=now)
        session.add(worker)
    worker.heartbeat_at = now
    worker.devices = devices
    worker.slots = slots
    worker.slot_kind = slot_kind
    worker.busy = busy
    worker.stopped_at = None
    session.commit()


def worker_stopped(*, session: Session, worker_id: str) -> None:
    session.execute(update(Worker).where(Worker.id == worker_id).values(stopped_at=utcnow(), busy=0))
    session.commit()


def list_workers(*, session: Session, since: dt.datetime | None = None) -> list[Worker]:
    stmt = select(Worker).order_by(Worker.heartbeat_at.desc())
    if since is not None:
        stmt = stmt.where(or_(Worker.heartbeat_at >= since))
    return list(session.scalars(stmt))


# ---------------------------------------------------------------------------------------------------- fits


def measured_points(*, session: Session, backbone: str, seq_len: int, limit: int = 5000) -> list[dict[str, Any]]:
    """Measured training steps of `backbone` at `seq_len` as plain rows for mefts_core.measure.fits: bench rows
    (`mefts bench-import`) and every run's newest memory report (its batch shape, peak, step time, device)."""
    out: list[dict[str, Any]] = []
    bench = select(BenchRow).where(BenchRow.backbone == backbone, BenchRow.seq_len == seq_len)
    for r in session.scalars(bench.order_by(BenchRow.id).limit(limit)):
        name = (r.row or {}).get("device_name") or r.device
        out.append({"backbone": r.backbone, "method": r.method, "layers": r.layers, "seq_len": r.seq_len,
                    "batch_size": r.batch_size, "dtype": r.dtype, "device": r.device, "status": r.status,
                    "peak_bytes": r.peak_bytes, "step_seconds": r.step_seconds,
                    "where": f"bench row {r.id}, {name}"})
    runs = (select(Run.id, Run.method_label, Run.config, MemoryReportRow)
            .join(MemoryReportRow, MemoryReportRow.run_id == Run.id)
            .where(Run.backbone == backbone, MemoryReportRow.seq_len == seq_len,
                   MemoryReportRow.attempt == Run.attempts)
            .order_by(Run.id).limit(limit))
    for run_id, label, config, m in session.execute(runs):
        out.append({"backbone": backbone, "method": label, "layers": None, "seq_len": m.seq_len,
                    "batch_size": m.batch_size, "dtype": "bfloat16" if (config or {}).get("bf16") else "float32",
                    "device": m.device, "peak_bytes": m.peak_bytes, "step_seconds": m.step_seconds,
                    "where": f"run {run_id}, {m.device}"})
    return out
