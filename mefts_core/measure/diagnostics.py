"""Diagnostics of the reversible engine: the plain-autograd reference and per-layer gradient fidelity."""

from __future__ import annotations

import contextlib
import re
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from mefts_core.measure.memory import step_loss
from mefts_core.methods import meft_stacks


@contextlib.contextmanager
def vanilla_backward(model: nn.Module) -> Iterator[nn.Module]:
    """Inside, the same MEFT model runs with plain autograd (activations cached), with the same arithmetic and the
    same dropout seeds. It is the reference for tests and diagnostics."""
    stacks = meft_stacks(model)
    before = [s.vanilla for s in stacks]
    for s in stacks:
        s.vanilla = True
    try:
        yield model
    finally:
        for s, v in zip(stacks, before):
            s.vanilla = v


def batch_loss(model: nn.Module, batch: dict[str, Any], loss_fn: Callable | None = None) -> torch.Tensor:
    """The loss of one batch, by the same rule as measure_step (see memory.step_loss)."""
    return step_loss(model(**batch), batch, loss_fn)


_BLOCK = re.compile(r"^(.*)\.stack\.blocks\.(\d+)\.")


def _layer_grads(model: nn.Module, stacks: list[nn.Module]) -> dict[tuple[int, int], torch.Tensor]:
    """Trainable gradients of each reversible layer, flattened: {(stack index, layer index): vector}."""
    prefixes = {name.removesuffix(".stack"): i for i, name in enumerate(
        n for n, m in model.named_modules() if any(m is s for s in stacks))}
    per: dict[tuple[int, int], list[torch.Tensor]] = defaultdict(list)
    seen: set[int] = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        m = _BLOCK.search(name)
        if m is None or not p.requires_grad or id(p) in seen or m.group(1) not in prefixes:
            continue
        seen.add(id(p))
        g = p.grad if p.grad is not None else torch.zeros_like(p)
        per[(prefixes[m.group(1)], int(m.group(2)))].append(g.detach().double().flatten())
    return {k: torch.cat(v) for k, v in sorted(per.items())}


def gradient_fidelity(model: nn.Module, batch: dict[str, Any], loss_fn: Callable | None = None,
                      autocast: torch.dtype | None = None) -> list[dict]:
    """Per reversible layer: cosine and relative error between the reversible and the vanilla gradients of its
    trainable parameters, and the max-abs error of the layer input rebuilt by inversion. Rows carry `stack`
    (0 = the lowest stack, e.g. BART's encoder; 1 = its decoder) and `layer`.

    Runs one forward/backward each way with the same dropout seeds; the model's existing .grad values and the
    stacks' dropout counters are restored.
    With `autocast`, the forward runs under autocast of that dtype and backward outside it, as in training.
    """
    stacks = meft_stacks(model)
    if not stacks:
        raise ValueError("gradient_fidelity needs a MEFT model (method meft1, meft2 or meft3)")
    params = [p for p in model.parameters() if p.requires_grad]
    saved = [p.grad for p in params]
    calls = [s.calls for s in stacks]
    rng = torch.get_rng_state()  # dropout outside the stack (embeddings, head) draws from the global stream
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None

    def run(vanilla: bool) -> dict[int, torch.Tensor]:
        for p in params:
            p.grad = None
        for s, c in zip(stacks, calls):
            s.calls = c  # same dropout seeds for both runs
        torch.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        ctx = vanilla_backward(model) if vanilla else contextlib.nullcontext()
        device_type = next(model.parameters()).device.type
        with ctx:
            with torch.autocast(device_type, dtype=autocast or torch.float32, enabled=autocast is not None):
                loss = batch_loss(model, batch, loss_fn)
            loss.backward()
        return _layer_grads(model, stacks)

    budgets = [s.error_budget for s in stacks]
    for s in stacks:
        s.trace = {"forward": [], "rebuilt": []}
        s.error_budget = None  # measure the error, however large
    try:
        rev = run(False)
        traces = [s.trace for s in stacks]
        for s in stacks:
            s.trace = None
        ref = run(True)
    finally:
        for s, b, c in zip(stacks, budgets, calls):
            s.trace, s.error_budget, s.calls = None, b, c  # the dropout counter too: a check draws no seeds
        for p, g in zip(params, saved):
            p.grad = g
    rows = []
    for (si, layer), g_ref in ref.items():
        g_rev, trace = rev[(si, layer)], traces[si]
        denom = g_ref.norm().item()
        cos = torch.nn.functional.cosine_similarity(g_rev, g_ref, dim=0).item() if denom > 0 else float("nan")
        rec = (trace["rebuilt"][layer] - trace["forward"][layer]).abs().max().item() if trace["rebuilt"] else None
        rows.append({
            "stack": si,
            "layer": layer,
            "cosine": cos,
            "rel_error": (g_rev - g_ref).norm().item() / denom if denom > 0 else float("nan"),
            "reconstruction_error": rec,
        })
    return rows
