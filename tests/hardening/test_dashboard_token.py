"""The dashboard against a server with an API token: a refused submit reveals the token field; once the token is
typed in, it is kept (localStorage) and sent, and the submit goes through. Without a token (tests/e2e) the field
stays hidden."""

from __future__ import annotations

import concurrent.futures
import re
from pathlib import Path

import pytest

from .support import LoopbackServer

pytestmark = pytest.mark.browser
TOKEN = "dashboard-token-0123456789abcdef"
FORM = {"hp-epochs": "1", "hp-max_train_samples": "16", "hp-max_eval_samples": "16", "hp-batch_size": "8",
        "hp-max_seq_len": "32"}


def test_dashboard_sends_the_token_it_is_given(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    from tests.e2e.support import CHROMIUM

    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}")
    # In a thread of its own: the browser tests' session-wide Playwright keeps an event loop running in this one,
    # and the sync API refuses to start inside a running loop.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(_scenario, tmp_path, sync_api).result()


def _scenario(tmp_path, sync_api):
    from tests.e2e.support import CHROMIUM, CHROMIUM_ARGS

    with LoopbackServer(tmp_path / "data", env={"MEFTS_API_TOKEN": TOKEN}, log_level="WARNING") as server, \
            sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.set_default_timeout(20_000)
        page.goto(server.url + "/#/submit")
        page.wait_for_load_state("networkidle")  # the form's own requests (labels, estimates) are answered by now
        field = page.locator("#api-token")
        assert field.is_hidden()
        page.select_option("#f-backbone", "tiny-bert")
        page.select_option("#f-method", "full")
        page.select_option("#f-task", "sst2")
        for name, value in FORM.items():
            if page.locator(f"#{name}").count():
                page.fill(f"#{name}", value)
        page.click("#submit-btn")
        sync_api.expect(page.locator("#flash")).to_contain_text("401")
        sync_api.expect(field).to_be_visible()

        field.fill(TOKEN)
        field.dispatch_event("change")
        page.click("#submit-btn")
        sync_api.expect(page.locator("#flash")).to_contain_text("Queued run #")
        run_id = int(re.search(r"Queued run #(\d+)", page.inner_text("#flash")).group(1))
        assert page.evaluate("() => localStorage.getItem('mefts.apiToken')") == TOKEN

        page.reload()  # kept across loads, and shown with the stored value
        sync_api.expect(page.locator("#api-token")).to_be_visible()
        page.goto(server.url + "/#/runs")
        sync_api.expect(page.locator(f'#runs-table tr[data-id="{run_id}"]')).to_be_visible()
        browser.close()
