"""`mefts backup PATH`: a consistent copy of a live store.

A plain file copy of a SQLite database in WAL mode can miss committed pages that still sit in `mefts.db-wal`, or
tear a page that a writer changes during the copy. SQLite's online backup API copies the database as of one read
transaction (writers keep going meanwhile); PostgreSQL is copied with `pg_dump` (custom format, one snapshot),
which `pg_restore` reads back.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import subprocess
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)


class BackupError(RuntimeError):
    """The backup could not be taken; the message says what is missing or wrong. Nothing was written."""


@dataclass(frozen=True)
class Backup:
    path: Path
    kind: str  # "sqlite" or "pg_dump"
    bytes: int


def backup_database(url: str, target: str | Path, *, pg_dump: str | None = None) -> Backup:
    """Copy the database at `url` to the new file `target` (SQLite file, or a pg_dump custom-format archive)."""
    target = Path(target).expanduser()
    if target.exists():
        raise BackupError(f"{target} exists; give a new file name (a backup never overwrites)")
    if not target.parent.is_dir():
        raise BackupError(f"{target.parent} is not a folder")
    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        return _sqlite_backup(url, target)
    if backend == "postgresql":
        return _pg_backup(url, target, pg_dump)
    raise BackupError(f"database URL {make_url(url).render_as_string(hide_password=True)}: backups support SQLite "
                      f"and PostgreSQL, not {backend}")


def _sqlite_backup(url: str, target: Path) -> Backup:
    source_file = make_url(url).database
    if not source_file or source_file == ":memory:" or not Path(source_file).exists():
        raise BackupError(f"no SQLite database file at {source_file!r}")
    if Path(source_file).resolve() == target.resolve():
        raise BackupError(f"{target} is the database itself")
    partial = target.with_name(target.name + ".partial")
    src = sqlite3.connect(source_file, timeout=30)
    try:
        dst = sqlite3.connect(partial)
        try:
            src.backup(dst)  # all pages in one step: one read transaction, so one consistent moment
            dst.execute("PRAGMA journal_mode=DELETE")  # the copy is one self-contained file, no -wal beside it
            problem = dst.execute("PRAGMA integrity_check").fetchone()[0]
        finally:
            dst.close()
    except sqlite3.Error as e:
        partial.unlink(missing_ok=True)
        raise BackupError(f"SQLite backup of {source_file} failed: {e}") from e
    finally:
        src.close()
    if problem != "ok":
        partial.unlink(missing_ok=True)
        raise BackupError(f"the copy of {source_file} fails PRAGMA integrity_check: {problem}")
    os.replace(partial, target)
    log.info("backed up %s to %s (SQLite backup API)", source_file, target)
    return Backup(target, "sqlite", target.stat().st_size)


def _pg_backup(url: str, target: Path, pg_dump: str | None) -> Backup:
    exe = pg_dump or shutil.which("pg_dump")
    if exe is None:
        raise BackupError("pg_dump was not found on PATH: install the PostgreSQL client tools (Debian: "
                          "`apt-get install postgresql-client`, of the server's major version or newer) to back up "
                          "a PostgreSQL database")
    parsed = make_url(url)
    env = {**os.environ}
    if parsed.password:  # the password goes through the environment, never on a command line others can read
        env["PGPASSWORD"] = parsed.password
    libpq = parsed.set(drivername="postgresql", password=None).render_as_string(hide_password=False)
    partial = target.with_name(target.name + ".partial")
    cmd = [exe, "--format=custom", "--no-owner", f"--file={partial}", f"--dbname={libpq}"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        raise BackupError(f"pg_dump failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
    os.replace(partial, target)
    log.info("backed up %s to %s (pg_dump, custom format: restore with pg_restore)",
             parsed.render_as_string(hide_password=True), target)
    return Backup(target, "pg_dump", target.stat().st_size)
