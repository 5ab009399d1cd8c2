"""Per-run wall-clock limits, enforced by the dispatcher (the job need not cooperate: a hung or stopped job is killed).

A run's limit is its `timeout_s` (stored in its config by the API) or MEFTS_RUN_TIMEOUT_SECONDS; it counts from the
start of the job process. Past it the dispatcher asks the job for a stack dump (SIGUSR1: the job registers
faulthandler for it; SIGCONT wakes a stopped job), then SIGKILLs the job's process group a second later. The run is
stored as failed with "timed out after N s" and, as its traceback, the end of the job's log with that dump: where it
hung. A timeout is a verdict, not an infrastructure failure, so it is not retried.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import Any

from db import crud
from db.models import RunStatus
from db.session import session_scope

log = logging.getLogger(__name__)

DUMP_WAIT_SECONDS = 1.0  # between the stack-dump request and SIGKILL


def timeout_message(limit: float) -> str:
    return f"timed out after {limit:g} s"


class Timeouts:
    def __init__(self, default: float | None) -> None:
        self.default = default
        self.limits: dict[int, tuple[float, float]] = {}  # run id -> (limit, monotonic start)
        self.fired: dict[int, float] = {}  # run id -> when the stack dump was asked for
        self.killed: set[int] = set()

    def track(self, run_id: int, config: dict[str, Any] | None) -> None:
        """Start the clock of a job that was just started for `run_id`."""
        limit = (config or {}).get("timeout_s") or self.default
        self.fired.pop(run_id, None)
        self.killed.discard(run_id)
        if limit:
            self.limits[run_id] = (float(limit), time.monotonic())
        else:
            self.limits.pop(run_id, None)

    def check(self, dispatcher) -> None:
        """Ask jobs past their limit for a stack dump; SIGKILL them DUMP_WAIT_SECONDS later."""
        now = time.monotonic()
        for run_id, handle in list(dispatcher.jobs.items()):
            entry = self.limits.get(run_id)
            if entry is None:
                continue
            limit, started = entry
            if run_id not in self.fired:
                if now - started < limit:
                    continue
                log.warning("run %d: %s; stopping its job", run_id, timeout_message(limit))
                self.fired[run_id] = now
                process = getattr(handle, "process", None)
                if process is not None:  # a local job process: dump its stacks into its log first
                    for sig in (signal.SIGUSR1, signal.SIGCONT):
                        try:
                            os.kill(process.pid, sig)
                        except (ProcessLookupError, PermissionError):
                            pass
                    continue
            wait = DUMP_WAIT_SECONDS if getattr(handle, "process", None) is not None else 0.0
            if run_id not in self.killed and now - self.fired[run_id] >= wait:
                dispatcher.executor.signal(handle, signal.SIGKILL)
                self.killed.add(run_id)

    def finish(self, dispatcher, run_id: int, handle) -> bool:
        """After the job of `run_id` ended: if it was timed out, store the verdict and return True."""
        entry = self.limits.pop(run_id, None)
        fired = self.fired.pop(run_id, None)
        self.killed.discard(run_id)
        if fired is None or entry is None:
            return False
        log_tail = getattr(dispatcher.executor, "log_tail", None)
        tail = log_tail(handle) if log_tail is not None else ""
        msg = timeout_message(entry[0])
        with session_scope(dispatcher.factory) as s:
            stored = crud.finish_run(session=s, run_id=run_id, attempt=handle.attempt, status=RunStatus.failed,
                                     values={"error": msg, "traceback": tail or msg, "pid": None})
        log.warning("run %d attempt %d: %s%s", run_id, handle.attempt, msg,
                    "" if stored else " (it had already finished)")
        return True
