"""Stream arithmetic of the scaled additive coupling y = s·x + F(·): float (the paper's) or exact fixed point.

Exact mode (MacKay et al. 2018, docs/method.md §6): streams are int64 with `frac_bits` fractional bits; F and G run in
float on the streams' float values and their outputs are rounded to fixed point; a scale s = p/q is applied as a floor
division whose remainders (0..q-1) go to a small buffer. The inverse pops the buffer, so it is bit-exact at any depth.
"""

from __future__ import annotations

from fractions import Fraction

import torch


class FloatArith:
    """The paper's arithmetic: inversion divides by the scale and amplifies rounding error by 1/s per layer."""

    exact = False

    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        self.dtype = dtype

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.dtype)

    def check(self) -> None:
        """Float streams have no range limit (non-finite values surface in the loss)."""

    def decode(self, s: torch.Tensor) -> torch.Tensor:
        return s

    def scale(self, s: torch.Tensor, factor: Fraction, owned: bool = False) -> tuple[torch.Tensor, None]:
        return (s.mul_(float(factor)) if owned else s * float(factor)), None

    def unscale(self, s: torch.Tensor, buf: None, factor: Fraction, owned: bool = False) -> torch.Tensor:
        if factor == 0:
            raise ZeroDivisionError("a bypass factor of 0 is not invertible (use it for forward-only checks)")
        return s.div_(float(factor)) if owned else s / float(factor)

    def add(self, s: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        return s + f.to(s.dtype)

    def sub(self, s: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        return s - f.to(s.dtype)


class ExactArith:
    """Fixed-point streams: int64 with `frac_bits` fractional bits; scales p/q keep their remainders in a buffer."""

    exact = True

    def __init__(self, frac_bits: int = 32, dtype: torch.dtype = torch.float32) -> None:
        self.frac_bits = frac_bits
        self.one = float(2**frac_bits)
        self.dtype = dtype  # the float dtype F and G see
        # |value| must stay below this so that s·p and the sum of two streams fit in int64.
        self.limit = float(2 ** (62 - frac_bits - 12))
        self._peak: torch.Tensor | None = None  # running max |x| over encoded values (NaN if any was NaN)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """float -> fixed point. Deterministic: x·2^k is exact in float, then rounds once.

        Out-of-range values are flagged on the device and checked once per pass (`check`), not synced per call.
        """
        x = x.detach()
        # one reduction (max |x|, NaN when any element is; torch.maximum keeps NaN), no host sync until `check`
        if x.numel():  # the inf-norm of an empty tensor is an error, not 0
            peak = torch.linalg.vector_norm(x, ord=float("inf"))
            self._peak = peak if self._peak is None else torch.maximum(self._peak, peak)
        # x·2^k is exact in x's own float type (|x| < 2^18, k = 32: no overflow, no subnormals), so rounding it there
        # gives the same integer as in float64 at half the bytes; a copy, then in place
        t = x.to(torch.float64 if x.dtype == torch.float64 else torch.float32, copy=True)
        return t.mul_(self.one).round_().to(torch.int64)

    def check(self) -> None:
        if self._peak is not None and not bool(self._peak < self.limit):  # NaN < limit is False
            raise OverflowError(
                f"exact reversible stream out of range (|x| >= {self.limit:.3g} or not finite); "
                "use recompute='float'"
            )

    def decode(self, s: torch.Tensor) -> torch.Tensor:
        """fixed point -> float (the value F and G see): a deterministic function of the integers."""
        if self.dtype == torch.float32:  # one rounding of s to float32, then an exact power-of-two scale
            return s.to(torch.float32).div_(self.one)
        return s.double().div_(self.one).to(self.dtype)

    def scale(self, s: torch.Tensor, factor: Fraction, owned: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """s·p/q as a floor division and the packed remainders. owned=True: `s` may be overwritten (a stream the
        forward no longer needs), which saves one stream's bytes."""
        p, q = factor.numerator, factor.denominator
        sp = (s.mul_(p) if owned else s * p) if p != 1 else s
        if q == 1:
            return sp, None
        rem = torch.remainder(sp, q).to(torch.uint8)  # floor remainder, in [0, q): q <= 256 is checked by the config
        out = sp.sub_(rem) if sp is not s or owned else sp - rem  # a multiple of q now: the division below is exact
        return out.div_(q, rounding_mode="floor"), _pack(rem, q)

    def unscale(self, s: torch.Tensor, buf: torch.Tensor | None, factor: Fraction, owned: bool = False) -> torch.Tensor:
        """Inverse of `scale`. owned=True: `s` is a temporary of the caller's, overwritten to save a stream's bytes."""
        p, q = factor.numerator, factor.denominator
        if p == 0:
            raise ZeroDivisionError("a bypass factor of 0 is not invertible (use it for forward-only checks)")
        if q != 1:
            sp = s.mul_(q) if owned else s * q
        else:
            sp = s if owned or (buf is None and p == 1) else s.clone()
        if buf is not None:
            sp.add_(_unpack(buf, q, s.shape))
        return sp.div_(p, rounding_mode="floor") if p != 1 else sp  # exact: sp is a multiple of p

    def add(self, s: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        return self.encode(f).add_(s)

    def sub(self, s: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        e = self.encode(f)
        return torch.sub(s, e, out=e)


def _pack(rem: torch.Tensor, q: int) -> torch.Tensor:
    """Remainders < 16 take 4 bits: two per byte along the last (even-sized) dim."""
    if q <= 16 and rem.shape[-1] % 2 == 0:
        return rem[..., 0::2] | (rem[..., 1::2] << 4)  # (..., d/2) uint8
    return rem


def _unpack(buf: torch.Tensor, q: int, shape: torch.Size) -> torch.Tensor:
    if buf.shape == shape:
        return buf
    out = torch.empty(shape, dtype=torch.uint8, device=buf.device)
    out[..., 0::2] = buf & 0x0F
    out[..., 1::2] = buf >> 4
    return out


def as_fraction(x: float) -> Fraction:
    """0.1 -> 1/10 (the config already checked that x is such a rational)."""
    return Fraction(x).limit_denominator(256)
