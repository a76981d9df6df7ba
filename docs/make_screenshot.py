"""Regenerate docs/web.png: the web page searching a real grocery photo with the default
checkpoint. Run from the repository root: ``.venv/bin/python docs/make_screenshot.py``."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.harness import ROOT, free_port, service  # noqa: E402
from tests.api.test_web import ARGS, CHROMIUM  # noqa: E402

GROCERY = ROOT.parent / "shared" / "data" / "grocery"


def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    gallery = tmp / "gallery"
    for class_dir in sorted((GROCERY / "train").iterdir()):
        (gallery / class_dir.name).mkdir(parents=True)
        for photo in sorted(class_dir.glob("*.jpg"))[:6]:
            (gallery / class_dir.name / photo.name).symlink_to(photo)
    port = free_port()
    env = {**os.environ, "PORT": str(port), "HOST": "127.0.0.1", "DATA_DIR": str(tmp / "data"),
           "GALLERY_DIR": str(gallery), "LOG_LEVEL": "WARNING"}
    query = sorted((GROCERY / "test" / "Red-Delicious").glob("*.jpg"))[2]
    with service([sys.executable, "-m", "app"], env, port, timeout=900), \
            sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": 820})
        page.goto(f"http://127.0.0.1:{port}")
        expect(page.locator("#status")).to_contain_text("Ready", timeout=60_000)
        page.set_input_files("#file-input", str(query))
        expect(page.locator("#results li")).to_have_count(5, timeout=60_000)
        page.wait_for_timeout(1500)  # let the thumbnails load
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(ROOT / "docs" / "web.png"))
        browser.close()
    print("wrote docs/web.png")


if __name__ == "__main__":
    main()
