"""Query-chunked attention with dropout: the (B, heads, T, S) scores never exist whole, in forward or backward.

On CPU, PyTorch's fused (flash) attention takes no dropout, so HF's `sdpa` falls back to the math path in training,
which materialises and saves the scores, the softmax, the dropout mask and the dropped probabilities: four
(B, heads, T, S) tensors per layer, the largest transient of a reversible backward at long sequences. This kernel
saves only q, k, v (and the mask): forward and backward run a chunk of queries at a time against the full keys and
values, and backward recomputes each chunk's probabilities from a per-chunk dropout seed, so the masks are the same
bits. Where a fused kernel handles the case (CUDA's memory-efficient kernel takes dropout; no dropout anywhere), the
call goes to SDPA unchanged.

It is registered with transformers' attention interfaces as "mefts_chunked" (masks are built as for "sdpa"), and
`use_chunked_attention(model, chunk_tokens)` switches a model to it. Every family in mefts calls its attention
through that interface, so one kernel serves BERT, RoBERTa, BART, OPT and Llama.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "mefts_chunked"
_SEED_MOD = 2**62
# Auto chunking: queries per chunk. A fixed count keeps the scores at AUTO_QUERIES/T of the unchunked ones at any batch.
# 48 rows per (batch, head) keeps CPU batched matmuls near full speed (32 costs ~20% more attention time, 128 saves
# ~10%) while a chunk's three score-sized temporaries stay under one hidden state at BERT-base's d/h = 64.
AUTO_QUERIES = 48


def attention_chunk(q_len: int, chunk_tokens: int | str) -> int:
    """Queries per chunk: `chunk_tokens`, AUTO_QUERIES for "auto", the whole sequence for 0."""
    if chunk_tokens == "auto":
        return min(q_len, AUTO_QUERIES)
    return min(q_len, int(chunk_tokens)) if chunk_tokens else q_len


def _chunk_probs(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None, scale: float, causal: bool,
                 start: int) -> torch.Tensor:
    """softmax(q kᵀ·scale + mask) for one chunk of queries: q (B, h, c, e), k (B, h, S, e) -> (B, h, c, S)."""
    scores = torch.matmul(q, k.transpose(-1, -2)).mul_(scale)  # (B, h, c, S)
    if causal:
        rows = torch.arange(start, start + q.shape[-2], device=q.device)[:, None]
        scores.masked_fill_(torch.arange(k.shape[-2], device=q.device)[None, :] > rows, torch.finfo(q.dtype).min)
    if mask is not None:
        m = mask[..., start : start + q.shape[-2], :] if mask.shape[-2] > 1 else mask
        if m.dtype == torch.bool:
            scores.masked_fill_(~m, torch.finfo(q.dtype).min)
        else:
            scores.add_(m)
    return torch.softmax(scores, dim=-1)


def _dropped(like: torch.Tensor, p: float, seed: int, chunk: int) -> tuple[torch.Tensor, float]:
    """The dropout mask of one chunk (bool, True = dropped, shaped like `like`) and the 1/(1-p) scale: a function of
    (seed, chunk) only. Each 64-bit draw gives four 16-bit uniforms, so p is rounded to a multiple of 2^-16
    (0.1 -> 0.100006): about a third of the generator time of one float draw per element, which dominates attention's
    dropout on CPU."""
    gen = torch.Generator(device=like.device).manual_seed((seed + chunk) % _SEED_MOD)
    n = like.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=like.device).random_(-(2**63), None, generator=gen)
    cut = round(p * 65536)
    drop = words.view(torch.int16)[:n].view(like.shape) < cut - 32768  # (B, h, c, S)
    return drop, 65536 / (65536 - cut)


def _dropout_(t: torch.Tensor, drop: torch.Tensor, scale: float) -> torch.Tensor:
    """In place: zero the dropped entries and scale the rest (the same ops on probabilities and their gradient)."""
    return t.masked_fill_(drop, 0.0).mul_(scale)


class _ChunkedAttention(torch.autograd.Function):
    """q (B, h, T, e), k/v (B, h, S, e) -> (B, h, T, e). Saves q, k, v and the mask only."""

    @staticmethod
    def forward(ctx, q, k, v, mask, scale: float, p: float, causal: bool, chunk: int, seed: int):
        out = torch.empty(*q.shape[:-1], v.shape[-1], dtype=q.dtype, device=q.device)
        for j, s in enumerate(range(0, q.shape[-2], chunk)):
            probs = _chunk_probs(q[..., s : s + chunk, :].contiguous(), k, mask, scale, causal, s)
            if p > 0:
                _dropout_(probs, *_dropped(probs, p, seed, j))
            torch.matmul(probs, v, out=out[..., s : s + chunk, :])
        ctx.save_for_backward(q, k, v, mask)
        ctx.args = (scale, p, causal, chunk, seed)
        return out

    @staticmethod
    def backward(ctx, dout):
        """Per chunk, three (B, h, c, S) tensors at most: the probabilities, their gradient and the dropout mask."""
        q, k, v, mask = ctx.saved_tensors
        scale, p, causal, chunk, seed = ctx.args
        dq, dk, dv = torch.empty_like(q), torch.zeros_like(k), torch.zeros_like(v)
        for j, s in enumerate(range(0, q.shape[-2], chunk)):
            # q and dout are transposed views of (B, T, h, e): batched matmuls on them would be slow
            qc, doc = q[..., s : s + chunk, :].contiguous(), dout[..., s : s + chunk, :].contiguous()  # (B, h, c, e)
            probs = _chunk_probs(qc, k, mask, scale, causal, s)  # (B, h, c, S)
            drop, kscale = _dropped(probs, p, seed, j) if p > 0 else (None, 1.0)  # its random words freed before dp
            dp = torch.matmul(doc, v.transpose(-1, -2))  # d(dropped probs)
            if drop is not None:
                _dropout_(dp, drop, kscale)
            # softmax backward, in dp's storage: ds = P ⊙ (dP − rowsum(dP ⊙ P)) · scale
            rowsum = torch.matmul(dp.unsqueeze(-2), probs.unsqueeze(-1)).squeeze(-1)  # (B, h, c, 1), no c×S temp
            ds = dp.sub_(rowsum).mul_(probs).mul_(scale)
            dropped = probs if drop is None else _dropout_(probs, drop, kscale)  # probs are no longer needed
            dv.add_(torch.matmul(dropped.transpose(-1, -2), doc))
            del probs, dropped, drop
            torch.matmul(ds, k, out=dq[..., s : s + chunk, :])
            dk.add_(torch.matmul(ds.transpose(-1, -2), qc))
        return dq, dk, dv, None, None, None, None, None, None


def chunked_attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                              attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                              is_causal: bool | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """The transformers attention-interface signature: (B, h, T, e) inputs -> ((B, T, h, e), None)."""
    if query.device.type != "cpu" or dropout == 0.0 or kwargs.get("position_bias") is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    causal = bool(is_causal if is_causal is not None else getattr(module, "is_causal", False))
    causal = causal and attention_mask is None and query.shape[-2] > 1
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    chunk = attention_chunk(query.shape[-2], getattr(module.config, "mefts_chunk_tokens", "auto"))
    # one draw from the global generator: the reversible replay restores it, so the recompute gets the same seed
    seed = int(torch.randint(0, _SEED_MOD, (1,)).item())
    # HF hands over transposed views of (B, T, h, e); batched matmuls on them are several times slower. Keys and
    # values are read whole by every chunk: copied once; queries a chunk at a time (HF's tensor stays alive anyway).
    key, value = key.contiguous(), value.contiguous()
    out = _ChunkedAttention.apply(query, key, value, attention_mask, float(scale), float(dropout), causal, chunk,
                                  seed)
    return out.transpose(1, 2).contiguous(), None  # (B, T, h, e)


AttentionInterface.register(NAME, chunked_attention_forward)
AttentionMaskInterface.register(NAME, sdpa_mask)


def use_chunked_attention(model: nn.Module, chunk_tokens: int | str) -> None:
    """Switch every attention of `model` to the chunked kernel (`chunk_tokens`: queries per chunk, or "auto")."""
    model.config.mefts_chunk_tokens = chunk_tokens
    model.config._attn_implementation = NAME
