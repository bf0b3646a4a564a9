"""The HTML report and the compare page in a real headless Chromium: every image loads, no console errors, no
network, and a screenshot of each (kept in $MBIAS_SCREENSHOT_DIR when set)."""

from __future__ import annotations

import os
import shutil

import pytest

from mbias.cli import main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_report_renders_cleanly_in_chromium(tiny_model_dir, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    cfg = tmp_path / "fast.yaml"
    cfg.write_text("probe_config:\n  mm_shap: {n_permutations: 4}\n  degradation: {draws: 2}\n")
    out = tmp_path / "audit"
    assert main(["audit", "--model", tiny_model_dir("llava"), "--data", "synth:shapes-p90/test-cp", "--out",
                 str(out), "--max-samples", "6", "--config", str(cfg), "--no-progress"]) == 0
    after = tmp_path / "after"  # a second audit to compare with: another image baseline, same samples
    assert main(["audit", "--model", tiny_model_dir("llava"), "--data", "synth:shapes-p90/test-cp", "--out",
                 str(after), "--max-samples", "6", "--config", str(cfg), "--no-progress",
                 "--image-baseline", "noise"]) == 0
    assert main(["report", str(out), "--compare", str(after), "--out", str(tmp_path / "compare.html")]) == 0
    for page_file, min_images in ((out / "report.html", 6), (tmp_path / "compare.html", 4)):
        shot = tmp_path / f"{page_file.stem}.png"
        n_images, broken, errors, requests = _load_in_chromium(playwright, page_file, shot)
        assert n_images >= min_images and broken == [] and errors == [], page_file.name
        assert all(url.startswith(("file:", "data:")) for url in requests), "a report must not touch the network"
        assert shot.stat().st_size > 50_000
        keep = os.environ.get("MBIAS_SCREENSHOT_DIR")
        if keep:
            shutil.copy(shot, os.path.join(keep, shot.name))


def _load_in_chromium(playwright, page_file, shot):
    """(images on the page, the alt texts of those that did not load, console errors, requested URLs)."""
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        errors, requests = [], []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: requests.append(r.url))
        page.goto(page_file.as_uri())
        n_images = page.evaluate("document.images.length")
        broken = page.evaluate("Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0)"
                               ".map(i => i.alt)")
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    return n_images, broken, errors, requests
