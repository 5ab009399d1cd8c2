"""Prefix-tuning, (IA)³ and LST through run_training (what `mefts train` and the service's job call) on tiny-bert: the
saved model holds only what trained and, loaded again, scores the run's test split exactly as the run did."""

from __future__ import annotations

import pytest
from safetensors.torch import load_file

from mefts_core import load_finetuned
from mefts_core.config import TrainConfig
from mefts_core.training.predict import predict
from mefts_core.training.trainer import run_training

TINY = dict(backbone="tiny-bert", task="sst2", epochs=1, max_train_samples=16, max_eval_samples=16, batch_size=8,
            max_seq_len=32, threads=1, measure_memory=False, check_gradients=False)


@pytest.mark.parametrize("method, options", [("prefix", {"num_virtual_tokens": 4}), ("ia3", {}), ("lst", {"r": 4})])
def test_train_save_and_reload_each_peer(method, options, tmp_path):
    result = run_training(TrainConfig(method=method, method_options=options, **TINY), output_dir=tmp_path)
    model, _ = load_finetuned(tmp_path / "model")
    saved = load_file(str(tmp_path / "model" / "model.safetensors"))
    assert set(saved) == {n for n, p in model.named_parameters() if p.requires_grad}
    assert sum(t.numel() for t in saved.values()) == result.trainable_params < result.total_params / 2
    assert predict(tmp_path / "model", split="test").metrics == result.test_metrics
