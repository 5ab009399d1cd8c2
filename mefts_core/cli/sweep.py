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
from mefts_core.tasks import TaskDataError

# The paper's three grids (README "Data, the paper's grids and its table"), all with early stopping after 5 epochs
# without dev improvement (TrainConfig.patience's default). Which one a task gets depends on its kind and, for GLUE,
# on its official training size (Task.train_size).
LARGE_GLUE_TRAIN_SIZE = 10_000
PAPER_GRIDS: dict[str, tuple[dict[str, list], str]] = {
    "glue-large": ({"learning_rate": [3e-4, 4e-4, 5e-4], "batch_size": [16, 32], "epochs": [10, 20]},
                   "paper grid for GLUE tasks with > 10k training samples"),
    "glue-low": ({"learning_rate": [5e-4, 6e-4, 7e-4, 8e-4], "batch_size": [16, 32], "epochs": [20, 40]},
                 "paper grid for low-resource GLUE tasks (CoLA, MRPC, RTE, STS-B)"),
    "qa": ({"learning_rate": [1e-4, 3e-4, 5e-4, 7e-4], "batch_size": [8, 16, 32], "epochs": [3, 5, 10]},
           "paper grid for the QA tasks"),
}
# Full fine-tuning moves every weight, so it takes BERT's usual learning rates on the task's batch/epoch axes.
FULL_FT_LRS = [1e-5, 2e-5, 3e-5]

SWEEP_COLUMNS = ("lr", "batch", "epochs", "status", "best_ep", "dev", "test", "act MiB", "peak MiB", "seconds")


def add_sweep_command(subparsers: Any) -> None:
    s = subparsers.add_parser("sweep", help="grid search (the paper's grid for the task), capped by --budget",
                              description="Run the paper's grid for the task (GLUE > 10k training rows: lr {3,4,5}e-4 "
                                          "x batch {16,32} x epochs {10,20}; low-resource GLUE: lr {5,6,7,8}e-4 x "
                                          "batch {16,32} x epochs {20,40}; QA: lr {1,3,5,7}e-4 x batch {8,16,32} x "
                                          "epochs {3,5,10}) or a subset of it; writes all runs and the best by dev "
                                          "score.")
    add_run_args(s, sweep=True)
    s.add_argument("--dry-run", action="store_true", help="list the grid points and exit without training")
    s.set_defaults(func=cmd_sweep)


def paper_grid_name(task: Any) -> str:
    """Which of the paper's grids a task gets: QA tasks the QA grid, GLUE (and local data) by training size."""
    if task is not None and task.kind == "qa":
        return "qa"
    size = task.train_size if task is not None else None
    return "glue-large" if size is not None and size > LARGE_GLUE_TRAIN_SIZE else "glue-low"


def grid_for(method: str, task: Any, args: argparse.Namespace) -> tuple[dict[str, list], str]:
    """The grid for (method, task) and a sentence naming it; `task` is a Task, or None for local data."""
    name = paper_grid_name(task)
    base, source = PAPER_GRIDS[name]
    source = f"{source} ({name})"
    if task is None:
        source += "; local data is taken as low-resource"
    if method == "full":
        base = {**base, "learning_rate": FULL_FT_LRS}
        source += "; full fine-tuning with lr {1,2,3}e-5"
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


def run_point(point: dict[str, Any], config: Any, desc: str, progress: bool) -> tuple[dict[str, Any], Any]:
    """One grid point's run: its row for the sweep table, and the result (None unless it ran to the end)."""
    import torch

    from mefts_core.training.trainer import run_training

    row: dict[str, Any] = dict(point)
    try:
        res = run_training(config, [ProgressBar(desc, enabled=progress)]).to_dict()
    except (torch.OutOfMemoryError, MemoryError) as e:
        row.update(status="does not fit", error=str(e))
        return row, None
    except TaskDataError:
        raise  # the task's data, not this point: every point would fail the same way (reproduce: "no data")
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


def _dry_run(args: argparse.Namespace, grid: dict[str, list], source: str, points: list[dict[str, Any]]) -> int:
    print(f"sweep {args.backbone} / {args.method} / {args.task}: {len(points)} of {_grid_size(grid)} grid points; "
          f"{source}")
    sys.stdout.write(tables.to_text(("#", "lr", "batch", "epochs"), [
        [str(i), f"{p['learning_rate']:g}", str(p["batch_size"]), str(p["epochs"])] for i, p in enumerate(points, 1)]))
    write_json(args.output, {"grid": grid, "grid_source": source, "budget": args.budget, "points": points})
    return 0


def _grid_size(grid: dict[str, list]) -> int:
    return len(grid["learning_rate"]) * len(grid["batch_size"]) * len(grid["epochs"])


def cmd_sweep(args: argparse.Namespace) -> int:
    from mefts_core.config import TrainConfig
    from mefts_core.tasks import TASKS

    setup_logging(args.verbose)
    try:
        if args.budget is not None and args.budget < 1:
            raise ValueError(f"budget={args.budget}: must be >= 1")
        grid, source = grid_for(args.method, TASKS.get(args.task), args)
        base = TrainConfig(**config_kwargs(args))  # the flags given; TrainConfig's defaults for the rest
        points = grid_points(grid, args.budget, base.seed)
        configs = [dataclasses.replace(base, **p) for p in points]  # each validated before anything runs
    except ValueError as e:
        fail(str(e), 2)
    if args.dry_run:
        return _dry_run(args, grid, source, points)
    runs: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for i, (point, config) in enumerate(zip(points, configs), 1):
        desc = f"run {i}/{len(points)} lr {point['learning_rate']:g} bs {point['batch_size']} ep {point['epochs']}"
        try:
            row, res = run_point(point, config, desc, not args.no_progress)
        except TaskDataError as e:
            fail(str(e), 2)  # no point of the grid can run without the task's data
        results += [res] if res is not None else []
        runs.append(row)
        print(f"{desc}: {row['status']}" + (f", dev {row['dev']:.4f}, test {row['test']:.4f}"
                                             if row["status"] == "ok" else f" ({row.get('error')})"))
    ok = [r for r in runs if r["status"] == "ok"]
    best = max(ok, key=lambda r: r["dev"]) if ok else None
    print(f"\nsweep {args.backbone} / {args.method} / {args.task}: {len(runs)} of "
          f"{_grid_size(grid)} grid points; {source}")
    sys.stdout.write(tables.to_text(SWEEP_COLUMNS, [_sweep_cells(r, best) for r in runs]))
    if best is not None:
        print(f"best (by dev {best['main_metric']}): lr {best['learning_rate']:g}, batch {best['batch_size']}, "
              f"epochs {best['epochs']}: dev {best['dev']:.4f}, test {best['test']:.4f}")
    write_json(args.output, {"grid": grid, "grid_source": source, "budget": args.budget, "runs": runs, "best": best,
                             "results": results})
    return 0 if best is not None else 1
