"""Pre-flight memory estimate of one training step, and the fit that turns measured points into budgets.

`estimate_memory(backbone, method, batch_size, seq_len, layers, options)` predicts what `memory.measure_step` will
measure, before anything is allocated:

    peak = params + buffers + batch + grads + optimizer state + max(activation peak, optimizer-step transient)

Parameters are counted exactly on a meta-device copy of the prepared model (no memory). Activations, stored and at
their peak, are counted analytically from the config by walking one layer the way autograd does (the model is
described in mefts_core.measure.activations). The optimizer step adds AdamW's temporaries (CPU: per tensor, twice
the largest trainable tensor; CUDA foreach: one copy of all trainable parameters). On CUDA, the step also holds two
cuBLAS workspaces, one per thread that runs matrix products (the caller's for forward, autograd's device thread for
backward): CUDA_RUNTIME_BYTES, read off an H100 with torch 2.11 (32 MiB each on Hopper, plus 3 MiB). Every term is
a tensor that exists; none is fitted except that constant. Every built-in method has an estimate spec (prefix,
ia3 and lst included); families other than BERT/RoBERTa raise Unsupported (a NotImplementedError) until their
layer walk is written.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from mefts_core.errors import ConfigError, Unsupported, require
from mefts_core.measure.activations import Shape, activation_bytes

_ELEMENT = {"float32": 4, "bfloat16": 2, "float16": 2}
# The allocator bytes a CUDA training step holds beyond tensors: two cuBLAS workspaces and small runtime buffers,
# measured on an H100 (67.1 MiB in every LoRA and MEFT row of bench/gpu.sh, at any depth; docs/benchmarks.md).
CUDA_RUNTIME_BYTES = 67 * 2**20


# ------------------------------------------------------------------------------------------------ the prepared model


@functools.lru_cache(maxsize=64)
def _model_summary(backbone: str, method: str, layers: int | None, options_json: str, dtype: str) -> dict[str, Any]:
    """Config and parameter sizes of the model prepared for the method, built on the meta device (shapes, no
    memory); real-weight backbones that cannot be built on meta are built for real (they are small)."""
    from mefts_core.backbones import load_backbone
    from mefts_core.methods import apply_method

    options = json.loads(options_json)
    tdtype = getattr(torch, dtype)
    try:
        with torch.device("meta"):
            model, _ = load_backbone(backbone, num_layers=layers, dtype=tdtype)
            apply_method(model, method, **options)
    except RuntimeError:
        model, _ = load_backbone(backbone, num_layers=layers, dtype=tdtype)
        apply_method(model, method, **options)
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    return {
        "config": model.config,
        "param_bytes": _nbytes(params), "trainable_bytes": _nbytes(trainable), "buffer_bytes": _nbytes(model.buffers()),
        "n_trainable": len(trainable), "largest_trainable": max((_nbytes([p]) for p in trainable), default=0),
        "trainable_params": sum(p.numel() for p in trainable), "total_params": sum(p.numel() for p in params),
    }


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _prepared(backbone: str, method: str, layers: int | None, options: dict[str, Any], dtype: str,
              device: str) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """The validated method options, the prepared model's summary and its family's estimate shape (hidden, ffn,
    heads, layers, ...); raises for what estimate_memory cannot count."""
    from mefts_core.engine.models import family_for_type
    from mefts_core.methods import method_options, method_spec

    try:
        opts = method_options(method, **options)
    except ConfigError as e:
        raise e if e.loc == ("method",) else e.within("options") from e
    if method_spec(method).estimate is None:
        raise Unsupported("method", method, "not estimated: the analytic estimate has no layer walk for this "
                                            "method; measure it (measure_step, mefts bench)")
    require(dtype in _ELEMENT, "dtype", dtype, f"must be one of {', '.join(_ELEMENT)}")
    require(device in ("cpu", "cuda"), "device", device, "must be cpu or cuda")
    summary = _model_summary(backbone, method, layers, json.dumps(options, sort_keys=True), dtype)
    cfg = summary["config"]
    family = family_for_type(cfg.model_type)
    shape = family.estimate_shape(cfg) if family is not None else None
    if shape is None:
        raise Unsupported("model_type", cfg.model_type, "no activation model yet (its family registers no "
                                                        "estimate_shape)")
    if device == "cpu" and dtype != "float32":
        # measured: CPU's SDPA math path and LayerNorm keep float32 intermediates for bfloat16/float16 inputs
        raise Unsupported("dtype", dtype, "on cpu, reduced-precision kernels keep float32 intermediates that this "
                                          "estimate does not model (float32 only on cpu)")
    return opts, summary, shape


# ------------------------------------------------------------------------------------------------ the estimate


def _static_bytes(summary: dict[str, Any], s: Shape, device: str) -> dict[str, int]:
    """The bytes alive for the whole step, named as estimate_memory returns them: parameters, buffers, the batch,
    gradients, AdamW's state and (CUDA) the runtime's workspaces."""
    trainable_bytes = summary["trainable_bytes"]
    return {
        "param_bytes": summary["param_bytes"], "buffer_bytes": summary["buffer_bytes"],
        "batch_bytes": 2 * s.n * 8 + s.B * 8,  # input_ids, attention_mask, labels (int64)
        "grad_bytes": trainable_bytes,
        # exp_avg, exp_avg_sq, a scalar step each
        "optimizer_bytes": 2 * trainable_bytes + 8 * summary["n_trainable"],
        "runtime_bytes": CUDA_RUNTIME_BYTES if device == "cuda" else 0,
    }


def estimate_memory(backbone: str, method: str, batch_size: int, seq_len: int, layers: int | None = None,
                    options: dict[str, Any] | None = None, *, dtype: str = "float32", device: str = "cpu",
                    attention: str | None = None, num_labels: int = 2) -> dict[str, Any]:
    """Predict the memory of one training step (AdamW) of `backbone` prepared for `method` at (batch, seq_len).

    Args:
        backbone: a registry name or local folder (mefts_core.backbones).
        method: a registered method with an estimate spec: full, lora, adapter, bitfit, prefix, ia3, lst, meft1,
            meft2, meft3 (options as for apply_method); one registered without a spec raises Unsupported.
        batch_size, seq_len: the batch shape; every token is real (no padding).
        layers: depth override (architecture-only backbones), None for the backbone's own.
        options: method options, a dict (validated by the method registry) or the typed options.
        dtype: float32, bfloat16 or float16 weights and activations.
        device: "cpu" or "cuda": sets the dropout-mask size and the default attention kernel.
        attention: "math" (scores materialised; CPU SDPA, eager) or "fused" (CUDA SDPA); default by device.

    Returns:
        dict of bytes: param_bytes, buffer_bytes, batch_bytes, grad_bytes, optimizer_bytes, runtime_bytes (CUDA:
        cuBLAS workspaces), stored_activation_bytes,
        activation_bytes (the peak rise over forward+backward; also as peak_activation_bytes, MemoryReport's name),
        optimizer_step_bytes (AdamW's transient),
        peak_bytes; and trainable_params, total_params, layers (the depth counted), and `terms` (the named parts of the activation count).

    Raises:
        ConfigError (a ValueError): a bad argument, its `loc` naming it (method options under "options").
        Unsupported (a ConfigError and a NotImplementedError): what the estimate does not model (a method without
        an estimate spec, a family without a layer walk, reduced precision on CPU, offload on CUDA).
    """
    from mefts_core.methods import method_spec, options_dict

    options = options_dict(options) if dataclasses.is_dataclass(options) else dict(options or {})
    opts, summary, shape = _prepared(backbone, method, layers, options, dtype, device)
    e = _ELEMENT[dtype]
    attention = attention or ("fused" if device == "cuda" else "math")
    require(attention in ("math", "fused"), "attention", attention, "must be math or fused")
    if getattr(opts, "offload_activations", False) and device == "cuda":
        raise Unsupported(("options", "offload_activations"), True, "on cuda the saved tensors leave the card; "
                                                                   "not estimated")
    try:
        train = method_spec(method).estimate(opts)
    except ConfigError as e:
        raise e.within("options") from e
    # P: a trained prefix's key/value positions (each query sees T + P keys)
    s = Shape(B=batch_size, T=seq_len, d=shape["hidden"], I=shape["ffn"], h=shape["heads"], e=e,
              m=e if device == "cpu" else 1, p_hidden=shape["p_hidden"], p_attn=shape["p_attn"],
              fused_attention=attention == "fused", P=train.prefix)
    static = _static_bytes(summary, s, device)
    # AdamW's temporaries: CPU per tensor (twice the largest), CUDA foreach (one copy of all trainable parameters)
    opt_step = 2 * summary["largest_trainable"] if device == "cpu" else summary["trainable_bytes"]
    terms, stored, act_peak = activation_bytes(s, train, opts, shape, num_labels, summary["trainable_bytes"])

    return {
        **static,
        "stored_activation_bytes": int(stored), "activation_bytes": int(act_peak),
        "peak_activation_bytes": int(act_peak),  # the same, named as in memory.MemoryReport
        "optimizer_step_bytes": int(opt_step), "peak_bytes": int(sum(static.values()) + max(act_peak, opt_step)),
        "trainable_params": summary["trainable_params"], "total_params": summary["total_params"],
        "layers": getattr(summary["config"], "num_hidden_layers", None),
        "attention": attention, "terms": {k: int(v) for k, v in terms.items()},
    }


# ------------------------------------------------------------------------------------------------ measured fit


@dataclass
class MemoryFit:
    """peak(B, T) = static + max(floor, a + b·B·T + c·B·T²), fitted to measured steps.

    static: parameters + gradients + optimizer state (measured). a + b·tokens + c·tokens·T: the activation peak
    (a: what does not scale with the batch, b: per token, c: the attention scores per token per key). floor: a
    transient that does not scale either (AdamW's temporaries, the dense embedding gradient of full FT).
    """

    static: float
    a: float
    b: float
    c: float
    floor: float = 0.0

    def peak(self, batch_size: int, seq_len: int) -> float:
        n = batch_size * seq_len
        return self.static + max(self.floor, self.a + self.b * n + self.c * n * seq_len)

    def max_batch(self, seq_len: int, budget_bytes: float) -> int:
        """Largest batch whose peak at `seq_len` fits in the budget (0 when none does)."""
        room = budget_bytes - self.static
        per_row = self.b * seq_len + self.c * seq_len**2
        if room < self.floor or room < self.a + per_row:
            return 0
        return math.floor((room - self.a) / per_row + 1e-9) if per_row > 0 else 1 << 40

    def max_seq(self, batch_size: int, budget_bytes: float) -> int:
        """Longest sequence whose peak at `batch_size` fits in the budget (0 when none does)."""
        room = budget_bytes - self.static
        if room < self.floor or room < self.a:
            return 0
        qa, qb, qc = self.c * batch_size, self.b * batch_size, self.a - room  # qa·T² + qb·T + qc <= 0
        if qa <= 0:
            return math.floor(-qc / qb + 1e-9) if qb > 0 else 1 << 40
        return math.floor((-qb + math.sqrt(qb * qb - 4 * qa * qc)) / (2 * qa) + 1e-9)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def fit_memory(points: list[dict[str, Any]]) -> MemoryFit:
    """Fit `MemoryFit` to measured points (dicts with batch_size, seq_len, peak_bytes, peak_activation_bytes,
    static_bytes), e.g. from mefts_core.measure.bench.measure_points.

    Three points with two sequence lengths determine a, b and c; with one sequence length c is 0. A negative c
    (noise) is dropped and (a, b) refitted by least squares.
    """
    import numpy as np

    if len(points) < 2:
        raise ValueError(f"points: need at least 2 measured points, got {len(points)}")
    static = max(p["static_bytes"] for p in points)
    n = np.array([p["batch_size"] * p["seq_len"] for p in points], dtype=float)
    t = np.array([p["seq_len"] for p in points], dtype=float)
    act = np.array([p["peak_activation_bytes"] for p in points], dtype=float)
    cols = [np.ones_like(n), n, n * t] if len(set(t.tolist())) > 1 else [np.ones_like(n), n]
    coef = np.linalg.lstsq(np.stack(cols, 1), act, rcond=None)[0]
    if len(coef) == 3 and coef[2] < 0:
        coef = np.append(np.linalg.lstsq(np.stack(cols[:2], 1), act, rcond=None)[0], 0.0)
    a, b, c = float(coef[0]), float(coef[1]), float(coef[2]) if len(coef) == 3 else 0.0
    # a step whose peak came after the activations (the optimizer step) sets a floor that does not scale
    floor = max((p["peak_bytes"] - p["static_bytes"] for p in points
                 if p["peak_bytes"] - p["static_bytes"] > p["peak_activation_bytes"]), default=0.0)
    return MemoryFit(static=float(static), a=a, b=max(b, 0.0), c=c, floor=float(floor))


def max_batch_estimate(backbone: str, method: str, seq_len: int, budget_bytes: float, layers: int | None = None,
                       options: dict[str, Any] | None = None, *, limit: int = 1 << 20, **kw: Any) -> int:
    """Largest batch whose estimated peak (estimate_memory, monotone in the batch) fits in the budget; 0 if none."""
    def fits(b: int) -> bool:
        return estimate_memory(backbone, method, b, seq_len, layers, options, **kw)["peak_bytes"] <= budget_bytes

    if not fits(1):
        return 0
    lo, hi = 1, 2
    while hi <= limit and fits(hi):
        lo, hi = hi, 2 * hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo
