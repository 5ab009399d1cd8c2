"""Acceptance checks A1-A5, A8, A9 of docs/method.md §10 for the reversible engine, and exact-mode gradient equality."""

from __future__ import annotations

import copy

import pytest
import torch

from mefts_core.measure.diagnostics import batch_loss, gradient_fidelity, vanilla_backward
from mefts_core.methods import meft_stacks
from tests.mefts_core.helpers import max_rel, meft_model, minilm, text_batch, tiny, tiny_batch

VARIANTS = ["meft1", "meft2", "meft3"]


def _stack(model):
    (stack,) = meft_stacks(model)
    return stack


def _round_trip(stack, h0):
    """Forward without a graph, then rebuild every layer's input from the top state."""
    replay = stack._replay(h0)
    with torch.no_grad():
        state, buffers, _ = stack.run_forward(h0, replay, {})
    rebuilt = stack.invert(state, buffers, replay, {}, h0.dtype)
    ar = stack.arith(h0.dtype)
    return [(ar.decode(a), ar.decode(b)) for a, b in rebuilt], ar


# -- A1: single-layer round trip ---------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a1_single_layer_round_trip(variant, dtype):
    h0 = torch.randn(2, 6, 32, dtype=dtype)
    for recompute in ("exact", "float"):
        for lam_beta in ({}, {"lam": 1.0, "beta": 1.0}):
            model = meft_model(variant, layers=1, dtype=dtype, recompute=recompute, **lam_beta).eval()
            stack = _stack(model)
            rebuilt, ar = _round_trip(stack, h0)
            x1, x2 = rebuilt[0]
            if recompute == "exact":  # bit-exact: the fixed-point encoding of h0 comes back
                assert torch.equal(ar.encode(x1), ar.encode(h0)) and torch.equal(ar.encode(x2), ar.encode(h0))
            else:
                unit = not lam_beta
                atol = {torch.float64: 1e-10 if unit else 1e-12, torch.float32: 1e-4 if unit else 1e-5}[dtype]
                torch.testing.assert_close(x1, h0, atol=atol, rtol=0)
                torch.testing.assert_close(x2, h0, atol=atol, rtol=0)


# -- A2: stack round trip -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_a2_stack_round_trip_float_error_grows_and_exact_is_zero(variant, record_property):
    errs = {}
    for dtype in (torch.float32, torch.float64):
        torch.manual_seed(0)
        h0 = torch.randn(2, 6, 32, dtype=dtype)
        model = meft_model(variant, layers=6, dtype=dtype, recompute="float").eval()
        (a, b), _ = _round_trip(_stack(model), h0)[0][0], None
        errs[dtype] = max((a - h0).abs().max().item(), (b - h0).abs().max().item())
    record_property("float_round_trip_error_fp32_fp64", (errs[torch.float32], errs[torch.float64]))
    assert errs[torch.float64] <= 1e-6 * errs[torch.float32]

    h0 = torch.randn(2, 6, 32)
    model = meft_model(variant, layers=6, recompute="exact").eval()
    stack = _stack(model)
    rebuilt, ar = _round_trip(stack, h0)
    with torch.no_grad():
        stack.trace = {"forward": [], "rebuilt": []}
        stack.run_forward(h0, stack._replay(h0), {})
    for i, (a, b) in enumerate(rebuilt):  # every layer's input comes back bit for bit
        assert torch.equal(torch.cat([a, b], -1), stack.trace["forward"][i])


def test_a2_error_grows_geometrically_with_depth(record_property):
    """Float mode: the rebuilt inputs' error grows ~1/λ per layer downwards (docs/method.md §6)."""
    torch.manual_seed(0)
    h0 = torch.randn(2, 6, 32, dtype=torch.float64)
    model = meft_model("meft1", layers=8, dtype=torch.float64, recompute="float").eval()
    stack = _stack(model)
    rebuilt, _ = _round_trip(stack, h0)
    with torch.no_grad():
        stack.trace = {"forward": [], "rebuilt": []}
        stack.run_forward(h0, stack._replay(h0), {})
    errs = [(torch.cat(r, -1) - f).abs().max().item() for r, f in zip(rebuilt, stack.trace["forward"])]
    record_property("per_layer_error", errs)
    assert errs[0] > 1e3 * errs[-2] > 0  # five or more layers of ~x10 growth
    assert errs[0] < 1e-6


def test_float_mode_fails_loudly_past_the_error_budget():
    model = meft_model("meft3", layers=12, hidden=32, recompute="float").train()
    with pytest.raises(FloatingPointError, match="recompute='exact'"):
        batch_loss(model, tiny_batch()).backward()
    exact = meft_model("meft3", layers=12, hidden=32).train()
    batch_loss(exact, tiny_batch()).backward()  # exact mode inverts at any depth
    assert _stack(exact).last_reconstruction_error == 0.0


# -- A3: wiring and starting point --------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["bert", "roberta"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_a3_wiring_tracks_the_plm_exactly_with_bypass_zero(family, variant):
    plain = tiny(family, layers=3, dropout=0.0).eval()
    bypass = {"meft1": {"lam": 0.0}, "meft2": {"beta": 0.0}, "meft3": {"lam": 0.0, "beta": 0.0}}[variant]
    from mefts_core.methods import apply_method

    model = apply_method(copy.deepcopy(plain), variant, **bypass).eval()
    for name, p in model.named_parameters():
        if "adapter" in name:
            torch.nn.init.zeros_(p)
    batch = {"input_ids": tiny_batch()["input_ids"]}  # no padding: the attention sub-layer is called maskless below
    with torch.no_grad():
        ref = plain(**batch, output_hidden_states=True)
        stack = _stack(model)
        stack.trace = {"forward": [], "rebuilt": []}
        out = model(**batch)
    hs = ref.hidden_states  # h_0 .. h_N
    base = plain.base_model
    for i, state in enumerate(stack.trace["forward"][1:], start=1):  # input of layer i = output of layer i-1
        s1, s2 = state.chunk(2, dim=-1)
        if variant == "meft1":
            track, lag = s2, s1
            torch.testing.assert_close(lag, hs[i - 1], atol=1e-6, rtol=0)
        elif variant == "meft2":
            track, lag = s1, s2
            torch.testing.assert_close(lag, hs[i - 1], atol=1e-6, rtol=0)
        else:
            track, attn = s2, s1
            want = base.encoder.layer[i - 1].attention(hs[i - 1], None)[0]
            torch.testing.assert_close(attn, want, atol=1e-6, rtol=0)
        torch.testing.assert_close(track, hs[i], atol=1e-6, rtol=0)
    # gated merge, bypass 0, zeroed adapters: the output is the pre-trained model's
    torch.testing.assert_close(out.logits, ref.logits, atol=1e-5, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_a3_starting_point_on_real_minilm(variant, record_property):
    """Paper init (λ, β defaults, adapters N(0, 0.02²)): cosine with the PLM's last hidden state (over the whole
    flattened tensor, as in docs/method.md §4: MEFT1 0.983 tracking stream vs 0.910 averaged; MEFT3 0.974 vs 0.862)."""
    from mefts_core.methods import apply_method

    plain, tok = minilm(head="base")
    plain.eval()
    batch = text_batch(tok)
    batch.pop("labels")
    with torch.no_grad():
        ref = plain(**batch).last_hidden_state
    cos = {}
    for merge in ("gated", "average"):
        model = apply_method(copy.deepcopy(plain), variant, merge=merge).eval()
        with torch.no_grad():
            out = model(**batch).last_hidden_state
        cos[merge] = torch.nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0).item()
    record_property("cosine_gated_average", cos)
    # MEFT3's two 0.1 bypasses per layer cost more of the start (the spec measured 0.974 for its tracking stream)
    assert cos["gated"] >= (0.97 if variant == "meft3" else 0.98)
    assert cos["gated"] > cos["average"]


# -- A4: gradient equality ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_a4_gradients_float64_float_mode(variant):
    batch = tiny_batch()
    unit = meft_model(variant, layers=3, dtype=torch.float64, lam=1.0, beta=1.0, recompute="float").train()
    assert max_rel(gradient_fidelity(unit, batch)) < 1e-8
    scaled = meft_model(variant, layers=4, dtype=torch.float64, recompute="float").train()
    assert max_rel(gradient_fidelity(scaled, batch)) < 1e-6
    fp32 = meft_model(variant, layers=2, recompute="float").train()
    assert max_rel(gradient_fidelity(fp32, batch)) < 1e-3


@pytest.mark.parametrize("family", ["bert", "roberta"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_exact_mode_gradients_equal_vanilla_at_24_layers(family, variant, record_property):
    """Exact inversion plus autograd's own accumulation order (the bypass gradient is fed into the recompute's
    autograd call): the reversible gradients are bit-identical to plain autograd's, not merely within 1e-6."""
    model = meft_model(variant, family=family, layers=24, hidden=32, merge="average").train()  # dropout 0.1 on
    rows = gradient_fidelity(model, tiny_batch())
    record_property("max_rel_error", max_rel(rows))
    assert max_rel(rows) == 0.0
    assert all(r["reconstruction_error"] == 0.0 for r in rows)


@pytest.mark.parametrize("variant", VARIANTS)
def test_a4_gradient_wrt_stack_input(variant):
    model = meft_model(variant, layers=4, merge="average").train()
    stack = _stack(model)
    h0 = torch.randn(2, 5, 32, requires_grad=True)

    def grad(vanilla):
        stack.calls = 0
        with vanilla_backward(model) if vanilla else torch.enable_grad():
            s1, s2 = stack(h0)
            (g,) = torch.autograd.grad((s1 * s2).sum() + s2.pow(3).sum(), h0)
        return g

    rev, ref = grad(False), grad(True)
    assert ((rev - ref).norm() / ref.norm()).item() <= 1e-6


@pytest.mark.slow
def test_exact_gradients_on_real_minilm_and_float_error_recorded(record_property):
    from mefts_core.methods import apply_method

    plain, tok = minilm()
    batch = text_batch(tok)
    figures = {}
    for variant in VARIANTS:
        for recompute in ("exact", "float"):
            model = apply_method(copy.deepcopy(plain), variant, recompute=recompute, merge="average").train()
            rows = gradient_fidelity(model, batch)
            figures[f"{variant}/{recompute}"] = [f"{r['rel_error']:.1e}" for r in rows]
            if recompute == "exact":
                assert max_rel(rows) <= 1e-6, rows
            else:  # the paper's arithmetic: error grows downwards, ~x10 per layer at λ = 0.1
                assert rows[0]["rel_error"] > 10 * rows[-1]["rel_error"]
    record_property("minilm_rel_error_per_layer", figures)


def test_float_mode_error_grows_with_depth(record_property):
    errs = {}
    for layers in (2, 6, 10):
        model = meft_model("meft1", layers=layers, hidden=32, recompute="float", merge="average").train()
        errs[layers] = max_rel(gradient_fidelity(model, tiny_batch()))
    record_property("float_mode_max_rel_error_by_depth", errs)
    assert errs[2] < errs[6] < errs[10]


# -- A5: dropout and RNG -----------------------------------------------------------------------------------------
def test_a5_seeds_differ_across_steps_and_global_rng_is_untouched():
    model = meft_model("meft1", layers=2).train()
    stack = _stack(model)
    h0 = torch.randn(2, 5, 32)
    seeds = {stack._replay(h0).seeds[0][0] for _ in range(100)}
    assert len(seeds) > 70
    before = torch.get_rng_state()
    stack(h0)
    assert torch.equal(before, torch.get_rng_state())


def test_a5_two_forwards_before_one_backward():
    model = meft_model("meft2", layers=3, merge="average").train()
    b1, b2 = tiny_batch(seed=1), tiny_batch(seed=2)

    def grads(vanilla):
        model.zero_grad(set_to_none=True)
        _stack(model).calls = 0
        torch.manual_seed(5)
        with vanilla_backward(model) if vanilla else torch.enable_grad():
            (batch_loss(model, b1) + batch_loss(model, b2)).backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    rev, ref = grads(False), grads(True)
    assert ((rev - ref).norm() / ref.norm()).item() <= 1e-6


def test_a5_dropout_is_reproducible_from_the_seed_option():
    def grads(seed):
        model = meft_model("meft1", layers=2, merge="average", seed=seed).train()
        torch.manual_seed(0)
        batch_loss(model, tiny_batch()).backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    assert torch.equal(grads(7), grads(7))
    assert not torch.equal(grads(7), grads(8))


# -- A8: mixed precision -----------------------------------------------------------------------------------------
def test_a8_autocast_is_replayed_in_the_recompute(record_property):
    def fidelity(replay):
        model = meft_model("meft1", layers=4, hidden=32, dropout=0.0, merge="average").train()
        _stack(model).replay_autocast = replay
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return gradient_fidelity(model, tiny_batch())

    good = fidelity(True)
    record_property("bf16_cosine_per_layer", [r["cosine"] for r in good])
    assert min(r["cosine"] for r in good) >= 0.99
    assert all(r["reconstruction_error"] == 0.0 for r in good)
    bad = fidelity(False)  # regression: a recompute outside autocast rebuilds the wrong inputs
    assert max(r["reconstruction_error"] for r in bad) > 0


# -- A9: eval / train consistency ------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_a9_eval_equals_train_without_dropout_and_builds_no_graph(variant):
    model = meft_model(variant, layers=3, dropout=0.0)
    batch = {k: v for k, v in tiny_batch().items() if k != "labels"}
    train_out = model.train()(**batch).logits
    stack = _stack(model)
    calls = stack.calls
    with torch.no_grad():
        eval_out = model.eval()(**batch).logits
    assert stack.calls == calls  # no seeding
    assert eval_out.grad_fn is None
    torch.testing.assert_close(eval_out, train_out.detach(), atol=1e-6, rtol=0)


def test_exact_mode_refuses_streams_out_of_fixed_point_range():
    model = meft_model("meft1", layers=2).train()
    h0 = torch.full((1, 3, 32), 1e9)  # beyond the int64 fixed-point range at 32 fractional bits
    with pytest.raises(OverflowError, match="out of range"):
        _stack(model)(h0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_layer_recompute_unit_same_gradients_one_attention_forward_less(variant):
    """recompute_unit="layer" recomputes a whole layer in one go: the same bit-exact gradients, and the attention
    sub-block runs once per backward instead of twice (once for the FFN's input, once with a graph). MEFT3's F and
    G are one sub-block each already, so the unit changes nothing there."""
    calls = {}
    for unit in ("sublayer", "layer"):
        model = meft_model(variant, layers=3, hidden=32, merge="average", recompute_unit=unit).train()
        assert max_rel(gradient_fidelity(model, tiny_batch())) == 0.0
        attention = [m for m in model.modules() if type(m).__name__ == "BertAttention"]
        seen: list[int] = []
        for m in attention:
            m.register_forward_hook(lambda *_, seen=seen: seen.append(1))
        batch_loss(model, tiny_batch()).backward()
        calls[unit] = len(seen)
    layers = 3
    assert calls["layer"] == 2 * layers  # forward + one recompute
    assert calls["sublayer"] == (2 if variant == "meft3" else 3) * layers


def test_dropout_replay_does_not_seed_lazily_initialised_devices(monkeypatch):
    """The replay seeds only the generator dropout draws from. torch.manual_seed also seeds CUDA and XPU, and while
    one is uninitialised its seeding call is deferred together with a formatted stack trace, for every F and G: on CPU a
    4-layer tiny-bert step took 27.8 ms instead of 15.5 (docs/benchmarks.md), and through XPU it slowed MEFT on an H100."""
    import traceback

    model = meft_model("meft1", layers=3).train()  # building it seeds globally, once: not counted
    calls = []
    real = traceback.format_stack
    monkeypatch.setattr(traceback, "format_stack", lambda *a, **k: calls.append(1) or real(*a, **k))
    for _ in range(2):
        batch_loss(model, tiny_batch()).backward()
    assert calls == []
