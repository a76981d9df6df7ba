"""The web page in real headless Chromium (Debian's), driven by Playwright."""

import os
import shutil
import sys
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from bench.harness import free_port, service
from tests.helpers import COLOURS, jpeg_bytes, make_image_folder
from tests.helpers import synthetic_image as synth

# They start the service as a process (or a browser): deselect with -m 'not slow'.
pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def web(tiny_checkpoint, tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is required for the browser test (apt-get install "
                    "chromium; .ci/run installs it)")
    tmp = tmp_path_factory.mktemp("web")
    gallery = make_image_folder(tmp / "gallery", {k: COLOURS[k] for k in
                                                  ["red", "green", "blue"]}, per_class=4)
    port = free_port()
    env = {**os.environ, "PORT": str(port), "HOST": "127.0.0.1",
           "CHECKPOINT": str(tiny_checkpoint), "DATA_DIR": str(tmp / "data"),
           "GALLERY_DIR": str(gallery), "LOG_LEVEL": "WARNING"}
    env.pop("API_KEY", None)
    with service([sys.executable, "-m", "app"], env, port), sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser, f"http://127.0.0.1:{port}", tmp
        browser.close()


def test_search_enrol_find_and_delete_in_the_browser(web):
    browser, url, tmp = web
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    page.goto(url)
    expect(page.locator("#status")).to_contain_text("Ready: 12 photos")
    expect(page.locator("#labels .chip")).to_have_count(3)

    query = tmp / "query.jpg"
    query.write_bytes(jpeg_bytes(synth(COLOURS["cyan"], 77, 160)))
    page.set_input_files("#file-input", str(query))
    expect(page.locator("#results li")).to_have_count(5)
    expect(page.locator("#prediction")).not_to_have_text("…")
    first_score = float(page.locator("#results .score").first.inner_text())
    assert -1 <= first_score <= 1.0001
    page.screenshot(path=str(os.environ.get("WEB_SCREENSHOT", tmp / "results.png")),
                    full_page=True)

    page.fill("#label-input", "cyan-thing")
    page.click("#enroll-button")
    expect(page.locator("#message")).to_contain_text('Enrolled as "cyan-thing"')
    expect(page.locator("#items-title")).to_have_text("cyan-thing: 1 photo")
    expect(page.locator("#labels .chip", has_text="cyan-thing (1)")).to_be_visible()

    # Searching with the same photo finds the enrolled item first.
    page.set_input_files("#file-input", str(query))
    expect(page.locator("#results li").first).to_contain_text("cyan-thing")
    # The answer explains itself, and "This is X" enrols the photo under X in one click.
    expect(page.locator("#prediction-why")).to_contain_text("Its best matches: item")
    expect(page.locator("#this-is")).to_have_text("This is cyan-thing: enrol it")
    page.click("#this-is")
    expect(page.locator("#message")).to_contain_text('Already in the gallery as "cyan-thing"')

    page.locator("#items .thumb").first.click()
    expect(page.locator("#item-dialog")).to_be_visible()
    expect(page.locator("#item-title")).to_contain_text("cyan-thing")
    page.click("#delete-item")
    expect(page.locator("#message")).to_contain_text("Deleted item")
    expect(page.locator("#labels .chip", has_text="cyan-thing")).to_have_count(0)
    page.close()


def test_bad_file_gives_a_clear_message(web):
    browser, url, tmp = web
    page = browser.new_page()
    page.goto(url)
    expect(page.locator("#status")).to_contain_text("Ready")
    bad = tmp / "notes.txt"
    bad.write_text("not a photo")
    page.set_input_files("#file-input", str(bad))
    expect(page.locator("#message")).to_contain_text("Could not search with this file: not an "
                                                     "image")
    page.close()


def test_phone_screen_and_keyboard(web):
    browser, url, tmp = web
    page = browser.new_page(viewport={"width": 375, "height": 740}, is_mobile=True)
    # Listening from the start turns on file-chooser interception before the key press:
    # enabled lazily by expect_file_chooser, it can lose the race and time out (flaky).
    page.on("filechooser", lambda _chooser: None)
    page.goto(url)
    expect(page.locator("#status")).to_contain_text("Ready")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    # The drop zone is reachable by Tab and opens the file chooser with Enter.
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "dropzone"
    with page.expect_file_chooser() as chooser:
        page.keyboard.press("Enter")
    query = tmp / "phone.jpg"
    query.write_bytes(jpeg_bytes(synth(COLOURS["red"], 5, 160)))
    chooser.value.set_files(str(query))
    expect(page.locator("#results li")).to_have_count(5)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    page.close()
