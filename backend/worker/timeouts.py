"""Per-run wall-clock limits, enforced by the dispatcher (the job need not cooperate: a hung or stopped job is killed).

A run's limit is its `timeout_s` (stored in its config by the API) or MEFTS_RUN_TIMEOUT_SECONDS. It counts from the
job's report that it started (after its imports: `job.py` stores `deadline_at` with the run), so a slow import does
not eat the run's time, and the deadline lives in the database, not in one dispatcher's memory. Until that report the
run holds a provisional deadline, set when it is claimed: MEFTS_JOB_START_SECONDS later plus its limit, so a job that
hangs before it starts (a stuck import or file system) times out too.

Every dispatcher looks for running runs past their deadline. The owner of the job (the dispatcher that started it)
asks it for a stack dump (SIGUSR1: the job registers faulthandler for it; SIGCONT wakes a stopped job), then SIGKILLs
its process group a second later. A run whose owner is gone (the server was killed and restarted; its job lives on,
renewing its own lease) is taken by any dispatcher once the owner has had a whole lease to act: it asks the job for
the dump when the job is on its host, stores the verdict, and kills the job (on another host the job's heartbeat sees
it no longer owns the run and kills itself). Either way the run is stored as failed with "timed out after N s" and,
as its traceback, the end of the job's log with that dump: where it hung. A timeout is a verdict, not an
infrastructure failure, so it is not retried.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import signal
import time
from dataclasses import dataclass
from typing import Any

from backend.worker.executors.local import file_tail
from db import crud
from db.models import RunStatus, utcnow
from db.session import session_scope

log = logging.getLogger(__name__)

DUMP_WAIT_SECONDS = 1.0  # between the stack-dump request and SIGKILL
LOG_WINDOW_CHARS = 256_000  # how much of the log end is searched for the dump
DUMP_MAX_CHARS = 64_000  # a dump kept whole up to this (one deep stack per thread is a few KB)
_DUMP_HEADER = re.compile(r"^(Current thread|Thread) 0x[0-9a-f]+ .*\(most recent call first\):$")
_DUMP_BODY = re.compile(r"^(  File \"|  <no Python frame>|  \.\.\.|  Garbage-collecting|$)")


def run_limit(config: dict[str, Any] | None, default: float | None) -> float | None:
    """A run's wall-clock limit in seconds: its own timeout_s, else the service's default (None: no limit)."""
    limit = (config or {}).get("timeout_s") or default
    return float(limit) if limit else None


def deadline(config: dict[str, Any] | None, default: float | None, now: dt.datetime | None = None) -> dt.datetime | None:
    """When a job that reports its start `now` times out (naive UTC, as the runs table stores it)."""
    limit = run_limit(config, default)
    return None if limit is None else (now or utcnow()) + dt.timedelta(seconds=limit)


def stack_dump(log_end: str, fallback_chars: int = 4000) -> str:
    """The last faulthandler dump in the end of a job's log, from its first thread header (a plain tail of the
    log would cut the header off a long dump); the last `fallback_chars` of the log when it holds no dump."""
    lines = log_end.splitlines()
    headers = [i for i, line in enumerate(lines) if _DUMP_HEADER.match(line)]
    if not headers:
        return log_end[-fallback_chars:]
    start = end = headers[-1]  # the last dump's last thread; its other threads are above it
    while start > 0 and (_DUMP_HEADER.match(lines[start - 1]) or _DUMP_BODY.match(lines[start - 1])):
        start -= 1
    while start < end and not _DUMP_HEADER.match(lines[start]):
        start += 1
    end += 1
    while end < len(lines) and _DUMP_BODY.match(lines[end]):  # the job may log on after its dump
        end += 1
    dump = "\n".join(lines[start:end]).rstrip("\n") + "\n"
    return dump if len(dump) <= DUMP_MAX_CHARS else dump[:DUMP_MAX_CHARS] + "\n  ... (dump cut)\n"


def timeout_message(limit: float | None) -> str:
    return f"timed out after {limit:g} s" if limit else "timed out at its deadline"


@dataclass
class Due:
    """A run past its deadline whose job was asked for a stack dump."""

    run_id: int
    attempt: int
    limit: float | None
    pid: int | None  # the job's process on this host (None: not here, no dump to wait for)
    asked: float  # monotonic time of the request


def _job_group(pid: int | None) -> int | None:
    """`pid` when it is alive and leads its own process group (every job does: a reused pid rarely does)."""
    try:
        return pid if pid and os.getpgid(pid) == pid else None
    except (ProcessLookupError, PermissionError):
        return None


def _ask_for_dump(pid: int | None) -> None:
    """SIGUSR1 (faulthandler dumps the job's stacks into its log), SIGCONT (a stopped job must run to do it)."""
    for sig in (signal.SIGUSR1, signal.SIGCONT):
        try:
            if pid is not None:
                os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


class Timeouts:
    def __init__(self, default: float | None, *, orphan_grace: float) -> None:
        self.default = default
        self.orphan_grace = orphan_grace  # how long past a deadline the job's owner has to act before others do
        self.fired: dict[int, Due] = {}  # run id -> the timed-out run whose dump was asked for
        self.killed: set[int] = set()

    def track(self, run_id: int) -> None:
        """A job was just started for `run_id`: forget an earlier attempt's timeout (the new clock starts in the job)."""
        self.fired.pop(run_id, None)
        self.killed.discard(run_id)

    def check(self, dispatcher) -> None:
        """Ask jobs past their deadline for a stack dump; DUMP_WAIT_SECONDS later SIGKILL them (own jobs: reap()
        stores the verdict) or store the verdict and kill them (orphans)."""
        now, mono = utcnow(), time.monotonic()
        with session_scope(dispatcher.factory) as s:
            due = [(r.id, r.attempts, r.deadline_at, run_limit(r.config, self.default), r.host, r.pid)
                   for r in crud.runs_past_deadline(session=s, now=now)]
        for run_id, attempt, deadline_at, limit, host, pid in due:
            if run_id in self.fired and self.fired[run_id].attempt == attempt:
                continue
            handle = dispatcher.jobs.get(run_id)
            owned = handle is not None and handle.attempt == attempt
            if not owned and (now - deadline_at).total_seconds() < self.orphan_grace:
                continue  # its owner may be alive and about to act
            log.warning("run %d: %s; stopping its job%s", run_id, timeout_message(limit),
                        "" if owned else f" (an orphan: its worker is gone; on {host}, pid {pid})")
            if owned:
                local = handle.pid if getattr(handle, "process", None) is not None else None
            else:
                local = _job_group(pid) if host == dispatcher.host and dispatcher.executor.host_bound else None
            _ask_for_dump(local)
            self.fired[run_id] = Due(run_id, attempt, limit, local, mono)
        for run_id, entry in list(self.fired.items()):
            if run_id in self.killed or mono - entry.asked < (DUMP_WAIT_SECONDS if entry.pid else 0.0):
                continue
            handle = dispatcher.jobs.get(run_id)
            if handle is not None and handle.attempt == entry.attempt:
                dispatcher.executor.signal(handle, signal.SIGKILL)
                self.killed.add(run_id)
            else:
                del self.fired[run_id]
                self._expire_orphan(dispatcher, entry)

    def _expire_orphan(self, dispatcher, entry: Due) -> None:
        """Store the verdict of a timed-out job this dispatcher did not start, then kill the job if it is here (one
        elsewhere kills itself: its heartbeat finds the run no longer its own)."""
        log_path = getattr(dispatcher.executor, "log_path", None)
        tail = file_tail(log_path(entry.run_id), LOG_WINDOW_CHARS) if entry.pid and log_path is not None else ""
        self._store(dispatcher, entry, tail)
        if _job_group(entry.pid) is not None:
            try:
                os.killpg(entry.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def finish(self, dispatcher, run_id: int, handle) -> bool:
        """After the job of `run_id` ended: if it was timed out, store the verdict and return True."""
        entry = self.fired.pop(run_id, None)
        self.killed.discard(run_id)
        if entry is None or entry.attempt != handle.attempt:
            return False
        log_tail = getattr(dispatcher.executor, "log_tail", None)
        self._store(dispatcher, entry, log_tail(handle, LOG_WINDOW_CHARS) if log_tail is not None else "")
        return True

    @staticmethod
    def _store(dispatcher, entry: Due, tail: str) -> None:
        msg = timeout_message(entry.limit)
        with session_scope(dispatcher.factory) as s:
            stored = crud.finish_run(session=s, run_id=entry.run_id, attempt=entry.attempt, status=RunStatus.failed,
                                     values={"error": msg, "traceback": stack_dump(tail) or msg, "pid": None})
        log.warning("run %d attempt %d: %s%s", entry.run_id, entry.attempt, msg,
                    "" if stored else " (it had already finished)")
