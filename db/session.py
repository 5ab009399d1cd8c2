"""Engine, sessions and migrations.

SQLite (the default) gets WAL, a busy timeout and foreign keys on every connection, so the API, the dispatcher and
the job processes can share one file. Migrations run through Alembic (`upgrade head`) at start-up.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
BUSY_TIMEOUT_MS = 30_000


def default_database_url(data_dir: str | Path) -> str:
    """`sqlite:///<data_dir>/mefts.db`, creating the folder."""
    path = Path(data_dir).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path / 'mefts.db'}"


def is_sqlite(url_or_engine: str | Engine) -> bool:
    url = url_or_engine.url if isinstance(url_or_engine, Engine) else make_url(url_or_engine)
    return url.get_backend_name() == "sqlite"


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; WAL keeps the file consistent on a crash
    cur.close()


def make_engine(url: str, **kwargs) -> Engine:
    """An engine for `url`; SQLite connections get WAL, busy_timeout and foreign keys. kwargs go to create_engine."""
    if is_sqlite(url):
        sqlite_file = make_url(url).database
        if sqlite_file and sqlite_file != ":memory:":
            Path(sqlite_file).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": BUSY_TIMEOUT_MS / 1000}, **kwargs
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, **kwargs)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextlib.contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session that commits on success and rolls back on an exception."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def alembic_config(url: str):
    """Programmatic Alembic config (db/alembic.ini is the same, for the `alembic` command line)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["configure_logger"] = False
    return cfg


# pg_advisory_lock key of `upgrade head` (any constant the application uses for nothing else).
MIGRATION_LOCK_KEY = 0x6D65_6674_73  # "mefts"


@contextlib.contextmanager
def _migration_lock(url: str) -> Iterator[None]:
    """Serialise `upgrade head` across processes that share a database (server and workers starting together).

    SQLite: a file lock next to the database. PostgreSQL: a session advisory lock held on its own connection, which
    PostgreSQL releases by itself if this process dies.
    """
    if make_url(url).get_backend_name() == "postgresql":
        engine = make_engine(url, poolclass=NullPool)
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
                conn.commit()
                try:
                    yield
                finally:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK_KEY})
                    conn.commit()
        finally:
            engine.dispose()
        return
    db_file = make_url(url).database if is_sqlite(url) else None
    if not db_file or db_file == ":memory:":
        yield
        return
    lock_path = Path(db_file).with_suffix(".migrate.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _current_revision(url: str) -> str | None:
    from alembic.runtime.migration import MigrationContext

    engine = make_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def upgrade_database(url: str) -> None:
    """Bring the schema at `url` to the newest Alembic revision."""
    # Alembic logs its plugins and context at INFO on every start-up; say only what changed.
    for name in ("alembic.runtime.plugins", "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(logging.WARNING)
    from alembic import command

    with _migration_lock(url):
        before = _current_revision(url)
        command.upgrade(alembic_config(url), "head")
        after = _current_revision(url)
    where = make_url(url).render_as_string(hide_password=True)
    if before != after:
        log.info("database at %s migrated from %s to %s", where, before or "empty", after)
    else:
        log.info("database at %s is at %s", where, after)
