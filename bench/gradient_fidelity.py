"""Gradient fidelity of the reversible backward against plain autograd, per MEFT variant, depth and arithmetic.

    .venv/bin/python bench/gradient_fidelity.py                       # real MiniLM-L6 (6 layers) + bert-base shapes
    .venv/bin/python bench/gradient_fidelity.py --backbones tiny-llama --layers 6 12 24 30

Prints a Markdown table: the largest per-layer relative error (lowest layers are the worst) and the lowest cosine.
Dropout is on (train mode) with the forward's seeds replayed, batch 4 x 64 tokens of real text.
"""

from __future__ import annotations

import argparse
import logging

import torch
from tqdm import tqdm

from mefts_core.backbones import BACKBONES, load_backbone
from mefts_core.measure.diagnostics import gradient_fidelity
from mefts_core.methods import apply_method

TEXT = ["the film is a charming and often affecting journey through a small town that has lost its way",
        "unflinchingly bleak and desperate, it never lets the audience breathe or hope for a better ending",
        "a gorgeous, witty, seductive movie that rewards patience with one surprising scene after another",
        "it is slow, very slow, and by the end nobody on screen or in the seats remembers why they came"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbones", nargs="+", default=["minilm-l6", "bert-base"])
    ap.add_argument("--layers", nargs="+", type=int, default=[6, 12, 24],
                    help="depths for architecture-only backbones (real ones keep their own depth)")
    ap.add_argument("--variants", nargs="+", default=["meft1", "meft2", "meft3"])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)

    jobs = []
    for name in args.backbones:
        depths = [None] if BACKBONES.get(name) and BACKBONES[name].real_weights else args.layers
        jobs += [(name, d, v, r) for d in depths for v in args.variants for r in ("exact", "float")]
    rows = []
    for name, depth, variant, recompute in tqdm(jobs, desc="fidelity"):
        model, tok = load_backbone(name, num_layers=depth)
        apply_method(model, variant, recompute=recompute, merge="average", error_budget=None).train()
        batch = dict(tok(TEXT, padding="max_length", truncation=True, max_length=64, return_tensors="pt"))
        batch["labels"] = torch.tensor([1, 0, 1, 0])
        fid = gradient_fidelity(model, batch)
        rows.append((name, model.config.num_hidden_layers, variant, recompute,
                     max(r["rel_error"] for r in fid), min(r["cosine"] for r in fid),
                     max(r["reconstruction_error"] for r in fid)))
    print("| backbone | layers | variant | recompute | max rel. error | min cosine | max rebuild error |")
    print("|---|---|---|---|---|---|---|")
    for name, layers, variant, rec, err, cos, rebuild in rows:
        print(f"| {name} | {layers} | {variant} | {rec} | {err:.1e} | {cos:.4f} | {rebuild:.1e} |")


if __name__ == "__main__":
    main()
