"""Pre-flight memory estimate of a run request (mefts_core.measure.estimate), before anything is queued."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from backend import runspec
from backend.deps import SettingsDep
from backend.schemas import Estimate, RunCreate
from mefts_core.config import TrainConfig
from mefts_core.errors import ConfigError
from mefts_core.methods import method_label

router = APIRouter(tags=["estimate"])

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


# The estimator's own arguments that a run request sets under another name.
_REQUEST_LOC = {"dtype": ("hyperparameters", "bf16"), "model_type": ("backbone",), "options": ("method_options",)}


def _request_error(e: ConfigError, config: TrainConfig) -> runspec.SpecError:
    """An estimator error at the run request's location (its loc, renamed where the request calls it otherwise)."""
    head, *rest = e.loc
    loc = (*_REQUEST_LOC.get(str(head), (head,)), *rest)
    value = {"dtype": config.bf16, "model_type": config.backbone}.get(str(head), e.value)
    return runspec.SpecError(loc, value, str(e))


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
            backbone=body.backbone, method=body.method, task=body.task, method_options=body.method_options,
            task_options=body.task_options, hyperparameters=body.hyperparameters.model_dump(exclude_unset=True),
            seed=body.seed, device=body.device, allowed_roots=settings.allowed_root_paths,
        )
    except runspec.SpecError as e:
        raise runspec.spec_error(e) from e
    from mefts_core.measure.estimate import estimate_memory

    device = _device(config.device)
    dtype = "bfloat16" if config.bf16 else "float32"
    try:
        est = estimate_memory(config.backbone, config.method, config.batch_size, config.max_seq_len,
                              options=config.method_options, dtype=dtype, device=device)
    except ConfigError as e:
        raise runspec.spec_error(_request_error(e, config)) from e
    out: dict[str, Any] = {
        "backbone": config.backbone, "method": config.method,
        "method_label": method_label(config.method, config.method_options),
        "batch_size": config.batch_size, "seq_len": config.max_seq_len, "dtype": dtype, "device": device,
        **{k: int(est[k]) for k in PARTS if est.get(k) is not None},
        "peak_activation_bytes": int(est["activation_bytes"]),
        "budget_bytes": budget_bytes,
        "fits": None if budget_bytes is None else bool(est["peak_bytes"] <= budget_bytes),
    }
    return out
