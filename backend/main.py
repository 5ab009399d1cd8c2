"""The FastAPI application: routers under /api, the static frontend at /, Plotly.js at /static/plotly.min.js, and
(optionally) the embedded worker, started and stopped with the app."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from backend import security
from backend.deps import write_lane
from backend.routes import bench, estimate, fits, results, runs, start, sweeps, system
from backend.settings import Settings, get_settings
from db.session import make_engine, make_sessionmaker, upgrade_database

log = logging.getLogger(__name__)

FRONTEND_DIR = Path(__file__).resolve().parent.parent / "frontend"


def plotly_js_path() -> Path | None:
    """plotly.min.js shipped inside the installed plotly package (found without importing plotly)."""
    import importlib.util

    spec = importlib.util.find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "package_data" / "plotly.min.js"
    return path if path.exists() else None


def create_app(
    settings: Settings | None = None, *, start_worker: bool = False, frontend_dir: Path | None = FRONTEND_DIR
) -> FastAPI:
    """Build the app. The database is migrated to head at start-up; `start_worker` runs a dispatcher thread."""
    settings = settings or get_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        upgrade_database(settings.db_url)
        engine = make_engine(settings.db_url, **security.engine_options(settings.db_url))  # no pool wait: see there
        app.state.engine = engine
        app.state.sessionmaker = make_sessionmaker(engine)
        app.state.write_lane = write_lane(settings.db_url)  # made here: bound to the server's event loop
        app.state.dispatcher = None
        if start_worker:
            from backend.worker.dispatcher import Dispatcher

            app.state.dispatcher = Dispatcher(settings, app.state.sessionmaker)
            app.state.dispatcher.start_thread()
        log.info("mefts API ready (database %s)", engine.url.render_as_string(hide_password=True))
        try:
            yield
        finally:
            app.state.stopping.set()
            if app.state.dispatcher is not None:
                app.state.dispatcher.stop(timeout=settings.kill_grace_seconds + 10)
            engine.dispose()

    app = FastAPI(
        title="mefts",
        version=system.VERSION,
        description="Queue, run and compare memory-efficient fine-tuning runs (MEFT, LoRA, adapters, BitFit, full).",
        lifespan=lifespan,
        default_response_class=security.SafeJSONResponse,
    )
    app.state.settings = settings
    app.state.stopping = threading.Event()
    security.install(app, settings)  # token, body limit, JSON hygiene, CORS, 507/503 for a full or busy database
    for router in (runs.router, sweeps.router, results.router, system.router, estimate.router, bench.router,
                   fits.router, start.router):
        app.include_router(router, prefix="/api")

    @app.get("/static/plotly.min.js", include_in_schema=False, response_model=None, response_class=FileResponse)
    def plotly_js() -> FileResponse:
        path = plotly_js_path()
        if path is None:
            raise HTTPException(status_code=404, detail="plotly is not installed")
        return FileResponse(path, media_type="text/javascript", headers={"Cache-Control": "public, max-age=86400"})

    if frontend_dir is not None and Path(frontend_dir).is_dir():
        app.mount("/", StaticFiles(directory=frontend_dir, html=True), name="frontend")
    return app
