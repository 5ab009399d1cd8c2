"""A real `mefts serve` on 127.0.0.1 for the hardening, fault and load checks (tests and bench/load.py)."""

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

REPO = Path(__file__).resolve().parents[2]
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LoopbackServer:
    """`python -m backend.cli serve --host 127.0.0.1` on a free port, SQLite in `data_dir`, in its own process group
    (so a SIGKILL reaches it alone: jobs run in process groups of their own)."""

    def __init__(self, data_dir: Path, *, worker: bool = False, env: dict[str, str] | None = None,
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

    def start(self, timeout: float = 90.0) -> LoopbackServer:
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
                raise RuntimeError(f"mefts serve exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/api/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"mefts serve did not answer within {timeout}s:\n{self.log_text()[-3000:]}")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL the server process alone: no shutdown code runs."""
        assert self.proc is not None
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

    def __enter__(self) -> LoopbackServer:
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
