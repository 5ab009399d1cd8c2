"""Every row of every table of a database, as plain values keyed by primary key (for before/after comparisons)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import MetaData, select

from db.session import make_engine

Snapshot = dict[str, dict[tuple, dict[str, Any]]]


def snapshot(url: str, skip: tuple[str, ...] = ("alembic_version",)) -> Snapshot:
    """{table: {primary key: {column: value}}} of every table at `url` but `skip`, read through SQLAlchemy."""
    engine = make_engine(url)
    try:
        meta = MetaData()
        meta.reflect(engine)
        out: Snapshot = {}
        with engine.connect() as conn:
            for name, table in meta.tables.items():
                if name in skip:
                    continue
                key = [c.name for c in table.primary_key.columns] or [c.name for c in table.columns]
                rows = conn.execute(select(table)).mappings()
                out[name] = {tuple(r[k] for k in key): dict(r) for r in rows}
        return out
    finally:
        engine.dispose()


def changed_rows(old: Snapshot, new: Snapshot) -> list[str]:
    """Rows of `old` that `new` lacks or holds with another value in an old column (new columns are allowed)."""
    problems = []
    for table, rows in old.items():
        if table not in new:
            problems.append(f"table {table} is gone")
            continue
        for key, row in rows.items():
            got = new[table].get(key)
            if got is None:
                problems.append(f"{table}{key}: row is gone")
                continue
            problems += [f"{table}{key}.{col}: {val!r} became {got.get(col, '<no column>')!r}"
                         for col, val in row.items() if got.get(col, object()) != val]
    return problems


def sqlite_snapshot(path, skip: tuple[str, ...] = ("alembic_version",)) -> Snapshot:
    """snapshot() read with plain sqlite3 (values as SQLite stores them: no SQLAlchemy type in between)."""
    import sqlite3

    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        out: Snapshot = {}
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for name in names:
            if name in skip or name.startswith("sqlite_"):
                continue
            info = conn.execute(f'PRAGMA table_info("{name}")').fetchall()
            key = [r["name"] for r in sorted(info, key=lambda r: r["pk"]) if r["pk"]] or [r["name"] for r in info]
            out[name] = {tuple(r[k] for k in key): dict(r) for r in conn.execute(f'SELECT * FROM "{name}"')}
        return out
    finally:
        conn.close()
