"""GET /api/fits and `mefts fits`: the measured points come from the database (bench rows and runs' memory reports)
or from files, and the API, the CLI and mefts_core.measure.fits give the same figures."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import update

from backend.cli import main as mefts
from db import crud
from db.bench import add_bench_rows
from db.models import Run
from db.session import make_engine, make_sessionmaker, session_scope
from mefts_core.measure import fits

from .conftest import DATABASES

MiB = 1 << 20
Q = {"budget": "64MiB", "backbone": "tiny-bert", "seq_len": 64, "dtype": "float32", "methods": ["lora", "bitfit"]}


def _bench_row(batch, peak, step, **kw):
    return {"backbone": "tiny-bert", "method": "lora", "layers": None, "seq_len": 64, "batch_size": batch,
            "dtype": "float32", "device": "cuda", "device_name": "a test card", "status": "ok", "peak_bytes": peak,
            "step_seconds": step, **kw}


def _store(client, settings) -> None:
    """A bench row at B=4 that fits in 64 MiB and a run whose memory report at B=16 does not."""
    r = client.post("/api/runs", json={"backbone": "tiny-bert", "method": "lora", "task": "sst2", "device": "cuda",
                                       "hyperparameters": {"batch_size": 16, "max_seq_len": 64}})
    assert r.status_code == 201, r.text
    run_id = r.json()["id"]
    with session_scope(make_sessionmaker(make_engine(settings.db_url))) as s:
        add_bench_rows(session=s, rows=[_bench_row(4, 40 * MiB, 0.1), _bench_row(8, 1, 1.0, seq_len=128)])
        s.execute(update(Run).where(Run.id == run_id).values(attempts=1))
        s.commit()
        crud.add_memory_report(session=s, run_id=run_id, attempt=1, report={
            "batch_size": 16, "seq_len": 64, "peak_bytes": 88 * MiB, "step_seconds": 0.3, "device": "cuda:0",
            "how": "cuda-allocator"})


@pytest.mark.parametrize("db_backend", DATABASES, indirect=True)  # SQLite and PostgreSQL
def test_fits_from_stored_runs_and_bench_rows(client, settings):
    _store(client, settings)
    r = client.get("/api/fits", params=Q)
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["budget_bytes"] == 64 * MiB and got["layers"] >= 1 and got["device"] == "cuda"
    lora, bitfit = got["methods"]
    # between the bench row (B=4, 40 MiB) and the run (B=16, 88 MiB): halfway, B=10
    assert lora["max_batch"]["value"] == 10 and lora["max_batch"]["source"] == "interpolated"
    assert lora["measured_points"] == 2 and lora["step_seconds"]["source"] == "interpolated"
    assert bitfit["max_batch"]["source"] == "estimated" and bitfit["measured_points"] == 0
    with session_scope(make_sessionmaker(make_engine(settings.db_url))) as s:
        rows = crud.measured_points(session=s, backbone="tiny-bert", seq_len=64)
    assert {p["where"].split(",")[0] for p in rows} == {"bench row 1", "run 1"}
    q = fits.Query(64 * MiB, "tiny-bert", 64)
    assert got == json.loads(json.dumps(fits.fits(q, rows, ["lora", "bitfit"])))


@pytest.mark.parametrize("field, value, loc", [
    ("budget", "24XB", "budget"), ("budget", "0GiB", "budget"), ("seq_len", 0, "seq_len"),
    ("dtype", "float8", "dtype"), ("backbone", "no such model", "backbone"), ("device", "tpu", "device"),
    ("methods", "lora((", "methods"), ("seq_len", "x", "seq_len")])
def test_bad_fits_query_is_a_422_naming_the_parameter(client, field, value, loc):
    r = client.get("/api/fits", params={**Q, field: value})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"][0]
    assert detail["loc"] == ["query", loc] and (loc in detail["msg"] or detail["type"] != "value_error")


def test_cli_prints_the_same_figures_from_bench_files(tmp_path, capsys):
    rows = [_bench_row(4, 40 * MiB, 0.1), _bench_row(16, 88 * MiB, 0.3)]
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    (tmp_path / "timings.json").write_text(json.dumps({"args": {}, "timings": {}}))  # not rows: skipped
    args = ["fits", "--budget", "64MiB", "--backbone", "tiny-bert", "--seq-len", "64", "--methods", "lora,bitfit",
            "--from", str(tmp_path / "rows.json"), str(tmp_path / "timings.json")]
    assert mefts([*args, "--format", "json"]) == 0
    out = capsys.readouterr()
    got = json.loads(out.out)
    assert "skipped" in out.err and "timings.json" in out.err
    assert got == json.loads(json.dumps(fits.fits(fits.Query(64 * MiB, "tiny-bert", 64), rows, ["lora", "bitfit"])))
    assert mefts(args) == 0
    table = capsys.readouterr().out
    assert "| lora | 10 (interpolated) |" in table and "| bitfit |" in table and "(estimated)" in table
    with pytest.raises(SystemExit) as e:
        mefts(["fits", "--budget", "lots", "--backbone", "tiny-bert", "--seq-len", "64"])
    assert e.value.code == 2 and "--budget='lots'" in capsys.readouterr().err
