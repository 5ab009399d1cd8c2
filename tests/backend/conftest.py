"""Fixtures: the app in-process (httpx through TestClient, no worker) and a real `mefts serve` subprocess."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from backend.main import create_app
from backend.settings import Settings

REPO = Path(__file__).resolve().parents[2]

# Fast timings for tests: heartbeats twice a second, leases of a few seconds, progress written often.
FAST_ENV = {
    "MEFTS_HEARTBEAT_SECONDS": "0.5",
    "MEFTS_LEASE_SECONDS": "4",
    "MEFTS_POLL_SECONDS": "0.2",
    "MEFTS_MAX_IDLE_POLL_SECONDS": "0.5",
    "MEFTS_PROGRESS_INTERVAL_SECONDS": "0.2",
    "MEFTS_KILL_GRACE_SECONDS": "3",
    "MEFTS_CPU_SLOTS": "1",
    "MEFTS_CPU_COUNT": "1",  # one torch thread per job: the test machine has 2 cores
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
}

# A run that finishes in seconds, and one long enough to act on while it runs.
TINY = {"backbone": "tiny-bert", "method": "full", "task": "sst2",
        "hyperparameters": {"epochs": 1, "max_train_samples": 32, "max_eval_samples": 32, "batch_size": 8,
                            "max_seq_len": 32}}
LONG = {"backbone": "tiny-bert", "method": "full", "task": "sst2",
        "hyperparameters": {"epochs": 200, "max_train_samples": 256, "max_eval_samples": 16, "batch_size": 8,
                            "max_seq_len": 32, "patience": 1000, "measure_memory": False}}


def wait_for(predicate, timeout: float, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


# A module runs its tests on both databases with `pytestmark = pytest.mark.parametrize("db_backend", DATABASES,
# indirect=True)`; elsewhere `settings` is on SQLite.
DATABASES = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture
def db_backend(request) -> str:
    return getattr(request, "param", "sqlite")


@pytest.fixture
def settings(request, tmp_path, db_backend) -> Settings:
    if db_backend == "postgresql":
        return Settings(data_dir=tmp_path, database_url=request.getfixturevalue("pg_url"))
    return Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'mefts.db'}")


@pytest.fixture
def client(settings):
    """The real app (migrations, routes) through httpx's ASGI transport; no worker runs."""
    with TestClient(create_app(settings, start_worker=False, frontend_dir=None)) as c:
        yield c


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m backend.cli serve` on 127.0.0.1 with an embedded worker, in its own process group."""

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.extra_env = env or {}
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.http = httpx.Client(base_url=self.url, timeout=30)

    def start(self) -> Server:
        env = {**os.environ, **FAST_ENV, **self.extra_env, "PYTHONPATH": str(REPO)}
        env.pop("DATABASE_URL", None)
        log = open(self.data_dir / f"server-{self.port}.log", "a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "backend.cli", "serve", "--port", str(self.port), "--data-dir", str(self.data_dir)],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        wait_for(self._healthy, 60, 0.2, "the server to answer /api/health")
        return self

    def _healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"server exited with {self.proc.returncode}; see {self.data_dir}")
        try:
            return self.http.get("/api/health").status_code == 200
        except httpx.TransportError:
            return False

    def kill(self) -> None:
        """SIGKILL the server process only (its jobs run in their own process groups)."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def run(self, run_id: int) -> dict:
        r = self.http.get(f"/api/runs/{run_id}")
        assert r.status_code == 200, r.text
        return r.json()

    def wait_status(self, run_id: int, statuses: set[str], timeout: float = 90) -> dict:
        return wait_for(lambda: (lambda r: r if r["status"] in statuses else None)(self.run(run_id)), timeout, 0.2,
                        f"run {run_id} to reach {statuses}")


def _kill_leftover_jobs(data_dir: Path) -> None:
    db = data_dir / "mefts.db"
    if not db.exists():
        return
    with sqlite3.connect(db) as con:
        pids = [p for (p,) in con.execute("SELECT pid FROM runs WHERE pid IS NOT NULL")]
    for pid in pids:
        try:
            if os.getpgid(pid) == pid:
                os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


@pytest.fixture
def make_server(tmp_path):
    """Start servers on one data directory (a restart is a second start); all are stopped at the end."""
    servers: list[Server] = []

    def start(env: dict[str, str] | None = None) -> Server:
        server = Server(tmp_path, env).start()
        servers.append(server)
        return server

    yield start
    for s in servers:
        s.stop()
        s.http.close()
    _kill_leftover_jobs(tmp_path)
