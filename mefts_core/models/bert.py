"""BERT-family wiring (BERT, RoBERTa: post-LN, identical layer structure) into the pieces MEFT couples.

A family exposes: its layers, where adapters plug in, callables for the whole layer / attention sub-block / FFN
sub-block with the signature f(x, **ctx), and how to install a replacement encoder.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPastAndCrossAttentions

from mefts_core.adapters import AdaptedOutput, BottleneckAdapter


class LayerCall(nn.Module):
    """The whole post-LN layer as two pieces, attention sub-block then FFN sub-block (the same ops as BertLayer).

    `pieces` lets the reversible backward recompute the layer one sub-block at a time.
    """

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.pieces = nn.ModuleList([AttnCall(layer.attention), FfnCall(layer.intermediate, layer.output)])

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        for piece in self.pieces:
            x = piece(x, attention_mask=attention_mask)
        return x  # (B, T, d)


class AttnCall(nn.Module):
    """Self-attention -> output dense -> dropout -> [adapter] -> LN(. + x)."""

    def __init__(self, attention: nn.Module) -> None:
        super().__init__()
        self.attention = attention

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.attention(x, attention_mask)[0]


class FfnCall(nn.Module):
    """Intermediate -> output dense -> dropout (+ parallel adapter) -> LN(. + x). The mask is not used."""

    def __init__(self, intermediate: nn.Module, output: nn.Module) -> None:
        super().__init__()
        self.intermediate = intermediate
        self.output = output

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.output(self.intermediate(x), x)


class EncoderWithStack(nn.Module):
    """Drop-in for BertEncoder/RobertaEncoder: the reversible stack, the stream merge, then plain upper layers."""

    def __init__(self, stack: nn.Module | None, merge: nn.Module | None, upper: list[nn.Module]) -> None:
        super().__init__()
        self.stack = stack
        self.merge = merge
        self.upper = nn.ModuleList(upper)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        h = hidden_states  # (B, T, d)
        if self.stack is not None:
            h = self.merge(*self.stack(h, attention_mask=attention_mask))
        for layer in self.upper:
            h = layer(h, attention_mask)
        return BaseModelOutputWithPastAndCrossAttentions(last_hidden_state=h)


class BertFamily:
    """BERT and RoBERTa (HF BertLayer / RobertaLayer)."""

    model_types = ("bert", "roberta")
    lora_targets = ["query", "value"]

    @staticmethod
    def layers(base: nn.Module) -> nn.ModuleList:
        return base.encoder.layer

    @staticmethod
    def add_ffn_adapter(layer: nn.Module, adapter: BottleneckAdapter, mode: str) -> None:
        layer.output = AdaptedOutput(layer.output, adapter, mode)

    @staticmethod
    def add_attn_adapter(layer: nn.Module, adapter: BottleneckAdapter, mode: str) -> None:
        layer.attention.output = AdaptedOutput(layer.attention.output, adapter, mode)

    @staticmethod
    def layer_call(layer: nn.Module) -> nn.Module:
        return LayerCall(layer)

    @staticmethod
    def attn_call(layer: nn.Module) -> nn.Module:
        return AttnCall(layer.attention)

    @staticmethod
    def ffn_call(layer: nn.Module) -> nn.Module:
        return FfnCall(layer.intermediate, layer.output)

    @staticmethod
    def install(base: nn.Module, stack, merge, upper: list[nn.Module]) -> None:
        base.encoder = EncoderWithStack(stack, merge, upper)
