"""Small builders shared by the engine tests: tiny BERT/RoBERTa models and real-text batches."""

from __future__ import annotations

import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from mefts_core.backbones import load_backbone
from mefts_core.methods import apply_method

SENTENCES = [
    "the film is a charming and often affecting journey",
    "unflinchingly bleak and desperate",
    "it 's slow -- very , very slow",
    "a gorgeous , witty , seductive movie",
]


def tiny(family: str = "bert", layers: int = 2, hidden: int = 32, dropout: float = 0.1, seed: int = 0,
         dtype: torch.dtype = torch.float32):
    """A random post-LN encoder with a 2-way classifier (docs/method.md §10: 2-4 layers, d=32-64)."""
    kw = dict(vocab_size=120, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
              intermediate_size=2 * hidden, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
              max_position_embeddings=64, num_labels=2)
    torch.manual_seed(seed)
    if family == "bert":
        model = BertForSequenceClassification(BertConfig(**kw))
    else:
        model = RobertaForSequenceClassification(RobertaConfig(pad_token_id=1, **kw))
    return model.to(dtype)


def tiny_batch(batch: int = 3, seq: int = 10, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 120, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[0, seq - 3 :] = 0  # padding must be masked identically in the recompute
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.arange(batch) % 2}


def meft_model(variant: str, family: str = "bert", **kw):
    """A tiny model prepared for a MEFT variant; kw splits into model (layers, hidden, dropout, dtype) and options."""
    model_kw = {k: kw.pop(k) for k in ("layers", "hidden", "dropout", "dtype") if k in kw}
    model = tiny(family, seed=kw.pop("init_seed", 0), **model_kw)
    return apply_method(model, variant, **kw)


def minilm(head: str = "seq_cls"):
    model, tok = load_backbone("minilm-l6", head=head, num_labels=2)
    return model, tok


def text_batch(tok, n: int = 8, max_len: int = 32) -> dict[str, torch.Tensor]:
    texts = (SENTENCES * ((n + len(SENTENCES) - 1) // len(SENTENCES)))[:n]
    b = tok(texts, padding="max_length", truncation=True, max_length=max_len, return_tensors="pt")
    b = dict(b)
    b["labels"] = torch.arange(n) % 2
    return b


def max_rel(rows) -> float:
    """The largest per-layer relative gradient error of diagnostics.gradient_fidelity rows."""
    return max(r["rel_error"] for r in rows)
