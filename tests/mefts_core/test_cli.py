"""CLI: `train` end to end on the user's CSV (subprocess), errors as "error: ..." with exit 2, and `sweep`."""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mefts_core.cli import _kv, add_core_commands, grid_points, main
from mefts_core.measure.tables import markdown_cells

REPO = Path(__file__).resolve().parents[2]
POS = ["great movie", "wonderful acting", "i loved it", "superb and moving", "a delight"]
NEG = ["terrible film", "awful plot", "i hated it", "boring and dull", "a mess"]


def _sentiment_csv(path: Path, n: int, seed: int) -> None:
    rng = random.Random(seed)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["review", "sentiment"])
        for _ in range(n):
            lab = rng.choice(["pos", "neg"])
            w.writerow([rng.choice(POS if lab == "pos" else NEG), lab])


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def test_local_csv_trains_end_to_end_through_the_cli(tmp_path):
    _sentiment_csv(tmp_path / "train.csv", 48, 0)
    _sentiment_csv(tmp_path / "eval.csv", 24, 1)
    out = tmp_path / "out" / "result.json"
    proc = subprocess.run(
        [sys.executable, "-m", "mefts_core.cli", "train", "--backbone", "tiny-bert", "--method", "lora",
         "--task", "local", "--train", str(tmp_path / "train.csv"), "--eval", str(tmp_path / "eval.csv"),
         "--text-columns", "review", "--label-column", "sentiment", "--epochs", "2", "--batch-size", "8",
         "--max-seq-len", "16", "--lr", "1e-3", "--threads", "1", "--option", "r=4", "--output", str(out)],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["task"] == "local" and result["label_names"] == ["neg", "pos"]
    assert result["config"]["method_options"]["r"] == 4  # the typed options: every field, defaults included
    assert result["config"]["task_options"]["text_columns"] == ["review"]
    assert len(result["epoch_metrics"]) == 2 and "accuracy" in result["test_metrics"]
    assert result["split_sizes"] == {"train": 48, "dev": 12, "test": 12}
    assert result["memory"]["stored_activation_bytes"] > 0
    assert "accuracy" in proc.stdout and "trainable of" in proc.stdout and f"wrote {out}" in proc.stdout
    assert "epoch 2:" in proc.stderr  # progress lines


def test_bad_field_prints_error_and_exits_2_without_traceback(tmp_path):
    _sentiment_csv(tmp_path / "train.csv", 8, 0)
    proc = subprocess.run(
        [sys.executable, "-m", "mefts_core.cli", "train", "--backbone", "tiny-bert", "--method", "full",
         "--task", "local", "--train", str(tmp_path / "train.csv"), "--eval", str(tmp_path / "train.csv"),
         "--text-columns", "review", "--label-column", "y"],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: task_options.label_column='y': 'y' not in train.csv; columns: review, sentiment"
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--lr", "-0.1"], "error: learning_rate=-0.1: must be >= 0"),
        (["--batch-size", "0"], "error: batch_size=0: must be an integer >= 1"),
        (["--option", "r=8"], "error: method_options.r=8: option does not belong to method 'full'"),
        (["--train", "x.csv"], "error: --train: only for --task local"),
        (["--device", "tpu"], "error: device='tpu': must be"),
    ],
)
def test_train_errors_in_process(capsys, extra, message):
    with pytest.raises(SystemExit) as e:
        main(["train", "--backbone", "tiny-bert", "--method", "full", "--task", "sst2", *extra])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(message), err
    assert "Traceback" not in err


def test_unknown_task_and_backbone(capsys):
    for args, message in ((["--task", "foo", "--backbone", "tiny-bert"], "error: task='foo': unknown task; valid: "),
                          (["--task", "sst2", "--backbone", "nope"], "error: backbone='nope': unknown backbone")):
        with pytest.raises(SystemExit) as e:
            main(["train", "--method", "full", *args])
        assert e.value.code == 2
        assert capsys.readouterr().err.startswith(message)


def test_option_values_parse_as_json_when_possible():
    assert _kv("r=16") == ("r", 16)
    assert _kv("alpha=0.5") == ("alpha", 0.5)
    assert _kv("gradient_checkpointing=true") == ("gradient_checkpointing", True)
    assert _kv('target_modules=["query","value"]') == ("target_modules", ["query", "value"])
    assert _kv("placement=houlsby") == ("placement", "houlsby")
    with pytest.raises(argparse.ArgumentTypeError):
        _kv("novalue")


def test_core_commands_attach_to_another_parser():
    parser = argparse.ArgumentParser(prog="mefts")
    add_core_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["sweep", "--backbone", "b", "--method", "lora", "--task", "rte", "--budget", "3"])
    assert args.command == "sweep" and args.budget == 3 and callable(args.func)
    args = parser.parse_args(["train", "--backbone", "b", "--method", "lora", "--task", "rte", "--option", "r=4",
                              "--option", "alpha=8"])
    assert args.option == [("r", 4), ("alpha", 8)] and args.learning_rate is None


def test_hyperparameter_flags_are_trainconfigs_fields():
    """Every TrainConfig hyperparameter has a flag, with TrainConfig's help; unset flags leave its defaults."""
    from mefts_core.cli.train import config_kwargs
    from mefts_core.config import TrainConfig, hyperparameter_fields

    parser = argparse.ArgumentParser(prog="mefts")
    subparsers = parser.add_subparsers(dest="command")
    add_core_commands(subparsers)
    dests = {a.dest: a for a in subparsers.choices["train"]._actions}
    for f in hyperparameter_fields():
        assert f.name in dests and f.metadata["help"] in dests[f.name].help, f.name
    args = parser.parse_args(["train", "--backbone", "tiny-bert", "--method", "lora", "--task", "sst2", "--lr", "0.01",
                              "--no-check-gradients", "--no-memory", "--bf16", "--max-seq-len", "64"])
    config = TrainConfig(**config_kwargs(args))
    assert (config.learning_rate, config.check_gradients, config.measure_memory, config.bf16) == (0.01, False, False,
                                                                                                   True)
    assert config.max_seq_len == 64 and config.batch_size == TrainConfig.__dataclass_fields__["batch_size"].default


def test_grid_subset_is_deterministic():
    grid = {"learning_rate": [3e-4, 4e-4, 5e-4], "batch_size": [16, 32], "epochs": [10, 20]}
    full = grid_points(grid, None, 0)
    assert len(full) == 12 and full[0] == {"learning_rate": 3e-4, "batch_size": 16, "epochs": 10}
    sub = grid_points(grid, 4, 42)
    assert sub == grid_points(grid, 4, 42) and len(sub) == 4 and all(p in full for p in sub)
    assert [full.index(p) for p in sub] == sorted(full.index(p) for p in sub)
    assert grid_points(grid, 4, 1) != sub


@pytest.mark.parametrize("task,n,grid_name,lrs", [
    ("rte", 16, "glue-low", [5e-4, 6e-4, 7e-4, 8e-4]),
    ("sst2", 12, "glue-large", [3e-4, 4e-4, 5e-4]),
    ("piqa", 36, "qa", [1e-4, 3e-4, 5e-4, 7e-4]),
])
def test_sweep_dry_run_lists_the_papers_grid_for_the_task(tmp_path, capsys, task, n, grid_name, lrs):
    out = tmp_path / "dry.json"
    assert main(["sweep", "--backbone", "tiny-bert", "--method", "meft1", "--task", task, "--dry-run",
                 "--output", str(out)]) == 0
    data = json.loads(out.read_text())
    assert len(data["points"]) == n and f"({grid_name})" in data["grid_source"]
    assert data["grid"]["learning_rate"] == lrs
    assert f"{n} of {n} grid points" in capsys.readouterr().out
    assert main(["sweep", "--backbone", "tiny-bert", "--method", "meft1", "--task", task, "--dry-run", "--budget", "5",
                 "--output", str(out)]) == 0
    assert len(json.loads(out.read_text())["points"]) == 5


def test_paper_grid_follows_the_catalogs_training_size():
    from mefts_core.cli.sweep import paper_grid_name
    from mefts_core.tasks import TASKS

    names = {t: paper_grid_name(TASKS[t]) for t in TASKS}
    assert {t for t, g in names.items() if g == "glue-large"} == {"sst2", "qnli", "qqp", "mnli"}
    assert {t for t, g in names.items() if g == "glue-low"} == {"cola", "mrpc", "rte", "stsb"}
    assert {t for t, g in names.items() if g == "qa"} == {"openbookqa", "piqa", "arc_easy", "arc_challenge", "sciq"}
    assert paper_grid_name(None) == "glue-low"


def test_sweep_runs_the_budget_and_reports_the_best(tmp_path, capsys):
    out = tmp_path / "sweep.json"
    code = main(["sweep", "--backbone", "tiny-bert", "--method", "bitfit", "--task", "sst2", "--budget", "2",
                 "--epochs-grid", "1", "--max-train-samples", "16", "--max-eval-samples", "16", "--max-seq-len", "16",
                 "--no-memory", "--no-progress", "--output", str(out)])
    assert code == 0
    data = json.loads(out.read_text())
    assert len(data["runs"]) == 2 and all(r["status"] == "ok" for r in data["runs"])
    assert data["grid"]["learning_rate"] == [3e-4, 4e-4, 5e-4] and data["grid"]["epochs"] == [1]
    assert "glue-large" in data["grid_source"]
    assert data["best"]["dev"] == max(r["dev"] for r in data["runs"])
    assert {r["learning_rate"] for r in data["runs"]} <= {3e-4, 4e-4, 5e-4}
    assert len(data["results"]) == 2
    stdout = capsys.readouterr().out
    assert "best (by dev accuracy)" in stdout and "2 of 6 grid points" in stdout


def test_reproduce_writes_the_papers_table_in_three_formats(tmp_path, capsys):
    out = tmp_path / "rep"
    code = main(["reproduce", "glue", "--backbone", "tiny-bert", "--methods", "full,lora,meft1", "--budget", "1",
                 "--max-train-samples", "8", "--max-eval-samples", "8", "--max-seq-len", "16", "--epochs-grid", "1",
                 "--no-check-gradients", "--no-progress", "--out", str(out)])
    assert code == 0
    md = (out / "paper-glue.md").read_text()
    head = markdown_cells(md.splitlines()[0])
    assert head == ["Method", "cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "Avg", "Trainable %",
                    "Act. MiB"]
    rows = {cells[0]: dict(zip(head, cells)) for cells in map(markdown_cells, md.splitlines()[2:5])}
    assert list(rows) == ["full", "lora", "meft1"]
    for row in rows.values():
        # offline, the three packaged tasks have numbers and the five others say "no data" (the reason is a note)
        assert [t for t in head[1:9] if row[t] == "no data"] == ["cola", "stsb", "qqp", "mnli", "qnli"]
        assert all(0 <= float(row[t]) <= 100 for t in ("sst2", "mrpc", "rte"))
        assert float(row["Avg"]) == pytest.approx(sum(float(row[t]) for t in ("sst2", "mrpc", "rte")) / 3, abs=0.06)
    assert float(rows["full"]["Trainable %"]) == 100.0 and float(rows["lora"]["Trainable %"]) < 5
    # MEFT stores less activation memory than full fine-tuning (the paper's point), measured per step
    assert float(rows["meft1"]["Act. MiB"]) < float(rows["full"]["Act. MiB"])
    assert "- cola: no data (no offline copy" in md and "data: sst2 packaged" in md
    tex = (out / "paper-glue.tex").read_text()
    assert r"\begin{tabular}{llllllllllll}" in tex and r"Trainable \%" in tex and "meft1 & no data &" in tex
    csv_rows = list(csv.DictReader((out / "paper-glue.csv").open()))
    assert [r["Method"] for r in csv_rows] == ["full", "lora", "meft1", "notes"]
    assert float(csv_rows[2]["rte"]) == pytest.approx(float(rows["meft1"]["rte"]), abs=0.05)
    runs = json.loads((out / "reproduce-glue.json").read_text())
    assert len(runs["sweeps"]) == 9 and set(runs["no_data"]) == {"cola", "stsb", "qqp", "mnli", "qnli"}
    assert "| full |" in capsys.readouterr().out


def _queue_args(url: str, *extra: str) -> list[str]:
    return ["reproduce", "glue", "--queue", url, "--backbone", "tiny-bert", "--tasks", "sst2,rte", "--methods", "lora",
            "--budget", "1", "--epochs-grid", "1", "--max-train-samples", "8", "--no-progress", *extra]


def test_reproduce_queue_checks_every_point_before_contacting_the_server(capsys):
    with pytest.raises(SystemExit) as e:
        main(_queue_args("http://127.0.0.1:9", "--backbone", "no-such-bert"))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "backbone='no-such-bert': unknown backbone" in err and "reach" not in err


def test_reproduce_queue_on_an_unreachable_server_is_a_clear_error(capsys):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(SystemExit) as e:
        main(_queue_args(url, "--no-wait"))
    assert e.value.code == 2
    assert f"error: cannot reach the server at {url}" in capsys.readouterr().err


def test_reproduce_selects_the_point_with_the_best_mean_dev_over_seeds_as_the_service_does():
    from mefts_core.cli.reproduce import select_config

    def sweep(*devs):  # one seed's sweep over the points a, b, c (None: the point failed)
        rows = [{"learning_rate": lr, "batch_size": 16, "epochs": 1, "status": "ok" if d is not None else "failed",
                 "dev": d} for lr, d in zip((1e-4, 2e-4, 3e-4), devs)]
        return rows, [None if d is None else {"point": r["learning_rate"], "dev": d} for r, d in zip(rows, devs)]

    # seed 1 alone would pick a, seed 2 alone c; over both seeds b and c tie (0.55) and b comes first
    chosen = select_config([sweep(0.9, 0.6, 0.5), sweep(0.1, 0.5, 0.6)])
    assert [(c["point"], c["dev"]) for c in chosen] == [(2e-4, 0.6), (2e-4, 0.5)]
    # a point that failed for a seed counts with the seeds that ran it; nothing ran: no cell
    assert [c["dev"] for c in select_config([sweep(0.9, None, 0.1), sweep(None, 0.8, 0.2)])] == [0.9]
    assert select_config([sweep(None, None, None)]) == []


def test_reproduce_queue_counts_a_table_with_numbers_only():
    """The exit code of a queued reproduction: 0 when the server's table has a number in a task column."""
    from mefts_core.cli import remote

    table = {"columns": ["Method", "cola", "sst2", "Avg", "Trainable %", "Act. MiB"],
             "rows": [{"Method": "lora", "cola": "no data", "sst2": None, "Avg": None, "Trainable %": 0.3,
                       "Act. MiB": 12.0}]}
    assert not remote._has_cell(table)  # trainable % and memory are not scores
    table["rows"][0]["sst2"] = 50.0
    assert remote._has_cell(table)
