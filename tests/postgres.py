"""A throw-away PostgreSQL server for the tests (a pytest plugin, loaded by tests/conftest.py).

`postgres_server` (session) runs `initdb` + `pg_ctl start` in a temporary folder, on a free port on 127.0.0.1 with its
unix socket in that folder, as the `postgres` user when the tests run as root (initdb refuses root). `pg_url` gives
each test a database of its own. The server stops at the end of the session.

Without the binaries (Debian package `postgresql`, found under /usr/lib/postgresql/*/bin, or $MEFTS_PG_BIN;
scripts/setup_system.sh installs it) the PostgreSQL tests are skipped, and the session's summary says so in a
banner. MEFTS_REQUIRE_POSTGRES=1 turns that skip into a failure.
"""

from __future__ import annotations

import atexit
import glob
import itertools
import os
import pwd
import shlex
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

SKIP_PREFIX = "POSTGRESQL TESTS NOT RUN: "
SKIPPED: list[str] = []  # why PostgreSQL tests were skipped, for the banner at the end
_names = itertools.count(1)


def pg_bin_dir() -> Path | None:
    """$MEFTS_PG_BIN, else the newest /usr/lib/postgresql/<version>/bin with initdb and pg_ctl, else PATH's."""
    if os.environ.get("MEFTS_PG_BIN"):
        given = Path(os.environ["MEFTS_PG_BIN"])
        return given if (given / "initdb").exists() and (given / "pg_ctl").exists() else None
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                        key=lambda p: [int(x) if x.isdigit() else 0 for x in Path(p).parts[-3].split(".")])
    for initdb in reversed(candidates):
        if Path(initdb).with_name("pg_ctl").exists():
            return Path(initdb).parent
    on_path = shutil.which("pg_ctl")
    if on_path and Path(on_path).with_name("initdb").exists():
        return Path(on_path).parent
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """One postmaster in a temporary folder. `url(db)` is a SQLAlchemy URL (psycopg 3 driver) over TCP."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="mefts-pg-"))
        self.data = self.root / "data"
        self.logfile = self.root / "server.log"
        self.port = 0
        self.as_user: str | None = None
        if os.geteuid() == 0:  # initdb and postgres refuse to run as root
            self.as_user = "postgres"
            pw = pwd.getpwnam(self.as_user)
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        self.root.chmod(0o755)

    def _cmd(self, *args: str) -> list[str]:
        cmd = [str(self.bin_dir / args[0]), *args[1:]]
        if self.as_user:
            runuser = shutil.which("runuser")
            cmd = ([runuser, "-u", self.as_user, "--", *cmd] if runuser
                   else ["su", self.as_user, "-s", "/bin/sh", "-c", shlex.join(cmd)])
        return cmd

    def _run(self, *args: str, timeout: float = 120) -> None:
        done = subprocess.run(self._cmd(*args), capture_output=True, text=True, timeout=timeout, cwd=self.root)
        if done.returncode != 0:
            log = self.logfile.read_text(errors="replace")[-3000:] if self.logfile.exists() else ""
            raise RuntimeError(f"{' '.join(args[:2])} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}\n{log}")

    def start(self) -> PostgresServer:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-locale",
                  "--no-sync")
        for attempt in range(3):  # a free port can be taken between the probe and the bind: try another
            self.port = _free_port()
            options = " ".join([
                f"-p {self.port}", f"-k {self.root}", "-c listen_addresses=127.0.0.1", "-c max_connections=300",
                # a test server: durability is not wanted, speed is
                "-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off",
            ])
            try:
                self._run("pg_ctl", "-D", str(self.data), "-l", str(self.logfile), "-w", "-t", "60", "-o", options,
                          "start")
                break
            except RuntimeError:
                if attempt == 2:
                    raise
        atexit.register(self.stop)
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        """A new, empty database; returns its URL."""
        import psycopg

        name = name or f"t{next(_names)}_{os.getpid()}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        if self.data.exists() and (self.data / "postmaster.pid").exists():
            try:
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", timeout=60)
            except (RuntimeError, subprocess.SubprocessError):
                pass
        shutil.rmtree(self.root, ignore_errors=True)


def _skip(reason: str):
    if os.environ.get("MEFTS_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"MEFTS_REQUIRE_POSTGRES=1 but {reason}", pytrace=False)
    SKIPPED.append(reason)
    pytest.skip(SKIP_PREFIX + reason)


@pytest.fixture(scope="session")
def postgres_server():
    bin_dir = pg_bin_dir()
    if bin_dir is None:
        _skip("PostgreSQL is not installed (no initdb and pg_ctl in $MEFTS_PG_BIN, /usr/lib/postgresql/*/bin or "
              "PATH); install the Debian package `postgresql` (scripts/setup_system.sh does, as root)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _skip("psycopg is not installed; `pip install -e '.[cluster]'`")
    server = PostgresServer(bin_dir)
    try:
        server.start()
    except Exception:
        server.stop()
        raise
    yield server
    server.stop()


@pytest.fixture
def pg_url(postgres_server) -> str:
    """A fresh database on the session's PostgreSQL server (no tables; migrate it first)."""
    return postgres_server.create_database()


def pytest_terminal_summary(terminalreporter):
    if not SKIPPED:
        return
    tr = terminalreporter
    n = sum(SKIP_PREFIX in str(r.longrepr) for r in tr.stats.get("skipped", []))
    tr.write_sep("!", "POSTGRESQL TESTS WERE SKIPPED", red=True, bold=True)
    tr.write_line(f"{n} test(s) did not run against PostgreSQL: {SKIPPED[0]}", red=True, bold=True)
    tr.write_line("CI must run them: `bash scripts/setup_system.sh` as root installs PostgreSQL; "
                  "MEFTS_REQUIRE_POSTGRES=1 makes this a failure.", red=True, bold=True)
