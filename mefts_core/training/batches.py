"""Batches, the task loss and evaluation: what the training loop does to one batch of encoded examples."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from mefts_core.tasks import TaskData
from mefts_core.tasks.encoding import MODEL_KEYS, collate
from mefts_core.tasks.metrics import compute_metrics
from mefts_core.training.scoring import collate_choices_lm


def batches(features: list[dict[str, Any]], batch_size: int, pad_id: int, order: list[int] | None = None):
    idx = order if order is not None else list(range(len(features)))
    for i in range(0, len(idx), batch_size):
        yield collate_any([features[j] for j in idx[i : i + batch_size]], pad_id)


def collate_any(features: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Options scored by a decoder's likelihood (they carry "n_option") or the usual padded batch."""
    return collate_choices_lm(features, pad_id) if "n_option" in features[0] else collate(features, pad_id)


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    keys = (*MODEL_KEYS, "option_mask", "choice_mask") if "option_mask" in batch else MODEL_KEYS
    return {k: batch[k] for k in keys if k in batch}


def logits_of(output: Any) -> torch.Tensor:
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


def scores(problem: str, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> list[float | None]:
    """The probability of each row's prediction (softmax over classes or over the real options); None for
    regression, whose prediction is the value itself."""
    if problem == "regression":
        return [None] * logits.shape[0]
    logits = logits.float()
    if problem == "multiple_choice" and "choice_mask" in batch:
        logits = logits.masked_fill(~batch["choice_mask"], torch.finfo(logits.dtype).min)
    return torch.softmax(logits, -1).max(-1).values.tolist()


def _predictions(problem: str, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> list:
    logits = logits.float()
    if problem == "regression":
        return logits.view(-1).tolist()
    if problem == "multiple_choice" and "choice_mask" in batch:
        logits = logits.masked_fill(~batch["choice_mask"], torch.finfo(logits.dtype).min)
    return logits.argmax(-1).tolist()


def autocast(device: torch.device, enabled: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


@torch.no_grad()
def forward_batches(model: torch.nn.Module, features: list[dict[str, Any]], *, batch_size: int, pad_id: int,
                    device: torch.device, bf16: bool):
    """(logits, batch) of each batch in order, in eval mode and without a graph (MEFT's stack then keeps nothing)."""
    model.eval()
    for batch in batches(features, batch_size, pad_id):
        batch = to_device(batch, device)
        with autocast(device, bf16):
            logits = logits_of(model(**model_inputs(batch)))
        yield logits, batch


class Tally:
    """The loss and predictions of batches, then the task's metrics: one rule for evaluation and for predict."""

    def __init__(self, problem: str) -> None:
        self.problem = problem
        self.preds: list = []
        self.labels: list = []
        self.total, self.n = 0.0, 0

    def add(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> list:
        """Count one batch; return its predictions (class or option index, or the regression value)."""
        loss = task_loss(self.problem, logits, batch)
        self.total += float(loss) * len(batch["labels"])
        self.n += len(batch["labels"])
        preds = _predictions(self.problem, logits, batch)
        self.preds += preds
        self.labels += batch["labels"].tolist()
        return preds

    def metrics(self, names: tuple[str, ...] | list[str]) -> dict[str, float]:
        metrics = compute_metrics(tuple(names), self.preds, self.labels)
        metrics["loss"] = self.total / max(self.n, 1)
        return metrics


def evaluate(model: torch.nn.Module, features: list[dict[str, Any]], data: TaskData, *, batch_size: int,
             pad_id: int, device: torch.device, bf16: bool) -> dict[str, float]:
    """The task's metrics (plus "loss") on encoded features, in eval mode."""
    tally = Tally(data.task.problem)
    for logits, batch in forward_batches(model, features, batch_size=batch_size, pad_id=pad_id, device=device,
                                         bf16=bf16):
        tally.add(logits, batch)
    return tally.metrics(data.task.metrics)
