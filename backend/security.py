"""Hardening of the HTTP service: API token, request guard (body size, JSON hygiene), CORS, error mapping for a full
or locked database, path confinement for local model and data paths, and the refusal to serve beyond loopback
without a token.

`install(app, settings)` wires it into an app; `bind_refusal(host, settings)` is checked by `mefts serve`;
`confine_path` / `confine_run_paths` are used by backend.runspec when a run is validated.

- Token: with MEFTS_API_TOKEN set, every POST/PUT/PATCH/DELETE (under /api, or anywhere) needs `Authorization: Bearer <token>`
  (401 otherwise). Reads stay open, and so do the POSTs that only compute (PURE_POSTS: estimate, method label). The token is compared in constant time and never logged or returned.
- Guard: bodies over MEFTS_MAX_BODY_BYTES get 413 before the app reads them; JSON bodies with NaN/Infinity (not
  JSON) or lone UTF-16 surrogates (not Unicode) get 422, as they cannot be stored or echoed back.
- Host: only requests whose Host header names 127.0.0.1, localhost or [::1] (any port), or an entry of
  MEFTS_ALLOWED_HOSTS, are answered; others get 400. A web page that rebinds its own name to 127.0.0.1 (DNS rebinding)
  still sends its own name as Host, so it can neither queue runs nor read results.
- CORS: closed unless MEFTS_CORS_ORIGINS lists origins.
- Errors: a full disk is 507 (SQLite "database or disk is full", PostgreSQL 53100, ENOSPC), a locked or unreachable
  database is 503 with Retry-After; responses that carry a non-finite float or a lone surrogate are still rendered.
"""

from __future__ import annotations

import errno
import hmac
import ipaddress
import json
import logging
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

log = logging.getLogger(__name__)

MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# POSTs that compute an answer from their body and store nothing (a JSON body is too rich for a query string): they
# are reads, so they stay open like GETs. The match is exact, so "//api/estimate" still needs the token.
PURE_POSTS = frozenset({"/api/estimate", "/api/catalog/label"})
# Request fields that name local files or folders; they must lie inside the allowed roots.
PATH_TASK_OPTIONS = ("data_dir", "train_file", "eval_file", "test_file")
TOKEN_ENV = "MEFTS_API_TOKEN"
HOSTS_ENV = "MEFTS_ALLOWED_HOSTS"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")


# ------------------------------------------------------------------------------------------------ rendering
def _finite(value: Any) -> Any:
    """JSON-safe copy: non-finite floats become null, lone surrogates become "?"."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8") if _has_surrogate(value) else value
    if isinstance(value, dict):
        return {_finite(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


class SafeJSONResponse(JSONResponse):
    """JSONResponse that never fails on NaN/Infinity (rendered as null) or a lone surrogate (as "?")."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except (ValueError, UnicodeEncodeError):
            return super().render(_finite(content))


def _error(status: int, detail: Any, headers: dict[str, str] | None = None) -> SafeJSONResponse:
    return SafeJSONResponse({"detail": detail}, status_code=status, headers=headers)


# ------------------------------------------------------------------------------------------------ token
def token_value(settings) -> str | None:
    token = getattr(settings, "api_token", None)
    if token is None:
        return None
    value = token.get_secret_value() if hasattr(token, "get_secret_value") else str(token)
    return value or None


def is_loopback(host: str) -> bool:
    host = host.strip().strip("[]")
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a hostname or an interface we cannot judge: treat it as reachable from outside


def bind_refusal(host: str, settings) -> str | None:
    """Why `mefts serve` must not listen on `host` (a non-loopback address without an API token), or None."""
    if is_loopback(host):
        return None
    token = token_value(settings)
    if token is None:
        return (
            f"refusing to listen on {host} without an API token: anyone who can reach this port could queue, "
            f"cancel and retry runs. Set {TOKEN_ENV} (for example "
            f"`export {TOKEN_ENV}=$(python -c 'import secrets; print(secrets.token_urlsafe(32))')`) and send it as "
            f"`Authorization: Bearer <token>`, or serve on 127.0.0.1 (the default)."
        )
    if len(token) < 16:
        log.warning("%s is shorter than 16 characters; use a long random token on a reachable address", TOKEN_ENV)
    return None


def _authorized(header: str | None, token: str) -> bool:
    if not header:
        return False
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(value.strip().encode(), token.encode())


# ------------------------------------------------------------------------------------------------ host allowlist
def split_host(value: str) -> tuple[str, str | None]:
    """(host, port or None) of a Host header or an allowlist entry, lower-case; IPv6 addresses come bracketed."""
    value = value.strip().lower()
    if value.startswith("["):
        host, _, rest = value.partition("]")
        if rest and not rest.startswith(":"):
            return value, None  # malformed: matches no entry
        return host + "]", rest[1:] or None
    if value.count(":") > 1:  # a bare IPv6 address (an allowlist entry or --host; a Host header brackets it)
        return f"[{value}]", None
    host, sep, port = value.partition(":")
    return host.rstrip("."), (port or None) if sep else None


def bound_host_entry(host: str) -> str | None:
    """What `mefts serve --host HOST` adds to the allowed hosts: HOST itself when it names one address or name
    (clients then reach the server by it); nothing for a wildcard (0.0.0.0, ::), whose reachable names only the
    operator knows, nor for loopback, which is always allowed."""
    bare = host.strip().strip("[]")
    if not bare or is_loopback(bare):
        return None
    try:
        if ipaddress.ip_address(bare).is_unspecified:
            return None
    except ValueError:
        pass  # a host name: clients use it as Host
    return f"[{bare}]" if ":" in bare else bare


class HostGuard:
    """Pure ASGI middleware: 400 unless the Host header is loopback or listed in MEFTS_ALLOWED_HOSTS.

    Entries without a port allow every port; `host:port` allows that port only; `*` allows any Host.
    """

    def __init__(self, app, *, allowed: Sequence[str]) -> None:
        self.app = app
        self.any_host = "*" in allowed
        self.allowed = {split_host(e) for e in (*LOOPBACK_HOSTS, *allowed) if e != "*"}
        self.extra = [e for e in allowed if e != "*"]

    def permits(self, header: str | None) -> bool:
        if self.any_host:
            return True
        if not header:
            return False  # HTTP/1.1 requires Host; without one the request cannot be judged
        host, port = split_host(header)
        if port is not None and not port.isdigit():
            return False
        return (host, None) in self.allowed or (host, port) in self.allowed

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        header = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k.lower() == b"host"), None)
        if self.permits(header):
            await self.app(scope, receive, send)
            return
        allowed = ", ".join([*LOOPBACK_HOSTS, *self.extra])
        log.warning("refused a request for Host %r (not in %s)", header, HOSTS_ENV)
        msg = (f"Host {header!r} is not allowed: this server answers only {allowed} (any port), which guards "
               f"against DNS rebinding. To serve it under another name (a reverse proxy, a LAN address), add that "
               f"name to {HOSTS_ENV} (comma-separated)")
        await _error(400, msg)(scope, receive, send)


# ------------------------------------------------------------------------------------------------ request guard
class RequestGuard:
    """Pure ASGI middleware: token on mutating methods, body size limit, JSON hygiene (reads need no token)."""

    def __init__(self, app, *, token: str | None, max_body_bytes: int) -> None:
        self.app = app
        self.token = token
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":  # every HTTP path: "//api/runs" must not slip past a prefix check
            await self.app(scope, receive, send)
            return
        method = scope["method"].upper()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        needs_token = method in MUTATING and scope.get("path") not in PURE_POSTS
        if self.token is not None and needs_token and not _authorized(headers.get("authorization"), self.token):
            missing = "authorization" not in headers
            msg = (f"{'missing' if missing else 'invalid'} API token: this server requires "
                   f"`Authorization: Bearer <token>` ({TOKEN_ENV}) for {method} requests")
            await _error(401, msg, {"WWW-Authenticate": "Bearer"})(scope, receive, send)
            return
        if method not in MUTATING:
            await self.app(scope, receive, send)
            return
        length = headers.get("content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                await _error(400, f"invalid Content-Length {length!r}")(scope, receive, send)
                return
            if declared > self.max_body_bytes:
                await self._too_large(declared, scope, receive, send)
                return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_body_bytes:
                await self._too_large(size, scope, receive, send, at_least=True)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if body and "json" in headers.get("content-type", ""):
            problem = json_problem(body)
            if problem is not None:
                loc, msg = problem
                await _error(422, [{"type": "json_invalid", "loc": ["body", *loc], "msg": msg}])(
                    scope, receive, send)
                return
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, size: int, scope, receive, send, at_least: bool = False) -> None:
        msg = (f"request body is {'over ' if at_least else ''}{size} bytes; the limit is {self.max_body_bytes} "
               f"bytes (MEFTS_MAX_BODY_BYTES)")
        await _error(413, msg, {"Connection": "close"})(scope, receive, send)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def json_problem(body: bytes) -> tuple[list[Any], str] | None:
    """(location, message) if the JSON body holds NaN/Infinity or a lone surrogate; None if it is fine or not JSON
    at all (FastAPI reports malformed JSON itself)."""
    try:
        data = json.loads(body, parse_constant=_reject_constant)
    except ValueError as e:
        if "is not a JSON number" in str(e):
            return [], f"{e}: NaN and Infinity are not valid JSON; send a finite number or null"
        return None
    loc = _surrogate_at(data, [])
    if loc is not None:
        return loc, "text contains a lone UTF-16 surrogate (\\ud800-\\udfff); send valid Unicode"
    return None


def _surrogate_at(value: Any, loc: list[Any]) -> list[Any] | None:
    if isinstance(value, str):
        return loc if _has_surrogate(value) else None
    if isinstance(value, dict):
        for k, v in value.items():
            if _has_surrogate(k):
                return [*loc, k.encode("utf-8", "replace").decode()]
            found = _surrogate_at(v, [*loc, k])
            if found is not None:
                return found
    if isinstance(value, list):
        for i, v in enumerate(value):
            found = _surrogate_at(v, [*loc, i])
            if found is not None:
                return found
    return None


# ------------------------------------------------------------------------------------------------ errors
def _is_disk_full(exc: BaseException) -> bool:
    orig = getattr(exc, "orig", exc)
    if getattr(orig, "sqlite_errorcode", None) == 13:  # SQLITE_FULL
        return True
    if getattr(orig, "sqlstate", None) == "53100" or getattr(orig, "pgcode", None) == "53100":  # disk_full
        return True
    if isinstance(orig, OSError) and orig.errno == errno.ENOSPC:
        return True
    text = str(orig).lower()
    return "database or disk is full" in text or "no space left on device" in text


DISK_FULL_MSG = ("insufficient storage: the disk holding the database is full; nothing was stored. Free space "
                 "in the data directory and try again (existing runs are intact).")


async def operational_error(request: Request, exc: OperationalError) -> SafeJSONResponse:
    if _is_disk_full(exc):
        log.error("%s %s: disk full: %s", request.method, request.url.path, exc.orig)
        return _error(507, DISK_FULL_MSG)
    text = str(getattr(exc, "orig", exc)).lower()
    if "locked" in text or "busy" in text:
        log.warning("%s %s: database busy: %s", request.method, request.url.path, exc.orig)
        return _error(503, "the database is busy; try again in a moment", {"Retry-After": "1"})
    log.error("%s %s: database unavailable: %s", request.method, request.url.path, type(exc.orig).__name__)
    return _error(503, "the database is unavailable; try again later", {"Retry-After": "5"})


async def os_error(request: Request, exc: OSError) -> SafeJSONResponse:
    if exc.errno == errno.ENOSPC:
        log.error("%s %s: disk full: %s", request.method, request.url.path, exc)
        return _error(507, DISK_FULL_MSG)
    log.exception("%s %s: %s", request.method, request.url.path, exc)
    return _error(500, "Internal Server Error")


async def http_exception(request: Request, exc: StarletteHTTPException) -> Response:
    if exc.status_code in (204, 304):
        return Response(status_code=exc.status_code, headers=exc.headers)
    return _error(exc.status_code, exc.detail, exc.headers)


async def validation_exception(request: Request, exc: RequestValidationError) -> SafeJSONResponse:
    return _error(422, _finite(jsonable_encoder(exc.errors())))


# ------------------------------------------------------------------------------------------------ pool
def engine_options(url: str) -> dict[str, Any]:
    """Connection pool options for the API's engine: a pool that never makes a request wait for a connection.

    A sync endpoint holds its session's connection until its response is sent, and FastAPI validates the response
    of a sync endpoint in the thread pool (40 threads). With a bounded pool (5 + 10), 40 requests can wait for a
    connection while the requests holding all 15 wait for a thread to serialize their answer: every request stalls
    for the pool timeout (30 s) and fails with 500. Unbounded overflow removes the wait; SQLite serialises writers
    itself (busy_timeout), and a PostgreSQL server out of connections answers at once (503, Retry-After).
    """
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
        return {}  # one shared in-memory connection (StaticPool/SingletonThreadPool): no pool to size
    return {"pool_size": 20, "max_overflow": -1}


# ------------------------------------------------------------------------------------------------ paths
class PathNotAllowed(ValueError):
    pass


def resolve_roots(roots: Iterable[str | Path]) -> list[Path]:
    return [Path(os.path.realpath(Path(r).expanduser())) for r in roots]


def confine_path(value: Any, roots: Sequence[Path], field: str) -> str:
    """The real absolute path of `value` if it lies inside one of `roots` (after resolving `..` and symlinks);
    raises PathNotAllowed naming `field` otherwise."""
    if not isinstance(value, str) or not value:
        raise PathNotAllowed(f"{field}={value!r}: must be a path (a non-empty string)")
    if "\x00" in value:
        raise PathNotAllowed(f"{field}={value!r}: contains a NUL byte")
    try:
        real = Path(os.path.realpath(value))
        real.exists()  # raises on names the OS rejects (too long, ...)
    except (OSError, ValueError) as e:
        raise PathNotAllowed(f"{field}={value!r}: not a usable path ({e})") from e
    for root in roots:
        if real == root or real.is_relative_to(root):
            return str(real)
    shown = ", ".join(str(r) for r in roots) or "(none)"
    raise PathNotAllowed(
        f"{field}={value!r}: outside the allowed folders ({shown}); local models and data must lie inside "
        f"MEFTS_ALLOWED_ROOTS (default: the data directory); '..' and symlinks are resolved before the check"
    )


def backbone_is_path(backbone: str, registry: Iterable[str]) -> bool:
    """Whether a backbone names a local folder rather than a registry name or a hub id (owner/name)."""
    if backbone in registry:
        return False
    if backbone.startswith(("/", ".", "~", "\\")) or "\\" in backbone or backbone.count("/") > 1:
        return True
    if ".." in backbone.split("/"):
        return True
    try:
        return os.path.lexists(backbone)
    except (OSError, ValueError):
        return True


# ------------------------------------------------------------------------------------------------ wiring
def install(app: FastAPI, settings) -> None:
    """Host allowlist, token and request guard, CORS (only with MEFTS_CORS_ORIGINS), and the error handlers."""
    app.add_exception_handler(OperationalError, operational_error)
    app.add_exception_handler(OSError, os_error)
    app.add_exception_handler(StarletteHTTPException, http_exception)
    app.add_exception_handler(RequestValidationError, validation_exception)
    app.add_middleware(RequestGuard, token=token_value(settings), max_body_bytes=settings.max_body_bytes)
    origins = settings.cors_origin_list
    if origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(  # outermost: preflights are answered before the token check
            CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID"], allow_credentials=False, max_age=600,
        )
    app.add_middleware(HostGuard, allowed=settings.allowed_host_list)  # outermost: a foreign Host gets nothing
