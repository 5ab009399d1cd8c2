"""A real `mefts serve` on 127.0.0.1, as the service, browser, fault, hardening and load checks start it.

One class for all of them (tests/backend, tests/e2e, tests/faults, tests/hardening, bench/page_load.py and
bench/load.py): a subprocess on a free port with its own data directory (SQLite, logs), in its own process group
so that a SIGKILL reaches the server alone (jobs run in process groups of their own).
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, interval: float = 0.1, what: str = "condition"):
    """Poll `predicate` until it returns something truthy (returned), or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class ServeProcess:
    """`python -m backend.cli serve --host 127.0.0.1` on a free port, SQLite in `data_dir`.

    worker: run the embedded worker (False: --no-worker). env: settings on top of the offline defaults and one
    torch thread per job (MEFTS_CPU_COUNT=1: the test machine has 2 cores).
    """

    def __init__(self, data_dir: Path, *, worker: bool = True, env: dict[str, str] | None = None,
                 log_level: str = "INFO") -> None:
        self.data_dir = Path(data_dir)
        self.worker = worker
        self.extra_env = env or {}
        self.log_level = log_level
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.data_dir / f"serve-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def db_path(self) -> Path:
        return self.data_dir / "mefts.db"

    @property
    def db_url(self) -> str:
        return f"sqlite:///{self.db_path.resolve()}"

    def start(self, timeout: float = 90.0) -> ServeProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "MEFTS_DATABASE_URL")}
        env.update({**OFFLINE, "PYTHONPATH": str(REPO), "MEFTS_CPU_COUNT": "1", **self.extra_env})
        cmd = [sys.executable, "-m", "backend.cli", "--log-level", self.log_level, "serve", "--host", "127.0.0.1",
               "--port", str(self.port), "--data-dir", str(self.data_dir)]
        if not self.worker:
            cmd.append("--no-worker")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mefts serve exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + "/api/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"mefts serve did not answer within {timeout}s:\n{self.log_tail()}")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_text()[-chars:]

    def get(self, path: str, **params: Any) -> Any:
        """GET, raising on an error status; JSON decoded when the response is JSON."""
        res = httpx.get(self.url + path, params=params, timeout=30)
        res.raise_for_status()
        return res.json() if "json" in res.headers.get("content-type", "") else res.text

    def post(self, path: str, body: Any = None) -> httpx.Response:
        return httpx.post(self.url + path, json=body, timeout=30)

    def kill(self) -> None:
        """SIGKILL the server process alone: no shutdown code runs."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM (the app stops its worker and the jobs), then SIGKILL if it lingers."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(25)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> ServeProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def integrity_check(db_path: Path) -> str:
    """SQLite's `PRAGMA integrity_check` ("ok" when the file is sound)."""
    with sqlite3.connect(db_path, timeout=30) as con:
        return ";".join(row[0] for row in con.execute("PRAGMA integrity_check"))


def kill_job_groups(db_path: Path) -> None:
    """SIGKILL the process groups of jobs a test left running (their pids are in the runs table)."""
    if not db_path.exists():
        return
    with sqlite3.connect(db_path, timeout=30) as con:
        pids = [p for (p,) in con.execute("SELECT pid FROM runs WHERE pid IS NOT NULL")]
    for pid in pids:
        try:
            if os.getpgid(pid) == pid:
                os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
