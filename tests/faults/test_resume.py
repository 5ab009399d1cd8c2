"""A job killed in the middle of a run: its next attempt resumes from the checkpoint of the last complete epoch,
keeps the metric points already stored (once each), and ends exactly where an uninterrupted run of the same seed
ends. A real `mefts serve` with its embedded worker; the job's process group is SIGKILLed, as when a machine loses it.
"""

from __future__ import annotations

import io
import os
import signal
import sqlite3
import tarfile

import httpx

from tests.backend.conftest import pid_alive, wait_for

# Three epochs of 32 steps (one torch thread): an epoch takes seconds, so the kill lands inside epoch 2.
RUN = {"backbone": "tiny-bert", "method": "lora", "task": "sst2", "seed": 7,
       "hyperparameters": {"epochs": 3, "max_train_samples": 256, "max_eval_samples": 32, "batch_size": 8,
                           "max_seq_len": 32, "patience": 1000, "measure_memory": False}}
TERMINAL = {"succeeded", "failed", "cancelled", "does_not_fit"}


def _get(server, path: str, **params):
    r = httpx.get(server.url + path, params=params, timeout=30)
    assert r.status_code == 200, r.text
    return r


def _run(server, rid: int) -> dict:
    return _get(server, f"/api/runs/{rid}").json()


def _series(server, rid: int, attempt: int | None = None) -> dict[str, list[dict]]:
    params = {"attempt": attempt} if attempt else {}
    return _get(server, f"/api/runs/{rid}/metrics", **params).json()["series"]


def _finished(server, rid: int) -> dict:
    return wait_for(lambda: (lambda r: r if r["status"] in TERMINAL else None)(_run(server, rid)), 240, 0.3,
                    f"run {rid} to finish")


def _weights(server, run: dict) -> bytes:
    """model.safetensors from the run's downloaded archive."""
    with tarfile.open(fileobj=io.BytesIO(_get(server, run["artifact_url"]).content)) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("/model.safetensors"))
        return tar.extractfile(member).read()


def test_a_job_killed_in_epoch_2_resumes_from_epoch_1_and_ends_as_if_never_stopped(make_server):
    server = make_server(worker=True)
    rid = server.post("/api/runs", RUN).json()["id"]
    per_epoch = 256 // 8

    def in_epoch_2():
        run = _run(server, rid)
        assert run["status"] in ("queued", "running"), run
        return run if run["epoch"] == 2 and (run["step"] or 0) >= per_epoch + 2 and run["pid"] else None

    run = wait_for(in_epoch_2, 180, 0.1, "the run to train in epoch 2")
    epoch1 = {name: [p for p in points if p["epoch"] == 1] for name, points in _series(server, rid).items()}
    assert len(epoch1["step_loss"]) == per_epoch and len(epoch1["dev_accuracy"]) == 1, epoch1
    assert os.getpgid(run["pid"]) == run["pid"]
    os.killpg(run["pid"], signal.SIGKILL)  # the job and anything it started, with no chance to write a verdict
    wait_for(lambda: not pid_alive(run["pid"]), 10, 0.1, "the job to die")
    # ... while it ran, no epoch 2 report was written: the kill landed inside epoch 2
    assert all(p["epoch"] < 2 or name == "step_loss" for name, points in _series(server, rid, 1).items()
               for p in points)

    # the same run, never interrupted, for comparison (queued behind the retried one: one CPU slot)
    twin = server.post("/api/runs", RUN).json()["id"]
    resumed, plain = _finished(server, rid), _finished(server, twin)
    assert resumed["status"] == plain["status"] == "succeeded", (resumed["error"], resumed["traceback"])
    assert resumed["attempts"] == 2 and plain["attempts"] == 1
    assert resumed["resumed_from_epoch"] == 1 and resumed["result"]["resumed_from_epoch"] == 1
    assert plain["resumed_from_epoch"] == 0
    assert "resumed from the checkpoint of epoch 1" in resumed["log_tail"]

    # the points of epoch 1 are the ones stored before the kill, each once; epochs 2 and 3 come from attempt 2
    series = _series(server, rid)
    total = resumed["total_steps"]
    assert [p["step"] for p in series["step_loss"]] == list(range(1, total + 1))
    for name, points in epoch1.items():
        assert [p for p in series[name] if p["epoch"] == 1] == points, name
    assert [p["epoch"] for p in series["dev_accuracy"]] == [1, 2, 3]
    assert all(p["epoch"] == 2 for p in _series(server, rid, 1)["step_loss"])  # what attempt 1 did of epoch 2
    with sqlite3.connect(server.db_path) as con:
        (doubled,) = con.execute(
            "SELECT COUNT(*) FROM (SELECT name, step, epoch FROM metric_points WHERE run_id = ? AND epoch = 1 "
            "GROUP BY name, step, epoch HAVING COUNT(*) > 1)", (rid,)).fetchone()
        (stored,) = con.execute("SELECT COUNT(*) FROM metric_points WHERE run_id = ? AND epoch = 1",
                                (rid,)).fetchone()
    assert doubled == 0 and stored == sum(len(p) for p in epoch1.values())

    # and it ends exactly where the uninterrupted run ends: metrics, per-epoch history, weights
    assert resumed["result"]["test_metrics"] == plain["result"]["test_metrics"]
    assert resumed["result"]["dev_metrics"] == plain["result"]["dev_metrics"]
    assert resumed["score"] == plain["score"]
    strip = lambda history: [{k: v for k, v in e.items() if k != "seconds"} for e in history]  # noqa: E731
    assert strip(resumed["result"]["epoch_metrics"]) == strip(plain["result"]["epoch_metrics"])
    assert [p["value"] for p in series["step_loss"]] == [p["value"] for p in _series(server, twin)["step_loss"]]
    assert _weights(server, resumed) == _weights(server, plain)


def test_an_unusable_checkpoint_is_dropped_and_the_run_starts_afresh(make_server, tmp_path):
    """A checkpoint another mefts version wrote (or a damaged one) would fail every retry: the job drops it."""
    stale = tmp_path / "data" / "runs" / "1" / "checkpoint"
    stale.mkdir(parents=True)
    (stale / "state.json").write_text('{"version": 99}\n')
    server = make_server(worker=True)
    body = {**RUN, "hyperparameters": {**RUN["hyperparameters"], "epochs": 1, "max_train_samples": 16}}
    rid = server.post("/api/runs", body).json()["id"]
    assert rid == 1
    run = _finished(server, rid)
    assert run["status"] == "succeeded", (run["error"], run["traceback"])
    assert run["attempts"] == 1 and run["resumed_from_epoch"] == 0 and run["artifact_bytes"] > 0
    assert "the checkpoint could not be resumed from" in run["log_tail"] and "version" in run["log_tail"]
    assert not stale.exists()  # the library removes the checkpoint of a finished run
