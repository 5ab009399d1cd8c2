"""Benchmark rows (`mefts bench` output) in the database: insert (mefts bench-import) and list (GET /api/bench)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.models import BenchRow


def _int(v: Any) -> int | None:
    if v is None or v == "" or (isinstance(v, float) and not math.isfinite(v)):
        return None
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def _float(v: Any) -> float | None:
    if v is None or v == "":
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _options(v: Any) -> dict[str, Any] | None:
    if isinstance(v, dict):
        return v
    if isinstance(v, str) and v.strip():
        try:
            out = json.loads(v)
        except ValueError:
            return None
        return out if isinstance(out, dict) else None
    return None


def _clean(row: dict[str, Any]) -> dict[str, Any]:
    """The row as JSON-safe values (non-finite floats become None)."""
    return {str(k): (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}


def _columns(row: dict[str, Any]) -> dict[str, Any]:
    """A row as the table's typed columns (what is stored, and what two rows are compared on)."""
    return {
        "backbone": str(row.get("backbone") or ""), "method": str(row.get("method") or ""),
        "options": _options(row.get("options")), "layers": _int(row.get("layers")), "seq_len": _int(row.get("seq_len")),
        "batch_size": _int(row.get("batch_size")), "dtype": row.get("dtype") or None,
        "device": row.get("device") or None, "status": row.get("status") or None,
        "stored_activation_bytes": _int(row.get("stored_activation_bytes")), "peak_bytes": _int(row.get("peak_bytes")),
        "peak_activation_bytes": _int(row.get("peak_activation_bytes")), "step_seconds": _float(row.get("step_seconds")),
    }


def add_bench_rows(*, session: Session, rows: Iterable[dict[str, Any]]) -> list[BenchRow]:
    """Insert rows as mefts_core.measure.bench produces them; the caller commits."""
    out = []
    for row in rows:
        obj = BenchRow(**_columns(row), row=_clean(dict(row)))
        session.add(obj)
        out.append(obj)
    session.flush()
    return out


def list_bench_rows(*, session: Session, backbone: str | None = None, method: str | None = None,
                    limit: int = 5000) -> list[BenchRow]:
    q = select(BenchRow)
    if backbone:
        q = q.where(BenchRow.backbone == backbone)
    if method:
        q = q.where(BenchRow.method == method)
    return list(session.scalars(q.order_by(BenchRow.id).limit(limit)))


# What makes two stored rows the same measurement (first start imports a shipped row only once).
ROW_KEY = ("backbone", "method", "layers", "seq_len", "batch_size", "dtype", "device", "peak_bytes")


def row_key(row: dict[str, Any]) -> tuple:
    """The ROW_KEY of a row as it would be stored."""
    cols = _columns(row)
    return tuple(cols[k] for k in ROW_KEY)


def bench_row_keys(*, session: Session) -> set[tuple]:
    """The ROW_KEY of every stored row."""
    cols = [getattr(BenchRow, k) for k in ROW_KEY]
    return {tuple(r) for r in session.execute(select(*cols))}


def count_bench_rows(*, session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(BenchRow)) or 0)
