"""From a submitted run to a validated TrainConfig dict and the run's table columns.

The rules are mefts_core's: `method_options()` for method options, `validate_backbone()`, the task catalog, and
`TrainConfig` (its __post_init__ and from_dict) for everything else. Every failure is a `SpecError` that names the
field (as a request location) and the value, and the routes turn it into a 422 before anything is stored.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from backend.security import PATH_TASK_OPTIONS, PathNotAllowed, backbone_is_path, confine_path
from mefts_core.backbones import BACKBONES, validate_backbone
from mefts_core.config import METHODS, method_options
from mefts_core.tasks import task_catalog, validate_task_options
from mefts_core.training.trainer import TrainConfig

# Fields of a run request that are not TrainConfig hyperparameters.
TOP_LEVEL = ("backbone", "method", "task", "method_options", "task_options", "seed", "device", "timeout_s")
DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
# Config values stored in 32-bit integer columns (PostgreSQL INTEGER; SQLite's are 64-bit).
INT32_MAX = 2**31 - 1
INT_COLUMNS = ("seed", "batch_size", "max_seq_len", "epochs")


class SpecError(ValueError):
    """A bad run request: `loc` is the request location of the bad field, `value` its value."""

    def __init__(self, loc: tuple[str | int, ...], value: Any, msg: str) -> None:
        super().__init__(msg)
        self.loc = loc
        self.value = value
        self.msg = msg

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


def _field_of(message: str) -> str | None:
    """The field a mefts_core ValueError names: its messages start with `name=value: why`."""
    m = re.match(r"^`?([A-Za-z_][\w.]*)`?\s*=", message)
    return m.group(1) if m else None


def method_label(method: str, options: dict[str, Any]) -> str:
    """`method`, its options that differ from the defaults, and "+gc": e.g. "lora(r=16)+gc"."""
    chosen = method_options(method, **options)
    default = method_options(method)
    diff = {
        f.name: getattr(chosen, f.name)
        for f in dataclasses.fields(chosen)
        if f.name != "variant" and getattr(chosen, f.name) != getattr(default, f.name)
    }
    gc = bool(diff.pop("gradient_checkpointing", False))
    label = method
    if diff:
        label += "(" + ",".join(f"{k}={v}" for k, v in sorted(diff.items())) + ")"
    return label + ("+gc" if gc else "")


def _checked_task_options(task: str, options: dict[str, Any]) -> dict[str, Any]:
    try:
        return validate_task_options(task, options)
    except ValueError as e:
        msg = str(e)
        m = re.match(r"^task_options\[['\"]?(\w+)['\"]?\]", msg)
        field = m.group(1) if m else _field_of(msg)
        if field in options:
            raise SpecError(("task_options", field), options[field], msg) from e
        if field == "task_options":
            raise SpecError(("task_options",), options, msg) from e
        raise SpecError(("task",), task, msg) from e


def build_config(
    *,
    backbone: str,
    method: str,
    task: str,
    method_opts: dict[str, Any] | None,
    task_opts: dict[str, Any] | None,
    hyperparameters: dict[str, Any] | None,
    seed: int | None,
    device: str | None,
    allowed_roots: Sequence[Path] | None = None,
    timeout_s: float | None = None,
) -> dict[str, Any]:
    """Validate one run and return its TrainConfig as a dict. Raises SpecError naming the field and the value.

    With `allowed_roots`, a backbone given as a local folder and the task's file options must lie inside them
    (after resolving `..` and symlinks); they are stored as those real paths. `timeout_s` is stored as is."""
    method_opts = dict(method_opts or {})
    task_opts = dict(task_opts or {})
    hp = dict(hyperparameters or {})  # explicitly set values only (nulls included); TrainConfig fills the rest
    if allowed_roots is not None:
        backbone, task_opts = confine_run_paths(backbone, task_opts, allowed_roots)

    if method not in METHODS:
        raise SpecError(("method",), method, f"method={method!r}: unknown method; valid: {', '.join(METHODS)}")
    try:
        validate_backbone(backbone)
    except ValueError as e:
        raise SpecError(("backbone",), backbone, str(e)) from e
    names = [t["name"] for t in task_catalog()]
    if task not in names:
        raise SpecError(("task",), task, f"task={task!r}: unknown task; valid: {', '.join(names)}")
    try:
        opts = method_options(method, **method_opts)
    except ValueError as e:
        field = _field_of(str(e))
        value = method_opts.get(field) if field in method_opts else method_opts
        raise SpecError(("method_options", field) if field else ("method_options",), value, str(e)) from e
    task_opts = _checked_task_options(task, task_opts)
    if device is not None and not DEVICE_RE.match(device):
        raise SpecError(("device",), device, f"device={device!r}: must be auto, cpu, cuda or cuda:N")
    for key in hp:
        if key in TOP_LEVEL or key == "method_options":
            raise SpecError(("hyperparameters", key), hp[key], f"{key}={hp[key]!r}: set it at the top level of the run")

    normal_opts = {f.name: getattr(opts, f.name) for f in dataclasses.fields(opts) if f.name != "variant"}
    raw: dict[str, Any] = {
        "backbone": backbone, "method": method, "task": task, "method_options": normal_opts,
        "task_options": task_opts, **hp,
    }
    if seed is not None:
        raw["seed"] = seed
    if device is not None:
        raw["device"] = device

    try:
        cfg = TrainConfig.from_dict(raw)
    except (ValueError, TypeError) as e:
        msg = str(e)
        field = _field_of(msg)
        if field is None:
            m = re.search(r"unknown (?:key|keys|field|fields)[^\w]*['\"]?(\w+)", msg)
            field = m.group(1) if m else None
        if field in TOP_LEVEL or field == "method_options":
            loc: tuple[str, ...] = (field,)
            value = raw.get(field)
        elif field in method_opts:
            loc, value = ("method_options", field), method_opts[field]
        elif field in task_opts:
            loc, value = ("task_options", field), task_opts[field]
        elif field:
            loc, value = ("hyperparameters", field), hp.get(field)
        else:
            loc, value = (), raw
        raise SpecError(loc, value, msg) from e
    out = cfg.to_dict()
    _check_int_columns(out, hp)
    if timeout_s is not None:
        out["timeout_s"] = float(timeout_s)
    return out


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


def _check_int_columns(config: dict[str, Any], hp: dict[str, Any]) -> None:
    for name in INT_COLUMNS:
        value = config.get(name)
        if isinstance(value, int) and not -INT32_MAX <= value <= INT32_MAX:
            loc = (name,) if name in TOP_LEVEL else ("hyperparameters", name)
            raise SpecError(loc, value, f"{name}={value!r}: must be at most {INT32_MAX}")


def run_columns(config: dict[str, Any], *, name: str | None = None, priority: int = 0,
                max_attempts: int = 3, cloned_from: int | None = None) -> dict[str, Any]:
    """The Run columns for a validated config."""
    device = str(config.get("device") or "auto")
    return {
        "config": config,
        "name": name,
        "backbone": config["backbone"],
        "method": config["method"],
        "method_label": method_label(config["method"], config.get("method_options") or {}),
        "task": config["task"],
        "seed": int(config.get("seed", 42)),
        "device": device,
        "needs_gpu": device.startswith("cuda"),
        "learning_rate": config.get("learning_rate"),
        "batch_size": config.get("batch_size", 16),
        "max_seq_len": config.get("max_seq_len", 128),
        "epochs": config.get("epochs", 5),
        "priority": priority,
        "max_attempts": max_attempts,
        "cloned_from": cloned_from,
    }
