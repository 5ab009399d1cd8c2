"""The chunked recompute (issue: the backward transient): token-chunked FFN pieces, the query-chunked attention
kernel, and what they must keep: bit-identical gradients, the forward's dropout masks, and a smaller backward peak.

Chunk sizes here do not divide the sequence (T = 10 or 12 with chunks of 3 or 5), batches have padding, and dropout
is on (0.1), so a boundary, a mask or an RNG draw out of place changes the bits.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from mefts_core.backbones import load_backbone
from mefts_core.engine.attention import _chunk_probs, _ChunkedAttention, _dropped, attention_chunk
from mefts_core.engine.models.base import piece_chunks, token_chunk
from mefts_core.measure.bench import build_model, make_batch
from mefts_core.measure.diagnostics import batch_loss, gradient_fidelity
from mefts_core.measure.memory import measure_step
from mefts_core.methods import apply_method
from tests.mefts_core.engine.test_families import FAMILIES, _batch
from tests.mefts_core.helpers import max_rel, meft_model, tiny_batch

VARIANTS = ["meft1", "meft2", "meft3"]


# -- the attention kernel ----------------------------------------------------------------------------------------
def _reference(q, k, v, mask, scale, p, causal, chunk, seed):
    """The same masks through plain autograd: what the kernel's forward and hand-written backward must equal."""
    outs = []
    for j, s in enumerate(range(0, q.shape[-2], chunk)):
        probs = _chunk_probs(q[..., s : s + chunk, :], k, mask, scale, causal, s)
        if p > 0:
            drop, kscale = _dropped(probs, p, seed, j)
            probs = probs.masked_fill(drop, 0.0) * kscale
        outs.append(probs @ v)
    return torch.cat(outs, -2)


@pytest.mark.parametrize("p", [0.0, 0.3])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("mask_kind", ["none", "bool", "float"])
def test_chunked_attention_gradients_match_autograd(p, causal, mask_kind):
    g = torch.Generator().manual_seed(0)
    B, h, T, e = 2, 3, 13, 8  # chunks of 5: 5 + 5 + 3
    q, k, v = (torch.randn(B, h, T, e, dtype=torch.float64, generator=g).requires_grad_() for _ in range(3))
    mask = None
    if mask_kind != "none":
        keep = torch.ones(B, 1, T, T, dtype=torch.bool)
        keep[0, ..., 9:] = False  # padding of the first sequence
        mask = keep if mask_kind == "bool" else torch.zeros(B, 1, T, T, dtype=torch.float64).masked_fill(~keep, -1e9)
    args = (mask, 0.25, p, causal, 5, 1234)
    out, ref = _ChunkedAttention.apply(q, k, v, *args), _reference(q, k, v, *args)
    assert torch.equal(out, ref)
    grad = torch.randn(out.shape, dtype=torch.float64, generator=g)
    got = torch.autograd.grad(out, (q, k, v), grad)
    want = torch.autograd.grad(ref, (q, k, v), grad)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_chunked_attention_without_dropout_is_sdpa():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 4, 37, 16, generator=g) for _ in range(3))
    mask = torch.ones(2, 1, 1, 37, dtype=torch.bool)
    mask[1, ..., 30:] = False
    out = _ChunkedAttention.apply(q, k, v, mask, 16**-0.5, 0.0, False, 8, 0)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), rtol=1e-5, atol=1e-6)
    causal = _ChunkedAttention.apply(q, k, v, None, 16**-0.5, 0.0, True, 8, 0)
    torch.testing.assert_close(causal, F.scaled_dot_product_attention(q, k, v, is_causal=True), rtol=1e-5,
                               atol=1e-6)


def test_dropout_masks_are_a_function_of_seed_and_chunk_at_rate_p():
    like = torch.empty(4, 8, 64, 512)
    a, scale = _dropped(like, 0.1, seed=7, chunk=3)
    assert torch.equal(a, _dropped(like, 0.1, seed=7, chunk=3)[0])
    assert not torch.equal(a, _dropped(like, 0.1, seed=7, chunk=4)[0])
    assert not torch.equal(a, _dropped(like, 0.1, seed=8, chunk=3)[0])
    assert a.float().mean().item() == pytest.approx(0.1, abs=2e-3)
    assert scale == pytest.approx(1 / 0.9, rel=1e-4)


def test_auto_chunk_sizes_and_which_pieces_chunk():
    assert attention_chunk(512, "auto") == 48 and attention_chunk(40, "auto") == 40
    assert attention_chunk(512, 0) == 512 and attention_chunk(512, 100) == 100
    assert token_chunk(512, "auto") == 128 and token_chunk(512, 0) == 512
    model = meft_model("meft1", layers=2, chunk_tokens=3)
    chain = model.bert.encoder.layer[0].stack.blocks[0].f
    x = torch.zeros(2, 10, 32)
    attn, ffn = chain.pieces
    assert piece_chunks(attn, x, 3) is None  # attention is chunked inside its kernel, by queries
    assert [(s.start, s.stop) for s in piece_chunks(ffn, x, 3)] == [(0, 3), (3, 6), (6, 9), (9, 12)]


# -- the engine ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["bert", "roberta"])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("unit", ["layer", "sublayer"])
def test_chunked_gradients_bit_identical_at_24_layers(family, variant, unit, record_property):
    """Chunks of 3 over T = 10 (padding, dropout 0.1): every parameter gradient equals plain autograd's, bit for bit."""
    model = meft_model(variant, family=family, layers=24, hidden=32, merge="average", chunk_tokens=3,
                       recompute_unit=unit).train()
    rows = gradient_fidelity(model, tiny_batch())
    record_property("max_rel_error", max_rel(rows))
    assert max_rel(rows) == 0.0
    assert all(r["reconstruction_error"] == 0.0 for r in rows)


@pytest.mark.parametrize("name", list(FAMILIES))
@pytest.mark.parametrize("variant", VARIANTS)
def test_chunked_gradients_bit_identical_for_every_family(name, variant):
    """BART (both stacks; the encoder output's gradient summed over the decoder layers), OPT and Llama with chunks of
    5 over T = 12: bit-identical to plain autograd at 24 layers."""
    model, tok = load_backbone(name, head=FAMILIES[name], num_layers=24)
    apply_method(model, variant, merge="average", chunk_tokens=5).train()
    rows = gradient_fidelity(model, _batch(tok))
    assert max_rel(rows) == 0.0
    assert all(r["reconstruction_error"] == 0.0 for r in rows)


def test_chunking_changes_no_forward_value_beyond_rounding():
    """Chunked and unchunked MEFT compute the same function (dropout off): the chunks only regroup the work."""
    batch = tiny_batch()
    outs = []
    for chunk in (0, 3):
        model = meft_model("meft1", layers=4, hidden=32, dropout=0.0, chunk_tokens=chunk).eval()
        with torch.no_grad():
            outs.append(model(**batch).logits)
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-6)


def test_chunking_lowers_the_backward_peak_below_lora_with_checkpointing():
    """At T = 512, attention scores dominate a recompute: chunking must cut MEFT's activation peak, and put it under
    LoRA + gradient checkpointing's (memory is deterministic on CPU, so these ratios hold on a loaded machine)."""
    torch.manual_seed(0)
    peaks = {}
    for label in ("lora+gc", "meft1-exact-nochunk-sublayer", "meft1"):
        model, _ = build_model("tiny-bert", label, layers=4, seq_len=512)
        peaks[label] = measure_step(model, make_batch(model.config, 2, 512)).peak_activation_bytes
    assert peaks["meft1"] < 0.6 * peaks["meft1-exact-nochunk-sublayer"], peaks
    assert peaks["meft1"] < 0.7 * peaks["lora+gc"], peaks


def test_a_second_backward_through_the_stack_is_a_clear_error():
    model = meft_model("meft1", layers=2).train()
    loss = batch_loss(model, tiny_batch())
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="retain_graph=True is not supported"):
        loss.backward()


@pytest.mark.parametrize("bad", [-1, "big", 2.5, True])
def test_chunk_tokens_is_validated(bad):
    with pytest.raises(ValueError, match="chunk_tokens"):
        meft_model("meft1", layers=1, chunk_tokens=bad)


# -- the peers ---------------------------------------------------------------------------------------------------
def test_hf_ffn_chunking_and_offloading_keep_the_gradients():
    """lora+gc+ff (Hugging Face's chunk_size_feed_forward) and +offload (save_on_cpu) train the same function."""
    batch = tiny_batch()
    grads = {}
    for options in ({}, {"ffn_chunk": 5}, {"offload_activations": True}):  # T = 10
        torch.manual_seed(0)  # the same LoRA init
        model = apply_method(load_backbone("tiny-bert", num_labels=2)[0], "lora", gradient_checkpointing=True,
                             **options).train()
        for m in model.modules():  # chunks draw dropout masks in another order: compare the function itself
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        batch_loss(model, batch).backward()
        grads[str(options)] = torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])
    ref = grads["{}"]
    for g in grads.values():
        torch.testing.assert_close(g, ref, rtol=1e-5, atol=1e-7)
    chunked = apply_method(load_backbone("tiny-bert", num_labels=2)[0], "full", ffn_chunk=4)
    assert all(m.chunk_size_feed_forward == 4 for m in chunked.modules() if hasattr(m, "chunk_size_feed_forward"))


def test_hf_ffn_chunking_is_bert_only():
    model, _ = load_backbone("tiny-llama", head="causal_lm")
    with pytest.raises(ValueError, match="ffn_chunk=8"):
        apply_method(model, "lora", ffn_chunk=8)
