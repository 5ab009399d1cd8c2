"""Fits in budget: the largest batch and the longest sequence each method fits in a memory budget.

Elsewhere than CUDA from a fit of measured steps (`fit_from_measurements`, an estimate); on CUDA the batch by search
with real OOM catching (`search_max_batch`, a measurement). `fits_in_budget` gives both per method and budget,
`fits_table` shows them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch

from mefts_core.measure import tables
from mefts_core.measure.bench.grid import BenchGrid, parse_method
from mefts_core.measure.bench.rows import GiB
from mefts_core.measure.bench.runner import build_model, make_batch, model_head, release, timed_steps

log = logging.getLogger(__name__)

# The keys of every fits_in_budget row, in order (its JSON file's columns).
FITS_COLUMNS = ("backbone", "method", "layers", "seq_len", "batch_size", "budget_gib", "max_batch", "max_seq_len",
                "how", "max_batch_analytic", "fit", "device")

def measure_points(backbone: str, method: str, points: Iterable[tuple[int, int]], *, layers: int | None = None,
                   dtype: str = "float32", device: torch.device | str = "cpu", seed: int = 0) -> list[dict[str, Any]]:
    """Measured memory (one warm-up + one measured step each) at (batch, seq_len) points, for `fit_memory`.

    The model is built once at the longest sequence and reused: only the batch changes between points.
    """
    points = list(points)
    return _PointMeter(backbone, method, max(t for _, t in points), layers=layers, dtype=dtype, device=device,
                       seed=seed).measure(points)


class _PointMeter:
    """One model (and AdamW) measured at several batch shapes."""

    def __init__(self, backbone: str, method: str, seq_len: int, *, layers: int | None, dtype: str,
                 device: torch.device | str, seed: int) -> None:
        self.backbone, self.seed, self.device = backbone, seed, torch.device(device)
        self.model, _ = build_model(backbone, method, layers=layers, seq_len=seq_len, dtype=dtype,
                                    device=self.device, seed=seed)
        self.optimizer = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=0.0)

    def measure(self, points: Iterable[tuple[int, int]]) -> list[dict[str, Any]]:
        from mefts_core.measure.memory import measure_step

        out = []
        for b, t in points:
            batch = make_batch(self.model.config, b, t, head=model_head(self.backbone), seed=self.seed, device=self.device)
            r = measure_step(self.model, batch, self.optimizer, warmup_steps=1)
            out.append({"batch_size": b, "seq_len": t, "peak_bytes": r.peak_bytes,
                        "peak_activation_bytes": r.peak_activation_bytes,
                        "static_bytes": r.param_bytes + r.grad_bytes + r.optimizer_bytes})
            del batch
            release(self.device)
        return out


def search_max_batch(backbone: str, method: str, *, seq_len: int, budget_bytes: int, layers: int | None = None,
                     dtype: str = "float32", device: str = "cuda", seed: int = 0, limit: int = 65536) -> int:
    """GPU ONLY: the largest batch whose training step fits in `budget_bytes`, by search with real OOM catching.

    The caching allocator is capped at the budget (torch.cuda.set_per_process_memory_fraction), then batches are
    doubled until a step runs out of memory and bisected between the last fit and the first miss. Each probe runs a
    full step with AdamW's state and the grads allocated, as in training. Returns 0 when batch 1 does not fit.
    Not run in this repository's CI (no GPU there): bench/gpu.sh runs it on a lent card.
    """
    dev = torch.device(device)
    if dev.type != "cuda":
        raise ValueError(f"device={device!r}: search_max_batch needs CUDA; elsewhere use fits_in_budget's fit")
    if dev.index is None:  # set_per_process_memory_fraction needs an index
        dev = torch.device("cuda", torch.cuda.current_device())
    total = torch.cuda.get_device_properties(dev).total_memory
    if budget_bytes > total:
        raise ValueError(f"budget_bytes={budget_bytes}: larger than this card's {total} bytes")
    release(dev)
    model, _ = build_model(backbone, method, layers=layers, seq_len=seq_len, dtype=dtype, device=dev, seed=seed)
    held = {"model": model, "optimizer": torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                                           lr=0.0)}
    del model
    torch.cuda.set_per_process_memory_fraction(budget_bytes / total, dev)

    def fits(b: int) -> bool:
        failed = False
        try:
            batch = make_batch(held["model"].config, b, seq_len, head=model_head(backbone), seed=seed, device=dev)
            # the first probe's first step allocates AdamW's state and the grads; one step each after that
            timed_steps(held["model"], batch, held["optimizer"], 1 if held["optimizer"].state else 2, dev)
            del batch
        except torch.OutOfMemoryError:
            failed = True
        held["optimizer"].zero_grad(set_to_none=False)
        release(dev)  # after the except block: the traceback no longer holds the step's tensors
        log.info("search %s %s T=%d B=%d: %s", backbone, method, seq_len, b, "no" if failed else "fits")
        return not failed

    try:
        if not fits(1):
            return 0
        lo, hi = 1, 2
        while hi <= limit and fits(hi):
            lo, hi = hi, hi * 2
        while hi - lo > 1:  # lo fits, hi does not (or is past the limit)
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        return lo
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, dev)
        held.clear()
        release(dev)


def fit_from_measurements(backbone: str, method: str, *, seq_len: int, layers: int | None = None,
                          dtype: str = "float32", device: torch.device | str = "cpu", seed: int = 0,
                          max_tokens: int = 1 << 16) -> tuple[Any, list[dict[str, Any]]]:
    """Fit peak = static + max(floor, a + b·tokens + c·tokens·seq) to measured steps (estimate.MemoryFit).

    At small batches a transient that does not scale (the dense embedding gradient and AdamW's temporaries of full
    FT) can hide the per-token cost, so the batch is doubled from 1 until the activation peak scales (x1.6 from B to
    2B), then (B, T), (2B, T) and (4B, T/2) give a, b and c; what batch 1 needs beyond the line is the floor.
    """
    from mefts_core.measure.estimate import fit_memory

    meter = _PointMeter(backbone, method, seq_len, layers=layers, dtype=dtype, device=device, seed=seed)
    measure = meter.measure
    b = 1
    pts = measure([(1, seq_len), (2, seq_len)])
    first = pts[0]
    while pts[-1]["peak_activation_bytes"] < 1.6 * pts[-2]["peak_activation_bytes"] and 4 * b * seq_len <= max_tokens:
        b *= 2
        pts = [pts[-1], *measure([(2 * b, seq_len)])]
    half = max(8, seq_len // 2)
    pts.append(*measure([(2 * b * seq_len // half, half)]))  # as many tokens as (2B, T), half the keys each
    del meter
    release(torch.device(device))
    fit = fit_memory(pts)
    fit.floor = max(fit.floor, first["peak_bytes"] - first["static_bytes"])
    return fit, pts if pts[0] is first else [first, *pts]


def fits_in_budget(backbone: str, methods: Iterable[str], budgets_gib: Iterable[float], *, seq_len: int,
                   batch_size: int = 8, layers: int | None = None, dtype: str = "float32", device: str = "auto",
                   seed: int = 0) -> list[dict[str, Any]]:
    """For each method and budget: the largest batch at `seq_len`, and the longest sequence at `batch_size`.

    Elsewhere than CUDA both come from `fit_from_measurements` (estimates, extrapolated from small measured steps).
    On CUDA the batch is found by search with real OOM catching (`search_max_batch`); the sequence length still
    comes from the fit.
    """
    dev = BenchGrid(backbones=[backbone], methods=list(methods), device=device).torch_device()
    budgets_gib = list(budgets_gib)
    out = []
    for method in methods:
        fit, _ = fit_from_measurements(backbone, method, seq_len=seq_len, layers=layers, dtype=dtype, device=dev,
                                       seed=seed)
        for gib in budgets_gib:
            budget = int(gib * GiB)
            row = {"backbone": backbone, "method": method, "layers": layers, "seq_len": seq_len,
                   "batch_size": batch_size, "budget_gib": gib, "max_batch": fit.max_batch(seq_len, budget),
                   "max_seq_len": fit.max_seq(batch_size, budget), "how": "estimate: fit of measured steps",
                   "max_batch_analytic": _analytic_max_batch(backbone, method, seq_len, budget, layers, dtype, dev),
                   "fit": fit.to_dict(), "device": str(dev)}
            if dev.type == "cuda" and budget <= torch.cuda.get_device_properties(dev).total_memory:
                row["max_batch"] = search_max_batch(backbone, method, seq_len=seq_len, budget_bytes=budget,
                                                    layers=layers, dtype=dtype, device=str(dev), seed=seed)
                row["how"] = "cuda search (real OOM); max_seq_len from the fit"
            out.append(row)
    return out


def _analytic_max_batch(backbone: str, method: str, seq_len: int, budget: int, layers: int | None, dtype: str,
                        device: torch.device) -> int | None:
    from mefts_core.measure.estimate import max_batch_estimate

    base, options = parse_method(method)
    try:
        return max_batch_estimate(backbone, base, seq_len, budget, layers, options, dtype=dtype, device=device.type)
    except NotImplementedError:
        return None


def _fits_cells(r: dict[str, Any]) -> list[str]:
    ana = r.get("max_batch_analytic")
    return [r["backbone"], r["method"], str(r["layers"] or "-"), f"{r['budget_gib']:g}",
            f"{r['max_batch']:,} @ {r['seq_len']}", "-" if ana is None else f"{ana:,}",
            f"{r['max_seq_len']:,} @ {r['batch_size']}", r["how"]]


def fits_table(rows: Iterable[dict[str, Any]]) -> str:
    """fits_in_budget's rows for people (Markdown)."""
    head = ["backbone", "method", "L", "budget GiB", "max batch @ T", "(analytic estimate)", "max seq @ B", "how"]
    return tables.to_markdown(head, [_fits_cells(r) for r in rows])
