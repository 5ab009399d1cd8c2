"""The structure of the routes: every JSON route declares a pydantic response model (so the OpenAPI document
describes its answer), every other route says what it sends instead, and route modules share helpers through
backend.deps / backend.runspec / db.crud rather than through each other, and leave SQL to db.crud."""

from __future__ import annotations

import ast
import typing
from pathlib import Path

import pytest
from fastapi.datastructures import DefaultPlaceholder
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel

from backend.main import create_app
from backend.settings import Settings

ROUTES_DIR = Path(__file__).resolve().parents[2] / "backend" / "routes"
ROUTE_MODULES = sorted(p for p in ROUTES_DIR.glob("*.py") if p.name != "__init__.py")


def _has_model(annotation: typing.Any) -> bool:
    """A pydantic model, or a container of them (list[SweepOut], ...); not dict[str, Any] or Any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return True
    return any(_has_model(arg) for arg in typing.get_args(annotation))


def _walk(routes: typing.Iterable[typing.Any]) -> typing.Iterator[APIRoute]:
    """Every APIRoute, also inside included routers (newer FastAPI keeps an included router as one entry of
    app.routes that holds the original router; older ones copy its routes into app.routes)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif getattr(route, "original_router", None) is not None:
            yield from _walk(route.original_router.routes)


@pytest.fixture(scope="module")
def api_routes(tmp_path_factory) -> list[APIRoute]:
    tmp = tmp_path_factory.mktemp("routes")
    app = create_app(Settings(data_dir=tmp, database_url=f"sqlite:///{tmp / 'mefts.db'}"), frontend_dir=None)
    routes = list(_walk(app.routes))
    assert len(routes) >= 20 and any(r.name == "catalog" for r in routes)  # every router is included
    return routes


def test_every_json_route_declares_a_response_model(api_routes):
    missing = []
    for route in api_routes:
        cls = route.response_class
        cls = cls.value if isinstance(cls, DefaultPlaceholder) else cls
        where = f"{','.join(sorted(route.methods))} {route.path} ({route.endpoint.__module__}.{route.name})"
        if issubclass(cls, JSONResponse):
            if not _has_model(route.response_model):
                missing.append(f"{where}: JSON without a pydantic response_model ({route.response_model!r})")
        elif route.response_model is not None:
            # A file, stream or text answer is not validated against a model: the model would only mislead.
            missing.append(f"{where}: {cls.__name__} with response_model {route.response_model!r}")
    assert not missing, "\n".join(missing)


def _imported_modules(tree: ast.Module, package: str) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against backend.routes
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            out.append((node.lineno, module))
            # `from backend.routes import runs` imports a route module by its name
            out += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return out


@pytest.mark.parametrize("path", ROUTE_MODULES, ids=lambda p: p.name)
def test_route_modules_do_not_import_each_other(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    own = f"backend.routes.{path.stem}"
    bad = [f"{path.name}:{line}: {module}" for line, module in _imported_modules(tree, "backend.routes")
           if module.startswith("backend.routes.") and not module.startswith(own + ".") and module != own]
    assert not bad, "shared helpers belong in backend.deps or backend.runspec:\n" + "\n".join(bad)


# A route may hold a Session (to pass on and commit) but asks db.crud for every row.
SQL_CALLS = {"execute", "scalars", "scalar", "query"}


@pytest.mark.parametrize("path", ROUTE_MODULES, ids=lambda p: p.name)
def test_route_modules_run_no_sql(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "sqlalchemy":
            bad += [f"{path.name}:{node.lineno}: imports {alias.name} from {node.module}" for alias in node.names
                    if (node.module, alias.name) != ("sqlalchemy.orm", "Session")]
        elif isinstance(node, ast.Import):
            bad += [f"{path.name}:{node.lineno}: imports {a.name}" for a in node.names if a.name.startswith("sqlalchemy")]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in SQL_CALLS:
            bad.append(f"{path.name}:{node.lineno}: .{node.func.attr}(...)")
    assert not bad, "queries belong in db/crud.py:\n" + "\n".join(bad)


def test_static_assets_are_gzip_encoded_only_for_clients_that_accept_it(tmp_path):
    """Issue 18 part 6: plotly.min.js (4.8 MB) and the frontend's scripts travel gzip-encoded, with their cache
    headers, to a browser that accepts it; a client that does not gets the plain bytes."""
    from fastapi.testclient import TestClient

    from backend.main import FRONTEND_DIR

    settings = Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'mefts.db'}")

    with TestClient(create_app(settings, start_worker=False, frontend_dir=FRONTEND_DIR), base_url="http://127.0.0.1") as c:
        zipped = c.get("/static/plotly.min.js", headers={"Accept-Encoding": "gzip, deflate, br"})
        plain = c.get("/static/plotly.min.js", headers={"Accept-Encoding": "identity"})
        other = c.get("/static/plotly.min.js", headers={"Accept-Encoding": "deflate"})
        app_js = c.get("/js/app.js", headers={"Accept-Encoding": "gzip"})
    assert zipped.status_code == plain.status_code == 200
    assert zipped.headers["content-encoding"] == "gzip"
    assert zipped.headers["cache-control"] == plain.headers["cache-control"] == "public, max-age=86400"
    assert "accept-encoding" in zipped.headers["vary"].lower()
    assert int(zipped.headers["content-length"]) < int(plain.headers["content-length"]) / 2
    assert "content-encoding" not in plain.headers and "content-encoding" not in other.headers
    assert zipped.content == plain.content == other.content  # httpx decoded the gzip: the same script
    assert app_js.headers["content-encoding"] == "gzip" and b"route" in app_js.content
