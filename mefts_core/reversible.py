"""The reversible stack: MEFT's two-stream coupling with a custom backward that rebuilds inputs from outputs.

Layer n:  y1 = λ·x1 + F(x2);  y2 = β·x2 + G(y1);  MEFT1/2 emit (y2, y1) (the streams swap), MEFT3 (y1, y2).
Backward (meft-spec.md §3.2) recomputes G then F one layer at a time, under the forward's replayed dropout seeds and
autocast state, and inverts the coupling to get the layer's input. Only the top state (plus, in exact mode, the
remainder buffers) is kept from forward to backward, so activation memory does not grow with depth.

Trainable parameters of the blocks are passed to the autograd Function as inputs (as memcnn does): the Function is then
always called in backward, whether or not its input requires grad, and their gradients flow the normal way (so
`torch.autograd.grad` works too) instead of being accumulated as a side effect.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import torch
from torch import nn

from mefts_core.coupling import ExactArith, FloatArith

_SEED_MOD = 2**62


@dataclass
class _Replay:
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


class RevBlock(nn.Module):
    """One coupling layer: F and G are modules called as f(x, **ctx)."""

    def __init__(self, f: nn.Module, g: nn.Module) -> None:
        super().__init__()
        self.f = f
        self.g = g

    def trainable(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]


class ReversibleStack(nn.Module):
    """A stack of RevBlocks with a shared coupling (λ, β, swap) and arithmetic (exact or float).

    forward(h0, **ctx) -> (s1, s2): the two final streams in state order, both starting as copies of h0.
    Set `vanilla = True` (see diagnostics.vanilla_backward) to run the same arithmetic under plain autograd.
    """

    def __init__(self, blocks: list[RevBlock], *, lam: Fraction, beta: Fraction, swap: bool, exact: bool,
                 checkpoint_every: int = 0, seed: int = 0, error_budget: float | None = 1e-2,
                 f_residual: bool = False, g_residual: bool = False, piecewise: bool = True) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.lam, self.beta, self.swap = lam, beta, swap
        # Pre-LN blocks return x + branch(x): the bypass then scales the stream *difference*,
        # y1 = λ·(x1 − x2) + F(x2), so that a start near the PLM is not pushed off by λ·x1 (meft-spec.md §4).
        self.f_residual, self.g_residual = f_residual, g_residual
        self.exact = exact
        # piecewise (recompute_unit="sublayer"): backward recomputes a layer one piece (sub-block) at a time, so only
        # one piece's graph is alive, which halves the backward peak, for one more forward of every piece but the last.
        self.piecewise = piecewise
        self.checkpoint_every = checkpoint_every
        self.seed = seed
        self.calls = 0  # training forwards so far: with `seed`, it fixes every dropout seed (reproducible runs)
        self.vanilla = False
        self.replay_autocast = True  # off only in the regression test that shows why it is needed
        self.trace: dict[str, list[torch.Tensor]] | None = None  # diagnostics: per-layer inputs, fwd and rebuilt
        # Float mode: both streams start as copies of h0, so after inversion their difference is a free measure of the
        # reconstruction error. Past this relative budget the gradients are computed at wrong points: fail loudly.
        self.error_budget = error_budget
        self.last_reconstruction_error: float | None = None

    # -- helpers -------------------------------------------------------------------------------------------------
    def arith(self, dtype: torch.dtype) -> FloatArith | ExactArith:
        return ExactArith(dtype=dtype) if self.exact else FloatArith(dtype)

    def _replay(self, x: torch.Tensor) -> _Replay:
        dev = x.device.type
        seeds = None
        if self.training:
            gen = torch.Generator().manual_seed((self.seed * 1_000_003 + self.calls) % _SEED_MOD)
            draws = torch.randint(0, _SEED_MOD, (len(self.blocks), 2), generator=gen)
            seeds = [(int(a), int(b)) for a, b in draws.tolist()]
            self.calls += 1
        return _Replay(seeds, dev, torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev))

    def _order(self, y1, y2):
        return (y2, y1) if self.swap else (y1, y2)

    def _record(self, key: str, state: tuple[torch.Tensor, torch.Tensor], ar) -> None:
        if self.trace is not None:
            self.trace[key].append(torch.cat([ar.decode(state[0]), ar.decode(state[1])], -1).clone())

    # -- forward -------------------------------------------------------------------------------------------------
    def forward(self, h0: torch.Tensor, **ctx: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """h0: (B, T, d) float -> two (B, T, d) float streams.

        `ctx` is passed to every F and G call (masks, rotary embeddings, an encoder's output for cross-attention).
        Context tensors that require grad (the encoder output) get their gradient summed over the layers.
        """
        replay = self._replay(h0)
        params = [p for b in self.blocks for p in b.trainable()]
        extras = [k for k, v in ctx.items() if isinstance(v, torch.Tensor) and v.requires_grad]
        needs_graph = torch.is_grad_enabled() and (h0.requires_grad or len(params) + len(extras) > 0)
        if self.vanilla and needs_graph:
            return self._forward_autograd(h0, replay, ctx)
        if not needs_graph:  # eval / no_grad: no Function, no graph, no buffers kept
            with torch.no_grad():
                (s1, s2), _, _ = self.run_forward(h0, replay, ctx)
            ar = self.arith(h0.dtype)
            return ar.decode(s1), ar.decode(s2)
        static = {k: v for k, v in ctx.items() if k not in extras}
        return _RevFunction.apply(self, replay, static, extras, h0, *[ctx[k] for k in extras], *params)

    def run_forward(self, h0: torch.Tensor, replay: _Replay, ctx: dict, keep: bool = False):
        """The coupling without autograd. Returns the top state, the remainder buffers and the checkpoints."""
        ar = self.arith(h0.dtype)
        s = ar.encode(h0)
        state = (s, s)
        buffers: list[torch.Tensor | None] = []
        checkpoints: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for i, block in enumerate(self.blocks):
            self._record("forward", state, ar)
            if keep and self.checkpoint_every and i % self.checkpoint_every == 0 and i > 0:
                checkpoints[i] = state
            x1, x2 = state
            with replay.run(i, 0, self.replay_autocast):
                f = block.f(ar.decode(x2), **ctx)  # (B, T, d)
            a, buf_l = ar.scale(x1 - x2 if self.f_residual else x1, self.lam)
            y1 = ar.add(a, f)
            del f
            with replay.run(i, 1, self.replay_autocast):
                g = block.g(ar.decode(y1), **ctx)
            b, buf_b = ar.scale(x2 - y1 if self.g_residual else x2, self.beta)
            y2 = ar.add(b, g)
            del g
            buffers += [buf_l, buf_b]
            state = self._order(y1, y2)
        ar.check()
        return state, buffers, checkpoints

    def _forward_autograd(self, h0, replay, ctx):
        """Reference path: the same arithmetic under plain autograd (exact mode: straight-through the rounding)."""
        ar = self.arith(h0.dtype)
        lam, beta = float(self.lam), float(self.beta)
        s = ar.encode(h0)
        ints = (s, s)  # exact values (ints in exact mode)
        x1f = x2f = h0 if not ar.exact else _Exact.apply(ar.decode(s), h0)
        for i, block in enumerate(self.blocks):
            self._record("forward", ints, ar)
            with replay.run(i, 0, self.replay_autocast):
                f = block.f(x2f, **ctx)
            x1i, x2i = ints
            y1 = ar.add(ar.scale(x1i - x2i if self.f_residual else x1i, self.lam)[0], f.detach())
            y1f = lam * (x1f - x2f if self.f_residual else x1f) + f.to(x1f.dtype)
            if ar.exact:
                y1f = _Exact.apply(ar.decode(y1), y1f)
            with replay.run(i, 1, self.replay_autocast):
                g = block.g(y1f, **ctx)
            y2 = ar.add(ar.scale(x2i - y1 if self.g_residual else x2i, self.beta)[0], g.detach())
            y2f = beta * (x2f - y1f if self.g_residual else x2f) + g.to(x2f.dtype)
            if ar.exact:
                y2f = _Exact.apply(ar.decode(y2), y2f)
            ints = self._order(y1, y2)
            x1f, x2f = self._order(y1f, y2f)
        ar.check()
        return x1f, x2f

    def invert(self, state, buffers, replay: _Replay, ctx: dict, dtype: torch.dtype = torch.float32):
        """Rebuild every layer's input state from the top state (no gradients). Index i = input of layer i."""
        ar = self.arith(dtype)
        zeros = torch.zeros(state[0].shape, dtype=dtype, device=state[0].device)
        out = []
        for i in reversed(range(len(self.blocks))):
            state, _, _ = self.backward_layer(i, state, (zeros, zeros), buffers[2 * i], buffers[2 * i + 1], replay,
                                              ctx, ar, [])
            out.append(state)
        return out[::-1]

    def check_reconstruction(self, x1: torch.Tensor, x2: torch.Tensor, ar) -> None:
        """Float mode: the rebuilt copies of h0 must agree; record their gap and raise past the budget."""
        a, b = ar.decode(x1).float(), ar.decode(x2).float()
        err = ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()
        self.last_reconstruction_error = err
        if not ar.exact and self.error_budget is not None and err > self.error_budget:
            raise FloatingPointError(
                f"reversible reconstruction error {err:.3g} (relative, at the embeddings) exceeds the budget "
                f"{self.error_budget:g}: float inversion is unstable at this depth and scale (lam={self.lam}, "
                f"beta={self.beta}); use recompute='exact' (default) or 'checkpoint_every=k'"
            )

    # -- backward ------------------------------------------------------------------------------------------------
    def backward_layer(self, i: int, state, dstate, buf_l, buf_b, replay: _Replay, ctx: dict, ar, params,
                       extras: tuple[str, ...] = ()):
        """Rebuild layer i's input from its output and push the gradient through it (Listing 1, with inverses).

        Returns (input state, grad wrt input floats, [grad per param of this block, then per extra ctx tensor]).
        """
        block = self.blocks[i]
        (y1, y2), (dy1, dy2) = self._order(*state), self._order(*dstate)
        seed1 = dy1 - dy2 * float(self.beta) if self.g_residual else dy1
        g, dy1, grads_g = self._vjp(block.g, ar.decode(y1), dy2, params, replay, i, 1, ctx, extras, seed1)
        x2 = ar.unscale(ar.sub(y2, g), buf_b, self.beta, owned=True)
        x2 = x2 + y1 if self.g_residual else x2
        del g
        seed2 = dy2 * float(self.beta) - dy1 * float(self.lam) if self.f_residual else dy2 * float(self.beta)
        f, dx2, grads_f = self._vjp(block.f, ar.decode(x2), dy1, params, replay, i, 0, ctx, extras, seed2)
        x1 = ar.unscale(ar.sub(y1, f), buf_l, self.lam, owned=True)
        x1 = x1 + x2 if self.f_residual else x1
        del f
        dx1 = dy1 * float(self.lam)
        return (x1, x2), (dx1, dx2), [_add(a, b) for a, b in zip(grads_g, grads_f)]

    def _vjp(self, fn: nn.Module, x: torch.Tensor, dout: torch.Tensor, params, replay: _Replay, i: int,
             which: int, ctx: dict, extras: tuple[str, ...] = (), dx_seed: torch.Tensor | None = None):
        """Recompute fn(x) under the forward's seed and autocast; return (output, dL/dx, [dL/dparam]).

        With `self.piecewise`, a function made of `pieces` (a whole layer = attention then FFN) is recomputed piece
        by piece, like checkpointing inside the layer: only one piece's graph is alive at a time, which halves the
        peak. Each piece restarts from the RNG state it saw in the forward, so dropout masks are the same bits.

        `dx_seed` is the gradient that reaches x through the coupling's bypass. It enters the same autograd call
        (through a view of x created last, so it is accumulated first, as plain autograd does), which makes the
        sum at x, and with it every gradient below, bit-identical to the vanilla backward's.
        """
        pieces = list(getattr(fn, "pieces", [fn])) if self.piecewise else [fn]
        # context tensors that need a gradient (an encoder's output) become leaves of this recompute
        ctx = {k: (v.detach().requires_grad_(True) if k in extras else v) for k, v in ctx.items()}
        targets = [*params, *[ctx[k] for k in extras]]
        grads: list[torch.Tensor | None] = [None] * len(targets)
        with replay.run(i, which, self.replay_autocast):
            xs, rng = [x], [_rng_state(x.device)]
            with torch.no_grad():
                for piece in pieces[:-1]:
                    xs.append(piece(xs[-1], **ctx))
                    rng.append(_rng_state(x.device))
            out = None
            for k in reversed(range(len(pieces))):
                _set_rng_state(x.device, rng[k])
                with torch.enable_grad():
                    xin = xs[k].detach().requires_grad_(True)
                    y = pieces[k](xin, **ctx)
                    outs, gouts = [y], [dout.to(y.dtype)]
                    if k == 0 and dx_seed is not None:
                        outs.append(xin.view_as(xin))
                        gouts.append(dx_seed.to(xin.dtype))
                    got = torch.autograd.grad(outs, [xin, *targets], gouts, allow_unused=True)
                if out is None:
                    out = y.detach()
                dout = got[0]
                grads = [_add(a, b) for a, b in zip(grads, got[1:])]
                del y, got, xin
        return out, dout, grads


def _rng_state(device: torch.device) -> torch.Tensor:
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def _set_rng_state(device: torch.device, state: torch.Tensor) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


class _Exact(torch.autograd.Function):
    """Straight-through rounding: the value of the fixed-point stream, the gradient of its float expression.

    (`src + (value - src).detach()` would be off by an ulp, so the reference would run F at other points.)
    """

    @staticmethod
    def forward(ctx, value: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
        return value

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return None, grad


def _add(a, b):
    if a is None:
        return b
    return a if b is None else a + b


class _RevFunction(torch.autograd.Function):
    """Forward runs the stack without a graph and saves only the top state and the exact-mode buffers."""

    @staticmethod
    def forward(ctx, stack: ReversibleStack, replay: _Replay, static: dict, extras: list[str], h0: torch.Tensor,
                *tensors):
        extra_values = [t.detach() for t in tensors[: len(extras)]]
        layer_ctx = {**static, **dict(zip(extras, extra_values))}
        state, buffers, checkpoints = stack.run_forward(h0, replay, layer_ctx, keep=True)
        ctx.stack, ctx.replay, ctx.static, ctx.extras = stack, replay, static, tuple(extras)
        ctx.in_dtype = h0.dtype
        ctx.n_buffers = [b is not None for b in buffers]
        ctx.checkpoint_keys = sorted(checkpoints)
        saved = [state[0], state[1], *[b for b in buffers if b is not None]]
        for k in ctx.checkpoint_keys:
            saved += list(checkpoints[k])
        # through save_for_backward so that saved-tensor accounting sees every byte kept for backward
        ctx.save_for_backward(*saved, *extra_values)
        ar = stack.arith(h0.dtype)
        return ar.decode(state[0]), ar.decode(state[1])

    @staticmethod
    def backward(ctx, d1, d2):
        stack: ReversibleStack = ctx.stack
        saved = list(ctx.saved_tensors)
        n_extra = len(ctx.extras)
        layer_ctx = {**ctx.static, **dict(zip(ctx.extras, saved[len(saved) - n_extra :]))}
        saved = saved[: len(saved) - n_extra]
        state = (saved[0], saved[1])
        present = iter(saved[2 : 2 + sum(ctx.n_buffers)])
        buffers = [next(present) if has else None for has in ctx.n_buffers]
        rest = saved[2 + sum(ctx.n_buffers) :]
        checkpoints = {k: (rest[2 * j], rest[2 * j + 1]) for j, k in enumerate(ctx.checkpoint_keys)}
        ar = stack.arith(ctx.in_dtype)
        zeros = torch.zeros_like(ar.decode(state[0]))
        dstate = (d1 if d1 is not None else zeros, d2 if d2 is not None else zeros)
        per_block = [b.trainable() for b in stack.blocks]
        all_params = [p for params in per_block for p in params]
        index = {id(p): j for j, p in enumerate(all_params)}
        pgrads: list[torch.Tensor | None] = [None] * len(all_params)
        egrads: list[torch.Tensor | None] = [None] * n_extra
        rebuilt = []
        for i in reversed(range(len(stack.blocks))):
            params = per_block[i]
            state, dstate, grads = stack.backward_layer(
                i, state, dstate, buffers[2 * i], buffers[2 * i + 1], ctx.replay, layer_ctx, ar, params, ctx.extras
            )
            if stack.trace is not None:  # diagnostics only: holding every layer's state would defeat the point
                rebuilt.append(state)
            if i in checkpoints:  # recompute="checkpoint_every=k": reset the drift to the stored exact state
                state = checkpoints[i]
            for p, g in zip(params, grads):
                pgrads[index[id(p)]] = _add(pgrads[index[id(p)]], g)
            egrads = [_add(a, b) for a, b in zip(egrads, grads[len(params) :])]
        if stack.trace is not None:
            for st in reversed(rebuilt):
                stack._record("rebuilt", st, ar)
        ar.check()
        stack.check_reconstruction(*state, ar)
        dh0 = dstate[0] + dstate[1]  # both streams start as h0
        return None, None, None, None, dh0.to(ctx.in_dtype), *egrads, *pgrads
