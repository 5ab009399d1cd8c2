"""FastAPI dependencies: the settings and a database session from the app's state."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from backend.settings import Settings
from db.session import session_scope


def get_settings_dep(request: Request) -> Settings:
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
