"""`mefts bench`: rows with every column, three formats that read back, the sink, skipped backbones, the command
line, and fits-in-budget from measured points."""

from __future__ import annotations

import json
import math

import pytest
import torch

from mefts_core.cli import main as cli_main
from mefts_core.measure import bench
from mefts_core.measure.bench import (
    COLUMNS,
    BenchGrid,
    budget,
    format_rows,
    parse_method,
    parse_rows,
    run_bench,
)

TINY = dict(backbones=["tiny-bert"], methods=["lora", "meft1-exact"], layers=[1, 2], seq_lens=[16],
            batch_sizes=[2], warmup=0, repeats=2)


@pytest.fixture(scope="module")
def rows_and_sunk():
    sunk: list[dict] = []
    rows = run_bench(BenchGrid(**TINY), sink=sunk.append, progress=False)
    return rows, sunk


def test_every_row_has_every_column_and_the_sink_sees_each(rows_and_sunk):
    rows, sunk = rows_and_sunk
    assert sunk == rows and len(rows) == 4
    assert [(r["method"], r["layers"]) for r in rows] == [("lora", 1), ("lora", 2), ("meft1-exact", 1),
                                                           ("meft1-exact", 2)]
    for r in rows:
        assert list(r) == list(COLUMNS)
        assert r["status"] == "ok", r["note"]
        missing = [k for k, v in r.items() if v is None]
        assert missing == [], missing
        assert r["peak_bytes"] >= r["param_bytes"] + r["grad_bytes"] + r["optimizer_bytes"] + r["peak_activation_bytes"]
        assert r["timed_steps"] == 2 and r["step_seconds_min"] <= r["step_seconds"] <= r["step_seconds_max"]
        assert r["tokens_per_second"] == pytest.approx(2 * 16 / r["step_seconds"])
        assert abs(r["estimate_error"]) < 0.25
        assert json.loads(r["options"]) == parse_method(r["method"])[1]
    lora1, lora2, meft1, meft2 = rows
    assert lora2["stored_activation_bytes"] > 1.5 * lora1["stored_activation_bytes"]  # grows with depth
    assert meft2["stored_activation_bytes"] < 1.2 * meft1["stored_activation_bytes"]  # does not


@pytest.mark.parametrize("fmt", ["md", "csv", "json"])
def test_formats_read_back_exactly(rows_and_sunk, fmt):
    rows, _ = rows_and_sunk
    text = format_rows(rows, fmt)
    assert parse_rows(text, fmt) == rows
    if fmt == "md":
        assert text.splitlines()[0] == "| " + " | ".join(COLUMNS) + " |"


def test_unknown_backbone_is_a_skipped_row_not_a_stand_in():
    sunk: list[dict] = []
    rows = run_bench(BenchGrid(backbones=["llama-70b"], methods=["lora"], seq_lens=[8], batch_sizes=[1]),
                     sink=sunk.append, progress=False)
    assert sunk == rows
    assert rows[0]["status"] == "skipped" and "llama-70b" in rows[0]["note"]
    assert rows[0]["peak_bytes"] is None and rows[0]["trainable_params"] is None


def test_memory_only_rows_quote_no_step_time():
    """repeats=0: the profiled step is not a timing (the profiler slows it), so no step time is reported."""
    (row,) = run_bench(BenchGrid(**{**TINY, "methods": ["lora"], "layers": [1], "repeats": 0}), progress=False)
    assert row["status"] == "ok" and row["peak_bytes"] > 0
    assert (row["timed_steps"], row["step_seconds"], row["tokens_per_second"]) == (0, None, None)


def test_method_labels():
    assert parse_method("lora+gc") == ("lora", {"gradient_checkpointing": True})
    assert parse_method("meft2-float") == ("meft2", {"recompute": "float", "error_budget": None})
    assert parse_method("meft3-ck4") == ("meft3", {"recompute": "checkpoint_every=4", "error_budget": None})
    assert parse_method("meft1") == parse_method("meft1-exact") == ("meft1", {})
    for bad in ("meft1+gc", "lora-float", "sgd", "meft1-ck0"):
        with pytest.raises(ValueError, match="method="):
            parse_method(bad)
    with pytest.raises(ValueError, match="seq_lens"):
        BenchGrid(seq_lens=[0])


def test_command_line_writes_rows_and_prints_the_table(tmp_path, capsys):
    out = tmp_path / "rows.csv"
    assert cli_main(["bench", "--preset", "smoke", "--layers", "1", "--methods", "lora+gc", "--repeats", "1",
                     "--no-progress", "--output", str(out)]) == 0
    rows = parse_rows(out.read_text(), "csv")
    assert [(r["backbone"], r["method"], r["layers"], r["seq_len"]) for r in rows] == [("tiny-bert", "lora+gc", 1, 32)]
    table = capsys.readouterr().out
    assert "| tiny-bert | lora+gc | 1 | 32 | 2 |" in table
    assert cli_main(["bench", "--from", str(out), "--format", "json"]) == 0  # re-render without running
    assert json.loads(capsys.readouterr().out)[0]["peak_bytes"] == rows[0]["peak_bytes"]


def test_fits_in_budget_is_monotone_and_meft_fits_more_than_full():
    budgets = [0.05, 0.1, 0.2]  # GiB; tiny-bert full FT holds ~31 MiB of weights, grads and AdamW state
    fits = bench.fits_in_budget("tiny-bert", ["full", "meft1-exact"], budgets, seq_len=64, layers=2, device="cpu")
    by = {(f["method"], f["budget_gib"]): f for f in fits}
    for method in ("full", "meft1-exact"):
        batches = [by[method, g]["max_batch"] for g in budgets]
        seqs = [by[method, g]["max_seq_len"] for g in budgets]
        assert 0 < batches[0] < batches[1] < batches[2], batches
        assert 0 < seqs[0] < seqs[1] < seqs[2], seqs
    for g in budgets:
        assert by["meft1-exact", g]["max_batch"] > by["full", g]["max_batch"]
    # the fit's prediction holds where it can be checked: the largest batch at the smallest budget really fits
    f = by["full", budgets[0]]
    fit = bench.measure_points("tiny-bert", "full", [(f["max_batch"], 64)], layers=2)[0]
    assert fit["peak_bytes"] <= budgets[0] * 2**30 * 1.05
    assert not math.isnan(f["fit"]["b"])


def test_gpu_batch_search_bisects_on_real_oom_exceptions(monkeypatch):
    """search_max_batch's control flow, with CUDA replaced by stand-ins (no GPU here): a step raises
    torch.OutOfMemoryError above a threshold batch; the search returns the threshold and restores the allocator cap."""
    fractions, probes = [], []

    class _Props:
        total_memory = 80 * 2**30

    def step(model, batch, optimizer, n, device):
        probes.append(batch)
        if batch > 37:
            raise torch.OutOfMemoryError("CUDA out of memory (stand-in)")
        return [0.0] * n

    model = torch.nn.Linear(2, 2)
    model.config = None
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda dev: _Props())
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    # the real call rejects a device without an index (torch.device("cuda")): seen on an H100
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction",
                        lambda f, dev: fractions.append(f) if dev.index is not None else pytest.fail(f"{dev}"))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(budget, "build_model", lambda *a, **k: (model, ""))
    monkeypatch.setattr(budget, "make_batch", lambda config, b, t, **k: b)
    monkeypatch.setattr(budget, "timed_steps", step)
    got = bench.search_max_batch("bert-base", "lora", seq_len=512, budget_bytes=24 * 2**30, device="cuda")
    assert got == 37
    assert probes[:7] == [1, 2, 4, 8, 16, 32, 64] and len(probes) <= 14
    assert fractions == [pytest.approx(24 / 80), 1.0]
    with pytest.raises(ValueError, match="needs CUDA"):
        bench.search_max_batch("bert-base", "lora", seq_len=512, budget_bytes=1, device="cpu")
