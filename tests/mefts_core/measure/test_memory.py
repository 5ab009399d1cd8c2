"""measure_step: stored activations (saved-tensor hooks) and step peak (CPU profiler / CUDA allocator)."""

from __future__ import annotations

import functools
import json
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertForSequenceClassification

from mefts_core.measure import memory
from mefts_core.measure.memory import MemoryReport, measure_step

MiB = 1 << 20


def _bert(layers: int, *, gc: bool = False, seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=1000,  # small vocabulary: keeps parameters from drowning the activations
        hidden_size=128,
        num_attention_heads=4,
        intermediate_size=512,
        num_hidden_layers=layers,
        max_position_embeddings=128,
        num_labels=2,
    )
    model = BertForSequenceClassification(cfg)
    if gc:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model.train()


def _batch(batch: int = 4, seq: int = 64) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "input_ids": torch.randint(0, 1000, (batch, seq), generator=g),
        "attention_mask": torch.ones(batch, seq, dtype=torch.long),
        "labels": torch.randint(0, 2, (batch,), generator=g),
    }


class _Matmul(nn.Module):
    """loss = sum((x * a) @ W): mul saves x (for a's grad); mm saves W, and h only if W is trainable."""

    def __init__(self, n: int = 1024, train_w: bool = False) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.ones(n))
        self.w = nn.Parameter(torch.randn(n, n) / n**0.5, requires_grad=train_w)

    def forward(self, x: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(loss=((x * self.a) @ self.w).sum())


class _SavesNothing(nn.Module):
    """loss = sum(x @ W_frozen + b): no op in the graph needs a saved tensor."""

    def __init__(self, n: int = 1024) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(n, n), requires_grad=False)
        self.b = nn.Parameter(torch.zeros(n))

    def forward(self, x: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(loss=(x @ self.w + self.b).sum())


class _SaveInForward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        y = x * 2
        ctx.save_for_backward(y)  # a fresh storage: must show up in stored bytes
        return y

    @staticmethod
    def backward(ctx, dy):  # type: ignore[override]
        (y,) = ctx.saved_tensors
        return dy * (y > 0)


class _TempInBackward(torch.autograd.Function):
    BIG = 4 * 1024 * 1024  # float32 elements: 16 MiB, allocated only inside backward

    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        return x * 2

    @staticmethod
    def backward(ctx, dy):  # type: ignore[override]
        temp = torch.ones(_TempInBackward.BIG)  # never saved; transient during backward
        return dy * 2 + temp[: dy.numel()].view_as(dy) * 0


class _WithFunction(nn.Module):
    def __init__(self, fn: type[torch.autograd.Function] | None, n: int = 256) -> None:
        super().__init__()
        self.lin = nn.Linear(n, n)
        self.fn = fn

    def forward(self, x: torch.Tensor) -> SimpleNamespace:
        h = self.lin(x)
        if self.fn is not None:
            h = self.fn.apply(h)
        return SimpleNamespace(loss=h.sum())


# ---------------------------------------------------------------- 1. stored activations


def test_stored_activations_grow_linearly_with_depth():
    batch = _batch()
    r2 = measure_step(_bert(2), batch)
    r4 = measure_step(_bert(4), batch)
    assert r2.stored_activation_bytes > 1 * MiB
    ratio = r4.stored_activation_bytes / r2.stored_activation_bytes
    assert 1.6 < ratio < 2.4, ratio
    # Sanity: stored bytes are activations, not weights (params grow too, but are excluded).
    assert r4.stored_activation_bytes - r2.stored_activation_bytes > 2 * (r4.param_bytes - r2.param_bytes)


@pytest.mark.parametrize("train_w", [False, True])
def test_parameters_are_excluded_frozen_or_not(train_w):
    x = torch.randn(64, 1024)  # 256 KiB; W is 4 MiB and is saved by mm, but it is a parameter
    r = measure_step(_Matmul(train_w=train_w), {"x": x})
    expected = x.nbytes * (2 if train_w else 1)  # + h = x * a when W needs a grad
    assert r.stored_activation_bytes == expected


class _DroppedBranch(_Matmul):
    """Also computes exp(x * a) (exp saves its output) and drops it before the loss."""

    def forward(self, x: torch.Tensor) -> SimpleNamespace:
        dropped = (x * self.a).exp()
        del dropped  # its graph, and the tensors it saved, are gone before backward
        return super().forward(x)


def test_tensors_saved_by_a_dropped_branch_are_not_stored():
    x = torch.randn(64, 1024)
    r = measure_step(_DroppedBranch(), {"x": x})
    assert r.stored_activation_bytes == x.nbytes


def test_step_that_saves_nothing_counts_zero():
    r = measure_step(_SavesNothing(), {"x": torch.randn(64, 1024)})
    assert r.stored_activation_bytes == 0
    assert r.trainable_param_bytes == 1024 * 4


def test_frozen_backbone_still_counts_classifier_activations():
    batch = _batch()
    full = measure_step(_bert(2), batch)
    head_only = _bert(2)
    for name, p in head_only.named_parameters():
        p.requires_grad = name.startswith("classifier.")
    r = measure_step(head_only, batch)
    assert r.trainable_param_bytes == (128 * 2 + 2) * 4
    # The classifier input (pooled output and its dropout mask) is saved; the frozen encoder saves nothing.
    assert 0 < r.stored_activation_bytes < 0.05 * full.stored_activation_bytes


# ---------------------------------------------------------------- 2. gradient checkpointing: hooks vs peak


@pytest.mark.filterwarnings("ignore:`gradient_checkpointing_enable` is deprecated:FutureWarning")
def test_gradient_checkpointing_stores_less_but_peak_sees_recompute():
    batch = _batch()
    full = measure_step(_bert(4), batch)
    gc = measure_step(_bert(4, gc=True), batch)
    assert gc.stored_activation_bytes < 0.5 * full.stored_activation_bytes
    # The recompute of a layer in backward is transient: invisible to the hooks, seen by the peak.
    assert gc.peak_activation_bytes > 2 * gc.stored_activation_bytes
    assert gc.peak_bytes < full.peak_bytes


# ---------------------------------------------------------------- 3. parameters, grads, optimizer state


def test_param_grad_and_adamw_state_accounting():
    model = _bert(2)
    model.bert.embeddings.requires_grad_(False)  # some frozen parameters too
    r = measure_step(model, _batch())
    trainable = sum(p.nbytes for p in model.parameters() if p.requires_grad)
    n_trainable = sum(1 for p in model.parameters() if p.requires_grad)
    assert r.param_bytes == sum(p.nbytes for p in model.parameters())
    assert r.trainable_param_bytes == trainable < r.param_bytes
    assert r.grad_bytes == trainable
    # AdamW: exp_avg and exp_avg_sq per parameter, plus its "step" counter, a float32 scalar tensor.
    assert r.optimizer_bytes == 2 * trainable + 4 * n_trainable
    # Activation peak: the rise over forward+backward while params, grads and optimizer state are all allocated.
    assert r.peak_bytes >= r.param_bytes + r.grad_bytes + r.optimizer_bytes + r.peak_activation_bytes
    assert r.peak_activation_bytes >= 0.9 * r.stored_activation_bytes
    assert r.device == "cpu" and r.how == "cpu-profiler" and r.batch_shape == [4, 64]
    assert r.step_seconds > 0
    assert json.loads(json.dumps(r.to_dict()))["stored_activation_bytes"] == r.stored_activation_bytes


def test_given_optimizer_is_used_and_temporary_adamw_leaves_weights_alone():
    model = _bert(2)
    before = [p.detach().clone() for p in model.parameters()]
    measure_step(model, _batch())  # temporary AdamW has lr=0
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    r = measure_step(model, _batch(), torch.optim.SGD(model.parameters(), lr=0.1))
    assert r.optimizer_bytes == 0  # plain SGD keeps no state
    assert not all(torch.equal(a, p) for a, p in zip(before, model.parameters()))


# ---------------------------------------------------------------- 4. custom autograd Functions


def test_save_for_backward_in_custom_function_is_stored():
    x = torch.randn(512, 256)  # 512 KiB
    plain = measure_step(_WithFunction(None), {"x": x})
    saving = measure_step(_WithFunction(_SaveInForward), {"x": x})
    assert saving.stored_activation_bytes - plain.stored_activation_bytes == x.nbytes


def test_temporary_inside_custom_backward_is_peak_not_stored():
    x = torch.randn(512, 256)
    big = _TempInBackward.BIG * 4
    plain = measure_step(_WithFunction(None), {"x": x})
    temp = measure_step(_WithFunction(_TempInBackward), {"x": x})
    assert temp.stored_activation_bytes == plain.stored_activation_bytes
    assert temp.peak_activation_bytes >= big
    assert abs((temp.peak_bytes - plain.peak_bytes) - big) < 0.05 * big


# ---------------------------------------------------------------- 5. only the measured step counts


def test_allocations_before_the_step_are_not_counted():
    batch = _batch()
    base = measure_step(_bert(2), batch)
    huge = torch.ones(64 * MiB // 4)  # 64 MiB, freed before the measurement
    del huge
    warm_big = []

    def loss_fn(output, batch):  # a 64 MiB temporary during the warm-up steps only
        if len(warm_big) < 2:
            warm_big.append(torch.ones(64 * MiB // 4).sum())
        return output.logits.float().pow(2).mean()

    model = _bert(2)
    r = measure_step(
        model, {k: v for k, v in batch.items() if k != "labels"}, warmup_steps=2, loss_fn=loss_fn
    )
    assert len(warm_big) == 2  # the warm-up did allocate it
    assert r.peak_bytes < base.peak_bytes + 4 * MiB


def test_loss_fallbacks():
    batch = {k: v for k, v in _batch().items() if k != "labels"}
    called = []

    def loss_fn(output, b):
        called.append(b is batch)
        return output.logits.sum()

    r_fn = measure_step(_bert(2), batch, loss_fn=loss_fn, warmup_steps=0)
    r_default = measure_step(_bert(2), batch, warmup_steps=0)
    assert called == [True]
    # Default loss is logits.float().pow(2).mean(): pow saves the (4, 2) logits, sum saves nothing.
    assert r_default.stored_activation_bytes - r_fn.stored_activation_bytes == 4 * 2 * 4


def test_no_memory_events_is_an_error(monkeypatch):
    no_memory = functools.partial(torch.profiler.profile, profile_memory=False)
    monkeypatch.setattr(memory.torch.profiler, "profile", lambda **kw: no_memory(activities=kw["activities"]))
    with pytest.raises(RuntimeError, match="no CPU allocation events"):
        measure_step(_SavesNothing(), {"x": torch.randn(8, 1024)})


@pytest.mark.gpu
def test_cuda_allocator_path():
    model = _bert(4).cuda()
    batch = {k: v.cuda() for k, v in _batch().items()}
    r = measure_step(model, batch)
    cpu = measure_step(_bert(4), _batch())
    assert isinstance(r, MemoryReport) and r.how == "cuda-allocator" and r.device.startswith("cuda:")
    assert r.peak_bytes >= r.param_bytes + r.grad_bytes + r.optimizer_bytes
    assert r.stored_activation_bytes > 0.5 * cpu.stored_activation_bytes
