"""Bad input gets a 4xx that names the problem, never a 5xx, and nothing is stored.

Also covered elsewhere: absurd sweep grids (tests/backend/test_api.py::test_sweep_queues_the_grid_and_caps_its_size,
2,400 runs > MEFTS_MAX_GRID -> 422) and every field of a run (test_bad_run_is_422_naming_field_and_value...).
schemathesis fuzzes the whole OpenAPI surface in test_schemathesis.py.
"""

from __future__ import annotations

import os

import pytest

from .conftest import TINY, total_runs

CSV = "sentence,label\na fine film,1\na dull film,0\ngood,1\nbad,0\n"


def _local(**files) -> dict:
    return {**TINY, "task": "local",
            "task_options": {"text_columns": ["sentence"], "label_column": "label", **files}}


@pytest.fixture
def outside(tmp_path):
    """A folder next to the data directory (not inside it) with a model folder and CSV files."""
    path = tmp_path / "outside"
    (path / "model").mkdir(parents=True)
    (path / "model" / "config.json").write_text("{}")
    for name in ("train.csv", "eval.csv"):
        (path / name).write_text(CSV)
    return path


@pytest.fixture
def inside(data_dir):
    path = data_dir / "datasets"
    path.mkdir()
    for name in ("train.csv", "eval.csv"):
        (path / name).write_text(CSV)
    return path


def test_paths_outside_the_allowed_roots_are_422_naming_the_field(make_client, data_dir, inside, outside):
    client = make_client()
    (data_dir / "escape").symlink_to(outside)  # a symlink inside the root that leads out of it
    (inside / "link.csv").symlink_to(outside / "train.csv")
    ok = {"eval_file": str(inside / "eval.csv")}
    cases = [
        ({"backbone": "/etc"}, ["backbone"]),
        ({"backbone": str(outside / "model")}, ["backbone"]),
        ({"backbone": f"{data_dir}/../outside/model"}, ["backbone"]),
        ({"backbone": str(data_dir / "escape" / "model")}, ["backbone"]),
        ({"backbone": "../../../../../../etc"}, ["backbone"]),
        (_local(train_file="/etc/passwd", **ok), ["task_options", "train_file"]),
        (_local(train_file=f"{inside}/../../outside/train.csv", **ok), ["task_options", "train_file"]),
        (_local(train_file=str(inside / "link.csv"), **ok), ["task_options", "train_file"]),
        (_local(train_file=str(data_dir / "escape" / "train.csv"), **ok), ["task_options", "train_file"]),
        (_local(train_file=str(inside / "train.csv"), eval_file=str(outside / "eval.csv")),
         ["task_options", "eval_file"]),
        (_local(train_file=str(inside / "train.csv"), test_file="/proc/self/environ", **ok),
         ["task_options", "test_file"]),
        ({"task_options": {"data_dir": "/"}}, ["task_options", "data_dir"]),
        ({"task_options": {"data_dir": str(data_dir / "escape")}}, ["task_options", "data_dir"]),
        ({"task_options": {"data_dir": "x" * 5000}}, ["task_options", "data_dir"]),
    ]
    for changes, loc in cases:
        r = client.post("/api/runs", json={**TINY, **changes})
        assert r.status_code == 422, (changes, r.status_code, r.text)
        detail = r.json()["detail"][0]
        assert detail["loc"] == ["body", *loc], (changes, detail)
        if "outside the allowed folders" not in detail["msg"]:
            assert "not found" in detail["msg"] or "not a usable path" in detail["msg"], detail
    # a sweep and a clone go through the same check
    r = client.post("/api/sweeps", json={"methods": ["full"], "backbones": [str(outside / "model")],
                                         "tasks": ["sst2"]})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "backbones"], r.text
    assert total_runs(client) == 0

    good = client.post("/api/runs", json=_local(train_file=str(data_dir / "datasets" / ".." / "datasets" /
                                                                    "train.csv"), **ok))
    assert good.status_code == 201, good.text
    stored = good.json()["config"]["task_options"]
    assert stored["train_file"] == os.path.realpath(inside / "train.csv")  # the job reads the path that was checked
    r = client.post(f"/api/runs/{good.json()['id']}/clone",
                    json={"task_options": {"train_file": str(outside / "train.csv")}})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "task_options", "train_file"], r.text
    assert total_runs(client) == 1


def test_allowed_roots_can_be_widened(make_client, outside):
    client = make_client(allowed_roots=str(outside))
    r = client.post("/api/runs", json=_local(train_file=str(outside / "train.csv"),
                                             eval_file=str(outside / "eval.csv")))
    assert r.status_code == 201, r.text
    r = client.post("/api/runs", json={**TINY, "backbone": "/etc"})
    assert r.status_code == 422 and "outside the allowed folders" in r.text


def test_oversized_bodies_get_413_with_the_limit(make_client):
    client = make_client(max_body_bytes=64 * 1024)
    big = {**TINY, "name": "x", "task_options": {"pad": "y" * 100_000}}
    r = client.post("/api/runs", json=big)
    assert r.status_code == 413, r.text
    assert "limit is 65536 bytes" in r.json()["detail"] and "MEFTS_MAX_BODY_BYTES" in r.json()["detail"]

    def chunks():  # no Content-Length: counted as it arrives
        yield b'{"backbone": "tiny-bert", "method": "full", "task": "sst2", "name": "'
        for _ in range(20):
            yield b"z" * 8192
        yield b'"}'

    r = client.post("/api/runs", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413, r.text
    r = client.post("/api/sweeps", content=b"[" + b"1," * 40_000 + b"1]", headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert total_runs(client) == 0
    assert client.post("/api/runs", json=TINY).status_code == 201  # normal bodies pass


@pytest.mark.parametrize("raw, loc", [
    (b'{"backbone": "tiny-bert", "method": "full", "task": "sst2", "hyperparameters": {"learning_rate": NaN}}', []),
    (b'{"backbone": "tiny-bert", "method": "full", "task": "sst2", "hyperparameters": {"weight_decay": Infinity}}',
     []),
    (b'{"backbone": "tiny-bert", "method": "meft1", "task": "sst2", "method_options": {"lam": -Infinity}}', []),
    (b'{"backbone": "tiny-bert", "method": "full", "task": "sst2", "name": "a\\ud800b"}', ["name"]),
    (b'{"backbone": "tiny-bert", "method": "full", "task": "sst2", "task_options": {"\\udfff": 1}}',
     ["task_options", "?"]),
])
def test_json_that_cannot_be_stored_is_422(make_client, raw, loc):
    client = make_client()
    r = client.post("/api/runs", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["body", *loc]
    ok = client.post("/api/runs", json={**TINY, "name": "\U0001f600 surrogate pairs are fine"})
    assert ok.status_code == 201 and ok.json()["name"].startswith("\U0001f600")
    assert total_runs(client) == 1


def test_out_of_range_integers_are_422_not_500(make_client):
    client = make_client()
    huge = 10**23
    for path in (f"/api/runs/{huge}", f"/api/runs/{huge}/metrics", f"/api/runs/{huge}/log",
                 f"/api/sweeps/{huge}", f"/api/runs?sweep={huge}", f"/api/runs?offset={huge}",
                 f"/api/sweeps?offset={huge}&limit={huge}", f"/api/results?sweep={huge}",
                 f"/api/runs.csv?sweep={huge}", f"/api/events?run={huge}"):
        assert client.get(path).status_code == 422, path
    for path in (f"/api/runs/{huge}/cancel", f"/api/runs/{huge}/retry", f"/api/runs/{huge}/clone",
                 f"/api/sweeps/{huge}/cancel"):
        assert client.post(path).status_code == 422, path
    for changes in ({"priority": huge}, {"seed": huge}, {"hyperparameters": {"batch_size": huge}},
                    {"hyperparameters": {"epochs": 2**40}}, {"hyperparameters": {"max_seq_len": 2**31}}):
        r = client.post("/api/runs", json={**TINY, **changes})
        assert r.status_code == 422, (changes, r.text)
    r = client.post("/api/sweeps", json={"methods": ["full"], "backbones": ["tiny-bert"], "tasks": ["sst2"],
                                         "seeds": [huge]})
    assert r.status_code == 422
    assert total_runs(client) == 0


def test_an_astronomical_grid_is_refused_before_it_is_enumerated(make_client):
    client = make_client()
    axes = {name: [1e-4 + i * 1e-6 for i in range(100)] for name in ("learning_rate", "weight_decay", "warmup_ratio",
                                                                    "grad_clip", "seed_offset", "x")}
    r = client.post("/api/sweeps", json={"methods": ["full"], "backbones": ["tiny-bert"], "tasks": ["sst2"],
                                         "hyperparameters": axes})
    assert r.status_code == 422 and "1000000000000" in r.text and "exceeds the limit" in r.text
