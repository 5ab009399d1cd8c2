"""Pre-flight memory estimate of a run request (mefts_core.measure.estimate), before anything is queued."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Query

from backend import runspec
from backend.deps import SettingsDep
from backend.schemas import Estimate, RunCreate

router = APIRouter(tags=["estimate"])

# estimate_memory's ValueErrors start with `name=value: why` (they are not ConfigErrors with a loc).
FIELD_RE = re.compile(r"^`?([A-Za-z_][\w.]*)`?\s*=")
# Parts of the estimator's result returned as they are (bytes unless named otherwise).
PARTS = ("param_bytes", "buffer_bytes", "batch_bytes", "grad_bytes", "optimizer_bytes", "stored_activation_bytes",
         "optimizer_step_bytes", "peak_bytes", "trainable_params", "total_params")


def _device(config_device: str | None) -> str:
    """The estimator's device kind ("cpu" or "cuda") for a run's device (auto: what this server has)."""
    dev = (config_device or "auto").lower()
    if dev.startswith("cuda"):
        return "cuda"
    if dev == "cpu":
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _error_loc(msg: str) -> tuple[str, ...]:
    if msg.startswith("dtype="):
        return ("hyperparameters", "bf16")
    if msg.startswith("device="):
        return ("device",)
    if "model_type" in msg:
        return ("backbone",)
    m = FIELD_RE.match(msg)
    field = m.group(1) if m else None
    return ("method_options", field) if field else ("method",)


# Unset parts stay out of the answer, as the estimator left them out.
@router.post("/estimate", response_model=Estimate, response_model_exclude_unset=True)
def estimate(
    body: RunCreate,
    settings: SettingsDep,
    budget_bytes: Annotated[int | None, Query(ge=1, description="a memory budget: the answer says if the peak fits")]
    = None,
) -> dict[str, Any]:
    """The analytic estimate of one training step's memory for a run request (same body and 422s as POST /runs).

    Returns the parts (parameters, gradients, optimizer state, stored and peak activations) and the peak, in bytes,
    and with `budget_bytes`, whether the peak fits. An unsupported case (e.g. a family without an activation
    model, reduced precision on CPU) is a 422 with the reason."""
    try:
        config = runspec.build_config(
            backbone=body.backbone, method=body.method, task=body.task, method_opts=body.method_options,
            task_opts=body.task_options, hyperparameters=body.hyperparameters.model_dump(exclude_unset=True),
            seed=body.seed, device=body.device, allowed_roots=settings.allowed_root_paths, timeout_s=body.timeout_s,
        )
    except runspec.SpecError as e:
        raise runspec.spec_error(e) from e
    from mefts_core.measure.estimate import estimate_memory

    device = _device(config.get("device"))
    dtype = "bfloat16" if config.get("bf16") else "float32"
    batch_size, seq_len = int(config["batch_size"]), int(config["max_seq_len"])
    options = dict(config.get("method_options") or {})
    try:
        est = estimate_memory(config["backbone"], config["method"], batch_size, seq_len, options=options,
                              dtype=dtype, device=device)
    except (ValueError, NotImplementedError) as e:
        msg = str(e)
        loc = _error_loc(msg)
        value = {"backbone": config["backbone"], "method": config["method"], "device": config.get("device")}.get(
            loc[-1], options.get(loc[-1], config.get("bf16")))
        raise runspec.spec_error(runspec.SpecError(loc, value, msg)) from e
    out: dict[str, Any] = {
        "backbone": config["backbone"], "method": config["method"],
        "method_label": runspec.method_label(config["method"], body.method_options or {}),
        "batch_size": batch_size, "seq_len": seq_len, "dtype": dtype, "device": device,
        **{k: int(est[k]) for k in PARTS if est.get(k) is not None},
        "peak_activation_bytes": int(est["activation_bytes"]),
        "budget_bytes": budget_bytes,
        "fits": None if budget_bytes is None else bool(est["peak_bytes"] <= budget_bytes),
    }
    return out
