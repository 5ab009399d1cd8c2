"""A full disk under the data directory: a small tmpfs (mounted as root; skipped where mounting is not allowed).

POSTs answer 507 with a clear message while the disk is full, reads keep working, nothing acknowledged is lost,
SQLite's integrity_check is "ok" once space is freed, and writes work again.
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from backend.main import create_app
from backend.settings import Settings
from tests.backend.conftest import TINY
from tests.hardening.support import integrity_check


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    try:
        out = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        pytest.skip(f"cannot mount a tmpfs here ({e}); needs root")
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({out.stderr.strip()}); needs root (CAP_SYS_ADMIN)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


def _fill(path: Path) -> None:
    """Write until the disk is full (unbuffered, down to single bytes)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        size = 65536
        while size:
            try:
                os.write(fd, b"\0" * size)
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
                size //= 2
    finally:
        os.close(fd)


def test_full_disk_is_507_nothing_is_corrupted_and_writes_resume(small_disk):
    data_dir = small_disk / "data"
    settings = Settings(data_dir=data_dir, database_url=f"sqlite:///{data_dir / 'mefts.db'}")
    with TestClient(create_app(settings, start_worker=False, frontend_dir=None), base_url="http://127.0.0.1") as client:
        acked = []
        for i in range(5):
            r = client.post("/api/runs", json={**TINY, "name": f"before-{i}"})
            assert r.status_code == 201, r.text
            acked.append(r.json())
        filler = small_disk / "filler"
        try:
            _fill(filler)
        except BaseException:
            filler.unlink(missing_ok=True)
            raise
        refused = None
        for i in range(500):  # pages the WAL already holds may take a few more rows; then the disk is full
            r = client.post("/api/runs", json={**TINY, "name": f"during-{i}"})
            if r.status_code == 201:
                acked.append(r.json())
                continue
            refused = r
            break
        assert refused is not None and refused.status_code == 507, refused and refused.text
        assert "disk" in refused.json()["detail"] and "full" in refused.json()["detail"]
        assert client.post("/api/sweeps", json={"methods": ["full"], "backbones": ["tiny-bert"],
                                                "tasks": ["sst2"], "seeds": [1, 2]}).status_code == 507
        # reads still work, and everything acknowledged is there
        listed = client.get("/api/runs", params={"limit": 1000})
        assert listed.status_code == 200 and client.get("/api/health").status_code == 200
        assert {x["id"] for x in listed.json()["items"]} >= {a["id"] for a in acked}

        filler.unlink()  # space is back
        r = client.post("/api/runs", json={**TINY, "name": "after"})
        assert r.status_code == 201, r.text
        acked.append(r.json())
        for a in acked:
            got = client.get(f"/api/runs/{a['id']}").json()
            assert got["name"] == a["name"] and got["config"] == a["config"]
        names = [x["name"] for x in client.get("/api/runs", params={"limit": 1000}).json()["items"]]
        assert len(names) == len(set(names)) == len(acked)  # the refused POST stored nothing
    assert integrity_check(data_dir / "mefts.db") == "ok"
