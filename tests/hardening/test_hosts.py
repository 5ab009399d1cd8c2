"""Host allowlist (DNS rebinding): only loopback names, plus MEFTS_ALLOWED_HOSTS, are answered; others get 400."""

from __future__ import annotations

import httpx
import pytest

from backend.security import HOSTS_ENV, bound_host_entry, split_host

from .conftest import TINY, total_runs
from .support import LoopbackServer

FOREIGN = ("evil.example:8766", "evil.example", "localhost.evil.example", "127.0.0.1.nip.io:80", "127.0.0.2",
           "[::2]:80", "localhost:80x", "", "[::1]evil")


def _refused(r: httpx.Response, host: str) -> None:
    assert r.status_code == 400, (host, r.status_code, r.text)
    assert HOSTS_ENV in r.json()["detail"], r.text


def test_a_foreign_host_gets_400_and_changes_nothing(make_client):
    client = make_client()
    for host in FOREIGN:
        _refused(client.post("/api/runs", json=TINY, headers={"Host": host}), host)
        _refused(client.get("/api/runs", headers={"Host": host}), host)
        _refused(client.get("/api/health", headers={"Host": host}), host)
    assert total_runs(client) == 0  # no refused POST was stored
    for host in ("localhost:8766", "127.0.0.1:8766", "[::1]:8766", "localhost", "127.0.0.1", "[::1]", "LOCALHOST:1"):
        assert client.get("/api/runs", headers={"Host": host}).status_code == 200, host
    assert client.post("/api/runs", json=TINY, headers={"Host": "localhost:8766"}).status_code == 201
    assert total_runs(client) == 1


def test_allowed_hosts_extend_the_list(make_client):
    client = make_client(allowed_hosts="dash.example, lan.box:9000 ,10.0.0.7,fe80::1")
    for host in ("dash.example", "dash.example:443", "lan.box:9000", "10.0.0.7:8000", "[fe80::1]:80", "localhost:1"):
        assert client.get("/api/health", headers={"Host": host}).status_code == 200, host
    for host in ("lan.box:9001", "lan.box", "evil.example", "10.0.0.8"):
        _refused(client.get("/api/health", headers={"Host": host}), host)
    anyhost = make_client(allowed_hosts="*")
    assert anyhost.post("/api/runs", json=TINY, headers={"Host": "evil.example"}).status_code == 201


@pytest.mark.parametrize(("bind", "entry"), [("127.0.0.1", None), ("::1", None), ("0.0.0.0", None), ("::", None),
                                             ("localhost", None), ("192.168.1.5", "192.168.1.5"),
                                             ("fe80::1", "[fe80::1]"), ("box.lan", "box.lan")])
def test_serve_allows_the_address_it_is_bound_to(bind, entry):
    assert bound_host_entry(bind) == entry
    if entry is not None:
        assert split_host(entry)[0] == split_host(f"{entry}:8000")[0]  # a Host header with a port matches it


def test_real_server_refuses_foreign_hosts_and_serves_the_dashboard(tmp_path):
    server = LoopbackServer(tmp_path / "data", env={HOSTS_ENV: "proxy.example"}).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            port = server.port
            _refused(http.post("/api/runs", json=TINY, headers={"Host": f"evil.example:{port}"}), "evil")
            _refused(http.get("/api/runs", headers={"Host": f"evil.example:{port}"}), "evil")
            _refused(http.get("/", headers={"Host": f"evil.example:{port}"}), "evil")
            for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "proxy.example"):
                page = http.get("/", headers={"Host": host})
                assert page.status_code == 200 and "<html" in page.text.lower(), host
                assert http.get("/api/runs", headers={"Host": host}).json()["total"] == 0, host
            assert http.post("/api/runs", json=TINY, headers={"Host": "proxy.example"}).status_code == 201
    finally:
        server.stop()
    assert "evil.example" in server.log_text()  # the refusal is logged
