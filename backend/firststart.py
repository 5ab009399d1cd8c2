"""The first start: an empty database gets the benchmark rows shipped in docs/results and a small demo sweep on tiny
data. Both are idempotent (a row already stored or the demo sweep already queued is not added again), and shared by
the dashboard's first-start actions (/api/start) and `mefts serve --demo`."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from backend.runspec import validated_columns
from backend.settings import Settings
from db import bench, crud

log = logging.getLogger(__name__)

# The measured rows that ship with mefts (`mefts bench` on an H100 and on this CPU); the image copies them too.
SHIPPED_RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"

DEMO_NAME = "demo: tiny-bert on SST-2"
# Seconds per run on a CPU: a random-weight tiny BERT, 64 training sentences, one epoch, four methods.
DEMO_SWEEP: dict[str, Any] = {
    "methods": ["full", "lora", "bitfit", "meft1"], "backbone": "tiny-bert", "task": "sst2", "seed": 42,
    "device": "cpu",
    "hyperparameters": {"epochs": 1, "max_train_samples": 64, "max_eval_samples": 32, "batch_size": 8,
                        "max_seq_len": 32},
}


def shipped_files(folder: Path = SHIPPED_RESULTS) -> dict[str, list[dict[str, Any]]]:
    """The bench-row files among the shipped results (file name -> rows that ran); timing summaries and fits rows,
    which are no bench rows, are left out."""
    from mefts_core.measure.bench import parse_rows

    out = {}
    for path in sorted(folder.glob("*.json")):
        try:
            text = path.read_text()
            raw = json.loads(text)
        except (OSError, ValueError) as e:
            log.warning("shipped results %s: %s", path, e)
            continue
        if isinstance(raw, list) and raw and all(isinstance(r, dict) and "peak_bytes" in r for r in raw):
            out[path.name] = [r for r in parse_rows(text, "json") if r.get("status") in (None, "", "ok")]
    return out


def import_shipped(session: Session, folder: Path = SHIPPED_RESULTS) -> dict[str, Any]:
    """Store the shipped bench rows that are not stored yet; returns how many were stored and already there."""
    have = bench.bench_row_keys(session=session)
    files = shipped_files(folder)
    new = [r for rows in files.values() for r in rows if bench.row_key(r) not in have]
    total = sum(len(rows) for rows in files.values())
    bench.add_bench_rows(session=session, rows=new)
    session.commit()
    log.info("first start: stored %d shipped bench rows (%d were there)", len(new), total - len(new))
    return {"stored": len(new), "already": total - len(new), "files": list(files)}


def queue_demo(session: Session, settings: Settings) -> dict[str, Any]:
    """Queue the demo sweep unless a sweep of that name exists; returns its id, run ids and whether it is new."""
    sweep = crud.sweep_named(session=session, name=DEMO_NAME)
    created = sweep is None
    if created:
        d = DEMO_SWEEP
        rows = [validated_columns(backbone=d["backbone"], method=m, task=d["task"], method_options={},
                                  task_options={}, hyperparameters=d["hyperparameters"], seed=d["seed"],
                                  device=d["device"], name=DEMO_NAME, settings=settings)
                for m in d["methods"]]
        sweep = crud.create_sweep(session=session, name=DEMO_NAME, spec=dict(d), runs=rows)
        session.commit()
        log.info("first start: queued the demo sweep %d (%d runs)", sweep.id, len(rows))
    return {"sweep_id": sweep.id, "run_ids": crud.sweep_run_ids(session=session, sweep_id=sweep.id),
            "created": created}


def start_state(session: Session) -> dict[str, Any]:
    """What the first-start box shows: stored runs and bench rows, the shipped rows, the demo sweep (if any)."""
    shipped = shipped_files()
    demo = crud.sweep_named(session=session, name=DEMO_NAME)
    return {"runs": sum(crud.status_counts(session=session).values()),
            "bench_rows": bench.count_bench_rows(session=session),
            "shipped_files": list(shipped), "shipped_rows": sum(len(r) for r in shipped.values()),
            "demo_sweep_id": demo.id if demo else None}
