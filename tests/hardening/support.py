"""The hardening, fault and load checks' server: tests/serve.py's, with the worker off unless asked for."""

from __future__ import annotations

from pathlib import Path

from tests.serve import OFFLINE, REPO, ServeProcess, free_port, integrity_check, kill_job_groups

__all__ = ["OFFLINE", "REPO", "LoopbackServer", "free_port", "integrity_check", "kill_job_groups"]


class LoopbackServer(ServeProcess):
    """`mefts serve` on loopback without its embedded worker (worker=True to have one)."""

    def __init__(self, data_dir: Path, *, worker: bool = False, **kw) -> None:
        super().__init__(data_dir, worker=worker, **kw)
