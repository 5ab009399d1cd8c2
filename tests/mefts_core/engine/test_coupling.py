"""Exact-mode stream arithmetic against independent float64 references: the cheaper kernels (rounding in the
input's own float type, decoding straight to float32, in-place unscaling) must give the same integers and floats."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch

from mefts_core.engine.coupling import ExactArith

ONE = 2.0**32


def _inputs(dtype: torch.dtype) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(50_000, generator=g, dtype=torch.float64).to(dtype) * s for s in (1e-7, 1e-3, 1.0, 40.0, 3e4)]
    # exact halfway points between two fixed-point values: rounding must break the tie the same way (to even)
    ties = torch.randint(-(2**20), 2**20, (50_000,), generator=g).double() / 2**31 + 0.5 / ONE
    return [x[torch.isfinite(x)] for x in (*xs, ties.to(dtype))]  # float16 overflows at 65504


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_encode_and_decode_equal_the_float64_reference(dtype):
    ar = ExactArith(dtype=dtype)
    for x in _inputs(dtype):
        ref = torch.round(x.double() * ONE).to(torch.int64)
        assert torch.equal(ar.encode(x), ref)
        s = ref + torch.randint(-(2**40), 2**40, ref.shape)
        assert torch.equal(ar.decode(s), (s.double() / ONE).to(dtype))
    ar.check()


def test_encode_does_not_touch_its_input():
    x = torch.randn(100, dtype=torch.float64)
    before = x.clone()
    ExactArith(dtype=torch.float64).encode(x)
    assert torch.equal(x, before)


@pytest.mark.parametrize("factor", [Fraction(1, 10), Fraction(1), Fraction(3, 4), Fraction(2), Fraction(1, 16)])
def test_scale_then_unscale_is_the_identity_and_inputs_stay_intact(factor):
    ar = ExactArith()
    s = torch.randint(-(2**45), 2**45, (64, 32))
    kept = s.clone()
    out, buf = ar.scale(s, factor)
    assert torch.equal(s, kept)  # scale never writes into the stream it is given
    assert torch.equal(out, torch.div(s * factor.numerator, factor.denominator, rounding_mode="floor"))
    copy = out.clone()
    assert torch.equal(ar.unscale(out, buf, factor), s)
    assert torch.equal(out, copy)  # not owned: left as it was
    assert torch.equal(ar.unscale(out, buf, factor, owned=True), s)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), 2.0**19])
def test_out_of_range_values_raise_at_check(bad):
    ar = ExactArith()
    ar.encode(torch.tensor([0.5, -3.0]))
    ar.encode(torch.tensor([1.0, bad]))
    ar.encode(torch.tensor([2.0]))  # a later in-range call must not clear the flag
    with pytest.raises(OverflowError, match="out of range"):
        ar.check()


def test_in_range_and_empty_values_pass_check():
    ar = ExactArith()
    ar.encode(torch.tensor([2.0**17, -(2.0**17)]))
    ar.encode(torch.empty(0, 4))
    ar.check()
