"""apply_method for every method: what trains, what stays frozen, option validation, and MEFT's memory."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import BertConfig, BertForMultipleChoice, BertModel

from mefts_core.backbones import load_backbone
from mefts_core.measure.diagnostics import batch_loss, gradient_fidelity
from mefts_core.measure.memory import measure_step
from mefts_core.methods import METHODS, apply_method, meft_stacks, method_options
from tests.mefts_core.helpers import meft_model, tiny, tiny_batch

CASES = [(m, {}) for m in METHODS] + [
    ("full", {"gradient_checkpointing": True}),
    ("lora", {"gradient_checkpointing": True, "r": 4}),
    ("adapter", {"placement": "houlsby"}),
    ("adapter", {"placement": "parallel"}),
    ("meft1", {"recompute": "float"}),
    ("meft2", {"reversible_layers": 1}),
    ("meft3", {"recompute": "checkpoint_every=1"}),
    ("prefix", {"prefix_projection": True, "encoder_hidden_size": 16}),
    ("lst", {"r": 4, "init": "random"}),
]


@pytest.mark.parametrize("family", ["bert", "roberta"])
@pytest.mark.parametrize("method,options", CASES)
def test_only_the_methods_parameters_change(family, method, options):
    """PEFT's test_only_params_are_updated: three optimiser steps move exactly the trainable set."""
    model = apply_method(tiny(family, layers=2), method, **options).train()
    before = copy.deepcopy(model.state_dict())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step in range(3):
        opt.zero_grad()
        batch_loss(model, tiny_batch(seed=step)).backward()
        opt.step()
    after = model.state_dict()
    names = dict(model.named_parameters())
    for name, value in after.items():
        changed = not torch.equal(value, before[name])
        if name in trainable:
            assert changed, f"{name} should have trained"
        elif name in names:
            assert not changed, f"{name} is frozen but changed"
    head = {n for n in trainable if n.startswith("classifier")}
    assert head, "the task head trains"
    if method == "bitfit":  # every bias of the backbone, nothing else
        assert all(n.endswith("bias") for n in trainable - head)
    elif method != "full":
        assert not any("embeddings" in n or "pooler" in n for n in trainable)


@pytest.mark.parametrize("variant", ["meft1", "meft2", "meft3"])
def test_a6_every_adapter_gets_gradients_and_frozen_params_none(variant):
    model = meft_model(variant, layers=3, merge="average").train()
    batch_loss(model, tiny_batch()).backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


def test_gated_merge_starts_on_the_tracking_stream_then_learns_the_other():
    """With gate = 0, MEFT1's top G only reaches the loss through the gate: zero grad at step 0, then it learns."""
    model = meft_model("meft1", layers=2).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    top_g = meft_stacks(model)[0].blocks[-1].g
    batch_loss(model, tiny_batch()).backward()
    assert all(p.grad.abs().sum() == 0 for p in top_g.parameters())
    opt.step()
    opt.zero_grad()
    batch_loss(model, tiny_batch()).backward()
    assert all(p.grad.abs().sum() > 0 for p in top_g.parameters())


@pytest.mark.parametrize("method", METHODS)
def test_bare_model_and_multiple_choice_head(method):
    cfg = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64)
    bare = apply_method(BertModel(cfg), method).train()
    batch = {k: v for k, v in tiny_batch().items() if k != "labels"}
    batch_loss(bare, batch).backward()
    mc = apply_method(BertForMultipleChoice(cfg), method).train()
    mc_batch = {k: v.unsqueeze(0).expand(2, -1, -1).contiguous() for k, v in batch.items()}  # (2 q, 3 choices, T)
    out = mc(**mc_batch, labels=torch.tensor([0, 2]))
    out.loss.backward()
    assert out.logits.shape == (2, 3)
    assert any(p.grad is not None for n, p in mc.named_parameters() if n.startswith("classifier"))


def test_partial_reversibility_and_checkpointed_float_mode():
    model = meft_model("meft1", layers=4, reversible_layers=2).train()
    assert len(meft_stacks(model)[0].blocks) == 2
    from mefts_core.engine.models.base import PiecesLayer

    assert [type(m) for m in model.bert.encoder.layer][2:] == [PiecesLayer, PiecesLayer]
    batch_loss(model, tiny_batch()).backward()
    # checkpoint_every=k resets float drift every k layers: lower gradient error than plain float
    errs = {}
    for rec in ("float", "checkpoint_every=2"):
        m = meft_model("meft3", layers=8, recompute=rec, merge="average", error_budget=None).train()
        errs[rec] = max(r["rel_error"] for r in gradient_fidelity(m, tiny_batch()))
    assert errs["checkpoint_every=2"] < errs["float"] / 10


@pytest.mark.parametrize(
    "method,options,needle",
    [
        ("meft4", {}, "method='meft4'"),
        ("lora", {"bottleneck": 8}, "bottleneck=8: option does not belong to method 'lora'"),
        ("meft1", {"r": 8}, "r=8: option does not belong"),
        ("meft1", {"merge": "sum"}, "merge='sum'"),
        ("meft1", {"lam": 0.3333}, "lam=0.3333"),
        ("meft2", {"recompute": "checkpoint_every=0"}, "recompute='checkpoint_every=0'"),
        ("meft3", {"bottleneck": 0}, "bottleneck=0"),
        ("adapter", {"placement": "middle"}, "placement='middle'"),
        ("lora", {"r": -1}, "r=-1"),
        ("lst", {"r": 0}, "r=0"),
        ("lst", {"init": "magic"}, "init='magic'"),
        ("prefix", {"num_virtual_tokens": 0}, "num_virtual_tokens=0"),
        ("ia3", {"init_scale": -1}, "init_scale=-1"),
    ],
)
def test_bad_options_name_the_field_and_value(method, options, needle):
    with pytest.raises(ValueError) as err:
        method_options(method, **options)
    assert needle in str(err.value)
    with pytest.raises(ValueError):
        apply_method(tiny(), method, **options)


def test_lora_target_must_exist_and_model_is_prepared_once():
    with pytest.raises(ValueError, match="target_modules"):
        apply_method(tiny(), "lora", target_modules=["q_proj"])
    model = apply_method(tiny(), "bitfit")
    with pytest.raises(ValueError, match="already prepared"):
        apply_method(model, "meft1")


def test_meft_defaults_follow_the_paper():
    assert (method_options("meft1").lam, method_options("meft1").beta) == (0.1, 1.0)
    assert (method_options("meft2").lam, method_options("meft2").beta) == (1.0, 0.1)
    assert (method_options("meft3").lam, method_options("meft3").beta) == (0.1, 0.1)
    o = method_options("meft1")
    assert (o.bottleneck, o.adapter_init_std, o.merge, o.recompute, o.reversible_layers) == (8, 0.02, "gated", "exact", None)


# -- activation memory ---------------------------------------------------------------------------------------
def _batch(b: int, t: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"input_ids": torch.randint(1000, 20000, (b, t), generator=g),
            "attention_mask": torch.ones(b, t, dtype=torch.long), "labels": torch.zeros(b, dtype=torch.long)}


def _measure(name: str, method: str, layers: int, b: int = 8, t: int = 128, **opts):
    model, _ = load_backbone(name, num_layers=layers)
    return measure_step(apply_method(model, method, **opts).train(), _batch(b, t))


@pytest.mark.slow
def test_meft_activation_memory_against_full_finetuning_bert_base(record_property):
    """12 layers, batch 8, seq 128 (BERT-base shape): stored <= 5% and peak activation <= 16% of full FT's."""
    full = _measure("bert-base", "full", 12)
    meft = _measure("bert-base", "meft1", 12)
    stored = meft.stored_activation_bytes / full.stored_activation_bytes
    peak = meft.peak_activation_bytes / full.peak_activation_bytes
    record_property("stored_ratio_peak_ratio", (stored, peak))
    assert stored <= 0.05
    assert peak <= 0.16


def test_meft_stored_memory_is_flat_in_depth(record_property):
    """24 over 12 layers: <= 1.1 in float mode; exact mode's remainder buffer grows ~d/2 bytes per token per layer."""
    figures = {}
    for rec in ("float", "exact"):
        s = {n: _measure("tiny-bert", "meft1", n, b=4, t=64, recompute=rec, error_budget=None)
             .stored_activation_bytes for n in (12, 24)}
        figures[rec] = s
    full = {n: _measure("tiny-bert", "full", n, b=4, t=64).stored_activation_bytes for n in (12, 24)}
    record_property("stored_bytes", {"meft1": figures, "full": full})
    assert figures["float"][24] / figures["float"][12] <= 1.1
    assert full[24] / full[12] >= 1.8
    # exact: one 4-bit remainder per element per layer for λ = 1/10 (d = 64: 32 bytes per token per layer)
    buffer_per_layer = (figures["exact"][24] - figures["exact"][12]) / 12
    assert buffer_per_layer == pytest.approx(4 * 64 * 64 / 2, rel=0.05)


@pytest.mark.parametrize("method, options, label", [
    ("full", {}, "full"),
    ("lora", {"r": 16, "gradient_checkpointing": True}, "lora(r=16)+gc"),
    ("lora", {"target_modules": ["query", "key"], "ffn_chunk": 128, "offload_activations": True},
     "lora(target_modules=['query', 'key'])+ff+offload"),
    ("adapter", {"placement": "houlsby", "ffn_chunk": 64}, "adapter(ffn_chunk=64,placement=houlsby)"),
    ("meft1", {"recompute": "float", "chunk_tokens": 0}, "meft1-float-nochunk"),
    ("meft2", {"recompute": "checkpoint_every=3", "recompute_unit": "sublayer", "bottleneck": 16},
     "meft2-ck3-sublayer(bottleneck=16)"),
    ("meft3", {"lam": 0.25, "error_budget": None}, "meft3(error_budget=None,lam=0.25)"),
    ("lst", {"r": 4, "init": "random"}, "lst(init=random,r=4)"),
    ("prefix", {"num_virtual_tokens": 8, "gradient_checkpointing": True}, "prefix(num_virtual_tokens=8)+gc"),
])
def test_one_label_per_method_and_options_and_back(method, options, label):
    """Run tables, the bench and the dashboard name a method one way, and a label reads back to its options."""
    from mefts_core.methods import method_label, parse_label

    assert method_label(method, options) == label
    assert method_label(method, method_options(method, **options)) == label
    assert parse_label(label) == (method, options)


def test_a_bad_label_names_itself():
    from mefts_core.errors import ConfigError
    from mefts_core.methods import parse_label

    for bad in ("meft1+gc", "lora-float", "sgd", "meft1-ck0", "lora(r=0)", "lora(bogus=1)"):
        with pytest.raises(ConfigError):
            parse_label(bad)


def test_lst_keeps_no_backbone_activations_and_its_side_starts_from_the_pruned_backbone():
    """LST's backbone runs under no_grad: its stored activations are the ladders' inputs and the narrow side network,
    well under LoRA's (which keeps every layer's); and the pruned side layer is the backbone layer's sub-matrix."""
    batch = {**tiny_batch(batch=4, seq=32), "labels": torch.zeros(4, dtype=torch.long)}
    stored = {m: measure_step(apply_method(tiny("bert", layers=4, hidden=64), m).train(), batch)
              .stored_activation_bytes for m in ("lora", "lst")}
    assert stored["lst"] < 0.6 * stored["lora"], stored
    model = apply_method(tiny("bert", layers=2, hidden=32), "lst", r=2)
    full, side = model.bert.encoder.layer[1], model.bert.lst.layers[1]
    w_full, w_side = full.intermediate.dense.weight, side.intermediate.dense.weight  # (I, d), (I/2, d/2)
    assert w_side.shape == (w_full.shape[0] // 2, w_full.shape[1] // 2)
    # every side row is a kept backbone row restricted to the kept residual columns
    assert all(any(torch.isin(w_side[j], w_full[i]).all() for i in range(w_full.shape[0]))
               for j in range(w_side.shape[0]))
