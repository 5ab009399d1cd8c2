"""Dashboard page load with many runs: time until the runs table and the memory–accuracy scatter are drawn.

    .venv/bin/python bench/page_load.py [--runs 1000] [--loads 5]

Fills a fresh SQLite database (temporary folder) with synthetic runs through db.crud (mostly succeeded, with memory
reports and metric points; some failed, does-not-fit, cancelled and queued), starts `mefts serve --no-worker` on a
free loopback port, and loads the page in headless Chromium (Debian's, through Playwright). Each view is loaded
`--loads` times in a fresh browser context (cold: plotly.min.js and the rest downloaded again) and as many times by
reloading in one context (warm: cached). The time is the app's own performance mark ("mefts:runs-table",
"mefts:scatter") since navigation start; the table prints p50, min and max in ms, plus the API calls behind each
view, timed from Python.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.e2e.support import CHROMIUM, CHROMIUM_ARGS, Server, seed_many  # noqa: E402

VIEWS = [  # (name, hash, performance mark)
    ("runs table", "#/runs", "mefts:runs-table"),
    ("scatter", "#/compare", "mefts:scatter"),
]
API_CALLS = [  # what each view fetches once the page is up
    ("GET /api/runs?limit=50", "/api/runs", {"limit": 50}),
    ("GET /api/results?select=best", "/api/results", {"select": "best"}),
    ("GET /api/catalog", "/api/catalog", {}),
]


def mark_time(page, mark: str, timeout_ms: int = 60_000) -> float:
    """Milliseconds from navigation start to the app's performance mark."""
    page.wait_for_function(f"() => performance.getEntriesByName('{mark}').length > 0", timeout=timeout_ms)
    return page.evaluate(f"() => performance.getEntriesByName('{mark}')[0].startTime")


def time_views(browser, url: str, loads: int) -> dict[tuple[str, str], list[float]]:
    out: dict[tuple[str, str], list[float]] = {}
    for name, hash_, mark in VIEWS:
        cold = out.setdefault((name, "cold"), [])
        for _ in range(loads):
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            page = context.new_page()
            page.goto(f"{url}/{hash_}")
            cold.append(mark_time(page, mark))
            context.close()
        warm = out.setdefault((name, "warm"), [])
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        page = context.new_page()
        page.goto(f"{url}/{hash_}")
        mark_time(page, mark)  # fills the cache
        for _ in range(loads):
            page.reload()
            warm.append(mark_time(page, mark))
        context.close()
    return out


def time_api(url: str, repeats: int) -> dict[str, list[float]]:
    out = {}
    with httpx.Client(base_url=url, timeout=60) as client:
        for name, path, params in API_CALLS:
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                client.get(path, params=params).raise_for_status()
                times.append(1000 * (time.perf_counter() - t))
            out[name] = times
    return out


def table(rows: list[tuple[str, list[float]]]) -> str:
    lines = ["| what | p50 ms | min ms | max ms | n |", "|---|---:|---:|---:|---:|"]
    for name, times in rows:
        lines.append(f"| {name} | {statistics.median(times):.0f} | {min(times):.0f} | {max(times):.0f} | {len(times)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000, help="runs in the database (default 1000)")
    parser.add_argument("--loads", type=int, default=5, help="page loads per view and cache state (default 5)")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="mefts-page-load-") as tmp:
        server = Server(Path(tmp), worker=False)
        t = time.perf_counter()
        seed_many(server.db_url, args.runs)
        seeded = time.perf_counter() - t
        server.start()
        try:
            total = server.get("/api/runs", limit=1)["total"]
            results = len(server.get("/api/results")["rows"])
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
                try:
                    views = time_views(browser, server.url, args.loads)
                finally:
                    browser.close()
            api = time_api(server.url, max(5, args.loads))
        finally:
            server.stop()

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"{total} runs in the database ({results} results rows; seeded in {seeded:.1f} s), "
          f"Chromium headless at 1280×800, server without a worker; times from navigation start. "
          f"{os.cpu_count()} CPUs, load average {load} at the end.\n")
    rows = [(f"{name}, {state} cache", times) for (name, state), times in views.items()]
    print(table(rows + [(name, times) for name, times in api.items()]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
