"""The dashboard in a real browser against a real server and worker: submit from the form, watch the run finish
live, find it on the scatter, download tables, see API errors next to their fields, and no console errors.

The tests share one page (module scope) and run in file order; each also works alone (`-k`), since the run it
needs comes from the `form_run` fixture.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from pathlib import Path

import pytest

from tests.e2e.support import GiB, assert_fits_window

sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect

pytestmark = pytest.mark.browser

MiB = 2**20
TINY = {"hp-epochs": "1", "hp-batch_size": "8", "hp-max_seq_len": "32", "hp-max_train_samples": "64",
        "hp-max_eval_samples": "32"}


def graph(page, div_id: str) -> dict:
    """The Plotly figure drawn in a div: its traces and axes, as Plotly holds them."""
    return page.evaluate("""(id) => { const d = document.getElementById(id);
        return { data: (d.data || []).map(t => ({ name: t.name, x: t.x, y: t.y, customdata: t.customdata || null,
                 meta: t.meta || null, type: t.type })),
                 layout: { xaxis: { type: d.layout.xaxis.type, title: (d.layout.xaxis.title || {}).text || '' } } }; }""", div_id)


def pareto(points: list[tuple[float, float]]) -> set[tuple[float, float]]:
    """Points no other point beats on both lower memory and higher score."""
    return {p for p in points if not any(q[0] <= p[0] and q[1] >= p[1] and q != p for q in points)}


def wait_scatter(page) -> None:
    page.wait_for_function("() => { const d = document.getElementById('scatter');"
                           " return d && d.data && d.data.length && Number(d.dataset.rendered) > 0; }")


@pytest.fixture(scope="module")
def form_run(page, server) -> int:
    """A tiny-bert MEFT run submitted from the form; its id."""
    page.goto(server.url + "/#/submit")
    page.select_option("#f-backbone", "tiny-bert")
    page.select_option("#f-method", "meft1")
    page.select_option("#f-task", "sst2")
    for field, value in TINY.items():
        page.fill(f"#{field}", value)
    page.click("#submit-btn")
    expect(page.locator("#flash")).to_contain_text("Queued run #")
    return int(re.search(r"Queued run #(\d+)", page.inner_text("#flash")).group(1))


@pytest.fixture(scope="module")
def finished_run(page, server, form_run) -> dict:
    """The form's run once it succeeded (waited for in the runs table, without reloading the page)."""
    page.goto(server.url + "/#/runs")
    page.evaluate("""(id) => { window.__noReload = true; window.__seen = []; window.__progress = false;
        window.__sample = () => {
            const tr = document.querySelector(`#runs-table tr[data-id="${id}"]`);
            if (!tr) return;
            if (window.__seen[window.__seen.length - 1] !== tr.dataset.status) window.__seen.push(tr.dataset.status);
            if (tr.querySelector('progress')) window.__progress = true;
        };
        window.__watch = setInterval(window.__sample, 50); }""", form_run)
    badge = page.locator(f'#runs-table tr[data-id="{form_run}"] .badge')
    expect(badge).to_have_text("succeeded", timeout=150_000)
    watch = page.evaluate("() => { clearInterval(window.__watch); window.__sample();"
                          " return { noReload: window.__noReload === true, seen: window.__seen, progress: window.__progress }; }")
    return {"id": form_run, "watch": watch, "run": server.get(f"/api/runs/{form_run}")}


# ------------------------------------------------------------------------------------------------ submit and live
def test_submit_run_from_form(page, server, form_run):
    run = server.get(f"/api/runs/{form_run}")
    cfg = run["config"]
    assert (cfg["backbone"], cfg["method"], cfg["task"]) == ("tiny-bert", "meft1", "sst2")
    assert (cfg["epochs"], cfg["batch_size"], cfg["max_seq_len"]) == (1, 8, 32)
    assert (cfg["max_train_samples"], cfg["max_eval_samples"]) == (64, 32)
    assert run["method_label"] == "meft1"  # options left at their defaults are not sent
    expect(page.locator(f'#runs-table tr[data-id="{form_run}"]')).to_be_visible()


def test_run_reaches_succeeded_live(finished_run):
    watch = finished_run["watch"]
    assert watch["noReload"], "the page was reloaded"
    assert watch["seen"][-1] == "succeeded"
    assert "running" in watch["seen"], f"never showed the run running: {watch['seen']}"
    assert watch["progress"], "no progress bar while running"
    assert finished_run["run"]["status"] == "succeeded"


def test_runs_row_shows_result(page, finished_run):
    row = page.locator(f'#runs-table tr[data-id="{finished_run["id"]}"]')
    run = finished_run["run"]
    expect(row.locator('td[data-col="score"]')).not_to_be_empty()
    shown = float(row.locator('td[data-col="score"]').inner_text())  # one decimal, rounded half up (JS toFixed)
    assert shown == pytest.approx(100 * run["score"], abs=0.05 + 1e-9)
    cell = row.locator('td[data-col="stored_activation_bytes"]')
    expect(cell).to_have_text(re.compile(r"^[\d.]+ [KMG]iB$"))  # filled in once the finished run's page reloads
    value, unit = cell.inner_text().split()
    scale = {"KiB": 1024, "MiB": MiB, "GiB": GiB}[unit]
    assert float(value) * scale == pytest.approx(run["stored_activation_bytes"], abs=0.051 * scale)


# ------------------------------------------------------------------------------------------------ compare
def test_scatter_shows_the_run_and_pareto_front(page, server, finished_run):
    page.goto(server.url + "/#/compare?task=sst2&mem=stored&select=best&front=all")  # "mem": links from before x/y
    wait_scatter(page)
    fig = graph(page, "scatter")
    scale = GiB if "GiB" in fig["layout"]["xaxis"]["title"] else MiB
    points = {}  # run ids -> (x, y)
    for t in fig["data"]:
        if (t["meta"] or {}).get("kind") == "results":
            for x, y, cd in zip(t["x"], t["y"], t["customdata"]):
                points[cd[0]] = (x, y)
    rows = [r for r in server.get("/api/results", select="best")["rows"] if r["task"] == "sst2"]
    mine = next(r for r in rows if finished_run["id"] in json.loads(r["run_ids"]))
    x, y = points[",".join(map(str, json.loads(mine["run_ids"])))]
    assert x == pytest.approx(mine["stored_activation_bytes_mean"] / scale)
    assert y == pytest.approx(100 * mine["score_mean"])
    assert len(points) == len(rows)

    front = next(t for t in fig["data"] if (t["meta"] or {}).get("kind") == "pareto")
    expected = pareto([(r["stored_activation_bytes_mean"] / scale, 100 * r["score_mean"]) for r in rows])
    drawn = set(zip(front["x"], front["y"]))
    assert {(round(a, 9), round(b, 9)) for a, b in drawn} == {(round(a, 9), round(b, 9)) for a, b in expected}


def test_memory_axis_choice_and_log_scale(page, server, finished_run):
    page.goto(server.url + "/#/compare?task=sst2&mem=stored")
    wait_scatter(page)
    page.select_option("#cmp-x", "peak")
    page.check("#cmp-log")
    page.wait_for_function("() => document.getElementById('scatter').layout.xaxis.type === 'log'")
    fig = graph(page, "scatter")
    assert fig["layout"]["xaxis"]["title"].startswith("Peak memory")
    scale = GiB if "GiB" in fig["layout"]["xaxis"]["title"] else MiB
    mine = next(r for r in server.get("/api/results")["rows"] if finished_run["id"] in json.loads(r["run_ids"]))
    xs = [x for t in fig["data"] if (t["meta"] or {}).get("kind") == "results"
          for x, cd in zip(t["x"], t["customdata"]) if str(finished_run["id"]) in cd[0].split(",")]
    assert xs == [pytest.approx(mine["peak_bytes_mean"] / scale)]
    assert "log=1" in page.url and "x=peak" in page.url  # the view is in the URL


def test_any_metric_on_any_axis_with_a_front_per_backbone(page, server, finished_run):
    """x = step time, y = score, colour = peak: the fronts the page draws (one per backbone) are the ones recomputed
    here from GET /api/runs (mean over seeds per method; lower step time and higher score are better)."""
    page.goto(server.url + "/#/compare?task=sst2&select=best")
    wait_scatter(page)
    assert page.input_value("#cmp-x") == "peak_act" and page.input_value("#cmp-y") == "score"  # the defaults
    page.select_option("#cmp-x", "step")
    page.select_option("#cmp-color", "peak")
    page.wait_for_function("() => location.hash.includes('color=peak')"
                           " && document.getElementById('scatter').layout.xaxis.title.text.startsWith('Step time')")
    assert "x=step" in page.url and "y=score" in page.url
    drawn = page.evaluate("""() => document.getElementById('scatter').data.filter((t) => t.meta && t.meta.kind === 'pareto')
        .map((t) => ({ backbone: t.meta.backbone, runs: t.customdata, x: t.x, y: t.y }))""")
    colours = page.evaluate("""() => Object.fromEntries(document.getElementById('scatter').data
        .filter((t) => t.meta && t.meta.kind === 'results')
        .flatMap((t) => t.customdata.map((cd, i) => [cd[0], t.marker.color[i]])))""")
    runs = [r for r in server.get("/api/runs", status="succeeded", task="sst2", limit=1000)["items"]]
    for backbone in ("bert-base", "roberta-large"):  # seeded: one configuration per method, three seeds each
        groups: dict[str, list[dict]] = {}
        for r in runs:
            if r["backbone"] == backbone:
                groups.setdefault(r["method_label"], []).append(r)
        points = {}
        for members in groups.values():
            ids = ",".join(str(r["id"]) for r in sorted(members, key=lambda r: r["seed"]))
            mean = {k: sum(r[k] for r in members) / len(members) for k in ("step_seconds", "score", "peak_bytes")}
            points[ids] = (mean["step_seconds"], mean["score"])  # pareto(): lower x, higher y
            assert colours[ids] == pytest.approx(mean["peak_bytes"])
        expected = pareto(list(points.values()))
        front = next(f for f in drawn if f["backbone"] == backbone)
        assert {ids for ids, p in points.items() if p in expected} == set(front["runs"])
        assert [x for x in front["x"]] == pytest.approx(sorted(points[i][0] for i in front["runs"]))
    assert page.get_attribute("#scatter", "data-fronts") is not None
    # one front over all backbones on request
    page.check("#cmp-front-all")
    page.wait_for_function("() => document.getElementById('scatter').data.filter((t) => t.meta && t.meta.kind === 'pareto')"
                           ".every((t) => t.meta.backbone === null)")
    assert "front=all" in page.url


def test_pivot_marks_best_cell_and_savings(page, server, finished_run):
    page.goto(server.url + "/#/compare?task=sst2&mem=stored&select=best")
    wait_scatter(page)
    rows = [r for r in server.get("/api/results")["rows"] if r["task"] == "sst2"]
    backbones = sorted({r["backbone"] for r in rows})
    headers = page.locator("#pivot thead th").all_inner_texts()
    assert headers == ["Method", *backbones]
    for col, backbone in enumerate(backbones, start=2):
        best = max(r["score_mean"] for r in rows if r["backbone"] == backbone)
        cells = page.locator(f"#pivot tbody td:nth-child({col}).best")
        assert cells.count() >= 1
        for text in cells.locator(".score").all_inner_texts():
            assert float(text.split()[0]) == pytest.approx(100 * best, abs=0.05 + 1e-9)
    meft = next(r for r in rows if r["backbone"] == "roberta-large" and r["method"] == "meft1")
    cell = page.locator("#pivot tbody tr", has=page.locator("th", has_text=re.compile("^meft1$"))).locator(
        f"td:nth-child({backbones.index('roberta-large') + 2})")
    expect(cell.locator(".saving")).to_contain_text(f"−{round(100 * meft['activation_saving_vs_full'])}% act.")


# ------------------------------------------------------------------------------------------------ downloads
def test_runs_csv_download_matches_api(page, server, finished_run):
    page.goto(server.url + "/#/runs")
    expect(page.locator(f'#runs-table tr[data-id="{finished_run["id"]}"]')).to_be_visible()
    with page.expect_download() as info:
        page.click('#runs-downloads [data-fmt="csv"]')
    download = info.value
    assert download.suggested_filename == "runs.csv"
    rows = list(csv.DictReader(io.StringIO(open(download.path()).read())))
    api = {r["id"]: r for r in server.get("/api/runs", limit=1000)["items"]}
    assert [int(r["id"]) for r in rows] == sorted(api)
    for r in rows:
        a = api[int(r["id"])]
        assert (r["status"], r["method_label"], r["backbone"], r["task"]) == (a["status"], a["method_label"],
                                                                               a["backbone"], a["task"])
        assert (float(r["score"]) if r["score"] else None) == a["score"]
        stored = r["memory.stored_activation_bytes"]
        assert (int(stored) if stored else None) == a["stored_activation_bytes"]

    # The filters apply to the download; Markdown is built in the page from the same export.
    n_ok = server.get("/api/runs", status="succeeded", limit=1)["total"]
    page.select_option("#flt-status", "succeeded")
    expect(page.locator("#page-info")).to_have_text(re.compile(f" of {n_ok}$"))  # the filtered page is in
    with page.expect_download() as info:
        page.click('#runs-downloads [data-fmt="md"]')
    lines = open(info.value.path()).read().strip().splitlines()
    assert lines[0].startswith("| id | status |") and len(lines) == n_ok + 2
    assert all("| succeeded |" in line for line in lines[2:])


def test_pivot_and_results_downloads(page, server, finished_run):
    page.goto(server.url + "/#/compare?task=sst2&mem=stored")
    wait_scatter(page)
    with page.expect_download() as info:
        page.click('#pivot-downloads button[data-fmt="tex"]')
    tex = open(info.value.path()).read()
    assert tex.startswith("\\begin{tabular}") and "meft1" in tex and "$\\star$" in tex
    link = page.locator('#pivot-downloads a[href^="/api/results.csv"]')
    assert "task=sst2" in link.get_attribute("href")
    with page.expect_download() as info:
        link.click()
    rows = list(csv.DictReader(open(info.value.path())))
    assert {r["task"] for r in rows} == {"sst2"} and len(rows) > 1


# ------------------------------------------------------------------------------------------------ errors and reasons
def test_invalid_form_shows_error_next_to_field(page, server, console):
    before = server.get("/api/runs", limit=1)["total"]
    page.goto(server.url + "/#/submit")
    page.click("#reset-btn")
    page.select_option("#f-method", "lora")
    page.fill("#hp-learning_rate", "-1")
    with console.expecting_422():
        page.click("#submit-btn")
        error = page.locator("#hp-learning_rate-error")
        expect(error).to_contain_text("learning_rate=-1")
    assert page.evaluate("""() => document.getElementById('hp-learning_rate-error').closest('.field')
                                  === document.getElementById('hp-learning_rate').closest('.field')""")
    expect(page.locator("#hp-learning_rate")).to_have_attribute("aria-invalid", "true")

    # A method option, then a sweep axis: each error lands next to its own field, the old one goes.
    page.fill("#hp-learning_rate", "")
    page.fill("#mo-lora-r", "0")
    with console.expecting_422():
        page.click("#submit-btn")
        expect(page.locator("#mo-lora-r-error")).to_contain_text("r=0")
    expect(page.locator("#hp-learning_rate-error")).to_have_count(0)
    page.fill("#mo-lora-r", "8")
    page.check("#mode-sweep")
    page.fill("#f-seeds", "1, abc")
    with console.expecting_422():
        page.click("#submit-btn")
        expect(page.locator("#f-seeds-error")).to_be_visible()
    assert server.get("/api/runs", limit=1)["total"] == before  # nothing was queued


def test_queued_reason_cancel_retry_clone(page, server):
    res = server.post("/api/runs", {"backbone": "tiny-bert", "method": "lora", "task": "sst2", "device": "cuda",
                                    "name": "needs-gpu", "hyperparameters": {"epochs": 1}})
    assert res.status_code == 201
    run_id = res.json()["id"]
    page.goto(server.url + "/#/runs")
    row = page.locator(f'#runs-table tr[data-id="{run_id}"]')
    expect(row.locator(".reason")).to_contain_text("needs a GPU")  # why it waits, from /api/system
    row.locator('[data-action="cancel"]').click()
    expect(row.locator(".badge")).to_have_text("cancelled")
    row.locator('[data-action="retry"]').click()
    expect(row.locator(".badge")).to_have_text("queued")
    expect(row.locator(".reason")).to_contain_text("needs a GPU")
    row.locator('[data-action="clone"]').click()
    expect(page.locator("#clone-banner")).to_contain_text(f"Cloning run #{run_id}")
    expect(page.locator("#f-device")).to_have_value("cuda")
    expect(page.locator("#hp-epochs")).to_have_value("1")
    page.fill("#f-name", "needs-gpu-clone")
    page.click("#submit-btn")
    expect(page.locator("#flash")).to_contain_text(f"clone of #{run_id}")
    clone_id = int(re.search(r"Queued run #(\d+)", page.inner_text("#flash")).group(1))
    clone = server.get(f"/api/runs/{clone_id}")
    assert (clone["cloned_from"], clone["name"], clone["config"]["epochs"]) == (run_id, "needs-gpu-clone", 1)
    for rid in (run_id, clone_id):
        assert server.post(f"/api/runs/{rid}/cancel").status_code == 200


def test_sweep_grid_from_form(page, server):
    """Methods × seeds × a list of learning rates, queued for a GPU this machine lacks, so nothing runs."""
    page.goto(server.url + "/#/submit")
    page.click("#reset-btn")
    page.check("#mode-sweep")
    page.check("#sw-method-lora")
    page.check("#sw-method-bitfit")
    page.uncheck("#sw-method-meft1")
    page.fill("#f-seeds", "1, 2")
    page.fill("#hp-learning_rate", "1e-4, 3e-4")
    page.fill("#hp-epochs", "1")
    page.fill("#mo-lora-r", "4")
    page.select_option("#f-device", "cuda")
    expect(page.locator("#grid-size")).to_have_text("Grid: 8 runs.")
    expect(page.locator("#mo-lora")).to_be_visible()
    expect(page.locator("#mo-meft1")).to_be_hidden()
    page.click("#submit-btn")
    expect(page.locator("#flash")).to_contain_text("runs.")
    sweep_id = int(re.search(r"Queued sweep #(\d+): 8 runs", page.inner_text("#flash")).group(1))
    expect(page.locator("#runs-table tbody tr[data-id]")).to_have_count(8)  # the runs view, filtered to the sweep
    runs = server.get("/api/runs", sweep=sweep_id, limit=100)["items"]
    assert sorted((r["method_label"], r["seed"], r["learning_rate"]) for r in runs) == sorted(
        (label, seed, lr) for label in ("lora(r=4)", "bitfit") for seed in (1, 2) for lr in (1e-4, 3e-4))
    assert server.post(f"/api/sweeps/{sweep_id}/cancel").status_code == 200


def test_runs_sort_filter_and_paging(page, server):
    page.goto(server.url + "/#/runs?limit=25")
    # a hash-only navigation: wait for this URL's page, or the click may land on the previous view's table
    expect(page.locator("#page-info")).to_contain_text("1–25 of")
    page.click('#runs-table button[data-sort="score"]')
    expect(page.locator('#runs-table th[aria-sort="ascending"]')).to_contain_text("Score")
    assert "sort=score" in page.url
    api = server.get("/api/runs", sort="score", limit=25)["items"]
    expect(page.locator("#runs-table tbody tr[data-id]").first).to_have_attribute("data-id", str(api[0]["id"]))
    page.click('#runs-table button[data-sort="score"]')  # again: descending
    api = server.get("/api/runs", sort="-score", limit=25, offset=25)["items"]
    page.click("#page-next")
    expect(page.locator("#runs-table tbody tr[data-id]").first).to_have_attribute("data-id", str(api[0]["id"]))
    ids = [int(i) for i in page.locator("#runs-table tbody tr[data-id]").evaluate_all("rs => rs.map(r => r.dataset.id)")]
    assert ids == [r["id"] for r in api]
    page.select_option("#flt-backbone", "roberta-large")
    expect(page.locator("#page-info")).to_contain_text(f"of {server.get('/api/runs', backbone='roberta-large')['total']}")
    assert "offset=0" in page.url  # a new filter starts at the first page
    assert set(page.locator('#runs-table td[data-col="backbone"]').all_inner_texts()) == {"roberta-large"}


def test_does_not_fit_and_failure_reasons(page, server):
    page.goto(server.url + "/#/runs?status=does_not_fit")
    row = page.locator(f'#runs-table tr[data-id="{server.seeded["does_not_fit"]}"]')
    expect(row.locator(".badge")).to_have_text("does not fit")
    expect(row.locator(".reason")).to_contain_text("does not fit at batch 64, seq 512")
    page.goto(server.url + f"/#/runs/{server.seeded['failed']}")
    expect(page.locator("#run-reason")).to_contain_text("Failed: RuntimeError: reconstruction error")


def test_preflight_memory_check(page, server):
    page.goto(server.url + "/#/submit")
    page.click("#reset-btn")
    page.select_option("#f-backbone", "roberta-large")
    page.select_option("#f-method", "full")
    page.fill("#hp-batch_size", "64")
    page.fill("#hp-max_seq_len", "512")
    item = page.locator("#preflight li.estimate")
    expect(item).to_have_count(1)  # one run, one estimate (a sweep shows one per method × backbone)
    expect(item).to_have_attribute("data-verdict", "no")
    expect(item).to_contain_text(f"run #{server.seeded['does_not_fit']}")

    # Measured peaks at batch 16, seq 128 (synthetic, on bert-base) against a budget.
    page.select_option("#f-backbone", "bert-base")
    page.select_option("#f-method", "meft1")
    page.fill("#hp-batch_size", "16")
    page.fill("#hp-max_seq_len", "128")
    expect(item).to_contain_text("measured peak")
    rows = server.get("/api/runs", backbone="bert-base", method="meft1", status="succeeded", limit=100)["items"]
    peak = max(r["peak_bytes"] for r in rows) / GiB
    page.fill("#f-budget", f"{peak * 0.5:.2f}")
    expect(item).to_have_attribute("data-verdict", "no")
    page.fill("#f-budget", f"{peak * 2:.2f}")
    expect(item).to_have_attribute("data-verdict", "yes")

    # The analytic estimate (POST /api/estimate) with its parts, and a warning when it exceeds the budget.
    est = server.post("/api/estimate", {"backbone": "bert-base", "method": "meft1", "task": "sst2",
                                        "hyperparameters": {"batch_size": 16, "max_seq_len": 128}}).json()
    estimated = item.locator(".estimated")
    expect(estimated).to_contain_text("estimated peak")
    expect(estimated).to_have_attribute("data-peak", str(est["peak_bytes"]))
    for part in ("parameters", "gradients", "optimizer", "peak activations", "stored activations"):
        expect(estimated).to_contain_text(part)
    page.fill("#f-budget", f"{est['peak_bytes'] * 2 / GiB:.3f}")
    expect(item.locator(".estimate-warning")).to_have_count(0)
    page.fill("#f-budget", f"{est['peak_bytes'] * 0.5 / GiB:.3f}")
    expect(item.locator(".estimate-warning")).to_contain_text("exceeds the budget")


def test_bench_curves_from_stored_rows(page, server):
    """Rows stored as `mefts bench-import` stores them (synthetic numbers, note "synthetic") draw the memory vs
    depth and vs sequence-length curves of the compare view."""
    from db.bench import add_bench_rows
    from db.session import make_engine, make_sessionmaker, session_scope

    rows = [{"backbone": "tiny-bert", "method": m, "options": "{}", "layers": n, "seq_len": t, "batch_size": 2,
             "dtype": "float32", "device": "cpu", "status": "ok", "note": "synthetic",
             "stored_activation_bytes": k * n * t * 1000, "peak_activation_bytes": k * n * t * 4000,
             "peak_bytes": 10**7 + k * n * t * 4000, "step_seconds": None}
            for m, k in (("full", 8), ("meft1-exact", 1)) for n, t in ((2, 32), (4, 32), (8, 32), (4, 64), (4, 128))]
    engine = make_engine(server.db_url)
    with session_scope(make_sessionmaker(engine)) as s:
        add_bench_rows(session=s, rows=rows)
    engine.dispose()
    assert server.get("/api/bench", backbone="tiny-bert")["total"] >= len(rows)
    page.goto(server.url + "/#/compare")
    box = page.locator("#bench-curves")
    expect(box).to_have_attribute("data-rendered", "4")  # 2 methods x (depth at T=32, length at L=4)
    expect(page.locator("#bench-depth .trace")).to_have_count(2)
    expect(page.locator("#bench-seq .trace")).to_have_count(2)
    expect(page.locator("#bench-note")).to_contain_text("2 depth curves, 2 sequence-length curves")


# ------------------------------------------------------------------------------------------------ run detail
def test_run_detail(page, server, finished_run):
    run_id = finished_run["id"]
    page.goto(server.url + f"/#/runs/{run_id}")
    page.wait_for_function("() => { const d = document.getElementById('chart-mem'); return d && d.data; }")
    series = server.get(f"/api/runs/{run_id}/metrics")["series"]
    loss = graph(page, "chart-loss")
    step_loss = next(t for t in loss["data"] if t["name"] == "loss per step")
    assert step_loss["y"] == pytest.approx([p["value"] for p in series["step_loss"]])
    metric = graph(page, "chart-metric")
    assert [t["name"] for t in metric["data"]] == [k for k in series if k.startswith("dev_") and k != "dev_loss"]
    mem = graph(page, "chart-mem")
    m = finished_run["run"]["memory"]
    parts = {t["name"]: t["x"][0] for t in mem["data"]}
    ticks = page.locator("#chart-mem .xaxislayer-above text").all_text_contents()
    scale = GiB if any("GiB" in t for t in ticks) else MiB
    assert parts["gradients"] == pytest.approx(m["grad_bytes"] / scale)
    assert parts["optimizer state"] == pytest.approx(m["optimizer_bytes"] / scale)
    assert parts["stored activations"] == pytest.approx(m["stored_activation_bytes"] / scale)
    assert parts["peak activation above stored"] == pytest.approx(
        max(0, m["peak_activation_bytes"] - m["stored_activation_bytes"]) / scale)
    expect(page.locator("#run-log")).to_contain_text("epoch 1")
    # a MEFT run checks its gradients against plain autograd before training: per layer, drawn, and summarised
    fidelity = server.get(f"/api/runs/{run_id}")["result"]["gradient_fidelity"]
    assert len(fidelity) == 2 and all(r["rel_error"] == 0.0 for r in fidelity)
    expect(page.locator("#fidelity-section")).to_be_visible()
    page.wait_for_function("() => { const d = document.getElementById('chart-fidelity'); return d && d.data; }")
    cosine = next(t for t in graph(page, "chart-fidelity")["data"] if t["name"].startswith("gradient cosine"))
    assert cosine["y"] == pytest.approx([r["cosine"] for r in fidelity])
    # every error is 0: the right axis says so with one tick, not an invented range ("5,781.454")
    assert page.locator("#chart-fidelity .y2tick text").all_text_contents() == ["0"]
    expect(page.locator("#run-facts")).to_contain_text("2 reversible layers: bit-identical to plain autograd")


def test_paper_table_view_and_data_source(page, server, finished_run):
    run = finished_run["run"]
    assert run["data_source"] == "packaged"  # offline: SST-2's packaged copy, recorded as resolved
    page.goto(server.url + f"/#/runs/{run['id']}")
    expect(page.locator("#run-facts")).to_contain_text("packaged (the packaged validation copy, re-split)")
    page.goto(server.url + "/#/paper?suite=glue")
    page.wait_for_selector("#paper-table")
    api = server.get("/api/results/paper.json?suite=glue")
    shown = [[c.inner_text() for c in row.locator("th, td").all()] for row in page.locator("#paper-table tbody tr").all()]
    assert shown == api["cells"]  # the view shows the export's cells
    columns = page.locator("#paper-table thead th").all_text_contents()
    assert columns == api["columns"]
    row = dict(zip(columns, next(r for r in shown if r[0] == "meft1 (tiny-bert)")))
    sst2 = "sst2"  # the seeded results (support.seed_compare) are on packaged data too: one column
    assert row[sst2] == f"{100 * run['score']:.1f}"
    assert [c for c in columns[1:-3] if row[c] != "no data" and row[c] != "-"] == [sst2]
    expect(page.locator("#paper-notes")).to_contain_text("packaged")
    expect(page.locator('#paper-downloads a[data-fmt="tex"]')).to_have_attribute("href", "/api/results/paper.tex?suite=glue")
    expect(page.locator('nav a[data-view="paper"]')).to_have_attribute("aria-current", "page")


def test_fidelity_error_axis_spans_the_errors_in_decades(page, server):
    page.goto(server.url + "/#/runs")
    ticks = page.evaluate("""async () => { const d = document.createElement('div'); d.style.width = '600px';
        document.body.append(d);
        await Charts.fidelity(d, [{ layer: 0, cosine: 1, rel_error: 2e-7 }, { layer: 1, cosine: 0.99, rel_error: 3e-5 }]);
        const out = [...d.querySelectorAll('.y2tick text')].map((t) => t.textContent); Plotly.purge(d); d.remove();
        return out; }""")
    assert ticks == ["1e\u22127", "1e\u22126", "1e\u22125", "1e\u22124"]  # Plotly writes a true minus sign


def test_run_detail_downloads_the_trained_model(page, server, finished_run):
    run = server.get(f"/api/runs/{finished_run['id']}")
    page.goto(server.url + f"/#/runs/{run['id']}")
    link = page.locator("#run-model a#model-download")
    expect(link).to_be_visible()
    size = page.evaluate("(b) => Api.fmtBytes(b)", run["artifact_bytes"])
    expect(link).to_have_text(f"Download model ({size}, tar.gz)")
    expect(page.locator("#run-model")).to_contain_text(run["artifact_sha256"][:16])
    with page.expect_download() as info:
        link.click()
    download = info.value
    assert download.suggested_filename == f"run-{run['id']}-{run['method_label']}.tar.gz"
    body = Path(download.path()).read_bytes()
    assert len(body) == run["artifact_bytes"] and hashlib.sha256(body).hexdigest() == run["artifact_sha256"]
    # a run without a model shows no link
    page.goto(server.url + f"/#/runs/{server.seeded['failed']}")
    expect(page.locator("#run-reason")).to_be_visible()
    expect(page.locator("#run-model")).to_be_hidden()


def _flat(prefix: str, value, out: dict) -> dict:
    if isinstance(value, dict) and value:
        for k, v in value.items():
            _flat(f"{prefix}.{k}" if prefix else k, v, out)
    else:
        out[prefix] = value
    return out


def test_compare_two_runs(page, server, finished_run):
    """Tick two runs in the runs table (on different pages), compare them: the config fields that differ, one loss
    curve per run, and a memory bar per run; the URL holds the selection."""
    mine, other = finished_run["id"], server.seeded["succeeded"][0]
    page.goto(server.url + "/#/runs")
    page.check(f'#runs-table tr[data-id="{mine}"] input.pick')
    expect(page.locator("#diff-btn")).to_be_disabled()
    page.goto(server.url + "/#/runs?sort=id")  # another page: the first tick is kept
    page.check(f'#runs-table tr[data-id="{other}"] input.pick')
    expect(page.locator("#diff-btn")).to_have_text("Compare selected (2)")
    page.click("#diff-btn")
    page.wait_for_selector('#diff-body[data-rendered="2"]')
    assert f"ids={min(mine, other)},{max(mine, other)}" in page.url
    runs = [server.get(f"/api/runs/{i}") for i in sorted((mine, other))]
    flat = [_flat("", {**r["config"], "method_label": r["method_label"]}, {}) for r in runs]
    differ = sorted(k for k in set(flat[0]) | set(flat[1]) if flat[0].get(k) != flat[1].get(k))
    assert page.locator("#diff-table tbody tr").evaluate_all("(rows) => rows.map((r) => r.dataset.key)") == differ
    assert {"backbone", "method", "seed"} <= set(differ) and "task" not in differ  # same task: not shown
    loss = graph(page, "diff-loss")["data"]
    assert {t["name"].split(":")[0].split()[0] for t in loss} == {f"#{mine}", f"#{other}"}
    series = server.get(f"/api/runs/{other}/metrics")["series"]
    theirs = next(t for t in loss if t["name"].startswith(f"#{other} ") and t["name"].endswith("train_loss"))
    assert theirs["y"] == pytest.approx([p["value"] for p in series["train_loss"]])
    bars = graph(page, "diff-mem")["data"]
    stored = next(t for t in bars if t["name"] == "stored activations")
    assert len(stored["y"]) == 2 and all(x is not None for x in stored["x"])


# The first answer for `slow` (a URL fragment) comes 1.5 s late: any view that still draws it shows stale data.
DELAY_FETCH = """(slow) => { const orig = window.fetch; window.__slowStarted = false; window.__slowDone = false;
    window.fetch = (url, init) => {
      if (!String(url).includes(slow) || window.__slowStarted) return orig(url, init);
      window.__slowStarted = true;
      return new Promise((ok) => setTimeout(ok, 1500)).then(() => { window.__slowDone = true; return orig(url, init); });
    }; }"""


def test_views_ignore_stale_answers(page, server, finished_run):
    """Moving on before an answer arrives: the older answer, arriving last, must not be drawn over the newer view."""
    old, new = finished_run["id"], server.seeded["succeeded"][0]
    page.goto(server.url + "/#/runs")
    page.evaluate(DELAY_FETCH, f"/api/runs/{old}/metrics")
    page.evaluate("(id) => { location.hash = `#/runs/${id}`; }", old)
    page.wait_for_function("() => window.__slowStarted === true")  # the old run's metrics are on their way
    page.evaluate("(id) => { location.hash = `#/runs/${id}`; }", new)
    page.wait_for_function("() => window.__slowDone === true")
    page.wait_for_timeout(300)  # the late answer is in: had it been drawn, it would be now
    names = {t["name"] for t in graph(page, "chart-loss")["data"]}
    series = server.get(f"/api/runs/{new}/metrics")["series"]
    assert "loss per step" not in names and "step_loss" not in series  # the form run's curve stays on its own page
    assert page.inner_text("#run-title").startswith(f"Run #{new}")
    # the submit form: cloning one run, then another before the first answered, fills in the second (here the form's
    # own run: a synthetic run's stored options are not all ones the form accepts)
    old, new = new, old
    page.evaluate(DELAY_FETCH, f"/api/runs/{old}")
    page.evaluate("(id) => { location.hash = `#/submit?clone=${id}`; }", old)
    page.wait_for_function("() => window.__slowStarted === true")
    page.evaluate("(id) => { location.hash = `#/submit?clone=${id}`; }", new)
    page.wait_for_function("() => window.__slowDone === true")
    page.wait_for_timeout(300)
    expect(page.locator("#clone-banner")).to_contain_text(f"Cloning run #{new} ")
    assert page.input_value("#f-backbone") == server.get(f"/api/runs/{new}")["backbone"]


# ------------------------------------------------------------------------------------------------ basics
def test_form_fields_are_labelled(page, server):
    page.goto(server.url + "/#/submit")
    unlabelled = page.evaluate("""() => [...document.querySelectorAll('input, select, textarea')]
        .filter(e => e.type !== 'hidden' && !(e.id && document.querySelector(`label[for="${e.id}"]`)))
        .map(e => e.id || e.name || e.outerHTML.slice(0, 60))""")
    assert unlabelled == []


@pytest.mark.parametrize("width", [1280, 420])
def test_screenshots_and_no_horizontal_overflow(page, server, finished_run, screenshots, width):
    page.set_viewport_size({"width": width, "height": 800})
    try:
        diff = f"#/diff?ids={server.seeded['succeeded'][0]},{server.seeded['succeeded'][-1]},{finished_run['id']}"
        for name, hash_ in [("compare", "#/compare?task=sst2&mem=stored"),
                            ("compare-step", "#/compare?task=sst2&x=step&y=score&color=peak"),
                            ("run-detail", f"#/runs/{finished_run['id']}"), ("runs", "#/runs"), ("submit", "#/submit"),
                            ("diff", diff)]:
            page.goto(server.url + "/" + hash_)
            if name.startswith("compare"):
                wait_scatter(page)
            elif name == "diff":
                page.wait_for_selector('#diff-body[data-rendered="3"]')
            elif name == "run-detail":
                page.wait_for_function("() => { const d = document.getElementById('chart-mem'); return d && d.data; }")
            elif name == "runs":
                page.wait_for_selector("#runs-table tbody tr[data-id]")
            else:
                page.wait_for_selector("#preflight li")
            page.evaluate("() => { document.getElementById('flash').hidden = true; }")
            assert_fits_window(page, name, width)
            page.screenshot(path=str(screenshots / f"{name}-{width}.png"), full_page=True)
    finally:
        page.set_viewport_size({"width": 1280, "height": 800})


def test_no_console_errors(console):
    """Runs last: every console error or warning and every uncaught exception of the session so far."""
    assert console.unexpected() == []
