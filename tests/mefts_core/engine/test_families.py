"""MEFT beyond encoders: BART (encoder-decoder), OPT and Llama (pre-LN decoders), and the real SmolLM2-135M.

docs/method.md §10 checks A1-A6 and A10 per family on tiny random configs, exact-mode gradient equality at 24 layers,
flat stored memory in depth, and the real-weights checks on SmolLM2.
"""

from __future__ import annotations

import copy

import pytest
import torch

from mefts_core.backbones import load_backbone
from mefts_core.measure.diagnostics import batch_loss, gradient_fidelity, vanilla_backward
from mefts_core.measure.memory import measure_step
from mefts_core.methods import apply_method, meft_stacks
from tests.mefts_core.helpers import max_rel

FAMILIES = {"tiny-bart": "seq2seq_lm", "tiny-opt": "causal_lm", "tiny-llama": "causal_lm"}
VARIANTS = ["meft1", "meft2", "meft3"]


def _model(name: str, layers: int = 2, **opts):
    model, tok = load_backbone(name, head=FAMILIES[name], num_layers=layers)
    return model, tok


def _batch(tok, n: int = 3, seq: int = 12, seed: int = 0) -> dict[str, torch.Tensor]:
    """Token ids with right padding on one row: masks must be applied identically in the recompute."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, 5000, (n, seq), generator=g)
    mask = torch.ones(n, seq, dtype=torch.long)
    mask[0, seq - 4 :] = 0
    ids[0, seq - 4 :] = tok.pad_token_id
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@pytest.mark.parametrize("name", list(FAMILIES))
@pytest.mark.parametrize("variant", VARIANTS)
def test_exact_gradients_equal_vanilla_at_24_layers(name, variant, record_property):
    """A1/A2 (rebuilt inputs bit-exact), A4 (gradients), A5 (dropout on, seeds replayed) for every family."""
    model, tok = _model(name, layers=24)
    apply_method(model, variant, merge="average").train()
    rows = gradient_fidelity(model, _batch(tok))
    record_property("max_rel_error", max_rel(rows))
    assert max_rel(rows) == 0.0  # bit-identical: the encoder output's gradient is summed in autograd's order too
    assert all(r["reconstruction_error"] == 0.0 for r in rows)
    assert {r["stack"] for r in rows} == ({0, 1} if name == "tiny-bart" else {0})


@pytest.mark.parametrize("name", list(FAMILIES))
@pytest.mark.parametrize("variant", VARIANTS)
def test_a6_every_adapter_gets_gradients(name, variant):
    model, tok = _model(name, layers=3)
    apply_method(model, variant, merge="average").train()
    batch_loss(model, _batch(tok)).backward()
    for pname, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, pname
        else:
            assert p.grad is None, pname


@pytest.mark.parametrize("name", list(FAMILIES))
@pytest.mark.parametrize("variant", VARIANTS)
def test_a3_bypass_zero_and_zero_adapters_reproduce_the_plm(name, variant):
    plain, tok = _model(name, layers=3)
    plain.eval()
    bypass = {"meft1": {"lam": 0.0}, "meft2": {"beta": 0.0}, "meft3": {"lam": 0.0, "beta": 0.0}}[variant]
    model = apply_method(copy.deepcopy(plain), variant, **bypass).eval()
    for pname, p in model.named_parameters():
        if "adapter" in pname:
            torch.nn.init.zeros_(p)
    batch = _batch(tok)
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, plain(**batch).logits, atol=1e-5, rtol=0)


def test_a10_encoder_output_gradient_summed_over_decoder_layers():
    """BART: the decoder stack returns dL/d(encoder output), equal to vanilla backward, under causal and padded
    cross-attention masks."""
    model, tok = _model("tiny-bart", layers=4)
    apply_method(model, "meft1", merge="average").train()
    batch = _batch(tok)
    dec_ids = batch["input_ids"][:, :7]
    dec_mask = torch.ones_like(dec_ids)
    dec_mask[1, 5:] = 0

    def grad(vanilla: bool) -> torch.Tensor:
        for s in meft_stacks(model):
            s.calls = 0
        torch.manual_seed(3)
        with vanilla_backward(model) if vanilla else torch.enable_grad():
            enc = model.model.encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            enc_out = enc.last_hidden_state
            enc_out.retain_grad()
            out = model(encoder_outputs=(enc_out,), attention_mask=batch["attention_mask"],
                        decoder_input_ids=dec_ids, decoder_attention_mask=dec_mask)
            out.logits.float().pow(2).mean().backward()
        return enc_out.grad

    rev, ref = grad(False), grad(True)
    assert ref.abs().sum() > 0
    assert ((rev - ref).norm() / ref.norm()).item() <= 1e-6


@pytest.mark.parametrize("name", list(FAMILIES))
def test_stored_activation_memory_is_flat_in_depth(name, record_property):
    stored = {}
    for layers in (12, 24):
        model, tok = _model(name, layers=layers)
        apply_method(model, "meft1", recompute="float", error_budget=None).train()
        stored[layers] = measure_step(model, _batch(tok, n=4, seq=32)).stored_activation_bytes
    record_property("stored_bytes_12_24", stored)
    assert stored[24] / stored[12] <= 1.1


def test_bitfit_without_biases_is_a_clear_error():
    model, _ = _model("tiny-llama")
    with pytest.raises(ValueError, match="nothing to train"):
        apply_method(model, "bitfit")


# -- the real SmolLM2-135M (Llama architecture, 30 layers) --------------------------------------------------------
@pytest.fixture(scope="module")
def smollm2():
    model, tok = load_backbone("smollm2-135m", head="causal_lm")
    texts = ["The capital of France is Paris, and the capital of Italy is Rome.",
             "A man is playing a guitar on the street while people walk by."]
    batch = dict(tok(texts, padding=True, return_tensors="pt"))
    batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    return model, batch


@pytest.mark.slow
def test_smollm2_exact_gradients_equal_vanilla_and_float_mode_does_not(smollm2, record_property):
    plain, batch = smollm2
    errors = {}
    for recompute in ("exact", "float"):
        model = apply_method(copy.deepcopy(plain), "meft1", recompute=recompute, merge="average").train()
        errors[recompute] = max_rel(gradient_fidelity(model, batch))
    record_property("smollm2_meft1_max_rel_error", errors)
    assert errors["exact"] <= 1e-5
    assert errors["float"] > 1.0  # 30 layers at λ = 0.1: the paper's arithmetic gives wrong gradients


@pytest.mark.slow
def test_smollm2_starting_point(smollm2, record_property):
    """Cosine between the MEFT model's logits and the pre-trained model's, adapters N(0, 0.02²).

    With the paper's λ = 0.1 the residual-aware coupling leaves 0.1·(previous residual update) per layer: 0.97
    over 30 layers. λ = 1/16 keeps the start at >= 0.98."""
    plain, batch = smollm2
    batch = {k: v for k, v in batch.items() if k != "labels"}
    mask = batch["attention_mask"].bool()
    with torch.no_grad():
        ref = plain.eval()(**batch).logits[mask].flatten()
    cos = {}
    for lam in (0.1, 0.0625):
        model = apply_method(copy.deepcopy(plain), "meft1", lam=lam).eval()
        with torch.no_grad():
            out = model(**batch).logits[mask].flatten()
        cos[lam] = torch.nn.functional.cosine_similarity(out, ref, dim=0).item()
    record_property("smollm2_meft1_logit_cosine", cos)
    assert cos[0.1] >= 0.96
    assert cos[0.0625] >= 0.98
