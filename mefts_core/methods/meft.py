"""MEFT1/2/3: the reversible engine (`mefts_core.engine`) as three registered methods sharing `MeftOptions`."""

from __future__ import annotations

from torch import nn

from mefts_core.engine.meft import apply_meft
from mefts_core.engine.options import MEFT_METHODS, MeftOptions
from mefts_core.methods.registry import LayerTraining, MethodSpec


def apply(model: nn.Module, family, opts: MeftOptions) -> list[nn.Parameter]:
    return [p for m in apply_meft(model.base_model, family, opts) for p in m.parameters()]


def estimate(opts: MeftOptions) -> LayerTraining:
    # every layer has a parallel FFN adapter; MEFT3 also a series attention adapter
    return LayerTraining(ffn_adapter=opts.bottleneck, attn_adapter=opts.bottleneck if opts.variant == "meft3" else 0,
                         reversible=True)


_ABOUT = {"meft1": "reversible, λ=0.1, β=1", "meft2": "reversible, λ=1, β=0.1",
          "meft3": "reversible, λ=β=0.1, adapters beside attention and FFN"}
MEFTS = tuple(MethodSpec(name, MeftOptions, apply, estimate, description=_ABOUT[name]) for name in MEFT_METHODS)
