"""The paper's other peers (prefix-tuning, (IA)³, LST) through the service: the API validates and queues them, and a
real worker's job subprocess trains LST (the one written here, with its own forward) on tiny-bert; its stored model
scores its test split again as the run did."""

from __future__ import annotations

import pytest

from .conftest import TINY


def test_the_api_queues_prefix_ia3_and_lst_and_names_their_options(client):
    for method, options, label in [("prefix", {"num_virtual_tokens": 4}, "prefix(num_virtual_tokens=4)"),
                                   ("ia3", {}, "ia3"), ("lst", {"r": 4}, "lst(r=4)")]:
        r = client.post("/api/runs", json={**TINY, "method": method, "method_options": options})
        assert r.status_code == 201, r.text
        assert r.json()["method_label"] == label and r.json()["status"] == "queued"
    bad = client.post("/api/runs", json={**TINY, "method": "lst", "method_options": {"init": "magic"}})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"][-1] == "init"
    assert {m for m in ("prefix", "ia3", "lst")} <= set(client.get("/api/catalog").json()["methods"])


@pytest.mark.slow  # a job subprocess: ~60 s on a loaded 2-core machine
def test_lst_trains_through_a_worker_and_its_model_reloads(make_server):
    from mefts_core.training.predict import predict

    server = make_server()
    hp = {**TINY["hyperparameters"], "measure_memory": False, "check_gradients": False}  # measured in the library
    body = {**TINY, "method": "lst", "method_options": {"r": 4}, "hyperparameters": hp}
    rid = server.http.post("/api/runs", json=body).json()["id"]
    run = server.wait_status(rid, {"succeeded", "failed", "cancelled", "does_not_fit"}, 180)
    assert run["status"] == "succeeded", (run["error"], run["traceback"])
    result = run["result"]
    assert 0 < result["trainable_params"] < result["total_params"] / 2
    again = predict(server.data_dir / "runs" / str(rid) / "model", split="test")
    assert again.metrics == result["test_metrics"]  # the side network reloads: the same scores on the same split
