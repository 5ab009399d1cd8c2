"""Ray executor (EXECUTOR=ray, RAY_ADDRESS=host:port): each claimed run becomes one Ray task that asks for
num_gpus (GPU runs) or num_cpus (CPU runs), so Ray places it on a node of the cluster with room for it.

The task runs the local executor's entry point, `backend.worker.job.main`, in a fresh Ray worker process
(max_calls=1), with DATABASE_URL and the MEFTS_* settings of the dispatcher: progress, metrics, memory and the verdict
go straight to the database, fenced by the attempt number, exactly as from a local job subprocess.

- cancel (SIGTERM or SIGKILL from the dispatcher) is a forced `ray.cancel`: Ray kills the worker process;
- a task that fails with a system error (its worker crashed, its node died) is a job that died without a verdict:
  the dispatcher puts the run back in the queue (or fails it after max_attempts), as for a killed subprocess.
  Ray itself never retries (max_retries=0): the queue owns retries.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any

from backend.settings import Settings
from backend.worker.executors.local import Slot

log = logging.getLogger(__name__)

# Environment a task gets from the dispatcher: what the job reads (Settings, offline switches). Machine-specific
# names (MEFTS_HOST, MEFTS_WORKER_ID, MEFTS_DATA_DIR, paths) stay behind: the task may run on another node.
FORWARD_PREFIXES = ("MEFTS_", "HF_", "TRANSFORMERS_", "TOKENIZERS_")
NOT_FORWARDED = {"MEFTS_HOST", "MEFTS_WORKER_ID", "MEFTS_DATA_DIR", "MEFTS_EXECUTOR", "MEFTS_RAY_ADDRESS",
                 "MEFTS_API_TOKEN", "HF_HOME"}  # a job needs no API token


def run_job_task(run_id: int, attempt: int, threads: int, slot: str, env: dict[str, str]) -> int:
    """The body of the Ray task: the job entry point, in this (fresh) Ray worker process."""
    os.environ.update(env)
    if slot.startswith("cpu"):
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # a CPU run never touches a GPU of the node
    from backend.worker.job import main

    return main([str(run_id), "--attempt", str(attempt), "--threads", str(threads), "--slot", slot])


@dataclass
class RayJobHandle:
    run_id: int
    attempt: int
    slot: Slot
    ref: Any  # ray.ObjectRef of the task
    started: float = field(default_factory=time.monotonic)
    term_sent_at: float | None = None
    kill_sent: bool = False
    cancelled: bool = False
    code: int | None = None
    exit_reason: str | None = None
    pid: int | None = None  # the job writes its own (the Ray worker's) pid to the run


def classify(exc: BaseException) -> tuple[int, str]:
    """(exit code, why) of a task that raised: cancelled, a system error (lost worker or node), or the job's own
    exception. Negative codes read as "killed" (the run goes back to the queue unless it was cancelled)."""
    import ray.exceptions as rex

    if isinstance(exc, rex.TaskCancelledError):
        return -signal.SIGKILL, "the Ray task was cancelled (forced)"
    if isinstance(exc, rex.RayTaskError):  # raised by the job code itself, not by Ray
        return 1, f"the Ray task raised {type(exc.cause).__name__ if exc.cause else 'an error'}: {exc}"[:2000]
    # WorkerCrashedError, NodeDiedError, OutOfMemoryError (Ray's memory monitor), ObjectLostError, ...
    return -signal.SIGKILL, f"lost the Ray worker or node ({type(exc).__name__}): {exc}"[:2000]


class RayExecutor:
    """Submits, cancels and polls Ray tasks. Slots: the cluster's GPUs (or CPUs) divided by what a job asks for."""

    host_bound = False  # Ray places the tasks; this machine's cores are not what they use

    def __init__(self, settings: Settings) -> None:
        import ray

        self.settings = settings
        self.cpus_per_job = settings.ray_cpus_per_job
        self.gpus_per_job = settings.ray_gpus_per_job
        if not ray.is_initialized():
            address = settings.ray_address or os.environ.get("RAY_ADDRESS")
            if address:
                # host:port joins through this machine's Ray node; ray://host:10001 is a Ray Client from anywhere
                ray.init(address=address, namespace="mefts")
            else:  # no cluster named: a Ray of this machine, started here and stopped with the process
                ray.init(namespace="mefts", include_dashboard=False)
        self._remote = ray.remote(max_calls=1)(run_job_task)  # a fresh worker process per job, as locally
        self.slots: list[Slot] = []
        self.slot_kind = "cpu"
        self.devices: list[dict[str, Any]] = []
        self.refresh()

    # -------------------------------------------------------------------------------------------- the cluster
    def refresh(self) -> list[dict[str, Any]]:
        """Re-read the cluster (nodes join and leave): the slots and the device inventory. Returns the inventory."""
        import ray

        try:
            nodes = [n for n in ray.nodes() if n.get("Alive")]
        except Exception as e:  # the head is unreachable for now: keep what we knew, and still heartbeat the queue
            log.warning("could not read the Ray cluster's nodes: %s", e)
            return self.devices
        devices: list[dict[str, Any]] = []
        total_cpu = total_gpu = 0.0
        for n in nodes:
            res = n.get("Resources", {})
            node = n.get("NodeManagerHostname") or n.get("NodeManagerAddress")
            cpus, gpus = float(res.get("CPU", 0)), float(res.get("GPU", 0))
            total_cpu += cpus
            total_gpu += gpus
            devices.append({"kind": "cpu", "node": node, "address": n.get("NodeManagerAddress"), "cores": cpus})
            kinds = [k.split(":", 1)[1] for k in res if k.startswith("accelerator_type:")]
            for i in range(int(gpus)):
                devices.append({"kind": "gpu", "index": i, "node": node, "name": kinds[0] if kinds else "GPU"})
        n_gpu_slots = int(total_gpu // self.gpus_per_job) if total_gpu else 0
        threads = max(1, math.ceil(self.cpus_per_job))
        if n_gpu_slots:
            self.slot_kind = "gpu"
            self.slots = [Slot("gpu", i, threads) for i in range(n_gpu_slots)]
        else:
            self.slot_kind = "cpu"
            self.slots = [Slot("cpu", i, threads) for i in range(max(1, int(total_cpu // self.cpus_per_job)))]
        self.devices = devices
        return devices

    # -------------------------------------------------------------------------------------------- jobs
    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if k.startswith(FORWARD_PREFIXES) and k not in NOT_FORWARDED}
        env.update({"DATABASE_URL": self.settings.db_url, "PYTHONUNBUFFERED": "1"})
        return env

    def start(self, *, run_id: int, attempt: int, slot: Slot) -> RayJobHandle:
        if slot.kind == "gpu":
            resources = {"num_gpus": self.gpus_per_job, "num_cpus": min(1.0, self.cpus_per_job)}
        else:
            resources = {"num_cpus": self.cpus_per_job, "num_gpus": 0}
        env = {**self._env(), "OMP_NUM_THREADS": str(slot.threads), "MKL_NUM_THREADS": str(slot.threads)}
        ref = self._remote.options(
            **resources, max_retries=0, retry_exceptions=False, name=f"mefts-run-{run_id}-{attempt}",
        ).remote(run_id, attempt, slot.threads, slot.name, env)
        log.info("run %d attempt %d: submitted Ray task (%s) on %s", run_id, attempt,
                 ", ".join(f"{k}={v:g}" for k, v in resources.items()), slot.name)
        return RayJobHandle(run_id=run_id, attempt=attempt, slot=slot, ref=ref)

    def poll(self, handle: RayJobHandle) -> int | None:
        import ray

        if handle.code is not None:
            return handle.code
        ready, _ = ray.wait([handle.ref], timeout=0)
        if not ready:
            return None
        try:
            handle.code = int(ray.get(handle.ref) or 0)
        except Exception as e:  # every outcome of the task is an exit code and a reason
            handle.code, handle.exit_reason = classify(e)
        return handle.code

    def signal(self, handle: RayJobHandle, sig: signal.Signals) -> None:
        """Any signal is a forced cancel: Ray kills the task's worker process (and whatever it started)."""
        import ray

        if handle.cancelled or handle.code is not None:
            return
        handle.cancelled = True
        try:
            ray.cancel(handle.ref, force=True)
        except Exception as e:  # already finished, or the cluster is gone: poll() tells
            log.warning("run %d: ray.cancel failed: %s", handle.run_id, e)

    def wait(self, handle: RayJobHandle, timeout: float | None) -> bool:
        import ray

        ready, _ = ray.wait([handle.ref], timeout=timeout)
        if ready:
            self.poll(handle)
        return bool(ready)

    @staticmethod
    def log_tail(handle: RayJobHandle, n_chars: int = 4000) -> str:
        """The job's output is in the Ray worker's log on its node (and in this worker's output); here: why it ended."""
        return (handle.exit_reason or "")[-n_chars:]
