"""MEFT1/2/3 wiring (docs/method.md §2): which pieces become F and G, the stream swap, and the merge at the top.

Generic over families: each layer list of the model (BERT's encoder; BART's encoder, then decoder; a decoder's
layers) gets its own reversible stack, installed in the model's own layer loop (models/base.py).
"""

from __future__ import annotations

import torch
from torch import nn

from mefts_core.engine.adapters import adapter_for
from mefts_core.engine.attention import use_chunked_attention
from mefts_core.engine.coupling import as_fraction
from mefts_core.engine.models.base import AdapterCall, Chain, install
from mefts_core.engine.options import MeftOptions
from mefts_core.engine.reversible import RevBlock, ReversibleStack

# Per variant: does the state swap between layers, and which stream of the final state tracks the PLM's h_N.
#   MEFT1: state (h_{n-1}-ish, h_n)  MEFT2: (h_n, h_{n-1}-ish)  MEFT3: (attention sub-layer output, h_n)
SWAP = {"meft1": True, "meft2": True, "meft3": False}
TRACKING = {"meft1": 1, "meft2": 0, "meft3": 1}


class StreamMerge(nn.Module):
    """Merge the two final streams into one hidden state.

    gated:   h = track + gate ⊙ (other − track), gate = 0 at init: starts exactly at the PLM-tracking stream.
    average: h = (s1 + s2) / 2, as in the reference code (costs starting-point fidelity, docs/method.md §4).
    """

    def __init__(self, mode: str, tracking: int, hidden_size: int) -> None:
        super().__init__()
        self.mode, self.tracking = mode, tracking
        self.gate = nn.Parameter(torch.zeros(hidden_size)) if mode == "gated" else None

    def forward(self, s1: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:  # (B, T, d) x2 -> (B, T, d)
        if self.gate is None:
            return (s1 + s2) / 2
        track, other = (s1, s2) if self.tracking == 0 else (s2, s1)
        return track + self.gate * (other - track)


def apply_meft(base: nn.Module, family, opts: MeftOptions) -> list[nn.Module]:
    """Rewire every layer list of `base` for the variant; return the modules whose parameters train."""
    trainable: list[nn.Module] = []

    def new_adapter() -> nn.Module:
        a = adapter_for(base, opts.bottleneck, opts.adapter_init_std)
        trainable.append(a)
        return a

    like = next(base.parameters())
    chunk = opts.chunk_tokens
    if chunk:
        use_chunked_attention(base, chunk)
    for layers, keys in family.groups(base):
        n_rev = len(layers) if opts.reversible_layers is None else min(opts.reversible_layers, len(layers))
        blocks, upper = [], []
        for i, layer in enumerate(layers):
            attn_adapter = new_adapter() if opts.variant == "meft3" and i < n_rev else None
            attn, ffn = family.pieces(layer, attn_adapter=attn_adapter, ffn_adapter=new_adapter())
            if i >= n_rev:  # plain layers above the reversible ones keep their FFN adapter (vanilla autograd)
                upper.append(Chain([*attn, ffn], chunk))
            elif opts.variant == "meft3":
                blocks.append(RevBlock(Chain(attn, chunk), Chain([ffn], chunk)))
            else:
                whole, rev = Chain([*attn, ffn], chunk), AdapterCall(new_adapter())
                blocks.append(RevBlock(whole, rev) if opts.variant == "meft1" else RevBlock(rev, whole))
        stack = merge = None
        if blocks:
            # which of F, G is a pre-LN residual block (x + branch(x)) rather than an adapter
            f_res = family.pre_ln and opts.variant in ("meft1", "meft3")
            g_res = family.pre_ln and opts.variant in ("meft2", "meft3")
            stack = ReversibleStack(
                blocks, lam=as_fraction(opts.lam), beta=as_fraction(opts.beta), swap=SWAP[opts.variant],
                exact=opts.exact, checkpoint_every=opts.checkpoint_every, seed=opts.seed,
                error_budget=opts.error_budget, f_residual=f_res, g_residual=g_res,
                piecewise=opts.recompute_unit == "sublayer",
            )
            merge = StreamMerge(opts.merge, TRACKING[opts.variant], base.config.hidden_size).to(like.device,
                                                                                                 like.dtype)
            trainable.append(merge)
        install(layers, n_rev, stack, merge, upper, keys)
    return trainable
