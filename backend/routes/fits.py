"""What fits on a card: every method's largest batch in a memory budget (mefts_core.measure.fits), from measured
runs and bench rows where they exist, interpolated between them, else estimated."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, status

from backend.deps import SessionDep
from backend.schemas import Fits
from db import crud
from mefts_core.errors import ConfigError

router = APIRouter(tags=["fits"])


@router.get("/fits", response_model=Fits)
def fits(
    session: SessionDep,
    budget: Annotated[str, Query(max_length=40, description="memory budget, e.g. 24GiB, 80 GB, 16 (GiB)")],
    backbone: Annotated[str, Query(max_length=500, description="a backbone name, e.g. bert-base")],
    seq_len: Annotated[int, Query(description="tokens per sequence")],
    dtype: Annotated[str, Query(max_length=20)] = "float32",
    device: Annotated[str, Query(max_length=10, description="cuda or cpu: the kind of memory the budget is")]
    = "cuda",
    methods: Annotated[list[str] | None, Query(description="method labels (default: every registered method)")]
    = None,
) -> dict[str, Any]:
    """For every method the largest batch that fits in `budget` at `seq_len`, the peak there, the step time and
    tokens/s; each figure is marked measured, interpolated or estimated (or unknown) and says how. A bad field is
    a 422 whose loc names the query parameter."""
    from mefts_core.measure import fits as core

    try:
        q = core.Query(core.parse_budget(budget), backbone, seq_len, dtype=dtype, device=device)
        rows = crud.measured_points(session=session, backbone=backbone, seq_len=seq_len)
        return core.fits(q, rows, methods or None)
    except ConfigError as e:
        detail = {"type": "value_error", "loc": ["query", *e.loc], "msg": str(e), "input": str(e.value)}
        raise HTTPException(status_code=status.HTTP_422_UNPROCESSABLE_CONTENT, detail=[detail]) from e
