"""The model of a run, built one way for training and for loading a saved artifact, and what identifies its backbone.

- `head_for(problem, backbone)`: which head a task gets (multiple choice on a decoder is scored by likelihood).
- `build_model(...)`: the backbone with that head, seeded as in training, then the method with its typed options.
  Loading an artifact rebuilds the frozen weights bit for bit only because both paths go through here.
- `weights_fingerprint(model)`: a sampled hash of the backbone's weights (cheap at any size), and
  `backbone_files(name)`: the sha256 of a local backbone folder's weight files.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from mefts_core.backbones import BACKBONES, is_decoder, load_backbone, packaged_weights_dir
from mefts_core.errors import ConfigError
from mefts_core.tasks.encoding import encode
from mefts_core.training.scoring import ChoiceScorer, encode_choices_lm

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_SAMPLES = 64  # values per tensor the fingerprint reads


def head_for(problem: str, backbone: str) -> tuple[str, bool]:
    """(head, lm_choices): an encoder scores options with its multiple-choice head, a decoder by their likelihood."""
    lm_choices = problem == "multiple_choice" and is_decoder(backbone)
    head = "causal_lm" if lm_choices else "multiple_choice" if problem == "multiple_choice" else "seq_cls"
    return head, lm_choices


def load_headed_backbone(backbone: str, *, head: str, num_labels: int, seed: int,
                         task_name: str) -> tuple[torch.nn.Module, Any]:
    """load_backbone with the task's head; decoders get pad = eos on the tokenizer and the model config."""
    try:
        model, tokenizer = load_backbone(backbone, head=head, num_labels=num_labels, seed=seed)
    except ValueError as e:
        if head != "multiple_choice":
            raise
        raise ConfigError("backbone", backbone, f"task {task_name!r} is multiple choice, scored with a "
                          f"multiple-choice head, which this backbone lacks ({e}); use an encoder backbone (e.g. "
                          "minilm-l6) or a decoder (likelihood scoring)") from e
    if tokenizer.pad_token_id is None:  # decoder tokenizers (GPT-2, Llama) have none
        tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def build_model(backbone: str, *, head: str, num_labels: int, seed: int, method: str, options: Any,
                task_name: str) -> tuple[torch.nn.Module, Any, str]:
    """(model with the method applied, tokenizer, fingerprint of the backbone's weights before the method)."""
    from mefts_core.methods import apply_options

    model, tokenizer = load_headed_backbone(backbone, head=head, num_labels=num_labels, seed=seed,
                                            task_name=task_name)
    fingerprint = weights_fingerprint(model)
    return apply_options(model, method, options), tokenizer, fingerprint


def prepared_model(config: Any, task: Any) -> tuple[torch.nn.Module, Any, bool, str]:
    """A run's model: (model, or its ChoiceScorer for likelihood scoring; tokenizer; lm_choices; fingerprint)."""
    head, lm_choices = head_for(task.problem, config.backbone)
    model, tokenizer, fingerprint = build_model(
        config.backbone, head=head, num_labels=task.num_labels or 2, seed=config.seed, method=config.method,
        options=config.method_options, task_name=task.name)
    return (ChoiceScorer(model) if lm_choices else model), tokenizer, lm_choices, fingerprint


def unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face model inside a ChoiceScorer (what an artifact saves and `load_finetuned` returns)."""
    return model.lm if isinstance(model, ChoiceScorer) else model


def featurize(examples: list, tokenizer: Any, max_seq_len: int, lm_choices: bool) -> list[dict[str, Any]]:
    """Encoded examples: (context, option) rows for likelihood scoring, else the usual encoding."""
    if lm_choices:
        return [{**encode_choices_lm(tokenizer, e.context, e.choices, max_seq_len), "label": e.label}
                for e in examples]
    return encode(examples, tokenizer, max_seq_len)


def weights_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over the backbone's parameter names, shapes and an even sample of each one's values.

    The task head is left out (it is new, and saved with the artifact); a sample, not every value, so that it costs
    milliseconds at any size while still telling apart two checkpoints or two seeds of a random-init shape.
    """
    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in model.base_model.named_parameters():
            flat = p.detach().reshape(-1)
            sample = flat[:: max(1, flat.numel() // _SAMPLES)][:_SAMPLES]
            h.update(f"{name}:{tuple(p.shape)}:{p.dtype}".encode())
            h.update(sample.float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def backbone_folder(name: str) -> Path | None:
    """The local folder a backbone's weights load from, or None (random init, or a hub id)."""
    if name in BACKBONES:
        return packaged_weights_dir(name)
    path = Path(name)
    return path.resolve() if path.is_dir() else None


def folder_weights_sha256(folder: Path) -> str | None:
    """sha256 of the weight files in `folder` (names and bytes, in name order), or None when it has none."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if not files:
        return None
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode())
        with p.open("rb") as f:
            h.update(hashlib.file_digest(f, "sha256").digest())
    return h.hexdigest()
