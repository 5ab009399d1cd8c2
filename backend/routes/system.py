"""Health, catalog, system (devices, workers, queue and why runs wait) and the live event stream (SSE)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from backend import artifacts, runspec
from backend.deps import SessionDep, SettingsDep
from backend.schemas import (
    INT32_MAX,
    INT32_MIN,
    Catalog,
    Health,
    LabelOut,
    LabelRequest,
    QueuedRunOut,
    RunsDiskOut,
    SystemOut,
    WorkerOut,
    parse_utc,
)
from backend.views import run_event
from backend.worker.executors.local import detect_devices
from db import crud
from db.models import Run, RunStatus, utcnow
from db.session import session_scope
from mefts_core.backbones import backbone_catalog
from mefts_core.config import field_default, hyperparameter_fields
from mefts_core.errors import ConfigError
from mefts_core.methods import method_catalog, method_label
from mefts_core.tasks import task_catalog

router = APIRouter(tags=["system"])

VERSION = "0.1.0"
_DEVICES: list[dict[str, Any]] | None = None


@router.get("/health", response_model=Health)
def health(session: SessionDep) -> Health:
    """Liveness and database reachability."""
    crud.ping(session=session)
    return Health(status="ok", database="ok", version=VERSION)


# Fields an entry does not have stay out of the answer (a task has num_labels or num_choices, not both).
@router.get("/catalog", response_model=Catalog, response_model_exclude_unset=True)
def catalog(settings: SettingsDep) -> dict[str, Any]:
    """What can be submitted: backbones, methods with their options, tasks, and the hyperparameters with defaults."""
    hyper = [{"name": f.name, "default": field_default(f), "type": str(f.type), "help": f.metadata.get("help", "")}
             for f in hyperparameter_fields() if f.name not in runspec.TOP_LEVEL]
    return {
        "backbones": backbone_catalog(),
        "methods": method_catalog(),
        "tasks": task_catalog(),
        "hyperparameters": hyper,
        "devices": ["auto", "cpu", "cuda", "cuda:N"],
        "statuses": [s.value for s in RunStatus],
        "sortable": list(crud.SORTABLE_RUN_COLUMNS),
        "max_grid": settings.max_grid,
    }


@router.post("/catalog/label", response_model=LabelOut)
def label(body: LabelRequest) -> LabelOut:
    """The label run tables give a method with these options (mefts_core.methods.method_label), e.g.
    lora(r=16)+gc: the dashboard matches runs by it. 422 naming the option when the options are invalid."""
    try:
        return LabelOut(method_label=method_label(body.method, body.method_options))
    except ConfigError as e:
        err = runspec.SpecError.of(e if e.loc == ("method",) else e.within("method_options"))
        raise runspec.spec_error(err) from e


def _devices() -> list[dict[str, Any]]:
    global _DEVICES
    if _DEVICES is None:
        _DEVICES = detect_devices(None)
    return _DEVICES


def queue_reasons(runs: list[Run], workers: list[WorkerOut], running: int) -> list[QueuedRunOut]:
    """Why each queued run waits, in claim order."""
    alive = [w for w in workers if w.alive]
    slots = sum(w.slots for w in alive)
    kinds = {w.slot_kind for w in alive}
    free = max(0, slots - running)
    out = []
    position = 0
    for run in runs:
        if not alive:
            reason = "no worker is running: start `mefts worker`, or `mefts serve` without --no-worker"
        elif run.needs_gpu and "gpu" not in kinds:
            reason = f"needs a GPU (device={run.device}); no live worker has one"
        else:
            kind = "GPU" if kinds == {"gpu"} else "CPU"
            if position < free:
                reason = "a slot is free: a worker claims it within a few seconds"
            elif position - free == 0:
                reason = f"next: waiting for a free {kind} slot ({running} busy)"
            else:
                reason = f"waiting for a free {kind} slot ({running} busy); {position - free} queued ahead"
            position += 1
        out.append(QueuedRunOut(id=run.id, position=len(out) + 1, method=run.method, backbone=run.backbone,
                                task=run.task, reason=reason))
    return out


@router.get("/system", response_model=SystemOut)
def system(session: SessionDep, settings: SettingsDep) -> SystemOut:
    """Devices, workers with their heartbeat, queue counts, why queued runs wait, and the runs folder's disk use."""
    now = utcnow()
    stale = dt.timedelta(seconds=max(3 * settings.heartbeat_seconds, 10.0))
    workers = []
    for w in crud.list_workers(session=session):
        age = (now - w.heartbeat_at).total_seconds()
        alive = w.stopped_at is None and age <= stale.total_seconds()
        if not alive and age > 86400:
            continue  # long gone
        workers.append(WorkerOut(
            id=w.id, host=w.host, pid=w.pid, started_at=w.started_at, heartbeat_at=w.heartbeat_at,
            heartbeat_age_seconds=age, alive=alive, slots=w.slots, slot_kind=w.slot_kind, busy=w.busy,
            devices=w.devices,
        ))
    counts = crud.status_counts(session=session)
    queued = queue_reasons(crud.queued_runs(session=session, limit=100), workers, counts[RunStatus.running])
    return SystemOut(server_time=now, devices=_devices(), workers=workers, queue=counts, queued=queued,
                     runs_disk=RunsDiskOut(**artifacts.disk_usage(settings.data_dir)))


def _changed_since(factory, since: dt.datetime, ids: list[int] | None) -> list[tuple[Run, dict[str, Any]]]:
    # A session of its own: the stream outlives any request-scoped one. The events are built before it closes.
    with session_scope(factory) as s:
        return [(r, run_event(r)) for r in crud.runs_changed_since(session=s, since=since, run_ids=ids, limit=500)]


# A row's updated_at is stamped before its transaction commits, so a poll can see a later stamp before an earlier
# one: each poll looks back this far and drops what it already sent.
LOOKBACK = dt.timedelta(seconds=5)


class EventStream(StreamingResponse):
    """A server-sent event stream (the media type makes the OpenAPI document say so)."""

    media_type = "text/event-stream"


@router.get("/events", response_model=None, response_class=EventStream)
async def events(
    request: Request,
    settings: SettingsDep,
    since: Annotated[str | None, Query(description="ISO time; default: now (Last-Event-ID is honoured)")] = None,
    run: Annotated[list[int] | None, Query(description="only these run ids")] = None,
) -> EventStream:
    """Server-sent events: `event: run` with {id, status, progress, step, epoch, loss, ...} whenever a run changes.

    The stream polls the runs table (one indexed query on updated_at per interval) and sends a comment every 15 s
    to keep proxies from closing it. Reconnecting with Last-Event-ID resumes where it left off.
    """
    bad = [i for i in run or [] if not INT32_MIN <= i <= INT32_MAX]
    if bad:
        raise HTTPException(status_code=422, detail=[{"type": "value_error", "loc": ["query", "run"], "input": bad[0],
                                                      "msg": f"run={bad[0]}: not a run id"}])
    start = since or request.headers.get("last-event-id")
    try:
        cursor = parse_utc(start) if start else utcnow()
    except ValueError:
        cursor = utcnow()
    factory = request.app.state.sessionmaker
    interval = settings.events_poll_seconds

    async def stream() -> AsyncIterator[str]:
        nonlocal cursor
        sent: dict[tuple[int, str], dt.datetime] = {}
        yield "retry: 2000\n\n"
        last_output = asyncio.get_running_loop().time()
        while not request.app.state.stopping.is_set():
            if await request.is_disconnected():
                break
            rows = await run_in_threadpool(_changed_since, factory, cursor - LOOKBACK, run)
            for r, payload in rows:
                key = (r.id, payload["updated_at"])
                if key in sent:
                    continue
                sent[key] = r.updated_at
                yield f"id: {payload['updated_at']}\nevent: run\ndata: {json.dumps(payload)}\n\n"
                last_output = asyncio.get_running_loop().time()
                cursor = max(cursor, r.updated_at)
            horizon = cursor - 2 * LOOKBACK
            sent = {k: v for k, v in sent.items() if v >= horizon}
            if asyncio.get_running_loop().time() - last_output >= 15:
                yield ": keep-alive\n\n"
                last_output = asyncio.get_running_loop().time()
            await asyncio.sleep(interval)

    return EventStream(
        stream(), media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Connection": "keep-alive"},
    )
