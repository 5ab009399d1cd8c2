"""The reversible stack's recompute: what backward keeps from forward, and one function's VJP rebuilt from its input.

- `Replay`: the dropout seeds and autocast state of the forward, so that a recomputed F or G draws the same bits.
- `Stash`: the tensors forward keeps (the top state, exact mode's remainder buffers, checkpoints), released one at a
  time as backward consumes them.
- `recompute_vjp`: F or G recomputed under its replay, in stages and token chunks so that little of it has a graph at
  a time, and its vector-Jacobian product taken in plain autograd's accumulation order (bit-identical gradients).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from mefts_core.engine.models.base import piece_chunks, run_pieces, token_slice


@dataclass
class Replay:
    """What the recompute must reproduce: per-call dropout seeds and the autocast state of the forward."""

    seeds: list[tuple[int, int]] | None  # (seed_F, seed_G) per layer; None when not training (no dropout)
    device_type: str
    autocast: bool
    autocast_dtype: torch.dtype

    @contextlib.contextmanager
    def run(self, layer: int, which: int, replay_autocast: bool = True):
        """Run one F (which=0) or G (which=1) call under its seed, leaving the global RNG stream unchanged."""
        with contextlib.ExitStack() as stack:
            if self.seeds is not None:
                cuda = self.device_type == "cuda"
                devices = [torch.cuda.current_device()] if cuda else []
                stack.enter_context(torch.random.fork_rng(devices=devices))
                # Seed only the generator the dropout draws from: torch.manual_seed seeds every device type, and for
                # one not initialised (XPU beside CUDA; CUDA and XPU on CPU) it formats a stack trace on each call.
                gen = torch.cuda.default_generators[devices[0]] if cuda else torch.default_generator
                gen.manual_seed(self.seeds[layer][which])
            if replay_autocast:
                stack.enter_context(
                    torch.autocast(self.device_type, dtype=self.autocast_dtype, enabled=self.autocast)
                )
            yield


class Stash:
    """Tensors kept from forward to backward as `save_for_backward` keeps them (through the active saved-tensor hooks,
    so memory accounting and offloading hooks see them), but handed over one at a time and released as backward
    consumes them: the top state is dead once the top layer is inverted, each remainder buffer once its layer is.
    """

    def __init__(self, tensors: list[torch.Tensor | None]) -> None:
        hooks = torch._C._autograd._top_saved_tensors_default_hooks(False)
        self._unpack = hooks[1] if hooks else None
        self._items = [t if t is None or hooks is None else hooks[0](t) for t in tensors]
        self._taken = [False] * len(tensors)

    def take(self, i: int) -> torch.Tensor | None:
        if self._taken[i]:
            raise RuntimeError("the reversible stack's backward ran twice for one forward: it frees what it rebuilds "
                               "from as it goes, so retain_graph=True is not supported through it")
        item, self._items[i], self._taken[i] = self._items[i], None, True
        return item if item is None or self._unpack is None else self._unpack(item)


def add_grad(a, b):
    """a + b, where either may be None (no gradient yet, or none reached it)."""
    if a is None:
        return b
    return a if b is None else a + b


# ------------------------------------------------------------------------------------------------ one function's VJP


def recompute_vjp(fn: nn.Module, x: torch.Tensor, dout: torch.Tensor, params, replay: Replay, i: int, which: int,
                  ctx: dict, extras: tuple[str, ...] = (), dx_seed: torch.Tensor | None = None,
                  extra_seeds: list | None = None, *, piecewise: bool = True, replay_autocast: bool = True):
    """Recompute fn(x) under the forward's seed and autocast; return (output, dL/dx, [dL/dparam], extra grads).

    A function made of `pieces` (a whole layer = attention then FFN) is recomputed in stages (`_stages`), so that
    little of it has a graph at a time. Each stage starts from the RNG state it saw in the forward, so dropout masks
    are the same bits.

    `dx_seed` is the gradient that reaches x through the coupling's bypass. It enters the same autograd call
    (through a view of x created last, so it is accumulated first, as plain autograd does), which makes the
    sum at x, and with it every gradient below, bit-identical to the vanilla backward's. `extra_seeds`, the
    gradients of the extra ctx tensors (an encoder's output) from the layers above, enter the same way, so their
    sum over the layers is accumulated in plain autograd's order too; the returned extra grads include them.
    """
    chunk_tokens = getattr(fn, "chunk_tokens", 0)
    stages, slices = _stages(fn, x, chunk_tokens, piecewise)
    # context tensors that need a gradient (an encoder's output) become leaves of this recompute
    ctx = {k: (v.detach().requires_grad_(True) if k in extras else v) for k, v in ctx.items()}
    leaves = [ctx[k] for k in extras]
    grads: list[torch.Tensor | None] = [None] * len(params)
    running = list(extra_seeds) if extra_seeds is not None else [None] * len(leaves)

    with replay.run(i, which, replay_autocast):
        xs, rng, live = _run_ahead(stages, x, ctx, chunk_tokens, piecewise)
        out = None
        for k in reversed(range(len(stages))):
            seed = dx_seed if k == 0 else None
            if k == len(stages) - 1 and slices is not None:
                _set_rng_state(x.device, rng[k])
                out, dout, got = _chunked_vjp(stages[k][0], xs[k], dout, ctx, params, slices, seed)
                grads = [add_grad(a, b) for a, b in zip(grads, got)]
                continue
            if k < len(live) and live[k] is not None:
                (xin, y), live[k] = live[k], None
            else:
                _set_rng_state(x.device, rng[k])
                with torch.enable_grad():
                    xin = xs[k].detach().requires_grad_(True)
                    y = run_pieces(stages[k], xin, ctx, chunk_tokens)
            with torch.enable_grad():
                outs, gouts = [y], [dout.to(y.dtype)]
                for t, g in [(xin, seed), *zip(leaves, running)]:
                    if g is not None:
                        outs.append(t.view_as(t))
                        gouts.append(g.to(t.dtype))
                got = torch.autograd.grad(outs, [xin, *params, *leaves], gouts, allow_unused=True)
            if out is None:
                out = y.detach()
            dout = got[0]
            grads = [add_grad(a, b) for a, b in zip(grads, got[1 : 1 + len(params)])]
            running = [r if g is None else g for g, r in zip(got[1 + len(params) :], running)]
            del y, got, xin
    return out, dout, grads, running


def _stages(fn: nn.Module, x: torch.Tensor, chunk_tokens: int | str, piecewise: bool):
    """fn's pieces grouped into recompute stages, and the token slices of a chunked last stage (None: not chunked).

    - a trailing token-wise piece (the FFN) whose chunking is on is a stage of its own, run one token chunk at a
      time, each chunk's graph freed by its own backward before the next is built;
    - with `piecewise` (recompute_unit="sublayer") every other piece is a stage of its own, recomputed from its input
      after a no-graph pass (like checkpointing inside the layer: one more forward of those pieces); otherwise they
      form one stage whose graph stays alive while the chunked FFN runs (one attention less).
    """
    pieces = list(getattr(fn, "pieces", [fn]))
    slices = piece_chunks(pieces[-1], x, chunk_tokens)
    head = pieces[:-1] if slices is not None else pieces
    stages: list[list[nn.Module]] = [[p] for p in head] if piecewise else ([head] if head else [])
    if slices is not None:
        stages.append(pieces[-1:])
    return stages, slices


def _run_ahead(stages: list[list[nn.Module]], x: torch.Tensor, ctx: dict, chunk_tokens: int | str, piecewise: bool):
    """The forward through every stage but the last: (stage inputs, RNG states at stage starts, graphs kept).

    Piecewise, a stage runs without a graph (backward recomputes it); otherwise its graph is kept for backward
    (layer unit: the attention side's graph, alive while the chunked FFN runs).
    """
    xs, rng, live = [x], [], []
    for stage in stages[:-1]:
        rng.append(_rng_state(x.device))
        if piecewise:
            with torch.no_grad():
                xs.append(run_pieces(stage, xs[-1], ctx, chunk_tokens))
            live.append(None)
            continue
        saved = _SavedStorages()
        with torch.enable_grad(), saved:
            xin = xs[-1].detach().requires_grad_(True)
            y = run_pieces(stage, xin, ctx, chunk_tokens)
        if len(stages) == 2 and not saved.holds(xin) and not _shares(y, xin):
            # no node kept the stage's input (frozen linears, post-LN residuals): its bytes go now, while the
            # graph lives on; xin stays as the handle autograd.grad returns the input's gradient for
            xin.untyped_storage().resize_(0)
        live.append((xin, y))
        xs.append(y.detach())
    rng.append(_rng_state(x.device))
    return xs, rng, live


def _chunked_vjp(piece: nn.Module, x: torch.Tensor, dout: torch.Tensor, ctx: dict, targets: list,
                 slices: list[slice], dx_seed: torch.Tensor | None):
    """A token-wise piece, recomputed and backpropagated one token chunk at a time: (output, dL/dx, grads).

    Chunks run in forward order (the RNG flows as in the forward); the per-chunk parameter gradients are summed
    last chunk first, the order in which plain autograd accumulates the chunks of `run_piece`'s concatenation.
    """
    out, dx = torch.empty_like(x), torch.empty_like(x)  # (B, T, d)
    per_chunk = []
    for sl in slices:
        with torch.enable_grad():
            xin = token_slice(x.detach(), sl).requires_grad_(True)
            y = piece(xin, **ctx)
            got = torch.autograd.grad([y], [xin, *targets], [dout[:, sl].to(y.dtype)], allow_unused=True)
        out[:, sl] = y.detach()
        dx[:, sl] = got[0]
        per_chunk.append(got[1:])
        del y, got, xin
    grads: list[torch.Tensor | None] = [None] * len(targets)
    for got in reversed(per_chunk):
        grads = [add_grad(a, b) for a, b in zip(grads, got)]
    if dx_seed is not None:
        dx.add_(dx_seed.to(dx.dtype))
    return out, dx, grads


class _SavedStorages(torch.autograd.graph.saved_tensors_hooks):
    """Records the storages that autograd saves for backward while active (tensors are kept as detached aliases)."""

    def __init__(self) -> None:
        self.ptrs: set[int] = set()
        super().__init__(self._pack, lambda t: t)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        self.ptrs.add(t.untyped_storage().data_ptr())
        return t.detach()

    def holds(self, t: torch.Tensor) -> bool:
        return t.untyped_storage().data_ptr() in self.ptrs


def _shares(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def _rng_state(device: torch.device) -> torch.Tensor:
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def _set_rng_state(device: torch.device, state: torch.Tensor) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)
