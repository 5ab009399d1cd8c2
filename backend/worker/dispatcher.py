"""The dispatcher: claims queued runs and runs each in a job subprocess on a free slot.

One `loop()` is one iteration: reap finished jobs, kill cancelled ones, heartbeat (worker row + leases), recover runs
whose lease expired, then claim runs while slots are free. `run()` repeats it until stopped; idle polling backs off.
It runs as a thread inside `mefts serve` or as the process `mefts worker`; several dispatchers may share a database.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import socket
import threading
import time
import uuid

from sqlalchemy.orm import Session, sessionmaker

from backend.settings import Settings
from backend.worker.executors import make_executor
from backend.worker.executors.local import JobHandle, Slot
from backend.worker.timeouts import Timeouts, deadline
from db import crud
from db.models import RunStatus, utcnow
from db.session import session_scope

log = logging.getLogger(__name__)


class Dispatcher:
    def __init__(self, settings: Settings, factory: sessionmaker[Session], *, worker_id: str | None = None) -> None:
        self.settings = settings
        self.factory = factory
        self.host = settings.host or socket.gethostname()
        self.worker_id = worker_id or settings.worker_id or f"{self.host}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.executor = make_executor(settings)  # EXECUTOR: local subprocesses, or Ray tasks (executors/ray.py)
        self.devices = self.executor.refresh()
        self.jobs: dict[int, JobHandle] = {}
        self.stop_event = threading.Event()
        self.wake_event = threading.Event()
        self._last_beat = 0.0
        self._thread: threading.Thread | None = None
        # per-run wall-clock limits (timeout_s); a job whose worker is gone gets a whole lease before others time it out
        self.timeouts = Timeouts(settings.run_timeout_seconds, orphan_grace=settings.lease_seconds)

    # ------------------------------------------------------------------------------------------------ one iteration
    def loop(self) -> int:
        """One iteration. Returns how many jobs it started."""
        self.reap()
        self.kill_cancelled()
        self.timeouts.check(self)
        now = time.monotonic()
        if now - self._last_beat >= self.settings.heartbeat_seconds:
            self.heartbeat()
            self._last_beat = now
        return self.claim_and_start()

    def reap(self) -> None:
        """Collect finished jobs; a job that died without a verdict is re-queued (or cancelled, or failed)."""
        for run_id, handle in list(self.jobs.items()):
            code = self.executor.poll(handle)
            if code is None:
                if handle.term_sent_at is not None and not handle.kill_sent and (
                    time.monotonic() - handle.term_sent_at >= self.settings.kill_grace_seconds
                ):
                    log.warning("run %d: still alive %.0fs after SIGTERM; SIGKILL", run_id,
                                self.settings.kill_grace_seconds)
                    self.executor.signal(handle, signal.SIGKILL)
                    handle.kill_sent = True
                continue
            del self.jobs[run_id]
            if self.timeouts.finish(self, run_id, handle):  # killed past its timeout_s: stored as failed
                continue
            if getattr(handle, "exit_reason", None):  # the executor knows why (e.g. Ray: lost node, cancelled)
                why = handle.exit_reason
            elif code < 0:
                why = f"job process killed by {signal.Signals(-code).name}"
            else:
                why = f"job process exited with code {code}"
            with session_scope(self.factory) as s:
                new = crud.requeue_or_fail(session=s, run_id=run_id, attempt=handle.attempt, error=why)
                if new == RunStatus.failed:
                    tail = self.executor.log_tail(handle)
                    crud.get_run(session=s, run_id=run_id).traceback = tail
            if new is None:
                log.info("run %d attempt %d: job ended (%s)", run_id, handle.attempt, why)
            else:
                log.warning("run %d attempt %d: %s without a verdict; run is now %s", run_id, handle.attempt, why, new)

    def kill_cancelled(self) -> None:
        """SIGTERM the process group of every job whose run was cancelled (SIGKILL after the grace period)."""
        with session_scope(self.factory) as s:
            wanted = {r.id for r in crud.runs_to_kill(session=s, worker_id=self.worker_id)}
        for run_id in wanted:
            handle = self.jobs.get(run_id)
            if handle is not None and handle.term_sent_at is None:
                log.info("run %d: cancel requested; stopping its job (pid %s)", run_id, handle.pid)
                self.executor.signal(handle, signal.SIGTERM)
                handle.term_sent_at = time.monotonic()

    def heartbeat(self) -> None:
        self.devices = self.executor.refresh()  # a Ray cluster's nodes come and go
        with session_scope(self.factory) as s:
            crud.worker_heartbeat(
                session=s, worker_id=self.worker_id, host=self.host, pid=os.getpid(), devices=self.devices,
                slots=len(self.executor.slots), slot_kind=self.executor.slot_kind, busy=len(self.jobs),
            )
            crud.renew_leases(session=s, worker_id=self.worker_id, lease_seconds=self.settings.lease_seconds)
            for run_id, new in crud.recover_expired_leases(session=s):
                log.warning("run %d: lease expired (its worker and job are gone); now %s", run_id, new)

    def free_slots(self) -> list[Slot]:
        busy = {h.slot.name for h in self.jobs.values()}
        free = [slot for slot in self.executor.slots if slot.name not in busy]
        # Jobs that outlived an earlier worker on this host (e.g. after a server restart) still hold their cores.
        if not self.executor.host_bound:
            return free
        with session_scope(self.factory) as s:
            others = [r for r in crud.running_on_host(session=s, host=self.host) if r.id not in self.jobs]
        return free[: max(0, len(free) - len(others))]

    def claim_and_start(self) -> int:
        started = 0
        if self.stop_event.is_set():
            return 0
        for slot in self.free_slots():
            with session_scope(self.factory) as s:
                run = crud.claim_next_run(
                    session=s, worker_id=self.worker_id, host=self.host, lease_seconds=self.settings.lease_seconds,
                    slot=slot.name, gpu_available=slot.kind == "gpu",
                )
                if run is None:
                    break
                run_id, attempt = run.id, run.attempts
                # provisional: the job replaces it when it reports its start; if it never does, it still times out
                start_by = utcnow() + dt.timedelta(seconds=self.settings.job_start_seconds)
                if (due := deadline(run.config, self.settings.run_timeout_seconds, start_by)) is not None:
                    crud.set_run_info(session=s, run_id=run_id, attempt=attempt, values={"deadline_at": due})
            try:
                handle = self.executor.start(run_id=run_id, attempt=attempt, slot=slot)
            except Exception as e:  # OSError from a local start, any error of a Ray submission
                with session_scope(self.factory) as s:
                    crud.requeue_or_fail(session=s, run_id=run_id, attempt=attempt, error=f"could not start the job: {e}")
                log.exception("run %d: could not start the job", run_id)
                continue
            self.jobs[run_id] = handle
            self.timeouts.track(run_id)
            if handle.pid is not None:  # a Ray task's job writes its own pid once it runs
                with session_scope(self.factory) as s:
                    crud.set_pid(session=s, run_id=run_id, attempt=attempt, pid=handle.pid)
            started += 1
        return started

    # ------------------------------------------------------------------------------------------------ driving it
    def run(self, *, burst: bool = False, max_jobs: int | None = None) -> None:
        """Loop until stop(); with `burst`, until no job runs and nothing is left to claim; `max_jobs` caps starts."""
        log.info("worker %s: %d %s slot(s), %d thread(s) each", self.worker_id, len(self.executor.slots),
                 self.executor.slot_kind, self.executor.slots[0].threads)
        delay = self.settings.poll_seconds
        total = 0
        try:
            while not self.stop_event.is_set():
                try:
                    started = self.loop()
                except Exception:  # a locked database or a transient error: log, back off, carry on
                    log.exception("dispatcher iteration failed")
                    started = 0
                total += started
                if max_jobs is not None and total >= max_jobs and not self.jobs:
                    break
                if burst and not self.jobs and started == 0:
                    break  # nothing running and nothing this worker can claim
                busy = bool(self.jobs) or started > 0
                delay = self.settings.poll_seconds if busy else min(delay * 1.5, self.settings.max_idle_poll_seconds)
                self.wake_event.wait(delay)
                self.wake_event.clear()
        finally:
            self.shutdown()

    def start_thread(self) -> threading.Thread:
        self._thread = threading.Thread(target=self.run, name="mefts-dispatcher", daemon=True)
        self._thread.start()
        return self._thread

    def wake(self) -> None:
        """Look at the queue now (called after a run is queued)."""
        self.wake_event.set()

    def stop(self, timeout: float | None = None) -> None:
        self.stop_event.set()
        self.wake_event.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def shutdown(self) -> None:
        """Stop the running jobs and put their runs back in the queue without counting the attempt."""
        if self.jobs:
            log.info("stopping %d job(s); their runs go back to the queue", len(self.jobs))
        for handle in self.jobs.values():
            self.executor.signal(handle, signal.SIGTERM)
        deadline = time.monotonic() + self.settings.kill_grace_seconds
        for handle in self.jobs.values():
            if not self.executor.wait(handle, max(0.0, deadline - time.monotonic())):
                self.executor.signal(handle, signal.SIGKILL)
                self.executor.wait(handle, None)
        try:
            with session_scope(self.factory) as s:
                for run_id, handle in self.jobs.items():
                    crud.requeue_or_fail(session=s, run_id=run_id, attempt=handle.attempt,
                                         error="the worker shut down; re-queued", refund_attempt=True)
                crud.worker_stopped(session=s, worker_id=self.worker_id)
        except Exception:
            log.exception("could not record the worker's shutdown")
        self.jobs.clear()
