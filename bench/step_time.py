"""Step-time ratios between methods, timed in interleaved rounds so that a machine shared with other jobs slows
every method alike (a plain `mefts bench` times its rows one after another, minutes apart).

    nice .venv/bin/python bench/step_time.py --methods lora,lora+gc,meft1-exact,meft1-float \\
        --backbone bert-base --layers 12 --seq-len 256 --batch-size 8 --rounds 5 --threads 1

Every model is built first (same seed, same batch); then each round times one full training step (zero_grad,
forward, backward, AdamW step; no profiler) of every method in turn, after one untimed warm-up step each. Prints the
median seconds per method and the ratios of each method's median to the first method's, and of the per-round ratios'
median (the robust one when the load changes between rounds), and each method's peak activation memory.

A MEFT label may end in "-layer" (meft1-exact-layer: the option recompute_unit="layer"): the reversible backward
then recomputes each whole layer at once instead of one sub-block at a time (the default), which trades a higher
backward peak for one attention forward less per layer.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mefts_core.measure.bench import build_model, make_batch, timed_steps  # noqa: E402
from mefts_core.measure.memory import measure_step  # noqa: E402

log = logging.getLogger("step_time")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", required=True, help="labels, first is the reference: lora,lora+gc,meft1-exact")
    p.add_argument("--backbone", default="bert-base")
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--output", default=None, help="write the timings as JSON here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("mefts_core").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    labels = [m.strip() for m in args.methods.split(",") if m.strip()]
    runs = {}
    for label in labels:
        model, _ = build_model(args.backbone, label, layers=args.layers, seq_len=args.seq_len, device=device)
        batch = make_batch(model.config, args.batch_size, args.seq_len, device=device)
        opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=0.0)
        timed_steps(model, batch, opt, 1, device)  # warm-up: optimizer state, allocator, kernels
        runs[label] = (model, batch, opt)
    times: dict[str, list[float]] = {label: [] for label in labels}
    for r in range(args.rounds):
        for label in labels:
            times[label] += timed_steps(*runs[label], 1, device)
        log.info("round %d: %s", r + 1, {k: round(v[-1], 2) for k, v in times.items()})
    ref = labels[0]
    print(f"{args.backbone} L={args.layers} T={args.seq_len} B={args.batch_size}, {args.rounds} interleaved rounds, "
          f"{torch.get_num_threads()} thread(s), device {device}")
    print("| method | median step s | min | max | median / " + ref + " | median of per-round ratios | peak act MiB |")
    print("|---|---|---|---|---|---|---|")
    summary = {}
    for label in labels:
        t = times[label]
        per_round = statistics.median(a / b for a, b in zip(t, times[ref]))
        ratio = statistics.median(t) / statistics.median(times[ref])
        act = measure_step(*runs[label], warmup_steps=0).peak_activation_bytes
        summary[label] = {"median": statistics.median(t), "min": min(t), "max": max(t), "ratio": ratio,
                          "per_round_ratio": per_round, "times": t, "peak_activation_bytes": act}
        print(f"| {label} | {statistics.median(t):.4f} | {min(t):.4f} | {max(t):.4f} | {ratio:.3f} | {per_round:.3f} "
              f"| {act / 2**20:,.1f} |")
    if args.output:
        Path(args.output).write_text(json.dumps({"args": vars(args), "timings": summary}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
