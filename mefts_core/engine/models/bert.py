"""BERT-family pieces (BERT, RoBERTa: post-LN, identical layer structure).

Adapters plug into the output sub-blocks (dense -> dropout -> LN(. + residual)) through AdaptedOutput wrappers, so the
pieces call HF's own modules and compute the same ops as BertLayer.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import BertConfig, RobertaConfig

from mefts_core.engine.adapters import AdaptedOutput
from mefts_core.engine.models.registry import Family, register_family


class AttnCall(nn.Module):
    """Self-attention -> output dense -> dropout -> [adapter] -> LN(. + x)."""

    def __init__(self, attention: nn.Module) -> None:
        super().__init__()
        self.attention = attention

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None, **ctx) -> torch.Tensor:
        return self.attention(x, attention_mask)[0]  # (B, T, d)


class FfnCall(nn.Module):
    """Intermediate -> output dense -> dropout (+ adapter) -> LN(. + x)."""

    tokenwise = True  # each token's output depends on that token only: it may run in token chunks

    def __init__(self, intermediate: nn.Module, output: nn.Module) -> None:
        super().__init__()
        self.intermediate = intermediate
        self.output = output

    def forward(self, x: torch.Tensor, **ctx) -> torch.Tensor:
        return self.output(self.intermediate(x), x)  # (B, T, d)


class BertFamily(Family):
    """BERT (HF BertLayer); RoBERTa shares its layers."""

    name = "bert"
    model_types = ("bert",)
    pre_ln = False
    lora_targets = ["query", "value"]
    hf_ffn_chunking = True
    tokenizer = "wordpiece"

    @staticmethod
    def groups(base: nn.Module) -> list[tuple[nn.ModuleList, tuple[str, ...]]]:
        """Layer lists (bottom first) and the context keys their layers are called with."""
        return [(base.encoder.layer, ("attention_mask",))]

    @staticmethod
    def pieces(layer: nn.Module, *, attn_adapter=None, ffn_adapter=None, ffn_mode: str = "parallel"):
        """(attention-side pieces, FFN piece); adapters wrap the output sub-blocks in place."""
        if attn_adapter is not None:
            layer.attention.output = AdaptedOutput(layer.attention.output, attn_adapter, "series")
        if ffn_adapter is not None:
            layer.output = AdaptedOutput(layer.output, ffn_adapter, ffn_mode)
        return [AttnCall(layer.attention)], FfnCall(layer.intermediate, layer.output)

    @staticmethod
    def random_config(shape: dict[str, int], tok, kw: dict) -> BertConfig:
        return BertConfig(vocab_size=tok.vocab_size, **shape, **kw)

    @staticmethod
    def estimate_shape(config) -> dict:
        return {"hidden": config.hidden_size, "ffn": config.intermediate_size, "heads": config.num_attention_heads,
                "layers": config.num_hidden_layers, "p_hidden": config.hidden_dropout_prob,
                "p_attn": config.attention_probs_dropout_prob, "positions": config.max_position_embeddings,
                "vocab": config.vocab_size}


class RobertaFamily(BertFamily):
    """RoBERTa (HF RobertaLayer: BERT's layer; a BPE vocabulary and positions offset past the pad id)."""

    name = "roberta"
    model_types = ("roberta",)
    tokenizer = "bpe"

    @staticmethod
    def random_config(shape: dict[str, int], tok, kw: dict) -> RobertaConfig:
        return RobertaConfig(vocab_size=len(tok), **shape, max_position_embeddings=514, pad_token_id=tok.pad_token_id,
                             bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **kw)


register_family(BertFamily)
register_family(RobertaFamily)
