"""`mefts`: serve (API + dashboard + embedded worker), worker (standalone dispatcher), export (tables to files),
plus the core commands (train, bench, ...) from mefts_core.cli when it is installed."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

log = logging.getLogger("mefts")


def _settings(args: argparse.Namespace):
    from backend.settings import Settings

    overrides = {}
    if getattr(args, "data_dir", None):
        overrides["data_dir"] = Path(args.data_dir)
    if getattr(args, "database_url", None):
        overrides["database_url"] = args.database_url
    if getattr(args, "cpu_slots", None):
        overrides["cpu_slots"] = args.cpu_slots
    return Settings(**overrides)


def cmd_serve(args: argparse.Namespace) -> int:
    from backend.security import HOSTS_ENV, bind_refusal, bound_host_entry, is_loopback

    settings = _settings(args)
    refusal = bind_refusal(args.host, settings)
    if refusal:  # before the heavy imports: a refusal is immediate
        log.error("mefts serve: %s", refusal)
        return 2
    entry = bound_host_entry(args.host)
    if entry is not None:  # clients reach a server bound to one address or name by that name
        settings.allowed_hosts = ",".join(filter(None, [settings.allowed_hosts, entry]))
    elif not settings.allowed_hosts and not is_loopback(args.host):
        log.warning("serving on %s: only requests for 127.0.0.1, localhost and [::1] are answered; set %s to the "
                    "names clients (or your reverse proxy) use", args.host, HOSTS_ENV)
    import uvicorn

    from backend.main import create_app

    if args.demo:
        first_start(settings)

    app = create_app(settings, start_worker=not args.no_worker)
    log.info("serving on http://%s:%d (worker: %s)", args.host, args.port, "off" if args.no_worker else "embedded")
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level.lower(), timeout_graceful_shutdown=5)
    return 0


def first_start(settings) -> None:
    """`serve --demo`: the shipped benchmark rows and the demo sweep, each added once (a second start adds none)."""
    from backend import firststart
    from db.session import make_engine, make_sessionmaker, session_scope, upgrade_database

    upgrade_database(settings.db_url)
    engine = make_engine(settings.db_url)
    with session_scope(make_sessionmaker(engine)) as s:
        rows = firststart.import_shipped(s)
        demo = firststart.queue_demo(s, settings)
    engine.dispose()
    log.info("--demo: %d shipped bench rows stored (%d already there); demo sweep %d %s", rows["stored"],
             rows["already"], demo["sweep_id"], "queued" if demo["created"] else "was queued before")


def cmd_worker(args: argparse.Namespace) -> int:
    from backend.worker.dispatcher import Dispatcher
    from db.session import make_engine, make_sessionmaker, upgrade_database

    settings = _settings(args)
    upgrade_database(settings.db_url)
    dispatcher = Dispatcher(settings, make_sessionmaker(make_engine(settings.db_url)))

    def stop(signum, _frame) -> None:
        log.info("%s: stopping the worker", signal.Signals(signum).name)
        dispatcher.stop_event.set()
        dispatcher.wake_event.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    dispatcher.run(burst=args.burst, max_jobs=args.max_jobs)
    return 0


def ray_start_command(args: argparse.Namespace) -> list[str]:
    """`ray start --block ...` for a head node or a node joining `--address` (the same Ray the workers import)."""
    ray_bin = Path(sys.executable).with_name("ray")
    cmd = [str(ray_bin) if ray_bin.exists() else "ray", "start", "--block"]
    if args.head:
        cmd += ["--head", f"--port={args.port}", "--dashboard-host=0.0.0.0", "--ray-client-server-port=10001"]
    else:
        cmd += [f"--address={args.address}"]
    if args.num_gpus is not None:
        cmd += [f"--num-gpus={args.num_gpus}"]
    if args.num_cpus is not None:
        cmd += [f"--num-cpus={args.num_cpus}"]
    return cmd + list(args.ray_args)


def cmd_ray_node(args: argparse.Namespace) -> int:
    if not args.head and not args.address:
        log.error("mefts ray-node: give --head, or --address HOST:PORT of the head")
        return 2
    cmd = ray_start_command(args)
    log.info("exec %s", " ".join(cmd))
    sys.stdout.flush()
    os.execvp(cmd[0], cmd)  # the container's main process becomes Ray's, so `docker stop` reaches it
    return 0  # not reached


def export_artifact(settings, run_id: int | None, output: str | None) -> int:
    """Copy a run's model archive (what GET /api/runs/{id}/artifact sends) to `output`, checking its sha256."""
    import contextlib
    import hashlib

    from backend import artifacts
    from db import crud
    from db.session import make_engine, make_sessionmaker, session_scope

    if run_id is None:
        log.error("mefts export --artifact: give the run with --run ID")
        return 2
    with session_scope(make_sessionmaker(make_engine(settings.db_url))) as s:
        run = crud.get_run(session=s, run_id=run_id)
        if run is None:
            log.error("run %d does not exist", run_id)
            return 1
        stored, sha256, label = run.artifact_path, run.artifact_sha256, run.method_label
    src = artifacts.artifact_file(settings.data_dir, stored)
    if src is None:
        log.error("run %d has no trained model to export%s", run_id,
                  ": its file is missing from the data directory" if stored else "")
        return 1
    digest = hashlib.sha256()
    target = output or artifacts.download_name(run_id, label)
    sink = contextlib.nullcontext(sys.stdout.buffer) if target == "-" else open(target, "wb")  # stdout stays open
    with open(src, "rb") as fin, sink as fout:
        for chunk in iter(lambda: fin.read(1 << 20), b""):
            digest.update(chunk)
            fout.write(chunk)
        fout.flush()
    if sha256 and digest.hexdigest() != sha256:
        if target != "-":
            Path(target).unlink(missing_ok=True)
        log.error("run %d: the model file's sha256 is %s, the run recorded %s: the file changed on disk", run_id,
                  digest.hexdigest(), sha256)
        return 1
    if target != "-":
        log.info("wrote run %d's model (%d bytes, sha256 %s) to %s", run_id, src.stat().st_size, sha256, target)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from backend import tables
    from backend.routes.results import results_rows, runs_rows
    from db.session import make_engine, make_sessionmaker, session_scope, upgrade_database

    settings = _settings(args)
    upgrade_database(settings.db_url)
    if args.artifact:
        return export_artifact(settings, args.run, args.output)
    fmt = args.format or (Path(args.output).suffix.lstrip(".") if args.output else "csv")
    if fmt not in tables.FORMATS or (args.what == "runs" and fmt not in ("csv", "json")):
        log.error("format %r is not available for %s", fmt, args.what)
        return 2
    with session_scope(make_sessionmaker(make_engine(settings.db_url))) as s:
        if args.what == "results":
            columns, rows = results_rows(s, sweep_id=args.sweep, select=args.select)
        else:
            columns, rows = runs_rows(s, sweep_id=args.sweep)
    text = tables.render(columns, rows, fmt, table=args.what)
    if args.output and args.output != "-":
        Path(args.output).write_text(text)
        log.info("wrote %d %s rows to %s", len(rows), args.what, args.output)
    else:
        sys.stdout.write(text)
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    from db.backup import BackupError, backup_database

    settings = _settings(args)
    try:
        made = backup_database(settings.db_url, args.path)
    except BackupError as e:
        log.error("mefts backup: %s", e)
        return 2
    print(f"wrote {made.path} ({made.kind}, {made.bytes} bytes)")
    return 0


def cmd_bench_import(args: argparse.Namespace) -> int:
    from db.bench import add_bench_rows
    from db.session import make_engine, make_sessionmaker, session_scope, upgrade_database
    from mefts_core.measure.bench import load_rows

    settings = _settings(args)
    rows = []
    for path in args.files:
        try:
            got = load_rows(path)
        except (OSError, ValueError) as e:
            log.error("%s: %s", path, e)
            return 2
        rows.extend(r for r in got if args.all or r.get("status") in (None, "", "ok"))
    upgrade_database(settings.db_url)
    with session_scope(make_sessionmaker(make_engine(settings.db_url))) as s:
        stored = add_bench_rows(session=s, rows=rows)
    log.info("stored %d bench rows from %d file(s)", len(stored), len(args.files))
    print(f"stored {len(stored)} bench rows")
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="data directory (default: $MEFTS_DATA_DIR or ./data)")
    p.add_argument("--database-url", help="SQLAlchemy URL (default: $DATABASE_URL or SQLite in the data dir)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mefts", description="Memory-efficient fine-tuning: service and tools.")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="API, dashboard and an embedded worker")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--no-worker", action="store_true", help="do not run jobs in this process")
    p.add_argument("--cpu-slots", type=int, help="concurrent CPU jobs (default: $MEFTS_CPU_SLOTS or 1)")
    p.add_argument("--demo", action="store_true",
                   help="first start: import the shipped benchmark rows (docs/results) and queue a small demo sweep "
                        "on tiny data; each only once")
    _common(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("worker", help="a standalone dispatcher: claims queued runs and runs them")
    p.add_argument("--cpu-slots", type=int, help="concurrent CPU jobs (default: $MEFTS_CPU_SLOTS or 1)")
    p.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    p.add_argument("--max-jobs", type=int, help="exit after starting this many jobs (and waiting for them)")
    _common(p)
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("ray-node", help="a Ray node for EXECUTOR=ray: the head (--head) or one joining it")
    p.add_argument("--head", action="store_true", help="start the cluster's head node")
    p.add_argument("--address", default=os.environ.get("RAY_HEAD_ADDRESS"),
                   help="HOST:PORT of the head to join (default: $RAY_HEAD_ADDRESS)")
    p.add_argument("--port", type=int, default=6379, help="the head's port (default: 6379)")
    p.add_argument("--num-gpus", type=int, help="GPUs this node offers (default: what Ray detects)")
    p.add_argument("--num-cpus", type=int, help="CPUs this node offers (default: what Ray detects)")
    p.add_argument("ray_args", nargs="*", help="further `ray start` options, after --")
    p.set_defaults(func=cmd_ray_node)

    p = sub.add_parser("export", help="write the results or runs table, or a run's trained model (--artifact)")
    p.add_argument("--what", choices=["results", "runs"], default="results")
    p.add_argument("--artifact", action="store_true",
                   help="write the trained model of --run as a tar.gz (default file: run-<id>-<method>.tar.gz)")
    p.add_argument("--run", type=int, help="--artifact: the run's id")
    p.add_argument("--format", choices=["csv", "json", "md", "tex"], help="default: from --output's suffix, or csv")
    p.add_argument("--output", "-o", help="file to write (default: stdout)")
    p.add_argument("--sweep", type=int, help="only this sweep's runs")
    p.add_argument("--select", choices=["best", "all"], default="best", help="results: best config per method, or all")
    _common(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("backup", help="a consistent copy of the live database (SQLite backup API, or pg_dump)")
    p.add_argument("path", metavar="PATH", help="new file to write: a SQLite database, or for PostgreSQL a pg_dump "
                   "custom-format archive (restore with pg_restore)")
    _common(p)
    p.set_defaults(func=cmd_backup)

    p = sub.add_parser("bench-import", help="store rows of `mefts bench --output` in the database (GET /api/bench)")
    p.add_argument("files", nargs="+", metavar="FILE", help="bench outputs (.json, .csv or .md)")
    p.add_argument("--all", action="store_true", help="also store skipped, failed and does-not-fit rows")
    _common(p)
    p.set_defaults(func=cmd_bench_import)

    try:
        from mefts_core.cli import add_core_commands
    except ImportError as e:
        if getattr(e, "name", None) not in ("mefts_core.cli",):
            raise
    else:
        add_core_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
