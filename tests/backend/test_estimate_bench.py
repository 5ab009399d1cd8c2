"""POST /api/estimate (pre-flight estimate of a run request) and benchmark rows: `mefts bench` -> `mefts
bench-import` -> GET /api/bench."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .conftest import DATABASES, FAST_ENV, REPO


def _run(method: str, **hp) -> dict:
    return {"backbone": "bert-base", "method": method, "task": "sst2", "device": "cpu",
            "hyperparameters": {"batch_size": 8, "max_seq_len": 128, **hp}}


def test_estimate_gives_the_parts_and_meft_needs_less_activation_memory_than_full(client):
    got = {}
    for method in ("full", "meft1"):
        r = client.post("/api/estimate", json=_run(method), params={"budget_bytes": 10**12})
        assert r.status_code == 200, r.text
        got[method] = est = r.json()
        for key in ("param_bytes", "grad_bytes", "optimizer_bytes", "stored_activation_bytes",
                    "peak_activation_bytes", "peak_bytes"):
            assert isinstance(est[key], int) and est[key] > 0, (method, key, est[key])
        assert est["batch_size"] == 8 and est["seq_len"] == 128 and est["fits"] is True
        assert est["peak_bytes"] >= est["param_bytes"] + est["grad_bytes"] + est["optimizer_bytes"]
    assert got["meft1"]["peak_activation_bytes"] < got["full"]["peak_activation_bytes"]
    assert got["meft1"]["stored_activation_bytes"] < got["full"]["stored_activation_bytes"]
    small = client.post("/api/estimate", json=_run("full"), params={"budget_bytes": 1024})
    assert small.status_code == 200 and small.json()["fits"] is False
    assert client.post("/api/estimate", json=_run("full")).json()["fits"] is None


@pytest.mark.parametrize(
    "changes, loc",
    [
        ({"method": "nosuchmethod"}, ["body", "method"]),
        ({"method": "lora", "method_options": {"r": 0}}, ["body", "method_options", "r"]),
        ({"backbone": "no-such-backbone"}, ["body", "backbone"]),
    ],
)
def test_bad_estimate_request_is_the_same_422_as_a_bad_run(client, changes, loc):
    body = {**_run("full"), **changes}
    r = client.post("/api/estimate", json=body)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert detail[0]["loc"] == loc
    assert loc[-1] in detail[0]["msg"]
    same = client.post("/api/runs", json=body)
    assert same.status_code == 422 and same.json()["detail"][0]["loc"] == loc
    assert client.post("/api/estimate", json={**_run("full"), "nope": 1}).status_code == 422


def test_unsupported_estimate_is_422_with_the_reason(client):
    r = client.post("/api/estimate", json=_run("full", bf16=True))  # reduced precision on CPU: not modelled
    assert r.status_code == 422, r.text
    detail = r.json()["detail"][0]
    assert detail["loc"] == ["body", "hyperparameters", "bf16"] and "cpu" in detail["msg"]


@pytest.mark.parametrize("db_backend", DATABASES, indirect=True)  # SQLite and PostgreSQL
def test_bench_rows_import_and_list(client, settings, tmp_path):
    rows_file = tmp_path / "rows.json"
    env = {**os.environ, **FAST_ENV, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("DATABASE_URL", None)
    bench = [sys.executable, "-m", "backend.cli", "bench", "--backbone", "tiny-bert", "--methods", "full,meft1-exact",
             "--layers", "2,4", "--seq-len", "32", "--batch-size", "2", "--repeats", "0", "--threads", "1",
             "--no-progress", "--output", str(rows_file)]
    subprocess.run(bench, cwd=REPO, env=env, check=True, capture_output=True, timeout=300)
    written = json.loads(rows_file.read_text())
    assert len(written) == 4 and all(r["status"] == "ok" for r in written)

    imp = subprocess.run([sys.executable, "-m", "backend.cli", "bench-import", str(rows_file),
                          "--database-url", settings.db_url, "--data-dir", str(settings.data_dir)],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert imp.returncode == 0, imp.stderr
    assert "stored 4 bench rows" in imp.stdout

    r = client.get("/api/bench")
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["total"] == 4
    assert {(x["method"], x["layers"]) for x in got["rows"]} == {
        (m, n) for m in ("full", "meft1-exact") for n in (2, 4)}
    by_key = {(w["method"], w["layers"]): w for w in written}
    for row in got["rows"]:
        w = by_key[(row["method"], row["layers"])]
        assert row["backbone"] == "tiny-bert" and row["seq_len"] == 32 and row["batch_size"] == 2
        assert row["peak_bytes"] == w["peak_bytes"] > 0
        assert row["stored_activation_bytes"] == w["stored_activation_bytes"]
        assert row["peak_activation_bytes"] == w["peak_activation_bytes"]
        assert row["row"]["estimated_peak_bytes"] == w["estimated_peak_bytes"]
    only = client.get("/api/bench", params={"backbone": "tiny-bert", "method": "meft1-exact"}).json()
    assert only["total"] == 2 and {x["method"] for x in only["rows"]} == {"meft1-exact"}
    assert client.get("/api/bench", params={"backbone": "bert-base"}).json()["total"] == 0

    bad = subprocess.run([sys.executable, "-m", "backend.cli", "bench-import", str(tmp_path / "rows.txt"),
                          "--database-url", settings.db_url], cwd=REPO, env=env, capture_output=True, timeout=120)
    assert bad.returncode == 2
    assert client.get("/api/bench").json()["total"] == 4


def test_mefts_core_does_not_import_the_service():
    code = "import sys, mefts_core.measure.bench, mefts_core.measure.estimate; print([m for m in sys.modules if m.split('.')[0] in " \
           "('db', 'backend')])"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stderr


