"""The worker for real: a `mefts serve` subprocess, job subprocesses running mefts_core.training.trainer on tiny-bert."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import threading
import time

import httpx

from .conftest import LONG, TINY, pid_alive, wait_for

MEDIUM = {**TINY, "hyperparameters": {**TINY["hyperparameters"], "epochs": 6, "max_train_samples": 128,
                                      "patience": 1000}}


def _norm(value):
    """CSV text and JSON values compared on equal terms."""
    if value is None or value == "":
        return ""
    if isinstance(value, bool) or value in ("True", "False"):
        return str(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def _running_with_progress(server, run_id: int, min_step: int = 1):
    run = server.run(run_id)
    if run["status"] == "running" and run["pid"] and (run["step"] or 0) >= min_step:
        return run
    assert run["status"] in ("queued", "running"), run
    return None


def _collect_events(url: str, events: list[dict], stop: threading.Event) -> None:
    """Read the SSE stream into `events` until a run succeeds or `stop` is set."""
    with httpx.Client(base_url=url, timeout=httpx.Timeout(10, read=120)) as c, c.stream("GET", "/api/events") as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
                if events[-1]["status"] == "succeeded":
                    return
            if stop.is_set():
                return


def test_tiny_run_queued_running_succeeded_with_metrics_memory_and_exports(make_server):
    server = make_server()
    events: list[dict] = []
    stop = threading.Event()
    reader = threading.Thread(target=_collect_events, args=(server.url, events, stop), daemon=True)
    reader.start()
    time.sleep(0.5)  # the stream is open before the run exists
    r = server.http.post("/api/runs", json=TINY)
    assert r.status_code == 201
    rid = r.json()["id"]
    seen = [r.json()["status"]]
    deadline = time.monotonic() + 90
    while seen[-1] not in ("succeeded", "failed", "does_not_fit", "cancelled") and time.monotonic() < deadline:
        status = server.run(rid)["status"]
        if status != seen[-1]:
            seen.append(status)
        time.sleep(0.05)
    run = server.run(rid)
    assert seen == ["queued", "running", "succeeded"], (seen, run["error"], run["traceback"])
    assert run["attempts"] == 1 and run["progress"] == 1.0 and run["device_used"] == "cpu"
    assert run["score"] is not None and run["main_metric"] == "accuracy"
    assert run["versions"]["torch"] and run["seed"] == 42
    assert "git_revision" in run  # None outside a git checkout
    mem = run["memory"]
    assert mem["stored_activation_bytes"] > 0 and mem["peak_bytes"] > mem["stored_activation_bytes"]
    assert mem["batch_size"] == 8 and mem["seq_len"] == 32 and mem["process_peak_rss_bytes"] > 0
    series = server.http.get(f"/api/runs/{rid}/metrics").json()["series"]
    assert len(series["step_loss"]) == run["total_steps"] == 4
    assert [p["epoch"] for p in series["dev_accuracy"]] == [1]
    assert "epoch 1" in run["log_tail"]

    # the live stream told the same story (states between two polls of the stream may merge into one event)
    reader.join(15)
    stop.set()
    assert [e["id"] for e in events] == [rid] * len(events)
    statuses = [e["status"] for e in events]
    assert "running" in statuses and statuses[-1] == "succeeded", statuses
    progress = [e["progress"] for e in events]
    assert progress == sorted(progress) and progress[-1] == 1.0

    # every export carries the run, its final metrics and its memory
    runs_csv = list(csv.DictReader(io.StringIO(server.http.get("/api/runs.csv").text)))
    runs_json = server.http.get("/api/runs.json").json()
    assert len(runs_csv) == len(runs_json) == 1
    assert list(runs_csv[0]) == list(runs_json[0])  # same columns, same order
    assert {k: _norm(v) for k, v in runs_csv[0].items()} == {k: _norm(v) for k, v in runs_json[0].items()}
    row = runs_json[0]
    assert row["id"] == rid and row["status"] == "succeeded" and row["duration_seconds"] > 0
    assert row["test_accuracy"] == run["score"] and row["memory.peak_bytes"] == mem["peak_bytes"]
    assert row["max_train_samples"] == 32 and row["method_options.gradient_checkpointing"] is False

    results_csv = list(csv.DictReader(io.StringIO(server.http.get("/api/results.csv").text)))
    results_json = server.http.get("/api/results.json").json()
    assert {k: _norm(v) for k, v in results_csv[0].items()} == {k: _norm(v) for k, v in results_json[0].items()}
    assert results_json[0]["peak_bytes_mean"] == mem["peak_bytes"] and results_json[0]["n"] == 1
    assert results_json[0]["score_mean"] == run["score"]
    md, tex = server.http.get("/api/results.md").text, server.http.get("/api/results.tex").text
    assert "| sst2 | packaged | tiny-bert | full | 1 |" in md and "sst2 & packaged & tiny-bert & full & 1" in tex
    assert run["data_source"] == row["data_source"] == results_json[0]["data_source"] == "packaged"
    assert run["result"]["data_source"] == "packaged"


def test_cancel_kills_the_running_job(make_server):
    server = make_server()
    rid = server.http.post("/api/runs", json=LONG).json()["id"]
    run = wait_for(lambda: _running_with_progress(server, rid), 60, 0.1, "the run to make progress")
    pid = run["pid"]
    assert pid_alive(pid)
    r = server.http.post(f"/api/runs/{rid}/cancel")
    assert r.status_code == 200 and r.json()["cancel_requested"]
    run = server.wait_status(rid, {"cancelled", "succeeded", "failed"}, 30)
    assert run["status"] == "cancelled" and run["attempts"] == 1
    wait_for(lambda: not pid_alive(pid), 10, 0.1, f"pid {pid} to be gone")
    # the slot is free again
    wait_for(lambda: server.http.get("/api/system").json()["workers"][0]["busy"] == 0, 10, 0.2, "a free slot")


def test_sigkilled_job_is_retried_and_succeeds(make_server):
    server = make_server()
    rid = server.http.post("/api/runs", json=MEDIUM).json()["id"]
    run = wait_for(lambda: _running_with_progress(server, rid), 60, 0.05, "the run to make progress")
    os.kill(run["pid"], signal.SIGKILL)
    run = server.wait_status(rid, {"succeeded", "failed", "cancelled"}, 120)
    assert run["status"] == "succeeded", run["error"]
    assert run["attempts"] == 2
    # attempt 1's points are kept apart from attempt 2's
    first = server.http.get(f"/api/runs/{rid}/metrics", params={"attempt": 1}).json()["series"]
    assert 1 <= len(first["step_loss"]) < run["total_steps"]
    assert len(server.http.get(f"/api/runs/{rid}/metrics").json()["series"]["step_loss"]) == run["total_steps"]


def test_server_killed_mid_run_loses_nothing(make_server):
    server = make_server()
    rid = server.http.post("/api/runs", json=MEDIUM).json()["id"]
    queued = server.http.post("/api/runs", json=TINY).json()
    run = wait_for(lambda: _running_with_progress(server, rid, 2), 60, 0.05, "the run to make progress")
    steps_before = run["step"]
    server.kill()  # SIGKILL: no shutdown code runs

    server = make_server()  # a restart on the same data directory
    after = server.run(queued["id"])
    assert after["config"] == queued["config"] and after["status"] in ("queued", "running")
    run = server.wait_status(rid, {"succeeded", "failed"}, 120)
    assert run["status"] == "succeeded", run["error"]
    assert run["attempts"] == 1  # the job outlived the server, kept its lease alive and finished the run
    assert run["total_steps"] > steps_before
    series = server.http.get(f"/api/runs/{rid}/metrics").json()["series"]
    assert len(series["step_loss"]) == run["total_steps"]  # nothing written before (or after) the kill is lost
    assert run["memory"]["peak_bytes"] > 0


def test_job_and_server_killed_run_is_requeued_after_the_lease_expires(make_server):
    server = make_server()
    rid = server.http.post("/api/runs", json=MEDIUM).json()["id"]
    run = wait_for(lambda: _running_with_progress(server, rid), 60, 0.05, "the run to make progress")
    server.kill()
    os.killpg(run["pid"], signal.SIGKILL)  # the machine "lost" the job too
    wait_for(lambda: not pid_alive(run["pid"]), 10, 0.1, "the job to die")

    server = make_server()
    run = server.wait_status(rid, {"succeeded", "failed"}, 120)
    assert run["status"] == "succeeded", run["error"]
    assert run["attempts"] == 2
    first = server.http.get(f"/api/runs/{rid}/metrics", params={"attempt": 1}).json()["series"]
    assert len(first["step_loss"]) >= 1


def test_out_of_memory_is_stored_as_does_not_fit_and_not_retried(make_server):
    # Jobs may add 400 MB of address space: bert-base's weights and AdamW state need far more.
    server = make_server({"MEFTS_JOB_MEMORY_LIMIT_BYTES": str(400 * 2**20)})
    body = {**TINY, "backbone": "bert-base"}
    rid = server.http.post("/api/runs", json=body).json()["id"]
    run = server.wait_status(rid, {"succeeded", "failed", "does_not_fit", "cancelled"}, 90)
    assert run["status"] == "does_not_fit", (run["error"], run["traceback"])
    assert run["error"].startswith("does not fit at batch 8, seq 32"), run["error"]
    assert run["attempts"] == 1
    assert run["result"]["memory_reached_bytes"] > 100 * 2**20
    assert "GiB" in run["error"]


def test_succeeded_run_keeps_its_model_which_downloads_and_reproduces_its_test_metrics(make_server, tmp_path):
    """The artifact end to end: trained by a job, packed, downloaded through the API, checked against the run's
    sha256, extracted, loaded with mefts_core's loader and scored again on the run's own test split."""
    import hashlib
    import tarfile

    from mefts_core import load_finetuned
    from mefts_core.training.predict import predict

    server = make_server()
    body = {**TINY, "method": "lora", "method_options": {"r": 4}}
    rid = server.http.post("/api/runs", json=body).json()["id"]
    run = server.wait_status(rid, {"succeeded", "failed", "cancelled", "does_not_fit"}, 120)
    assert run["status"] == "succeeded", (run["error"], run["traceback"])
    assert run["resumed_from_epoch"] == 0 and run["result"]["resumed_from_epoch"] == 0
    assert run["artifact_url"] == f"/api/runs/{rid}/artifact" and run["artifact_bytes"] > 0
    assert run["result"]["artifact"]["path"] == f"runs/{rid}/model"  # no server path in the answer
    folder = server.data_dir / "runs" / str(rid)
    assert sorted(p.name for p in folder.iterdir()) == ["model", "model.tar.gz"]  # the checkpoint went at the end

    r = server.http.get(run["artifact_url"])
    assert r.status_code == 200 and r.headers["content-type"] == "application/gzip"
    assert r.headers["content-disposition"] == f'attachment; filename="run-{rid}-lora(r=4).tar.gz"'
    assert len(r.content) == run["artifact_bytes"]
    assert hashlib.sha256(r.content).hexdigest() == run["artifact_sha256"]
    archive = tmp_path / "model.tar.gz"
    archive.write_bytes(r.content)
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "out", filter="data")
    (extracted,) = (tmp_path / "out").iterdir()
    assert extracted.name == f"run-{rid}-lora(r=4)"
    assert {"mefts.json", "model.safetensors"} <= {p.name for p in extracted.iterdir()}

    model, tokenizer = load_finetuned(extracted)
    assert not model.training
    again = predict(extracted, split="test")
    assert again.metrics == run["result"]["test_metrics"]  # the same weights score the same split the same way
    assert len(again.rows) == run["result"]["split_sizes"]["test"]
    import torch

    texts = [row["sentence"] for row in again.rows[:4]]
    enc = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=32)
    with torch.no_grad():
        logits = model(**enc).logits
    names = run["result"]["label_names"]
    assert [names[i] for i in logits.argmax(-1).tolist()] == [row["prediction"] for row in again.rows[:4]]

    disk = server.http.get("/api/system").json()["runs_disk"]
    assert disk["runs"][0]["run_id"] == rid and disk["total_bytes"] >= 2 * run["artifact_bytes"] > 0
