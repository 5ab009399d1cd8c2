"""`mefts serve | worker | export`: the parser, a standalone burst worker, and exports to files."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys

import pytest

from backend.cli import build_parser, main

from .conftest import FAST_ENV, REPO, TINY


def test_parser_has_the_service_commands_and_safe_defaults():
    parser = build_parser()
    args = parser.parse_args(["serve"])
    assert (args.host, args.port, args.no_worker) == ("127.0.0.1", 8000, False)
    assert parser.parse_args(["worker", "--burst"]).burst
    args = parser.parse_args(["export", "--what", "runs", "--format", "json", "--output", "x.json"])
    assert (args.what, args.format, args.output) == ("runs", "json", "x.json")


def test_burst_worker_runs_the_queue_then_exports(client, tmp_path):
    rid = client.post("/api/runs", json=TINY).json()["id"]
    env = {**os.environ, **FAST_ENV, "PYTHONPATH": str(REPO)}
    env.pop("DATABASE_URL", None)
    done = subprocess.run(
        [sys.executable, "-m", "backend.cli", "worker", "--burst", "--data-dir", str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    run = client.get(f"/api/runs/{rid}").json()
    assert run["status"] == "succeeded", (run["error"], run["traceback"])

    out = tmp_path / "runs.csv"
    assert main(["export", "--what", "runs", "--output", str(out), "--data-dir", str(tmp_path)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [int(r["id"]) for r in rows] == [rid] and rows[0]["memory.peak_bytes"] == str(run["peak_bytes"])
    out = tmp_path / "results.json"
    assert main(["export", "--output", str(out), "--data-dir", str(tmp_path)]) == 0
    assert json.loads(out.read_text())[0]["score_mean"] == run["score"]
    out = tmp_path / "results.tex"
    assert main(["export", "--output", str(out), "--data-dir", str(tmp_path)]) == 0
    assert r"\begin{tabular}" in out.read_text()

    # the trained model, as GET /api/runs/{id}/artifact sends it
    out = tmp_path / "model.tar.gz"
    assert main(["export", "--run", str(rid), "--artifact", "-o", str(out), "--data-dir", str(tmp_path)]) == 0
    assert out.stat().st_size == run["artifact_bytes"]
    assert hashlib.sha256(out.read_bytes()).hexdigest() == run["artifact_sha256"]


def _reproduce_args(url: str, *extra: str) -> list[str]:
    """`mefts reproduce glue --queue URL` on one sst2/lora point (the smallest setting of the local test)."""
    return ["reproduce", "glue", "--queue", url, "--backbone", "tiny-bert", "--tasks", "sst2", "--methods", "lora",
            "--budget", "1", "--epochs-grid", "1", "--max-train-samples", "8", "--max-eval-samples", "8",
            "--max-seq-len", "16", "--no-check-gradients", "--no-progress", *extra]


def test_reproduce_queues_its_runs_on_a_server_and_writes_the_servers_table(make_server, tmp_path, monkeypatch,
                                                                            capsys):
    token = "s3cret-token-for-the-reproduce-test"
    server = make_server({"MEFTS_API_TOKEN": token})
    out = tmp_path / "rep"
    monkeypatch.delenv("MEFTS_API_TOKEN", raising=False)
    with pytest.raises(SystemExit) as refused:  # no token: 401 at the first run, nothing queued
        main(_reproduce_args(server.url, "--out", str(out)))
    err = capsys.readouterr().err
    assert refused.value.code == 2 and "401" in err and "MEFTS_API_TOKEN" in err and "nothing was queued" in err
    # a seed the local config takes but the service cannot store: the server's 422, naming the field
    with pytest.raises(SystemExit) as refused:
        main(_reproduce_args(server.url, "--out", str(out), "--seeds", str(2**31), "--api-token", token))
    err = capsys.readouterr().err
    assert refused.value.code == 2 and "422 seed:" in err and "nothing was queued" in err, err
    # the real command line, as a user runs it
    done = subprocess.run([sys.executable, "-m", "backend.cli", *_reproduce_args(server.url, "--out", str(out))],
                          cwd=REPO, env={**os.environ, **FAST_ENV, "PYTHONPATH": str(REPO), "MEFTS_API_TOKEN": token},
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    runs = server.http.get("/api/runs", params={"limit": 100}).json()["items"]
    assert [(r["name"], r["status"], r["learning_rate"], r["batch_size"], r["epochs"]) for r in runs] == [
        ("reproduce glue tiny-bert sst2 lora seed 42 1/1", "succeeded", runs[0]["learning_rate"],
         runs[0]["batch_size"], 1)]
    # the point is the local mode's: the glue-large grid's seeded budget-1 subset
    from mefts_core.cli.sweep import PAPER_GRIDS, grid_points

    grid = {**PAPER_GRIDS["glue-large"][0], "epochs": [1]}
    [point] = grid_points(grid, 1, 42)
    assert (runs[0]["learning_rate"], runs[0]["batch_size"]) == (point["learning_rate"], point["batch_size"])
    served = server.http.get("/api/results/paper.json", params={"suite": "glue", "backbone": "tiny-bert"}).json()
    [row] = served["rows"]
    written = list(csv.DictReader((out / "paper-glue.csv").open()))
    assert written[0]["Method"] == "lora" and float(written[0]["sst2"]) == row["sst2"]
    assert (out / "paper-glue.md").read_text() == server.http.get(
        "/api/results/paper.md", params={"suite": "glue", "backbone": "tiny-bert"}).text
    assert (out / "paper-glue.tex").exists()
    assert "| lora |" in done.stdout and f"queued 1 runs on {server.url}: {runs[0]['id']}" in done.stdout
    record = json.loads((out / "reproduce-glue.json").read_text())
    assert record["runs"] == [{"id": runs[0]["id"], "name": runs[0]["name"], "status": "succeeded"}]

