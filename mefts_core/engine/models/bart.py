"""BART pieces (encoder-decoder, post-LN). The decoder's pieces take the encoder output as a constant extra input."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from transformers import BartConfig

from mefts_core.engine.models.registry import Family, register_family


def _adapt(h: torch.Tensor, x: torch.Tensor, adapter: nn.Module | None, mode: str) -> torch.Tensor:
    """Add a series adapter (on the branch output h) or a parallel one (on the branch input x)."""
    if adapter is None:
        return h
    return h + adapter(h if mode == "series" else x)


class BartAttnPiece(nn.Module):
    """Self- or cross-attention -> dropout -> [series adapter] -> LN(x + .)."""

    def __init__(self, layer: nn.Module, cross: bool, adapter: nn.Module | None) -> None:
        super().__init__()
        self.attn = layer.encoder_attn if cross else layer.self_attn
        self.norm = layer.encoder_attn_layer_norm if cross else layer.self_attn_layer_norm
        self.p, self.cross, self.adapter = layer.dropout, cross, adapter

    def forward(self, x: torch.Tensor, attention_mask=None, encoder_hidden_states=None,
                encoder_attention_mask=None, **ctx) -> torch.Tensor:
        if self.cross:
            h = self.attn(hidden_states=x, key_value_states=encoder_hidden_states,
                          attention_mask=encoder_attention_mask)[0]
        else:
            h = self.attn(hidden_states=x, attention_mask=attention_mask)[0]
        h = F.dropout(h, p=self.p, training=self.training)
        return self.norm(x + _adapt(h, x, self.adapter, "series"))  # (B, T, d)


class BartFfnPiece(nn.Module):
    """fc1 -> act -> dropout -> fc2 -> dropout (+ adapter) -> LN(x + .)."""

    tokenwise = True  # each token's output depends on that token only: it may run in token chunks

    def __init__(self, layer: nn.Module, adapter: nn.Module | None, mode: str) -> None:
        super().__init__()
        self.fc1, self.fc2, self.act, self.norm = layer.fc1, layer.fc2, layer.activation_fn, layer.final_layer_norm
        self.p, self.p_act, self.adapter, self.mode = layer.dropout, layer.activation_dropout, adapter, mode

    def forward(self, x: torch.Tensor, **ctx) -> torch.Tensor:
        h = F.dropout(self.act(self.fc1(x)), p=self.p_act, training=self.training)  # (B, T, ffn)
        h = F.dropout(self.fc2(h), p=self.p, training=self.training)
        return self.norm(x + _adapt(h, x, self.adapter, self.mode))


class BartFamily(Family):
    """BART (encoder-decoder, post-LN): the encoder's and the decoder's layers, each a stack."""

    name = "bart"
    model_types = ("bart",)
    pre_ln = False
    lora_targets = ["q_proj", "v_proj"]

    @staticmethod
    def groups(base: nn.Module) -> list[tuple[nn.ModuleList, tuple[str, ...]]]:
        return [
            (base.encoder.layers, ("attention_mask",)),
            (base.decoder.layers, ("attention_mask", "encoder_hidden_states", "encoder_attention_mask")),
        ]

    @staticmethod
    def pieces(layer: nn.Module, *, attn_adapter=None, ffn_adapter=None, ffn_mode: str = "parallel"):
        attn = [BartAttnPiece(layer, cross=False, adapter=attn_adapter)]
        if hasattr(layer, "encoder_attn"):  # decoder layer: the adapter sits after cross-attention only
            attn[0].adapter = None
            attn.append(BartAttnPiece(layer, cross=True, adapter=attn_adapter))
        return attn, BartFfnPiece(layer, ffn_adapter, ffn_mode)

    @staticmethod
    def random_config(shape: dict[str, int], tok, kw: dict) -> BartConfig:
        d, L, H, ffn = (shape[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                             "intermediate_size"))
        return BartConfig(vocab_size=len(tok), d_model=d, encoder_layers=L, decoder_layers=L,
                          encoder_attention_heads=H, decoder_attention_heads=H, encoder_ffn_dim=ffn,
                          decoder_ffn_dim=ffn, max_position_embeddings=1024, decoder_start_token_id=tok.eos_token_id,
                          pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                          **kw)


register_family(BartFamily)
