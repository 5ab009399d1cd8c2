"""MeftOptions: the reversible engine's typed options (validated at construction; ConfigError names field and value).

Fields may carry a `flag` in their metadata: a (render, parse) pair that writes a value as a short label token
("-float", "-nochunk") and reads it back; `mefts_core.methods.labels` builds every method label from them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from mefts_core.errors import is_int, require

MEFT_METHODS = ("meft1", "meft2", "meft3")
MERGES = ("gated", "average")
RECOMPUTE_UNITS = ("sublayer", "layer")
# The paper's per-variant defaults (λ, β).
MEFT_DEFAULTS = {"meft1": (0.1, 1.0), "meft2": (1.0, 0.1), "meft3": (0.1, 0.1)}


def _recompute_token(value: str) -> str | None:
    if value == "float":
        return "-float"
    return f"-ck{value.split('=', 1)[1]}" if value.startswith("checkpoint_every=") else None


def _recompute_value(token: str) -> str | None:
    if token in ("-exact", "-float"):
        return token[1:]
    m = re.fullmatch(r"-ck(\d+)", token)
    return f"checkpoint_every={int(m.group(1))}" if m and int(m.group(1)) >= 1 else None


@dataclass(frozen=True)
class Flag:
    """How an option shows in a method label: `render(value)` -> token or None, `parse(token)` -> value or None."""

    render: Callable[[Any], str | None]
    parse: Callable[[str], Any]
    tokens: tuple[str, ...]  # what the tokens look like, for error messages


def token_flag(token: str, value: object) -> Flag:
    """A label flag for one fixed value: `token` is written when the option equals `value`."""
    return Flag(lambda v: token if v == value else None, lambda t: value if t == token else None, (token,))


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
        metadata={"help": "gated: learnable mix starting at the PLM-tracking stream; average: (h1+h2)/2 as in the "
                          "reference code"},
    )
    reversible_layers: int | None = field(
        default=None, metadata={"help": "how many of the lowest layers are reversible (default: all)"}
    )
    recompute: str = field(
        default="exact",
        metadata={"help": "exact (bit-exact fixed-point inverse), float (the paper's arithmetic), or "
                          "checkpoint_every=k", "flag": Flag(_recompute_token, _recompute_value, ("-exact", "-float", "-ckK"))},
    )
    recompute_unit: str = field(
        default="layer",
        metadata={"help": "layer: backward recomputes each layer's attention once, its FFN token chunk by token "
                          "chunk; sublayer: one sub-block at a time (one attention forward more per layer; a lower "
                          "peak only when chunk_tokens=0)",
                  "flag": token_flag("-sublayer", "sublayer")},
    )
    chunk_tokens: int | str = field(
        default="auto",
        metadata={"help": "token chunk of the FFN and of attention's queries, in forward and in backward's "
                          "recompute (bounds the recompute's transient memory): auto (sized from the batch), 0 (off) "
                          "or a number of tokens", "flag": token_flag("-nochunk", 0)},
    )
    seed: int = field(default=0, metadata={"help": "seed of the dropout RNG replayed in backward"})
    error_budget: float | None = field(
        default=1e-2,
        metadata={"help": "float modes: relative reconstruction error past which backward raises (None: never)"},
    )

    def __post_init__(self) -> None:
        require(self.variant in MEFT_METHODS, "variant", self.variant, f"must be one of {MEFT_METHODS}")
        d_lam, d_beta = MEFT_DEFAULTS[self.variant]
        self.lam = d_lam if self.lam is None else self.lam
        self.beta = d_beta if self.beta is None else self.beta
        for name in ("lam", "beta"):
            v = getattr(self, name)
            require(isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v <= 16, name, v,
                    "must be a number in [0, 16]")
        require(is_int(self.bottleneck) and self.bottleneck >= 1, "bottleneck", self.bottleneck, "must be >= 1")
        require(isinstance(self.adapter_init_std, int | float) and self.adapter_init_std >= 0, "adapter_init_std",
                self.adapter_init_std, "must be >= 0")
        require(self.merge in MERGES, "merge", self.merge, f"must be one of {MERGES}")
        if self.reversible_layers is not None:
            require(is_int(self.reversible_layers) and self.reversible_layers >= 0, "reversible_layers",
                    self.reversible_layers, "must be an integer >= 0")
        _ = self.checkpoint_every  # validates recompute
        require(self.recompute_unit in RECOMPUTE_UNITS, "recompute_unit", self.recompute_unit,
                f"must be one of {RECOMPUTE_UNITS}")
        require(self.chunk_tokens == "auto" or (is_int(self.chunk_tokens) and self.chunk_tokens >= 0),
                "chunk_tokens", self.chunk_tokens, "must be 'auto', 0 (off) or a number of tokens >= 1")
        require(is_int(self.seed), "seed", self.seed, "must be an integer")
        if self.error_budget is not None:
            require(isinstance(self.error_budget, int | float) and self.error_budget > 0, "error_budget",
                    self.error_budget, "must be > 0 or None")
        if self.recompute == "exact":
            for name in ("lam", "beta"):
                v = getattr(self, name)
                fr = Fraction(v).limit_denominator(256)
                require(v == 0 or abs(float(fr) - v) <= 1e-12 * max(1.0, abs(v)), name, v,
                        "exact mode needs a rational with denominator <= 256 (e.g. 0.1, 0.25, 1)")

    @property
    def checkpoint_every(self) -> int:
        """k of recompute="checkpoint_every=k" (0 for the other modes)."""
        if self.recompute in ("exact", "float"):
            return 0
        prefix = "checkpoint_every="
        ok = isinstance(self.recompute, str) and self.recompute.startswith(prefix) and self.recompute[
            len(prefix):].isdigit()
        require(ok and int(self.recompute[len(prefix):]) >= 1, "recompute", self.recompute,
                "must be 'exact', 'float' or 'checkpoint_every=k' with k >= 1")
        return int(self.recompute[len(prefix):])

    @property
    def exact(self) -> bool:
        return self.recompute == "exact"
