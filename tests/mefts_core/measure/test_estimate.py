"""The pre-flight estimator against measure_step on tiny shapes, and the measured fit behind fits-in-budget.

Shape: tiny-bert (d=64, 4 heads, I=128) at batch 8 x 128 tokens, where activations are about half of the peak and
the attention scores (B·h·T² = 8·d·n) dominate them, so a wrong activation count shows in the peak. CPU allocation
accounting is deterministic, so the tolerances are the estimator's own error: it leaves out transients of a few
n·d tensors (n·d·4 = 256 KiB here, 1% of a ~25 MiB peak). Stored activations are counted exactly (1%); the
activation peak within 10%; the peak within 5%.
"""

from __future__ import annotations

import dataclasses

import pytest

from mefts_core.measure.bench import build_model, make_batch, parse_method
from mefts_core.measure.estimate import MemoryFit, estimate_memory, fit_memory
from mefts_core.measure.memory import measure_step
from mefts_core.methods import method_spec, register_method, unregister_method

MiB = 1 << 20
B, T, LAYERS = 8, 128, 2


@pytest.mark.parametrize("label", ["full", "lora", "lora+gc", "meft1-exact", "meft1-float", "prefix",
                                   "prefix(prefix_projection=True)", "prefix+gc", "ia3", "lst"])
def test_estimate_matches_measurement_on_a_tiny_shape(label, record_property):
    model, _ = build_model("tiny-bert", label, layers=LAYERS, seq_len=T)
    measured = measure_step(model, make_batch(model.config, B, T))
    method, options = parse_method(label)
    est = estimate_memory("tiny-bert", method, B, T, layers=LAYERS, options=options)

    record_property("measured_vs_estimated_MiB", {
        k: (getattr(measured, m) / MiB, est[k] / MiB)
        for k, m in (("stored_activation_bytes", "stored_activation_bytes"),
                     ("activation_bytes", "peak_activation_bytes"), ("peak_bytes", "peak_bytes"))})
    # the parts that are not activations are exact
    assert est["param_bytes"] == measured.param_bytes
    assert est["grad_bytes"] == measured.grad_bytes == measured.trainable_param_bytes
    assert abs(est["optimizer_bytes"] - measured.optimizer_bytes) <= 8 * 64  # AdamW's scalar steps
    assert measured.peak_activation_bytes > 0.4 * (measured.peak_bytes - measured.param_bytes)  # not a static test
    assert est["stored_activation_bytes"] == pytest.approx(measured.stored_activation_bytes, rel=0.01)
    assert est["activation_bytes"] == pytest.approx(measured.peak_activation_bytes, rel=0.10)
    assert est["peak_bytes"] == pytest.approx(measured.peak_bytes, rel=0.05)


def test_estimate_follows_the_structure():
    """MEFT float: stored flat in depth; exact: one 4-bit remainder per element per layer (λ = 1/10); full FT grows
    by one layer's saved tensors per layer."""
    def stored(label: str, layers: int) -> int:
        method, options = parse_method(label)
        return estimate_memory("tiny-bert", method, B, T, layers=layers, options=options)["stored_activation_bytes"]

    assert stored("meft1-float", 8) == stored("meft1-float", 2)
    assert stored("meft1-exact", 8) - stored("meft1-exact", 2) == 6 * B * T * 64 // 2
    per_layer = stored("full", 3) - stored("full", 2)
    assert stored("full", 8) - stored("full", 2) == 6 * per_layer
    assert per_layer > 3 * B * 4 * T * T * 4  # at least the three B·h·T² tensors of the math attention path
    # prefix: 10 more positions widen each layer's three B·h·T·(T + P) tensors and its saved values, and the keys of
    # the second layer (the first layer's queries need no grad, so its keys are not saved); 10 more int64 ids
    wider = stored("prefix(num_virtual_tokens=30)", 2) - stored("prefix(num_virtual_tokens=20)", 2)
    assert wider == (2 * 3 * B * 4 * T * 10 + 3 * B * 10 * 64) * 4 + 10 * 8


def test_estimate_rejects_what_it_cannot_count():
    with pytest.raises(ValueError, match="r=0"):
        estimate_memory("tiny-bert", "lora", 2, 16, options={"r": 0})
    for method in ("lora", "ia3"):  # a family without a layer walk
        with pytest.raises(NotImplementedError, match="opt"):
            estimate_memory("tiny-opt", method, 2, 16)
    # a registered method without an estimate spec
    register_method(dataclasses.replace(method_spec("bitfit"), name="nospec", estimate=None))
    try:
        with pytest.raises(NotImplementedError, match="nospec.*not estimated"):
            estimate_memory("tiny-bert", "nospec", 2, 16)
    finally:
        unregister_method("nospec")


def test_fit_recovers_its_parameters_and_inverts():
    truth = MemoryFit(static=100 * MiB, a=3 * MiB, b=20_000, c=40, floor=0)
    points = [{"batch_size": b, "seq_len": t, "peak_bytes": int(truth.peak(b, t)),
               "peak_activation_bytes": int(truth.peak(b, t) - truth.static), "static_bytes": int(truth.static)}
              for b, t in [(1, 256), (2, 256), (1, 128)]]
    fit = fit_memory(points)
    assert (fit.a, fit.b, fit.c) == pytest.approx((truth.a, truth.b, truth.c), rel=1e-6)
    budget = 1 << 30
    bmax = fit.max_batch(256, budget)
    assert fit.peak(bmax, 256) <= budget < fit.peak(bmax + 1, 256)
    tmax = fit.max_seq(4, budget)
    assert fit.peak(4, tmax) <= budget < fit.peak(4, tmax + 1)
    assert fit.max_batch(256, truth.static) == 0  # nothing fits in the parameters' own room


def test_fit_keeps_a_floor_that_does_not_scale():
    """Full FT at a small batch: the optimizer step's temporaries, not the activations, set the peak."""
    pts = [{"batch_size": b, "seq_len": 64, "static_bytes": 400, "peak_activation_bytes": 10 * b,
            "peak_bytes": 400 + 50} for b in (1, 2)]
    fit = fit_memory(pts)
    assert fit.floor == 50
    assert fit.max_batch(64, 400 + 49) == 0
    assert fit.max_batch(64, 400 + 60) == 6
