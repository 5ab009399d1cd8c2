"""The bottleneck adapter and the wrapper that plugs it into a post-LN output sub-block.

One adapter serves the "adapter" baseline (Houlsby / Pfeiffer / parallel placement) and every MEFT variant
(docs/method.md §3): Adapter(x) = W_up · Dropout(act(W_down · x + b_d)) + b_u, no internal residual.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.activations import ACT2FN


class BottleneckAdapter(nn.Module):
    """d -> r -> d bottleneck. Weights ~ N(0, init_std^2), biases 0 (the paper's init; not zero-init)."""

    def __init__(self, hidden_size: int, bottleneck: int, *, act: str = "gelu", dropout: float = 0.1,
                 init_std: float = 0.02) -> None:
        super().__init__()
        self.down = nn.Linear(hidden_size, bottleneck)
        self.act = ACT2FN[act] if isinstance(act, str) else act
        self.dropout = nn.Dropout(dropout)
        self.up = nn.Linear(bottleneck, hidden_size)
        for lin in (self.down, self.up):
            nn.init.normal_(lin.weight, std=init_std)
            nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, d) -> (B, T, d)
        return self.up(self.dropout(self.act(self.down(x))))


class AdaptedOutput(nn.Module):
    """Wraps a post-LN output sub-block (dense -> dropout -> LayerNorm(h + residual)) with an adapter.

    mode "series":   h = dropout(dense(x)); h = h + A(h); LN(h + residual)   (Houlsby / Pfeiffer; MEFT3's attention)
    mode "parallel": h = dropout(dense(x)) + A(residual); LN(h + residual)    (MEFT's FFN adapter)
    The base sub-block is kept by reference (`self.base`), never copied.
    """

    def __init__(self, base: nn.Module, adapter: BottleneckAdapter, mode: str) -> None:
        super().__init__()
        if mode not in ("series", "parallel"):
            raise ValueError(f"mode={mode!r}: must be 'series' or 'parallel'")
        self.base = base
        self.adapter = adapter
        self.mode = mode

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        h = self.base.dropout(self.base.dense(hidden_states))  # (B, T, d)
        h = h + self.adapter(h if self.mode == "series" else input_tensor)
        return self.base.LayerNorm(h + input_tensor)


def adapter_for(base: nn.Module, bottleneck: int, init_std: float) -> BottleneckAdapter:
    """An adapter sized, activated and placed like the backbone (its activation, hidden dropout, dtype, device)."""
    config = base.config
    like = next(base.parameters())
    act = getattr(config, "hidden_act", None) or getattr(config, "activation_function", None) or "gelu"
    dropout = next((getattr(config, k) for k in ("hidden_dropout_prob", "dropout") if hasattr(config, k)), 0.0)
    return BottleneckAdapter(config.hidden_size, bottleneck, act=act, dropout=dropout, init_std=init_std).to(
        device=like.device, dtype=like.dtype
    )
