"""The job process: `python -m backend.worker.job RUN_ID --attempt N [--threads T]`.

It loads the run's config from the database, calls `mefts_core.training.trainer.run_training` with a callback that writes
progress, metric points, the memory report and log lines (throttled), and stores the verdict:
succeeded (result, and the best model packed as a tar.gz: its path, size and sha256), does_not_fit (out of memory:
"does not fit at batch B, seq T" and the memory reached) or failed (error and traceback).

The run trains in `<data dir>/runs/<run id>/` (backend/artifacts.py). The library keeps a checkpoint there after every
epoch, so an attempt that finds one (its predecessor was killed, lost its worker or its lease, was cancelled or timed
out) resumes from the last complete epoch: it takes over the metric points of the epochs it restored and reports
only the epochs it trains. A heartbeat thread renews the run's lease, so the run survives the death of the worker that
started it, and stops the process if the run was cancelled or taken over (a newer attempt).

Every write is fenced by the attempt number: once the run moved on, nothing this process writes lands.
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from backend import artifacts
from backend.settings import Settings
from backend.worker.timeouts import deadline
from db import crud
from db.models import RunStatus
from db.session import make_engine, make_sessionmaker, session_scope
from mefts_core.training.callbacks import Callback

log = logging.getLogger("mefts.job")

REPO_ROOT = Path(__file__).resolve().parents[2]


def git_revision() -> str | None:
    """`git rev-parse HEAD` of the checkout the code runs from (None outside a git checkout)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    rev = out.stdout.strip()
    if out.returncode != 0 or not rev:
        return None
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                           capture_output=True, text=True, timeout=5)
    return rev + ("-dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


# How allocation failures read: CUDA's "out of memory"; torch's CPU allocator's "can't allocate memory".
OOM_MESSAGES = ("out of memory", "can't allocate memory", "cannot allocate memory")


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in OOM_MESSAGES)


def limit_address_space(extra_bytes: int) -> int:
    """Let this process map at most `extra_bytes` more than it has now (RLIMIT_AS). Returns the new limit."""
    with open("/proc/self/status") as fh:
        vm = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize:"))
    limit = vm + extra_bytes
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    return limit


def memory_reached(device: str | None) -> tuple[int, str]:
    """The most memory the job held: the CUDA allocator's peak on a GPU, else the process's peak RSS."""
    try:
        import torch

        if device and device.startswith("cuda") and torch.cuda.is_available():
            return int(torch.cuda.max_memory_allocated()), "cuda max_memory_allocated"
    except Exception:  # the allocator may be in a bad state after an OOM
        pass
    return peak_rss_bytes(), "process peak RSS"


class DBCallback(Callback):
    """Writes what the training loop reports to the run's rows; progress and log lines at most every `interval`."""

    def __init__(self, factory, run_id: int, attempt: int, interval: float, output_dir: Path | None = None) -> None:
        self.factory = factory
        self.output_dir = output_dir
        self.run_id = run_id
        self.attempt = attempt
        self.interval = interval
        self.lock = threading.Lock()
        self.lines: list[str] = []
        self.points: list[dict[str, Any]] = []
        self.progress: dict[str, Any] | None = None
        self.last_flush = 0.0
        self.step = 0
        self.device: str | None = None
        self.main_metric: str | None = None

    # --- hooks
    def on_start(self, info: dict[str, Any]) -> None:
        self.device = info.get("device")
        self.main_metric = info.get("main_metric")
        resumed = int(info.get("resumed_from_epoch") or 0)
        per_epoch = int(info.get("steps_per_epoch") or 0)
        # Restored epochs are whole epochs (early stopping ends a run, not an epoch), so this is the stored step.
        self.step = resumed * per_epoch
        with session_scope(self.factory) as s:
            crud.set_run_info(session=s, run_id=self.run_id, attempt=self.attempt, values={
                "device_used": info.get("device"), "trainable_params": info.get("trainable_params"),
                "total_params": info.get("total_params"), "main_metric": info.get("main_metric"),
                "total_steps": info.get("total_steps"), "step": self.step, "resumed_from_epoch": resumed,
                "data_source": info.get("data_source"),
            })
            if not resumed:
                return
            # The restored epochs are not reported again: their points, written by an earlier attempt, become this
            # attempt's, so its series (what the dashboard shows) is the whole history of the weights it trains.
            moved = crud.carry_metric_points(session=s, run_id=self.run_id, attempt=self.attempt,
                                             through_epoch=resumed)
            # The library checkpoints an epoch before reporting it: a process killed between the two left an epoch
            # whose metrics never reached the database. The checkpoint's history has them; add_metric_points skips
            # every one already stored, so only such a lost report is written.
            restored = [p for record in self.restored_history(resumed)
                        for p in epoch_points(int(record["epoch"]), int(record["epoch"]) * per_epoch, record)]
            added = crud.add_metric_points(session=s, run_id=self.run_id, attempt=self.attempt, points=restored)
        self.on_log(f"resumed from the checkpoint of epoch {resumed} (step {self.step}); {moved} metric points of "
                    f"epochs 1-{resumed} carried over from an earlier attempt"
                    + (f", {added} lost epoch metrics restored from the checkpoint" if added else ""))

    def restored_history(self, through_epoch: int) -> list[dict[str, Any]]:
        """The per-epoch records of the checkpoint this attempt resumed from (none when it cannot be read)."""
        from mefts_core.training.checkpoint import find_checkpoint, read_state

        folder = find_checkpoint(self.output_dir) if self.output_dir is not None else None
        if folder is None:
            return []
        try:
            history = read_state(folder)["history"]
        except Exception as e:  # the library has read it already; a second reader must not fail the run
            log.warning("could not read the checkpoint's history: %s", e)
            return []
        return [r for r in history if isinstance(r, dict) and 1 <= int(r.get("epoch", 0)) <= through_epoch]

    def on_progress(self, *, step: int, total_steps: int, epoch: int, loss: float) -> None:
        self.step = step
        with self.lock:
            self.progress = dict(step=step, total_steps=total_steps, epoch=epoch, loss=loss)
            self.points.append({"step": step, "epoch": epoch, "name": "step_loss", "value": loss})
        if step == total_steps or time.monotonic() - self.last_flush >= self.interval:
            self.flush()

    def on_epoch_end(self, *, epoch: int, metrics: dict[str, float]) -> None:
        with self.lock:
            self.points.extend(epoch_points(epoch, self.step, metrics))
        self.flush()

    def on_memory(self, report: dict[str, Any]) -> None:
        report = {**report, "process_peak_rss_bytes": peak_rss_bytes()}
        with session_scope(self.factory) as s:
            crud.add_memory_report(session=s, run_id=self.run_id, attempt=self.attempt, report=report)

    def on_log(self, message: str) -> None:
        with self.lock:
            self.lines.append(f"{time.strftime('%H:%M:%S')} {message}")
        if time.monotonic() - self.last_flush >= self.interval:
            self.flush()

    # --- writes
    def flush(self) -> None:
        with self.lock:
            lines, self.lines = self.lines, []
            points, self.points = self.points, []
            progress, self.progress = self.progress, None
            self.last_flush = time.monotonic()
        with session_scope(self.factory) as s:
            if progress is not None:
                crud.update_progress(session=s, run_id=self.run_id, attempt=self.attempt, **progress)
            if points:
                crud.add_metric_points(session=s, run_id=self.run_id, attempt=self.attempt, points=points)
            if lines:
                crud.append_log(session=s, run_id=self.run_id, lines=lines)


def epoch_points(epoch: int, step: int, metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """The metric points of one epoch's record (train_loss, dev_*, lr, seconds), at the epoch's last step."""
    return [{"step": step, "epoch": epoch, "name": name, "value": float(value)} for name, value in metrics.items()
            if name != "epoch" and isinstance(value, int | float) and not isinstance(value, bool)]


class LogToCallback(logging.Handler):
    """mefts_core's log records (warnings and up, plus mefts_core INFO) into the run's log tail."""

    def __init__(self, cb: DBCallback) -> None:
        super().__init__(level=logging.INFO)
        self.cb = cb

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("mefts_core.training.trainer"):
            return  # those arrive through on_log already
        if record.levelno >= logging.WARNING:
            self.cb.on_log(f"{record.levelname}: {record.getMessage()}")


def heartbeat(factory, run_id: int, attempt: int, lease: float, every: float, stop: threading.Event) -> None:
    """Renew the lease; stop this process if the run was cancelled or moved on to another attempt."""
    while not stop.wait(every):
        try:
            with session_scope(factory) as s:
                owned, cancel = crud.job_heartbeat(session=s, run_id=run_id, attempt=attempt, lease_seconds=lease)
        except Exception as e:  # a locked or unreachable database: try again at the next beat
            log.warning("heartbeat failed: %s", e)
            continue
        if not owned or cancel:
            if cancel:
                with session_scope(factory) as s:
                    crud.finish_run(session=s, run_id=run_id, attempt=attempt, status=RunStatus.cancelled,
                                    values={"error": "cancelled", "pid": None})
            log.warning("run %d attempt %d: %s; stopping", run_id, attempt,
                        "cancelled" if cancel else "no longer owned by this attempt")
            if os.getpgrp() == os.getpid():  # started by a worker: the group is this job and its children
                os.killpg(os.getpgrp(), signal.SIGKILL)
            os._exit(3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backend.worker.job", description=__doc__.splitlines()[0])
    parser.add_argument("run_id", type=int)
    parser.add_argument("--attempt", type=int, required=True)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--slot", default="cpu:0", help="the worker's slot: cpu:N or gpu:N")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # a timed-out job's stacks land in its log

    settings = Settings()
    engine = make_engine(settings.db_url)
    factory = make_sessionmaker(engine)
    run_id, attempt = args.run_id, args.attempt

    with session_scope(factory) as s:
        run = crud.get_run(session=s, run_id=run_id)
        if run is None or run.status != RunStatus.running or run.attempts != attempt:
            log.warning("run %d attempt %d is not mine to run (status %s, attempt %s)", run_id, attempt,
                        getattr(run, "status", None), getattr(run, "attempts", None))
            return 0
        config_dict = dict(run.config)
        method_label = run.method_label
    from mefts_core.config import TrainConfig
    from mefts_core.training.trainer import versions

    info = {"pid": os.getpid(), "git_revision": git_revision(), "versions": versions(),
            "host": settings.host or socket.gethostname()}
    with session_scope(factory) as s:  # the job's report that it started: its timeout_s counts from here
        crud.set_run_info(session=s, run_id=run_id, attempt=attempt,
                          values={**info, "deadline_at": deadline(config_dict, settings.run_timeout_seconds)})

    stop = threading.Event()
    threading.Thread(
        target=heartbeat, args=(factory, run_id, attempt, settings.lease_seconds, settings.heartbeat_seconds, stop),
        daemon=True, name="lease",
    ).start()

    if settings.job_memory_limit_bytes and args.slot.startswith("cpu"):
        # CPU jobs only: CUDA maps far more address space than it uses. Set after the imports above.
        limit = limit_address_space(settings.job_memory_limit_bytes)
        log.info("address space limited to %.2f GiB", limit / 2**30)
    from mefts_core.training.checkpoint import find_checkpoint

    output_dir = artifacts.run_dir(settings.data_dir, run_id)
    output_dir.mkdir(parents=True, exist_ok=True)
    # An earlier attempt of this run (killed, lost with its worker, past its lease, cancelled or timed out) left
    # the checkpoint of its last complete epoch: this attempt continues from there.
    resume = find_checkpoint(output_dir) is not None
    log.info("run %d attempt %d: output in %s (%s)", run_id, attempt, output_dir,
             "resuming from its checkpoint" if resume else "no checkpoint: from the start")
    cb = DBCallback(factory, run_id, attempt, settings.progress_interval_seconds, output_dir)
    logging.getLogger().addHandler(LogToCallback(cb))
    config = None
    try:
        if config_dict.get("threads") is None and args.threads:
            config_dict["threads"] = args.threads
        config_dict.pop("timeout_s", None)  # the service's limit, enforced by the dispatcher (worker/timeouts.py)
        config = TrainConfig.from_dict(config_dict)
        result = train(config, cb, output_dir, resume).to_dict()
    except Exception as exc:  # every outcome is data: stored with the traceback, never a crash of the worker
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        if soft != hard:
            resource.setrlimit(resource.RLIMIT_AS, (hard, hard))  # room to record the verdict
        stop.set()
        cb.flush()
        tb = traceback.format_exc()
        log.error("run %d failed: %s", run_id, tb)
        if is_out_of_memory(exc):
            reached, how = memory_reached(cb.device)
            bs = config.batch_size if config else config_dict.get("batch_size")
            seq = config.max_seq_len if config else config_dict.get("max_seq_len")
            msg = (f"does not fit at batch {bs}, seq {seq}: out of memory after reaching "
                   f"{reached / 2**30:.2f} GiB ({how}) on {cb.device or config_dict.get('device')}")
            with session_scope(factory) as s:
                crud.finish_run(session=s, run_id=run_id, attempt=attempt, status=RunStatus.does_not_fit, values={
                    "error": msg, "traceback": tb, "pid": None,
                    "result": {"does_not_fit": True, "batch_size": bs, "max_seq_len": seq,
                               "memory_reached_bytes": reached, "memory_reached_how": how,
                               "exception": f"{type(exc).__name__}: {exc}"[:2000]},
                })
            return 0
        with session_scope(factory) as s:
            crud.finish_run(session=s, run_id=run_id, attempt=attempt, status=RunStatus.failed, values={
                "error": f"{type(exc).__name__}: {exc}"[:4000], "traceback": tb, "pid": None,
            })
        return 0

    main_metric = result.get("main_metric")
    test, dev = result.get("test_metrics") or {}, result.get("dev_metrics") or {}
    score = test.get(main_metric, dev.get(main_metric))
    stored = store_artifact(settings, run_id, method_label, output_dir, result, cb)
    stop.set()  # after packing: the lease stays renewed while a large model is compressed
    cb.flush()
    with session_scope(factory) as s:
        ok = crud.finish_run(session=s, run_id=run_id, attempt=attempt, status=RunStatus.succeeded, values={
            "result": result, "main_metric": main_metric, "score": score, "progress": 1.0, "pid": None,
            "trainable_params": result.get("trainable_params"), "total_params": result.get("total_params"),
            "versions": result.get("versions"), "device_used": result.get("device"), **stored,
        })
    # The library removed the checkpoint when the run ended (a succeeded run is never resumed); model/ and the
    # archive stay.
    log.info("run %d attempt %d: %s", run_id, attempt, "succeeded" if ok else "finished, but the run moved on")
    return 0


def train(config, cb: DBCallback, output_dir: Path, resume: bool):
    """run_training in the run's folder, resuming from its checkpoint. A checkpoint that cannot be used (written by
    another mefts version, damaged on disk) is removed and the run starts afresh: otherwise every retry would fail
    on it. The library reads it before the run's first callback, so nothing was reported from it."""
    from mefts_core.errors import ArtifactError
    from mefts_core.training.checkpoint import remove_checkpoint
    from mefts_core.training.trainer import run_training

    try:
        return run_training(config, [cb], output_dir=output_dir, resume=resume)
    except ArtifactError as e:
        if not resume or not Path(e.file).resolve().is_relative_to(output_dir.resolve()):
            raise
        log.warning("run %d: unusable checkpoint, starting afresh: %s", cb.run_id, e)
        cb.on_log(f"WARNING: the checkpoint could not be resumed from ({e}); starting afresh")
    remove_checkpoint(output_dir)
    return run_training(config, [cb], output_dir=output_dir, resume=False)


def store_artifact(settings: Settings, run_id: int, method_label: str, output_dir: Path, result: dict[str, Any],
                   cb: DBCallback) -> dict[str, Any]:
    """Pack the best model as `model.tar.gz`; the run's artifact columns. A failure to pack (a full disk) leaves the
    run succeeded without an artifact (its scores stand; the weights are still in `model/`), said in its log."""
    lib = result.get("artifact")
    if isinstance(lib, dict) and lib.get("path"):
        try:  # stored relative to the data directory, like artifact_path: the server's layout is not published
            lib["path"] = artifacts.relative_to_data(settings.data_dir, Path(lib["path"]))
        except ValueError:
            pass
    try:
        packed = artifacts.pack_model(output_dir, top=artifacts.download_name(run_id, method_label)[: -len(".tar.gz")])
    except OSError as e:
        log.error("run %d: could not pack the model: %s", run_id, e)
        cb.on_log(f"WARNING: the model could not be packed for download: {e}")
        return {}
    cb.on_log(f"model packed: {packed.bytes} bytes, sha256 {packed.sha256}")
    return {"artifact_path": artifacts.relative_to_data(settings.data_dir, packed.path),
            "artifact_bytes": packed.bytes, "artifact_sha256": packed.sha256}


if __name__ == "__main__":
    sys.exit(main())
