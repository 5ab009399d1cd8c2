"""Benchmark rows (`mefts bench`, stored with `mefts bench-import`): memory vs depth, sequence length, batch."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from backend.deps import SessionDep
from backend.schemas import BenchList
from db.bench import list_bench_rows
from db.models import BenchRow

router = APIRouter(prefix="/bench", tags=["bench"])

COLUMNS = ("id", "backbone", "method", "options", "layers", "seq_len", "batch_size", "dtype", "device", "status",
           "stored_activation_bytes", "peak_bytes", "peak_activation_bytes", "step_seconds")


def bench_row_out(r: BenchRow) -> dict[str, Any]:
    out = {c: getattr(r, c) for c in COLUMNS}
    out["created_at"] = r.created_at.isoformat() + "Z" if r.created_at else None
    out["row"] = r.row
    return out


@router.get("", response_model=BenchList)
def list_bench(
    session: SessionDep,
    backbone: Annotated[str | None, Query(max_length=500)] = None,
    method: Annotated[str | None, Query(max_length=200, description="a method label, e.g. meft1-exact")] = None,
    limit: Annotated[int, Query(ge=1, le=5000)] = 5000,
) -> dict[str, Any]:
    """Stored benchmark rows, oldest first, optionally for one backbone and/or method label."""
    rows = list_bench_rows(session=session, backbone=backbone, method=method, limit=limit)
    return {"total": len(rows), "rows": [bench_row_out(r) for r in rows]}
