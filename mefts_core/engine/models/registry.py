"""The family registry: what mefts knows about one transformer architecture, in one class.

A family says how to walk a Hugging Face model of its `model_types` (`groups`: the layer lists; `pieces`: one layer
as attention pieces and a token-wise FFN piece, with adapters plugged in), which linears LoRA wraps by default,
whether it is a decoder (multiple choice is then scored by likelihood), how to build a random-weight config of a
given shape, and, where the analytic estimator models it, the shape it reads from a config. Subclass `Family` and
call `register_family(cls)`; `family_of(model)` and `mefts_core.backbones` find it.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from mefts_core.errors import ConfigError


class Family:
    """Base of a family; the attributes below are what a subclass sets."""

    name: str = ""  # the family's name in the backbone registry (bert, roberta, ...)
    model_types: tuple[str, ...] = ()  # Hugging Face config.model_type values it handles
    decoder: bool = False  # decoder-only LM
    pre_ln: bool = False  # pre-LN layers (x + f(LN x)) rather than post-LN (LN(x + f(x)))
    lora_targets: list[str] = []  # default LoRA target module names
    hf_ffn_chunking: bool = False  # Hugging Face's chunk_size_feed_forward applies
    tokenizer: str = "bpe"  # the offline tokenizer random-weight backbones use: "wordpiece" (BERT's) or "bpe"

    @staticmethod
    def groups(base: nn.Module) -> list[tuple[nn.ModuleList, tuple[str, ...]]]:
        """Layer lists (bottom first) and the context keys their layers are called with."""
        raise NotImplementedError

    @staticmethod
    def pieces(layer: nn.Module, *, attn_adapter=None, ffn_adapter=None, ffn_mode: str = "parallel"):
        """(attention-side pieces, FFN piece) of one layer; adapters plugged in where given."""
        raise NotImplementedError

    @staticmethod
    def random_config(shape: dict[str, int], tok: Any, kw: dict[str, Any]) -> Any:
        """A config of this family: shape has hidden_size, num_hidden_layers, num_attention_heads, intermediate_size;
        special token ids come from `tok`; `kw` are head arguments (num_labels)."""
        raise NotImplementedError

    @staticmethod
    def estimate_shape(config: Any) -> dict[str, Any] | None:
        """For the analytic estimator: hidden, ffn, heads, layers, dropouts, positions, vocab; None: not modelled."""
        return None


_FAMILIES: dict[str, type[Family]] = {}


def register_family(cls: type[Family], *, replace: bool = False) -> type[Family]:
    """Add a family (ValueError when its name or a model type is taken, unless `replace`)."""
    if not cls.name or not cls.model_types:
        raise ValueError(f"{cls.__name__}: a family needs a name and model_types")
    taken = {t for name, f in _FAMILIES.items() if name != cls.name for t in f.model_types}
    if not replace and (cls.name in _FAMILIES or taken & set(cls.model_types)):
        raise ValueError(f"family {cls.name!r} (model types {cls.model_types}) is already registered")
    _FAMILIES[cls.name] = cls
    return cls


def unregister_family(name: str) -> None:
    _FAMILIES.pop(name, None)


def family_named(name: str) -> type[Family]:
    if name not in _FAMILIES:
        raise ConfigError("family", name, f"unknown family; registered: {', '.join(_FAMILIES)}")
    return _FAMILIES[name]


def family_for_type(model_type: str | None) -> type[Family] | None:
    """The family that handles a Hugging Face model_type, or None."""
    return next((f for f in _FAMILIES.values() if model_type in f.model_types), None)


def family_of(model: nn.Module) -> type[Family]:
    """The family of a Hugging Face model (ConfigError naming its model_type when none handles it)."""
    model_type = getattr(model.config, "model_type", None)
    fam = family_for_type(model_type)
    if fam is None:
        supported = sorted(t for f in _FAMILIES.values() for t in f.model_types)
        raise ConfigError("model_type", model_type, f"not supported by mefts; supported: {', '.join(supported)}")
    return fam
