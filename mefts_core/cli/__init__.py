"""The core command line: `train` (one run; `--save-dir` keeps the model, `--resume` continues after a crash),
`predict` (a saved model on a file or its run's test split), `sweep` (the paper's grid, capped by --budget),
`bench` (memory and speed over a grid of methods), `fits` (what fits in a memory budget) and `reproduce` (the paper's
table for a suite).

    train.py   `train`, and the run arguments and TrainConfig fields `sweep` shares
    predict.py `predict`
    sweep.py   `sweep`
    bench.py   `bench` (mefts_core.measure.bench)
    fits.py    `fits` (mefts_core.measure.fits)
    reproduce.py `reproduce` (mefts_core.measure.paper)
    remote.py  `reproduce --queue URL`: the same plan queued on a mefts server over HTTP, its table fetched
    common.py  argument types, logging, the error exit, writing a JSON result

`add_core_commands(subparsers)` registers them all on another program's argparse subparsers (the `mefts` console
script in backend/cli.py); each sets `func(args)`, which returns 0 and raises SystemExit(2) on a bad field ("error:
..." on stderr, no traceback) or SystemExit(1) when the run does not fit in memory.
Standalone: `python -m mefts_core.cli train --backbone tiny-bert --method lora --task sst2 ...`,
`python -m mefts_core.cli bench --preset smoke`.
"""

from __future__ import annotations

import argparse
from typing import Any

from mefts_core.cli.bench import add_bench_command
from mefts_core.cli.common import _kv
from mefts_core.cli.fits import add_fits_command
from mefts_core.cli.predict import add_predict_command
from mefts_core.cli.reproduce import add_reproduce_command
from mefts_core.cli.sweep import add_sweep_command, grid_points
from mefts_core.cli.train import add_train_command

__all__ = ["_kv", "add_core_commands", "build_parser", "grid_points", "main"]


def add_core_commands(subparsers: Any) -> None:
    """Add `train`, `predict`, `sweep`, `bench`, `fits` and `reproduce` to an argparse subparsers object."""
    add_train_command(subparsers)
    add_predict_command(subparsers)
    add_sweep_command(subparsers)
    add_bench_command(subparsers)
    add_fits_command(subparsers)
    add_reproduce_command(subparsers)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mefts_core.cli", description="mefts core: train, predict, sweep, bench")
    add_core_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)
