"""Access: the API token on every mutating endpoint, no public bind without it, CORS closed by default, and no
secret in logs, exports or answers."""

from __future__ import annotations

import re
import subprocess
import sys

import httpx
import pytest

from backend.security import MUTATING, PURE_POSTS, bind_refusal
from backend.settings import Settings

from .conftest import TINY, total_runs
from .support import OFFLINE, REPO, LoopbackServer, free_port

TOKEN = "t0k3n-for-tests-9f8e7d6c5b4a"


def _mutating_routes(app) -> list[tuple[str, str]]:
    """Every mutating operation the API publishes (its OpenAPI paths), with path parameters set to 1."""
    out = []
    for path, ops in app.openapi()["paths"].items():
        for method in ops:
            if method.upper() in MUTATING and path.startswith("/api") and path not in PURE_POSTS:
                out.append((method.upper(), re.sub(r"\{[^}]+\}", "1", path)))
    return out


def test_every_mutating_endpoint_needs_the_token(make_client):
    client = make_client(api_token=TOKEN)
    routes = _mutating_routes(client.app)
    assert len(routes) >= 6 and ("POST", "/api/runs") in routes and ("POST", "/api/sweeps/1/cancel") in routes
    for method, path in routes:
        for headers in ({}, {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": f"Basic {TOKEN}"},
                        {"Authorization": "Bearer"}):
            r = client.request(method, path, json=TINY, headers=headers)
            assert r.status_code == 401, (method, path, headers, r.status_code)
            assert r.headers["www-authenticate"] == "Bearer" and "MEFTS_API_TOKEN" in r.json()["detail"]
    for path in ("//api/runs", "/api//runs", "/api/runs/", "/api/./runs", "/API/runs", "/"):
        assert client.post(path, json=TINY).status_code == 401, path
    assert total_runs(client) == 0

    auth = {"Authorization": f"bearer {TOKEN}"}
    r = client.post("/api/runs", json=TINY, headers=auth)
    assert r.status_code == 201, r.text
    rid = r.json()["id"]
    assert client.post(f"/api/runs/{rid}/cancel", headers=auth).status_code == 200
    # reading stays open: the dashboard, exports and the event stream work without it
    for path in ("/api/runs", f"/api/runs/{rid}", "/api/runs.csv", "/api/results.md", "/api/system",
                 "/api/catalog", "/api/health", "/openapi.json"):
        assert client.get(path).status_code == 200, path
    # and so do the POSTs that only compute (the submit form's estimate and method label): they store nothing
    label = client.post("/api/catalog/label", json={"method": "lora", "method_options": {"r": 4}})
    assert label.status_code == 200 and "lora" in label.text, label.text
    estimate = client.post("/api/estimate", json=TINY)
    assert estimate.status_code == 200, estimate.text
    assert total_runs(client) == 1


def test_without_a_token_loopback_serving_stays_open(make_client):
    client = make_client()
    assert client.post("/api/runs", json=TINY).status_code == 201


@pytest.mark.parametrize("host, refused", [
    ("127.0.0.1", False), ("::1", False), ("localhost", False), ("127.0.0.2", False),
    ("0.0.0.0", True), ("::", True), ("192.168.1.5", True), ("example.org", True),
])
def test_a_public_bind_needs_a_token(host, refused):
    assert (bind_refusal(host, Settings()) is not None) == refused
    assert bind_refusal(host, Settings(api_token=TOKEN)) is None


def test_serve_on_all_interfaces_without_a_token_refuses_to_start(tmp_path):
    port = free_port()
    env = {**OFFLINE, "PYTHONPATH": str(REPO), "MEFTS_DATA_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "backend.cli", "serve", "--host", "0.0.0.0", "--port", str(port),
                          "--no-worker"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "refusing to listen on 0.0.0.0 without an API token" in out.stderr and "MEFTS_API_TOKEN" in out.stderr
    assert not (tmp_path / "mefts.db").exists()  # it stopped before touching anything


def test_cors_is_closed_by_default_and_opened_by_a_list(make_client):
    client = make_client()
    r = client.get("/api/runs", headers={"Origin": "http://evil.example"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    r = client.options("/api/runs", headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in r.headers

    client = make_client(cors_origins="http://dash.example, http://other.example/", api_token=TOKEN)
    pre = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"}
    r = client.options("/api/runs", headers={"Origin": "http://dash.example", **pre})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://dash.example"
    assert "authorization" in r.headers["access-control-allow-headers"].lower()
    r = client.options("/api/runs", headers={"Origin": "http://evil.example", **pre})
    assert "access-control-allow-origin" not in r.headers
    r = client.post("/api/runs", json=TINY, headers={"Origin": "http://other.example"})
    assert r.status_code == 401 and r.headers["access-control-allow-origin"] == "http://other.example"


def test_secrets_stay_out_of_logs_exports_and_answers(tmp_path):
    assert TOKEN not in repr(Settings(api_token=TOKEN)) and TOKEN not in str(Settings(api_token=TOKEN).model_dump())
    server = LoopbackServer(tmp_path, env={"MEFTS_API_TOKEN": TOKEN}, log_level="DEBUG").start()
    seen = []
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            auth = {"Authorization": f"Bearer {TOKEN}"}
            assert http.post("/api/runs", json=TINY).status_code == 401
            assert http.post("/api/runs", json=TINY, headers={"Authorization": f"Bearer {TOKEN[:-1]}"}).status_code == 401
            r = http.post("/api/runs", json={**TINY, "name": "secret check"}, headers=auth)
            assert r.status_code == 201, r.text
            rid = r.json()["id"]
            assert http.post(f"/api/runs/{rid}/clone", json={}, headers=auth).status_code == 201
            for path in ("/api/system", "/api/health", "/api/catalog", f"/api/runs/{rid}", f"/api/runs/{rid}/log",
                         "/api/runs", "/api/runs.csv", "/api/runs.json", "/api/results.json", "/api/results.tex",
                         "/api/sweeps", "/openapi.json"):
                r = http.get(path)
                assert r.status_code == 200, (path, r.text)
                seen.append((path, r.text + str(dict(r.headers))))
    finally:
        server.stop()
    for path, text in seen:
        assert TOKEN not in text, path
    log = server.log_text()
    assert "POST /api/runs" in log  # the access log is there (DEBUG), and holds no token
    assert TOKEN not in log
