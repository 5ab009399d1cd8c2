"""`predict`: a fine-tuned model (`train --save-dir DIR`) on a data file or on its run's test split; one row per
input to CSV/JSONL, and the metrics when the inputs have labels (mefts_core.training.predict)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from mefts_core.cli.common import comma_list, fail, setup_logging
from mefts_core.measure import tables


def add_predict_command(subparsers: Any) -> None:
    """Register `predict` on an argparse subparsers object; sets func=cmd_predict."""
    p = subparsers.add_parser(
        "predict", help="predict with a fine-tuned model (train --save-dir DIR)",
        description="Run a fine-tuned model on a CSV/TSV/JSON(L) file, or without --input on its run's own split "
                    "(--split test, the default: the same rows, seed and caps as the run, which reproduces its test "
                    "metrics). Writes one row per input: the prediction (label name, value or option index) and its "
                    "probability; prints the metrics when the inputs carry labels.")
    p.add_argument("--model", required=True, metavar="DIR", help="the artifact folder (DIR/model of a run, or DIR)")
    p.add_argument("--input", default=None, metavar="FILE", help="a CSV/TSV/JSON(L) file of inputs")
    p.add_argument("--split", default=None, choices=("train", "dev", "test"),
                   help="without --input: a split of the run's own task (default: test)")
    p.add_argument("--text-columns", type=comma_list(str), default=None, metavar="A[,B]",
                   help="text columns of --input (default: the run's)")
    p.add_argument("--label-column", default=None, help="label column of --input (default: the run's, if present)")
    p.add_argument("--output", "-o", default=None, help="write the predictions here (.csv, or .jsonl)")
    p.add_argument("--metrics-output", default=None, help="write the metrics here (JSON)")
    p.add_argument("--batch-size", type=int, default=None, help="default: the run's evaluation batch (2 x batch_size)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--verbose", "-v", action="store_true", help="log at INFO level")
    p.set_defaults(func=cmd_predict)


def cmd_predict(args: argparse.Namespace) -> int:
    from mefts_core.training.predict import predict, write_predictions

    setup_logging(args.verbose)
    if args.input is not None and args.split is not None:
        fail("--split: not with --input (it scores a split of the run's own task)", 2)
    try:
        preds = predict(args.model, input_path=args.input, split=None if args.input else (args.split or "test"),
                        text_columns=args.text_columns, label_column=args.label_column, batch_size=args.batch_size,
                        device=args.device, progress=not args.no_progress)
    except (ValueError, FileNotFoundError) as e:
        fail(str(e), 2)
    print(f"{len(preds.rows)} predictions: {preds.source}")
    if preds.metrics is not None:
        rows = [[k, f"{v:.4f}" + (" *" if k == preds.main_metric else "")] for k, v in preds.metrics.items()]
        sys.stdout.write(tables.to_text(["metric", "value"], rows))
    if args.output:
        print(f"wrote {write_predictions(preds, args.output)}")
    if args.metrics_output:
        out = Path(args.metrics_output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"metrics": preds.metrics, "main_metric": preds.main_metric,
                                   "source": preds.source, "rows": len(preds.rows)}, indent=2) + "\n")
        print(f"wrote {out}")
    return 0
