"""Claim throughput of the queue: N processes claim M queued runs as fast as they can (crud.claim_next_run, one
transaction per claim), on SQLite and on PostgreSQL. Checks every run was claimed exactly once.

    .venv/bin/python bench/claim_throughput.py [--runs 2000] [--procs 1,4] [--database-url URL]

Without --database-url it measures a SQLite file and a throw-away PostgreSQL server (tests/postgres.py: initdb +
pg_ctl from /usr/lib/postgresql/*/bin, fsync off) when one is installed.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from db import crud  # noqa: E402
from db.session import make_engine, make_sessionmaker, session_scope, upgrade_database  # noqa: E402


def _claimer(url: str, worker: str, start, out) -> None:
    factory = make_sessionmaker(make_engine(url))
    mine = []
    start.wait()
    while True:
        with session_scope(factory) as s:
            run = crud.claim_next_run(session=s, worker_id=worker, host=worker, lease_seconds=600, slot="cpu:0")
        if run is None:
            break
        mine.append(run.id)
    out.put(mine)


def measure(url: str, n_runs: int, n_procs: int) -> tuple[float, int]:
    """Seconds to claim `n_runs` with `n_procs` processes, and how many distinct runs were claimed."""
    upgrade_database(url)
    factory = make_sessionmaker(make_engine(url))
    with session_scope(factory) as s:
        fields = {"config": {}, "backbone": "tiny-bert", "method": "full", "method_label": "full", "task": "sst2",
                  "seed": 0}
        crud.create_sweep(session=s, name="bench", spec={}, runs=[fields] * n_runs)
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_claimer, args=(url, f"w{i}", start, out)) for i in range(n_procs)]
    for p in procs:
        p.start()
    time.sleep(3)  # let the processes import and connect
    t0 = time.perf_counter()
    start.set()
    claimed = [rid for _ in procs for rid in out.get(timeout=600)]
    elapsed = time.perf_counter() - t0
    for p in procs:
        p.join()
    assert len(claimed) == len(set(claimed)) == n_runs, (len(claimed), len(set(claimed)), n_runs)
    return elapsed, len(set(claimed))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--procs", default="1,4", help="comma-separated process counts")
    parser.add_argument("--database-url", help="measure this (empty) database only")
    args = parser.parse_args()
    procs = [int(p) for p in args.procs.split(",")]

    servers = []
    with tempfile.TemporaryDirectory() as tmp:
        def databases():
            if args.database_url:
                yield "given", lambda n: args.database_url
                return
            yield "sqlite", lambda n: f"sqlite:///{tmp}/claim-{n}.db"
            sys.path.insert(0, str(REPO / "tests"))
            from postgres import PostgresServer, pg_bin_dir

            bin_dir = pg_bin_dir()
            if bin_dir is None:
                print("PostgreSQL is not installed: measured SQLite only")
                return
            server = PostgresServer(bin_dir).start()
            servers.append(server)
            yield "postgresql", lambda n: server.create_database(f"claim_{n}")

        print(f"{'database':<11} {'procs':>5} {'runs':>6} {'seconds':>8} {'claims/s':>9}")
        try:
            for name, new_url in databases():
                for n in procs:
                    elapsed, got = measure(new_url(n), args.runs, n)
                    print(f"{name:<11} {n:>5} {got:>6} {elapsed:>8.2f} {got / elapsed:>9.0f}", flush=True)
        finally:
            for server in servers:
                server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
