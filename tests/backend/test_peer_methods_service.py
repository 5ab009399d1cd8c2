"""The paper's other peers (prefix-tuning, (IA)³, LST) through the service: the API validates, labels and queues them
(the job runs `run_training` like `mefts train`; tests/mefts_core/methods/test_peer_reload.py trains and reloads each)."""

from __future__ import annotations

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
