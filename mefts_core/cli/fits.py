"""`fits`: what fits in a memory budget, per method (mefts_core.measure.fits): the largest batch, the peak there,
step time and tokens/s, each marked measured, interpolated or estimated."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from mefts_core.cli.common import comma_list, fail, setup_logging
from mefts_core.errors import ConfigError


def add_fits_command(subparsers: Any) -> None:
    """Register `fits` on an argparse subparsers object; sets func=cmd_fits."""
    p = subparsers.add_parser(
        "fits", help="the largest batch every method fits in a memory budget (measured, interpolated or estimated)",
        description="For a memory budget, backbone, sequence length and dtype: every method's largest batch, the peak "
                    "at that batch, step time and tokens/s. Figures are measured where --from gives bench rows at "
                    "that point, interpolated between them, else estimated (the analytic estimator; step time "
                    "scaled from a timed step) or unknown.")
    p.add_argument("--budget", required=True, help="memory budget: 24GiB, 80 GB, 512MiB or a bare number of GiB")
    p.add_argument("--backbone", required=True, help="a backbone name, e.g. bert-base, roberta-large")
    p.add_argument("--seq-len", type=int, required=True)
    p.add_argument("--dtype", default="float32", help="float32 (default), bfloat16 or float16")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu: the memory the budget is")
    p.add_argument("--layers", type=int, default=None, help="depth (random-weight shapes; default: the backbone's)")
    p.add_argument("--methods", type=comma_list(str), default=None,
                   help="method labels, e.g. lora,lora+gc,meft1-float (default: every registered method)")
    p.add_argument("--from", dest="from_files", nargs="+", default=[], metavar="FILE",
                   help="measured points: bench rows (.json/.csv/.md of `mefts bench --output`, e.g. docs/results/"
                        "*.json) or `mefts bench --fits-output` rows; other files are skipped with a warning")
    p.add_argument("--format", choices=["md", "json"], default="md", help="md: a table (default); json: the answer")
    p.add_argument("--verbose", "-v", action="store_true")
    p.set_defaults(func=cmd_fits)


def read_measured(path: str) -> list[dict[str, Any]]:
    """Rows of one file: a JSON list of rows as written (bench or fits rows), or bench rows in .csv/.md."""
    from mefts_core.measure.bench import load_rows

    if Path(path).suffix == ".json":
        data = json.loads(Path(path).read_text())
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise ValueError(f"{path}: not a list of rows (bench or fits output)")
        return data
    return load_rows(path)


def cmd_fits(args: argparse.Namespace) -> int:
    from mefts_core.measure import fits

    setup_logging(args.verbose)
    rows: list[dict[str, Any]] = []
    for path in args.from_files:
        try:
            rows += read_measured(path)
        except (OSError, ValueError) as e:
            print(f"warning: skipped {e}", file=sys.stderr)
    try:
        q = fits.Query(fits.parse_budget(args.budget, "--budget"), args.backbone, args.seq_len, dtype=args.dtype,
                       device=args.device, layers=args.layers)
        result = fits.fits(q, rows, args.methods)
    except ConfigError as e:
        fail(str(e), 2)
    if args.format == "json":
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    else:
        print(f"{args.backbone} (L={result['layers']}), seq {args.seq_len}, {args.dtype}, {args.device}, budget "
              f"{result['budget_gib']:.2f} GiB")
        sys.stdout.write(fits.fits_table(result))
    return 0
