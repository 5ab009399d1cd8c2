"""FastAPI dependencies: the settings and a database session from the app's state, the runs filters that
GET /api/runs and the exports share."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Query, Request
from sqlalchemy.orm import Session

from backend.schemas import INT32_MAX, INT32_MIN, parse_utc
from backend.settings import Settings
from db.models import RunStatus
from db.session import session_scope


async def get_settings_dep(request: Request) -> Settings:
    # async: a sync dependency would take a turn in the thread pool on every request for an attribute read
    return request.app.state.settings


def get_db(request: Request) -> Iterator[Session]:
    """One session per request: committed when the route returns, rolled back when it raises."""
    with session_scope(request.app.state.sessionmaker) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_db)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]


def wake_worker(request: Request) -> None:
    """Tell the embedded worker (if any) to look at the queue now instead of at its next poll."""
    dispatcher = getattr(request.app.state, "dispatcher", None)
    if dispatcher is not None:
        dispatcher.wake()


def split_values(values: list[str] | None) -> list[str] | None:
    """A list query parameter's values: repeated parameters and comma-separated lists are both accepted."""
    if not values:
        return None
    out = [v.strip() for item in values for v in item.split(",") if v.strip()]
    return out or None


class RunFilters:
    """The filters GET /api/runs and the runs exports share."""

    def __init__(
        self,
        status: Annotated[list[str] | None, Query(description="status; repeat or comma-separate")] = None,
        method: Annotated[list[str] | None, Query()] = None,
        backbone: Annotated[list[str] | None, Query()] = None,
        task: Annotated[list[str] | None, Query()] = None,
        sweep_id: Annotated[int | None, Query(alias="sweep", ge=INT32_MIN, le=INT32_MAX)] = None,
        updated_since: Annotated[str | None, Query(description="ISO time; only runs changed after it")] = None,
    ) -> None:
        self.status = split_values(status)
        bad = [v for v in self.status or [] if v not in {s.value for s in RunStatus}]
        if bad:
            raise HTTPException(
                status_code=422,
                detail=[{"type": "value_error", "loc": ["query", "status"], "input": bad[0],
                         "msg": f"status={bad[0]!r}: unknown status; valid: {', '.join(s.value for s in RunStatus)}"}],
            )
        self.method = split_values(method)
        self.backbone = split_values(backbone)
        self.task = split_values(task)
        self.sweep_id = sweep_id
        try:
            self.updated_since = parse_utc(updated_since) if updated_since else None
        except ValueError as e:
            raise HTTPException(
                status_code=422,
                detail=[{"type": "value_error", "loc": ["query", "updated_since"],
                         "msg": f"updated_since={updated_since!r}: not an ISO 8601 time", "input": updated_since}],
            ) from e

    def as_kwargs(self) -> dict[str, Any]:
        """The filters as crud.list_runs keyword arguments."""
        return dict(status=self.status, method=self.method, backbone=self.backbone, task=self.task,
                    sweep_id=self.sweep_id, updated_since=self.updated_since)


FiltersDep = Annotated[RunFilters, Depends(RunFilters)]
