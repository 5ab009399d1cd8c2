"""Runs: queue, list (filter, sort, paginate), detail, metrics, log, cancel, retry, clone."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, status
from fastapi.responses import PlainTextResponse
from sqlalchemy.orm import Session

from backend import runspec
from backend.deps import SessionDep, SettingsDep, wake_worker
from backend.schemas import (
    INT32_MAX,
    INT32_MIN,
    MetricSeries,
    RunCreate,
    RunDetail,
    RunEdits,
    RunList,
    parse_utc,
)
from backend.settings import Settings
from backend.views import metric_series, run_detail, run_summary
from db import crud
from db.models import Run, RunStatus, utcnow

router = APIRouter(prefix="/runs", tags=["runs"])

RUN_NOT_FOUND = "Run not found"
RunId = Annotated[int, Path(ge=INT32_MIN, le=INT32_MAX, description="a run id")]


def spec_error(err: runspec.SpecError) -> HTTPException:
    return HTTPException(status_code=status.HTTP_422_UNPROCESSABLE_CONTENT, detail=[err.detail()])


def validated_columns(
    *,
    backbone: str,
    method: str,
    task: str,
    method_options: dict[str, Any] | None,
    task_options: dict[str, Any] | None,
    hyperparameters: dict[str, Any] | None,
    seed: int | None,
    device: str | None,
    name: str | None,
    priority: int,
    max_attempts: int | None,
    settings: Settings,
    cloned_from: int | None = None,
    timeout_s: float | None = None,
) -> dict[str, Any]:
    """Validate a run and return its table columns; raises a 422 HTTPException naming the field and value."""
    try:
        config = runspec.build_config(
            backbone=backbone, method=method, task=task, method_opts=method_options, task_opts=task_options,
            hyperparameters=hyperparameters, seed=seed, device=device,
            allowed_roots=settings.allowed_root_paths, timeout_s=timeout_s,
        )
    except runspec.SpecError as e:
        raise spec_error(e) from e
    return runspec.run_columns(
        config, name=name, priority=priority, max_attempts=max_attempts or settings.max_attempts,
        cloned_from=cloned_from,
    )


def _detail(session: Session, run: Run) -> RunDetail:
    memory = crud.latest_memory_reports(session=session, run_ids=[run.id]).get(run.id)
    return run_detail(run, memory, crud.metric_points(session=session, run_id=run.id))


def _get(session: Session, run_id: int) -> Run:
    run = crud.get_run(session=session, run_id=run_id)
    if run is None:
        raise HTTPException(status_code=404, detail=RUN_NOT_FOUND)
    return run


def _split(values: list[str] | None) -> list[str] | None:
    """Repeated query parameters and comma-separated lists are both accepted."""
    if not values:
        return None
    out = [v.strip() for item in values for v in item.split(",") if v.strip()]
    return out or None


class RunFilters:
    """The filters GET /api/runs and the runs exports share."""

    def __init__(
        self,
        status: Annotated[list[str] | None, Query(description="status; repeat or comma-separate")] = None,
        method: Annotated[list[str] | None, Query()] = None,
        backbone: Annotated[list[str] | None, Query()] = None,
        task: Annotated[list[str] | None, Query()] = None,
        sweep_id: Annotated[int | None, Query(alias="sweep", ge=INT32_MIN, le=INT32_MAX)] = None,
        updated_since: Annotated[str | None, Query(description="ISO time; only runs changed after it")] = None,
    ) -> None:
        self.status = _split(status)
        bad = [v for v in self.status or [] if v not in {s.value for s in RunStatus}]
        if bad:
            raise HTTPException(
                status_code=422,
                detail=[{"type": "value_error", "loc": ["query", "status"], "input": bad[0],
                         "msg": f"status={bad[0]!r}: unknown status; valid: {', '.join(s.value for s in RunStatus)}"}],
            )
        self.method = _split(method)
        self.backbone = _split(backbone)
        self.task = _split(task)
        self.sweep_id = sweep_id
        try:
            self.updated_since = parse_utc(updated_since) if updated_since else None
        except ValueError as e:
            raise HTTPException(
                status_code=422,
                detail=[{"type": "value_error", "loc": ["query", "updated_since"],
                         "msg": f"updated_since={updated_since!r}: not an ISO 8601 time", "input": updated_since}],
            ) from e

    def as_kwargs(self) -> dict[str, Any]:
        return dict(status=self.status, method=self.method, backbone=self.backbone, task=self.task,
                    sweep_id=self.sweep_id, updated_since=self.updated_since)


FiltersDep = Annotated[RunFilters, Depends(RunFilters)]


@router.post("", response_model=RunDetail, status_code=status.HTTP_201_CREATED)
def create_run(body: RunCreate, session: SessionDep, settings: SettingsDep, request: Request) -> RunDetail:
    """Queue one run. 422 naming the field and the value if anything is invalid; nothing is stored then."""
    cols = validated_columns(
        backbone=body.backbone, method=body.method, task=body.task, method_options=body.method_options,
        task_options=body.task_options, hyperparameters=body.hyperparameters.model_dump(exclude_unset=True),
        seed=body.seed, device=body.device, name=body.name, priority=body.priority,
        max_attempts=body.max_attempts, settings=settings, timeout_s=body.timeout_s,
    )
    run = crud.create_run(session=session, fields=cols)
    session.commit()
    wake_worker(request)
    return _detail(session, run)


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
    return RunList(
        total=total or 0, limit=limit, offset=offset, items=[run_summary(r) for r in runs],
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


@router.get("/{run_id}/log", response_class=PlainTextResponse)
def get_log(run_id: RunId, session: SessionDep, settings: SettingsDep) -> str:
    """The job's full log file (stdout and stderr of every attempt); the tail is in the run's detail."""
    run = _get(session, run_id)
    path = settings.log_dir / f"run-{run_id}.log"
    return path.read_text(errors="replace") if path.exists() else (run.log_tail or "")


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
    cols = validated_columns(
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
    return _detail(session, run)
