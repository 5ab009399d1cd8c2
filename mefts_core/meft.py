"""MEFT1/2/3 wiring (meft-spec.md §2): which pieces become F and G, the stream swap, and the merge at the top."""

from __future__ import annotations

import torch
from torch import nn

from mefts_core.adapters import adapter_for
from mefts_core.config import MeftOptions
from mefts_core.coupling import as_fraction
from mefts_core.reversible import RevBlock, ReversibleStack

# Per variant: does the state swap between layers, and which stream of the final state tracks the PLM's h_N.
#   MEFT1: state (h_{n-1}-ish, h_n)  MEFT2: (h_n, h_{n-1}-ish)  MEFT3: (attention sub-layer output, h_n)
SWAP = {"meft1": True, "meft2": True, "meft3": False}
TRACKING = {"meft1": 1, "meft2": 0, "meft3": 1}


class AdapterCall(nn.Module):
    """A standalone adapter as F or G (MEFT1's G, MEFT2's F); ignores the layer context (masks)."""

    def __init__(self, adapter: nn.Module) -> None:
        super().__init__()
        self.adapter = adapter

    def forward(self, x: torch.Tensor, **ctx) -> torch.Tensor:
        return self.adapter(x)


class StreamMerge(nn.Module):
    """Merge the two final streams into one hidden state.

    gated:   h = track + gate ⊙ (other − track), gate = 0 at init: starts exactly at the PLM-tracking stream.
    average: h = (s1 + s2) / 2, as in the reference code (costs starting-point fidelity, meft-spec.md §2.5).
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
    """Rewire `base` (a BertModel-like) for the variant; return the modules whose parameters train."""
    cfg = base.config
    layers = list(family.layers(base))
    n_rev = len(layers) if opts.reversible_layers is None else min(opts.reversible_layers, len(layers))

    def new_adapter():
        return adapter_for(base, opts.bottleneck, opts.adapter_init_std)

    trainable: list[nn.Module] = []
    blocks = []
    for i, layer in enumerate(layers):
        ffn_adapter = new_adapter()  # in parallel to the FFN, for every variant (and for the plain upper layers)
        family.add_ffn_adapter(layer, ffn_adapter, "parallel")
        trainable.append(ffn_adapter)
        if i >= n_rev:
            continue
        if opts.variant == "meft3":
            attn_adapter = new_adapter()  # in series after the attention output, with a skip
            family.add_attn_adapter(layer, attn_adapter, "series")
            trainable.append(attn_adapter)
            f, g = family.attn_call(layer), family.ffn_call(layer)
        else:
            rev_adapter = new_adapter()
            trainable.append(rev_adapter)
            layer_fn, adapter_fn = family.layer_call(layer), AdapterCall(rev_adapter)
            f, g = (layer_fn, adapter_fn) if opts.variant == "meft1" else (adapter_fn, layer_fn)
        blocks.append(RevBlock(f, g))

    stack = merge = None
    if blocks:
        stack = ReversibleStack(
            blocks, lam=as_fraction(opts.lam), beta=as_fraction(opts.beta), swap=SWAP[opts.variant],
            exact=opts.exact, checkpoint_every=opts.checkpoint_every, seed=opts.seed, error_budget=opts.error_budget,
        )
        like = next(base.parameters())
        merge = StreamMerge(opts.merge, TRACKING[opts.variant], cfg.hidden_size).to(like.device, like.dtype)
        trainable.append(merge)
    family.install(base, stack, merge, layers[n_rev:])
    return trainable
