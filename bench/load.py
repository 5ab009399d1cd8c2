"""Load on a real `mefts serve --no-worker` on 127.0.0.1: concurrent POSTs stored exactly once, GET /api/runs at
10,000 runs, and the SSE stream with many clients.

    .venv/bin/python bench/load.py [--posts 500] [--runs 10000] [--requests 200] [--concurrency 16]
                                   [--sse-clients 50] [--sse-updates 20] [--time-limit 600] [--burst-only]

1. POST burst: `--posts` POST /api/runs at once (one asyncio task and connection each), every one with a unique
   name; then every acknowledged id is checked in the database: stored exactly once, under its own name, nothing
   lost, nothing duplicated. Meanwhile a separate client (a thread with its own connection, as a browser user
   beside a script) lists GET /api/runs?limit=50 one request after another and queues one run of its own: its
   latencies say whether the burst starves everyone else.
2. List: a fresh database filled with `--runs` runs shaped like real ones (bench/api_latency.py's `fill`), then
   GET /api/runs (newest 50; a filtered, sorted page) one at a time and from `--concurrency` clients at once.
3. SSE: `--sse-clients` clients on /api/events while `--sse-updates` runs are queued one by one (each queue is an
   update every client must see): delivered share and delay from the POST's answer to each client's event.

Every phase has a deadline; the script prints one table. Traffic stays on 127.0.0.1. With MEFTS_API_TOKEN set in
the environment, the server is started with it and the POSTs send it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from api_latency import fill, pct  # noqa: E402

from tests.hardening.support import LoopbackServer  # noqa: E402

RUN = {"backbone": "tiny-bert", "method": "full", "task": "sst2",
       "hyperparameters": {"epochs": 1, "max_train_samples": 32, "max_eval_samples": 32, "batch_size": 8,
                           "max_seq_len": 32}}


def auth_headers() -> dict[str, str]:
    token = os.environ.get("MEFTS_API_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


def _p(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return pct(values, q) if len(values) > 1 else values[0]


# ------------------------------------------------------------------------------------------------ 1. POST burst
SIDE_POST_AFTER = 3  # the side client queues its run after this many lists, well inside the burst


def side_client(url: str, started: threading.Event, done: threading.Event, *, timeout: float = 120.0) -> dict:
    """While the burst runs: GET /api/runs?limit=50 back to back, and one POST /api/runs (name `side-0`) after
    SIDE_POST_AFTER lists. Latencies in ms (a request that got no answer counts with the time it waited, in
    `unanswered`); `post_status`/`post_id` to check the run was stored once."""
    gets: list[float] = []
    out: dict = {"gets": gets, "post_ms": None, "post_status": None, "post_id": None, "post_in_burst": False,
                 "unanswered": 0}

    def send(http: httpx.Client, method: str, path: str, **kw) -> tuple[float, httpx.Response | None]:
        t = time.perf_counter()
        try:
            r = http.request(method, path, **kw)
        except httpx.HTTPError:
            out["unanswered"] += 1
            r = None
        return (time.perf_counter() - t) * 1000, r

    with httpx.Client(base_url=url, timeout=timeout, headers=auth_headers()) as http:
        http.get("/api/health")  # the connection is open before the burst starts
        started.wait()
        lists = 0
        while not done.is_set() or out["post_ms"] is None:
            in_burst = not done.is_set()  # only requests sent during the burst count
            if (lists >= SIDE_POST_AFTER or not in_burst) and out["post_ms"] is None:
                ms, r = send(http, "POST", "/api/runs", json={**RUN, "name": "side-0"})
                out.update(post_ms=ms, post_status=r and r.status_code, post_in_burst=in_burst,
                           post_id=r.json().get("id") if r is not None and r.status_code == 201 else None)
                continue
            ms, r = send(http, "GET", "/api/runs", params={"limit": 50})
            lists += 1
            if in_burst:
                gets.append(ms)
    return out


def _raw_post(url: str, path: str, body: dict) -> bytes:
    """One HTTP/1.1 POST with a JSON body, as bytes (Connection: close: the answer ends at EOF)."""
    data = json.dumps(body).encode()
    head = [f"POST {path} HTTP/1.1", f"Host: {url.split('//', 1)[1]}", "Content-Type: application/json",
            "User-Agent: mefts-load-burst",
            f"Content-Length: {len(data)}", "Connection: close", *(f"{k}: {v}" for k, v in auth_headers().items())]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + data


async def post_burst(url: str, n: int, *, prefix: str = "load", timeout: float = 120.0, side: bool = False) -> dict:
    """`n` concurrent POST /api/runs with names `{prefix}-{i}` (and with `side`, the side client beside them).
    Returns answers and latencies.

    Each POST has its own connection, opened before the burst, and is written as raw bytes: the requests reach the
    server at once and the client does next to nothing per request, so the figures are the server's (an HTTP
    client library's pool of `n` connections in one process would itself be the bottleneck)."""
    host, port = url.split("//", 1)[1].rsplit(":", 1)
    results: list[tuple[str, int | None, int | None, float, str]] = []
    start = asyncio.Event()
    started, done, side_out = threading.Event(), threading.Event(), {}
    thread = None
    if side:
        thread = threading.Thread(target=lambda: side_out.update(side_client(url, started, done, timeout=timeout)),
                                  name="side-client", daemon=True)
        thread.start()

    async def one(i: int, conn) -> None:
        name = f"{prefix}-{i}"
        reader, writer = conn
        await start.wait()
        t = time.perf_counter()
        try:
            writer.write(_raw_post(url, "/api/runs", {**RUN, "name": name}))
            answer = await asyncio.wait_for(reader.read(-1), timeout)  # a TimeoutError is an OSError
            head, _, body = answer.partition(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            rid = json.loads(body).get("id") if status == 201 else None
            results.append((name, status, rid, time.perf_counter() - t, "" if rid else body[:200].decode()))
        except (OSError, ValueError, IndexError) as e:
            results.append((name, None, None, time.perf_counter() - t, f"{type(e).__name__}: {e}"))
        finally:
            writer.close()

    conns = [await asyncio.open_connection(host, int(port)) for _ in range(n)]
    tasks = [asyncio.create_task(one(i, conn)) for i, conn in enumerate(conns)]
    await asyncio.sleep(0.2)
    t0 = time.perf_counter()
    start.set()
    started.set()
    try:
        await asyncio.gather(*tasks)  # each has its own timeout
    finally:
        done.set()
    wall = time.perf_counter() - t0
    if thread is not None:
        await asyncio.to_thread(thread.join, 2 * timeout + 10)  # its last request may wait `timeout`
    return {"results": results, "wall": wall, "side": side_out or None}


def check_stored_once(db_path: Path, results: list, prefix: str = "load", side: dict | None = None) -> dict:
    """Every acknowledged POST is in the runs table exactly once under its name; no name is stored twice (with
    `side`, the side client's run too)."""
    acked = {name: rid for name, status, rid, _, _ in results if status == 201}
    if side is not None and side["post_status"] == 201:
        acked["side-0"] = side["post_id"]
    with sqlite3.connect(db_path, timeout=30) as con:
        rows = con.execute("SELECT id, name FROM runs WHERE name LIKE ? OR name = 'side-0'",
                           (f"{prefix}-%",)).fetchall()
    by_name: dict[str, list[int]] = {}
    for rid, name in rows:
        by_name.setdefault(name, []).append(rid)
    ids = [rid for rid in acked.values()]
    return {
        "sent": len(results) + (side is not None),
        "acknowledged": len(acked),
        "errors": [(name, status, err) for name, status, rid, _, err in results if status != 201],
        "rows": len(rows),
        "duplicate_ids": len(ids) - len(set(ids)),
        "duplicate_names": sum(1 for v in by_name.values() if len(v) > 1),
        "lost": [name for name, rid in acked.items() if by_name.get(name) != [rid]],
        "unacknowledged_stored": sorted(set(by_name) - set(acked)),
    }


# ------------------------------------------------------------------------------------------------ 2. list
async def list_latency(url: str, path: str, requests: int, concurrency: int) -> tuple[list[float], float]:
    times: list[float] = []
    queue = list(range(requests))
    async with httpx.AsyncClient(base_url=url, timeout=60,
                                 limits=httpx.Limits(max_connections=concurrency)) as http:
        for _ in range(3):
            assert (await http.get(path)).status_code == 200

        async def worker() -> None:
            while queue:
                queue.pop()
                t = time.perf_counter()
                r = await http.get(path)
                times.append((time.perf_counter() - t) * 1000)
                assert r.status_code == 200, r.text

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return times, wall


# ------------------------------------------------------------------------------------------------ 3. SSE
async def sse_fanout(url: str, clients: int, updates: int, *, gap: float = 0.3, timeout: float = 120.0) -> dict:
    """`clients` SSE readers; `updates` runs queued one at a time; which client saw which run, and when."""
    seen: list[dict[int, float]] = [{} for _ in range(clients)]
    connected = 0
    stop = asyncio.Event()
    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(30, read=timeout), limits=limits) as http:
        async def reader(k: int) -> None:
            nonlocal connected
            async with http.stream("GET", "/api/events") as r:
                assert r.status_code == 200
                async for line in r.aiter_lines():
                    if line.startswith("retry:"):
                        connected += 1
                    elif line.startswith("data: "):
                        seen[k].setdefault(json.loads(line[6:])["id"], time.perf_counter())
                    if stop.is_set():
                        return

        readers = [asyncio.create_task(reader(k)) for k in range(clients)]
        deadline = time.monotonic() + 60
        while connected < clients and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # every stream has polled once: its cursor is set
        posted: dict[int, float] = {}
        async with httpx.AsyncClient(base_url=url, timeout=30, headers=auth_headers()) as poster:
            for i in range(updates):
                r = await poster.post("/api/runs", json={**RUN, "name": f"sse-{i}"})
                assert r.status_code == 201, r.text
                posted[r.json()["id"]] = time.perf_counter()
                await asyncio.sleep(gap)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(set(posted) <= set(s) for s in seen):
            await asyncio.sleep(0.2)
        stop.set()
        for t in readers:
            t.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
    delays = [(s[rid] - t) * 1000 for s in seen for rid, t in posted.items() if rid in s]
    delivered = sum(1 for s in seen for rid in posted if rid in s)
    return {"clients": clients, "connected": connected, "updates": updates, "delivered": delivered,
            "expected": clients * updates, "delays": delays}


# ------------------------------------------------------------------------------------------------ main
def list_and_sse(tmp: str, args, env: dict[str, str], left) -> tuple[list[tuple[str, str, str]], bool, float]:
    """Phases 2 and 3 on a database with --runs runs: table rows, whether every SSE client got every update, and
    the seconds the fill took."""
    rows: list[tuple[str, str, str]] = []
    data = Path(tmp) / "list"
    data.mkdir()
    url = f"sqlite:///{data / 'mefts.db'}"
    from db.session import upgrade_database

    t = time.perf_counter()
    upgrade_database(url)
    fill(url, args.runs)
    filled = time.perf_counter() - t
    with LoopbackServer(data, env=env, log_level="WARNING") as server:
        for label, path in (("newest 50", "/api/runs?limit=50"),
                            ("status+method filter, sort -score", "/api/runs?limit=50&status=succeeded&method=lora"
                                                                  "&sort=-score")):
            for conc in (1, args.concurrency):
                times, wall = asyncio.run(list_latency(server.url, path, args.requests, conc))
                rows.append((f"GET /api/runs, {args.runs} runs: {label}" if conc == 1 else "",
                             f"{conc} client{'s' if conc > 1 else ''}: p50 / p95 (req/s)",
                             f"{_p(times, 50):.1f} / {_p(times, 95):.1f} ms ({len(times) / wall:.0f}/s)"))
        sse = asyncio.run(sse_fanout(server.url, args.sse_clients, args.sse_updates, timeout=left()))
    d = sse["delays"]
    rows += [
        (f"SSE /api/events, {sse['clients']} clients", "connected",
         f"{sse['connected']} / {sse['clients']}"),
        ("", f"updates delivered ({sse['updates']} runs queued)",
         f"{sse['delivered']} / {sse['expected']}"),
        ("", "delay POST answer -> event p50 / p95 / max",
         f"{_p(d, 50):.0f} / {_p(d, 95):.0f} / {max(d, default=0):.0f} ms"),
    ]
    return rows, sse["delivered"] == sse["expected"], filled


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=500)
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=200, help="list requests per measurement")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent list clients")
    parser.add_argument("--sse-clients", type=int, default=50)
    parser.add_argument("--sse-updates", type=int, default=20)
    parser.add_argument("--time-limit", type=float, default=600, help="seconds for the whole script")
    parser.add_argument("--burst-only", action="store_true", help="phase 1 alone (the burst and the side client)")
    args = parser.parse_args()
    deadline = time.monotonic() + args.time_limit
    left = lambda: max(10.0, deadline - time.monotonic())  # noqa: E731
    env = {k: v for k, v in os.environ.items() if k == "MEFTS_API_TOKEN"}
    rows: list[tuple[str, str, str]] = []
    ok = True

    with tempfile.TemporaryDirectory(prefix="mefts-load-") as tmp:
        # 1. POST burst on an empty database
        with LoopbackServer(Path(tmp) / "posts", env=env, log_level="WARNING") as server:
            out = asyncio.run(post_burst(server.url, args.posts, timeout=left(), side=True))
            side = out["side"]
            check = check_stored_once(server.db_path, out["results"], side=side)
        lat = [r[3] * 1000 for r in out["results"] if r[1] == 201]
        exact = (check["acknowledged"] == args.posts + 1 and not check["lost"] and not check["duplicate_ids"]
                 and not check["duplicate_names"] and check["rows"] == args.posts + 1)
        ok &= exact
        rows += [
            (f"{args.posts} concurrent POST /api/runs", "acknowledged (201) / stored rows",
             f"{check['acknowledged']} / {check['rows']}"),
            ("", "lost / duplicated / errors",
             f"{len(check['lost'])} / {check['duplicate_ids'] + check['duplicate_names']} / {len(check['errors'])}"),
            ("", "wall time, throughput", f"{out['wall']:.1f} s, {len(lat) / out['wall']:.0f} POST/s"),
            ("", "latency p50 / p95 / max", f"{_p(lat, 50):.0f} / {_p(lat, 95):.0f} / {max(lat, default=0):.0f} ms"),
            ("side client during the burst",
             f"GET /api/runs?limit=50 ({len(side['gets'])}, {side['unanswered']} unanswered): p50 / p95 / max",
             f"{_p(side['gets'], 50):.0f} / {_p(side['gets'], 95):.0f} / {max(side['gets'], default=0):.0f} ms"),
            ("", "its one POST /api/runs" + ("" if side["post_in_burst"] else " (sent after the burst ended)"),
             f"{side['post_ms']:.0f} ms ({side['post_status']})"),
        ]
        for name, status, err in check["errors"][:5]:
            print(f"  error: {name}: {status} {err}", file=sys.stderr)

        filled = None
        if not args.burst_only:  # 2 and 3. a database with --runs runs
            more, delivered, filled = list_and_sse(tmp, args, env, left)
            rows += more
            ok &= delivered

    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print(f"\nmefts load, uvicorn (1 process) + SQLite WAL on 127.0.0.1, {os.cpu_count()} cores ({cpu}); "
          + (f"{args.runs} runs filled in {filled:.1f} s; SSE polls every 1 s (MEFTS_EVENTS_POLL_SECONDS)"
             if filled is not None else "the burst alone"))
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    print(f"{'load':<{w0}}  {'measure':<{w1}}  value")
    for a, b, c in rows:
        print(f"{a:<{w0}}  {b:<{w1}}  {c}")
    print("\nall POSTs (the burst's and the side client's) stored exactly once and every SSE client got every update"
          if ok else "\nFAILED (see above)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
