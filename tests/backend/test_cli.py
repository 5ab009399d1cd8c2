"""`mefts serve | worker | export`: the parser, a standalone burst worker, and exports to files."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys

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
