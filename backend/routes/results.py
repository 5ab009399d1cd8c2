"""Results aggregated over seeds, and the exports: /api/results.{csv,json,md,tex}, /api/runs.{csv,json}."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import Response
from sqlalchemy.orm import Session

from backend import tables
from backend.deps import FiltersDep, SessionDep, split_values
from backend.schemas import INT32_MAX, INT32_MIN, ResultsTable
from db import crud
from db.models import RunStatus
from mefts_core.measure import paper

router = APIRouter(tags=["results"])


def results_rows(
    session: Session,
    *,
    task: list[str] | None = None,
    backbone: list[str] | None = None,
    method: list[str] | None = None,
    sweep_id: int | None = None,
    select: str = "best",
) -> tuple[list[str], list[dict[str, Any]]]:
    _, runs = crud.list_runs(
        session=session, status=[RunStatus.succeeded.value], task=task, backbone=backbone, method=method,
        sweep_id=sweep_id, sort="id", descending=False, limit=None, with_total=False,
    )
    memories = crud.latest_memory_reports(session=session, run_ids=[r.id for r in runs])
    return tables.results_table(runs, memories, select=select)


def paper_text(session: Session, *, suite: str, backbone: list[str] | None, fmt: str) -> str:
    _, runs = crud.list_runs(session=session, status=[RunStatus.succeeded.value], backbone=backbone, sort="id",
                             descending=False, limit=None, with_total=False)
    memories = crud.latest_memory_reports(session=session, run_ids=[r.id for r in runs])
    return paper.render(tables.paper_table(runs, memories, suite), fmt)


def runs_rows(session: Session, **filters: Any) -> tuple[list[str], list[dict[str, Any]]]:
    _, runs = crud.list_runs(session=session, **filters, sort="id", descending=False, limit=None, with_total=False)
    memories = crud.latest_memory_reports(session=session, run_ids=[r.id for r in runs])
    return tables.runs_table(runs, memories)


def _download(text: str, fmt: str, stem: str) -> Response:
    return Response(
        content=text, media_type=tables.MEDIA_TYPES[fmt] + ("; charset=utf-8" if fmt != "json" else ""),
        headers={"Content-Disposition": f'attachment; filename="{stem}.{fmt}"'},
    )


class ResultFilters:
    def __init__(
        self,
        task: Annotated[list[str] | None, Query()] = None,
        backbone: Annotated[list[str] | None, Query()] = None,
        method: Annotated[list[str] | None, Query()] = None,
        sweep: Annotated[int | None, Query(ge=INT32_MIN, le=INT32_MAX)] = None,
        select: Annotated[str, Query(pattern="^(best|all)$",
                                     description="best: the best config (by dev score) per method; all: every config")] = "best",
    ) -> None:
        self.kwargs = dict(task=split_values(task), backbone=split_values(backbone), method=split_values(method),
                           sweep_id=sweep, select=select)


ResultFiltersDep = Annotated[ResultFilters, Depends(ResultFilters)]

# The exports' answer as the OpenAPI document states it: the media type depends on the format in the path.
DOWNLOAD = {200: {"description": "the table as a file", "content": {t: {} for t in tables.MEDIA_TYPES.values()}}}


@router.get("/results", response_model=ResultsTable)
def get_results(session: SessionDep, filters: ResultFiltersDep) -> dict[str, Any]:
    """Method × backbone × task over succeeded runs: mean ± std over seeds of the main metric (test split) and of
    memory (stored activation bytes, peak bytes), n, and savings against full fine-tuning of the same backbone and
    task (1 - mean / full's mean)."""
    columns, rows = results_rows(session, **filters.kwargs)
    return {"columns": columns, "rows": rows}


@router.get("/results.{fmt}", response_model=None, response_class=Response, responses=DOWNLOAD)
def export_results(fmt: str, session: SessionDep, filters: ResultFiltersDep) -> Response:
    """The results table as csv, json, md (Markdown) or tex (LaTeX tabular)."""
    if fmt not in tables.FORMATS:
        raise HTTPException(status_code=404, detail=f"Unknown format {fmt!r}; use one of {', '.join(tables.FORMATS)}")
    columns, rows = results_rows(session, **filters.kwargs)
    return _download(tables.render(columns, rows, fmt, table="results"), fmt, "results")


@router.get("/results/paper.{fmt}", response_model=None, response_class=Response, responses=DOWNLOAD)
def export_paper(
    fmt: str, session: SessionDep,
    suite: Annotated[str, Query(pattern="^(glue|qa)$", description="glue (8 tasks) or qa (5 tasks)")] = "glue",
    backbone: Annotated[list[str] | None, Query()] = None,
) -> Response:
    """The paper's table for a suite: methods as rows, the suite's tasks as columns (test main metric in %, mean over
    seeds of each method's best-dev configuration), the average, trainable % and stored activation memory; md, tex,
    csv or json. Tasks without succeeded runs show "no data"."""
    if fmt not in ("md", "tex", "csv", "json"):
        raise HTTPException(status_code=404, detail=f"Unknown format {fmt!r}; use md, tex, csv or json")
    return _download(paper_text(session, suite=suite, backbone=split_values(backbone), fmt=fmt), fmt, f"paper-{suite}")


@router.get("/runs.{fmt}", response_model=None, response_class=Response, responses=DOWNLOAD)
def export_runs(fmt: str, session: SessionDep, filters: FiltersDep) -> Response:
    """Every run that matches the filters, one row each: id, times, duration, status, every config field
    flattened, every final metric, every memory field. CSV and JSON have the same columns."""
    if fmt not in ("csv", "json"):
        raise HTTPException(status_code=404, detail=f"Unknown format {fmt!r}; use csv or json")
    columns, rows = runs_rows(session, **filters.as_kwargs())
    return _download(tables.render(columns, rows, fmt, table="runs"), fmt, "runs")
