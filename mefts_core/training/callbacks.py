"""How progress leaves the training loop: callbacks. mefts_core never imports the service; the worker subclasses these."""

from __future__ import annotations

from typing import Any


class Callback:
    """Base class with no-op hooks. Override what you need; the loop calls every hook of every callback."""

    def on_start(self, info: dict[str, Any]) -> None:
        """Once, before the first step: config, trainable parameters, dataset sizes, split description, and
        "resumed_from_epoch" (0 for a fresh run)."""

    def on_progress(self, *, step: int, total_steps: int, epoch: int, loss: float) -> None:
        """After each optimiser step. A resumed run continues the step numbers from its checkpoint; the steps of an
        epoch a crash interrupted come again, with the same numbers and the same (bit-identical) losses."""

    def on_epoch_end(self, *, epoch: int, metrics: dict[str, float]) -> None:
        """After each epoch's evaluation and checkpoint (keys like 'train_loss', 'dev_accuracy'); a resumed run does
        not repeat the epochs of its checkpoint."""

    def on_memory(self, report: dict[str, Any]) -> None:
        """Once, with the MemoryReport (as a dict) of a measured training step (not again when a run resumes: the
        result carries the first part's report)."""

    def on_log(self, message: str) -> None:
        """A human-readable line for the run's log."""

    def on_end(self, result: dict[str, Any]) -> None:
        """Once, with the final result dict."""


class CallbackList(Callback):
    """Fans every hook out to several callbacks."""

    def __init__(self, callbacks: list[Callback] | None = None) -> None:
        self.callbacks = list(callbacks or [])

    def __getattribute__(self, name: str) -> Any:
        if name.startswith("on_"):
            cbs = object.__getattribute__(self, "callbacks")
            return lambda *a, **k: [getattr(cb, name)(*a, **k) for cb in cbs] and None
        return object.__getattribute__(self, name)
