"""The first start in a real browser: on an empty database the landing view offers the shipped benchmark rows and a
demo sweep; importing draws the depth curves of the compare view."""

from __future__ import annotations

import json

import pytest

from backend.firststart import SHIPPED_RESULTS
from tests.e2e.support import Server

sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def empty_server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("mefts-first-start"), worker=False)  # queued demo runs stay queued
    srv.start()
    yield srv
    srv.stop()


def test_first_start_imports_the_shipped_rows_and_the_depth_curves_appear(browser, empty_server, console):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.on("console", console.on_console)
    page.on("pageerror", console.on_page_error)
    page.set_default_timeout(30_000)
    page.goto(empty_server.url + "/#/compare")
    box = page.locator("#first-start")
    expect(box).to_be_visible()
    expect(page.locator("#bench-curves")).to_have_attribute("data-rendered", "empty")
    # the server is gone when the user clicks: the request fails, says so, and the button can be clicked again
    seen = len(console.entries)
    empty_server.stop()
    page.click("#fs-import")
    expect(page.locator("#flash")).to_contain_text("fetch")
    expect(page.locator("#fs-import")).to_be_enabled()
    empty_server.start()
    page.click("#fs-import")
    rows = json.loads((SHIPPED_RESULTS / "h100-bert-base-seq512.json").read_text())
    methods = {r["method"] for r in rows if r["status"] == "ok"}
    # one depth curve per method (L = 12, 24, 48 at T=512, B=8)
    expect(page.locator("#bench-depth .trace")).to_have_count(len(methods))
    for entry in console.entries[seen:]:  # the page's own requests (its event stream) failed while it was down
        entry["expected"] = entry["expected"] or any(
            f"net::{why}" in str(entry["text"]) for why in ("ERR_CONNECTION_REFUSED", "ERR_INCOMPLETE_CHUNKED_ENCODING"))
    expect(page.locator("#bench-curves")).to_have_attribute("data-rendered", str(len(methods)))
    assert empty_server.get("/api/bench")["total"] == len([r for r in rows if r["status"] == "ok"])
    expect(page.locator("#fs-import")).to_have_count(0)

    page.click("#fs-demo")
    expect(box).to_be_hidden()
    runs = empty_server.get("/api/runs")
    assert runs["total"] == 4 and {r["backbone"] for r in runs["items"]} == {"tiny-bert"}
    page.reload()
    expect(page.locator("#bench-depth .trace")).to_have_count(len(methods))
    expect(box).to_be_hidden()
    context.close()
    assert not console.unexpected()
