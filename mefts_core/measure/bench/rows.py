"""The bench's rows: their columns (`COLUMNS`), the row files (`format_rows` writes md/csv/json, `parse_rows` and
`load_rows` read them back with their types) and the table people read (`summary_table`). Every table is written
by mefts_core.measure.tables.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from mefts_core.measure import tables

Row = dict[str, Any]
Sink = Callable[[Row], None]

MiB = 1 << 20
GiB = 1 << 30

# Every row has exactly these keys, in this order (CSV/Markdown column order).
COLUMNS: dict[str, type] = {
    "backbone": str,
    "method": str,  # the label, e.g. "lora+gc", "meft1-float"
    "base_method": str,  # what apply_method gets: full, lora, adapter, bitfit, meft1/2/3
    "options": str,  # the options given to apply_method, as JSON
    "layers": int,
    "seq_len": int,
    "batch_size": int,
    "dtype": str,
    "device": str,  # cpu or cuda:N
    "device_name": str,
    "status": str,  # ok | does not fit | skipped | failed
    "note": str,
    "trainable_params": int,
    "total_params": int,
    "stored_activation_bytes": int,
    "peak_bytes": int,
    "peak_activation_bytes": int,
    "param_bytes": int,
    "grad_bytes": int,
    "optimizer_bytes": int,
    "how": str,  # cuda-allocator | cpu-profiler
    "step_seconds": float,  # median of the timed steps (no profiler)
    "step_seconds_min": float,
    "step_seconds_max": float,
    "timed_steps": int,
    "tokens_per_second": float,
    "estimated_peak_bytes": int,
    "estimate_error": float,  # (estimate - measured) / measured
    "seed": int,
    "torch": str,
}

ROW_FORMATS = {".json": "json", ".csv": "csv", ".md": "md"}  # file extension -> format


def format_rows(rows: Iterable[Row], fmt: str) -> str:
    """Every column of every row as md (a Markdown table), csv or json; `parse_rows` reads each back."""
    if fmt not in ROW_FORMATS.values():
        raise ValueError(f"format={fmt!r}: must be md, csv or json")
    return tables.render(list(COLUMNS), rows, fmt)


def _typed(key: str, text: str) -> Any:
    if text == "":
        return None if key not in ("note",) else ""
    kind = COLUMNS.get(key, str)
    if kind is int:
        return int(float(text))
    if kind is float:
        return float(text)
    return text


def parse_rows(text: str, fmt: str) -> list[Row]:
    """Rows written by `format_rows` (any format), with the column types of `COLUMNS`."""
    if fmt == "json":
        return [{k: r.get(k) for k in COLUMNS} for r in json.loads(text)]
    if fmt == "csv":
        return [{k: _typed(k, r.get(k, "")) for k in COLUMNS} for r in csv.DictReader(io.StringIO(text))]
    if fmt == "md":
        lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip().startswith("|")]
        split = [tables.markdown_cells(ln) for ln in lines]
        header, body = split[0], split[2:]
        return [{k: _typed(k, dict(zip(header, cells)).get(k, "")) for k in COLUMNS} for cells in body]
    raise ValueError(f"format={fmt!r}: must be md, csv or json")


def load_rows(path: str) -> list[Row]:
    """Rows from a file written by `mefts bench --output` (format from the extension: .json, .csv, .md)."""
    p = Path(path)
    fmt = ROW_FORMATS.get(p.suffix)
    if fmt is None:
        raise ValueError(f"{path}: unknown extension; expected .json, .csv or .md")
    return parse_rows(p.read_text(), fmt)


def _mib(v: Any) -> str:
    return "-" if v is None else f"{v / MiB:,.1f}"


SUMMARY_COLUMNS = ("backbone", "method", "L", "T", "B", "trainable", "stored MiB", "peak act MiB", "peak MiB",
                   "est. peak MiB (err)", "step s", "tok/s", "status")


def _summary_cells(r: Row) -> list[str]:
    err = r.get("estimate_error")
    est = _mib(r.get("estimated_peak_bytes")) + (f" ({100 * err:+.1f}%)" if err is not None else "")
    step = r.get("step_seconds")
    tps = r.get("tokens_per_second")
    return [
        r["backbone"], r["method"], str(r.get("layers") or "-"), str(r["seq_len"]), str(r["batch_size"]),
        f"{r['trainable_params']:,}" if r.get("trainable_params") is not None else "-",
        _mib(r.get("stored_activation_bytes")), _mib(r.get("peak_activation_bytes")), _mib(r.get("peak_bytes")),
        est, f"{step:.3f}" if step is not None else "-", f"{tps:,.0f}" if tps is not None else "-",
        r["status"] if not r.get("note") else f"{r['status']}: {r['note']}",
    ]


def summary_table(rows: Iterable[Row]) -> str:
    """The human table (Markdown; MiB, seconds): what `mefts bench` prints at the end and docs/benchmarks.md shows."""
    return tables.to_markdown(SUMMARY_COLUMNS, [_summary_cells(r) for r in rows])
