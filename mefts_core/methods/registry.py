"""The method registry: a method is a name, a typed options class, an `apply`, an estimate spec and a label.

Register one with `register_method(MethodSpec(...))` (the built-ins do so in their own modules, as peft's
`register_peft_method` does); `method_options`, `apply_method`, the estimator, the catalog served to the dashboard and
every label then find it here. Nothing else lists methods.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from mefts_core.errors import ConfigError, register


@dataclass(frozen=True)
class LayerTraining:
    """What trains in one transformer layer, for the analytic memory estimate (`mefts_core.measure.estimate`).

    Linears are named q k v o i f (query, key, value, attention output, FFN in, FFN out).
    """

    weights: frozenset = frozenset()  # linears whose weight trains
    biases: bool = False  # every bias (and LayerNorm) trains (full FT, BitFit)
    lora: tuple = ()  # ((linear, rank, dropout), ...)
    attn_adapter: int = 0  # bottleneck of a series adapter after the attention output (Houlsby, MEFT3)
    ffn_adapter: int = 0  # bottleneck of the FFN adapter
    ffn_mode: str = "parallel"  # parallel (MEFT) or series (Pfeiffer/Houlsby)
    embeddings_train: bool = False  # the embedding weights train (full FT): their input side saves for backward
    embeddings_need_grad: bool = False  # the embeddings' output needs a gradient even with frozen layers above
    pooler_trains: bool = False
    reversible: bool = False  # the layers run in a reversible stack (MEFT)
    ia3: frozenset = frozenset()  # linears rescaled by a trained vector: k, v at their output, f at its input ((IA)³)
    prefix: int = 0  # trained key/value positions before every layer's own (prefix-tuning's P)
    prefix_mlp: int = 0  # hidden width of the prefix's reparametrisation MLP, recomputed in every layer; 0: none
    side: int = 0  # reduction factor r of a ladder side network of width d/r on a frozen backbone (LST); 0: none


Apply = Callable[[nn.Module, Any, Any], list[nn.Parameter]]  # (model, family, options) -> trainable parameters


@dataclass(frozen=True)
class MethodSpec:
    """One fine-tuning method.

    - `options`: a dataclass validated in `__post_init__` (ConfigError naming the field); a field named `variant`
      is set to the method name (MEFT1/2/3 share one class).
    - `apply(model, family, options)`: prepares the model in place, returns the parameters that train (the task head
      is added by `apply_method`).
    - `estimate(options)`: what trains per layer (`LayerTraining`), or None when the estimator cannot model it.
    - `label(method, options)`: a short name for tables; default `mefts_core.methods.labels.default_label`.
    """

    name: str
    options: type
    apply: Apply
    estimate: Callable[[Any], LayerTraining] | None = None
    label: Callable[[str, Any], str] | None = None
    description: str = ""


_REGISTRY: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec, *, replace: bool = False) -> MethodSpec:
    """Add a method (ValueError when the name is taken, unless `replace`)."""
    if not dataclasses.is_dataclass(spec.options):
        raise TypeError(f"{spec.name}: options must be a dataclass, not {spec.options!r}")
    return register(_REGISTRY, spec.name, spec, replace=replace, what="method")


def unregister_method(name: str) -> None:
    _REGISTRY.pop(name, None)


class _Names(Sequence[str]):
    """A live, read-only view of the registered method names (a tuple-like `METHODS`)."""

    def __getitem__(self, i):  # type: ignore[override]
        return tuple(_REGISTRY)[i]

    def __len__(self) -> int:
        return len(_REGISTRY)

    def __iter__(self) -> Iterator[str]:
        return iter(tuple(_REGISTRY))

    def __contains__(self, name: object) -> bool:
        return name in _REGISTRY

    def __repr__(self) -> str:
        return repr(tuple(_REGISTRY))


METHODS: Sequence[str] = _Names()


def method_spec(method: str) -> MethodSpec:
    """The registered method (ConfigError on field "method" otherwise)."""
    if not isinstance(method, str) or method not in _REGISTRY:
        raise ConfigError("method", method, f"unknown method; valid: {', '.join(_REGISTRY)}")
    return _REGISTRY[method]


def option_fields(cls: type) -> list[dataclasses.Field]:
    """The user-settable fields of an options class (all but `variant`)."""
    return [f for f in dataclasses.fields(cls) if f.name != "variant"]


def method_options(method: str, **options: Any) -> Any:
    """Validate `options` for `method` and return its typed options dataclass.

    Raises ConfigError (a ValueError) naming the bad field and value: an unknown method (field "method"), an option
    that does not belong to the method, or a bad value.
    """
    cls = method_spec(method).options
    names = [f.name for f in option_fields(cls)]
    foreign = [k for k in options if k not in names]
    if foreign:
        raise ConfigError(foreign[0], options[foreign[0]],
                          f"option does not belong to method {method!r}; valid options: {', '.join(names)}")
    variant = {"variant": method} if any(f.name == "variant" for f in dataclasses.fields(cls)) else {}
    try:
        return cls(**variant, **options)
    except TypeError as e:  # a value of the wrong type reaching a comparison
        raise ConfigError((), options, f"method {method!r}: bad option value ({e})") from e


def options_dict(opts: Any) -> dict[str, Any]:
    """Typed options -> the plain dict stored with a run (every user field, `variant` left out)."""
    return {f.name: getattr(opts, f.name) for f in option_fields(type(opts))}


def method_catalog() -> dict[str, list[dict[str, Any]]]:
    """Every method with its options (name, default, type, help), for /api/catalog and the form."""
    out: dict[str, list[dict[str, Any]]] = {}
    for name, spec in _REGISTRY.items():
        defaults = method_options(name)
        out[name] = [{"name": f.name, "default": getattr(defaults, f.name), "type": str(f.type),
                      "help": f.metadata.get("help", "")} for f in option_fields(spec.options)]
    return out
