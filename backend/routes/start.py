"""The first start: what an empty dashboard offers (the shipped benchmark rows, a demo sweep) and the two actions."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from backend import firststart
from backend.deps import SessionDep, SettingsDep, wake_worker
from backend.schemas import StartDemo, StartImport, StartState

router = APIRouter(prefix="/start", tags=["start"])


@router.get("", response_model=StartState)
def start_state(session: SessionDep) -> dict[str, Any]:
    """Stored runs and bench rows, the shipped rows that can be imported and the demo sweep, if queued."""
    return firststart.start_state(session)


@router.post("/import", response_model=StartImport)
def import_shipped(session: SessionDep) -> dict[str, Any]:
    """Store the benchmark rows shipped in docs/results (each once: a second import stores none)."""
    return firststart.import_shipped(session)


@router.post("/demo", response_model=StartDemo)
def queue_demo(session: SessionDep, settings: SettingsDep, request: Request) -> dict[str, Any]:
    """Queue the demo sweep (tiny-bert on 64 SST-2 sentences, four methods) unless it is queued already."""
    out = firststart.queue_demo(session, settings)
    if out["created"]:
        wake_worker(request)
    return out
