"""Honest memory measurement of one training step.

Two numbers per step (see docs/design.md, "Memory is measured two ways"):

* ``stored_activation_bytes``: what autograd keeps from forward to backward, counted exactly with
  ``torch.autograd.graph.saved_tensors_hooks`` (device-independent; misses any recompute in backward).
* ``peak_bytes``: the peak allocated over the whole step. On CUDA from the caching allocator's statistics;
  on CPU from ``torch.profiler`` allocation events, which do see the recompute inside a custom backward
  or inside gradient checkpointing.

Parameters, gradients and optimizer state are counted separately from the tensors themselves.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch._C._profiler import _EventType

log = logging.getLogger(__name__)

LossFn = Callable[[Any, dict[str, torch.Tensor]], torch.Tensor]
_StorageKey = tuple[str, int]

# Allocation events on these device types come from the CPU allocator (cf. torch.autograd.profiler's
# _cpu_memory_usage, which treats CPU, MKLDNN and IDEEP as CPU memory).
_CPU_ALLOC_DEVICE_TYPES = {"cpu", "mkldnn", "ideep"}


@dataclass
class MemoryReport:
    """Memory and time of one measured training step. All sizes are bytes."""

    device: str  # "cpu" or "cuda:0"
    how: str  # "cuda-allocator" or "cpu-profiler"
    stored_activation_bytes: int  # saved for backward during forward+loss, by storage, parameters excluded
    peak_bytes: int  # absolute peak over forward, backward and optimizer.step()
    peak_activation_bytes: int  # highest rise over forward+backward above the start (params, grads, optimizer
    #                             state all allocated): the paper's max_memory_allocated - memory_allocated
    param_bytes: int
    trainable_param_bytes: int
    grad_bytes: int  # .grad of trainable parameters at the end of backward
    optimizer_bytes: int  # every tensor in optimizer.state (AdamW: exp_avg, exp_avg_sq and the scalar step)
    step_seconds: float  # wall time of the measured step (on CPU: with the profiler running)
    batch_shape: list[int]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- tensor bookkeeping


def _storage_key(t: torch.Tensor) -> _StorageKey | None:
    """Identity of the memory behind ``t``; views and tensors sharing a storage map to one key."""
    try:
        ptr = t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # sparse, nested or storage-less subclasses
        return None
    return (str(t.device), ptr) if ptr else None


def _storage_nbytes(t: torch.Tensor) -> int:
    # The whole storage, not the view: a saved slice keeps all of its base alive.
    try:
        return t.untyped_storage().nbytes()
    except (RuntimeError, NotImplementedError):
        return t.nelement() * t.element_size()


def _unique_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (tied weights and views counted once)."""
    seen: set[_StorageKey] = set()
    total = 0
    for t in tensors:
        key = _storage_key(t)
        if key is None:
            total += t.nelement() * t.element_size()
        elif key not in seen:
            seen.add(key)
            total += _storage_nbytes(t)
    return total


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)]


class _SavedTensorCounter:
    """Records every tensor packed for backward while active; counts those still held afterwards.

    The pack hook hands autograd a detached alias (same storage, no copy) and keeps only a weak reference
    to it, so a tensor saved by a piece of graph that was dropped before backward is not counted, and a
    freed address reused by a later saved tensor cannot be mistaken for a duplicate. Returning the tensor
    itself would not do: a saved *output* would then hold its own grad_fn, a reference cycle that keeps
    dropped graphs alive until Python's garbage collector runs, changing the memory being measured.
    """

    def __init__(self, exclude: set[_StorageKey]) -> None:
        self._exclude = exclude
        self._refs: list[weakref.ref[torch.Tensor]] = []
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        alias = t.detach()
        self._refs.append(weakref.ref(alias))
        return alias

    @staticmethod
    def _unpack(t: torch.Tensor) -> torch.Tensor:
        return t

    def __enter__(self) -> _SavedTensorCounter:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)

    def held_bytes(self) -> int:
        """Bytes of the distinct non-parameter storages still saved; call before backward."""
        alive = [t for t in (r() for r in self._refs) if t is not None]
        return _unique_bytes(t for t in alive if _storage_key(t) not in self._exclude)


# --------------------------------------------------------------------------- the step


def step_loss(output: Any, batch: dict[str, torch.Tensor], loss_fn: LossFn | None = None) -> torch.Tensor:
    """``output.loss`` if the model computed one, else ``loss_fn(output, batch)``, else a synthetic
    ``logits.float().pow(2).mean()`` (or of the last hidden state for a bare backbone): it needs no labels and
    exercises every path."""
    loss = output.get("loss") if isinstance(output, dict) else getattr(output, "loss", None)
    if loss is not None:
        return loss
    if loss_fn is not None:
        return loss_fn(output, batch)
    y = output.get("logits") if isinstance(output, dict) else getattr(output, "logits", None)
    if y is None:
        y = output["last_hidden_state"] if isinstance(output, dict) else output.last_hidden_state
    return y.float().pow(2).mean()


def _warmup_step(
    model: nn.Module, batch: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer, loss_fn: LossFn | None
) -> None:
    optimizer.zero_grad(set_to_none=True)
    step_loss(model(**batch), batch, loss_fn).backward()
    optimizer.step()


def _batch_shape(batch: dict[str, torch.Tensor]) -> list[int]:
    if isinstance(batch.get("input_ids"), torch.Tensor):
        return list(batch["input_ids"].shape)
    first = next((v for v in batch.values() if isinstance(v, torch.Tensor)), None)
    return list(first.shape) if first is not None else []


def _start_bytes(model: nn.Module, batch: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
                 params: list[nn.Parameter], device: torch.device) -> int:
    """Bytes alive at the start of the measured step. CUDA: the allocator's count, its peak statistics reset; CPU:
    everything we know to be alive (parameters, buffers, optimizer state, grads, the batch), as CUDA's absolute
    counter would see it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    alive = params + list(model.buffers()) + _optimizer_tensors(optimizer)
    alive += [p.grad for p in params if p.grad is not None]
    alive += [v for v in batch.values() if isinstance(v, torch.Tensor)]
    return _unique_bytes(alive)


def _device_name(device: torch.device) -> str:
    """The report's device name: cpu, or cuda:<index> (the current device for a bare cuda device)."""
    if device.type != "cuda":
        return "cpu"
    return f"cuda:{device.index if device.index is not None else torch.cuda.current_device()}"


def _model_device(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.device:
    for t in model.parameters():
        return t.device
    for v in batch.values():
        if isinstance(v, torch.Tensor):
            return v.device
    return torch.device("cpu")


# --------------------------------------------------------------------------- CPU peak from the profiler


_OPT_MARK = "mefts::optimizer_step"


def _profiled_rise(prof: torch.profiler.profile) -> tuple[int, int]:
    """Highest rise of live CPU-allocator bytes above the level at profiler start: (before the optimizer step, over
    the whole window). The optimizer step is found by its record_function marker.

    Each allocation event carries ``alloc_size`` (negative for a free) and ``total_allocated``. On CPU
    that total is kept by c10's ProfiledCPUMemoryReporter: it is process-wide, but only counts blocks
    allocated while *some* profiling session was on, never subtracts frees of blocks allocated before
    (they are unknown to it), and carries stale entries from earlier sessions. So only differences within
    one session mean anything. We rebuild the running total from this session's events, counting a free
    only for a block allocated in the window: frees of older blocks are ignored (they are the baseline,
    counted from tensors by the caller; ignoring their free can only overstate the peak).
    """
    results = prof.profiler.kineto_results if prof.profiler is not None else None
    if results is None:
        raise RuntimeError("torch.profiler returned no results; cannot measure CPU peak memory")
    allocs: list[tuple[int, int, int, int]] = []  # (time, ptr, alloc_size, total_allocated)
    opt_start = None
    stack = list(reversed(results.experimental_event_tree()))
    while stack:
        node = stack.pop()
        if node.name == _OPT_MARK:
            opt_start = node.start_time_ns if opt_start is None else min(opt_start, node.start_time_ns)
        if node.tag == _EventType.Allocation:
            f = node.extra_fields
            if f.device.type in _CPU_ALLOC_DEVICE_TYPES:
                allocs.append((node.start_time_ns, f.ptr, f.alloc_size, f.total_allocated))
        stack.extend(reversed(node.children))
    if not allocs:
        raise RuntimeError(
            "torch.profiler recorded no CPU allocation events during the step (profile_memory=True); "
            "refusing to report a peak of zero"
        )
    allocs.sort(key=lambda a: a[0])  # stable: keeps per-thread order for equal timestamps

    live: dict[int, int] = {}
    running = rise = before_opt = 0
    for t, ptr, size, _ in allocs:
        if size > 0:
            running += size - live.get(ptr, 0)  # a repeated ptr means we missed its free
            live[ptr] = size
        elif ptr in live:
            running -= live.pop(ptr)
        rise = max(rise, running)
        if opt_start is None or t < opt_start:
            before_opt = max(before_opt, running)
    # Cross-check against the profiler's own counter (equal unless older blocks were freed in the window).
    first_total = allocs[0][3] - allocs[0][2]
    log.debug(
        "cpu profiler: %d events, rise %d, profiler-total rise %d",
        len(allocs),
        rise,
        max(a[3] for a in allocs) - first_total,
    )
    return before_opt, rise


# --------------------------------------------------------------------------- public entry point


def measure_step(
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer | None = None,
    *,
    warmup_steps: int = 1,
    loss_fn: LossFn | None = None,
) -> MemoryReport:
    """Run ``warmup_steps`` training steps, then measure one: zero_grad, forward+loss, backward, step.

    ``model(**batch)`` is called as given, on the device the model is on, in the model's current
    train/eval mode. The loss is ``output.loss``, else ``loss_fn(output, batch)``, else
    ``output.logits.float().pow(2).mean()``. Without an ``optimizer`` a temporary AdamW with lr=0 is used
    over the parameters that require grad: it allocates the same state and runs the same kernels but
    leaves the weights unchanged. A given optimizer does update the model (warmup_steps + 1 times).
    """
    device = _model_device(model, batch)
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"measure_step supports cpu and cuda, not {device}")
    trainable = [p for p in model.parameters() if p.requires_grad]
    if optimizer is None:
        optimizer = torch.optim.AdamW(trainable, lr=0.0)
    for _ in range(warmup_steps):
        _warmup_step(model, batch, optimizer, loss_fn)

    params = list(model.parameters())
    param_keys = {k for k in (_storage_key(p) for p in params) if k is not None}
    # Grads stay allocated (zeroed, not freed), as after a warm-up step in the paper's measurement: backward then
    # accumulates in place, and everything that rises above the step's starting level is activation memory.
    optimizer.zero_grad(set_to_none=False)

    base_bytes = _start_bytes(model, batch, optimizer, params, device)
    prof = None
    if device.type == "cpu":
        prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True)

    counter = _SavedTensorCounter(exclude=param_keys)
    start = time.perf_counter()
    with prof if prof is not None else nullcontext():
        # Only forward+loss run under the hooks: what backward recomputes is transient (a peak), not stored.
        with counter:
            output = model(**batch)
            loss = step_loss(output, batch, loss_fn)
        stored = counter.held_bytes()
        loss.backward()
        grad_bytes = _unique_bytes(p.grad for p in trainable if p.grad is not None)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            act_rise = torch.cuda.max_memory_allocated(device) - base_bytes
        with torch.profiler.record_function(_OPT_MARK):
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    step_seconds = time.perf_counter() - start
    del output, loss

    if prof is None:
        how, peak = "cuda-allocator", int(torch.cuda.max_memory_allocated(device))
    else:
        # Absolute peak = bytes alive at the step start (from tensors) + the profiler's highest rise above
        # that start during the step; the activation peak is the highest rise before the optimizer step.
        act_rise, rise = _profiled_rise(prof)
        how, peak = "cpu-profiler", base_bytes + rise

    report = MemoryReport(
        device=_device_name(device),
        how=how,
        stored_activation_bytes=stored,
        peak_bytes=peak,
        peak_activation_bytes=max(0, int(act_rise)),
        param_bytes=_unique_bytes(params),
        trainable_param_bytes=_unique_bytes(trainable),
        grad_bytes=grad_bytes,
        optimizer_bytes=_unique_bytes(_optimizer_tensors(optimizer)),
        step_seconds=step_seconds,
        batch_shape=_batch_shape(batch),
    )
    log.info("measure_step: %s", report)
    return report
