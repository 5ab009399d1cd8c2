"""apply_method(model, method, **options): the one entry point that prepares a Hugging Face model for a method.

Afterwards only the method's parameters and the task head train. The task head is every parameter outside the
backbone (`model.base_model`), e.g. `classifier.*`; the backbone's pooler stays frozen as in the MEFT code.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from mefts_core.config import AdapterOptions, LoraOptions, MeftOptions, method_options
from mefts_core.engine.adapters import adapter_for
from mefts_core.engine.meft import apply_meft
from mefts_core.engine.models.bart import BartFamily
from mefts_core.engine.models.base import Chain, install
from mefts_core.engine.models.bert import BertFamily
from mefts_core.engine.models.decoders import LlamaFamily, OptFamily

FAMILIES = (BertFamily, BartFamily, OptFamily, LlamaFamily)


def family_of(model: nn.Module):
    model_type = getattr(model.config, "model_type", None)
    for fam in FAMILIES:
        if model_type in fam.model_types:
            return fam
    supported = sorted(t for fam in FAMILIES for t in fam.model_types)
    raise ValueError(f"model_type={model_type!r}: not supported by mefts; supported: {', '.join(supported)}")


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters outside the backbone: the task head (empty for a bare BertModel)."""
    base = model.base_model
    if base is model:
        return []
    inside = {id(p) for p in base.parameters()}
    return [p for p in model.parameters() if id(p) not in inside]


def apply_method(model: nn.Module, method: str, **options: Any) -> nn.Module:
    """Prepare `model` in place for `method` and return it.

    Methods: "full", "lora", "adapter", "bitfit", "meft1", "meft2", "meft3". Options are validated by
    `mefts_core.config.method_options` (ValueError naming the field and value). `gradient_checkpointing=True`
    applies to the non-reversible methods.
    """
    opts = method_options(method, **options)
    family = family_of(model)
    base = model.base_model
    if getattr(model, "_mefts_method", None) is not None:
        raise ValueError(f"method={method!r}: model already prepared for {model._mefts_method!r}; load a fresh one")

    trainable: list[nn.Parameter]
    if method == "full":
        trainable = list(model.parameters())
    elif method == "bitfit":
        trainable = [p for n, p in base.named_parameters() if n.endswith("bias")]
    elif method == "lora":
        trainable = _apply_lora(model, family, opts)
    elif method == "adapter":
        trainable = _apply_adapters(base, family, opts)
    else:
        trainable = [p for m in apply_meft(base, family, opts) for p in m.parameters()]

    keep = {id(p) for p in trainable} | {id(p) for p in head_parameters(model)}
    if not keep:
        raise ValueError(f"method={method!r}: nothing to train in this {model.config.model_type} model "
                         "(e.g. BitFit on a model without bias terms and without a task head)")
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    if getattr(opts, "gradient_checkpointing", False):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if getattr(opts, "ffn_chunk", 0):
        _chunk_ffn(model, family, opts.ffn_chunk)
    if getattr(opts, "offload_activations", False):
        _offload_activations(model)
    model._mefts_method = method
    model._mefts_options = opts
    return model


def _apply_lora(model: nn.Module, family, opts: LoraOptions) -> list[nn.Parameter]:
    """LoRA from peft, injected in place (no PeftModel wrapper, so the model keeps its class and forward)."""
    from peft import LoraConfig, inject_adapter_in_model

    targets = opts.target_modules or family.lora_targets
    names = {n.rsplit(".", 1)[-1] for n, _ in model.base_model.named_modules()}
    missing = [t for t in targets if t not in names]
    if missing:
        raise ValueError(f"target_modules={targets!r}: {missing[0]!r} is not a module of this model")
    cfg = LoraConfig(r=opts.r, lora_alpha=opts.alpha, lora_dropout=opts.dropout, target_modules=targets)
    inject_adapter_in_model(cfg, model.base_model)
    return [p for n, p in model.base_model.named_parameters() if "lora_" in n]


def _apply_adapters(base: nn.Module, family, opts: AdapterOptions) -> list[nn.Parameter]:
    """Bottleneck adapters: Pfeiffer (series after the FFN), Houlsby (series after attention and FFN), parallel."""
    made: list[nn.Module] = []

    def new_adapter() -> nn.Module:
        made.append(adapter_for(base, opts.bottleneck, opts.adapter_init_std))
        return made[-1]

    for layers, keys in family.groups(base):
        chains = []
        for layer in layers:
            attn, ffn = family.pieces(
                layer,
                attn_adapter=new_adapter() if opts.placement == "houlsby" else None,
                ffn_adapter=new_adapter(),
                ffn_mode="parallel" if opts.placement == "parallel" else "series",
            )
            chains.append(Chain([*attn, ffn]))
        install(layers, 0, None, None, chains, keys)
    return [p for m in made for p in m.parameters()]


def _chunk_ffn(model: nn.Module, family, chunk: int) -> None:
    """Hugging Face's own FFN chunking (BertLayer.chunk_size_feed_forward); mefts' adapter layers chunk the same way."""
    if family is not BertFamily:
        raise ValueError(f"ffn_chunk={chunk}: Hugging Face chunks the FFN of BERT/RoBERTa only, not of "
                         f"model_type={model.config.model_type!r}")
    model.config.chunk_size_feed_forward = chunk
    for m in model.modules():
        if hasattr(m, "chunk_size_feed_forward"):
            m.chunk_size_feed_forward = chunk
        if isinstance(m, Chain):
            m.chunk_tokens = chunk


def _offload_activations(model: nn.Module) -> None:
    """Every forward runs under save_on_cpu: what autograd saves waits in (pinned, on CUDA) CPU memory for backward."""
    import torch

    forward = model.forward

    def offloaded(*args, **kwargs):
        pin = next(model.parameters()).device.type == "cuda"
        with torch.autograd.graph.save_on_cpu(pin_memory=pin):
            return forward(*args, **kwargs)

    model.forward = offloaded


def meft_stacks(model: nn.Module) -> list[nn.Module]:
    """The reversible stacks inside a model (empty for non-MEFT methods)."""
    from mefts_core.engine.reversible import ReversibleStack

    return [m for m in model.modules() if isinstance(m, ReversibleStack)]


__all__ = ["apply_method", "family_of", "head_parameters", "meft_stacks", "MeftOptions"]
