"""`mefts backup`: a copy taken while a writer commits runs is consistent, passes integrity checks, restores and
serves; every row it holds is in the source unchanged, and a copy at a quiet moment equals the source."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from backend import cli
from backend.main import create_app
from backend.settings import Settings
from db import crud
from db.backup import BackupError, backup_database
from db.session import make_engine, make_sessionmaker, session_scope, upgrade_database
from tests.serve import wait_for

from .snapshot import changed_rows, snapshot

POINTS = 20  # metric points committed with each run, in the same transaction


class Writer(threading.Thread):
    """Real crud writes: one run and its POINTS metric points per transaction, until stopped."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.factory = make_sessionmaker(make_engine(url))
        self.stop = threading.Event()
        self.committed = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                with session_scope(self.factory) as s:
                    cfg = {"backbone": "tiny-bert", "method": "full", "task": "sst2", "seed": self.committed}
                    run = crud.create_run(session=s, fields={"config": cfg, "backbone": "tiny-bert", "method": "full",
                                                             "method_label": "full", "task": "sst2",
                                                             "seed": self.committed})
                    crud.add_metric_points(session=s, run_id=run.id, attempt=1, points=[
                        {"name": "loss", "step": i, "epoch": 0, "value": 1.0 / (i + 1)} for i in range(POINTS)])
                self.committed += 1
                self.stop.wait(0.02)  # a job's pace, not a flood: the tables stay small enough to compare quickly
        except BaseException as e:  # noqa: BLE001 - the test reports it
            self.error = e

    def reached(self, n: int) -> bool:
        assert self.error is None, self.error
        return self.committed >= n

    def halt(self) -> None:
        self.stop.set()
        self.join(30)
        assert self.error is None, self.error


def _check_copy(copy, source) -> None:
    """The copy is one consistent moment: whole transactions only, every row unchanged in the source."""
    runs, points = copy["runs"], copy["metric_points"]
    assert len(runs) >= 3
    per_run = {}
    for p in points.values():
        per_run[p["run_id"]] = per_run.get(p["run_id"], 0) + 1
    assert per_run == {key[0]: POINTS for key in runs}  # no run without its points, no points without their run
    assert changed_rows(copy, source) == []


def _cli_backup(data_dir: Path, target: Path, capsys) -> tuple[int, str]:
    """`mefts backup TARGET --data-dir DATA_DIR` in this process (a subprocess would spend its time importing torch
    for the core commands); returns (exit status, printed output)."""
    capsys.readouterr()
    code = cli.main(["backup", str(target), "--data-dir", str(data_dir)])
    return code, capsys.readouterr().out


def test_sqlite_backup_while_writing_restores_equal(tmp_path, capsys, caplog):
    data_dir = tmp_path / "data"
    url = f"sqlite:///{data_dir / 'mefts.db'}"
    with TestClient(create_app(Settings(data_dir=data_dir), frontend_dir=None), base_url="http://127.0.0.1"):
        pass  # the app's start-up creates and migrates the store
    writer = Writer(url)
    writer.start()
    try:
        wait_for(lambda: writer.reached(5), 60, what="first commits")
        code, out = _cli_backup(data_dir, tmp_path / "live.db", capsys)
        assert code == 0, caplog.text
        at_backup = writer.committed
        wait_for(lambda: writer.reached(at_backup + 3), 60, what="commits after the backup")
    finally:
        writer.halt()
    assert "live.db" in out and not (tmp_path / "live.db-wal").exists()
    with sqlite3.connect(tmp_path / "live.db") as c:
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # one file, nothing beside it
    source = snapshot(url)
    copy = snapshot(f"sqlite:///{tmp_path / 'live.db'}")
    _check_copy(copy, source)
    assert len(copy["runs"]) < len(source["runs"])  # the writer went on after the copy's moment

    quiet = backup_database(url, tmp_path / "quiet.db")
    assert snapshot(f"sqlite:///{quiet.path}") == source  # at a quiet moment: equal, row for row

    restored = tmp_path / "restored"
    restored.mkdir()
    shutil.copy(tmp_path / "live.db", restored / "mefts.db")
    with TestClient(create_app(Settings(data_dir=restored), frontend_dir=None), base_url="http://127.0.0.1") as c:
        listed = c.get("/api/runs", params={"limit": 1}).json()
        assert listed["total"] == len(copy["runs"])
        rid = max(k[0] for k in copy["runs"])
        assert len(c.get(f"/api/runs/{rid}/metrics", params={"attempt": 1}).json()["series"]["loss"]) == POINTS

    assert _cli_backup(data_dir, tmp_path / "live.db", capsys)[0] == 2  # never overwrites
    assert "live.db exists" in caplog.text
    with pytest.raises(BackupError, match="no SQLite database file"):
        backup_database(f"sqlite:///{tmp_path / 'none.db'}", tmp_path / "x.db")


@pytest.mark.postgres
def test_postgres_backup_while_writing_restores_equal(tmp_path, postgres_server, monkeypatch):
    url = postgres_server.create_database()
    upgrade_database(url)
    with monkeypatch.context() as m:
        m.setenv("PATH", str(tmp_path))
        with pytest.raises(BackupError, match="pg_dump was not found on PATH.*postgresql-client"):
            backup_database(url, tmp_path / "x.dump")
    writer = Writer(url)
    writer.start()
    try:
        wait_for(lambda: writer.reached(5), 60, what="first commits")
        made = backup_database(url, tmp_path / "live.dump")
        at_backup = writer.committed
        wait_for(lambda: writer.reached(at_backup + 3), 60, what="commits after the backup")
    finally:
        writer.halt()
    assert made.kind == "pg_dump" and made.bytes > 0
    target = postgres_server.create_database()
    restore = subprocess.run(["pg_restore", "--no-owner", "--exit-on-error", "--dbname",
                              target.replace("postgresql+psycopg://", "postgresql://"), str(made.path)],
                             capture_output=True, text=True, timeout=120)
    assert restore.returncode == 0, restore.stderr
    source, copy = snapshot(url), snapshot(target)
    _check_copy(copy, source)
    assert len(copy["runs"]) < len(source["runs"])

