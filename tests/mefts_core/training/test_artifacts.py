"""Keeping what a run learns: the artifact (save, load, predict), its errors, checkpoints and resume, and the Hugging
Face Trainer on a model prepared by apply_method."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mefts_core import load_finetuned
from mefts_core.cli import main
from mefts_core.config import TrainConfig
from mefts_core.errors import ArtifactError, ConfigError
from mefts_core.methods import meft_stacks
from mefts_core.training import checkpoint
from mefts_core.training.artifacts import MANIFEST, WEIGHTS, build_manifest, load_artifact, save_artifact
from mefts_core.training.callbacks import Callback
from mefts_core.training.predict import predict
from mefts_core.training.prepare import build_model
from mefts_core.training.trainer import run_training
from tests.mefts_core.test_cli import _sentiment_csv

METHODS = ("full", "lora", "adapter", "bitfit", "meft1", "meft2", "meft3")
SMALL = dict(task="sst2", epochs=2, max_train_samples=32, max_eval_samples=32, batch_size=8, max_seq_len=64,
             measure_memory=False, check_gradients=False, threads=1)
TINY = dict(backbone="tiny-bert", task="sst2", max_train_samples=32, max_eval_samples=16, batch_size=8,
            max_seq_len=32, threads=1)


class Recorder(Callback):
    """Every epoch_end, progress step, memory report and start info a run sends."""

    def __init__(self, crash_at_step: int | None = None) -> None:
        self.crash_at_step = crash_at_step
        self.epochs: list[int] = []
        self.steps: list[int] = []
        self.memory = 0
        self.start: dict | None = None

    def on_start(self, info):
        self.start = info

    def on_memory(self, report):
        self.memory += 1

    def on_progress(self, *, step, total_steps, epoch, loss):
        if step == self.crash_at_step:
            raise RuntimeError(f"simulated crash at step {step}")
        self.steps.append(step)

    def on_epoch_end(self, *, epoch, metrics):
        self.epochs.append(epoch)


def _trainable_names(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


# ------------------------------------------------------------------------------- save, load, predict


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_artifact_reproduces_the_runs_test_metrics(method, tmp_path, capsys):
    """Train with output_dir, then predict the run's test split from the artifact alone: the same metrics, exactly
    (the same logits: the loss is bit-equal too), and only the trainable tensors saved (everything for full FT)."""
    config = TrainConfig(backbone="minilm-l6", method=method, **SMALL)
    result = run_training(config, output_dir=tmp_path)
    assert result.artifact == {"path": str(tmp_path / "model"), "bytes": result.artifact["bytes"]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # the checkpoint is gone once the run ended
    model, tokenizer = load_finetuned(tmp_path / "model")
    assert not model.training and tokenizer.pad_token_id is not None
    saved = load_file(str(tmp_path / "model" / WEIGHTS))
    assert set(saved) == _trainable_names(model)
    n_saved = sum(t.numel() for t in saved.values())
    if method == "full":
        assert n_saved == result.total_params
    else:
        assert n_saved == result.trainable_params < result.total_params / 20
    manifest = json.loads((tmp_path / "model" / MANIFEST).read_text())
    assert manifest["method"] == method and manifest["config"] == config.to_dict()
    assert manifest["label_names"] == ["negative", "positive"] and manifest["head"] == "seq_cls"
    assert manifest["backbone"]["files_sha256"] and set(manifest["versions"]) >= {"mefts", "torch", "peft"}
    preds = predict(tmp_path / "model", split="test")
    assert preds.metrics == result.test_metrics
    assert len(preds.rows) == result.split_sizes["test"]
    assert {r["prediction"] for r in preds.rows} <= {"negative", "positive"}
    assert all(0.5 <= r["score"] <= 1.0 for r in preds.rows)
    if method == "meft1":  # and through the command line, from the run folder
        out, metrics = tmp_path / "preds.csv", tmp_path / "metrics.json"
        assert main(["predict", "--model", str(tmp_path), "--split", "test", "--output", str(out),
                     "--metrics-output", str(metrics), "--no-progress"]) == 0
        assert json.loads(metrics.read_text())["metrics"] == result.test_metrics
        with out.open() as f:
            rows = list(csv.DictReader(f))
        assert [r["prediction"] for r in rows] == [r["prediction"] for r in preds.rows]
        assert "accuracy" in capsys.readouterr().out


def test_local_csv_artifact_through_the_cli(tmp_path, capsys):
    """--task local: train --save-dir, then predict on the test file itself (--input, labels by name) and on the
    run's test split; both reproduce the run's test metrics exactly."""
    for name, n, seed in (("train", 48, 0), ("eval", 16, 1), ("test", 20, 2)):
        _sentiment_csv(tmp_path / f"{name}.csv", n, seed)
    run = tmp_path / "run"
    assert main(["train", "--backbone", "tiny-bert", "--method", "adapter", "--task", "local",
                 "--train", str(tmp_path / "train.csv"), "--eval", str(tmp_path / "eval.csv"),
                 "--test", str(tmp_path / "test.csv"), "--text-columns", "review", "--label-column", "sentiment",
                 "--epochs", "2", "--batch-size", "8", "--max-seq-len", "16", "--lr", "1e-3", "--threads", "1",
                 "--no-memory", "--save-dir", str(run), "--output", str(tmp_path / "result.json"),
                 "--no-progress"]) == 0
    assert f"{run / 'model'} (" in capsys.readouterr().out  # the table says where the model is
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["artifact"]["path"] == str(run / "model") and result["resumed_from_epoch"] == 0
    out, metrics = tmp_path / "preds.csv", tmp_path / "m.json"
    assert main(["predict", "--model", str(run / "model"), "--input", str(tmp_path / "test.csv"),
                 "--output", str(out), "--metrics-output", str(metrics), "--no-progress"]) == 0
    assert json.loads(metrics.read_text())["metrics"] == result["test_metrics"]
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 20 and set(rows[0]) == {"row", "review", "prediction", "score", "label"}
    assert {r["prediction"] for r in rows} <= {"neg", "pos"}
    assert predict(run, split="test").metrics == result["test_metrics"]
    # no labels in the file: predictions only
    with (tmp_path / "unlabelled.jsonl").open("w") as f:
        f.write(json.dumps({"review": "a delight"}) + "\n" + json.dumps({"review": "a mess"}) + "\n")
    bare = predict(run, input_path=tmp_path / "unlabelled.jsonl")
    assert bare.metrics is None and [set(r) for r in bare.rows] == [{"row", "review", "prediction", "score"}] * 2
    with pytest.raises(ConfigError, match="label_column='stars': not in test.csv"):
        predict(run, input_path=tmp_path / "test.csv", label_column="stars")


def test_local_regression_artifact_predicts_values(tmp_path):
    rows = [{"s1": f"sentence {i}", "score": f"{(i % 5) * 1.25}"} for i in range(24)]
    with (tmp_path / "data.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["s1", "score"])
        w.writeheader()
        w.writerows(rows)
    config = TrainConfig(backbone="tiny-bert", method="bitfit", task="local", epochs=1, batch_size=8, max_seq_len=16,
                         measure_memory=False, threads=1,
                         task_options={"train_file": str(tmp_path / "data.csv"), "eval_file": str(tmp_path / "data.csv"),
                                       "text_columns": ["s1"], "label_column": "score"})
    result = run_training(config, output_dir=tmp_path / "run")
    preds = predict(tmp_path / "run", split="test")
    assert preds.metrics == result.test_metrics and preds.problem == "regression"
    assert all(isinstance(r["prediction"], float) and r["score"] is None for r in preds.rows)


def test_meft_eval_forward_keeps_nothing_and_matches_the_training_evaluation(tmp_path):
    """Under no_grad the reversible stack runs without its autograd Function: no graph, and no dropout seed drawn."""
    result = run_training(TrainConfig(method="meft1", epochs=1, measure_memory=False, **TINY), output_dir=tmp_path)
    art = load_artifact(tmp_path)
    stacks = meft_stacks(art.model)
    batch = dict(art.tokenizer(["a fine film", "a dull film"], padding=True, return_tensors="pt"))
    with torch.no_grad():
        out = art.model(**batch).logits
    assert out.grad_fn is None and [s.calls for s in stacks] == [0]
    assert predict(tmp_path, split="test").metrics == result.test_metrics


@pytest.mark.parametrize("backbone, task", [("tiny-bert", "arc_easy"), ("tiny-llama", "sciq")])
def test_multiple_choice_artifacts_choose_option_indices(backbone, task, tmp_path):
    """QA: an encoder's multiple-choice head, and a decoder scoring options by likelihood; rows of the task's own
    layout in a file are read by the task's converter."""
    config = TrainConfig(backbone=backbone, method="meft1", task=task, epochs=1, batch_size=4, max_seq_len=48,
                         max_train_samples=8, max_eval_samples=8, measure_memory=False, threads=1)
    result = run_training(config, output_dir=tmp_path)
    manifest = json.loads((tmp_path / "model" / MANIFEST).read_text())
    assert manifest["head"] == ("causal_lm" if backbone == "tiny-llama" else "multiple_choice")
    assert manifest["scoring"] == ("likelihood" if backbone == "tiny-llama" else "head")
    preds = predict(tmp_path, split="test")
    assert preds.metrics == result.test_metrics
    assert all(isinstance(r["prediction"], int) and 0 < r["score"] <= 1 for r in preds.rows)
    if task == "sciq":
        row = {"question": "What do plants take in?", "correct_answer": "carbon dioxide", "distractor1": "gold",
               "distractor2": "sand", "distractor3": "salt", "support": ""}
        (tmp_path / "q.jsonl").write_text(json.dumps(row) + "\n")
        one = predict(tmp_path, input_path=tmp_path / "q.jsonl")
        assert len(one.rows) == 1 and one.rows[0]["prediction"] in range(4) and "label" in one.rows[0]


@pytest.mark.slow
def test_meft1_artifact_of_bert_base_shape_is_small_and_full_is_not(tmp_path):
    """MEFT1 on BERT-base: adapters, gates and the head, under 5 MB with the tokenizer; full FT: every weight."""
    sizes = {}
    for method in ("meft1", "full"):
        config = TrainConfig(backbone="bert-base", method=method, task="sst2")
        model, tok, fingerprint = build_model("bert-base", head="seq_cls", num_labels=2, seed=config.seed,
                                              method=method, options=config.method_options, task_name="sst2")
        manifest = build_manifest(config, config_task(), head="seq_cls", lm_choices=False, fingerprint=fingerprint,
                                  tensors={})
        sizes[method] = save_artifact(tmp_path / method, model, tok, manifest)["bytes"]
        if method == "meft1":
            with torch.no_grad():  # a different value than training left, to see it come back
                model.classifier.bias.fill_(0.25)
            save_artifact(tmp_path / method, model, tok, manifest)
            loaded, _ = load_finetuned(tmp_path / method)
            assert torch.equal(loaded.classifier.bias, torch.full((2,), 0.25))
        del model
    assert sizes["meft1"] < 5e6, sizes
    assert sizes["full"] > 400e6 and sizes["full"] > 80 * sizes["meft1"], sizes


def config_task():
    from mefts_core.tasks import get_task

    return get_task("sst2")


# ------------------------------------------------------------------------------------------------- errors


@pytest.fixture(scope="module")
def tiny_artifact(tmp_path_factory):
    out = tmp_path_factory.mktemp("artifact")
    run_training(TrainConfig(method="lora", epochs=1, measure_memory=False, **TINY), output_dir=out)
    return out / "model"


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_manifest(folder: Path, **changes) -> None:
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest.update(changes)
    (folder / MANIFEST).write_text(json.dumps(manifest))


def test_bad_manifests_name_the_file_and_the_problem(tiny_artifact, tmp_path):
    art = _copy(tiny_artifact, tmp_path / "a")
    (art / MANIFEST).write_text("{not json")
    with pytest.raises(ArtifactError, match=r"manifest: not valid JSON .*\(in .*/a/mefts.json\)") as e:
        load_finetuned(art)
    assert e.value.file == str(art / MANIFEST) and isinstance(e.value, ConfigError)
    with pytest.raises(ArtifactError, match=r"manifest: not found: not a mefts artifact folder \(in .*/nowhere/"):
        load_finetuned(tmp_path / "nowhere")
    for changes, message in (({"method": "nosuchmethod"}, r"method='nosuchmethod': unknown method"),
                             ({"method_options": {"rank": 4}}, r"method_options.rank=4: option does not belong"),
                             ({"method_options": {"r": 0}}, r"method_options.r=0: must be an integer >= 1"),
                             ({"format_version": 99}, r"format_version=99: this mefts reads version 1"),
                             ({"format": "other"}, r"format='other': not a mefts artifact manifest"),
                             ({"head": "lm"}, r"head='lm': must be one of base, seq_cls"),
                             ({"backbone": {"name": "no-such-net"}}, r"backbone='no-such-net': cannot be rebuilt "
                                                                     r"\(backbone='no-such-net': unknown backbone")):
        art = _copy(tiny_artifact, tmp_path / f"m{len(list(tmp_path.iterdir()))}")
        _edit_manifest(art, **changes)
        with pytest.raises(ArtifactError, match="^" + message + r".*\(in .*/mefts.json\)"):
            load_finetuned(art)
    art = _copy(tiny_artifact, tmp_path / "no_head")
    manifest = json.loads((art / MANIFEST).read_text())
    del manifest["head"]
    (art / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"^head: required in the manifest \(in .*mefts.json\)"):
        load_finetuned(art)


def test_missing_extra_misshapen_or_damaged_tensors_name_the_file_and_the_tensor(tiny_artifact, tmp_path):
    tensors = load_file(str(tiny_artifact / WEIGHTS))
    name = sorted(n for n in tensors if "lora_A" in n)[0]
    cases = (({k: v for k, v in tensors.items() if k != name}, rf"tensors.{name}: missing \(1 of"),
             ({**tensors, "extra.weight": torch.zeros(2)}, r"tensors.extra.weight: not a trainable tensor"),
             ({**tensors, name: torch.zeros(3, 5)}, rf"tensors.{name}='\(3, 5\) torch.float32': the model needs "
                                                   rf"shape \({tensors[name].shape[0]}, {tensors[name].shape[1]}\)"))
    for i, (changed, message) in enumerate(cases):
        art = _copy(tiny_artifact, tmp_path / str(i))
        save_file(changed, str(art / WEIGHTS))
        with pytest.raises(ArtifactError, match=message + rf".*\(in {art / WEIGHTS}\)"):
            load_finetuned(art)
    art = _copy(tiny_artifact, tmp_path / "truncated")
    data = (art / WEIGHTS).read_bytes()
    (art / WEIGHTS).write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match=rf"tensors: cannot be read .*\(in {art / WEIGHTS}\)"):
        load_finetuned(art)


def test_another_backbone_is_refused(tiny_artifact, tmp_path):
    """A random-init shape under another seed, and a local folder whose weight files changed since training."""
    art = _copy(tiny_artifact, tmp_path / "seed")
    manifest = json.loads((art / MANIFEST).read_text())
    manifest["backbone"]["seed"] = 7
    (art / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"backbone.weights_fingerprint=.*'tiny-bert' here is not the one"):
        load_finetuned(art)
    folder = tmp_path / "my-bert"
    from mefts_core.backbones import load_backbone

    model, tok = load_backbone("tiny-bert", seed=1)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    run_training(TrainConfig(**{**TINY, "backbone": str(folder)}, method="bitfit", epochs=1, measure_memory=False),
                 output_dir=tmp_path / "run")
    assert load_finetuned(tmp_path / "run")[0] is not None
    load_backbone("tiny-bert", seed=2)[0].save_pretrained(folder)  # someone replaces the backbone's weights
    with pytest.raises(ArtifactError, match=rf"backbone.files_sha256=.*the weight files in {folder} are another "
                                            r"backbone .*\(in .*run/model/mefts.json\)"):
        load_finetuned(tmp_path / "run")


# ---------------------------------------------------------------------------------------------- resume


def _same_epochs(a: list[dict], b: list[dict]) -> bool:
    return [{k: v for k, v in e.items() if k != "seconds"} for e in a] == \
        [{k: v for k, v in e.items() if k != "seconds"} for e in b]


@pytest.mark.parametrize("method, options", [("meft1", {}), ("lora", {"dropout": 0.1})])
def test_resumed_run_ends_as_the_uninterrupted_one(method, options, tmp_path):
    """Crash in the first step of epoch 3 (after epoch 2's checkpoint), resume: the same metrics and bit-identical
    weights as a run that never stopped; the callback hears of epoch 3 only, with step numbers continuing."""
    config = TrainConfig(method=method, method_options=options, epochs=3, learning_rate=1e-3, **TINY)
    whole = run_training(config, output_dir=tmp_path / "whole")
    crashed = Recorder(crash_at_step=9)  # 4 steps per epoch
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_training(config, [crashed], output_dir=tmp_path / "crashed")
    assert crashed.epochs == [1, 2] and crashed.steps == list(range(1, 9)) and crashed.memory == 1
    state = json.loads((tmp_path / "crashed" / "checkpoint" / "state.json").read_text())
    assert state["epoch"] == 2 and state["step"] == 8 and not (tmp_path / "crashed" / "model").exists()
    after = Recorder()
    resumed = run_training(config, [after], output_dir=tmp_path / "crashed", resume=True)
    assert after.start["resumed_from_epoch"] == 2 and resumed.resumed_from_epoch == 2
    assert after.epochs == [3] and after.steps == [9, 10, 11, 12] and after.memory == 0
    assert resumed.test_metrics == whole.test_metrics and resumed.dev_metrics == whole.dev_metrics
    assert _same_epochs(resumed.epoch_metrics, whole.epoch_metrics) and resumed.best_epoch == whole.best_epoch
    timeless = [{k: v for k, v in m.items() if k != "step_seconds"} for m in (resumed.memory, whole.memory)]
    assert timeless[0] == timeless[1] and timeless[0]["stored_activation_bytes"] > 0  # the first part's probe
    assert resumed.gradient_fidelity == whole.gradient_fidelity
    a, b = load_file(str(tmp_path / "whole" / "model" / WEIGHTS)), load_file(str(resumed.artifact["path"] + "/" + WEIGHTS))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert checkpoint.find_checkpoint(tmp_path / "crashed") is None


def test_probes_draw_nothing_from_training(tmp_path):
    """The memory probe and the gradient check change no draw: MEFT trains as without them."""
    base = dict(method="meft1", epochs=1, learning_rate=1e-3, **TINY)
    probed = run_training(TrainConfig(**base))
    bare = run_training(TrainConfig(**base, measure_memory=False, check_gradients=False))
    assert probed.memory is not None and probed.gradient_fidelity is not None
    assert _same_epochs(probed.epoch_metrics, bare.epoch_metrics) and probed.test_metrics == bare.test_metrics


def test_resume_without_a_checkpoint_starts_afresh_and_a_bad_one_is_refused(tmp_path):
    config = TrainConfig(method="bitfit", epochs=2, measure_memory=False, **TINY)
    fresh = run_training(config, output_dir=tmp_path / "none", resume=True)
    assert fresh.resumed_from_epoch == 0 and fresh.artifact is not None
    with pytest.raises(RuntimeError):
        run_training(config, [Recorder(crash_at_step=5)], output_dir=tmp_path / "run")
    folder = tmp_path / "run" / "checkpoint"
    other = TrainConfig(method="bitfit", epochs=2, measure_memory=False, **{**TINY, "batch_size": 4})
    with pytest.raises(ArtifactError, match=rf"config.batch_size=8: the checkpoint was written by a run with this "
                                            rf"value; this run has 4.*\(in {folder}/state.json\)"):
        run_training(other, output_dir=tmp_path / "run", resume=True)
    saved = (folder / "optimizer.pt").read_bytes()
    (folder / "optimizer.pt").write_bytes(saved[:100])
    with pytest.raises(ArtifactError, match=rf"checkpoint: cannot be read .*\(in {folder}/optimizer.pt\)"):
        run_training(config, output_dir=tmp_path / "run", resume=True)
    (folder / "optimizer.pt").write_bytes(saved)
    (folder / "state.json").write_text("{")
    with pytest.raises(ArtifactError, match=rf"checkpoint: cannot be read .*\(in {folder}/state.json\)"):
        run_training(config, output_dir=tmp_path / "run", resume=True)
    with pytest.raises(ConfigError, match="resume=True: needs output_dir"):
        run_training(config, resume=True)


def test_resume_through_the_cli(tmp_path, capsys):
    """train --save-dir crashes in epoch 2; train --resume DIR finishes it, with the config from the checkpoint."""
    args = ["--backbone", "tiny-bert", "--method", "lora", "--task", "sst2", "--epochs", "2", "--batch-size", "8",
            "--max-train-samples", "32", "--max-eval-samples", "16", "--max-seq-len", "32", "--threads", "1",
            "--no-memory", "--no-progress"]
    whole = run_training(TrainConfig(method="lora", epochs=2, measure_memory=False, **TINY))
    import mefts_core.cli.train as cli_train

    real = cli_train.ProgressBar.on_progress

    def crash(self, *, step, total_steps, epoch, loss):
        if step == 6:
            raise KeyboardInterrupt  # as a Ctrl-C or a killed worker would stop it
        real(self, step=step, total_steps=total_steps, epoch=epoch, loss=loss)

    cli_train.ProgressBar.on_progress = crash
    try:
        with pytest.raises(KeyboardInterrupt):
            main(["train", *args, "--save-dir", str(tmp_path)])
    finally:
        cli_train.ProgressBar.on_progress = real
    with pytest.raises(SystemExit):
        main(["train", "--resume", str(tmp_path), "--lr", "0.1"])
    assert "error: --lr: not with --resume" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path), "--no-progress", "--output", str(tmp_path / "r.json")]) == 0
    assert "after epoch 1, from its checkpoint" in capsys.readouterr().out
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["resumed_from_epoch"] == 1 and result["test_metrics"] == whole.test_metrics
    with pytest.raises(SystemExit):
        main(["train", "--resume", str(tmp_path)])  # finished: nothing left to resume
    assert "checkpoint: no checkpoint to resume from" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--method", "lora", "--task", "sst2"])
    assert "error: --backbone: required (or --resume DIR" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- Hugging Face Trainer


def test_meft_model_trains_with_the_hugging_face_trainer(tmp_path):
    """apply_method(model, "meft1") gives an ordinary nn.Module: transformers.Trainer trains it (its loss is the
    model's own output.loss), only the MEFT parameters and the head move."""
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    from mefts_core import apply_method, load_backbone

    model, tok = load_backbone("tiny-bert", num_labels=2)
    apply_method(model, "meft1")
    texts = ["a fine film", "a dull film", "wonderful acting", "awful plot"] * 4
    data = [{**tok(t), "labels": i % 2} for i, t in enumerate(texts)]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=4,
                             learning_rate=1e-2, use_cpu=True, report_to="none", save_strategy="no",
                             logging_strategy="no", disable_tqdm=True, seed=0)
    trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=DataCollatorWithPadding(tok))
    out = trainer.train()
    assert out.global_step == 3 and torch.isfinite(torch.tensor(out.training_loss))
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved and moved <= _trainable_names(model)
    assert any("adapter" in n for n in moved) and any(n.startswith("classifier") for n in moved)
