"""Executors run a claimed run's job somewhere: `local` (a subprocess on this machine) or `ray` (a Ray task placed
by the cluster). The dispatcher drives either through the same methods:

- `slots`, `slot_kind`: where jobs may run now (the dispatcher claims one run per free slot);
- `host_bound`: whether the jobs share this machine's cores with other workers' jobs on it;
- `refresh()`: the device inventory (reported in the worker's heartbeat; Ray also updates its slots);
- `start(run_id=, attempt=, slot=)` -> handle; `poll(handle)` -> exit code or None; `signal(handle, sig)`;
  `wait(handle, timeout)` -> ended; `log_tail(handle)`.

A handle has run_id, attempt, slot, pid (None until known), started, term_sent_at, kill_sent and, where the
executor knows better than an exit code why a job ended, exit_reason.
"""

from __future__ import annotations

from backend.settings import Settings
from backend.worker.executors.local import LocalExecutor, detect_devices

EXECUTORS = ("local", "ray")


def make_executor(settings: Settings):
    """The executor that settings.executor (EXECUTOR) names."""
    if settings.executor == "local":
        return LocalExecutor(
            db_url=settings.db_url, data_dir=settings.data_dir, log_dir=settings.log_dir,
            cpu_slots=settings.cpu_slots, cpu_count=settings.cpu_count, devices=detect_devices(settings.gpus),
        )
    if settings.executor == "ray":
        from backend.worker.executors.ray import RayExecutor

        return RayExecutor(settings)
    raise ValueError(f"executor={settings.executor!r}: not an executor; valid: {', '.join(EXECUTORS)}")
