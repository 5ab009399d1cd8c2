"""Sweeps: a grid of methods × backbones × tasks × seeds × hyperparameter lists, queued as runs."""

from __future__ import annotations

import itertools
import math
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Request, status

from backend.deps import SessionDep, SettingsDep, wake_worker
from backend.runspec import validated_columns
from backend.schemas import INT32_MAX, INT32_MIN, SweepCreate, SweepCreated, SweepOut
from db import crud
from db.models import Sweep

router = APIRouter(prefix="/sweeps", tags=["sweeps"])

SWEEP_NOT_FOUND = "Sweep not found"
SweepId = Annotated[int, Path(ge=INT32_MIN, le=INT32_MAX, description="a sweep id")]


def _error(loc: list[Any], value: Any, msg: str) -> HTTPException:
    return HTTPException(
        status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
        detail=[{"type": "value_error", "loc": ["body", *loc], "msg": msg, "input": value}],
    )


def grid_axes(body: SweepCreate) -> dict[str, list[Any]]:
    """Every axis of the grid, in nesting order; hyperparameters given as lists are axes too."""
    axes: dict[str, list[Any]] = {
        "method": list(dict.fromkeys(body.methods)),
        "backbone": list(dict.fromkeys(body.backbones)),
        "task": list(dict.fromkeys(body.tasks)),
        "seed": list(dict.fromkeys(body.seeds)),
    }
    for key, value in body.hyperparameters.items():
        if isinstance(value, list):
            if not value:
                raise _error(["hyperparameters", key], value, f"{key}=[]: an empty list makes an empty grid")
            axes[f"hp.{key}"] = value
    return axes


def _out(sweep: Sweep, counts: dict[str, int]) -> dict[str, Any]:
    return dict(id=sweep.id, name=sweep.name, n_runs=sweep.n_runs, created_at=sweep.created_at,
                status_counts=counts, spec=sweep.spec)


@router.post("", response_model=SweepCreated, status_code=status.HTTP_201_CREATED)
def create_sweep(body: SweepCreate, session: SessionDep, settings: SettingsDep, request: Request) -> SweepCreated:
    """Validate every run of the grid, then queue them all in one transaction (or none, with a 422)."""
    axes = grid_axes(body)
    size = math.prod(len(v) for v in axes.values())
    if size > settings.max_grid:
        shape = " × ".join(f"{len(v)} {k.removeprefix('hp.')}" for k, v in axes.items())
        raise _error([], size, f"grid size {size} ({shape}) exceeds the limit of {settings.max_grid} runs per "
                               f"sweep; split it into several sweeps")
    for method in body.method_options:
        if method not in body.methods:
            raise _error(["method_options", method], body.method_options[method],
                         f"method_options[{method!r}]: {method!r} is not one of the sweep's methods")

    fixed_hp = {k: v for k, v in body.hyperparameters.items() if not isinstance(v, list)}
    names = list(axes)
    rows = []
    for combo in itertools.product(*axes.values()):
        point = dict(zip(names, combo))
        hp = {**fixed_hp, **{k.removeprefix("hp."): v for k, v in point.items() if k.startswith("hp.")}}
        method = point["method"]
        try:
            cols = validated_columns(
                backbone=point["backbone"], method=method, task=point["task"],
                method_options=body.method_options.get(method, {}), task_options=body.task_options,
                hyperparameters=hp, seed=point["seed"], device=body.device, name=body.name,
                priority=body.priority, max_attempts=body.max_attempts, settings=settings, timeout_s=body.timeout_s,
            )
        except HTTPException as e:
            detail = e.detail[0]
            loc = detail["loc"][1:]
            where = {"method": ["methods"], "backbone": ["backbones"], "task": ["tasks"], "seed": ["seeds"]}
            if loc and loc[0] in where:
                loc = where[loc[0]]
            elif loc and loc[0] == "method_options":
                loc = ["method_options", method, *loc[1:]]
            raise _error(loc, detail["input"], detail["msg"]) from e
        rows.append(cols)
    spec = body.model_dump()
    sweep = crud.create_sweep(session=session, name=body.name, spec=spec, runs=rows)
    session.commit()
    wake_worker(request)
    counts = crud.sweep_status_counts(session=session, sweep_ids=[sweep.id])[sweep.id]
    return SweepCreated(**_out(sweep, counts), run_ids=crud.sweep_run_ids(session=session, sweep_id=sweep.id))


@router.get("", response_model=list[SweepOut])
def list_sweeps(
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=INT32_MAX)] = 0,
) -> list[SweepOut]:
    """Sweeps, newest first, with the count of their runs per status."""
    sweeps = crud.list_sweeps(session=session, limit=limit, offset=offset)
    counts = crud.sweep_status_counts(session=session, sweep_ids=[s.id for s in sweeps])
    return [SweepOut(**_out(s, counts[s.id])) for s in sweeps]


@router.get("/{sweep_id}", response_model=SweepOut)
def get_sweep(sweep_id: SweepId, session: SessionDep) -> SweepOut:
    sweep = crud.get_sweep(session=session, sweep_id=sweep_id)
    if sweep is None:
        raise HTTPException(status_code=404, detail=SWEEP_NOT_FOUND)
    counts = crud.sweep_status_counts(session=session, sweep_ids=[sweep_id])[sweep_id]
    return SweepOut(**_out(sweep, counts))


@router.post("/{sweep_id}/cancel", response_model=SweepOut)
def cancel_sweep(sweep_id: SweepId, session: SessionDep) -> SweepOut:
    """Cancel the sweep's queued runs and stop its running ones."""
    sweep = crud.get_sweep(session=session, sweep_id=sweep_id)
    if sweep is None:
        raise HTTPException(status_code=404, detail=SWEEP_NOT_FOUND)
    crud.cancel_sweep(session=session, sweep_id=sweep_id)
    counts = crud.sweep_status_counts(session=session, sweep_ids=[sweep_id])[sweep_id]
    return SweepOut(**_out(sweep, counts))
