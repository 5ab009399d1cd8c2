"""What every non-reversible method can add to save memory: the peers MEFT is measured against.

`PeerOptions` (gradient checkpointing, activation offload, Hugging Face's FFN chunking) is the base of the baseline
methods' options; `apply_peer_options` switches them on once the method has prepared the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from mefts_core.engine.models.base import Chain
from mefts_core.engine.options import token_flag
from mefts_core.errors import ConfigError, is_int, require


@dataclass
class PeerOptions:
    """Memory options every non-reversible method takes."""

    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "recompute each layer in backward", "flag": token_flag("+gc", True)})
    ffn_chunk: int = field(
        default=0,
        metadata={"help": "BERT/RoBERTa: run the FFN in chunks of this many tokens (Hugging Face's "
                          "chunk_size_feed_forward); 0: off", "flag": token_flag("+ff", 128)},
    )
    offload_activations: bool = field(
        default=False,
        metadata={"help": "keep what autograd saves in CPU memory until backward (torch.autograd.graph.save_on_cpu); "
                          "a GPU-memory saving, a no-op on CPU", "flag": token_flag("+offload", True)},
    )

    def __post_init__(self) -> None:
        for name in ("gradient_checkpointing", "offload_activations"):
            require(isinstance(getattr(self, name), bool), name, getattr(self, name), "must be true or false")
        require(is_int(self.ffn_chunk) and self.ffn_chunk >= 0, "ffn_chunk", self.ffn_chunk,
                "must be an integer >= 0 (0: off)")


def check_peer_options(model: nn.Module, family: Any, opts: Any) -> None:
    """Refuse, before the model is touched, what the family cannot do."""
    if getattr(opts, "ffn_chunk", 0) and not family.hf_ffn_chunking:
        raise ConfigError("ffn_chunk", opts.ffn_chunk, "Hugging Face chunks the FFN of BERT/RoBERTa only, not of "
                                                       f"model_type={model.config.model_type!r}")


def apply_peer_options(model: nn.Module, opts: Any) -> None:
    """Gradient checkpointing, FFN chunking and activation offload, as the options ask."""
    if getattr(opts, "gradient_checkpointing", False):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if getattr(opts, "ffn_chunk", 0):
        _chunk_ffn(model, opts.ffn_chunk)
    if getattr(opts, "offload_activations", False):
        _offload_activations(model)


def _chunk_ffn(model: nn.Module, chunk: int) -> None:
    """Hugging Face's own FFN chunking (BertLayer.chunk_size_feed_forward); mefts' adapter layers chunk the same way."""
    model.config.chunk_size_feed_forward = chunk
    for m in model.modules():
        if hasattr(m, "chunk_size_feed_forward"):
            m.chunk_size_feed_forward = chunk
        if isinstance(m, Chain):
            m.chunk_tokens = chunk


def _offload_activations(model: nn.Module) -> None:
    """Every forward runs under save_on_cpu: what autograd saves waits in (pinned, on CUDA) CPU memory for backward."""
    forward = model.forward

    def offloaded(*args, **kwargs):
        pin = next(model.parameters()).device.type == "cuda"
        with torch.autograd.graph.save_on_cpu(pin_memory=pin):
            return forward(*args, **kwargs)

    model.forward = offloaded
