"""A run's timeout outlives its server: the deadline is stored with the run when the job reports it started (after
its imports), and the dispatcher of a restarted server enforces it on the job the killed server left running.

Real processes: `mefts serve` with its embedded worker, SIGKILLed while the job trains; the job (its own process
group) lives on renewing its lease; a second `mefts serve` on the same file finds the run past its deadline, asks
the job for its stacks, stores "timed out after N s" and kills the job.
"""

from __future__ import annotations

import datetime as dt

import httpx

from tests.backend.conftest import LONG, pid_alive, wait_for

TIMEOUT_S = 6


def _at(stamp: str) -> dt.datetime:
    return dt.datetime.fromisoformat(stamp.rstrip("Z"))


def test_a_run_times_out_at_its_deadline_after_its_server_was_killed_and_restarted(make_server):
    server = make_server()
    http = httpx.Client(base_url=server.url, timeout=30)
    rid = http.post("/api/runs", json={**LONG, "timeout_s": TIMEOUT_S}).json()["id"]
    # its start report (versions, ...) replaces the provisional deadline set when the run was claimed
    run = wait_for(lambda: (lambda x: x if x["status"] == "running" and x["versions"] else None)(
        http.get(f"/api/runs/{rid}").json()), 90, 0.1, "the job to report it started")
    started, deadline, pid = _at(run["started_at"]), _at(run["deadline_at"]), run["pid"]
    # the clock started when the job reported it had started, after the fork and its imports
    assert dt.timedelta(seconds=TIMEOUT_S) < deadline - started < dt.timedelta(seconds=TIMEOUT_S + 300)

    server.kill()  # no shutdown code runs: the job lives on, renewing its own lease
    assert pid_alive(pid)
    server = make_server()  # a restart on the same file: a new dispatcher with an empty memory
    http = httpx.Client(base_url=server.url, timeout=30)
    again = http.get(f"/api/runs/{rid}").json()
    assert (again["status"], again["attempts"], again["pid"]) == ("running", 1, pid)

    done = wait_for(lambda: (lambda x: x if x["status"] not in ("queued", "running") else None)(
        http.get(f"/api/runs/{rid}").json()), 90, 0.2, "the run to time out")
    assert (done["status"], done["attempts"], done["error"]) == ("failed", 1, f"timed out after {TIMEOUT_S} s")
    assert _at(done["finished_at"]) >= deadline  # not before its deadline
    # the new server asked the orphaned job for its stacks (same host) before killing it: where it was
    assert "most recent call first" in done["traceback"], done["traceback"][-2000:]
    wait_for(lambda: not pid_alive(pid), 30, 0.2, "the timed-out job to be gone")
    assert "an orphan" in server.log_text()
