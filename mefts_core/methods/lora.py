"""LoRA from the peft library, injected in place (no PeftModel wrapper: the model keeps its class and forward)."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from mefts_core.errors import ConfigError, Unsupported, is_int, is_number, require
from mefts_core.methods.peers import PeerOptions
from mefts_core.methods.registry import LayerTraining, MethodSpec


@dataclass
class LoraOptions(PeerOptions):
    """LoRA: a rank-r update beside the chosen linears."""

    r: int = field(default=8, metadata={"help": "rank of the update"})
    alpha: float = field(default=16.0, metadata={"help": "scaling numerator (scale = alpha / r)"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the LoRA input"})
    target_modules: list[str] | None = field(
        default=None, metadata={"help": "module names to wrap; default: the attention query and value"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        require(is_int(self.r) and self.r >= 1, "r", self.r, "must be an integer >= 1")
        require(is_number(self.alpha) and self.alpha > 0, "alpha", self.alpha, "must be > 0")
        require(is_number(self.dropout) and 0.0 <= self.dropout < 1.0, "dropout", self.dropout, "must be in [0, 1)")
        if self.target_modules is not None:
            require(isinstance(self.target_modules, list) and len(self.target_modules) > 0
                    and all(isinstance(t, str) for t in self.target_modules),
                    "target_modules", self.target_modules, "must be a non-empty list of module names")


def apply_lora(model: nn.Module, family, opts: LoraOptions) -> list[nn.Parameter]:
    from peft import LoraConfig, inject_adapter_in_model

    targets = opts.target_modules or family.lora_targets
    names = {n.rsplit(".", 1)[-1] for n, _ in model.base_model.named_modules()}
    missing = [t for t in targets if t not in names]
    if missing:
        raise ConfigError("target_modules", targets, f"{missing[0]!r} is not a module of this model")
    cfg = LoraConfig(r=opts.r, lora_alpha=opts.alpha, lora_dropout=opts.dropout, target_modules=targets)
    inject_adapter_in_model(cfg, model.base_model)
    return [p for n, p in model.base_model.named_parameters() if "lora_" in n]


_LINEARS = {"query": "q", "key": "k", "value": "v", "dense": "oif"}  # BERT module names -> estimate linears


def estimate_lora(opts: LoraOptions) -> LayerTraining:
    targets = opts.target_modules or ["query", "value"]
    lora = tuple((k, opts.r, opts.dropout) for t in targets for k in _LINEARS.get(t, ""))
    if not lora:
        raise Unsupported("target_modules", targets, "no LoRA accounting for these names")
    return LayerTraining(lora=lora)


LORA = MethodSpec("lora", LoraOptions, apply_lora, estimate_lora,
                  description="low-rank updates beside the attention query and value (peft)")
