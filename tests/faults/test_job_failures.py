"""A job that raises, and a job that hangs past its timeout, each stored with its reason and traceback.

No mocks: real runs whose own circumstances fail them, run by a real dispatcher in real job processes.
- raises: task "local" whose train file is deleted after the run was accepted (the job validates and reads its data
  itself, so it fails with the file's name);
- hangs: a long run that is frozen with SIGSTOP once it trains, so it neither progresses nor answers; its run-level
  `timeout_s` makes the dispatcher dump its stacks (faulthandler), kill it and store "timed out after N s".
(A FIFO as the data file would block the reader, but the service refuses it: `train_file` must be a regular file.)

The other job faults are tested where the worker is, in tests/backend/test_worker.py (not repeated here):
- a job SIGKILLed mid-run is retried and succeeds: test_sigkilled_job_is_retried_and_succeeds; with its server also
  killed, the run is re-queued when its lease expires: test_job_and_server_killed_run_is_requeued_after_the_lease_expires;
- a job out of memory (MEFTS_JOB_MEMORY_LIMIT_BYTES) is stored as does_not_fit with the memory it reached, not retried:
  test_out_of_memory_is_stored_as_does_not_fit_and_not_retried.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from backend.main import create_app
from backend.settings import Settings
from backend.worker.dispatcher import Dispatcher
from db.session import make_engine, make_sessionmaker
from tests.backend.conftest import FAST_ENV, LONG, TINY, wait_for

from .conftest import TOKEN

CSV = "sentence,label\n" + "".join(f"{w} film {i},{i % 2}\n" for i, w in enumerate(["fine", "dull"] * 16))


@pytest.fixture
def service(tmp_path, monkeypatch):
    """(client, settings): the API in-process (token set) and the settings a dispatcher shares with it."""
    for key, value in {**FAST_ENV, "MEFTS_API_TOKEN": TOKEN}.items():
        monkeypatch.setenv(key, value)  # job processes inherit the environment (the token must not reach them)
    data_dir = tmp_path / "data"
    settings = Settings(data_dir=data_dir, database_url=f"sqlite:///{data_dir / 'mefts.db'}", cpu_slots=2,
                        cpu_count=2, api_token=TOKEN)
    with TestClient(create_app(settings, start_worker=False, frontend_dir=None), base_url="http://127.0.0.1",
                    headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        yield client, settings


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").split("=", 1) for item in raw if b"=" in item)


def test_a_job_that_raises_and_a_job_that_hangs_past_its_timeout(service):
    client, settings = service
    data = Path(settings.data_dir) / "datasets"
    data.mkdir(parents=True)
    for name in ("train.csv", "eval.csv"):
        (data / name).write_text(CSV)
    raising = {**TINY, "task": "local", "task_options": {
        "train_file": str(data / "train.csv"), "eval_file": str(data / "eval.csv"),
        "text_columns": ["sentence"], "label_column": "label"}}
    r = client.post("/api/runs", json=raising)
    assert r.status_code == 201, r.text
    raise_id = r.json()["id"]
    (data / "train.csv").unlink()  # accepted, then the data is gone before the job reads it
    r = client.post("/api/runs", json={**LONG, "timeout_s": 25})
    assert r.status_code == 201 and r.json()["config"]["timeout_s"] == 25.0, r.text
    hang_id = r.json()["id"]

    dispatcher = Dispatcher(settings, make_sessionmaker(make_engine(settings.db_url)))
    dispatcher.start_thread()
    try:
        run = lambda rid: client.get(f"/api/runs/{rid}").json()  # noqa: E731
        training = wait_for(lambda: (lambda x: x if x["status"] == "running" and (x["step"] or 0) >= 1 else None)(
            run(hang_id)), 60, 0.2, "the long run to train")
        pid = training["pid"]
        assert TOKEN not in "".join(_environ(pid).values()), "the job inherited the API token"
        os.kill(pid, signal.SIGSTOP)  # frozen: no progress, no heartbeat, no answer
        done = wait_for(lambda: (lambda x: x if x["status"] not in ("queued", "running") else None)(run(hang_id)),
                        60, 0.2, "the frozen run to time out")
        failed = wait_for(lambda: (lambda x: x if x["status"] not in ("queued", "running") else None)(run(raise_id)),
                          60, 0.2, "the raising run to end")
    finally:
        dispatcher.stop(timeout=30)

    assert failed["status"] == "failed" and failed["attempts"] == 1, failed
    assert "train_file=" in failed["error"] and "file not found" in failed["error"], failed["error"]
    assert "Traceback (most recent call last)" in failed["traceback"] and "ConfigError" in failed["traceback"]

    assert done["status"] == "failed" and done["attempts"] == 1, done
    assert done["error"] == "timed out after 25 s"
    # the traceback is where it hung: faulthandler's dump of the frozen job's threads
    assert "most recent call first" in done["traceback"] and 'File "' in done["traceback"], done["traceback"]


def test_a_job_that_hangs_before_it_reports_its_start_times_out_too(service, tmp_path, monkeypatch):
    """Its run's clock starts at the job's start report; a job stuck before it (here: in its interpreter's start-up,
    a real hang through `sitecustomize`) is held to its provisional deadline: claim + job_start_seconds + limit."""
    client, settings = service
    hang = tmp_path / "hang"
    hang.mkdir()
    (hang / "sitecustomize.py").write_text("import time\ntime.sleep(3600)\n")
    monkeypatch.setenv("PYTHONPATH", str(hang))  # only the job processes started below see it
    settings = settings.model_copy(update={"job_start_seconds": 3.0})
    r = client.post("/api/runs", json={**TINY, "timeout_s": 2})
    assert r.status_code == 201, r.text
    run_id = r.json()["id"]

    dispatcher = Dispatcher(settings, make_sessionmaker(make_engine(settings.db_url)))
    dispatcher.start_thread()
    try:
        run = lambda: client.get(f"/api/runs/{run_id}").json()  # noqa: E731
        claimed = wait_for(lambda: (lambda x: x if x["status"] == "running" and x["pid"] else None)(run()), 30, 0.1,
                           "the run to be claimed")
        assert claimed["deadline_at"] is not None and claimed["versions"] is None, claimed  # provisional: no report
        done = wait_for(lambda: (lambda x: x if x["status"] not in ("queued", "running") else None)(run()), 60, 0.2,
                        "the hung job's run to time out")
    finally:
        dispatcher.stop(timeout=30)
    assert done["status"] == "failed" and done["attempts"] == 1 and done["error"] == "timed out after 2 s", done
    assert done["versions"] is None  # it never reported its start
