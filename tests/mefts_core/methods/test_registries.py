"""A method and a family added from outside the package, through the registries alone, train end to end.

The toy method trains only the LayerNorms (one options class, one `apply`, one estimate spec); the toy family is
ELECTRA, whose layers Hugging Face writes like BERT's but under its own model type, which mefts does not ship.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch
from torch import nn
from transformers import ElectraConfig

from mefts_core.backbones import BackboneSpec, load_backbone, register_backbone, unregister_backbone
from mefts_core.config import TrainConfig
from mefts_core.engine.models import Family, family_of, register_family, unregister_family
from mefts_core.engine.models.bert import BertFamily
from mefts_core.errors import ConfigError, require
from mefts_core.measure.estimate import estimate_memory
from mefts_core.methods import (
    METHODS,
    LayerTraining,
    MethodSpec,
    head_parameters,
    method_catalog,
    method_label,
    method_options,
    parse_label,
    register_method,
    unregister_method,
)
from mefts_core.training.trainer import run_training

# ------------------------------------------------------------------------------------- the toy method


@dataclass
class NormOnlyOptions:
    """Train the LayerNorms' scale (and, optionally, shift) only."""

    shift: bool = field(default=True, metadata={"help": "train the LayerNorm bias too"})

    def __post_init__(self) -> None:
        require(isinstance(self.shift, bool), "shift", self.shift, "must be true or false")


def apply_norm_only(model: nn.Module, family, opts: NormOnlyOptions) -> list[nn.Parameter]:
    norms = [m for m in model.base_model.modules() if isinstance(m, nn.LayerNorm)]
    return [p for m in norms for n, p in m.named_parameters() if n == "weight" or opts.shift]


NORM_ONLY = MethodSpec("normonly", NormOnlyOptions, apply_norm_only, estimate=lambda o: LayerTraining(biases=False),
                       description="LayerNorm-only tuning (a test's toy)")

# ------------------------------------------------------------------------------------- the toy family


class ElectraFamily(Family):
    name = "electra"
    model_types = ("electra",)
    lora_targets = ["query", "value"]
    tokenizer = "wordpiece"

    # ELECTRA's layers are BERT's (attention, intermediate, output under the same names): the same walk
    groups = staticmethod(BertFamily.groups)
    pieces = staticmethod(BertFamily.pieces)

    @staticmethod
    def random_config(shape, tok, kw):
        return ElectraConfig(vocab_size=tok.vocab_size, embedding_size=shape["hidden_size"], **shape, **kw)


TINY_ELECTRA = BackboneSpec("tiny-electra", "electra", False, "random ELECTRA, 2 layers, d=64",
                            dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128))


@pytest.fixture
def registered():
    register_method(NORM_ONLY)
    register_family(ElectraFamily)
    register_backbone(TINY_ELECTRA)
    yield
    unregister_backbone(TINY_ELECTRA.name)
    unregister_family(ElectraFamily.name)
    unregister_method(NORM_ONLY.name)


def _one_step(**kw) -> dict:
    torch.set_num_threads(2)
    config = TrainConfig(task="sst2", epochs=1, batch_size=4, max_train_samples=4, max_eval_samples=4,
                         max_seq_len=16, learning_rate=1e-2, **kw)
    return run_training(config).to_dict()


def test_a_registered_method_is_everywhere_and_trains_one_step(registered):
    assert "normonly" in METHODS
    assert method_catalog()["normonly"][0]["name"] == "shift"
    assert method_label("normonly", {"shift": False}) == "normonly(shift=False)"
    assert parse_label("normonly(shift=False)") == ("normonly", {"shift": False})
    with pytest.raises(ConfigError) as e:
        TrainConfig(backbone="tiny-bert", method="normonly", task="sst2", method_options={"shift": "yes"})
    assert (e.value.loc, e.value.value) == (("method_options", "shift"), "yes")

    result = _one_step(backbone="tiny-bert", method="normonly", method_options={"shift": False})
    assert len(result["epoch_metrics"]) == 1 and result["config"]["method_options"] == {"shift": False}
    # what trains: the LayerNorm scales (2 layers x 2 norms + the embeddings' norm, d=64) and the task head
    model, _ = load_backbone("tiny-bert")
    head = sum(p.numel() for p in head_parameters(model))
    assert result["trainable_params"] == 5 * 64 + head
    est = estimate_memory("tiny-bert", "normonly", 2, 16, options={"shift": False})
    assert est["trainable_params"] == result["trainable_params"]


def test_a_registered_family_runs_meft_and_trains_one_step(registered):
    result = _one_step(backbone="tiny-electra", method="meft1")
    assert result["gradient_fidelity"] and all(r["cosine"] > 0.999999 for r in result["gradient_fidelity"]
                                               if r["cosine"] is not None)
    assert len(result["epoch_metrics"]) == 1


def test_unregistered_names_are_config_errors_naming_them():
    with pytest.raises(ConfigError) as e:
        method_options("normonly")
    assert e.value.loc == ("method",)
    with pytest.raises(ConfigError) as e:
        TrainConfig(backbone="tiny-electra", method="full", task="sst2")
    assert e.value.loc == ("backbone",)
    with pytest.raises(ValueError, match="already registered"):
        register_family(type("Again", (Family,), {"name": "bert2", "model_types": ("bert",)}))
    model, _ = load_backbone("tiny-bert")
    model.config.model_type = "electra"
    with pytest.raises(ConfigError, match="model_type='electra': not supported"):
        family_of(model)
