"""ORM rows to API shapes (shared by the routes, the exports and the SSE stream)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from backend.schemas import MemoryReportOut, MetricPointOut, RunDetail, RunSummary, iso_utc
from db.models import MEMORY_FIELDS, MemoryReportRow, MetricPoint, Run


def artifact_url(run: Run) -> str | None:
    """The download route of the run's model, when the run stored one."""
    return f"/api/runs/{run.id}/artifact" if run.artifact_path else None


def duration_seconds(run: Run) -> float | None:
    if run.started_at is None:
        return None
    end = run.finished_at
    if end is None:
        return None
    return max(0.0, (end - run.started_at).total_seconds())


def tokens_per_second(memory: MemoryReportRow | None) -> float | None:
    """Tokens of the measured step's batch over its wall time (batch × sequence length / step seconds)."""
    if memory is None or not memory.step_seconds or not memory.batch_size or not memory.seq_len:
        return None
    return memory.batch_size * memory.seq_len / memory.step_seconds


def speed_fields(memory: MemoryReportRow | None) -> dict[str, Any]:
    """The latest measured step's peak activation, time and tokens per second (None without a report)."""
    return dict(peak_activation_bytes=memory.peak_activation_bytes if memory is not None else None,
                step_seconds=memory.step_seconds if memory is not None else None,
                tokens_per_second=tokens_per_second(memory))


def _summary_fields(run: Run) -> dict[str, Any]:
    return dict(
        id=run.id, name=run.name, sweep_id=run.sweep_id, cloned_from=run.cloned_from, backbone=run.backbone,
        method=run.method, method_label=run.method_label, task=run.task, seed=run.seed, device=run.device,
        learning_rate=run.learning_rate, batch_size=run.batch_size, max_seq_len=run.max_seq_len, epochs=run.epochs,
        status=run.status, cancel_requested=bool(run.cancel_requested), priority=run.priority,
        attempts=run.attempts, max_attempts=run.max_attempts, created_at=run.created_at, updated_at=run.updated_at,
        started_at=run.started_at, finished_at=run.finished_at, deadline_at=run.deadline_at, duration_seconds=duration_seconds(run),
        progress=run.progress or 0.0, step=run.step, total_steps=run.total_steps, epoch=run.epoch, loss=run.loss,
        main_metric=run.main_metric, score=run.score,
        stored_activation_bytes=run.stored_activation_bytes, peak_bytes=run.peak_bytes,
        error=run.error, worker_id=run.worker_id, pid=run.pid, device_used=run.device_used,
        resumed_from_epoch=run.resumed_from_epoch, data_source=run.data_source, artifact_bytes=run.artifact_bytes,
        artifact_sha256=run.artifact_sha256, artifact_url=artifact_url(run),
    )


def run_summary(run: Run, memory: MemoryReportRow | None = None) -> RunSummary:
    return RunSummary(**_summary_fields(run), **speed_fields(memory))


def memory_out(row: MemoryReportRow | None) -> MemoryReportOut | None:
    if row is None:
        return None
    return MemoryReportOut(attempt=row.attempt, extra=row.extra, **{f: getattr(row, f) for f in MEMORY_FIELDS})


def metric_series(points: list[MetricPoint]) -> dict[str, list[MetricPointOut]]:
    series: dict[str, list[MetricPointOut]] = defaultdict(list)
    for p in points:
        series[p.name].append(MetricPointOut(step=p.step, epoch=p.epoch, value=p.value))
    return dict(series)


def run_detail(run: Run, memory: MemoryReportRow | None, points: list[MetricPoint]) -> RunDetail:
    base = {**_summary_fields(run), **speed_fields(memory)}
    return RunDetail(
        **base, config=run.config, result=run.result, log_tail=run.log_tail or "", traceback=run.traceback,
        git_revision=run.git_revision, versions=run.versions, trainable_params=run.trainable_params,
        total_params=run.total_params, host=run.host, lease_expires_at=run.lease_expires_at,
        memory=memory_out(memory), metrics=metric_series(points),
    )


def run_event(run: Run) -> dict[str, Any]:
    """The small payload the SSE stream sends per changed run."""
    return {
        "id": run.id, "status": run.status, "progress": run.progress, "step": run.step,
        "total_steps": run.total_steps, "epoch": run.epoch, "loss": run.loss, "attempts": run.attempts,
        "score": run.score, "error": run.error, "cancel_requested": bool(run.cancel_requested),
        "updated_at": iso_utc(run.updated_at),
    }
