"""A real browser (Debian's Chromium, headless) uses the app as a visitor would, and checks what is
visible, not only what can be clicked: one tab bar, every control working with the value it shows,
examples that identify at once, a model page for people, and a phone-width page without sideways scroll."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import transforms
from bench.common import running_app
from inference import PetClassifier, readable_name
from tests.conftest import CHELSEA, EXAMPLES, MODEL_DIR, REPO

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
# Where the screenshots go: a temporary folder, so a test run leaves the tree as it found it; to refresh the
# committed ones, SCREENSHOT_DIR=bench/results/screenshots python -m pytest tests/browser
SCREENSHOTS = Path(os.environ.get("SCREENSHOT_DIR") or tempfile.mkdtemp(prefix="screenshots-"))
TABS = {"Identify": "#tab-identify", "Transform": "#tab-transform", "Model": "#tab-model"}
VIEWPORTS = {"desktop": {"width": 1280, "height": 1100}, "phone": {"width": 390, "height": 844}}


@pytest.fixture(scope="module")
def browser() -> Iterator:
    if not shutil.which(CHROMIUM):
        pytest.skip(f"Chromium is not installed at {CHROMIUM} (.ci/run installs it with apt-get)")
    from playwright.sync_api import sync_playwright

    given = os.environ.get("PETS_APP_URL")  # a server started elsewhere: the deploy rehearsal's
    app = contextlib.nullcontext((given, None)) if given else running_app({"PETS_BENCH_NOOP": "1"})
    with app as (url, _), sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        browser.app_url = url
        yield browser
        browser.close()


@pytest.fixture
def page(browser) -> Iterator:
    """A fresh page at desktop width, the app loaded."""
    page = browser.new_page(viewport=VIEWPORTS["desktop"])
    page.goto(browser.app_url, wait_until="networkidle")
    page.app_url = browser.app_url
    yield page
    page.close()


def model_runs(url: str) -> int | None:
    """The app's model-run counter; None where the app was started without PETS_BENCH_NOOP (a Space)."""
    from gradio_client import Client

    client = Client(url, verbose=False)
    if "/model_runs" not in client.view_api(print_info=False, return_format="dict")["named_endpoints"]:
        return None
    return client.predict(api_name="/model_runs")


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name, exact=True).click()
    page.locator(TABS[name]).wait_for(state="visible", timeout=10_000)


def wait_for_breeds(page) -> str:
    page.wait_for_function("document.querySelector('#breeds').innerText.split('%').length > 5", timeout=30_000)
    return page.locator("#breeds").inner_text()


def wait_for_runs(page, expected: int | None) -> None:
    """Wait until the app has run its model `expected` times in all (where it counts: not on a Space)."""
    if expected is None:
        page.wait_for_timeout(3000)
        return
    for _ in range(60):
        if model_runs(page.app_url) >= expected:
            break
        page.wait_for_timeout(250)
    page.wait_for_timeout(1000)  # anything else the action set off would have run by now
    assert model_runs(page.app_url) == expected


# --------------------------------------------------------------------------- one tab bar


def test_one_tab_bar_and_only_the_chosen_tab_is_visible(page) -> None:
    tablists = page.get_by_role("tablist")
    assert tablists.count() == 1, [tablists.nth(i).inner_text() for i in range(tablists.count())]
    assert [t.strip() for t in tablists.first.get_by_role("tab").all_inner_texts()] == list(TABS)
    for chosen in ("Identify", "Transform", "Model", "Identify"):
        if chosen != "Identify" or page.locator(TABS["Model"]).is_visible():
            open_tab(page, chosen)
        for name, selector in TABS.items():
            assert page.locator(selector).is_visible() == (name == chosen), (chosen, name)
    assert page.locator("#photo").is_visible() and not page.locator("#transform-source").is_visible()


# --------------------------------------------------------------------------- Identify


def test_identify_shows_five_breeds_with_one_model_run(page) -> None:
    page.locator("#photo input[type=file]").set_input_files(str(CHELSEA))
    text = wait_for_breeds(page)  # an upload identifies at once
    expected = PetClassifier.load(MODEL_DIR).predict(CHELSEA).top[0][0]
    assert text.count("%") == 5 and expected in text, text
    page.wait_for_function("document.querySelector('#summary').innerText.trim().length > 0", timeout=30_000)
    assert page.locator("#summary").inner_text().startswith(("Not sure", "Looks like a"))
    page.wait_for_function("document.querySelector('#heatmap img') !== null", timeout=30_000)
    runs = model_runs(page.app_url)
    page.get_by_role("button", name="Identify", exact=True).click()  # the button stays, for re-runs
    wait_for_runs(page, runs and runs + 1)  # label, summary, details and heatmap from one run
    assert expected in wait_for_breeds(page)


def test_a_photo_without_a_pet_says_so_on_the_page(page) -> None:
    """A Kodak photo of motorbikes: the label's headline and the line under it say "No cat or dog", and
    what the ImageNet network saw; the closest breeds stay listed."""
    page.locator("#photo input[type=file]").set_input_files(str(REPO / "tests" / "not-pets" / "kodak_kodim05.jpg"))
    text = wait_for_breeds(page)
    assert "No cat or dog" in text and text.count("%") == 5, text
    page.wait_for_function("document.querySelector('#summary').innerText.includes('No cat or dog')", timeout=30_000)
    summary = page.locator("#summary")
    assert summary.is_visible() and "it looks more like" in summary.inner_text()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "identify-no-pet-desktop.png"), full_page=False)


def test_upload_runs_the_model_once(page) -> None:
    runs = model_runs(page.app_url)
    page.locator("#photo input[type=file]").set_input_files(str(EXAMPLES[0]))
    wait_for_breeds(page)
    wait_for_runs(page, runs and runs + 1)


def test_every_example_is_visible_captioned_and_identifies_on_click(page) -> None:
    thumbnails = page.locator("#examples .thumbnail-item")
    assert thumbnails.count() == len(EXAMPLES)
    captions = [thumbnails.nth(i).inner_text().strip() for i in range(thumbnails.count())]
    assert all(thumbnails.nth(i).is_visible() for i in range(thumbnails.count()))  # no second page
    for path, caption in zip(EXAMPLES, captions, strict=True):
        assert caption.startswith(readable_name(path.stem.rsplit("_", 1)[0])), caption
    assert any("(cat)" in c for c in captions) and any("(dog)" in c for c in captions)
    dog = next(i for i, c in enumerate(captions) if "(dog)" in c)
    runs = model_runs(page.app_url)
    thumbnails.nth(dog).click()
    breed = captions[dog].rsplit(" (", 1)[0]
    assert breed in wait_for_breeds(page)  # no Identify press needed
    page.locator("#photo img").wait_for(timeout=10_000)  # and the photo shows
    wait_for_runs(page, runs and runs + 1)


# --------------------------------------------------------------------------- Transform


@pytest.mark.parametrize("name", [*transforms.TRANSFORMS, "pipeline"])
def test_every_transform_applies_with_the_values_it_shows(page, name: str) -> None:
    open_tab(page, "Transform")
    page.locator("#transform-source input[type=file]").set_input_files(str(CHELSEA))
    page.locator("#transform-source img").wait_for(timeout=10_000)
    section = page.locator(f"#op-{name}")
    if not section.get_by_role("button", name=f"Apply {name}").is_visible():
        section.get_by_text(f"{name}:", exact=False).first.click()  # open its accordion
    section.get_by_role("button", name=f"Apply {name}").click()
    page.locator("#transform-result img").wait_for(timeout=30_000)
    assert not page.locator(".toast-body").is_visible(), page.locator(".toast-body").all_inner_texts()


# --------------------------------------------------------------------------- Model


def test_model_tab_is_written_for_people(page) -> None:
    open_tab(page, "Model")
    card = page.locator("#card").inner_text()
    assert "test" in card and "%" in card and "mean per breed" in card
    assert "{" not in card and "lacks" in card  # missing files said in words, not a dict
    per_class = page.locator("#per-class").inner_text()
    assert "fewer than 10 photos" in per_class and "%" in per_class and "test photos" in per_class
    assert "share of that breed" in page.locator("#confused").inner_text()
    assert page.locator("#confusion img").is_visible()


# Every word (split at spaces and hyphens, where lines may break) in the cells `selector` finds that a line
# break cuts in two: its characters' boxes lie on more than one line.
BROKEN_WORDS = """selector => {
  const broken = [];
  for (const cell of document.querySelectorAll(selector)) {
    const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      for (const word of node.data.matchAll(/[^\\s-]+/g)) {
        const range = document.createRange();
        range.setStart(node, word.index);
        range.setEnd(node, word.index + word[0].length);
        const lines = new Set([...range.getClientRects()].filter(r => r.width > 0).map(r => Math.round(r.top)));
        if (lines.size > 1) broken.push(word[0]);
      }
    }
  }
  return broken;
}"""


def test_no_word_or_number_in_the_model_tabs_tables_breaks_on_a_phone(browser) -> None:
    page = browser.new_page(viewport=VIEWPORTS["phone"])
    page.goto(browser.app_url, wait_until="networkidle")
    open_tab(page, "Model")
    page.wait_for_timeout(300)
    cells = {table: f"#{table} th, #{table} td" for table in ("card", "per-class", "confused")}
    counted = {table: page.locator(selector).count() for table, selector in cells.items()}
    broken = {table: page.evaluate(BROKEN_WORDS, selector) for table, selector in cells.items()}
    page.close()
    assert all(counted.values()), counted  # each table is there, with its cells
    assert not any(broken.values()), broken


# --------------------------------------------------------------------------- both widths


@pytest.mark.parametrize("width", list(VIEWPORTS))
def test_each_tab_fits_the_width_and_is_saved_as_a_screenshot(browser, width: str) -> None:
    page = browser.new_page(viewport=VIEWPORTS[width])
    page.goto(browser.app_url, wait_until="networkidle")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for name in TABS:
        open_tab(page, name)
        page.wait_for_timeout(300)
        scroll = page.evaluate("document.documentElement.scrollWidth")
        assert scroll <= VIEWPORTS[width]["width"], f"{name} at {width}: {scroll} px wide"
        page.screenshot(path=str(SCREENSHOTS / f"{name.lower()}-{width}.png"), full_page=True)
    page.close()
