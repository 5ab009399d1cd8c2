"""The server SIGKILLed in the middle of writes: a burst of POSTs in flight and a job writing progress.

Afterwards SQLite's integrity_check is "ok", every POST that was acknowledged (201) is stored exactly once with its
config, none is stored twice, and the job (which outlives its server) goes on writing to the same file.
"""

from __future__ import annotations

import sqlite3
import threading
import time

import httpx

from tests.backend.conftest import LONG, TINY, wait_for
from tests.hardening.support import integrity_check

from .conftest import TOKEN

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _poster(url: str, tag: int, acked: list[tuple[int, str]], stop: threading.Event) -> None:
    with httpx.Client(base_url=url, timeout=10, headers=AUTH) as http:
        for i in range(10_000):
            if stop.is_set():
                return
            name = f"burst-{tag}-{i}"
            try:
                r = http.post("/api/runs", json={**TINY, "name": name})
            except httpx.HTTPError:
                return  # the server is gone: this POST was never acknowledged
            if r.status_code == 201:
                acked.append((r.json()["id"], name))


def test_server_killed_during_a_burst_of_posts_and_a_running_job(make_server):
    server = make_server(MEFTS_API_TOKEN=TOKEN)
    http = httpx.Client(base_url=server.url, timeout=30, headers=AUTH)
    rid = http.post("/api/runs", json=LONG).json()["id"]
    run = wait_for(lambda: (lambda x: x if x["status"] == "running" and (x["step"] or 0) >= 2 else None)(
        http.get(f"/api/runs/{rid}").json()), 90, 0.2, "the run to train")

    acked: list[tuple[int, str]] = []
    stop = threading.Event()
    posters = [threading.Thread(target=_poster, args=(server.url, t, acked, stop)) for t in range(8)]
    for t in posters:
        t.start()
    wait_for(lambda: len(acked) >= 40, 60, 0.02, "40 acknowledged POSTs")
    server.kill()  # SIGKILL with POSTs in flight and the job writing progress
    stop.set()
    for t in posters:
        t.join(30)
    assert len(acked) >= 40

    assert integrity_check(server.db_path) == "ok"
    server = make_server(MEFTS_API_TOKEN=TOKEN)  # a restart on the same file
    http = httpx.Client(base_url=server.url, timeout=30, headers=AUTH)
    for run_id, name in acked:
        got = http.get(f"/api/runs/{run_id}")
        assert got.status_code == 200 and got.json()["name"] == name, (run_id, name, got.text[:200])
        assert got.json()["config"]["epochs"] == TINY["hyperparameters"]["epochs"]
    with sqlite3.connect(server.db_path) as con:
        dupes = con.execute("SELECT name, COUNT(*) FROM runs WHERE name LIKE 'burst-%' GROUP BY name "
                            "HAVING COUNT(*) > 1").fetchall()
        stored = con.execute("SELECT COUNT(*) FROM runs WHERE name LIKE 'burst-%'").fetchone()[0]
    assert dupes == []
    assert len(acked) <= stored <= len(acked) + 8  # at most one unacknowledged POST per client landed

    # the job kept its lease and its writes go on landing in the same file
    later = wait_for(lambda: (lambda x: x if (x["step"] or 0) > run["step"] + 2 else None)(
        http.get(f"/api/runs/{rid}").json()), 60, 0.2, "the job to write more progress")
    assert later["attempts"] == 1 and later["status"] == "running"
    time.sleep(0.5)
    assert integrity_check(server.db_path) == "ok"
