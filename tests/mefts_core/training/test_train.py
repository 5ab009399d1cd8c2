"""Training loop: config validation, a tiny end-to-end run, callbacks, early stopping and restoring the best state."""

from __future__ import annotations

import csv
import json

import pytest
import torch

import mefts_core.training.trainer as train_mod
from mefts_core.config import TrainConfig
from mefts_core.errors import ConfigError
from mefts_core.training.callbacks import Callback
from mefts_core.training.trainer import run_training

TINY = dict(backbone="tiny-bert", method="full", task="sst2", epochs=1, max_train_samples=32, max_eval_samples=32,
            batch_size=8, max_seq_len=32)


class Recorder(Callback):
    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def on_start(self, info):
        self.calls.append(("start", info))

    def on_progress(self, *, step, total_steps, epoch, loss):
        self.calls.append(("progress", (step, total_steps, epoch, loss)))

    def on_epoch_end(self, *, epoch, metrics):
        self.calls.append(("epoch_end", (epoch, metrics)))

    def on_memory(self, report):
        self.calls.append(("memory", report))

    def on_log(self, message):
        self.calls.append(("log", message))

    def on_end(self, result):
        self.calls.append(("end", result))

    def names(self):
        return [n for n, _ in self.calls if n != "log"]


# ---------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "change, message",
    [
        ({"learning_rate": -0.1}, "learning_rate=-0.1: must be >= 0"),
        ({"task": "foo"}, "task='foo': unknown task; valid: cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, openbookqa"),
        ({"backbone": "no such model"}, "backbone='no such model': unknown backbone; valid: minilm-l6"),
        ({"method": "nosuchmethod"}, "method='nosuchmethod': unknown method; valid: full, lora"),
        ({"method": "lora", "method_options": {"r": 0}}, "method_options.r=0: must be an integer >= 1"),
        ({"method_options": {"r": 8}}, "method_options.r=8: option does not belong to method 'full'"),
        ({"batch_size": 0}, "batch_size=0: must be an integer >= 1"),
        ({"epochs": True}, "epochs=True: must be an integer >= 1"),
        ({"warmup_ratio": 1.5}, "warmup_ratio=1.5: must be in [0, 1)"),
        ({"device": "gpu"}, "device='gpu': must be 'auto', 'cpu', 'cuda' or 'cuda:N'"),
        ({"threads": 0}, "threads=0: must be an integer >= 1 or None"),
        ({"bf16": "yes"}, "bf16='yes': must be true or false"),
        ({"task_options": {"data_dir": "/nowhere"}}, "task_options.data_dir='/nowhere': not found"),
        ({"task_options": {"foo": 1}}, "task_options.foo=1: not an option of task 'sst2'"),
    ],
)
def test_config_rejects_bad_fields_naming_field_and_value(change, message):
    with pytest.raises(ConfigError) as e:
        TrainConfig(**{**TINY, **change})
    assert str(e.value).startswith(message), str(e.value)
    # the field's path and value travel as data: callers map them without reading the message
    assert message.startswith(e.value.field + "="), (e.value.loc, message)
    assert message.startswith(f"{e.value.field}={e.value.value!r}")


def test_config_dict_round_trip_and_unknown_key():
    c = TrainConfig(**TINY, method_options={"gradient_checkpointing": True})
    d = json.loads(json.dumps(c.to_dict()))
    assert TrainConfig.from_dict(d) == c
    with pytest.raises(ValueError, match=r"^colour='red': unknown config key; valid: backbone, method, task"):
        TrainConfig.from_dict({**d, "colour": "red"})
    with pytest.raises(ValueError, match=r"^task: required"):
        TrainConfig.from_dict({"backbone": "tiny-bert", "method": "full"})
    assert TrainConfig(**TINY).effective_learning_rate == 2e-5
    assert TrainConfig(**{**TINY, "method": "lora"}).effective_learning_rate == 5e-4
    assert TrainConfig(**{**TINY, "learning_rate": 1e-3}).effective_learning_rate == 1e-3


# --------------------------------------------------------------------------------------------- end to end


def test_tiny_run_end_to_end_with_callbacks_in_order():
    rec = Recorder()
    result = run_training(TrainConfig(**{**TINY, "epochs": 2}), [rec])
    d = result.to_dict()
    json.dumps(d)  # JSON-serialisable as is
    assert [m["epoch"] for m in d["epoch_metrics"]] == [1, 2]
    assert {"train_loss", "dev_loss", "dev_accuracy", "lr", "seconds"} <= set(d["epoch_metrics"][0])
    assert 0 <= d["test_metrics"]["accuracy"] <= 1 and "loss" in d["test_metrics"]
    assert d["best_epoch"] in (1, 2) and d["split_sizes"] == {"train": 32, "dev": 32, "test": 32}
    assert d["split"].startswith("sst2: packaged GLUE validation (872 rows) split 610/87/175 with seed 42")
    assert d["memory"]["stored_activation_bytes"] > 0 and d["memory"]["peak_bytes"] > 0
    assert d["trainable_params"] == d["total_params"] > 1_000_000
    assert d["learning_rate"] == 2e-5 and d["device"] == "cpu" and d["wall_seconds"] > 0
    assert set(d["versions"]) == {"torch", "transformers", "peft", "python"}
    # callbacks: start, memory, 4 steps per epoch, epoch end, ..., end
    names = rec.names()
    assert names == ["start", "memory"] + ["progress"] * 4 + ["epoch_end"] + ["progress"] * 4 + ["epoch_end", "end"]
    steps = [v for n, v in rec.calls if n == "progress"]
    assert [s[0] for s in steps] == list(range(1, 9)) and {s[1] for s in steps} == {8}
    assert rec.calls[0][1]["split_sizes"] == {"train": 32, "dev": 32, "test": 32}
    assert rec.calls[-1][1]["test_metrics"] == d["test_metrics"]
    assert any(n == "log" for n, _ in rec.calls)


def test_lora_multiple_choice_and_bf16_runs():
    lora = run_training(TrainConfig(**{**TINY, "method": "lora", "measure_memory": False}))
    assert 0 < lora.trainable_params < lora.total_params / 10 and lora.memory is None
    mc = run_training(TrainConfig(**{**TINY, "task": "arc_easy", "max_train_samples": 16, "max_eval_samples": 16,
                                     "measure_memory": False}))
    assert mc.problem == "multiple_choice" and 0 <= mc.test_metrics["accuracy"] <= 1
    bf = run_training(TrainConfig(**{**TINY, "bf16": True, "max_train_samples": 16, "max_eval_samples": 16}))
    assert bf.memory is not None and bf.test_metrics["accuracy"] >= 0


def test_local_regression_run(tmp_path):
    rows = [{"s1": f"sentence {i}", "s2": f"other {i % 3}", "score": f"{(i % 5) * 1.25}"} for i in range(24)]
    with (tmp_path / "train.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["s1", "s2", "score"])
        w.writeheader()
        w.writerows(rows)
    cfg = TrainConfig(backbone="tiny-bert", method="bitfit", task="local", epochs=1, batch_size=8, max_seq_len=16,
                      measure_memory=False,
                      task_options={"train_file": str(tmp_path / "train.csv"), "eval_file": str(tmp_path / "train.csv"),
                                    "text_columns": ["s1", "s2"], "label_column": "score"})
    res = run_training(cfg)
    assert res.problem == "regression" and {"pearson", "spearman", "mse", "combined_score"} <= set(res.test_metrics)


# ---------------------------------------------------------------------------------- early stopping / restore


def test_lr_zero_never_improves_so_training_stops_after_patience():
    rec = Recorder()
    res = run_training(TrainConfig(**{**TINY, "learning_rate": 0.0, "epochs": 6, "patience": 2,
                                      "max_train_samples": 16, "max_eval_samples": 16, "measure_memory": False}), [rec])
    assert [m["epoch"] for m in res.epoch_metrics] == [1, 2, 3]  # epoch 1 is best, then 2 epochs without gain
    assert res.stopped_early and res.best_epoch == 1
    assert len({m["dev_accuracy"] for m in res.epoch_metrics}) == 1
    assert rec.names().count("epoch_end") == 3 and rec.names()[-1] == "end"
    assert any("early stop after epoch 3" in v for n, v in rec.calls if n == "log")


def test_best_state_is_restored_and_scores_test(monkeypatch):
    """Scripted dev scores peak at epoch 2: training stops after epoch 4 and the weights of epoch 2 come back."""
    real_evaluate = train_mod.evaluate
    scripted = iter([0.5, 0.9, 0.6, 0.7])
    snapshots: list[dict[str, torch.Tensor]] = []
    seen: list[list] = []

    def fake_evaluate(model, features, data, **kw):
        seen.append(features)
        snapshots.append({n: p.detach().clone() for n, p in model.named_parameters()})
        score = next(scripted, None)
        if score is None:
            return real_evaluate(model, features, data, **kw)
        return {"accuracy": score, "loss": 1.0 - score}

    monkeypatch.setattr(train_mod, "evaluate", fake_evaluate)
    res = run_training(TrainConfig(**{**TINY, "learning_rate": 1e-3, "epochs": 10, "patience": 2,
                                      "max_train_samples": 16, "measure_memory": False}))
    assert [m["dev_accuracy"] for m in res.epoch_metrics] == [0.5, 0.9, 0.6, 0.7]
    assert res.best_epoch == 2 and res.stopped_early
    final_dev, final_test = snapshots[4], snapshots[5]  # the evaluations after training: dev, then test
    for name, p in final_test.items():
        assert torch.equal(p, snapshots[1][name]), name  # epoch 2's weights
        assert torch.equal(p, final_dev[name])
    assert any(not torch.equal(snapshots[1][n], snapshots[3][n]) for n in snapshots[1])  # training did change them
    assert seen[4] is seen[0] and seen[5] is not seen[0]  # final dev on dev, test on the test split
    assert res.test_metrics != res.dev_metrics


def test_out_of_memory_propagates(monkeypatch):
    def boom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(train_mod, "task_loss", boom)
    with pytest.raises(torch.OutOfMemoryError):
        run_training(TrainConfig(**{**TINY, "measure_memory": False}))


def test_decoder_scores_multiple_choice_by_likelihood():
    """A decoder on a QA task: options scored by length-normalised log-likelihood, trained through MEFT."""
    result = run_training(TrainConfig(backbone="tiny-llama", method="meft1", task="sciq", epochs=1, batch_size=4,
                                      max_seq_len=48, max_train_samples=8, max_eval_samples=8, threads=1))
    d = result.to_dict()
    assert 0.0 <= d["test_metrics"]["accuracy"] <= 1.0
    assert d["memory"]["stored_activation_bytes"] > 0
    assert d["trainable_params"] < d["total_params"] / 100


def test_meft_run_stores_its_gradient_fidelity_and_trains_as_without_it():
    """check_gradients (default on for MEFT): one batch's reversible gradients against plain autograd's, in the
    result; the check draws no dropout seed and no global RNG, so the run trains exactly as it does without it."""
    base = {**TINY, "method": "meft1", "measure_memory": False, "learning_rate": 1e-3}
    checked = run_training(TrainConfig(**base))
    unchecked = run_training(TrainConfig(**base, check_gradients=False))
    rows = checked.gradient_fidelity
    assert [r["layer"] for r in rows] == [0, 1]
    assert all(r["rel_error"] == 0.0 and r["reconstruction_error"] == 0.0 for r in rows), rows
    assert all(r["cosine"] == pytest.approx(1.0) for r in rows)
    assert unchecked.gradient_fidelity is None
    assert [e["train_loss"] for e in checked.epoch_metrics] == [e["train_loss"] for e in unchecked.epoch_metrics]
    assert checked.test_metrics == unchecked.test_metrics
    assert run_training(TrainConfig(**{**TINY, "measure_memory": False})).gradient_fidelity is None  # not MEFT
    with pytest.raises(ValueError, match="check_gradients"):
        TrainConfig(**base, check_gradients="yes")
