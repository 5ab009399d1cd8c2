"""Adapter placement against an independent formula (docs/method.md §MEFT variants): a BERT layer written out in plain
torch ops from the pristine layer's weights, the adapters added where the paper puts them, compared with the F and G
the engine builds. A misplaced adapter (series instead of parallel, after the LayerNorm, reading the wrong tensor)
changes the output by far more than the tolerance."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as fn

from mefts_core.methods import apply_method, meft_stacks
from tests.mefts_core.helpers import tiny


def _lin(x: torch.Tensor, m) -> torch.Tensor:
    return x @ m.weight.T + m.bias


def _ln(x: torch.Tensor, m) -> torch.Tensor:
    return fn.layer_norm(x, x.shape[-1:], m.weight, m.bias, m.eps)


def _adapter(x: torch.Tensor, a) -> torch.Tensor:
    """W_up · gelu(W_down · x + b_d) + b_u, no residual inside."""
    return _lin(fn.gelu(_lin(x, a.down)), a.up)


def _self_attention(x: torch.Tensor, layer, heads: int) -> torch.Tensor:
    """softmax(q kᵀ / √e) v per head, then the output dense: (B, T, d) -> (B, T, d), before any residual."""
    s = layer.attention.self
    b, t, d = x.shape
    e = d // heads
    q, k, v = (_lin(x, m).view(b, t, heads, e).transpose(1, 2) for m in (s.query, s.key, s.value))  # (B, h, T, e)
    probs = torch.softmax(q @ k.transpose(-1, -2) / e**0.5, dim=-1)  # (B, h, T, T)
    ctx = (probs @ v).transpose(1, 2).reshape(b, t, d)  # (B, T, d)
    return _lin(ctx, layer.attention.output.dense)


def _ffn(y: torch.Tensor, layer) -> torch.Tensor:
    return _lin(fn.gelu(_lin(y, layer.intermediate.dense)), layer.output.dense)  # (B, T, d)


def _prepared(variant: str):
    model = tiny("bert", layers=2, hidden=32, dropout=0.0, seed=3).eval()
    pristine = copy.deepcopy(model.bert.encoder.layer[0])
    apply_method(model, variant, adapter_init_std=0.3, merge="average")
    block = meft_stacks(model)[0].blocks[0]
    with torch.no_grad():  # non-zero biases too, so an adapter that reads the wrong tensor cannot hide
        for m in block.modules():
            if type(m).__name__ == "BottleneckAdapter":
                m.down.bias.normal_(0, 0.3)
                m.up.bias.normal_(0, 0.3)
    return pristine, block


def _adapters(module) -> list:
    return [m for m in module.modules() if type(m).__name__ == "BottleneckAdapter"]


@torch.no_grad()
def test_meft1_ffn_adapter_reads_the_attention_output_and_adds_in_parallel_before_the_layernorm():
    layer, block = _prepared("meft1")
    x = torch.randn(2, 7, 32, generator=torch.Generator().manual_seed(0))
    (adapter,) = _adapters(block.f)  # F is the whole layer with its FFN adapter; G is MEFT1's standalone adapter
    a = _ln(_self_attention(x, layer, heads=4) + x, layer.attention.output.LayerNorm)  # attention sub-layer output
    expected = _ln(_ffn(a, layer) + _adapter(a, adapter) + a, layer.output.LayerNorm)
    got = block.f(x, attention_mask=None)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    (g_adapter,) = _adapters(block.g)
    torch.testing.assert_close(block.g(x), _adapter(x, g_adapter), rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_meft3_series_adapter_after_attention_and_parallel_adapter_beside_the_ffn():
    layer, block = _prepared("meft3")
    x = torch.randn(2, 7, 32, generator=torch.Generator().manual_seed(1))
    (attn_adapter,) = _adapters(block.f)  # F: the attention sub-layer, G: the FFN sub-layer
    (ffn_adapter,) = _adapters(block.g)
    h = _self_attention(x, layer, heads=4)
    expected_f = _ln(h + _adapter(h, attn_adapter) + x, layer.attention.output.LayerNorm)
    torch.testing.assert_close(block.f(x, attention_mask=None), expected_f, rtol=1e-5, atol=1e-5)
    expected_g = _ln(_ffn(x, layer) + _adapter(x, ffn_adapter) + x, layer.output.LayerNorm)
    torch.testing.assert_close(block.g(x), expected_g, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", ["meft1", "meft3"])
@torch.no_grad()
def test_the_adapters_matter_to_the_formula(variant):
    """Guards the test itself: with the adapters' contribution left out, the formula no longer matches F."""
    layer, block = _prepared(variant)
    x = torch.randn(2, 7, 32, generator=torch.Generator().manual_seed(2))
    a = _ln(_self_attention(x, layer, heads=4) + x, layer.attention.output.LayerNorm)
    plain = _ln(_ffn(a, layer) + a, layer.output.LayerNorm) if variant == "meft1" else a
    assert (block.f(x, attention_mask=None) - plain).abs().max() > 1e-2
