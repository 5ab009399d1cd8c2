"""apply_method(model, method, **options): the one entry point that prepares a Hugging Face model for a method.

Afterwards only the method's parameters and the task head train. The task head is every parameter outside the
backbone (`model.base_model`), e.g. `classifier.*`; the backbone's pooler stays frozen as in the MEFT code.
Methods live in the registry (`mefts_core.methods.registry`); the built-ins register when this package is imported.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from mefts_core.engine.models import family_of
from mefts_core.engine.options import MEFT_METHODS, MeftOptions
from mefts_core.errors import ConfigError
from mefts_core.methods.adapter import ADAPTER, AdapterOptions
from mefts_core.methods.full import BITFIT, FULL, BitFitOptions, FullOptions
from mefts_core.methods.ia3 import IA3, IA3Options
from mefts_core.methods.labels import method_label, parse_label
from mefts_core.methods.lora import LORA, LoraOptions
from mefts_core.methods.lst import LST, LstOptions
from mefts_core.methods.meft import MEFTS
from mefts_core.methods.peers import PeerOptions, apply_peer_options, check_peer_options
from mefts_core.methods.prefix import PREFIX, PrefixOptions
from mefts_core.methods.registry import (
    METHODS,
    LayerTraining,
    MethodSpec,
    method_catalog,
    method_options,
    method_spec,
    options_dict,
    register_method,
    unregister_method,
)

# The built-in methods, in the order the catalog and the dashboard show them.
for _spec in (FULL, LORA, ADAPTER, BITFIT, PREFIX, IA3, LST, *MEFTS):
    register_method(_spec)


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters outside the backbone: the task head (empty for a bare BertModel)."""
    base = model.base_model
    if base is model:
        return []
    inside = {id(p) for p in base.parameters()}
    return [p for p in model.parameters() if id(p) not in inside]


def apply_method(model: nn.Module, method: str, **options: Any) -> nn.Module:
    """Prepare `model` in place for `method` and return it.

    Methods: "full", "lora", "adapter", "bitfit", "prefix", "ia3", "lst", "meft1", "meft2", "meft3" and any
    registered one. Options are
    validated by `method_options` (ConfigError, a ValueError, naming the field and value).
    """
    return apply_options(model, method, method_options(method, **options))


def apply_options(model: nn.Module, method: str, opts: Any) -> nn.Module:
    """`apply_method` with options already validated (the typed dataclass of `method_options`)."""
    spec = method_spec(method)
    if getattr(model, "_mefts_method", None) is not None:
        raise ConfigError("method", method, f"model already prepared for {model._mefts_method!r}; load a fresh one")
    family = family_of(model)
    check_peer_options(model, family, opts)
    trainable = spec.apply(model, family, opts)
    keep = {id(p) for p in trainable} | {id(p) for p in head_parameters(model)}
    if not keep:
        raise ConfigError("method", method, f"nothing to train in this {model.config.model_type} model (e.g. BitFit "
                                            "on a model without bias terms and without a task head)")
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    apply_peer_options(model, opts)
    model._mefts_method = method
    model._mefts_options = opts
    return model


def meft_stacks(model: nn.Module) -> list[nn.Module]:
    """The reversible stacks inside a model (empty for non-MEFT methods)."""
    from mefts_core.engine.reversible import ReversibleStack

    return [m for m in model.modules() if isinstance(m, ReversibleStack)]


__all__ = [
    "MEFT_METHODS", "METHODS", "AdapterOptions", "BitFitOptions", "FullOptions", "IA3Options", "LayerTraining", "LoraOptions",
    "LstOptions", "PrefixOptions",
    "MeftOptions", "MethodSpec", "PeerOptions", "apply_method", "apply_options", "head_parameters", "meft_stacks",
    "method_catalog", "method_label", "method_options", "method_spec", "options_dict", "parse_label",
    "register_method", "unregister_method",
]
