"""The engine on a CUDA device: the allocator's peaks, dropout replay from the CUDA RNG, exact inversion with GPU
kernels, autocast. Skipped where no CUDA device is visible (tests/conftest.py); bench/gpu.sh runs them on a lent card.
"""

from __future__ import annotations

import pytest
import torch

from mefts_core.measure.diagnostics import gradient_fidelity
from mefts_core.measure.memory import measure_step
from mefts_core.methods import apply_method
from tests.mefts_core.helpers import max_rel, meft_model, tiny, tiny_batch

pytestmark = pytest.mark.gpu
VARIANTS = ("meft1", "meft2", "meft3")


def _cuda(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.cuda() for k, v in batch.items()}


@pytest.mark.parametrize("unit", ["sublayer", "layer"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_exact_mode_on_cuda_rebuilds_inputs_and_matches_vanilla(variant, unit, record_property):
    """Dropout on: the masks come from the CUDA generator and must be replayed bit for bit in the recompute, or the
    rebuilt inputs drift. With deterministic kernels the gradients equal plain autograd's."""
    model = meft_model(variant, layers=6, hidden=64, merge="average", recompute_unit=unit).cuda().train()
    rows = gradient_fidelity(model, _cuda(tiny_batch()))
    record_property("max_rel_error", max_rel(rows))
    record_property("max_reconstruction_error", max(r["reconstruction_error"] for r in rows))
    assert all(r["reconstruction_error"] == 0.0 for r in rows), rows
    assert max_rel(rows) <= 1e-6, rows


def test_bf16_autocast_on_cuda_is_replayed(record_property):
    model = meft_model("meft1", layers=4, hidden=64, merge="average").cuda().train()
    rows = gradient_fidelity(model, _cuda(tiny_batch()), autocast=torch.bfloat16)
    record_property("max_rel_error", max_rel(rows))
    assert all(r["cosine"] > 0.999 for r in rows), rows


def _peak_activation(depth: int, method: str, **options) -> int:
    torch.manual_seed(0)
    model = apply_method(tiny(layers=depth, hidden=256, dropout=0.0), method, **options).cuda().train()
    batch = _cuda(tiny_batch(batch=8, seq=64))
    report = measure_step(model, batch)
    assert report.how == "cuda-allocator"
    del model
    torch.cuda.empty_cache()
    return report.peak_activation_bytes


def test_cuda_peak_activation_flat_in_depth_and_below_checkpointing():
    """The allocator's own numbers: MEFT's peak activation barely moves from 6 to 24 layers (float mode), while full
    fine-tuning's grows with depth, and at 24 layers it is below LoRA with gradient checkpointing."""
    meft = {d: _peak_activation(d, "meft1", recompute="float", error_budget=None) for d in (6, 24)}
    full = {d: _peak_activation(d, "full") for d in (6, 24)}
    lora_gc = _peak_activation(24, "lora", gradient_checkpointing=True)
    assert meft[24] <= 1.15 * meft[6], meft
    assert full[24] >= 3 * full[6], full
    assert meft[24] < lora_gc, (meft, lora_gc)
    assert meft[24] <= 0.16 * full[24], (meft, full)
