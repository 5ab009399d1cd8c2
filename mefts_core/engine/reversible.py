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

from mefts_core.engine.coupling import ExactArith, FloatArith
from mefts_core.engine.models.base import piece_chunks, run_pieces, token_slice

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

    def invert(self, state, buffers, replay: _Replay, ctx: dict, dtype: torch.dtype = torch.float32):
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
    def backward_layer(self, i: int, carry: list, buf_l, buf_b, replay: _Replay, ctx: dict, ar, params,
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
        g, dy1, grads_g, egrads = self._vjp(block.g, ar.decode(y1), dy2, params, replay, i, 1, ctx, extras, seed1,
                                            egrads)
        del seed1
        x2 = ar.unscale(ar.sub(y2, g), buf_b, self.beta, owned=True)
        del y2, g, buf_b
        x2 = x2 + y1 if self.g_residual else x2
        seed2 = dy2 * float(self.beta) - dy1 * float(self.lam) if self.f_residual else _times(dy2, self.beta)
        del dy2
        f, dx2, grads_f, egrads = self._vjp(block.f, ar.decode(x2), dy1, params, replay, i, 0, ctx, extras, seed2,
                                            egrads)
        del seed2
        x1 = ar.unscale(ar.sub(y1, f), buf_l, self.lam, owned=True)
        del y1, f
        x1 = x1 + x2 if self.f_residual else x1
        dx1 = _times(dy1, self.lam)
        return (x1, x2), (dx1, dx2), [_add(a, b) for a, b in zip(grads_g, grads_f)], egrads

    def _vjp(self, fn: nn.Module, x: torch.Tensor, dout: torch.Tensor, params, replay: _Replay, i: int,
             which: int, ctx: dict, extras: tuple[str, ...] = (), dx_seed: torch.Tensor | None = None,
             extra_seeds: list | None = None):
        """Recompute fn(x) under the forward's seed and autocast; return (output, dL/dx, [dL/dparam], extra grads).

        A function made of `pieces` (a whole layer = attention then FFN) is recomputed in stages, so that little of it
        has a graph at a time:
        - a trailing token-wise piece (the FFN) whose chunking is on runs one token chunk at a time, each chunk's
          graph freed by its own backward before the next is built;
        - with `self.piecewise` (recompute_unit="sublayer") every other piece is a stage of its own, recomputed from
          its input after a no-graph pass (like checkpointing inside the layer: one more forward of those pieces);
          otherwise they form one stage whose graph stays alive while the chunked FFN runs (one attention less).
        Each stage starts from the RNG state it saw in the forward, so dropout masks are the same bits.

        `dx_seed` is the gradient that reaches x through the coupling's bypass. It enters the same autograd call
        (through a view of x created last, so it is accumulated first, as plain autograd does), which makes the
        sum at x, and with it every gradient below, bit-identical to the vanilla backward's. `extra_seeds`, the
        gradients of the extra ctx tensors (an encoder's output) from the layers above, enter the same way, so their
        sum over the layers is accumulated in plain autograd's order too; the returned extra grads include them.
        """
        pieces = list(getattr(fn, "pieces", [fn]))
        chunk_tokens = getattr(fn, "chunk_tokens", 0)
        slices = piece_chunks(pieces[-1], x, chunk_tokens)
        head = pieces[:-1] if slices is not None else pieces
        stages: list[list[nn.Module]] = [[p] for p in head] if self.piecewise else ([head] if head else [])
        if slices is not None:
            stages.append(pieces[-1:])
        # context tensors that need a gradient (an encoder's output) become leaves of this recompute
        ctx = {k: (v.detach().requires_grad_(True) if k in extras else v) for k, v in ctx.items()}
        leaves = [ctx[k] for k in extras]
        grads: list[torch.Tensor | None] = [None] * len(params)
        running = list(extra_seeds) if extra_seeds is not None else [None] * len(leaves)

        with replay.run(i, which, self.replay_autocast):
            xs, rng, live = [x], [], []  # stage inputs, RNG states at stage starts, graphs kept (layer unit)
            for stage in stages[:-1]:
                rng.append(_rng_state(x.device))
                if self.piecewise:
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
            out = None
            for k in reversed(range(len(stages))):
                seed = dx_seed if k == 0 else None
                if k == len(stages) - 1 and slices is not None:
                    _set_rng_state(x.device, rng[k])
                    out, dout, got = self._chunked_vjp(stages[k][0], xs[k], dout, ctx, params, slices, seed)
                    grads = [_add(a, b) for a, b in zip(grads, got)]
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
                grads = [_add(a, b) for a, b in zip(grads, got[1 : 1 + len(params)])]
                running = [r if g is None else g for g, r in zip(got[1 + len(params) :], running)]
                del y, got, xin
        return out, dout, grads, running

    @staticmethod
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
            grads = [_add(a, b) for a, b in zip(grads, got)]
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


def _add(a, b):
    if a is None:
        return b
    return a if b is None else a + b


class _Stash:
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


class _RevFunction(torch.autograd.Function):
    """Forward runs the stack without a graph and keeps only the top state and the exact-mode buffers."""

    @staticmethod
    def forward(ctx, stack: ReversibleStack, replay: _Replay, static: dict, extras: list[str], merge, n_merge: int,
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
        ctx.stash = _Stash([state[0], state[1], *buffers, *[t for k in ctx.checkpoint_keys for t in checkpoints[k]]])
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
                pgrads[index[id(p)]] = _add(pgrads[index[id(p)]], g)
        if stack.trace is not None:
            for st in reversed(rebuilt):
                stack._record("rebuilt", st, ar)
        ar.check()
        stack.check_reconstruction(*state, ar)
        dh0 = dstate[0] + dstate[1]  # both streams start as h0
        return None, None, None, None, None, None, dh0.to(ctx.in_dtype), *egrads, *mgrads, *pgrads
