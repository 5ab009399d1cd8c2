"""Full fine-tuning and BitFit: no new modules, only a choice of what trains."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from mefts_core.methods.peers import PeerOptions
from mefts_core.methods.registry import LayerTraining, MethodSpec


@dataclass
class FullOptions(PeerOptions):
    """Full fine-tuning: every parameter trains."""


@dataclass
class BitFitOptions(PeerOptions):
    """BitFit: only bias terms (and the head) train."""


def apply_full(model: nn.Module, family, opts: FullOptions) -> list[nn.Parameter]:
    return list(model.parameters())


def apply_bitfit(model: nn.Module, family, opts: BitFitOptions) -> list[nn.Parameter]:
    return [p for n, p in model.base_model.named_parameters() if n.endswith("bias")]


FULL = MethodSpec(
    "full", FullOptions, apply_full, description="every parameter trains",
    estimate=lambda o: LayerTraining(weights=frozenset("qkvoif"), biases=True, embeddings_train=True,
                                     embeddings_need_grad=True, pooler_trains=True))
BITFIT = MethodSpec(
    "bitfit", BitFitOptions, apply_bitfit, description="only the bias terms (and the head) train",
    estimate=lambda o: LayerTraining(biases=True, embeddings_need_grad=True))
