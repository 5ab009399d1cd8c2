"""Latency of GET /api/runs at 10,000 runs, through a real uvicorn server on 127.0.0.1.

    .venv/bin/python bench/api_latency.py [--runs 10000] [--requests 200]

Fills a fresh SQLite database (in a temporary folder) with runs shaped like real ones (full configs, results with
per-epoch metrics for the finished ones, memory reports), starts `mefts serve --no-worker` on a free loopback port,
and prints p50/p95/max of list queries with sorting, filters and deep pagination.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from sqlalchemy import insert

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from db.models import MemoryReportRow, Run, utcnow  # noqa: E402
from db.session import make_engine, upgrade_database  # noqa: E402

METHODS = ("full", "lora", "adapter", "bitfit", "meft1", "meft2", "meft3")
BACKBONES = ("tiny-bert", "minilm-l6", "bert-base", "roberta-large")
TASKS = ("sst2", "rte", "mrpc", "cola", "piqa")
STATUSES = ("succeeded",) * 6 + ("failed", "queued", "cancelled", "does_not_fit", "running")

QUERIES = [
    ("newest 50", "/api/runs?limit=50"),
    ("status filter, sort -created_at", "/api/runs?limit=50&status=succeeded&sort=-created_at"),
    ("method+task filter, sort score desc", "/api/runs?limit=50&method=lora&task=sst2&sort=score&order=desc"),
    ("sort by peak memory", "/api/runs?limit=50&status=succeeded&sort=-peak_bytes"),
    ("deep page (offset 9000), sort lr", "/api/runs?limit=50&sort=learning_rate&offset=9000"),
    ("poll: updated_since (no changes)", None),
]


def fill(url: str, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    engine = make_engine(url)
    now = utcnow()
    runs, mems = [], []
    for i in range(1, n + 1):
        method, backbone, task = rng.choice(METHODS), rng.choice(BACKBONES), rng.choice(TASKS)
        status = rng.choice(STATUSES)
        lr = rng.choice((1e-4, 3e-4, 5e-4, 2e-5))
        cfg = {"backbone": backbone, "method": method, "task": task, "method_options": {"gradient_checkpointing": False},
               "task_options": {}, "learning_rate": lr, "batch_size": 16, "epochs": 5, "max_seq_len": 128,
               "warmup_ratio": 0.06, "weight_decay": 0.0, "grad_clip": 1.0, "patience": 5, "seed": i % 5,
               "bf16": False, "threads": None, "device": "auto", "max_train_samples": None,
               "max_eval_samples": None, "measure_memory": True}
        done = status in ("succeeded", "failed", "cancelled", "does_not_fit")
        score = rng.random() if status == "succeeded" else None
        result = None
        if status == "succeeded":
            result = {"main_metric": "accuracy", "dev_metrics": {"accuracy": score, "loss": 0.5},
                      "test_metrics": {"accuracy": score, "loss": 0.5}, "best_epoch": 3,
                      "epoch_metrics": [{"epoch": e, "train_loss": 0.5, "dev_accuracy": score} for e in range(1, 6)],
                      "split": "sst2: packaged split", "versions": {"torch": "2.13.0"}}
        started = now if status != "queued" else None
        runs.append({
            "id": i, "config": cfg, "backbone": backbone, "method": method, "method_label": method, "task": task,
            "seed": i % 5, "device": "auto", "needs_gpu": False, "learning_rate": lr, "batch_size": 16,
            "max_seq_len": 128, "epochs": 5, "status": status, "priority": 0, "attempts": 0 if status == "queued" else 1,
            "max_attempts": 3, "cancel_requested": False, "created_at": now, "updated_at": now,
            "started_at": started, "finished_at": now if done else None, "progress": 1.0 if done else 0.3,
            "log_tail": "epoch 1: ...\n" * 20, "result": result, "main_metric": "accuracy" if score else None,
            "score": score, "trainable_params": 100_000, "total_params": 10_000_000,
        })
        if status in ("succeeded", "running"):
            headline = {"stored_activation_bytes": rng.randint(10**6, 10**9), "peak_bytes": rng.randint(10**8, 10**10),
                        "peak_activation_bytes": rng.randint(10**6, 10**9)}
            runs[-1].update(headline)
            mems.append({"run_id": i, "attempt": 1, "created_at": now, "device": "cpu", "how": "cpu-profiler",
                         **headline, "param_bytes": 10**8, "trainable_param_bytes": 10**6, "grad_bytes": 10**6,
                         "optimizer_bytes": 2 * 10**6, "step_seconds": 0.1, "batch_shape": [16, 128],
                         "batch_size": 16, "seq_len": 128})
        else:
            runs[-1].update({"stored_activation_bytes": None, "peak_bytes": None, "peak_activation_bytes": None})
    with engine.begin() as con:
        con.execute(insert(Run), runs)
        con.execute(insert(MemoryReportRow), mems)
    engine.dispose()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(client: httpx.Client, path: str, n: int) -> list[float]:
    for _ in range(5):  # warm-up
        assert client.get(path).status_code == 200
    times = []
    for _ in range(n):
        t = time.perf_counter()
        r = client.get(path)
        times.append((time.perf_counter() - t) * 1000)
        assert r.status_code == 200, r.text
    return times


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=200, help="per query")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="mefts-bench-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'mefts.db'}"
        t = time.perf_counter()
        upgrade_database(url)
        fill(url, args.runs)
        print(f"inserted {args.runs} runs in {time.perf_counter() - t:.1f}s ({url})")
        port = free_port()
        env = {**os.environ, "PYTHONPATH": str(REPO), "DATABASE_URL": url}
        server = subprocess.Popen(
            [sys.executable, "-m", "backend.cli", "--log-level", "WARNING", "serve", "--no-worker",
             "--host", "127.0.0.1", "--port", str(port), "--data-dir", tmp],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
                deadline = time.monotonic() + 60
                while True:
                    try:
                        if client.get("/api/health").status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise SystemExit("the server did not start")
                    time.sleep(0.2)
                since = client.get("/api/runs?limit=1").json()["server_time"]
                rows = []
                for name, path in QUERIES:
                    path = path or f"/api/runs?limit=50&updated_since={since}"
                    times = measure(client, path, args.requests)
                    total = client.get(path).json()["total"]
                    rows.append((name, total, pct(times, 50), pct(times, 95), max(times)))
        finally:
            server.terminate()
            server.wait(20)

    print(f"\nGET /api/runs latency, {args.runs} runs, {args.requests} requests each, uvicorn on 127.0.0.1, "
          f"{os.cpu_count()} CPU cores")
    print(f"{'query':<40} {'matches':>8} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
    for name, total, p50, p95, worst in rows:
        print(f"{name:<40} {total:>8} {p50:>8.1f} {p95:>8.1f} {worst:>8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
