"""(IA)³ (Liu et al. 2022) from the peft library, injected in place like LoRA: learned vectors l_k, l_v, l_ff that
rescale the keys, the values and the FFN's inner activation (the input of its second linear). They start at 1, so
the model starts as the pre-trained one."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from mefts_core.errors import ConfigError, is_number, require
from mefts_core.methods.peers import PeerOptions
from mefts_core.methods.registry import LayerTraining, MethodSpec

# The paper's three places, per model_type: regexes over the backbone's module names. peft's default for BERT
# ("output.dense" as a suffix) also hits attention.output.dense, a fourth vector the paper does not have.
_TARGETS = {
    "bert": (r".*layer\.\d+\.(attention\.self\.(key|value)|output\.dense)$", r".*layer\.\d+\.output\.dense$"),
    "roberta": (r".*layer\.\d+\.(attention\.self\.(key|value)|output\.dense)$", r".*layer\.\d+\.output\.dense$"),
}


@dataclass
class IA3Options(PeerOptions):
    """(IA)³: three trained scaling vectors per layer."""

    init_scale: float = field(default=1.0, metadata={"help": "initial value of every scaling vector (1: start at "
                                                             "the pre-trained model)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        require(is_number(self.init_scale) and self.init_scale > 0, "init_scale", self.init_scale, "must be > 0")


def _targets(model_type: str) -> tuple[object, object]:
    if model_type in _TARGETS:
        return _TARGETS[model_type]
    from peft.utils.constants import (
        TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as FF,
    )
    from peft.utils.constants import (
        TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as ALL,
    )

    if model_type not in ALL:
        raise ConfigError("method", "ia3", f"peft knows no (IA)³ modules for model_type={model_type!r}")
    return ALL[model_type], FF[model_type]


def apply_ia3(model: nn.Module, family, opts: IA3Options) -> list[nn.Parameter]:
    from peft import IA3Config, inject_adapter_in_model

    targets, feedforward = _targets(model.config.model_type)
    cfg = IA3Config(target_modules=targets, feedforward_modules=feedforward, init_ia3_weights=True)
    inject_adapter_in_model(cfg, model.base_model)
    params = [p for n, p in model.base_model.named_parameters() if "ia3_l" in n]
    if opts.init_scale != 1.0:
        for p in params:
            p.data.fill_(opts.init_scale)
    return params


def estimate_ia3(opts: IA3Options) -> LayerTraining:
    # the paper's three places (_TARGETS): the key and value outputs, the input of the FFN's second linear
    return LayerTraining(ia3=frozenset("kvf"))


IA3 = MethodSpec("ia3", IA3Options, apply_ia3, estimate_ia3,
                 description="(IA)³: learned rescaling of keys, values and the FFN activation (peft)")
