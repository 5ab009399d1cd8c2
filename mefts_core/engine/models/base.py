"""Family-independent plumbing: layers rebuilt from pieces, and the reversible stack installed in a model's own loop.

A family (bert.py, bart.py, decoders.py) turns one HF layer into pieces: the attention side (self-attention, and
cross-attention in a decoder) and the FFN side, each a module called as piece(x, **ctx) -> x that may carry an
adapter. The model's own layer loop is kept: its first reversible layer becomes a `StackEntry` that runs the whole
reversible stack, the other reversible layers become `Passthrough`, and non-reversible layers become `PiecesLayer`.
Keeping the model's loop keeps its embeddings, mask construction, rotary embeddings, final norm and heads as they are.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from torch import nn

# Auto token chunking of token-wise pieces (the FFN): tokens per chunk along the sequence, at any batch.
AUTO_TOKENS = 128


def token_chunk(seq_len: int, chunk_tokens: int | str) -> int:
    """Tokens per chunk along the sequence: `chunk_tokens`, AUTO_TOKENS for "auto", the whole sequence for 0."""
    if chunk_tokens == "auto":
        return min(seq_len, AUTO_TOKENS)
    return min(seq_len, int(chunk_tokens)) if chunk_tokens else seq_len


def piece_chunks(piece: nn.Module, x: torch.Tensor, chunk_tokens: int | str) -> list[slice] | None:
    """The token slices a token-wise piece runs on (None: run it whole). x: (B, T, d)."""
    if not getattr(piece, "tokenwise", False) or not chunk_tokens:
        return None
    c = token_chunk(x.shape[1], chunk_tokens)
    return None if c >= x.shape[1] else [slice(s, s + c) for s in range(0, x.shape[1], c)]


def run_piece(piece: nn.Module, x: torch.Tensor, ctx: dict, chunk_tokens: int | str) -> torch.Tensor:
    """piece(x, **ctx), token chunk by token chunk for a token-wise piece: the same bits wherever it runs (forward,
    the reversible recompute, the plain-autograd reference), since every path cuts at the same boundaries."""
    slices = piece_chunks(piece, x, chunk_tokens)
    if slices is None:
        return piece(x, **ctx)
    if torch.is_grad_enabled():
        return torch.cat([piece(token_slice(x, sl), **ctx) for sl in slices], dim=1)  # (B, T, d)
    out = torch.empty_like(x)
    for sl in slices:
        out[:, sl] = piece(token_slice(x, sl), **ctx)
    return out


def token_slice(x: torch.Tensor, sl: slice) -> torch.Tensor:
    """x[:, sl] as a contiguous (B, c, d) tensor: a linear on the strided slice would run as a batched matmul with
    the weight expanded per sequence, several times slower than one matmul."""
    return x[:, sl].contiguous()


class Chain(nn.Module):
    """Pieces applied in order. `pieces` lets the reversible backward recompute one piece at a time; token-wise pieces
    (attribute `tokenwise`) run in chunks of `chunk_tokens` tokens (0: whole, "auto": sized from the batch)."""

    def __init__(self, pieces: Sequence[nn.Module], chunk_tokens: int | str = 0) -> None:
        super().__init__()
        self.pieces = nn.ModuleList(pieces)
        self.chunk_tokens = chunk_tokens

    def forward(self, x: torch.Tensor, **ctx) -> torch.Tensor:
        return run_pieces(self.pieces, x, ctx, self.chunk_tokens)  # (B, T, d)


def run_pieces(pieces, x: torch.Tensor, ctx: dict, chunk_tokens: int | str) -> torch.Tensor:
    """Pieces in order, each through `run_piece` (Chain.forward, and the reversible recompute's stages)."""
    for piece in pieces:
        x = run_piece(piece, x, ctx, chunk_tokens)
    return x


class AdapterCall(nn.Module):
    """A standalone adapter as F or G (MEFT1's G, MEFT2's F); it ignores the layer context."""

    def __init__(self, adapter: nn.Module) -> None:
        super().__init__()
        self.adapter = adapter

    def forward(self, x: torch.Tensor, **ctx) -> torch.Tensor:
        return self.adapter(x)


class _CallBinder:
    """Maps the model loop's call of a layer, layer(hidden, *args, **kwargs), to the context the pieces take."""

    def __init__(self, layer: nn.Module, keys: Sequence[str]) -> None:
        self.signature = inspect.signature(type(layer).forward)
        self.keys = tuple(keys)

    def __call__(self, hidden: torch.Tensor, args: tuple, kwargs: dict) -> dict:
        bound = self.signature.bind(None, hidden, *args, **kwargs).arguments
        extra = next((v for k, v in bound.items() if k == "kwargs" and isinstance(v, dict)), {})
        merged = {**extra, **bound}
        return {k: merged[k] for k in self.keys if merged.get(k) is not None}


class PiecesLayer(nn.Module):
    """A non-reversible layer rebuilt from its pieces (so that adapters sit in it), called like the original."""

    def __init__(self, layer: nn.Module, chain: Chain, keys: Sequence[str]) -> None:
        super().__init__()
        self.chain = chain
        self._bind = _CallBinder(layer, keys)

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return self.chain(hidden_states, **self._bind(hidden_states, args, kwargs))


class StackEntry(nn.Module):
    """Stands in for the lowest reversible layer: runs the whole reversible stack and merges its two streams."""

    def __init__(self, layer: nn.Module, stack: nn.Module, merge: nn.Module, keys: Sequence[str]) -> None:
        super().__init__()
        self.stack = stack
        self.merge = merge
        self._bind = _CallBinder(layer, keys)

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        ctx = self._bind(hidden_states, args, kwargs)
        return self.stack(hidden_states, merge=self.merge, **ctx)  # (B, T, d)


class Passthrough(nn.Module):
    """A reversible layer whose work the StackEntry below it already did."""

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return hidden_states


def install(layers: nn.ModuleList, n_rev: int, stack: nn.Module | None, merge: nn.Module | None,
            upper: Sequence[Chain], keys: Sequence[str]) -> None:
    """Replace `layers` in place: entry + passthroughs for the lowest n_rev, PiecesLayer for the rest."""
    originals = list(layers)
    for i, layer in enumerate(originals):
        if i < n_rev:
            layers[i] = StackEntry(layer, stack, merge, keys) if i == 0 else Passthrough()
        else:
            layers[i] = PiecesLayer(layer, upper[i - n_rev], keys)
