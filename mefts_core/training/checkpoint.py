"""The checkpoint of a run: everything the loop needs to continue after a crash exactly as if it had not stopped.

`output_dir/checkpoint/`, rewritten after every epoch (a temporary folder renamed into place; only the last is kept):

    trainable.safetensors   the trainable tensors after the epoch
    best.safetensors        the best epoch's trainable tensors (absent before a best exists)
    optimizer.pt            AdamW's and the LR scheduler's state dicts
    rng.pt                  torch's CPU RNG, every CUDA device's RNG, the data-order generator
    state.json              written last: version, the run's config, epoch, step, history, best score and epoch, the
                            early-stopping counter, whether it stopped early, the memory and gradient-check reports,
                            the seconds spent so far, python `random`'s and numpy's RNG states and each reversible
                            stack's dropout counter (`ReversibleStack.calls`)

Every file that is missing, unreadable or from another config is an `ArtifactError` (a ConfigError) naming it.
Bit-identical resumption also needs the same machine type and torch thread count (CPU kernels may sum in another
order with other threads); `threads` is the one config field allowed to differ.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mefts_core.errors import MISSING, ArtifactError
from mefts_core.training.artifacts import (
    complete_folder,
    read_tensors,
    remove_folder,
    replaced_folder,
    save_tensors,
)

CHECKPOINT = "checkpoint"
STATE, TRAINABLE, BEST, OPTIMIZER, RNG = "state.json", "trainable.safetensors", "best.safetensors", "optimizer.pt", \
    "rng.pt"
VERSION = 1
MAY_DIFFER = ("threads",)  # config fields a resumed run may change


@dataclass
class Checkpoint:
    """A checkpoint read back: its folder, state.json's content, and the tensors and state dicts beside it."""

    path: Path
    state: dict[str, Any]
    trainable: dict[str, torch.Tensor]
    best: dict[str, torch.Tensor] | None
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: dict[str, Any]


# ------------------------------------------------------------------------------------------------- RNGs


def capture_rng(data_order: torch.Generator, stacks: list) -> tuple[dict[str, Any], dict[str, Any]]:
    """(tensor states for rng.pt, JSON states for state.json) of every RNG a run draws from."""
    tensors = {"torch": torch.get_rng_state(), "data_order": data_order.get_state(),
               "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    plain = {"python": [version, list(internal), gauss],
             "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
             "meft_calls": [int(s.calls) for s in stacks]}
    return tensors, plain


def restore_rng(ckpt: Checkpoint, data_order: torch.Generator, stacks: list) -> None:
    """Put every RNG back where the checkpoint's run left it (ArtifactError naming the file at fault)."""
    rng, plain = ckpt.rng, ckpt.state["rng"]
    try:
        torch.set_rng_state(rng["torch"])
        data_order.set_state(rng["data_order"])
        if torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(rng["cuda"])
    except (RuntimeError, TypeError, ValueError) as e:
        raise ArtifactError(ckpt.path / RNG, "rng", MISSING, f"not a usable RNG state ({e})") from e
    try:
        calls = [int(c) for c in plain["meft_calls"]]
        version, internal, gauss = plain["python"]
        random.setstate((version, tuple(internal), gauss))
        kind, keys, pos, has_gauss, cached = plain["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    except (KeyError, TypeError, ValueError) as e:
        raise ArtifactError(ckpt.path / STATE, "rng", MISSING, f"not a usable RNG state ({e})") from e
    if len(calls) != len(stacks):
        raise ArtifactError(ckpt.path / STATE, ("rng", "meft_calls"), calls,
                            f"the model has {len(stacks)} reversible stacks")
    for stack, c in zip(stacks, calls):
        stack.calls = c


# ------------------------------------------------------------------------------------------ write / read


def save_checkpoint(output_dir: Path, state: dict[str, Any], *, trainable: dict[str, torch.Tensor],
                    best: dict[str, torch.Tensor] | None, optimizer: dict[str, Any], scheduler: dict[str, Any],
                    rng: dict[str, Any]) -> Path:
    """Write `output_dir/checkpoint/` (state.json last), replacing the previous one; return its path."""
    target = Path(output_dir) / CHECKPOINT
    with replaced_folder(target) as tmp:
        save_tensors(trainable, tmp / TRAINABLE)
        if best is not None:
            save_tensors(best, tmp / BEST)
        torch.save({"optimizer": optimizer, "scheduler": scheduler}, tmp / OPTIMIZER)
        torch.save(rng, tmp / RNG)
        (tmp / STATE).write_text(json.dumps({"version": VERSION, **state}) + "\n")
    return target


def find_checkpoint(output_dir: Path | str) -> Path | None:
    """The complete checkpoint folder in `output_dir`, or None."""
    return complete_folder(Path(output_dir) / CHECKPOINT, STATE)


def remove_checkpoint(output_dir: Path | str) -> None:
    remove_folder(Path(output_dir) / CHECKPOINT)


def read_state(folder: Path) -> dict[str, Any]:
    """state.json of a checkpoint folder, checked for its version and keys."""
    file = folder / STATE
    try:
        state = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(file, "checkpoint", MISSING, f"cannot be read ({e})") from e
    if not isinstance(state, dict) or state.get("version") != VERSION:
        raise ArtifactError(file, "version", state.get("version") if isinstance(state, dict) else state,
                            f"this mefts reads checkpoint version {VERSION}")
    for key in ("config", "epoch", "step", "history", "best_score", "best_epoch", "bad_epochs", "stopped_early",
                "rng", "elapsed_seconds"):
        if key not in state:
            raise ArtifactError(file, key, MISSING, "required in a checkpoint")
    return state


def checkpoint_config(output_dir: Path | str) -> dict[str, Any]:
    """The config (TrainConfig.to_dict()) of the run whose checkpoint is in `output_dir`."""
    folder = find_checkpoint(output_dir)
    if folder is None:
        raise ArtifactError(Path(output_dir) / CHECKPOINT / STATE, "checkpoint", MISSING,
                            "no checkpoint to resume from")
    return read_state(folder)["config"]


def _check_config(state: dict[str, Any], config: dict[str, Any], file: Path) -> None:
    stored = state["config"]
    now = json.loads(json.dumps(config))  # tuples as lists, as stored
    for key in sorted(set(stored) | set(now)):
        if key not in MAY_DIFFER and stored.get(key, MISSING) != now.get(key, MISSING):
            raise ArtifactError(file, ("config", key), stored.get(key, MISSING),
                                f"the checkpoint was written by a run with this value; this run has "
                                f"{now.get(key, MISSING)!r}: resume with the checkpoint's config")


def _torch_file(path: Path, device: torch.device) -> Any:
    if not path.is_file():
        raise ArtifactError(path, "checkpoint", MISSING, "file not found")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # a truncated or foreign file: pickle, zip and torch errors alike
        raise ArtifactError(path, "checkpoint", MISSING, f"cannot be read ({type(e).__name__}: {e})") from e


def load_checkpoint(output_dir: Path | str, config: dict[str, Any], device: torch.device) -> Checkpoint | None:
    """The checkpoint in `output_dir` (None when there is none), checked against this run's `config`."""
    folder = find_checkpoint(output_dir)
    if folder is None:
        return None
    state = read_state(folder)
    _check_config(state, config, folder / STATE)
    states = _torch_file(folder / OPTIMIZER, device)
    if not isinstance(states, dict) or {"optimizer", "scheduler"} - set(states):
        raise ArtifactError(folder / OPTIMIZER, "checkpoint", MISSING, "lacks the optimizer or scheduler state")
    rng = _torch_file(folder / RNG, torch.device("cpu"))
    if not isinstance(rng, dict) or {"torch", "data_order", "cuda"} - set(rng):
        raise ArtifactError(folder / RNG, "checkpoint", MISSING, "lacks an RNG state")
    best = read_tensors(folder / BEST) if state["best_epoch"] else None
    return Checkpoint(folder, state, read_tensors(folder / TRAINABLE), best, states["optimizer"],
                      states["scheduler"], rng)
