"""Local executor: one spawned subprocess per job (`python -m backend.worker.job`), each in its own process group,
so cancelling kills the job and everything it started, and a crashing job never takes the worker down."""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[3]


@dataclass(frozen=True)
class Slot:
    """A place to run one job: a share of the CPU cores, or one GPU."""

    kind: str  # "cpu" | "gpu"
    index: int
    threads: int

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.index}"


@dataclass
class JobHandle:
    run_id: int
    attempt: int
    slot: Slot
    process: subprocess.Popen
    log_path: Path
    started: float = field(default_factory=time.monotonic)
    term_sent_at: float | None = None  # when SIGTERM went to the process group (cancel / shutdown)
    kill_sent: bool = False

    @property
    def pid(self) -> int:
        return self.process.pid


def file_tail(path: Path, n_chars: int = 4000) -> str:
    """The last `n_chars` of a job's log ("" when it cannot be read)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - n_chars))
            return fh.read().decode(errors="replace")
    except OSError:
        return ""


def detect_devices(gpus: int | None) -> list[dict[str, Any]]:
    """The CPU and the CUDA devices torch sees (at most `gpus` of them)."""
    devices: list[dict[str, Any]] = [{"kind": "cpu", "name": _cpu_name(), "cores": os.cpu_count() or 1}]
    try:
        import torch

        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if gpus is not None:
            n = min(n, gpus)
        for i in range(n):
            p = torch.cuda.get_device_properties(i)
            devices.append({"kind": "gpu", "index": i, "name": p.name, "total_memory_bytes": int(p.total_memory)})
    except Exception as e:  # a broken CUDA install must not stop a CPU worker
        log.warning("could not query CUDA devices: %s", e)
    return devices


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu"


class LocalExecutor:
    """Starts, signals and polls job subprocesses on this machine."""

    host_bound = True  # its jobs use this machine's cores: other workers' jobs on the host take slots away

    def __init__(self, *, db_url: str, data_dir: Path, log_dir: Path, cpu_slots: int, cpu_count: int,
                 devices: list[dict[str, Any]]) -> None:
        self.db_url = db_url
        self.data_dir = data_dir
        self.log_dir = log_dir
        self.devices = devices
        gpus = [d for d in devices if d["kind"] == "gpu"]
        if gpus:
            threads = max(1, cpu_count // len(gpus))
            self.slots = [Slot("gpu", d["index"], threads) for d in gpus]
        else:
            threads = max(1, cpu_count // cpu_slots)
            self.slots = [Slot("cpu", i, threads) for i in range(cpu_slots)]
        self.slot_kind = self.slots[0].kind

    def start(self, *, run_id: int, attempt: int, slot: Slot) -> JobHandle:
        env = {k: v for k, v in os.environ.items() if k != "MEFTS_API_TOKEN"}  # a job needs no API token
        env.update({
            "DATABASE_URL": self.db_url,
            # absolute: the job runs in the repository root, not in the worker's working directory
            "MEFTS_DATA_DIR": str(Path(self.data_dir).expanduser().resolve()),
            "OMP_NUM_THREADS": str(slot.threads),
            "MKL_NUM_THREADS": str(slot.threads),
            "PYTHONUNBUFFERED": "1",
        })
        if slot.kind == "gpu":
            env["CUDA_VISIBLE_DEVICES"] = str(slot.index)
        else:
            env["CUDA_VISIBLE_DEVICES"] = ""  # a CPU slot never touches a GPU
        # The repository root first on the path, so `-m backend.worker.job` works without an install.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        log_path = self.log_path(run_id)
        with open(log_path, "a") as fh:
            stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
            fh.write(f"==== attempt {attempt} on {slot.name} ({slot.threads} threads) at {stamp} ====\n")
            fh.flush()
            process = subprocess.Popen(
                [sys.executable, "-m", "backend.worker.job", str(run_id), "--attempt", str(attempt),
                 "--threads", str(slot.threads), "--slot", slot.name],
                stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=str(REPO_ROOT),
                start_new_session=True,  # its own process group: killpg reaches every child it starts
            )
        log.info("run %d attempt %d: started pid %d on %s", run_id, attempt, process.pid, slot.name)
        return JobHandle(run_id=run_id, attempt=attempt, slot=slot, process=process, log_path=log_path)

    def refresh(self) -> list[dict[str, Any]]:
        """The devices this executor runs on (fixed for a machine)."""
        return self.devices

    @staticmethod
    def poll(handle: JobHandle) -> int | None:
        return handle.process.poll()

    @staticmethod
    def wait(handle: JobHandle, timeout: float | None) -> bool:
        """Wait up to `timeout` seconds (None: for ever) for the job to end. Returns whether it ended."""
        try:
            handle.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    @staticmethod
    def signal(handle: JobHandle, sig: signal.Signals) -> None:
        """Send `sig` to the job's whole process group."""
        try:
            os.killpg(handle.process.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError as e:  # the pid was reused by someone else's process: leave it alone
            log.warning("run %d: cannot signal process group %d: %s", handle.run_id, handle.process.pid, e)

    @staticmethod
    def log_tail(handle: JobHandle, n_chars: int = 4000) -> str:
        return file_tail(handle.log_path, n_chars)

    def log_path(self, run_id: int) -> Path:
        """Where the jobs of `run_id` write their output (every attempt appends)."""
        return self.log_dir / f"run-{run_id}.log"
