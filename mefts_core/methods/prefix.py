"""Prefix-tuning (Li & Liang 2021) with peft's PrefixEncoder: learned keys and values before every layer's own.

peft's PeftModel feeds the prefix as `past_key_values`, which transformers 5 BERT/RoBERTa encoders no longer take
(`cache` is used by decoders only). So the prefix enters where the keys meet the queries: an attention function
registered with transformers' attention interface ("mefts_prefix") prepends layer i's P virtual keys and values,
and widens the mask so every query sees them. The parameters and their layout are peft's
(`PrefixEncoder`, (B, P, layers·2·d) viewed as layers·2 tensors (B, heads, P, head_dim)); the model keeps its class.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from mefts_core.errors import ConfigError, is_int, require
from mefts_core.methods.peers import PeerOptions
from mefts_core.methods.registry import LayerTraining, MethodSpec

NAME = "mefts_prefix"


@dataclass
class PrefixOptions(PeerOptions):
    """Prefix-tuning: P trained virtual keys and values in every attention layer."""

    num_virtual_tokens: int = field(default=20, metadata={"help": "prefix length P per layer"})
    prefix_projection: bool = field(default=False, metadata={
        "help": "reparameterise the prefix through a 2-layer MLP (the paper's stabiliser; peft's prefix_projection)"})
    encoder_hidden_size: int = field(default=512, metadata={"help": "hidden width of that MLP"})

    def __post_init__(self) -> None:
        super().__post_init__()
        require(is_int(self.num_virtual_tokens) and self.num_virtual_tokens >= 1, "num_virtual_tokens",
                self.num_virtual_tokens, "must be an integer >= 1")
        require(isinstance(self.prefix_projection, bool), "prefix_projection", self.prefix_projection,
                "must be true or false")
        require(is_int(self.encoder_hidden_size) and self.encoder_hidden_size >= 1, "encoder_hidden_size",
                self.encoder_hidden_size, "must be an integer >= 1")


class Prefix(nn.Module):
    """peft's PrefixEncoder over P token ids; `kv(i, batch)` is layer i's (key, value), each (B, heads, P, e)."""

    def __init__(self, config, opts: PrefixOptions, n_layers: int) -> None:
        super().__init__()
        from peft import PrefixTuningConfig
        from peft.tuners.prefix_tuning.model import PrefixEncoder

        self.heads = config.num_attention_heads
        self.head_dim = config.hidden_size // self.heads
        cfg = PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=opts.num_virtual_tokens,
                                 token_dim=config.hidden_size, num_layers=n_layers,
                                 num_attention_heads=self.heads, prefix_projection=opts.prefix_projection,
                                 encoder_hidden_size=opts.encoder_hidden_size)
        self.encoder = PrefixEncoder(cfg)
        self.register_buffer("tokens", torch.arange(opts.num_virtual_tokens), persistent=False)

    def kv(self, layer: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.tokens.numel()
        flat = self.encoder(self.tokens)  # (P, layers·2·d); with the MLP, recomputed per layer (P rows: cheap)
        kv = flat.view(p, -1, self.heads, self.head_dim).permute(1, 2, 0, 3)  # (layers·2, heads, P, e), peft's order
        k, v = kv[2 * layer], kv[2 * layer + 1]  # (heads, P, e)
        return k.unsqueeze(0).expand(batch, -1, -1, -1), v.unsqueeze(0).expand(batch, -1, -1, -1)


def prefix_attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             attention_mask: torch.Tensor | None, **kwargs) -> tuple[torch.Tensor, None]:
    """SDPA over [prefix; keys]: query (B, h, T, e), key/value (B, h, S, e) -> ((B, T, h, e), None)."""
    prefix = getattr(module, "mefts_prefix", None)
    if prefix is not None:
        pk, pv = prefix[0].kv(prefix[1], key.shape[0])  # (B, h, P, e)
        key, value = torch.cat([pk.to(key.dtype), key], dim=2), torch.cat([pv.to(value.dtype), value], dim=2)
        if attention_mask is not None:  # (B or 1, 1, T or 1, S): every query may attend to the prefix
            seen = attention_mask.new_ones(()) if attention_mask.dtype == torch.bool else attention_mask.new_zeros(())
            attention_mask = torch.cat([seen.expand(*attention_mask.shape[:-1], pk.shape[2]), attention_mask], -1)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


AttentionInterface.register(NAME, prefix_attention_forward)
AttentionMaskInterface.register(NAME, sdpa_mask)


def _self_attentions(family, base: nn.Module) -> list[nn.Module]:
    """Per layer, bottom first, the module that calls the attention interface (BERT/RoBERTa: attention.self)."""
    found = []
    for layers, _ in family.groups(base):
        for layer in layers:
            hits = [m for m in layer.modules() if hasattr(m, "attention_head_size") and hasattr(m, "key")]
            if len(hits) != 1:
                raise ConfigError("method", "prefix", f"no single self-attention per layer in model_type="
                                                      f"{base.config.model_type!r} (BERT/RoBERTa-style encoders only)")
            found.append(hits[0])
    return found


def apply_prefix(model: nn.Module, family, opts: PrefixOptions) -> list[nn.Parameter]:
    base = model.base_model
    if family.decoder:
        raise ConfigError("method", "prefix", f"encoder families only, not model_type={base.config.model_type!r}")
    attentions = _self_attentions(family, base)
    like = next(base.parameters())
    base.prefix = Prefix(base.config, opts, len(attentions)).to(like.device, like.dtype)
    for i, attn in enumerate(attentions):
        # a plain tuple: the shared Prefix must not become a submodule of every layer (one set of parameters)
        attn.mefts_prefix = (base.prefix, i)
    base.config._attn_implementation = NAME
    return list(base.prefix.parameters())


def estimate_prefix(opts: PrefixOptions) -> LayerTraining:
    return LayerTraining(prefix=opts.num_virtual_tokens,
                         prefix_mlp=opts.encoder_hidden_size if opts.prefix_projection else 0)


PREFIX = MethodSpec("prefix", PrefixOptions, apply_prefix, estimate_prefix,
                    description="prefix-tuning: trained keys and values before every layer's (peft's PrefixEncoder)")
