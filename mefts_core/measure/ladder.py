"""Activation memory of ladder side-tuning (LST, mefts_core.methods.lst), counted the way activations.py counts a
layer: what autograd keeps, and the peak over forward and backward.

The backbone runs under no_grad, so none of its activations are kept; its layer outputs h_0 (the embeddings) .. h_N
are, because the ladders' down-projections train and save their inputs. The side network is N layers of the
backbone's class at width d' = d/r (FFN I/r, h' heads), every weight and bias trained, fed by gated ladders:

    x_i = μ_i · down_i(h_i) + (1 − μ_i) · s_{i−1},   s_i = side_i(x_i),   last hidden state = up(s_N)

With n = B·T tokens and e the element size it saves

    (N + 1)·n·d·e          [the ladders' inputs h_0 .. h_N]
    + N·(2·n·d'·e + e)     [per gate: down_i(h_i) for μ_i's grad, s_{i−1} for (1 − μ_i)'s, the scalar 1 − μ_i]
    + N·e                  [μ, the sigmoid's output]
    + N·(a full layer at d', I', h')  + n·d'·e [up's input]  + the head

A side layer keeps the backbone's head count when d' allows it, so on the math attention path (CPU) its B·h'·T²
tensors are as large as a full layer's: at short widths they, not the ladders, dominate.

Not modelled: the backbone's own no-grad forward, one layer's working set beside the ladder inputs gathered so far.
On CPU it never sets the peak (each side layer stores scores as large as the backbone's transient ones); with a fused
attention kernel (CUDA) and a large r it could, and the estimate would then be low.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from mefts_core.measure.activations import Shape, _head, _layer
from mefts_core.methods.lst import side_width
from mefts_core.methods.registry import LayerTraining

# every weight and bias of a side layer trains, and its input (a ladder's gated sum) needs grad
_SIDE_LAYER = LayerTraining(weights=frozenset("qkvoif"), biases=True)


def side_shape(s: Shape, r: int) -> Shape:
    """The side network's shape: the batch's tokens at width d/r, FFN I/r, h' heads (mefts_core.methods.lst)."""
    d, inner, heads = side_width(s.d, s.I, s.h, r)
    return replace(s, d=d, I=inner, h=heads, P=0)


def ladder_bytes(s: Shape, r: int, shape: dict[str, Any], num_labels: int) -> tuple[dict[str, float], float, float]:
    """(the named parts of the stored activations, stored bytes, the activation peak) of one LST step."""
    n_layers = shape["layers"]
    side = side_shape(s, r)
    top = _layer(side, _SIDE_LAYER, True)
    gate = 2 * side.nd() + s.e  # down_i(h_i), s_{i-1} (n·d' each) and the scalar 1 − μ_i
    terms = {
        "ladder_inputs": (n_layers + 1) * s.nd(),
        "ladder_gates": n_layers * (gate + s.e),  # + μ_i, the sigmoid's output
        "side_layers": n_layers * (top["saved"] + top["x_saved"]),
        "up": side.nd(),
        "head": _head(s, False, num_labels),
    }
    stored = sum(terms.values())
    # the top side layer's backward or forward moment, or the end of forward: up's output (the last hidden state,
    # n·d, which the frozen pooler does not save) is alive beside everything stored until the model returns
    peak = stored + max(top["transient"], top["forward"] - terms["head"], s.nd())
    return terms, stored, peak
