"""Bottleneck adapters: Pfeiffer (series after the FFN), Houlsby (series after attention and FFN), parallel."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from mefts_core.engine.adapters import adapter_for
from mefts_core.engine.models.base import Chain, install
from mefts_core.errors import is_int, is_number, require
from mefts_core.methods.peers import PeerOptions
from mefts_core.methods.registry import LayerTraining, MethodSpec

ADAPTER_PLACEMENTS = ("pfeiffer", "houlsby", "parallel")


@dataclass
class AdapterOptions(PeerOptions):
    """Bottleneck adapters in a plain (non-reversible) model."""

    bottleneck: int = field(default=64, metadata={"help": "adapter hidden width r"})
    placement: str = field(default="pfeiffer", metadata={"help": "one of " + ", ".join(ADAPTER_PLACEMENTS)})
    adapter_init_std: float = field(default=0.02, metadata={"help": "std of the N(0, std^2) adapter weight init"})

    def __post_init__(self) -> None:
        super().__post_init__()
        require(is_int(self.bottleneck) and self.bottleneck >= 1, "bottleneck", self.bottleneck, "must be >= 1")
        require(self.placement in ADAPTER_PLACEMENTS, "placement", self.placement,
                f"must be one of {ADAPTER_PLACEMENTS}")
        require(is_number(self.adapter_init_std) and self.adapter_init_std >= 0, "adapter_init_std",
                self.adapter_init_std, "must be >= 0")


def apply_adapters(model: nn.Module, family, opts: AdapterOptions) -> list[nn.Parameter]:
    base = model.base_model
    made: list[nn.Module] = []

    def new_adapter() -> nn.Module:
        made.append(adapter_for(base, opts.bottleneck, opts.adapter_init_std))
        return made[-1]

    for layers, keys in family.groups(base):
        chains = []
        for layer in layers:
            attn, ffn = family.pieces(
                layer,
                attn_adapter=new_adapter() if opts.placement == "houlsby" else None,
                ffn_adapter=new_adapter(),
                ffn_mode="parallel" if opts.placement == "parallel" else "series",
            )
            chains.append(Chain([*attn, ffn]))
        install(layers, 0, None, None, chains, keys)
    return [p for m in made for p in m.parameters()]


def estimate_adapters(opts: AdapterOptions) -> LayerTraining:
    return LayerTraining(attn_adapter=opts.bottleneck if opts.placement == "houlsby" else 0,
                         ffn_adapter=opts.bottleneck, ffn_mode="parallel" if opts.placement == "parallel" else "series")


ADAPTER = MethodSpec("adapter", AdapterOptions, apply_adapters, estimate_adapters,
                     description="bottleneck adapters (Pfeiffer, Houlsby or parallel)")
