"""Pre-LN decoder pieces: OPT and the Llama family (SmolLM2). Each piece returns x + branch(x), as the layer does.

Causal masks, position ids and rotary embeddings arrive as context, computed once by the model's own forward, so the
recompute in backward applies them identically. No KV cache is used in training.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from transformers import LlamaConfig, OPTConfig

from mefts_core.engine.models.registry import Family, register_family


class OptAttnPiece(nn.Module):
    """x + [series adapter](dropout(self_attn(LN x)))."""

    def __init__(self, layer: nn.Module, adapter: nn.Module | None) -> None:
        super().__init__()
        self.norm, self.attn, self.p, self.adapter = layer.self_attn_layer_norm, layer.self_attn, layer.dropout, adapter

    def forward(self, x: torch.Tensor, attention_mask=None, position_ids=None, **ctx) -> torch.Tensor:
        h = self.attn(hidden_states=self.norm(x), attention_mask=attention_mask, position_ids=position_ids)[0]
        h = F.dropout(h, p=self.p, training=self.training)
        return x + (h + self.adapter(h) if self.adapter is not None else h)  # (B, T, d)


class OptFfnPiece(nn.Module):
    """x + dropout(fc2(act(fc1(LN x)))) + adapter(LN x) (parallel) or with a series adapter on the branch."""

    tokenwise = True  # each token's output depends on that token only: it may run in token chunks

    def __init__(self, layer: nn.Module, adapter: nn.Module | None, mode: str) -> None:
        super().__init__()
        self.norm, self.fc1, self.fc2, self.act = layer.final_layer_norm, layer.fc1, layer.fc2, layer.activation_fn
        self.p, self.adapter, self.mode = layer.dropout, adapter, mode

    def forward(self, x: torch.Tensor, **ctx) -> torch.Tensor:
        n = self.norm(x)
        h = F.dropout(self.fc2(self.act(self.fc1(n))), p=self.p, training=self.training)
        if self.adapter is not None:
            h = h + self.adapter(h if self.mode == "series" else n)
        return x + h


class LlamaAttnPiece(nn.Module):
    """x + [series adapter](self_attn(RMSNorm x)) with rotary embeddings from the context."""

    def __init__(self, layer: nn.Module, adapter: nn.Module | None) -> None:
        super().__init__()
        self.norm, self.attn, self.adapter = layer.input_layernorm, layer.self_attn, adapter

    def forward(self, x: torch.Tensor, attention_mask=None, position_embeddings=None, position_ids=None,
                **ctx) -> torch.Tensor:
        h = self.attn(hidden_states=self.norm(x), attention_mask=attention_mask,
                      position_embeddings=position_embeddings, position_ids=position_ids)[0]
        return x + (h + self.adapter(h) if self.adapter is not None else h)  # (B, T, d)


class LlamaFfnPiece(nn.Module):
    """x + mlp(RMSNorm x) + adapter(RMSNorm x) (parallel, as in RevLLaMA) or a series adapter on the branch."""

    tokenwise = True  # each token's output depends on that token only: it may run in token chunks

    def __init__(self, layer: nn.Module, adapter: nn.Module | None, mode: str) -> None:
        super().__init__()
        self.norm, self.mlp, self.adapter, self.mode = layer.post_attention_layernorm, layer.mlp, adapter, mode

    def forward(self, x: torch.Tensor, **ctx) -> torch.Tensor:
        n = self.norm(x)
        h = self.mlp(n)
        if self.adapter is not None:
            h = h + self.adapter(h if self.mode == "series" else n)
        return x + h


class _PreLnDecoder(Family):
    """What the decoder-only families share: pre-LN layers, LoRA on the attention's q and v projections."""

    decoder = True
    pre_ln = True
    lora_targets = ["q_proj", "v_proj"]


class OptFamily(_PreLnDecoder):
    """OPT (pre-LN decoder)."""

    name = "opt"
    model_types = ("opt",)

    @staticmethod
    def groups(base: nn.Module) -> list[tuple[nn.ModuleList, tuple[str, ...]]]:
        if not base.config.do_layer_norm_before:
            raise ValueError("do_layer_norm_before=False (OPT-350m's post-LN layout) is not supported by mefts")
        return [(base.decoder.layers, ("attention_mask", "position_ids"))]

    @staticmethod
    def pieces(layer: nn.Module, *, attn_adapter=None, ffn_adapter=None, ffn_mode: str = "parallel"):
        return [OptAttnPiece(layer, attn_adapter)], OptFfnPiece(layer, ffn_adapter, ffn_mode)

    @staticmethod
    def random_config(shape: dict[str, int], tok, kw: dict) -> OPTConfig:
        d, L, H, ffn = (shape[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                             "intermediate_size"))
        return OPTConfig(vocab_size=len(tok), hidden_size=d, num_hidden_layers=L, num_attention_heads=H, ffn_dim=ffn,
                         word_embed_proj_dim=d, max_position_embeddings=2048, **_special_ids(tok), **kw)


class LlamaFamily(_PreLnDecoder):
    """Llama and its relatives that share its layer (SmolLM2)."""

    name = "llama"
    model_types = ("llama",)

    @staticmethod
    def groups(base: nn.Module) -> list[tuple[nn.ModuleList, tuple[str, ...]]]:
        return [(base.layers, ("attention_mask", "position_embeddings", "position_ids"))]

    @staticmethod
    def pieces(layer: nn.Module, *, attn_adapter=None, ffn_adapter=None, ffn_mode: str = "parallel"):
        return [LlamaAttnPiece(layer, attn_adapter)], LlamaFfnPiece(layer, ffn_adapter, ffn_mode)

    @staticmethod
    def random_config(shape: dict[str, int], tok, kw: dict) -> LlamaConfig:
        return LlamaConfig(vocab_size=len(tok), **shape, num_key_value_heads=max(1, shape["num_attention_heads"] // 2),
                           max_position_embeddings=2048, tie_word_embeddings=True, **_special_ids(tok), **kw)


def _special_ids(tok) -> dict[str, int]:
    return dict(pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)


register_family(OptFamily)
register_family(LlamaFamily)
