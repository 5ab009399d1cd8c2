"""EXECUTOR=ray: a `mefts worker` subprocess joins a local Ray runtime (RAY_ADDRESS) and runs each claimed run as a
Ray task, on a PostgreSQL queue; runs are submitted through the API (in-process, same database).

The worker heartbeats slowly (every 20 s, leases of 60 s) so that the job's own heartbeat, which also stops a
cancelled job, cannot be what ends a cancelled run within the test's few seconds: the forced ray.cancel is.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from fastapi.testclient import TestClient

from backend.main import create_app
from backend.settings import Settings
from db.session import upgrade_database

from .conftest import FAST_ENV, LONG, REPO, TINY, pid_alive, wait_for

pytestmark = [pytest.mark.ray, pytest.mark.postgres]

SLOW_BEAT = {"MEFTS_HEARTBEAT_SECONDS": "20", "MEFTS_LEASE_SECONDS": "60"}
MEDIUM = {**TINY, "hyperparameters": {**TINY["hyperparameters"], "epochs": 4, "max_train_samples": 128,
                                      "patience": 1000, "measure_memory": False}}


def _import_ray():
    try:
        import ray
    except ImportError:
        pytest.skip("RAY TESTS NOT RUN: ray is not installed (`pip install -e '.[cluster]'`)")
    return ray


@pytest.fixture(scope="module")
def ray_address():
    """A Ray runtime of this machine with 2 CPUs (two slots of one CPU), started here, stopped at the end."""
    ray = _import_ray()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="mefts-tests")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def service(ray_address, postgres_server, tmp_path_factory):
    """A PostgreSQL database and `mefts worker` with EXECUTOR=ray on it (one for the module: Ray starts slowly)."""
    url = postgres_server.create_database()
    upgrade_database(url)
    tmp = tmp_path_factory.mktemp("ray")
    log = tmp / "worker.log"
    env = {**os.environ, **FAST_ENV, **SLOW_BEAT, "PYTHONPATH": str(REPO), "DATABASE_URL": url, "EXECUTOR": "ray",
           "RAY_ADDRESS": ray_address, "MEFTS_WORKER_ID": "ray-dispatcher", "MEFTS_DATA_DIR": str(tmp)}
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "backend.cli", "worker"], cwd=REPO, env=env, stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True)
    yield {"url": url, "log": log, "proc": proc, "tmp": tmp}
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture
def client(service):
    settings = Settings(data_dir=service["tmp"], database_url=service["url"], heartbeat_seconds=20)
    with TestClient(create_app(settings, start_worker=False, frontend_dir=None), base_url="http://127.0.0.1") as c:
        yield c


def _run(client, rid: int) -> dict:
    return client.get(f"/api/runs/{rid}").json()


def _running_at_step(client, rid: int, step: int = 1):
    r = _run(client, rid)
    assert r["status"] in ("queued", "running"), (r["status"], r["error"], r["traceback"])
    return r if r["status"] == "running" and (r["step"] or 0) >= step and r["pid"] else None


def _worker_log(service) -> str:
    return service["log"].read_text(errors="replace")


def test_ray_run_completes_and_the_cluster_shows_in_system(client, service):
    rid = client.post("/api/runs", json=TINY).json()["id"]
    run = wait_for(lambda: (lambda r: r if r["status"] not in ("queued", "running") else None)(_run(client, rid)),
                   240, 0.2, "the Ray task to finish")
    assert run["status"] == "succeeded", (run["error"], run["traceback"], _worker_log(service)[-3000:])
    assert run["attempts"] == 1 and run["worker_id"] == "ray-dispatcher" and run["progress"] == 1.0
    assert run["score"] is not None and run["memory"]["peak_bytes"] > 0
    series = client.get(f"/api/runs/{rid}/metrics").json()["series"]
    assert len(series["step_loss"]) == run["total_steps"] == 4
    assert f"run {rid} attempt 1: submitted Ray task (num_cpus=1, num_gpus=0)" in _worker_log(service)
    # the worker's heartbeat carries the Ray cluster: two CPU slots, the node's inventory
    (w,) = [w for w in client.get("/api/system").json()["workers"] if w["id"] == "ray-dispatcher"]
    assert w["alive"] and w["slots"] == 2 and w["slot_kind"] == "cpu"
    assert w["devices"][0]["kind"] == "cpu" and w["devices"][0]["cores"] == 2 and w["devices"][0]["node"]


def test_ray_run_reports_progress_then_cancel_is_a_forced_ray_cancel(client, service):
    rid = client.post("/api/runs", json=LONG).json()["id"]
    first = wait_for(lambda: _running_at_step(client, rid), 240, 0.2, "the Ray task to make progress")
    later = wait_for(lambda: _running_at_step(client, rid, first["step"] + 5), 60, 0.2, "more progress")
    assert 0 < first["progress"] < later["progress"] < 1 and later["total_steps"] == 200 * 32
    pid = later["pid"]  # the Ray worker process running the job
    assert pid != service["proc"].pid and pid_alive(pid)
    t0 = time.monotonic()
    assert client.post(f"/api/runs/{rid}/cancel").status_code == 200
    run = wait_for(lambda: (lambda r: r if r["status"] == "cancelled" else None)(_run(client, rid)), 15, 0.1,
                   "the run to be cancelled")
    wait_for(lambda: not pid_alive(pid), 10, 0.1, "the Ray worker process to die")
    assert time.monotonic() - t0 < 15  # well before the job's own heartbeat (20 s) would have noticed
    assert run["attempts"] == 1 and run["error"] == "cancelled"
    log = _worker_log(service)
    assert f"run {rid}: cancel requested" in log
    assert f"run {rid} attempt 1: the Ray task was cancelled (forced) without a verdict; run is now cancelled" in log


def test_ray_lost_worker_puts_the_run_back_in_the_queue(client, service):
    rid = client.post("/api/runs", json=MEDIUM).json()["id"]
    run = wait_for(lambda: _running_at_step(client, rid), 240, 0.2, "the Ray task to make progress")
    os.kill(run["pid"], signal.SIGKILL)  # the process Ray runs the task in dies, as on a lost node
    done = wait_for(lambda: (lambda r: r if r["status"] not in ("queued", "running") else None)(_run(client, rid)),
                    240, 0.2, "the run to finish")
    assert done["status"] == "succeeded" and done["attempts"] == 2, (done["status"], done["error"])
    log = _worker_log(service)
    assert f"run {rid} attempt 1: lost the Ray worker or node (" in log and "run is now queued" in log
    series = client.get(f"/api/runs/{rid}/metrics").json()["series"]
    assert len(series["step_loss"]) == done["total_steps"] == 64  # the second attempt's, complete


def test_task_failures_are_classified():
    _import_ray()
    import ray.exceptions as rex

    from backend.worker.executors.ray import classify

    code, why = classify(rex.NodeDiedError("node 10.0.0.7 died"))
    assert code < 0 and why.startswith("lost the Ray worker or node (NodeDiedError)")
    assert classify(rex.WorkerCrashedError())[0] < 0
    assert classify(rex.TaskCancelledError())[1] == "the Ray task was cancelled (forced)"
    err = rex.RayTaskError("run_job_task", "Traceback ...", ValueError("bad config"))
    code, why = classify(err)
    assert code == 1 and why.startswith("the Ray task raised ValueError")
