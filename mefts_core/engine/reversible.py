"""The reversible stack: MEFT's two-stream coupling with a custom backward that rebuilds inputs from outputs.

Layer n:  y1 = λ·x1 + F(x2);  y2 = β·x2 + G(y1);  MEFT1/2 emit (y2, y1) (the streams swap), MEFT3 (y1, y2).
Backward (docs/method.md §5) recomputes G then F one layer at a time, under the forward's replayed dropout seeds and
autocast state, and inverts the coupling to get the layer's input. Only the top state (plus, in exact mode, the
remainder buffers) is kept from forward to backward, so activation memory does not grow with depth. The recompute
itself (the replay, what forward keeps, each function's staged VJP) is in mefts_core.engine.recompute.

Trainable parameters of the blocks are passed to the autograd Function as inputs (as memcnn does): the Function is then
always called in backward, whether or not its input requires grad, and their gradients flow the normal way (so
`torch.autograd.grad` works too) instead of being accumulated as a side effect.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import torch
from torch import nn

from mefts_core.engine.coupling import ExactArith, FloatArith
from mefts_core.engine.recompute import Replay, Stash, add_grad, recompute_vjp

_SEED_MOD = 2**62


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
        # y1 = λ·(x1 − x2) + F(x2), so that a start near the PLM is not pushed off by λ·x1 (docs/method.md §1).
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

    def _replay(self, x: torch.Tensor) -> Replay:
        dev = x.device.type
        seeds = None
        if self.training:
            gen = torch.Generator().manual_seed((self.seed * 1_000_003 + self.calls) % _SEED_MOD)
            draws = torch.randint(0, _SEED_MOD, (len(self.blocks), 2), generator=gen)
            seeds = [(int(a), int(b)) for a, b in draws.tolist()]
            self.calls += 1
        return Replay(seeds, dev, torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev))

    def _order(self, y1, y2):
        return (y2, y1) if self.swap else (y1, y2)

    def _record(self, key: str, state: tuple[torch.Tensor, torch.Tensor], ar) -> None:
        if self.trace is not None:
            self.trace[key].append(torch.cat([ar.decode(state[0]), ar.decode(state[1])], -1).clone())

    # -- forward -------------------------------------------------------------------------------------------------
    def forward(self, h0: torch.Tensor, merge: nn.Module | None = None, **ctx: Any):
        """h0: (B, T, d) float -> two (B, T, d) float streams, or with `merge` the merged (B, T, d) hidden state.

        `ctx` is passed to every F and G call (masks, rotary embeddings, an encoder's output for cross-attention).
        Context tensors that require grad (the encoder output) get their gradient summed over the layers.
        A `merge` given here runs inside the reversible Function: nothing of it is saved in forward (backward
        recomputes it from the top state), and autograd hands backward one n·d gradient instead of two.
        """
        replay = self._replay(h0)
        params = [p for b in self.blocks for p in b.trainable()]
        extras = [k for k, v in ctx.items() if isinstance(v, torch.Tensor) and v.requires_grad]
        needs_graph = torch.is_grad_enabled() and (h0.requires_grad or len(params) + len(extras) > 0)
        if self.vanilla and needs_graph:
            out = self._forward_autograd(h0, replay, ctx)
            return out if merge is None else merge(*out)
        if not needs_graph:  # eval / no_grad: no Function, no graph, no buffers kept
            with torch.no_grad():
                (s1, s2), _, _ = self.run_forward(h0, replay, ctx)
                ar = self.arith(h0.dtype)
                out = ar.decode(s1), ar.decode(s2)
                return out if merge is None else merge(*out)
        static = {k: v for k, v in ctx.items() if k not in extras}
        merge_params = [p for p in merge.parameters() if p.requires_grad] if merge is not None else []
        outs = _RevFunction.apply(self, replay, static, extras, merge, len(merge_params), h0,
                                  *[ctx[k] for k in extras], *merge_params, *params)
        return outs if merge is None else outs[0]

    def run_forward(self, h0: torch.Tensor, replay: Replay, ctx: dict, keep: bool = False):
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
            # a stream is overwritten by its own scaling once nothing else reads it: not a checkpoint, not the first
            # layer's (both streams are h0's encoding there, which float mode does not copy: the caller's tensor)
            free = i > 0 and i not in checkpoints
            with replay.run(i, 0, self.replay_autocast):
                f = block.f(ar.decode(x2), **ctx)  # (B, T, d)
            a, buf_l = ar.scale(x1 - x2 if self.f_residual else x1, self.lam, owned=free)
            y1 = ar.add(a, f)
            del f, a
            with replay.run(i, 1, self.replay_autocast):
                g = block.g(ar.decode(y1), **ctx)
            b, buf_b = ar.scale(x2 - y1 if self.g_residual else x2, self.beta, owned=free)
            y2 = ar.add(b, g)
            del g, b, x1, x2, state
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

    def invert(self, state, buffers, replay: Replay, ctx: dict, dtype: torch.dtype = torch.float32):
        """Rebuild every layer's input state from the top state (no gradients). Index i = input of layer i."""
        ar = self.arith(dtype)
        zeros = torch.zeros(state[0].shape, dtype=dtype, device=state[0].device)
        out = []
        for i in reversed(range(len(self.blocks))):
            carry = [state, (zeros, zeros)]
            del state
            state, _, _, _ = self.backward_layer(i, carry, buffers[2 * i], buffers[2 * i + 1], replay, ctx, ar, [])
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
    def backward_layer(self, i: int, carry: list, buf_l, buf_b, replay: Replay, ctx: dict, ar, params,
                       extras: tuple[str, ...] = (), egrads: list | None = None):
        """Rebuild layer i's input from its output and push the gradient through it (Listing 1, with inverses).

        `carry` = [output state, grad wrt the output floats]; it is emptied, so that the caller holds no reference
        and the output state's bytes are freed as soon as the inversion is done with them.

        `egrads`: the gradients of the extra ctx tensors summed over the layers above (None: none yet).
        Returns (input state, grad wrt input floats, [grad per param of this block], egrads with this layer's added).
        """
        block = self.blocks[i]
        (y1, y2), (dy1, dy2) = self._order(*carry[0]), self._order(*carry[1])
        carry.clear()  # from here on, each tensor is freed as soon as this layer no longer needs it
        seed1 = dy1 - dy2 * float(self.beta) if self.g_residual else dy1
        how = {"piecewise": self.piecewise, "replay_autocast": self.replay_autocast}
        g, dy1, grads_g, egrads = recompute_vjp(block.g, ar.decode(y1), dy2, params, replay, i, 1, ctx, extras, seed1,
                                                egrads, **how)
        del seed1
        x2 = ar.unscale(ar.sub(y2, g), buf_b, self.beta, owned=True)
        del y2, g, buf_b
        x2 = x2 + y1 if self.g_residual else x2
        seed2 = dy2 * float(self.beta) - dy1 * float(self.lam) if self.f_residual else _times(dy2, self.beta)
        del dy2
        f, dx2, grads_f, egrads = recompute_vjp(block.f, ar.decode(x2), dy1, params, replay, i, 0, ctx, extras, seed2,
                                                egrads, **how)
        del seed2
        x1 = ar.unscale(ar.sub(y1, f), buf_l, self.lam, owned=True)
        del y1, f
        x1 = x1 + x2 if self.f_residual else x1
        dx1 = _times(dy1, self.lam)
        return (x1, x2), (dx1, dx2), [add_grad(a, b) for a, b in zip(grads_g, grads_f)], egrads


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


def _times(t: torch.Tensor, factor: Fraction) -> torch.Tensor:
    """t·factor, without a copy for a factor of 1 (MEFT1's β, MEFT2's λ): the same values, one n·d tensor less."""
    return t if factor == 1 else t * float(factor)


class _RevFunction(torch.autograd.Function):
    """Forward runs the stack without a graph and keeps only the top state and the exact-mode buffers."""

    @staticmethod
    def forward(ctx, stack: ReversibleStack, replay: Replay, static: dict, extras: list[str], merge, n_merge: int,
                h0: torch.Tensor, *tensors):
        extra_values = [t.detach() for t in tensors[: len(extras)]]
        ctx.merge, ctx.n_merge = merge, n_merge
        ctx.merge_params = list(tensors[len(extras) : len(extras) + n_merge])
        layer_ctx = {**static, **dict(zip(extras, extra_values))}
        state, buffers, checkpoints = stack.run_forward(h0, replay, layer_ctx, keep=True)
        ctx.stack, ctx.replay, ctx.static, ctx.extras = stack, replay, static, tuple(extras)
        ctx.in_dtype = h0.dtype
        ctx.checkpoint_keys = sorted(checkpoints)
        # [s1, s2, buffer per layer and scale..., checkpoint states...]
        ctx.stash = Stash([state[0], state[1], *buffers, *[t for k in ctx.checkpoint_keys for t in checkpoints[k]]])
        ctx.n_buffers = len(buffers)
        ctx.save_for_backward(*extra_values)  # an encoder's output: needed by every layer, to the end
        ar = stack.arith(h0.dtype)
        if merge is not None:
            return (merge(ar.decode(state[0]), ar.decode(state[1])),)  # (B, T, d); grad is off in here
        return ar.decode(state[0]), ar.decode(state[1])

    @staticmethod
    def backward(ctx, *douts):
        stack: ReversibleStack = ctx.stack
        stash, nb = ctx.stash, ctx.n_buffers
        layer_ctx = {**ctx.static, **dict(zip(ctx.extras, ctx.saved_tensors))}
        state = (stash.take(0), stash.take(1))
        ar = stack.arith(ctx.in_dtype)
        mgrads: list[torch.Tensor | None] = []
        if ctx.merge is not None:  # the merge's own backward, as plain autograd runs it (same ops, same bits)
            with torch.enable_grad():
                s1, s2 = (ar.decode(t).requires_grad_(True) for t in state)
                d1, d2, *mgrads = torch.autograd.grad(ctx.merge(s1, s2), [s1, s2, *ctx.merge_params], douts[0],
                                                      allow_unused=True)
            del s1, s2
        else:
            d1, d2 = douts
        del douts
        zeros = torch.zeros_like(ar.decode(state[0])) if d1 is None or d2 is None else None
        dstate = (d1 if d1 is not None else zeros, d2 if d2 is not None else zeros)
        del d1, d2, zeros
        per_block = [b.trainable() for b in stack.blocks]
        all_params = [p for params in per_block for p in params]
        index = {id(p): j for j, p in enumerate(all_params)}
        pgrads: list[torch.Tensor | None] = [None] * len(all_params)
        egrads: list[torch.Tensor | None] = [None] * len(ctx.extras)
        rebuilt = []
        for i in reversed(range(len(stack.blocks))):
            params = per_block[i]
            carry = [state, dstate]
            del state, dstate
            state, dstate, grads, egrads = stack.backward_layer(
                i, carry, stash.take(2 + 2 * i), stash.take(3 + 2 * i), ctx.replay, layer_ctx, ar, params,
                ctx.extras, egrads,
            )
            if stack.trace is not None:  # diagnostics only: holding every layer's state would defeat the point
                rebuilt.append(state)
            if i in ctx.checkpoint_keys:  # recompute="checkpoint_every=k": reset the drift to the stored exact state
                j = 2 + nb + 2 * ctx.checkpoint_keys.index(i)
                state = (stash.take(j), stash.take(j + 1))
            for p, g in zip(params, grads):
                pgrads[index[id(p)]] = add_grad(pgrads[index[id(p)]], g)
        if stack.trace is not None:
            for st in reversed(rebuilt):
                stack._record("rebuilt", st, ar)
        ar.check()
        stack.check_reconstruction(*state, ar)
        dh0 = dstate[0] + dstate[1]  # both streams start as h0
        return None, None, None, None, None, None, dh0.to(ctx.in_dtype), *egrads, *mgrads, *pgrads
