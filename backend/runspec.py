"""From a submitted run to a validated TrainConfig and the run's table columns.

The rules are mefts_core's: `TrainConfig` validates everything once, and its `ConfigError.loc` names the field,
which becomes the request location of a 422 (`SpecError`) before anything is stored. Nothing here parses message
text.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastapi import HTTPException, status

from backend.security import PATH_TASK_OPTIONS, PathNotAllowed, backbone_is_path, confine_path
from backend.settings import Settings
from mefts_core.backbones import BACKBONES
from mefts_core.config import WHAT, TrainConfig
from mefts_core.errors import MISSING, ConfigError
from mefts_core.methods import method_label

# Fields of a run request that are not TrainConfig hyperparameters.
TOP_LEVEL = ("backbone", "method", "task", "method_options", "task_options", "seed", "device", "timeout_s")
# Config values stored in 32-bit integer columns (PostgreSQL INTEGER; SQLite's are 64-bit).
INT32_MAX = 2**31 - 1
INT_COLUMNS = ("seed", "batch_size", "max_seq_len", "epochs")


class SpecError(ValueError):
    """A bad run request: `loc` is the request location of the bad field, `value` its value."""

    def __init__(self, loc: tuple[str | int, ...], value: Any, msg: str) -> None:
        super().__init__(msg)
        self.loc = loc
        self.value = None if value is MISSING else value
        self.msg = msg

    @classmethod
    def of(cls, e: ConfigError) -> SpecError:
        """A ConfigError at its request location: what runs and seed/device at the top, the rest under
        hyperparameters."""
        top = e.loc[0] if e.loc else None
        loc = e.loc if top in TOP_LEVEL or top in WHAT else ("hyperparameters", *e.loc)
        return cls(loc, e.value, str(e))

    def detail(self) -> dict[str, Any]:
        return {"type": "value_error", "loc": ["body", *self.loc], "msg": self.msg, "input": _jsonable(self.value)}


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return repr(value)


def build_config(
    *,
    backbone: str,
    method: str,
    task: str,
    method_options: dict[str, Any] | None,
    task_options: dict[str, Any] | None,
    hyperparameters: dict[str, Any] | None,
    seed: int | None,
    device: str | None,
    allowed_roots: Sequence[Path] | None = None,
) -> TrainConfig:
    """Validate one run (once: TrainConfig) and return it. Raises SpecError naming the field and the value.

    With `allowed_roots`, a backbone given as a local folder and the task's file options must lie inside them
    (after resolving `..` and symlinks); they are kept as those real paths."""
    task_opts = dict(task_options or {})
    hp = dict(hyperparameters or {})  # explicitly set values only (nulls included); TrainConfig fills the rest
    if allowed_roots is not None:
        backbone, task_opts = confine_run_paths(backbone, task_opts, allowed_roots)
    for key in hp:
        if key in TOP_LEVEL:
            raise SpecError(("hyperparameters", key), hp[key], f"{key}={hp[key]!r}: set it at the top level of the run")
    raw: dict[str, Any] = {"backbone": backbone, "method": method, "task": task,
                           "method_options": dict(method_options or {}), "task_options": task_opts, **hp}
    if seed is not None:
        raw["seed"] = seed
    if device is not None:
        raw["device"] = device
    try:
        config = TrainConfig.from_dict(raw)
    except ConfigError as e:
        raise SpecError.of(e) from e
    _check_int_columns(config, hp)
    return config


def confine_run_paths(
    backbone: str, task_opts: dict[str, Any], roots: Sequence[Path]
) -> tuple[str, dict[str, Any]]:
    """Backbone folder and task file options confined to `roots` (SpecError naming the field otherwise)."""
    if isinstance(backbone, str) and backbone_is_path(backbone, BACKBONES):
        try:
            backbone = confine_path(backbone, roots, "backbone")
        except PathNotAllowed as e:
            raise SpecError(("backbone",), backbone, str(e)) from e
    out = dict(task_opts)
    for key in PATH_TASK_OPTIONS:
        if key in out:
            try:
                out[key] = confine_path(out[key], roots, key)
            except PathNotAllowed as e:
                raise SpecError(("task_options", key), out[key], str(e)) from e
    return backbone, out


def _check_int_columns(config: TrainConfig, hp: dict[str, Any]) -> None:
    for name in INT_COLUMNS:
        value = getattr(config, name)
        if isinstance(value, int) and not -INT32_MAX <= value <= INT32_MAX:
            loc = (name,) if name in TOP_LEVEL else ("hyperparameters", name)
            raise SpecError(loc, value, f"{name}={value!r}: must be at most {INT32_MAX}")


def run_columns(config: TrainConfig, *, timeout_s: float | None = None, name: str | None = None, priority: int = 0,
                max_attempts: int = 3, cloned_from: int | None = None) -> dict[str, Any]:
    """The Run columns for a validated config; the stored config is `config.to_dict()` plus the run's timeout_s."""
    stored = config.to_dict()
    if timeout_s is not None:
        stored["timeout_s"] = float(timeout_s)
    return {
        "config": stored,
        "name": name,
        "backbone": config.backbone,
        "method": config.method,
        "method_label": method_label(config.method, config.method_options),
        "task": config.task,
        "seed": config.seed,
        "device": config.device,
        "needs_gpu": config.device.startswith("cuda"),
        "learning_rate": config.learning_rate,
        "batch_size": config.batch_size,
        "max_seq_len": config.max_seq_len,
        "epochs": config.epochs,
        "priority": priority,
        "max_attempts": max_attempts,
        "cloned_from": cloned_from,
    }


# ------------------------------------------------------------------------------------------ for the routes
def spec_error(err: SpecError) -> HTTPException:
    """The 422 a bad run request answers: FastAPI's validation-error shape, naming the field and the value."""
    return HTTPException(status_code=status.HTTP_422_UNPROCESSABLE_CONTENT, detail=[err.detail()])


def validated_columns(*, settings: Settings, name: str | None = None, priority: int = 0,
                      max_attempts: int | None = None, cloned_from: int | None = None,
                      timeout_s: float | None = None, **run: Any) -> dict[str, Any]:
    """Validate a run (`run`: build_config's keywords) and return its table columns; raises a 422 HTTPException
    naming the field and value."""
    try:
        config = build_config(**run, allowed_roots=settings.allowed_root_paths)
    except SpecError as e:
        raise spec_error(e) from e
    return run_columns(config, timeout_s=timeout_s, name=name, priority=priority,
                       max_attempts=max_attempts or settings.max_attempts, cloned_from=cloned_from)
