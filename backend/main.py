"""The FastAPI application: routers under /api, the static frontend at /, Plotly.js at /static/plotly.min.js, and
(optionally) the embedded worker, started and stopped with the app."""

from __future__ import annotations

import contextlib
import functools
import gzip
import logging
import threading
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles

from backend import fairness, security
from backend.fairness import FairAdmission
from backend.routes import bench, estimate, fits, results, runs, start, sweeps, system
from backend.settings import Settings, get_settings
from db.session import make_engine, make_sessionmaker, upgrade_database

log = logging.getLogger(__name__)

FRONTEND_DIR = Path(__file__).resolve().parent.parent / "frontend"


def plotly_js_path() -> Path | None:
    """The Plotly the dashboard loads: the vendored basic bundle (scatter and bar, all it draws: 1.2 MB, against the
    full bundle's 4.8 MB that Chromium takes about 2.5 s to compile on a cold load), else the full plotly.min.js
    shipped inside the installed plotly package (found without importing plotly)."""
    import importlib.util

    basic = FRONTEND_DIR / "vendor" / "plotly-basic.min.js"
    if basic.exists():
        return basic
    spec = importlib.util.find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "package_data" / "plotly.min.js"
    return path if path.exists() else None


@functools.cache
def _gzipped(path: Path, mtime_ns: int) -> bytes:
    """`path` gzip-compressed, once per file version: compressing 4.8 MB on every cold load would cost more than it
    saves on a fast link (the mtime in the key drops the copy when plotly is upgraded in place)."""
    return gzip.compress(path.read_bytes(), compresslevel=6, mtime=0)


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
    # The frontend's scripts and the API's JSON (the results of 1,000 runs) travel compressed to clients that accept
    # it; the event stream is excluded by Starlette, and plotly.min.js arrives already compressed (see plotly_js).
    app.add_middleware(FairAdmission, slots=fairness.slots_for(settings.db_url))  # inside the token and size checks
    app.add_middleware(GZipMiddleware, minimum_size=1024, compresslevel=5)
    security.install(app, settings)  # token, body limit, JSON hygiene, CORS, 507/503 for a full or busy database
    for router in (runs.router, sweeps.router, results.router, system.router, estimate.router, bench.router,
                   fits.router, start.router):
        app.include_router(router, prefix="/api")

    @app.get("/static/plotly.min.js", include_in_schema=False, response_model=None, response_class=FileResponse)
    def plotly_js(request: Request) -> Response:
        path = plotly_js_path()
        if path is None:
            raise HTTPException(status_code=404, detail="plotly is not installed")
        headers = {"Cache-Control": "public, max-age=86400"}
        # 4.8 MB become 1.4 MB, the largest part of a cold load. The same test as GZipMiddleware's, which adds the
        # Vary header to the plain answer and passes this one through as it is.
        if "gzip" in request.headers.get("accept-encoding", ""):
            body = _gzipped(path, path.stat().st_mtime_ns)
            return Response(body, media_type="text/javascript",
                            headers={**headers, "Content-Encoding": "gzip", "Vary": "Accept-Encoding"})
        return FileResponse(path, media_type="text/javascript", headers=headers)

    if frontend_dir is not None and Path(frontend_dir).is_dir():
        app.mount("/", StaticFiles(directory=frontend_dir, html=True), name="frontend")
    return app
