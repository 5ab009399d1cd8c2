"""`sweep`: the paper's grid (or a seeded subset of it, --budget), one training run per point, the best by dev score."""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
from typing import Any

from mefts_core.cli.common import fail, setup_logging, write_json
from mefts_core.cli.train import ProgressBar, add_run_args, config_kwargs
from mefts_core.measure import tables

# meft-spec.md §5: the paper's GLUE sweep (verified from the paper's setup text). The paper's QA grid and its
# full fine-tuning grid are not known: QA reuses the GLUE grid, full FT uses the usual BERT range (both assumptions).
PAPER_GLUE_GRID = {"learning_rate": [3e-4, 4e-4, 5e-4], "batch_size": [16, 32], "epochs": [10, 20]}
FULL_FT_GRID = {"learning_rate": [1e-5, 2e-5, 3e-5], "batch_size": [16, 32], "epochs": [10, 20]}

SWEEP_COLUMNS = ("lr", "batch", "epochs", "status", "best_ep", "dev", "test", "act MiB", "peak MiB", "seconds")


def add_sweep_command(subparsers: Any) -> None:
    s = subparsers.add_parser("sweep", help="grid search (the paper's GLUE grid), capped by --budget",
                              description="Run the paper's grid (lr {3,4,5}e-4 x batch {16,32} x epochs {10,20}) "
                                          "or a subset of it; writes all runs and the best by dev score.")
    add_run_args(s, sweep=True)
    s.set_defaults(func=cmd_sweep)


def grid_for(method: str, task_kind: str, args: argparse.Namespace) -> tuple[dict[str, list], str]:
    base, source = (FULL_FT_GRID, "full-FT range {1,2,3}e-5 (assumed; the paper's full-FT grid is not known)") \
        if method == "full" else (PAPER_GLUE_GRID, "paper GLUE grid (meft-spec.md §5)")
    if task_kind == "qa" and method != "full":
        source = "paper GLUE grid reused for QA (the paper's QA grid is not known)"
    grid = {"learning_rate": args.lrs or base["learning_rate"], "batch_size": args.batch_sizes or base["batch_size"],
            "epochs": args.epochs_grid or base["epochs"]}
    if args.lrs or args.batch_sizes or args.epochs_grid:
        source += ", with overrides"
    return grid, source


def grid_points(grid: dict[str, list], budget: int | None, seed: int) -> list[dict[str, Any]]:
    """All grid points in a fixed order, or a seeded subset of `budget` of them (kept in grid order)."""
    points = [{"learning_rate": lr, "batch_size": bs, "epochs": ep}
              for lr in grid["learning_rate"] for bs in grid["batch_size"] for ep in grid["epochs"]]
    if budget is None or budget >= len(points):
        return points
    keep = sorted(random.Random(seed).sample(range(len(points)), budget))
    return [points[i] for i in keep]


def _run_point(point: dict[str, Any], config: Any, desc: str, progress: bool) -> tuple[dict[str, Any], Any]:
    """One grid point's run: its row for the sweep table, and the result (None unless it ran to the end)."""
    import torch

    from mefts_core.training.trainer import run_training

    row: dict[str, Any] = dict(point)
    try:
        res = run_training(config, [ProgressBar(desc, enabled=progress)]).to_dict()
    except (torch.OutOfMemoryError, MemoryError) as e:
        row.update(status="does not fit", error=str(e))
        return row, None
    except (ValueError, FloatingPointError) as e:
        row.update(status="failed", error=str(e))
        return row, None
    main = res["main_metric"]
    mem = res["memory"] or {}
    row.update(status="ok", best_epoch=res["best_epoch"], epochs_run=len(res["epoch_metrics"]),
               main_metric=main, dev=res["dev_metrics"][main], test=res["test_metrics"][main],
               stored_activation_bytes=mem.get("stored_activation_bytes"), peak_bytes=mem.get("peak_bytes"),
               wall_seconds=res["wall_seconds"])
    return row, res


def _sweep_cells(r: dict[str, Any], best: dict[str, Any] | None) -> list[str]:
    good = r["status"] == "ok"
    return [f"{r['learning_rate']:g}", str(r["batch_size"]), str(r["epochs"]), r["status"] + (" *" if r is best else ""),
            str(r.get("best_epoch", "-")), f"{r['dev']:.4f}" if good else "-", f"{r['test']:.4f}" if good else "-",
            f"{(r['stored_activation_bytes'] or 0) / 2**20:.1f}" if good else "-",
            f"{(r['peak_bytes'] or 0) / 2**20:.1f}" if good else "-", f"{r['wall_seconds']:.1f}" if good else "-"]


def cmd_sweep(args: argparse.Namespace) -> int:
    from mefts_core.config import TrainConfig
    from mefts_core.tasks import TASKS

    setup_logging(args.verbose)
    try:
        if args.budget is not None and args.budget < 1:
            raise ValueError(f"budget={args.budget}: must be >= 1")
        kind = TASKS[args.task].kind if args.task in TASKS else "local"
        grid, source = grid_for(args.method, kind, args)
        base = TrainConfig(**config_kwargs(args))  # the flags given; TrainConfig's defaults for the rest
        points = grid_points(grid, args.budget, base.seed)
        configs = [dataclasses.replace(base, **p) for p in points]  # each validated before anything runs
    except ValueError as e:
        fail(str(e), 2)
    runs: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for i, (point, config) in enumerate(zip(points, configs), 1):
        desc = f"run {i}/{len(points)} lr {point['learning_rate']:g} bs {point['batch_size']} ep {point['epochs']}"
        row, res = _run_point(point, config, desc, not args.no_progress)
        results += [res] if res is not None else []
        runs.append(row)
        print(f"{desc}: {row['status']}" + (f", dev {row['dev']:.4f}, test {row['test']:.4f}"
                                             if row["status"] == "ok" else f" ({row.get('error')})"))
    ok = [r for r in runs if r["status"] == "ok"]
    best = max(ok, key=lambda r: r["dev"]) if ok else None
    print(f"\nsweep {args.backbone} / {args.method} / {args.task}: {len(runs)} of "
          f"{len(grid['learning_rate']) * len(grid['batch_size']) * len(grid['epochs'])} grid points; {source}")
    sys.stdout.write(tables.to_text(SWEEP_COLUMNS, [_sweep_cells(r, best) for r in runs]))
    if best is not None:
        print(f"best (by dev {best['main_metric']}): lr {best['learning_rate']:g}, batch {best['batch_size']}, "
              f"epochs {best['epochs']}: dev {best['dev']:.4f}, test {best['test']:.4f}")
    write_json(args.output, {"grid": grid, "grid_source": source, "budget": args.budget, "runs": runs, "best": best,
                             "results": results})
    return 0 if best is not None else 1
