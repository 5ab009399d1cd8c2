"""What the browser tests and bench/page_load.py share: a real `mefts serve` on loopback, Chromium's launch
options, and synthetic finished runs.

Synthetic runs are written through db.crud's own state path (create -> claim -> finish, plus a memory report and
metric points), so the API serves them like real ones. Their numbers are made up (shaped like the MEFT paper's:
activations fall by up to ~84% against full fine-tuning at a similar score) and each is named "synthetic", so the
dashboard shows them as such.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

from backend import runspec
from db import crud
from db.models import RunStatus
from db.session import make_engine, make_sessionmaker, session_scope, upgrade_database
from mefts_core.config import TrainConfig
from tests.serve import REPO, ServeProcess  # noqa: F401 (REPO: re-exported to the browser tests)

CHROMIUM = os.environ.get("MEFTS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
GiB = 2**30


class Server(ServeProcess):
    """tests/serve.py's server for the browser tests: events and progress every half second, warnings only."""

    def __init__(self, data_dir: Path, *, worker: bool = True, env: dict[str, str] | None = None) -> None:
        fast = {"MEFTS_DATA_DIR": str(data_dir), "MEFTS_EVENTS_POLL_SECONDS": "0.5",
                "MEFTS_PROGRESS_INTERVAL_SECONDS": "0.5"}
        super().__init__(data_dir, worker=worker, env={**fast, **(env or {})}, log_level="WARNING")


# (score, stored activations, peak, trainable fraction) of each method relative to full fine-tuning.
METHOD_SHAPE = {
    "full": (1.000, 1.00, 1.00, 1.0),
    "lora": (0.995, 0.72, 0.55, 0.003),
    "adapter": (0.993, 0.78, 0.58, 0.01),
    "bitfit": (0.985, 0.80, 0.52, 0.001),
    "meft1": (0.992, 0.16, 0.30, 0.004),
    "meft2": (0.990, 0.19, 0.32, 0.004),
    "meft3": (0.988, 0.17, 0.31, 0.004),
}
# Step time against full fine-tuning's: the reversible methods recompute activations in backward.
STEP_FACTOR = {"full": 1.0, "lora": 0.8, "adapter": 0.85, "bitfit": 0.7, "meft1": 1.3, "meft2": 1.35, "meft3": 1.25}
# (full fine-tuning's score, stored activation GiB, peak GiB, parameters) per backbone at batch 16, seq 128.
BACKBONE_SHAPE = {
    "bert-base": (0.925, 2.1, 4.0, 110_000_000),
    "roberta-large": (0.955, 7.4, 13.5, 355_000_000),
    "minilm-l6": (0.890, 0.45, 0.9, 22_700_000),
}
FAKE_WORKER = "seed:0"


def _config(backbone: str, method: str, task: str, seed: int, **hp: Any) -> dict[str, Any]:
    return {
        "backbone": backbone, "method": method, "task": task, "method_options": {}, "task_options": {},
        "learning_rate": None, "batch_size": hp.get("batch_size", 16), "epochs": hp.get("epochs", 3),
        "max_seq_len": hp.get("max_seq_len", 128), "warmup_ratio": 0.06, "weight_decay": 0.0, "grad_clip": 1.0,
        "patience": 5, "seed": seed, "bf16": False, "threads": None, "device": hp.get("device", "auto"),
        "max_train_samples": None, "max_eval_samples": None, "measure_memory": True,
    }


def _insert(factory, cfg: dict[str, Any], *, name: str) -> int:
    with session_scope(factory) as s:
        run = crud.create_run(session=s, fields=runspec.run_columns(TrainConfig.from_dict(cfg), name=name))
        run_id = run.id
    with session_scope(factory) as s:
        claimed = crud.claim_next_run(session=s, worker_id=FAKE_WORKER, host="seed", lease_seconds=3600, slot="cpu:0",
                                       gpu_available=True)
        assert claimed is not None and claimed.id == run_id, "seed a database that has no queued runs"
    return run_id


def _succeed(factory, run_id: int, cfg: dict[str, Any], rng: random.Random) -> None:
    backbone, method = cfg["backbone"], cfg["method"]
    base_score, act_gib, peak_gib, params = BACKBONE_SHAPE.get(backbone, (0.9, 1.0, 2.0, 50_000_000))
    f_score, f_act, f_peak, f_train = METHOD_SHAPE[method]
    scale = cfg["batch_size"] * cfg["max_seq_len"] / (16 * 128)
    score = min(1.0, base_score * f_score + rng.gauss(0, 0.004))
    act = int(act_gib * f_act * scale * GiB * (1 + rng.gauss(0, 0.01)))
    peak = int(peak_gib * f_peak * (0.5 + 0.5 * scale) * GiB * (1 + rng.gauss(0, 0.01)))
    trainable = max(1, int(params * f_train))
    epochs = [{"epoch": e, "train_loss": 0.6 / e, "dev_loss": 0.4 / e, "dev_accuracy": score - 0.02 / e}
              for e in range(1, cfg["epochs"] + 1)]
    result = {
        "config": cfg, "task": cfg["task"], "problem": "classification", "main_metric": "accuracy",
        "split": "synthetic", "split_sizes": {}, "learning_rate": 5e-4, "epoch_metrics": epochs,
        "best_epoch": cfg["epochs"], "stopped_early": False, "dev_metrics": {"accuracy": score + 0.003},
        "test_metrics": {"accuracy": score}, "memory": None, "trainable_params": trainable, "total_params": params,
        "wall_seconds": 100.0, "versions": {"torch": "synthetic"}, "device": "cuda:0",
    }
    with session_scope(factory) as s:
        crud.add_memory_report(session=s, run_id=run_id, attempt=1, report={
            "device": "cuda:0", "how": "cuda-allocator", "stored_activation_bytes": act, "peak_bytes": peak,
            "peak_activation_bytes": int(act * 1.3), "param_bytes": 4 * params, "trainable_param_bytes": 4 * trainable,
            "grad_bytes": 4 * trainable, "optimizer_bytes": 8 * trainable,
            "step_seconds": round(0.2 * STEP_FACTOR[method] * params / 110_000_000 * scale, 4),
            "batch_shape": [cfg["batch_size"], cfg["max_seq_len"]],
        })
        crud.add_metric_points(session=s, run_id=run_id, attempt=1, points=[
            {"step": 10 * e["epoch"], "epoch": e["epoch"], "name": k, "value": v}
            for e in epochs for k, v in e.items() if k != "epoch"
        ])
        crud.finish_run(session=s, run_id=run_id, attempt=1, status=RunStatus.succeeded, values={
            "result": result, "main_metric": "accuracy", "score": score, "progress": 1.0,
            "trainable_params": trainable, "total_params": params, "device_used": "cuda:0",
            "data_source": "packaged",  # the seeded tasks (sst2, rte, mrpc) have packaged copies, as offline runs use
        })


def _fail(factory, run_id: int, status: RunStatus, error: str, result: dict[str, Any] | None = None) -> None:
    with session_scope(factory) as s:
        crud.finish_run(session=s, run_id=run_id, attempt=1, status=status,
                        values={"error": error, "traceback": f"Traceback (synthetic)\n{error}", "result": result})


def seed_compare(db_url: str, *, task: str = "sst2", seeds: tuple[int, ...] = (1, 2, 3)) -> dict[str, Any]:
    """Succeeded runs of every method on bert-base and roberta-large (each over `seeds`), one run that did not fit
    and one that failed. Returns {"succeeded": [ids], "does_not_fit": id, "failed": id}."""
    upgrade_database(db_url)
    factory = make_sessionmaker(make_engine(db_url))
    rng = random.Random(0)
    ids: dict[str, Any] = {"succeeded": []}
    for backbone in ("bert-base", "roberta-large"):
        for method in METHOD_SHAPE:
            for seed in seeds:
                cfg = _config(backbone, method, task, seed)
                run_id = _insert(factory, cfg, name="synthetic")
                _succeed(factory, run_id, cfg, rng)
                ids["succeeded"].append(run_id)
    cfg = _config("roberta-large", "full", task, 1, batch_size=64, max_seq_len=512, device="cuda:0")
    ids["does_not_fit"] = _insert(factory, cfg, name="synthetic")
    _fail(factory, ids["does_not_fit"], RunStatus.does_not_fit,
          "does not fit at batch 64, seq 512: out of memory after reaching 79.10 GiB (cuda max_memory_allocated) on cuda:0",
          {"does_not_fit": True, "batch_size": 64, "max_seq_len": 512, "memory_reached_bytes": int(79.1 * GiB),
           "memory_reached_how": "cuda max_memory_allocated"})
    cfg = _config("bert-base", "meft2", task, 1, device="cuda:0")
    ids["failed"] = _insert(factory, cfg, name="synthetic")
    _fail(factory, ids["failed"], RunStatus.failed, "RuntimeError: reconstruction error 0.031 exceeds error_budget 0.01")
    return ids


def seed_many(db_url: str, n: int, *, seed: int = 0) -> int:
    """`n` runs over every method, backbone and a few tasks: mostly succeeded, some failed, does-not-fit, cancelled
    and queued (a server started with --no-worker leaves the queued ones alone). Returns n."""
    upgrade_database(db_url)
    factory = make_sessionmaker(make_engine(db_url))
    rng = random.Random(seed)
    tasks = ("sst2", "rte", "mrpc")
    queued = []
    for i in range(n):
        cfg = _config(rng.choice(list(BACKBONE_SHAPE)), rng.choice(list(METHOD_SHAPE)), rng.choice(tasks), i % 5,
                      batch_size=rng.choice((8, 16, 32)))
        kind = rng.random()
        if kind > 0.97:
            queued.append(cfg)  # inserted last: _insert claims the oldest queued run
            continue
        run_id = _insert(factory, cfg, name="synthetic")
        if kind < 0.85:
            _succeed(factory, run_id, cfg, rng)
        elif kind < 0.91:
            _fail(factory, run_id, RunStatus.failed, "RuntimeError: synthetic failure")
        elif kind < 0.95:
            _fail(factory, run_id, RunStatus.does_not_fit, f"does not fit at batch {cfg['batch_size']}, seq 128")
        else:
            _fail(factory, run_id, RunStatus.cancelled, "cancelled")
    with session_scope(factory) as s:
        for cfg in queued:
            crud.create_run(session=s, fields=runspec.run_columns(TrainConfig.from_dict(cfg), name="synthetic"))
    return n


def assert_fits_window(page, name: str, width: int) -> None:
    """Fail if the page is wider than the window. Plotly's responsive relayout comes a moment after the draw (later on
    a loaded machine), so wait up to 5 s for it before failing with the overflow in pixels."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function("() => document.documentElement.scrollWidth <= window.innerWidth", timeout=5000)
    except PlaywrightTimeout:
        overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
        raise AssertionError(f"{name} at {width}px is {overflow}px wider than the window") from None
