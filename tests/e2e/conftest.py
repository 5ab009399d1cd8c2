"""Browser tests: a real `mefts serve` (API, dashboard, embedded worker) on loopback with a temporary data
directory, driven by Playwright through Debian's Chromium (no `playwright install`: its download does not work
here). Skipped where Playwright or Chromium is missing."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.e2e.support import CHROMIUM, CHROMIUM_ARGS, REPO, Server, seed_compare

try:
    from playwright import sync_api
except ModuleNotFoundError:  # the test extra is not installed: the browser fixture skips
    sync_api = None

ARTIFACTS = Path(os.environ.get("MEFTS_ARTIFACTS", REPO / "artifacts"))


class ConsoleLog:
    """Console errors and uncaught page errors of a page. Chromium also logs every HTTP error response as a console
    error ("Failed to load resource: ... 422"): those count as expected only inside `expecting_422()`, and only
    for the submit endpoints."""

    SUBMIT_PATHS = ("/api/runs", "/api/sweeps")

    def __init__(self) -> None:
        self.entries: list[dict[str, object]] = []
        self._expect_422 = False

    def on_console(self, msg) -> None:
        if msg.type not in ("error", "warning"):
            return
        url = (msg.location or {}).get("url", "")
        expected = (self._expect_422 and msg.type == "error" and "status of 422" in msg.text
                    and urlparse(url).path in self.SUBMIT_PATHS)
        # The pre-flight box asks POST /api/estimate as the form changes: a 422 there ("no estimate: why") is an
        # answer the box shows, not an error of the page.
        expected = expected or (msg.type == "error" and "status of 422" in msg.text
                                and urlparse(url).path == "/api/estimate")
        self.entries.append({"type": msg.type, "text": msg.text, "url": url, "expected": expected})

    def on_page_error(self, err) -> None:
        self.entries.append({"type": "pageerror", "text": str(err), "url": "", "expected": False})

    @contextlib.contextmanager
    def expecting_422(self):
        self._expect_422 = True
        try:
            yield
        finally:
            self._expect_422 = False

    def unexpected(self) -> list[dict[str, object]]:
        return [e for e in self.entries if not e["expected"]]


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """The server, with synthetic results of every method on two larger backbones (so the compare view has a
    Pareto front, seeds and savings) plus one does-not-fit and one failed run; real runs come from the tests."""
    data_dir = tmp_path_factory.mktemp("mefts-e2e")
    srv = Server(data_dir)
    srv.seeded = seed_compare(srv.db_url)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def browser():
    if sync_api is None:
        pytest.skip("playwright is not installed (pip install -e '.[test]')")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def console():
    return ConsoleLog()


@pytest.fixture(scope="module")
def page(browser, server, console):
    """One page at 1280×800 for the module's whole session, its console collected in `console`."""
    context = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    pg = context.new_page()
    pg.set_default_timeout(20_000)
    pg.on("console", console.on_console)
    pg.on("pageerror", console.on_page_error)
    yield pg
    context.close()


@pytest.fixture(scope="session")
def screenshots() -> Path:
    path = ARTIFACTS / "screenshots"
    path.mkdir(parents=True, exist_ok=True)
    return path
