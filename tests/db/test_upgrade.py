"""The upgrade path: a database written by an earlier release (tests/fixtures/release-<rev>.db, made by
tests/fixtures/make_release_db.py) migrates at the app's start-up, on SQLite and on PostgreSQL, with every row and
value intact; the API serves its runs, and the exports match what that release served, column for column.

New tables, columns and export columns are allowed: later migrations must keep this test green as it is.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from fastapi.testclient import TestClient
from sqlalchemy import MetaData, select, text

from backend.main import create_app
from backend.settings import Settings
from db.session import alembic_config, make_engine

from .snapshot import Snapshot, changed_rows, snapshot, sqlite_snapshot

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
RELEASES = sorted(p.stem for p in FIXTURES.glob("release-*.db"))
assert RELEASES, f"no release-*.db in {FIXTURES}: the upgrade path would go untested"


def _frozen(release: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{release}.json").read_text())


def _head() -> str:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def differences(old: Any, new: Any, where: str = "") -> list[str]:
    """Where `new` lacks a key of `old` or holds another value (new keys allowed, at any depth)."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k, v in old.items()
                for d in (differences(v, new[k], f"{where}.{k}") if k in new else [f"{where}.{k}: missing"])]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [d for i, (a, b) in enumerate(zip(old, new, strict=True)) for d in differences(a, b, f"{where}[{i}]")]
    return [] if old == new else [f"{where}: {old!r} became {new!r}"]


def _table(path: str, body: str) -> list[dict[str, Any]]:
    """An export's rows as dicts, whatever its format (CSV text, {columns, rows}, {rows: [dict]} or [dict])."""
    if path.endswith(".csv"):
        return list(csv.DictReader(io.StringIO(body)))
    data = json.loads(body)
    rows = data.get("rows", data) if isinstance(data, dict) else data
    columns = data.get("columns") if isinstance(data, dict) else None
    return [dict(zip(columns, r, strict=True)) if columns and isinstance(r, list) else r for r in rows]


def _keyed(rows: list[dict[str, Any]]) -> dict[Any, dict[str, Any]]:
    """Rows by id when they have one (the order of ties may differ between databases), else by position."""
    if rows and all("id" in r for r in rows):
        return {str(r["id"]): r for r in rows}
    return {tuple(str(r.get(k)) for k in ("task", "backbone", "method")): r for r in rows}


def check_served(client: TestClient, frozen: dict[str, Any]) -> None:
    """Every old run's detail and metrics, and every export, as the release served them (new fields allowed)."""
    problems = []
    for path, old in frozen["exports"].items():
        r = client.get(path)
        assert r.status_code == 200, (path, r.text)
        if path.startswith("/api/runs/"):
            problems += differences(old, r.json(), path)
            continue
        old_rows, new_rows = _keyed(_table(path, old)), _keyed(_table(path, r.text))
        assert len(old_rows) == len(_table(path, old)) and set(old_rows) == set(new_rows), path
        problems += differences(old_rows, new_rows, path)
    assert problems == []


def _upgrade_through_the_app(settings: Settings, frozen: dict[str, Any]) -> None:
    with TestClient(create_app(settings, frontend_dir=None), base_url="http://127.0.0.1") as client:
        check_served(client, frozen)
    engine = make_engine(settings.db_url)
    with engine.connect() as c:
        assert c.execute(text("SELECT version_num FROM alembic_version")).scalar() == _head()
    engine.dispose()


def _fixture_sanity(old: Snapshot, frozen: dict[str, Any], release: str) -> None:
    """The fixture holds what it claims: every status, points, memory reports, sweeps, bench rows, a kept model."""
    runs = old["runs"].values()
    assert {"queued", "running", "succeeded", "failed", "cancelled", "does_not_fit"} <= {r["status"] for r in runs}
    assert any(r["resumed_from_epoch"] for r in runs) and any(r["artifact_sha256"] for r in runs)
    assert any("timed out" in (r["error"] or "") for r in runs)
    for table in ("metric_points", "memory_reports", "sweeps", "bench_rows", "workers"):
        assert old[table], table
    assert release == f"release-{frozen['revision']}"  # the exports belong to this database's release


@pytest.mark.parametrize("release", RELEASES)
def test_release_database_upgrades_on_sqlite(release, tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    db = data_dir / "mefts.db"
    shutil.copy(FIXTURES / f"{release}.db", db)
    frozen = _frozen(release)
    old = sqlite_snapshot(db)
    _fixture_sanity(old, frozen, release)

    _upgrade_through_the_app(Settings(data_dir=data_dir), frozen)  # start-up migrates it to head
    assert changed_rows(old, sqlite_snapshot(db)) == []


def copy_rows(sqlite_file: Path, url: str) -> None:
    """Every row of the SQLite file into the database at `url` (same schema revision), then the id sequences."""
    src, dst = make_engine(f"sqlite:///{sqlite_file}"), make_engine(url)
    src_meta, dst_meta = MetaData(), MetaData()
    src_meta.reflect(src)
    dst_meta.reflect(dst)
    with src.connect() as s, dst.begin() as d:
        for table in src_meta.sorted_tables:  # parents before children (foreign keys)
            if table.name == "alembic_version":
                continue
            rows = [dict(r) for r in s.execute(select(table)).mappings()]
            if rows:
                d.execute(dst_meta.tables[table.name].insert(), rows)
            if "id" in table.c and isinstance(rows[0]["id"] if rows else None, int):
                d.execute(text(f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                               f"(SELECT max(id) FROM {table.name}))"))
    src.dispose()
    dst.dispose()


@pytest.mark.postgres
@pytest.mark.parametrize("release", RELEASES)
def test_release_database_upgrades_on_postgres(release, tmp_path, pg_url):
    frozen = _frozen(release)
    fixture = tmp_path / "release.db"
    shutil.copy(FIXTURES / f"{release}.db", fixture)
    command.upgrade(alembic_config(pg_url), frozen["revision"])  # PostgreSQL at the release's schema ...
    copy_rows(fixture, pg_url)  # ... holding the release's rows
    old = snapshot(pg_url)
    assert changed_rows(snapshot(f"sqlite:///{fixture}"), old) == []  # the copy is faithful
    _fixture_sanity(old, frozen, release)

    _upgrade_through_the_app(Settings(data_dir=tmp_path / "data", database_url=pg_url), frozen)
    assert changed_rows(old, snapshot(pg_url)) == []
