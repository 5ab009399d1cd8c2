"""The first start: an empty database offers the shipped benchmark rows and a demo sweep (/api/start), and `mefts
serve --demo` adds both; each only once, however often it is asked."""

from __future__ import annotations

import json

from backend.cli import build_parser, first_start
from backend.firststart import DEMO_NAME, DEMO_SWEEP, SHIPPED_RESULTS


def _shipped_ok_rows() -> int:
    """Rows that ran in the shipped bench-row files (lists of rows with a peak; not timings or fits rows)."""
    n = 0
    for path in SHIPPED_RESULTS.glob("*.json"):
        data = json.loads(path.read_text())
        if isinstance(data, list) and data and all("peak_bytes" in r for r in data):
            n += sum(r.get("status") in (None, "", "ok") for r in data)
    return n


def test_start_actions_import_the_shipped_rows_and_queue_the_demo_once(client):
    shipped = _shipped_ok_rows()
    assert shipped >= 20
    state = client.get("/api/start").json()
    assert state == {"runs": 0, "bench_rows": 0, "shipped_files": state["shipped_files"], "shipped_rows": shipped,
                     "demo_sweep_id": None}
    assert "h100-bert-base-seq512.json" in state["shipped_files"]
    assert "h100-step-time-l12.json" not in state["shipped_files"]  # timings, not bench rows

    first = client.post("/api/start/import").json()
    assert first["stored"] == shipped and first["already"] == 0
    again = client.post("/api/start/import").json()
    assert again["stored"] == 0 and again["already"] == shipped
    rows = client.get("/api/bench").json()
    assert rows["total"] == shipped and {r["layers"] for r in rows["rows"]} >= {12, 24, 48}

    demo = client.post("/api/start/demo").json()
    assert demo["created"] and len(demo["run_ids"]) == len(DEMO_SWEEP["methods"])
    assert client.post("/api/start/demo").json() == {**demo, "created": False}
    runs = client.get("/api/runs", params={"limit": 50}).json()
    assert runs["total"] == len(DEMO_SWEEP["methods"])
    assert {r["method"] for r in runs["items"]} == set(DEMO_SWEEP["methods"])
    assert all(r["backbone"] == "tiny-bert" and r["status"] == "queued" for r in runs["items"])
    assert client.get("/api/start").json() == {**state, "runs": len(DEMO_SWEEP["methods"]), "bench_rows": shipped,
                                               "demo_sweep_id": demo["sweep_id"]}


def test_serve_demo_twice_adds_the_rows_and_the_sweep_once(client, settings):
    """What `mefts serve --demo` runs before it serves (backend.cli.first_start), twice on one database."""
    counts = []
    for _ in range(2):
        first_start(settings)
        counts.append((client.get("/api/bench").json()["total"], client.get("/api/runs").json()["total"],
                       [s["name"] for s in client.get("/api/sweeps").json()]))
    assert counts == [(_shipped_ok_rows(), len(DEMO_SWEEP["methods"]), [DEMO_NAME])] * 2
    assert build_parser().parse_args(["serve", "--demo"]).demo


def test_a_row_is_recognised_as_stored_by_its_stored_columns(client, settings, tmp_path):
    """A row stored once is known again by what the table holds: empty fields stored as NULL, numbers given as
    text stored as numbers, are not taken for a new row on the next import."""
    from backend.firststart import import_shipped
    from db.session import make_engine, make_sessionmaker, session_scope

    row = {"backbone": "tiny-bert", "method": "lora", "layers": "4", "seq_len": 64, "batch_size": 8.0, "dtype": "",
           "device": "", "status": "ok", "peak_bytes": "123456"}
    (tmp_path / "rows.json").write_text(json.dumps([row]))
    factory = make_sessionmaker(make_engine(settings.db_url))
    with session_scope(factory) as s:
        assert import_shipped(s, tmp_path)["stored"] == 1
    with session_scope(factory) as s:
        assert import_shipped(s, tmp_path) == {"stored": 0, "already": 1, "files": ["rows.json"]}
    assert client.get("/api/bench").json()["total"] == 1
