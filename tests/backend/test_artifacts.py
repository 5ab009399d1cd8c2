"""The trained-model download in-process (no worker; the archive is packed here from a stand-in model folder):
GET /api/runs/{id}/artifact, its 404s, its confinement to the data directory, the token rules of reads,
`mefts export --artifact`, and the runs folder's disk use in GET /api/system.

The real thing, a model trained by a job and loaded back, is tests/backend/test_worker.py's."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from backend import artifacts
from backend.cli import main
from backend.main import create_app
from backend.settings import Settings
from db import crud
from db.models import RunStatus
from db.session import session_scope

from .conftest import TINY

TOKEN = "artifact-tests-token-0123456789"


def _succeed_with_model(client: TestClient, data_dir: Path, body: dict = TINY) -> tuple[int, artifacts.Packed]:
    """A queued run moved to succeeded with a packed stand-in model, as the job stores it."""
    rid = client.post("/api/runs", json=body).json()["id"]
    out = artifacts.run_dir(data_dir, rid)
    (out / "model").mkdir(parents=True)
    (out / "model" / "mefts.json").write_text('{"method": "lora"}')
    (out / "model" / "model.safetensors").write_bytes(os.urandom(50_000))
    (out / "checkpoint").mkdir()
    (out / "checkpoint" / "state.pt").write_bytes(b"x" * 7000)
    packed = artifacts.pack_model(out, top="run-model")
    with session_scope(client.app.state.sessionmaker) as s:
        run = crud.claim_next_run(session=s, worker_id="w", host="h", lease_seconds=60, slot="cpu:0")
        assert run.id == rid  # the only queued run
        assert crud.finish_run(session=s, run_id=rid, attempt=run.attempts, status=RunStatus.succeeded, values={
            "artifact_path": artifacts.relative_to_data(data_dir, packed.path), "artifact_bytes": packed.bytes,
            "artifact_sha256": packed.sha256})
    return rid, packed


def _set_path(client: TestClient, rid: int, stored: str | None) -> None:
    with session_scope(client.app.state.sessionmaker) as s:
        crud.get_run(session=s, run_id=rid).artifact_path = stored


def test_artifact_downloads_with_its_name_size_and_sha256(client, settings):
    body = {**TINY, "method": "lora", "method_options": {"r": 4}}
    rid, packed = _succeed_with_model(client, settings.data_dir, body)
    run = client.get(f"/api/runs/{rid}").json()
    assert run["artifact_url"] == f"/api/runs/{rid}/artifact"
    assert (run["artifact_bytes"], run["artifact_sha256"]) == (packed.bytes, packed.sha256)
    listed = client.get("/api/runs").json()["items"][0]
    assert (listed["artifact_bytes"], listed["artifact_url"]) == (packed.bytes, run["artifact_url"])

    r = client.get(run["artifact_url"])
    assert r.status_code == 200 and r.headers["content-type"] == "application/gzip"
    assert r.headers["content-disposition"] == f'attachment; filename="run-{rid}-lora(r=4).tar.gz"'
    assert len(r.content) == run["artifact_bytes"] and hashlib.sha256(r.content).hexdigest() == run["artifact_sha256"]
    with tarfile.open(fileobj=io.BytesIO(r.content)) as tar:
        assert sorted(tar.getnames()) == ["run-model", "run-model/mefts.json", "run-model/model.safetensors"]
        assert {m.mtime for m in tar.getmembers()} == {0}  # no time stamps: the same weights, the same sha256
    assert artifacts.pack_model(artifacts.run_dir(settings.data_dir, rid), top="run-model").sha256 == packed.sha256

    row = client.get("/api/runs.json").json()[0]
    assert (row["artifact_bytes"], row["artifact_sha256"]) == (packed.bytes, packed.sha256)


def test_artifact_404_names_the_run_and_why(client, settings):
    rid, packed = _succeed_with_model(client, settings.data_dir)
    queued = client.post("/api/runs", json=TINY).json()["id"]
    r = client.get(f"/api/runs/{queued}/artifact")
    assert r.status_code == 404
    assert r.json()["detail"] == (f"run {queued} has no trained model to download: it is queued; a model is stored "
                                  "when a run succeeds")
    assert client.get(f"/api/runs/{queued}").json()["artifact_url"] is None
    assert client.get("/api/runs/999999/artifact").status_code == 404
    r = client.get("/api/runs/2147483648/artifact")
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["path", "run_id"]

    packed.path.unlink()  # someone cleaned the data directory by hand
    r = client.get(f"/api/runs/{rid}/artifact")
    assert r.status_code == 404 and f"run {rid} " in r.json()["detail"] and "missing" in r.json()["detail"]
    _set_path(client, rid, None)  # a run that succeeded before models were kept
    assert "succeeded without storing one" in client.get(f"/api/runs/{rid}/artifact").json()["detail"]


def test_artifact_paths_never_leave_the_data_directory(client, settings, tmp_path):
    data_dir = Path(settings.data_dir)
    rid, _ = _succeed_with_model(client, data_dir)
    outside = tmp_path.parent / f"{tmp_path.name}-outside.tar.gz"
    outside.write_bytes(b"secret")
    (data_dir / "runs" / str(rid) / "escape.tar.gz").symlink_to(outside)
    try:
        for stored in (str(outside), f"../{outside.name}", f"runs/{rid}/../../../{outside.name}",
                       f"runs/{rid}/escape.tar.gz", "/etc/passwd", ".", "runs", "runs/\x00x"):
            _set_path(client, rid, stored)
            r = client.get(f"/api/runs/{rid}/artifact")
            assert r.status_code == 404 and b"secret" not in r.content, stored
            assert main(["export", "--artifact", "--run", str(rid), "-o", str(tmp_path / "got.tar.gz"),
                         "--data-dir", str(data_dir), "--database-url", settings.db_url]) == 1
    finally:
        outside.unlink()


def test_artifact_follows_the_token_rules_of_reads(settings):
    """With MEFTS_API_TOKEN set, a download is a read: open like every GET (the dashboard's link works), while the
    writes around it still need the token."""
    guarded = Settings(data_dir=settings.data_dir, database_url=settings.db_url, api_token=TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with TestClient(create_app(guarded, start_worker=False, frontend_dir=None), base_url="http://127.0.0.1") as client:
        assert client.post("/api/runs", json=TINY).status_code == 401
        rid = client.post("/api/runs", json=TINY, headers=auth).json()["id"]
        assert client.get(f"/api/runs/{rid}/artifact").status_code == 404  # a read: judged on the run, not the token
        with session_scope(client.app.state.sessionmaker) as s:
            run = crud.claim_next_run(session=s, worker_id="w", host="h", lease_seconds=60, slot="cpu:0")
            out = artifacts.run_dir(settings.data_dir, rid)
            (out / "model").mkdir(parents=True)
            (out / "model" / "mefts.json").write_text("{}")
            packed = artifacts.pack_model(out, top="m")
            crud.finish_run(session=s, run_id=rid, attempt=run.attempts, status=RunStatus.succeeded, values={
                "artifact_path": f"runs/{rid}/{artifacts.ARCHIVE}", "artifact_bytes": packed.bytes,
                "artifact_sha256": packed.sha256})
        for headers in ({}, auth, {"Authorization": "Bearer wrong"}):
            r = client.get(f"/api/runs/{rid}/artifact", headers=headers)
            assert r.status_code == 200 and hashlib.sha256(r.content).hexdigest() == packed.sha256, headers
        assert client.post(f"/api/runs/{rid}/retry").status_code == 401


def test_export_artifact_writes_the_archive_and_checks_its_sha256(client, settings, tmp_path, capsysbinary):
    rid, packed = _succeed_with_model(client, settings.data_dir, {**TINY, "method": "lora"})
    common = ["--data-dir", str(settings.data_dir), "--database-url", settings.db_url]
    out = tmp_path / "model.tar.gz"
    assert main(["export", "--artifact", "--run", str(rid), "-o", str(out), *common]) == 0
    assert hashlib.sha256(out.read_bytes()).hexdigest() == packed.sha256
    capsysbinary.readouterr()
    assert main(["export", "--artifact", "--run", str(rid), "-o", "-", *common]) == 0
    assert hashlib.sha256(capsysbinary.readouterr().out).hexdigest() == packed.sha256
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:  # without -o: the download's name, in the working directory
        assert main(["export", "--artifact", "--run", str(rid), *common]) == 0
        assert (tmp_path / f"run-{rid}-lora.tar.gz").read_bytes() == out.read_bytes()
    finally:
        os.chdir(cwd)

    packed.path.write_bytes(b"tampered")  # the file no longer is what the run recorded: refused, nothing left
    bad = tmp_path / "bad.tar.gz"
    assert main(["export", "--artifact", "--run", str(rid), "-o", str(bad), *common]) == 1 and not bad.exists()
    assert main(["export", "--artifact", "--run", "999", "-o", str(bad), *common]) == 1
    assert main(["export", "--artifact", *common]) == 2


def test_system_reports_the_runs_folder_disk_use(client, settings):
    empty = client.get("/api/system").json()["runs_disk"]
    assert empty == {"total_bytes": 0, "runs": []}
    rid, packed = _succeed_with_model(client, settings.data_dir)
    other = artifacts.run_dir(settings.data_dir, rid + 100)
    other.mkdir(parents=True)
    (other / "checkpoint.bin").write_bytes(b"y" * 1000)
    on_disk = sum(p.stat().st_size for p in (Path(settings.data_dir) / "runs").rglob("*") if p.is_file())
    disk = client.get("/api/system").json()["runs_disk"]
    assert disk["total_bytes"] == on_disk
    assert disk["runs"] == [{"run_id": rid, "bytes": on_disk - 1000}, {"run_id": rid + 100, "bytes": 1000}]
    assert disk["runs"][0]["bytes"] > packed.bytes + 50_000 + 7000  # archive, model and checkpoint


@pytest.mark.parametrize("label, name", [
    ("lora(r=16)+gc", "run-3-lora(r=16)+gc.tar.gz"),
    ("lora(r=16,alpha=32)", "run-3-lora(r=16_alpha=32).tar.gz"),
    ('a/b\\c"d', "run-3-a_b_c_d.tar.gz"),
    ("", "run-3-model.tar.gz"),
])
def test_download_name(label, name):
    assert artifacts.download_name(3, label) == name
