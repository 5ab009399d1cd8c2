"""Two `mefts worker` processes, as on two machines (MEFTS_HOST), share one PostgreSQL queue: every run runs once,
and a worker killed mid-run hands its run to the other. Runs are queued through the API (in-process, same database)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from db.models import MetricPoint, Run
from db.session import session_scope

from .conftest import FAST_ENV, REPO, pid_alive, wait_for

pytestmark = [pytest.mark.postgres,
              pytest.mark.parametrize("db_backend", [pytest.param("postgresql")], indirect=True)]

# The smallest real run: one epoch of one batch on tiny-bert.
TINIEST = {"epochs": 1, "max_train_samples": 8, "max_eval_samples": 8, "batch_size": 8, "max_seq_len": 32,
           "measure_memory": False}
STARTED = re.compile(r"run (\d+) attempt (\d+): started pid (\d+)")


class Worker:
    """`python -m backend.cli worker` with its own host name, worker id and data folder, in its own process group."""

    def __init__(self, tmp: Path, name: str, url: str, *args: str) -> None:
        self.name = name
        self.log = tmp / f"{name}.log"
        env = {**os.environ, **FAST_ENV, "PYTHONPATH": str(REPO), "DATABASE_URL": url, "MEFTS_HOST": name,
               "MEFTS_WORKER_ID": name, "MEFTS_DATA_DIR": str(tmp / name)}
        with open(self.log, "w") as fh:
            self.proc = subprocess.Popen([sys.executable, "-m", "backend.cli", "worker", *args], cwd=REPO, env=env,
                                         stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)

    def started(self) -> list[tuple[int, int]]:
        """(run id, attempt) of every job this worker started, from its log."""
        return [(int(r), int(a)) for r, a, _ in STARTED.findall(self.log.read_text())]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def workers(tmp_path, settings):
    started: list[Worker] = []

    def start(name: str, *args: str) -> Worker:
        w = Worker(tmp_path, name, settings.db_url, *args)
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop()


def _sweep(client, n: int, **hp) -> list[int]:
    body = {"name": f"{n} runs", "methods": ["full"], "backbones": ["tiny-bert"], "tasks": ["sst2"],
            "seeds": list(range(n)), "hyperparameters": {**TINIEST, **hp}}
    r = client.post("/api/sweeps", json=body)
    assert r.status_code == 201, r.text
    return r.json()["run_ids"]


def _alive_workers(client) -> dict[str, dict]:
    return {w["id"]: w for w in client.get("/api/system").json()["workers"] if w["alive"]}


@pytest.mark.slow
def test_two_workers_run_a_sweep_each_run_exactly_once(client, workers):
    # 20 runs: each is a fresh job process (about 11 s of imports on a 2-core machine), and 20 are enough for both
    # workers to claim many times in a row against each other
    ids = _sweep(client, 20)
    t0 = time.monotonic()
    a, b = workers("node-a", "--burst"), workers("node-b", "--burst")
    # both workers heartbeat into the shared database, with their device inventory
    alive = wait_for(lambda: (lambda w: w if set(w) == {"node-a", "node-b"} else None)(_alive_workers(client)),
                     60, 0.2, "both workers in /api/system")
    for w in alive.values():
        assert w["heartbeat_age_seconds"] < 5 and w["slots"] == 1 and w["slot_kind"] == "cpu"
        assert w["host"] == w["id"] and [d["kind"] for d in w["devices"]][0] == "cpu"
    for w in (a, b):
        assert w.proc.wait(900) == 0, w.log.read_text()[-3000:]  # ~15 s a run on a 2-core machine, most of it imports
    elapsed = time.monotonic() - t0

    with session_scope(client.app.state.sessionmaker) as s:
        runs = {r.id: r for r in s.scalars(select(Run).where(Run.id.in_(ids)))}
        attempts_with_points = set(s.scalars(select(func.distinct(MetricPoint.attempt))))
        runs_with_points = set(s.scalars(select(func.distinct(MetricPoint.run_id))))
    bad = {i: (r.status, r.attempts, r.error) for i, r in runs.items() if (r.status, r.attempts) != ("succeeded", 1)}
    assert not bad, bad
    assert runs_with_points == set(ids) and attempts_with_points == {1}
    # no run ran in two workers: what each worker started (its log) is disjoint, and together it is every run once
    by_a, by_b = a.started(), b.started()
    assert sorted(by_a + by_b) == sorted((i, 1) for i in ids)
    assert {r.worker_id for r in runs.values()} == {"node-a", "node-b"}
    assert {i for i, _ in by_a} == {i for i, r in runs.items() if r.worker_id == "node-a"}
    print(f"\n{len(ids)} runs on 2 workers in {elapsed:.1f}s: node-a ran {len(by_a)}, node-b ran {len(by_b)}")
    # the workers said goodbye: still listed, no longer alive
    gone = {w["id"]: w for w in client.get("/api/system").json()["workers"]}
    assert {"node-a", "node-b"} <= set(gone) and not gone["node-a"]["alive"] and not gone["node-b"]["alive"]


def test_killed_worker_hands_its_run_to_the_other(client, workers):
    (long_id,) = _sweep(client, 1, epochs=4, max_train_samples=128, patience=1000)  # 64 steps: seconds
    tiny_ids = _sweep(client, 2)
    ws = {"node-a": workers("node-a"), "node-b": workers("node-b")}
    wait_for(lambda: set(_alive_workers(client)) == set(ws), 60, 0.2, "both workers to heartbeat")
    run = wait_for(lambda: (lambda r: r if r["status"] == "running" and (r["step"] or 0) >= 1 and r["pid"] else None)(
        client.get(f"/api/runs/{long_id}").json()), 90, 0.1, "a worker to make progress on the long run")
    victim = ws[run["worker_id"]]
    (heir,) = (w for name, w in ws.items() if name != run["worker_id"])
    # the machine goes away: the worker and its job's process group, without a chance to say anything
    job_pid = run["pid"]
    victim.proc.send_signal(signal.SIGKILL)
    os.killpg(job_pid, signal.SIGKILL)
    victim.proc.wait(10)
    wait_for(lambda: not pid_alive(job_pid), 10, 0.1, "the job to die")
    t_kill = time.monotonic()

    def all_done():
        runs = [client.get(f"/api/runs/{i}").json() for i in [long_id, *tiny_ids]]
        assert all(r["status"] in ("queued", "running", "succeeded") for r in runs), [
            (r["id"], r["status"], r["attempts"], r["error"]) for r in runs]
        return runs if all(r["status"] == "succeeded" for r in runs) else None

    runs = wait_for(all_done, 400, 0.5, "every run to succeed")
    long_run = runs[0]
    assert long_run["attempts"] == 2 and long_run["worker_id"] == heir.name and long_run["progress"] == 1.0
    assert (long_id, 2) in heir.started() and (long_id, 1) in victim.started()
    series = client.get(f"/api/runs/{long_id}/metrics").json()["series"]
    assert len(series["step_loss"]) == long_run["total_steps"] == 64  # attempt 2's points, all of them
    assert {r["id"]: r["attempts"] for r in runs[1:]} == {i: 1 for i in tiny_ids}
    print(f"\nkilled {victim.name} at step {run['step']}; {heir.name} finished everything "
          f"{time.monotonic() - t_kill:.1f}s later")
