"""Activation memory of one training step, counted analytically: what autograd keeps from forward to backward, and
the peak over forward and backward (mefts_core.measure.estimate adds parameters, gradients and optimizer state).

Activations are counted from the config (d = hidden, I = intermediate, h = heads, L = layers, V = vocab) by walking
one layer the way autograd does: an op saves a tensor for backward only when the gradient it feeds is needed (a linear
saves its input when its weight trains; a matmul saves each operand when the other one needs a gradient; softmax
saves its output; dropout its mask; GELU and LayerNorm their inputs, LayerNorm also mean and rstd). With n = B·T
tokens, A = B·h·T² attention scores, e the element size and m the dropout-mask element size (CPU: e; CUDA: 1, a
bool), a fully trained BERT layer with the CPU's attention (SDPA's math path, which materialises the scores) saves

    n·d·(6e + 2m) [q, k, v and context copies, residual sums, LayerNorm outputs; two hidden-dropout masks]
    + 2·n·I·e     [GELU input and output]     + A·(2e + m) [softmax output, dropout mask, dropped probabilities]
    + 4·n·4       [two LayerNorms' mean and rstd]

and a frozen one with LoRA on q and v saves less (no weight grads: linear inputs drop out, except where LoRA reads
them). On CUDA, SDPA's fused kernels save q, k, v, the output and a log-sum-exp instead of the A-sized tensors.

The peers change the walk in a few places, each a tensor autograd keeps:
- prefix-tuning: P trained key/value positions before every layer's own, so each query sees T + P keys
  (A = B·h·T·(T + P); the keys and values saved are B·(T + P)·d) and they need grad in every layer, even the first;
  with prefix_projection the MLP runs again in every layer and saves its input (P, d) and tanh output (P, H);
- (IA)³: linear(x)·l on the keys and values, GELU-out·l before the FFN's second linear; each product saves the
  unscaled tensor for l's grad (n·d, n·d, n·I) and, once its input needs grad, the vector l;
- LST (mefts_core.measure.ladder): no backbone activation, but the ladders' inputs and a narrow side network.

The activation peak is the stored activations plus the largest transient of backward:
- plain autograd: the top layer's FFN backward (dL/dGELU-out and dL/dGELU-in alive together, 2·n·I·e, plus a few
  n·d grads) or its attention backward (2·A·e); full FT also has the dense word-embedding gradient (V·d·e) at the end;
- gradient checkpointing: the layer inputs, plus one layer recomputed with everything it saves, plus its transient;
- MEFT: the top state (two n·d streams; int64 in exact mode) and exact mode's remainder buffers (one per scaled
  stream per layer, 4 bits per element for λ = 1/10), plus, inside the reversible backward, the current state, the
  stream gradients and one piece (attention or FFN sub-block) recomputed with its own transient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from mefts_core.methods.registry import LayerTraining

# ------------------------------------------------------------------------------------------------ shapes


@dataclass(frozen=True)
class Shape:
    B: int
    T: int
    d: int
    I: int  # noqa: E741  (the FFN width)
    h: int
    e: int  # element bytes
    m: int  # dropout-mask element bytes
    p_hidden: float
    p_attn: float
    fused_attention: bool
    P: int = 0  # key/value positions before the tokens' own (prefix-tuning)

    @property
    def n(self) -> int:
        """Tokens: B·T."""
        return self.B * self.T

    @property
    def A(self) -> int:  # noqa: N802  (the equations' name)
        """Attention scores: B·h·T·(T + P), each query against its T + P keys."""
        return self.B * self.h * self.T * (self.T + self.P)

    def nd(self, k: float = 1.0) -> float:
        return k * self.n * self.d * self.e

    def kv(self) -> float:
        """Bytes of one layer's keys (or values) as attention reads them: B·(T + P)·d."""
        return self.B * (self.T + self.P) * self.d * self.e


# ------------------------------------------------------------------------------------------------ one BERT layer


def _adapter_saved(s: Shape, r: int, input_saved: bool) -> float:
    """A bottleneck adapter: its input (down's weight trains), GELU input, dropout mask, dropped (up's input)."""
    mask = s.n * r * s.m if s.p_hidden > 0 else 0
    return (s.nd() if input_saved else 0) + 2 * s.n * r * s.e + mask


def _attn_saved(s: Shape, t: LayerTraining, x_rg: bool) -> tuple[dict[str, float], bool]:
    """Tensors the attention sub-block saves (BertSelfAttention + BertSelfOutput) and whether its output needs grad.
    `x` (the sub-block input) is reported under "x" when something saves it."""
    lora = {name: (r, p) for name, r, p in t.lora}
    out: dict[str, float] = {}
    # a trained prefix makes the (concatenated) keys and values need grad even where the layer's own do not
    rg = {k: x_rg or k in t.weights or t.biases or k in lora or k in t.ia3 or (k in "kv" and t.prefix > 0)
          for k in "qkv"}
    if any(k in t.weights for k in "qkv") or any(k in lora for k in "qkv"):
        out["x"] = s.nd()
    for k, (r, p) in lora.items():
        if k in "qkvo":
            out[f"lora_{k}"] = s.n * r * s.e + (s.nd() + s.n * s.d * s.m if p > 0 else 0)
    for k in "kv":
        if k in t.ia3:  # (IA)³: linear(x)·l saves linear(x) for l's grad, and l (d wide) when x needs grad
            out[f"ia3_{k}"] = s.nd() + (s.d * s.e if x_rg else 0)
    if t.prefix_mlp:  # every layer runs the prefix MLP again: Linear 1's input (P, d) and the tanh output (P, H)
        out["prefix_mlp"] = t.prefix * (s.d + t.prefix_mlp) * s.e
    scores_rg = rg["q"] or rg["k"]
    if s.fused_attention:
        if scores_rg or rg["v"]:  # q, k, v, output, log-sum-exp (fp32, padded to 32 rows)
            out["sdpa"] = s.nd(2) + 2 * s.kv() + s.B * s.h * (math.ceil(s.T / 32) * 32) * 4
    else:
        if rg["k"]:
            out["q"] = s.nd()
        if rg["q"]:
            out["k"] = s.kv()
        if scores_rg:
            out["probs"] = s.A * s.e
            if s.p_attn > 0:
                out["attn_mask"] = s.A * s.m
        if rg["v"]:
            out["dropped_probs"] = s.A * s.e
        if scores_rg:
            out["v"] = s.kv()
    ctx_rg = scores_rg or rg["v"]
    o_rg = ctx_rg or "o" in t.weights or t.biases or "o" in lora
    if "o" in lora or ("o" in t.weights and "sdpa" not in out):
        # the output projection's input; a fused kernel's output, which it saves anyway, is that same storage
        # (a view), so a trained projection adds nothing there (LoRA's adapter input is a copy, measured on an H100)
        out["context"] = s.nd()
    if o_rg and s.p_hidden > 0:
        out["hidden_mask1"] = s.nd() * s.m / s.e
    if t.attn_adapter:
        out["attn_adapter"] = _adapter_saved(s, t.attn_adapter, True)
        o_rg = True
    add_rg = o_rg or x_rg
    ln_rg = add_rg or t.biases
    if ln_rg:
        out["ln1_in"] = s.nd() + 2 * s.n * 4
    return out, ln_rg


def _ffn_saved(s: Shape, t: LayerTraining, x_rg: bool) -> tuple[dict[str, float], bool]:
    """Tensors the FFN sub-block (BertIntermediate + BertOutput, with its adapter) saves; its output needs grad?"""
    lora = {name: (r, p) for name, r, p in t.lora}
    out: dict[str, float] = {}
    i_rg = x_rg or "i" in t.weights or t.biases or "i" in lora
    if "i" in t.weights or "i" in lora or (t.ffn_adapter and t.ffn_mode == "parallel"):
        out["x"] = s.nd()
    if i_rg:
        out["gelu_in"] = s.n * s.I * s.e
    if "f" in t.weights or "f" in lora or "f" in t.ia3:  # (IA)³: GELU-out·l saves GELU-out for l's grad
        out["gelu_out"] = s.n * s.I * s.e
    if "f" in t.ia3 and i_rg:  # ... and l (I wide) for GELU-out's
        out["ia3_f"] = s.I * s.e
    for k, (r, p) in lora.items():
        if k in "if":
            out[f"lora_{k}"] = s.n * r * s.e + (s.n * (s.d if k == "i" else s.I) * (s.e + s.m) if p > 0 else 0)
    f_rg = i_rg or "f" in t.weights or t.biases or "f" in lora or "f" in t.ia3
    if f_rg and s.p_hidden > 0:
        out["hidden_mask2"] = s.nd() * s.m / s.e
    if t.ffn_adapter:
        series = t.ffn_mode == "series"
        out["ffn_adapter"] = _adapter_saved(s, t.ffn_adapter, series)
        f_rg = True
    ln_rg = f_rg or x_rg or t.biases
    if ln_rg:
        out["ln2_in"] = s.nd() + 2 * s.n * 4
    return out, ln_rg


def _ffn_transient(s: Shape, t: LayerTraining, saved: dict[str, float]) -> float:
    """Rise above everything saved during the FFN sub-block's backward. Two moments:
    - the output dense's backward: LayerNorm 2's input and the dropout mask are freed; the residual grad and dL/df
      are alive (2 n·d) with the new dL/dGELU-out (n·I) and, when its weight trains, a d·I weight-grad temporary;
    - GELU's backward: dL/dGELU-out and dL/dGELU-in together (2 n·I) beside the residual grad, with the GELU output
      (if saved) freed;
    - (IA)³'s GELU-out·l backward, between the two: the incoming grad g, g·l (dL/dGELU-out) and g·GELU-out (before
      its sum to l's shape), 3 n·I, beside the residual grad."""
    freed = saved.get("ln2_in", 0.0) + saved.get("hidden_mask2", 0.0)
    at_dense = -freed + s.nd(2) + s.n * s.I * s.e + (s.d * s.I * s.e if "f" in t.weights else 0)
    at_gelu = -freed - saved.get("gelu_out", 0.0) + s.nd() + 2 * s.n * s.I * s.e
    at_scale = -freed + s.nd() + 3 * s.n * s.I * s.e if "f" in t.ia3 else -math.inf
    return max(at_dense, at_gelu, at_scale)


def _attn_transient(s: Shape) -> float:
    """Attention backward, at the probs·V matmul: dL/d(dropped probs) (math path only) beside three grads (the
    input's accumulating grad and the context grad, n·d each, and dL/dV, with a prefix's P positions); everything
    the sub-block saved is still alive."""
    return s.nd(2) + s.kv() + (0 if s.fused_attention else s.A * s.e)


def _layer(s: Shape, t: LayerTraining, x_rg: bool) -> dict[str, Any]:
    """One layer: saved bytes (without its input), saved input bytes, the backward transient of the layer (top
    layer: its FFN or attention backward), the forward transient at its last op, and whether its output needs grad.

    The forward transient is what is alive but not saved when the top layer's LayerNorm 2 runs: the layer input and
    LayerNorm 1's output (when nothing saves them), the GELU output (an argument of the output sub-block until it
    returns), the FFN's dropped output (or a series adapter's sum), and the new output."""
    a, a_rg = _attn_saved(s, t, x_rg)
    f, f_rg = _ffn_saved(s, t, a_rg)
    x_saved = a.pop("x", 0.0)
    ln1_out = f.pop("x", 0.0)  # the attention sub-block's output (LayerNorm 1's output), if the FFN saves it
    saved = sum(a.values()) + sum(f.values()) + ln1_out
    ffn_in_saved = sum(f.values()) + ln1_out
    transient = max(_ffn_transient(s, t, f), _attn_transient(s) - ffn_in_saved)
    forward = ((0 if x_saved else s.nd()) + (0 if ln1_out else s.nd()) + s.nd()
               + (0 if "gelu_out" in f else s.n * s.I * s.e)
               + s.nd())  # the FFN's dropped output (a series adapter saves it, but then its sum is alive)
    return {"saved": saved, "x_saved": x_saved, "transient": transient, "forward": forward, "out_rg": f_rg}


# ------------------------------------------------------------------------------------------------ the model


def _embeddings(s: Shape, out_rg: bool, weights_train: bool, positions: int) -> float:
    """Embeddings: LayerNorm input and stats, dropout mask, the output; indices when the tables train."""
    if not out_rg:
        return 0.0
    saved = s.nd() + 2 * s.n * 4 + (s.nd() * s.m / s.e if s.p_hidden > 0 else 0)
    if weights_train:
        saved += s.n * 8 + positions * 8 + s.T * 8  # token ids, the position-id buffer, token-type ids
    return saved


def _head(s: Shape, pooler_trains: bool, labels: int) -> float:
    """Pooler (tanh output; its input, a view that keeps the last hidden state alive, when it trains), classifier
    dropout mask and input, log-softmax output and labels."""
    saved = 2 * s.B * s.d * s.e + s.B * s.d * s.m + s.B * labels * s.e + s.B * 8
    return saved + (s.nd() if pooler_trains else 0)


def _meft(s: Shape, t: LayerTraining, opts: Any, n_layers: int) -> dict[str, float]:
    """Stored bytes and the backward peak of the reversible stack (mefts_core.engine.reversible), in bytes.

    Stored: the top state (two n·d streams; int64 in exact mode), exact mode's remainder buffers (one per scaled
    stream per layer, 4 bits per element for λ = 1/10) and any checkpointed states. The peak is the largest of a few
    moments of one layer's backward (u = one n·d float tensor, w = one n·d stream tensor):
    - always: the head's and the merge's gradients, held until the stack's backward returns (3u);
    - the first function inverted (G; MEFT2's G is the whole layer): the layer's output state (2w), its gradients
      (2u) and the decoded input (u), plus the function's recompute;
    - the second (F): the other output stream and the rebuilt one (2w), dy1 and the bypass gradient (2u), the
      decoded input (u), plus F's recompute;
    - exact mode, after F: rounding F's output to fixed point (its float copy u and int64 result w).
    A whole layer recomputed with chunking on (`_chain`): the attention piece's graph, alive while the FFN runs one
    token chunk at a time (its output and input gradient are full n·d tensors, 2u), then the attention backward.
    """
    from fractions import Fraction

    exact = opts.recompute == "exact"
    u, w = s.nd(), s.n * s.d * (8 if exact else s.e)
    n_rev = n_layers if opts.reversible_layers is None else min(opts.reversible_layers, n_layers)
    buffers = 0.0
    if exact:
        for f in (opts.lam, opts.beta):
            q = Fraction(f).limit_denominator(256).denominator
            if q > 1:
                buffers += n_rev * s.n * s.d * (0.5 if q <= 16 and s.d % 2 == 0 else 1)
    k = int(opts.recompute.split("=")[1]) if opts.recompute.startswith("checkpoint_every=") else 0
    checkpoints = ((n_rev - 1) // k) * 2 * w if k else 0.0
    stored = 2 * w + buffers + checkpoints

    attn_saved, attn_tr = _meft_attention(s, t, opts.chunk_tokens)
    ffn, _ = _ffn_saved(s, t, True)
    ffn.pop("x", None)
    ffn_work = sum(ffn.values()) + _ffn_transient(s, t, ffn)  # one FFN recomputed whole, at its backward's peak
    from mefts_core.engine.models.base import token_chunk

    chunk = token_chunk(s.T, opts.chunk_tokens)
    ffn_chunk = ffn_work * chunk / s.T + (2 * u if chunk < s.T else 0.0)  # + its full-size output and input grad
    adapter = _adapter_saved(s, t.ffn_adapter, True) + 3 * u
    attn_work = attn_saved + attn_tr + u  # + the piece's output
    if opts.recompute_unit == "layer":  # one graph for the attention side, alive while the FFN runs
        chain = attn_saved + u + max(ffn_chunk, attn_tr + u)
    else:  # one piece at a time, after a no-graph pass that keeps the attention piece's output
        chain = max(u + ffn_chunk, attn_work)

    first = 3 * u + 2 * w + 3 * u  # head/merge grads; the output state, its grads and the decoded input
    # head/merge grads; the other stream and the rebuilt one, dy1 and seed, and the decoded input, which a whole-layer
    # recompute frees once its graph is built (no frozen linear saves it)
    second = 3 * u + 2 * w + (2 * u if opts.recompute_unit == "layer" else 3 * u)
    if opts.variant == "meft1":
        moments = [first + adapter, second + chain]
    elif opts.variant == "meft2":
        moments = [first + chain, second + adapter]
    else:
        moments = [first + ffn_chunk, second + attn_work]
    if exact:  # rounding F's output to fixed point: its float copy and the int64 result, beside F's output
        moments.append(3 * u + 3 * w + 4 * u)
    return {"stored": stored, "top": 2 * w, "working": max(moments), "moments": moments}


def _meft_attention(s: Shape, t: LayerTraining, chunk_tokens: int | str) -> tuple[float, float]:
    """(saved, backward transient) of a MEFT layer's attention piece recomputed with grad. With chunking on a CPU with
    attention dropout, the chunked kernel (mefts_core.engine.attention) saves q, k, v and its backward holds dq, dk, dv, one
    chunk of the output gradient and three (B, h, chunk, T) tensors (probabilities, their gradient, the mask with its
    random words); otherwise SDPA's math or fused path as for the other methods."""
    from mefts_core.engine.attention import attention_chunk

    chunked = bool(chunk_tokens) and not s.fused_attention and s.p_attn > 0
    shape = replace(s, fused_attention=s.fused_attention or chunked)
    attn, _ = _attn_saved(shape, t, True)
    attn.pop("x", None)
    if not chunked:
        return sum(attn.values()), _attn_transient(s)
    attn["sdpa"] = s.nd(3)  # q, k, v: the output is not kept
    c = attention_chunk(s.T, chunk_tokens)
    scores = s.B * s.h * c * s.T
    return sum(attn.values()), s.nd(4) + scores * (2 * s.e + 1 + 2) + s.nd() * c / s.T


def activation_bytes(s: Shape, train: LayerTraining, opts: Any, shape: dict[str, Any], num_labels: int,
                     trainable_bytes: int) -> tuple[dict[str, float], float, float]:
    """(the named parts of the stored activations, stored bytes, the activation peak) of one step of the model.

    `train` is what trains in a layer (the method's estimate spec), `shape` the family's estimate_shape of the config;
    `trainable_bytes` are the gradients the reversible Function holds until its backward returns.
    """
    if train.side:  # a side network on a frozen backbone: counted on its own
        from mefts_core.measure.ladder import ladder_bytes

        return ladder_bytes(s, train.side, shape, num_labels)
    n_layers = shape["layers"]
    emb_rg = train.embeddings_need_grad
    gc_on = bool(getattr(opts, "gradient_checkpointing", False))
    # HF's checkpointing makes the embeddings' output require grad (enable_input_require_grads), so that each
    # checkpointed layer has an input with grad: the embeddings' LayerNorm and dropout then save for backward too.
    emb_rg = emb_rg or gc_on
    terms: dict[str, float] = {}
    meft = train.reversible
    terms["embeddings"] = _embeddings(s, emb_rg, train.embeddings_train, shape["positions"])
    if train.prefix and not gc_on:
        # the prefix's embedding saves its P token ids (a buffer, counted once: every layer shares it); under
        # checkpointing the layers run it without saving, and only the recomputed one saves them again
        terms["prefix_ids"] = train.prefix * 8
    x_rg = emb_rg
    layer_saved, inputs, top = 0.0, 0.0, None
    if meft:
        m = _meft(s, train, opts, n_layers)
        terms["reversible_stack"] = m["stored"]
        terms["merge"] = 0.0  # the merge runs inside the reversible Function: backward recomputes it
        n_plain, x_rg = n_layers - (n_layers if opts.reversible_layers is None
                                    else min(opts.reversible_layers, n_layers)), True
    else:
        n_plain = n_layers
    first_saves_input = False
    for i in range(n_plain):
        top = _layer(s, train, x_rg)
        first_saves_input = first_saves_input or (i == 0 and top["x_saved"] > 0)
        layer_saved += top["saved"] + top["x_saved"]
        inputs += s.nd()  # a checkpointed layer keeps its input
        x_rg = top["out_rg"]
    terms["head"] = _head(s, train.pooler_trains, num_labels)
    if top is None:
        act_peak = stored = sum(terms.values())
    elif gc_on:
        terms["layer_inputs"] = inputs
        stored = sum(terms.values())
        # backward recomputes the top layer: everything it saves, its output, and its backward transient
        act_peak = stored + top["saved"] + top["x_saved"] + s.nd() + top["transient"]
    else:
        terms["layers"] = layer_saved
        stored = sum(terms.values())
        # the forward moment: the embeddings' output is a local of the model's forward, alive until it returns
        # (counted here when no layer saves it and it is not the top layer's own input)
        emb_out = s.nd() if not meft and n_plain > 1 and not first_saves_input else 0.0
        act_peak = stored + max(top["transient"], top["forward"] - terms["head"] + emb_out)
    if meft:
        # by the time the reversible backward runs, the upper layers, merge and head have been freed
        # + a new gradient for every block parameter, held by the Function until its backward returns
        # (the top state is part of the first layer's working set: it is released as that layer is inverted)
        act_peak = max(act_peak, terms["embeddings"] + m["stored"] - m["top"] + m["working"] + trainable_bytes)
    if train.embeddings_train:  # the dense word-embedding gradient at the end of backward, beside the incoming grad
        act_peak = max(act_peak, shape["vocab"] * s.d * s.e + s.nd())
    return terms, stored, act_peak
