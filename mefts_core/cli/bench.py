"""`bench`: memory and speed of methods over a grid (mefts_core.measure.bench); rows to md/csv/json, a summary
table on stdout, and optionally what fits in given memory budgets."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import torch

from mefts_core.cli.common import comma_list, fail, setup_logging
from mefts_core.measure import bench, tables

log = logging.getLogger(__name__)


def add_bench_command(subparsers: Any) -> None:
    """Register `bench` on an argparse subparsers object (the `mefts` console script); sets func=cmd_bench."""
    p = subparsers.add_parser(
        "bench", help="memory and speed of methods over backbone x method x layers x seq_len x batch",
        description="Measure stored activations, peak memory (with its parts) and step time for a grid; print a "
                    "table, write rows as md/csv/json. Presets: " + ", ".join(bench.PRESETS) + ". Flags override them.")
    add_bench_args(p)
    p.set_defaults(func=cmd_bench)


def add_bench_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("grid (comma-separated lists; flags override --preset)")
    g.add_argument("--preset", choices=sorted(bench.PRESETS), default=None)
    g.add_argument("--backbone", "--backbones", dest="backbones", type=comma_list(str), default=None)
    g.add_argument("--methods", "--method", dest="methods", type=comma_list(str), default=None,
                   help="e.g. full,full+gc,lora,lora+gc,adapter,bitfit,meft1-exact,meft1-float,meft2-ck4")
    g.add_argument("--layers", type=comma_list(int, none=True), default=None,
                   help="depths, e.g. 6,12,24,48 (none: the backbone's)")
    g.add_argument("--seq-len", dest="seq_lens", type=comma_list(int), default=None)
    g.add_argument("--batch-size", dest="batch_sizes", type=comma_list(int), default=None)
    g.add_argument("--dtype", choices=sorted(bench.DTYPES), default=None)
    g.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N")
    m = p.add_argument_group("measurement")
    m.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 1)")
    m.add_argument("--repeats", type=int, default=None, help="timed steps, median reported (default 3; 0: memory only)")
    m.add_argument("--seed", type=int, default=None)
    m.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    m.add_argument("--no-estimate", action="store_true", help="skip the pre-flight estimate column")
    f = p.add_argument_group("fits in budget")
    f.add_argument("--fits", type=comma_list(float), default=None, metavar="GIB,...",
                   help="also report the largest batch / sequence each method fits in these budgets (GiB)")
    f.add_argument("--fits-output", default=None, help="write the fits-in-budget rows here (JSON)")
    f.add_argument("--fits-only", action="store_true", help="with --fits: skip the grid's rows")
    o = p.add_argument_group("output")
    o.add_argument("--format", choices=["md", "csv", "json"], default=None,
                   help="format of --output (default: from its extension), or of stdout without --output")
    o.add_argument("--output", "-o", default=None, help="write every column of every row here")
    o.add_argument("--from", dest="from_files", nargs="+", default=None, metavar="FILE",
                   help="do not run: read rows from earlier outputs (.json/.csv/.md) and print/write them")
    o.add_argument("--reestimate", action="store_true", help="with --from: recompute the estimate columns")
    o.add_argument("--no-progress", action="store_true")
    o.add_argument("--verbose", "-v", action="store_true", help="log at INFO level")


def _rows(args: argparse.Namespace, out: Path | None, fmt: str | None) -> tuple[list[dict], Any]:
    """The rows (run, or read back with --from) and the grid (None with --from)."""
    if args.from_files:
        rows = [r for path in args.from_files for r in bench.load_rows(path)]
        return (bench.reestimate(rows) if args.reestimate else rows), None
    grid = bench.grid_from_preset(args.preset, backbones=args.backbones, methods=args.methods, layers=args.layers,
                                  seq_lens=args.seq_lens, batch_sizes=args.batch_sizes, dtype=args.dtype,
                                  device=args.device, warmup=args.warmup, repeats=args.repeats, seed=args.seed,
                                  estimate=False if args.no_estimate else None)
    if args.fits_only:
        return [], grid
    done: list[dict] = []

    def sink(row: dict) -> None:  # rewrite the file after every row: a long run interrupted keeps what it measured
        done.append(row)
        _write_rows(out, done, fmt)

    return bench.run_bench(grid, sink=sink if out else None, progress=not args.no_progress), grid


def _write_rows(out: Path, rows: list[dict], fmt: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(bench.format_rows(rows, fmt))


def _fits(args: argparse.Namespace, grid: Any) -> None:
    fits = [f for b in grid.backbones if bench.known_backbone(b) for n in grid.layers
            for f in bench.fits_in_budget(b, grid.methods, args.fits, seq_len=grid.seq_lens[0],
                                          batch_size=grid.batch_sizes[0], layers=n, dtype=grid.dtype,
                                          device=grid.device, seed=grid.seed)]
    sys.stdout.write(bench.fits_table(fits))
    if args.fits_output:
        Path(args.fits_output).write_text(tables.to_json(bench.FITS_COLUMNS, fits))


def cmd_bench(args: argparse.Namespace) -> int:
    setup_logging(args.verbose)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.output) if args.output else None
    fmt = (args.format or bench.ROW_FORMATS.get(out.suffix, "md")) if out else None
    try:
        rows, grid = _rows(args, out, fmt)
    except (ValueError, OSError) as e:
        fail(str(e), 2)
    if out:
        _write_rows(out, rows, fmt)
        log.info("wrote %d rows to %s", len(rows), out)
    if args.format and not args.output:
        sys.stdout.write(bench.format_rows(rows, args.format))
    elif rows:
        sys.stdout.write(bench.summary_table(rows))
    if args.fits and grid is not None:
        _fits(args, grid)
    return 0
