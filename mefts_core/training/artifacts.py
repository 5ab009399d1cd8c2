"""A fine-tuned artifact: what a run learned, in a folder that loads back into the same model.

    model.safetensors   the tensors that trained: adapters, LoRA, BitFit biases, MEFT gates and the task head; every
                        parameter for full fine-tuning (the rest is the backbone, rebuilt from its name)
    mefts.json          the manifest (`MANIFEST_KEYS`): format version, backbone (name, folder, sha256 of its weight
                        files where it is a local folder, a sampled fingerprint of its weights, seed), method and
                        options, task (name, problem, metrics, label names, text/label columns), num_labels,
                        max_seq_len, head, the run's full TrainConfig, the run's dev/test metrics, versions
    tokenizer files     tokenizer.save_pretrained, so that predicting needs nothing but the backbone

`load_finetuned(path)` rebuilds the backbone exactly as training built it (same head, same seed for anything newly
initialised), applies the method with the stored options, checks the backbone against the manifest, loads the
tensors strictly, and returns (model in eval mode, tokenizer). Every failure is an `ArtifactError` (a ConfigError)
naming the file and what is wrong. Folders are written to a temporary sibling and renamed into place.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mefts_core.errors import MISSING, ArtifactError, ConfigError, is_int

log = logging.getLogger(__name__)

FORMAT, FORMAT_VERSION = "mefts-artifact", 1
MANIFEST, WEIGHTS = "mefts.json", "model.safetensors"
MANIFEST_KEYS = ("format", "format_version", "backbone", "method", "method_options", "task", "problem",
                 "label_names", "num_labels", "max_seq_len", "head", "scoring", "config", "tensors", "metrics",
                 "versions")


# ------------------------------------------------------------------------------------------------ tensors


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter that trains, by name, as contiguous CPU copies (all of them for full fine-tuning)."""
    return {n: p.detach().to("cpu", copy=True).contiguous() for n, p in model.named_parameters()
            if p.requires_grad}


def check_trainable(model: torch.nn.Module, tensors: dict[str, torch.Tensor], file: Path | str) -> None:
    """`tensors` must be exactly the model's trainable parameters, by name, shape and dtype.

    ArtifactError naming `file` and the first tensor at fault otherwise.
    """
    expected = {n: p for n, p in model.named_parameters() if p.requires_grad}
    missing = [n for n in expected if n not in tensors]
    if missing:
        raise ArtifactError(file, ("tensors", missing[0]), MISSING, f"missing ({len(missing)} of {len(expected)} "
                            "trainable tensors of the model the manifest describes are absent)")
    unexpected = [n for n in tensors if n not in expected]
    if unexpected:
        raise ArtifactError(file, ("tensors", unexpected[0]), MISSING, f"not a trainable tensor of the model the "
                            f"manifest describes ({len(unexpected)} unexpected)")
    for name, p in expected.items():
        t = tensors[name]
        if tuple(t.shape) != tuple(p.shape) or t.dtype != p.dtype:
            raise ArtifactError(file, ("tensors", name), f"{tuple(t.shape)} {t.dtype}",
                                f"the model needs shape {tuple(p.shape)} {p.dtype}")


def load_trainable(model: torch.nn.Module, tensors: dict[str, torch.Tensor], file: Path | str) -> None:
    """Copy `tensors` into the model's trainable parameters, after `check_trainable` has passed them all."""
    check_trainable(model, tensors, file)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.copy_(tensors[name])


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata={"format": "pt"})


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; ArtifactError naming it when it is absent or unreadable."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise ArtifactError(path, "tensors", MISSING, "file not found")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own SafetensorError, OSError or ValueError on a damaged file
        raise ArtifactError(path, "tensors", MISSING, f"cannot be read ({type(e).__name__}: {e})") from e


# ---------------------------------------------------------------------------------------------- folders


@contextlib.contextmanager
def replaced_folder(target: Path) -> Iterator[Path]:
    """Yield a fresh temporary sibling of `target`; when the block succeeds it takes `target`'s place.

    The previous folder is moved aside to `.<name>-old` first and removed last, so at every moment one complete
    folder exists (`complete_folder` finds the old one if a crash falls between the two renames). A failing block
    leaves `target` untouched.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-new-"))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _usual_modes(tmp)
    old = target.parent / f".{target.name}-old"
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def _usual_modes(folder: Path) -> None:
    """Modes as the umask makes them: mkdtemp makes the folder 0700 and safetensors its files 0600, which would
    keep a service running as another user of the same group from serving the artifact."""
    mask = 0o022
    try:
        status = Path("/proc/self/status").read_text()
        mask = next(int(line.split()[1], 8) for line in status.splitlines() if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        pass
    folder.chmod(0o777 & ~mask)
    for p in folder.rglob("*"):
        p.chmod((0o777 if p.is_dir() else 0o666) & ~mask)


def complete_folder(target: Path, marker: str) -> Path | None:
    """`target` if it holds `marker`, else the `.<name>-old` a crash mid-replace left, else None."""
    for p in (target, target.parent / f".{target.name}-old"):
        if (p / marker).is_file():
            return p
    return None


def remove_folder(target: Path) -> None:
    """`target` and what `replaced_folder` may have left beside it."""
    for p in [target, target.parent / f".{target.name}-old", *target.parent.glob(f".{target.name}-new-*")]:
        shutil.rmtree(p, ignore_errors=True)


def folder_bytes(path: Path) -> int:
    """Bytes of the files under `path` (symlinks not followed; a folder that changes while it is walked is
    counted as far as it could be read)."""
    total = 0
    stack = [path]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:  # removed while we looked, or unreadable: what it held is not counted
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
            except OSError:
                continue
    return total


# --------------------------------------------------------------------------------------------- manifest


def versions() -> dict[str, str]:
    """mefts, torch, transformers, peft and Python versions."""
    from importlib.metadata import PackageNotFoundError, version

    import peft
    import transformers

    try:
        mefts = version("mefts")
    except PackageNotFoundError:
        mefts = "unknown"
    return {"mefts": mefts, "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "python": platform.python_version()}


def _task_entry(config: Any, task: Any) -> dict[str, Any]:
    if task.kind == "local":
        text, label = list(config.task_options["text_columns"]), config.task_options["label_column"]
    elif task.problem == "multiple_choice":
        text, label = list(task.columns), None  # QA rows are read by the task's own converter
    else:
        text, label = list(task.columns[:-1]), "label"
    return {"name": task.name, "kind": task.kind, "problem": task.problem, "metrics": list(task.metrics),
            "main_metric": task.main_metric, "text_columns": text, "label_column": label}


def build_manifest(config: Any, task: Any, *, head: str, lm_choices: bool, fingerprint: str,
                   tensors: dict[str, torch.Tensor], metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    """The manifest of an artifact of `config`'s run on `task` (see the module docstring)."""
    from mefts_core.backbones import BACKBONES
    from mefts_core.methods import options_dict
    from mefts_core.training.prepare import backbone_folder, folder_weights_sha256

    folder = backbone_folder(config.backbone)
    spec = BACKBONES.get(config.backbone)
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "backbone": {"name": config.backbone, "folder": str(folder) if folder else None,
                     "files_sha256": folder_weights_sha256(folder) if folder else None,
                     "weights_fingerprint": fingerprint, "random_init": bool(spec and not spec.real_weights),
                     "seed": config.seed},
        "method": config.method, "method_options": options_dict(config.method_options),
        "task": _task_entry(config, task), "problem": task.problem,
        "label_names": list(task.label_names) if task.label_names else None,
        "num_labels": task.num_labels or 2, "max_seq_len": config.max_seq_len, "head": head,
        "scoring": "likelihood" if lm_choices else "head", "config": config.to_dict(),
        "tensors": {"file": WEIGHTS, "count": len(tensors), "numel": sum(t.numel() for t in tensors.values()),
                    "all_parameters": config.method == "full"},
        "metrics": metrics, "versions": versions(),
    }


def save_artifact(path: Path | str, model: torch.nn.Module, tokenizer: Any, manifest: dict[str, Any],
                  tensors: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """Write the artifact folder at `path` (replacing one there); return {"path", "bytes"}."""
    from mefts_core.training.prepare import unwrapped

    target = Path(path)
    tensors = trainable_state(unwrapped(model)) if tensors is None else tensors
    with replaced_folder(target) as tmp:
        save_tensors(tensors, tmp / WEIGHTS)
        tokenizer.save_pretrained(str(tmp))
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    size = folder_bytes(target)
    log.info("artifact: %s (%d tensors, %.2f MB)", target, len(tensors), size / 1e6)
    return {"path": str(target), "bytes": size}


# ---------------------------------------------------------------------------------------------- loading


@dataclass
class Artifact:
    """A loaded artifact: the model (eval mode, on CPU), its tokenizer, the manifest and where it came from."""

    model: torch.nn.Module
    tokenizer: Any
    manifest: dict[str, Any]
    path: Path

    @property
    def lm_choices(self) -> bool:
        return self.manifest["scoring"] == "likelihood"


def artifact_dir(path: Path | str) -> Path:
    """The artifact folder: `path` itself, or its `model/` (a run's output folder)."""
    p = Path(path)
    if not (p / MANIFEST).is_file() and (p / "model" / MANIFEST).is_file():
        return p / "model"
    return p


def read_manifest(path: Path | str) -> dict[str, Any]:
    """The checked manifest of the artifact at `path` (ArtifactError naming mefts.json and the bad key)."""
    file = artifact_dir(path) / MANIFEST
    if not file.is_file():
        raise ArtifactError(file, "manifest", MISSING, "not found: not a mefts artifact folder")
    try:
        manifest = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(file, "manifest", MISSING, f"not valid JSON ({e})") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(file, "format", manifest.get("format") if isinstance(manifest, dict) else manifest,
                            f"not a mefts artifact manifest (format must be {FORMAT!r})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(file, "format_version", manifest.get("format_version"),
                            f"this mefts reads version {FORMAT_VERSION}")
    for key in MANIFEST_KEYS:
        if key not in manifest:
            raise ArtifactError(file, key, MISSING, "required in the manifest")
    _check_kinds(manifest, file)
    return manifest


def _check_kinds(manifest: dict[str, Any], file: Path) -> None:
    """The fields loading reads must have their kind (a hand-edited manifest fails here, naming the field)."""
    from mefts_core.backbones import HEADS
    from mefts_core.tasks.base import PROBLEMS

    for key in ("backbone", "task", "config", "tensors"):
        if not isinstance(manifest[key], dict):
            raise ArtifactError(file, key, manifest[key], "must be an object")
    if not isinstance(manifest["backbone"].get("name"), str):
        raise ArtifactError(file, ("backbone", "name"), manifest["backbone"].get("name", MISSING), "must be a name")
    checks = (("head", manifest["head"] in HEADS, f"must be one of {', '.join(HEADS)}"),
              ("problem", manifest["problem"] in PROBLEMS, f"must be one of {', '.join(PROBLEMS)}"),
              ("num_labels", is_int(manifest["num_labels"]) and manifest["num_labels"] >= 1, "must be an integer >= 1"),
              ("max_seq_len", is_int(manifest["max_seq_len"]) and manifest["max_seq_len"] >= 1,
               "must be an integer >= 1"),
              ("scoring", manifest["scoring"] in ("head", "likelihood"), "must be 'head' or 'likelihood'"))
    for key, ok, reason in checks:
        if not ok:
            raise ArtifactError(file, key, manifest[key], reason)


def _typed_options(manifest: dict[str, Any], file: Path) -> Any:
    from mefts_core.methods import method_options

    opts = manifest["method_options"]
    if not isinstance(opts, dict):
        raise ArtifactError(file, "method_options", opts, "must be an object")
    try:
        return method_options(manifest["method"], **opts)
    except ConfigError as e:
        loc = e.loc if e.loc == ("method",) else ("method_options", *e.loc)
        raise ArtifactError(file, loc, e.value, e.reason) from e


def _check_backbone_files(backbone: dict[str, Any], file: Path) -> None:
    """A local backbone folder must hold the weight files the artifact was trained on."""
    from mefts_core.training.prepare import backbone_folder, folder_weights_sha256

    want = backbone.get("files_sha256")
    if not want:
        return
    folder = backbone_folder(backbone["name"])
    if folder is None:
        raise ArtifactError(file, ("backbone", "name"), backbone["name"], "the backbone's folder is not found here")
    have = folder_weights_sha256(folder)
    if have != want:
        raise ArtifactError(file, ("backbone", "files_sha256"), want, f"the weight files in {folder} are another "
                            f"backbone (sha256 {str(have)[:16]}..., trained on {want[:16]}...)")


def load_artifact(path: Path | str, device: str | torch.device = "cpu") -> Artifact:
    """Rebuild the fine-tuned model of the artifact at `path` (or a run folder holding `model/`)."""
    from transformers import AutoTokenizer

    from mefts_core.training.prepare import build_model

    folder = artifact_dir(path)
    manifest = read_manifest(folder)
    file = folder / MANIFEST
    options = _typed_options(manifest, file)
    backbone = manifest["backbone"]
    _check_backbone_files(backbone, file)
    try:
        model, _, fingerprint = build_model(
            backbone["name"], head=manifest["head"], num_labels=manifest["num_labels"],
            seed=backbone.get("seed", manifest["config"].get("seed", 0)), method=manifest["method"],
            options=options, task_name=manifest["task"].get("name", "?"))
    except (ValueError, OSError) as e:  # ConfigError included: a backbone name this machine does not have
        raise ArtifactError(file, "backbone", backbone["name"], f"cannot be rebuilt ({e})") from e
    if fingerprint != backbone.get("weights_fingerprint"):
        raise ArtifactError(file, ("backbone", "weights_fingerprint"), backbone.get("weights_fingerprint"),
                            f"backbone {backbone['name']!r} here is not the one the artifact was trained on "
                            f"(its weights' fingerprint is {fingerprint[:16]}...)")
    load_trainable(model, read_tensors(folder / WEIGHTS), folder / WEIGHTS)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as e:
        raise ArtifactError(folder, "tokenizer", MISSING, f"cannot be loaded ({e})") from e
    return Artifact(model.to(device).eval(), tokenizer, manifest, folder)


def load_finetuned(path: Path | str, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, Any]:
    """(model in eval mode, tokenizer) of a saved artifact; see the module docstring."""
    art = load_artifact(path, device)
    return art.model, art.tokenizer
