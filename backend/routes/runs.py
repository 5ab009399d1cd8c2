"""Runs: queue, list (filter, sort, paginate), detail, metrics, log, trained model, cancel, retry, clone."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Request, status
from fastapi.responses import FileResponse, PlainTextResponse
from sqlalchemy.orm import Session

from backend import artifacts, runspec
from backend.deps import FiltersDep, SessionDep, SettingsDep, wake_worker
from backend.schemas import INT32_MAX, INT32_MIN, MetricSeries, RunCreate, RunDetail, RunEdits, RunList
from backend.views import metric_series, run_detail, run_summary
from db import crud
from db.models import Run, utcnow

router = APIRouter(prefix="/runs", tags=["runs"])

RUN_NOT_FOUND = "Run not found"
RunId = Annotated[int, Path(ge=INT32_MIN, le=INT32_MAX, description="a run id")]


def _detail(session: Session, run: Run) -> RunDetail:
    memory = crud.latest_memory_reports(session=session, run_ids=[run.id]).get(run.id)
    return run_detail(run, memory, crud.metric_points(session=session, run_id=run.id))


def _get(session: Session, run_id: int) -> Run:
    run = crud.get_run(session=session, run_id=run_id)
    if run is None:
        raise HTTPException(status_code=404, detail=RUN_NOT_FOUND)
    return run


@router.post("", response_model=RunDetail, status_code=status.HTTP_201_CREATED)
def create_run(body: RunCreate, session: SessionDep, settings: SettingsDep, request: Request) -> RunDetail:
    """Queue one run. 422 naming the field and the value if anything is invalid; nothing is stored then."""
    cols = runspec.validated_columns(
        backbone=body.backbone, method=body.method, task=body.task, method_options=body.method_options,
        task_options=body.task_options, hyperparameters=body.hyperparameters.model_dump(exclude_unset=True),
        seed=body.seed, device=body.device, name=body.name, priority=body.priority,
        max_attempts=body.max_attempts, settings=settings, timeout_s=body.timeout_s,
    )
    run = crud.create_run(session=session, fields=cols)
    session.commit()
    wake_worker(request)
    return run_detail(run, None, [])  # a new run has no memory report or metric points yet: no queries for them


@router.get("", response_model=RunList)
def list_runs(
    session: SessionDep,
    filters: FiltersDep,
    sort: Annotated[str, Query(description="a column; prefix '-' for descending")] = "-id",
    order: Annotated[str | None, Query(pattern="^(asc|desc)$", description="overrides the '-' prefix")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0, le=INT32_MAX)] = 0,
) -> RunList:
    """Runs filtered, sorted and paginated on the server, with the total count of the filter."""
    now = utcnow()
    descending = sort.startswith("-")
    key = sort.lstrip("-+ ")
    if order is not None:
        descending = order == "desc"
    try:
        total, runs = crud.list_runs(
            session=session, **filters.as_kwargs(), sort=key, descending=descending, limit=limit, offset=offset
        )
    except ValueError as e:
        raise HTTPException(
            status_code=422, detail=[{"type": "value_error", "loc": ["query", "sort"], "msg": str(e), "input": sort}]
        ) from e
    memories = crud.latest_memory_reports(session=session, run_ids=[r.id for r in runs])
    return RunList(
        total=total or 0, limit=limit, offset=offset, items=[run_summary(r, memories.get(r.id)) for r in runs],
        server_time=now,
    )


@router.get("/{run_id}", response_model=RunDetail)
def get_run(run_id: RunId, session: SessionDep) -> RunDetail:
    """Config, status, attempts, metrics, memory report, log tail and error of one run."""
    return _detail(session, _get(session, run_id))


@router.get("/{run_id}/metrics", response_model=MetricSeries)
def get_metrics(
    run_id: RunId, session: SessionDep, attempt: Annotated[int | None, Query(ge=1, le=INT32_MAX)] = None
) -> MetricSeries:
    """Every metric series of the run's current attempt (or `attempt`): train_loss per step, dev metrics per epoch."""
    run = _get(session, run_id)
    attempt = attempt or run.attempts
    points = crud.metric_points(session=session, run_id=run_id, attempt=attempt)
    return MetricSeries(run_id=run_id, attempt=attempt, series=metric_series(points))


@router.get("/{run_id}/log", response_model=None, response_class=PlainTextResponse)
def get_log(run_id: RunId, session: SessionDep, settings: SettingsDep) -> str:
    """The job's full log file (stdout and stderr of every attempt); the tail is in the run's detail."""
    run = _get(session, run_id)
    path = settings.log_dir / f"run-{run_id}.log"
    return path.read_text(errors="replace") if path.exists() else (run.log_tail or "")


# The download's answer as the OpenAPI document states it.
ARTIFACT = {200: {"description": "the trained model as a tar.gz", "content": {"application/gzip": {}}},
            404: {"description": "no such run, or the run has no trained model (yet)"}}


@router.get("/{run_id}/artifact", response_model=None, response_class=FileResponse, responses=ARTIFACT)
def get_artifact(run_id: RunId, session: SessionDep, settings: SettingsDep) -> FileResponse:
    """The run's trained model (its best dev epoch) as run-<id>-<method label>.tar.gz: one folder that
    `mefts_core.load_finetuned` reads. Its size and sha256 are the run's artifact_bytes and artifact_sha256."""
    run = _get(session, run_id)
    path = artifacts.artifact_file(settings.data_dir, run.artifact_path)
    if path is None:
        if run.artifact_path:
            why = "its model file is missing from the data directory"
        elif run.status == "succeeded":
            why = "it succeeded without storing one (before models were kept, or packing failed: see its log)"
        else:
            why = f"it is {run.status}; a model is stored when a run succeeds"
        raise HTTPException(status_code=404, detail=f"run {run_id} has no trained model to download: {why}")
    # The name is plain ASCII without quotes (download_name): a quoted filename= every client reads, where Starlette
    # would send only filename*= for the parentheses of a label.
    name = artifacts.download_name(run.id, run.method_label)
    return FileResponse(path, media_type="application/gzip",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})


@router.post("/{run_id}/cancel", response_model=RunDetail)
def cancel_run(run_id: RunId, session: SessionDep) -> RunDetail:
    """Queued: cancelled at once. Running: its worker kills the job's process group, then it is cancelled."""
    run = _get(session, run_id)
    if crud.is_terminal(run.status):
        raise HTTPException(status_code=409, detail=f"Run is already {run.status}")
    run = crud.request_cancel(session=session, run_id=run_id)
    return _detail(session, run)


@router.post("/{run_id}/retry", response_model=RunDetail)
def retry_run(run_id: RunId, session: SessionDep, settings: SettingsDep, request: Request) -> RunDetail:
    """Queue a failed, cancelled or does-not-fit run again (same id, more attempts)."""
    run = _get(session, run_id)
    if not crud.retry_run(session=session, run_id=run_id, extra_attempts=settings.max_attempts):
        raise HTTPException(status_code=409, detail=f"Only failed, cancelled or does_not_fit runs can be retried "
                                                    f"(this one is {run.status}); clone it instead")
    wake_worker(request)
    return _detail(session, _get(session, run_id))


def _merge(base: dict[str, Any], edits: dict[str, Any] | None) -> dict[str, Any]:
    out = dict(base)
    for k, v in (edits or {}).items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = v
    return out


@router.post("/{run_id}/clone", response_model=RunDetail, status_code=status.HTTP_201_CREATED)
def clone_run(
    run_id: RunId, session: SessionDep, settings: SettingsDep, request: Request, edits: RunEdits | None = None
) -> RunDetail:
    """Queue a new run from this one's config with edits (validated like a new run)."""
    src = _get(session, run_id)
    edits = edits or RunEdits()
    cfg = dict(src.config)
    method = edits.method or cfg["method"]
    base_opts = cfg.get("method_options") or {} if method == cfg["method"] else {}
    hp = {k: v for k, v in cfg.items() if k not in runspec.TOP_LEVEL}
    cols = runspec.validated_columns(
        backbone=edits.backbone or cfg["backbone"], method=method, task=edits.task or cfg["task"],
        method_options=_merge(base_opts, edits.method_options),
        task_options=_merge(cfg.get("task_options") or {}, edits.task_options),
        hyperparameters={**hp, **(edits.hyperparameters or {})},
        seed=edits.seed if edits.seed is not None else cfg.get("seed"),
        device=edits.device or cfg.get("device"), name=edits.name or src.name,
        priority=edits.priority if edits.priority is not None else src.priority,
        max_attempts=edits.max_attempts, settings=settings, cloned_from=src.id,
        timeout_s=edits.timeout_s if edits.timeout_s is not None else cfg.get("timeout_s"),
    )
    run = crud.create_run(session=session, fields=cols)
    session.commit()
    wake_worker(request)
    return run_detail(run, None, [])
