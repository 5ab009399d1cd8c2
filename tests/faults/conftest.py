"""Fault tests: real servers, workers and job processes on 127.0.0.1; fast heartbeats and leases."""

from __future__ import annotations

import pytest

from tests.backend.conftest import FAST_ENV
from tests.hardening.support import LoopbackServer, kill_job_groups

TOKEN = "fault-tests-token-0123456789"


@pytest.fixture
def make_server(tmp_path):
    """make_server(worker=True, **env) -> a started LoopbackServer on tmp_path/data (a restart is a second call)."""
    servers: list[LoopbackServer] = []
    data_dir = tmp_path / "data"

    def start(worker: bool = True, **env: str) -> LoopbackServer:
        server = LoopbackServer(data_dir, worker=worker, env={**FAST_ENV, **env}).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
    kill_job_groups(data_dir / "mefts.db")
