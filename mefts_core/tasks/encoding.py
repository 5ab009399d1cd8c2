"""Tokenise examples once; pad per batch (dynamic padding).

Text examples become {"input_ids", "attention_mask", ["token_type_ids"], "label"} with lists of ints.
Choice examples become one (context, option) pair per option: lists of lists. `collate` pads a batch to its own
longest sequence (and, for multiple choice, to its largest number of options, with `choice_mask` marking the real
ones).
"""

from __future__ import annotations

from typing import Any

import torch

from mefts_core.tasks.base import ChoiceExample, Example, TextExample

MODEL_KEYS = ("input_ids", "attention_mask", "token_type_ids")


def encode(examples: list[Example], tokenizer: Any, max_seq_len: int) -> list[dict[str, Any]]:
    if not examples:
        return []
    if isinstance(examples[0], TextExample):
        return _encode_text(examples, tokenizer, max_seq_len)  # type: ignore[arg-type]
    return _encode_choices(examples, tokenizer, max_seq_len)  # type: ignore[arg-type]


def _keys(enc: Any) -> list[str]:
    return [k for k in MODEL_KEYS if k in enc]


def _encode_text(examples: list[TextExample], tokenizer: Any, max_seq_len: int) -> list[dict[str, Any]]:
    first = [e.texts[0] for e in examples]
    second = [e.texts[1] for e in examples] if len(examples[0].texts) > 1 else None
    enc = tokenizer(first, second, truncation=True, max_length=max_seq_len)
    keys = _keys(enc)
    return [{**{k: enc[k][i] for k in keys}, "label": e.label} for i, e in enumerate(examples)]


def _encode_choices(examples: list[ChoiceExample], tokenizer: Any, max_seq_len: int) -> list[dict[str, Any]]:
    contexts = [e.context for e in examples for _ in e.choices]
    options = [c for e in examples for c in e.choices]
    enc = tokenizer(contexts, options, truncation=True, max_length=max_seq_len)
    keys = _keys(enc)
    out, pos = [], 0
    for e in examples:
        n = len(e.choices)
        out.append({**{k: enc[k][pos : pos + n] for k in keys}, "label": e.label})
        pos += n
    return out


def collate(features: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """A padded batch: the model's inputs, "labels", and for multiple choice "choice_mask" (B, C) bool."""
    keys = [k for k in MODEL_KEYS if k in features[0]]
    label = features[0]["label"]
    labels = torch.tensor([f["label"] for f in features], dtype=torch.float32 if isinstance(label, float) else torch.long)
    if features[0]["input_ids"] and isinstance(features[0]["input_ids"][0], list):  # multiple choice
        n_choices = max(len(f["input_ids"]) for f in features)
        length = max(len(seq) for f in features for seq in f["input_ids"])
        batch = {}
        for k in keys:
            fill = pad_id if k == "input_ids" else 0
            t = torch.full((len(features), n_choices, length), fill, dtype=torch.long)
            for i, f in enumerate(features):
                for j, seq in enumerate(f[k]):
                    t[i, j, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            batch[k] = t
        mask = torch.zeros((len(features), n_choices), dtype=torch.bool)
        for i, f in enumerate(features):
            mask[i, : len(f["input_ids"])] = True
        if "attention_mask" in batch:
            batch["attention_mask"][..., 0] |= (~mask).long()  # padded options attend to one token: no empty rows
        batch["choice_mask"] = mask
    else:
        length = max(len(f["input_ids"]) for f in features)
        batch = {}
        for k in keys:
            fill = pad_id if k == "input_ids" else 0
            t = torch.full((len(features), length), fill, dtype=torch.long)
            for i, f in enumerate(features):
                t[i, : len(f[k])] = torch.tensor(f[k], dtype=torch.long)
            batch[k] = t
    batch["labels"] = labels
    return batch
