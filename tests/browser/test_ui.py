"""A real browser (Debian's Chromium, headless) uses the app as a person would."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.common import running_app
from inference import PetClassifier
from tests.conftest import CHELSEA, MODEL_DIR

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]
SCREENSHOTS = Path(os.environ.get("SCREENSHOT_DIR", "bench/results"))


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    if not shutil.which(CHROMIUM):
        pytest.skip(f"Chromium is not installed at {CHROMIUM} (.ci/run installs it with apt-get)")
    from playwright.sync_api import sync_playwright

    given = os.environ.get("PETS_APP_URL")  # a server started elsewhere: the deploy rehearsal's
    app = contextlib.nullcontext((given, None)) if given else running_app({"PETS_BENCH_NOOP": "1"})
    with app as (url, _), sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1100})
        page.goto(url, wait_until="networkidle")
        page.app_url = url
        yield page
        browser.close()


def model_runs(url: str) -> int | None:
    """The app's model-run counter; None where the app was started without PETS_BENCH_NOOP (a Space)."""
    from gradio_client import Client

    client = Client(url, verbose=False)
    if "/model_runs" not in client.view_api(print_info=False, return_format="dict")["named_endpoints"]:
        return None
    return client.predict(api_name="/model_runs")


def test_identify_shows_five_breeds_with_one_model_run(page) -> None:
    page.locator("#photo input[type=file]").set_input_files(str(CHELSEA))
    runs = model_runs(page.app_url)
    page.get_by_role("button", name="Identify", exact=True).click()
    page.wait_for_function("document.querySelector('#breeds').innerText.split('%').length > 5", timeout=30_000)
    text = page.locator("#breeds").inner_text()
    assert text.count("%") == 5 and PetClassifier.load(MODEL_DIR).predict(CHELSEA).top[0][0] in text, text
    page.wait_for_function("document.querySelector('#summary').innerText.trim().length > 0", timeout=30_000)
    summary = page.locator("#summary").inner_text()
    assert summary.startswith(("Not sure", "Looks like a")), summary
    page.wait_for_function("document.querySelector('#heatmap img') !== null", timeout=30_000)
    if runs is not None:
        assert model_runs(page.app_url) == runs + 1  # label, summary, details and heatmap from one run
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "identify.png"), full_page=True)


def test_transform_returns_an_image(page) -> None:
    page.get_by_role("tab", name="Transform").click()
    page.locator("#transform-source input[type=file]").set_input_files(str(CHELSEA))
    page.get_by_role("tab", name="grayscale").click()
    page.get_by_role("button", name="Apply grayscale").click()
    page.locator("#transform-result img").wait_for(timeout=30_000)
    page.screenshot(path=str(SCREENSHOTS / "transform.png"), full_page=True)


def test_model_tab_shows_the_metrics(page) -> None:
    page.get_by_role("tab", name="Model").click()
    card = page.locator("#card")
    card.wait_for(timeout=10_000)
    assert "test" in card.inner_text() and "%" in card.inner_text()
    page.screenshot(path=str(SCREENSHOTS / "model.png"), full_page=True)
