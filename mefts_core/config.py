"""Typed, validated options for every fine-tuning method.

`method_options(method, **options)` is the one boundary where user input becomes a typed config: unknown methods,
options that do not belong to the method, and bad values all raise `ValueError` naming the field and the value.
The service and the CLI call it before anything is stored or run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

METHODS = ("full", "lora", "adapter", "bitfit", "meft1", "meft2", "meft3")
MEFT_METHODS = ("meft1", "meft2", "meft3")


def _check(cond: bool, name: str, value: Any, why: str) -> None:
    if not cond:
        raise ValueError(f"{name}={value!r}: {why}")


@dataclass
class BaselineOptions:
    """Memory options every non-reversible method takes (the peers MEFT is measured against)."""

    gradient_checkpointing: bool = field(default=False, metadata={"help": "recompute each layer in backward"})
    offload_activations: bool = field(
        default=False,
        metadata={"help": "keep what autograd saves in CPU memory until backward (torch.autograd.graph.save_on_cpu); "
                          "a GPU-memory saving, a no-op on CPU"},
    )
    ffn_chunk: int = field(
        default=0,
        metadata={"help": "BERT/RoBERTa: run the FFN in chunks of this many tokens (Hugging Face's "
                          "chunk_size_feed_forward); 0: off"},
    )

    def __post_init__(self) -> None:
        _check(isinstance(self.ffn_chunk, int) and not isinstance(self.ffn_chunk, bool) and self.ffn_chunk >= 0,
               "ffn_chunk", self.ffn_chunk, "must be an integer >= 0 (0: off)")


@dataclass
class FullOptions(BaselineOptions):
    """Full fine-tuning: every parameter trains."""


@dataclass
class BitFitOptions(BaselineOptions):
    """BitFit: only bias terms (and the head) train."""


@dataclass
class LoraOptions(BaselineOptions):
    """LoRA from the peft library."""

    r: int = field(default=8, metadata={"help": "rank of the update"})
    alpha: float = field(default=16.0, metadata={"help": "scaling numerator (scale = alpha / r)"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the LoRA input"})
    target_modules: list[str] | None = field(
        default=None, metadata={"help": "module names to wrap; default: the attention query and value"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(isinstance(self.r, int) and self.r >= 1, "r", self.r, "must be an integer >= 1")
        _check(self.alpha > 0, "alpha", self.alpha, "must be > 0")
        _check(0.0 <= self.dropout < 1.0, "dropout", self.dropout, "must be in [0, 1)")
        if self.target_modules is not None:
            _check(
                isinstance(self.target_modules, list) and len(self.target_modules) > 0,
                "target_modules",
                self.target_modules,
                "must be a non-empty list of module names",
            )


ADAPTER_PLACEMENTS = ("pfeiffer", "houlsby", "parallel")


@dataclass
class AdapterOptions(BaselineOptions):
    """Bottleneck adapters (Houlsby: after attention and FFN; Pfeiffer: after the FFN; parallel: beside the FFN)."""

    bottleneck: int = field(default=64, metadata={"help": "adapter hidden width r"})
    placement: str = field(default="pfeiffer", metadata={"help": "one of " + ", ".join(ADAPTER_PLACEMENTS)})
    adapter_init_std: float = field(default=0.02, metadata={"help": "std of the N(0, std^2) adapter weight init"})

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(isinstance(self.bottleneck, int) and self.bottleneck >= 1, "bottleneck", self.bottleneck, "must be >= 1")
        _check(self.placement in ADAPTER_PLACEMENTS, "placement", self.placement, f"must be one of {ADAPTER_PLACEMENTS}")
        _check(self.adapter_init_std >= 0, "adapter_init_std", self.adapter_init_std, "must be >= 0")


MERGES = ("gated", "average")
RECOMPUTE_UNITS = ("sublayer", "layer")
# The paper's per-variant defaults (meft-spec.md §2.1-2.3).
MEFT_DEFAULTS = {"meft1": (0.1, 1.0), "meft2": (1.0, 0.1), "meft3": (0.1, 0.1)}


@dataclass
class MeftOptions:
    """MEFT1/2/3: reversible coupling of the frozen PLM with bottleneck adapters.

    `lam` / `beta` of None take the paper's defaults for the variant. In exact mode they must be rationals with a
    small denominator (0.1 = 1/10, 0.5, 1, 0.25 ...): the bits a scaling drops are kept in a small buffer.
    """

    variant: str = field(default="meft1", metadata={"help": "meft1, meft2 or meft3 (set by the method name)"})
    lam: float | None = field(default=None, metadata={"help": "scale of the stream that bypasses F (λ)"})
    beta: float | None = field(default=None, metadata={"help": "scale of the stream that bypasses G (β)"})
    bottleneck: int = field(default=8, metadata={"help": "adapter hidden width r"})
    adapter_init_std: float = field(default=0.02, metadata={"help": "std of the N(0, std^2) adapter weight init"})
    merge: str = field(
        default="gated",
        metadata={"help": "gated: learnable mix starting at the PLM-tracking stream; average: (h1+h2)/2 as in the reference code"},
    )
    reversible_layers: int | None = field(
        default=None, metadata={"help": "how many of the lowest layers are reversible (default: all)"}
    )
    recompute: str = field(
        default="exact",
        metadata={"help": "exact (bit-exact fixed-point inverse), float (the paper's arithmetic), or checkpoint_every=k"},
    )
    recompute_unit: str = field(
        default="layer",
        metadata={"help": "layer: backward recomputes each layer's attention once, its FFN token chunk by token chunk; "
                          "sublayer: one sub-block at a time (one attention forward more per layer; a lower peak "
                          "only when chunk_tokens=0)"},
    )
    chunk_tokens: int | str = field(
        default="auto",
        metadata={"help": "token chunk of the FFN and of attention's queries, in forward and in backward's recompute "
                          "(bounds the recompute's transient memory): auto (sized from the batch), 0 (off) or a "
                          "number of tokens"},
    )
    seed: int = field(default=0, metadata={"help": "seed of the dropout RNG replayed in backward"})
    error_budget: float | None = field(
        default=1e-2,
        metadata={"help": "float modes: relative reconstruction error past which backward raises (None: never)"},
    )

    def __post_init__(self) -> None:
        _check(self.variant in MEFT_METHODS, "variant", self.variant, f"must be one of {MEFT_METHODS}")
        d_lam, d_beta = MEFT_DEFAULTS[self.variant]
        self.lam = d_lam if self.lam is None else self.lam
        self.beta = d_beta if self.beta is None else self.beta
        for name in ("lam", "beta"):
            v = getattr(self, name)
            _check(isinstance(v, int | float) and 0 <= v <= 16, name, v, "must be a number in [0, 16]")
        _check(isinstance(self.bottleneck, int) and self.bottleneck >= 1, "bottleneck", self.bottleneck, "must be >= 1")
        _check(self.adapter_init_std >= 0, "adapter_init_std", self.adapter_init_std, "must be >= 0")
        _check(self.merge in MERGES, "merge", self.merge, f"must be one of {MERGES}")
        if self.reversible_layers is not None:
            _check(
                isinstance(self.reversible_layers, int) and self.reversible_layers >= 0,
                "reversible_layers",
                self.reversible_layers,
                "must be an integer >= 0",
            )
        _ = self.checkpoint_every  # validates recompute
        _check(self.recompute_unit in RECOMPUTE_UNITS, "recompute_unit", self.recompute_unit,
               f"must be one of {RECOMPUTE_UNITS}")
        _check(self.chunk_tokens == "auto" or (isinstance(self.chunk_tokens, int) and not isinstance(
            self.chunk_tokens, bool) and self.chunk_tokens >= 0), "chunk_tokens", self.chunk_tokens,
            "must be 'auto', 0 (off) or a number of tokens >= 1")
        if self.error_budget is not None:
            _check(isinstance(self.error_budget, int | float) and self.error_budget > 0, "error_budget",
                   self.error_budget, "must be > 0 or None")
        if self.recompute == "exact":
            for name in ("lam", "beta"):
                v = getattr(self, name)
                fr = Fraction(v).limit_denominator(256)
                _check(
                    v == 0 or abs(float(fr) - v) <= 1e-12 * max(1.0, abs(v)),
                    name,
                    v,
                    "exact mode needs a rational with denominator <= 256 (e.g. 0.1, 0.25, 1)",
                )

    @property
    def checkpoint_every(self) -> int:
        """k of recompute="checkpoint_every=k" (0 for the other modes)."""
        if self.recompute in ("exact", "float"):
            return 0
        prefix = "checkpoint_every="
        ok = self.recompute.startswith(prefix) and self.recompute[len(prefix) :].isdigit()
        _check(ok and int(self.recompute[len(prefix) :]) >= 1, "recompute", self.recompute,
               "must be 'exact', 'float' or 'checkpoint_every=k' with k >= 1")
        return int(self.recompute[len(prefix) :])

    @property
    def exact(self) -> bool:
        return self.recompute == "exact"


OPTION_CLASSES: dict[str, type] = {
    "full": FullOptions,
    "lora": LoraOptions,
    "adapter": AdapterOptions,
    "bitfit": BitFitOptions,
    "meft1": MeftOptions,
    "meft2": MeftOptions,
    "meft3": MeftOptions,
}


def method_options(method: str, **options: Any) -> Any:
    """Validate `options` for `method` and return its typed options dataclass.

    Raises ValueError naming the bad field and value (unknown method, foreign option, bad value).
    """
    if method not in OPTION_CLASSES:
        raise ValueError(f"method={method!r}: unknown method; valid: {', '.join(METHODS)}")
    cls = OPTION_CLASSES[method]
    names = [f.name for f in dataclasses.fields(cls) if f.name != "variant"]
    foreign = [k for k in options if k not in names]
    if foreign:
        raise ValueError(
            f"{foreign[0]}={options[foreign[0]]!r}: option does not belong to method {method!r}; "
            f"valid options: {', '.join(names)}"
        )
    try:
        return cls(variant=method, **options) if cls is MeftOptions else cls(**options)
    except TypeError as e:  # e.g. a value of the wrong type reaching a comparison
        raise ValueError(f"method {method!r}: bad option value ({e})") from e


def method_catalog() -> dict[str, list[dict[str, Any]]]:
    """Every method with its options: name, default, type and help (for /api/catalog and the form)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for method, cls in OPTION_CLASSES.items():
        defaults = method_options(method)
        out[method] = [
            {
                "name": f.name,
                "default": getattr(defaults, f.name),
                "type": str(f.type),
                "help": f.metadata.get("help", ""),
            }
            for f in dataclasses.fields(cls)
            if f.name != "variant"
        ]
    return out
