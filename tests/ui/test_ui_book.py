"""The book's formulas typeset in a real browser with the network blocked (``make test-ui``).

Builds the book (``docs/build_book.py``) from the committed notebooks 02 and 03 — the chapters that derive the
estimators and the fusion formulas; their LaTeX lives in markdown cells, so no run is needed — opens each chapter
from disk in headless Chromium with every request that is not a ``file:`` URL aborted, and checks that MathJax
typeset every formula (no raw ``$...$`` left in the page text, no MathJax error) and that the page asked for nothing
beyond the site itself. A screenshot of the first display formula of each chapter goes to the screenshot folder.

Skipped unless ``AEFLIB_UI_TESTS=1`` (``make test-ui`` sets it).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ui,
              pytest.mark.skipif(os.environ.get("AEFLIB_UI_TESTS") != "1",
                                 reason="browser test: run `make test-ui` (sets AEFLIB_UI_TESTS=1)")]

from ui_harness import CHROMIUM_ARGS, REPORT, VIEWPORT, which_chromium  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = Path(os.environ.get("AEFLIB_NOTEBOOKS", REPO / "notebooks"))
SHOTS = Path(os.environ.get("AEFLIB_UI_SCREENSHOTS", REPO / "runs" / "ui-screenshots")).resolve()
CHAPTERS = ("02_importance", "03_fusion")

# Once MathJax has finished: the formulas it found (tex2jax turns each into a math/tex script beside its output),
# what it rendered, its errors, the font it used, and any $...$ / $$ still in the text a reader sees.
MATH_JS = r"""() => ({
  formulas: document.querySelectorAll('script[type^="math/tex"]').length,
  rendered: document.querySelectorAll('.MathJax, .MathJax_Display').length,
  errors: document.querySelectorAll('.MathJax_Error, merror').length,
  font: (MathJax.OutputJax['HTML-CSS'] || {}).fontInUse || null,
  raw: (document.querySelector('.jupyter-wrapper').innerText.match(/\$\$|\$[^$\n]{1,60}\$|\\frac|\\sum/g) || [])
       .slice(0, 5),
})"""
MATHJAX_TIMEOUT_MS = 60_000     # MathJax typesets a chapter in about a second; a loaded 2-core box takes longer
MATHJAX_DONE_JS = ("() => window.MathJax && MathJax.Hub && MathJax.isReady && MathJax.Hub.queue.pending === 0 "
                   "&& MathJax.Hub.queue.running === 0")


def _build_book(tmp_path: Path) -> Path:
    spec = importlib.util.spec_from_file_location("build_book", REPO / "docs" / "build_book.py")
    build_book = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build_book)
    run = tmp_path / "run"
    (run / "notebooks").mkdir(parents=True)
    for name in CHAPTERS:
        shutil.copy2(NOTEBOOKS / f"{name}.ipynb", run / "notebooks")
    return build_book.build_book(run, tmp_path / "site")


def test_book_formulas_typeset_with_the_network_blocked(tmp_path):
    chromium = which_chromium()
    assert chromium, "Debian's chromium is not installed (make test-ui installs it)"
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    site = _build_book(tmp_path)
    SHOTS.mkdir(parents=True, exist_ok=True)
    left_the_site, found = [], {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, chromium_sandbox=False,
                                     args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport=VIEWPORT)

            def only_files(route):
                if route.request.url.startswith("file:"):
                    route.continue_()
                else:
                    left_the_site.append(route.request.url)
                    route.abort()

            context.route("**/*", only_files)
            for name in CHAPTERS:
                page = context.new_page()
                page.goto((site / "notebooks" / f"{name}.html").as_uri())
                try:
                    page.wait_for_function(MATHJAX_DONE_JS, timeout=MATHJAX_TIMEOUT_MS)
                except PlaywrightTimeout:
                    found[name] = {"mathjax": page.evaluate("() => typeof window.MathJax")}
                    page.close()
                    continue
                found[name] = page.evaluate(MATH_JS)
                display = page.locator(".MathJax_Display").first
                if display.count():
                    display.scroll_into_view_if_needed()
                    page.screenshot(path=str(SHOTS / f"book-{name}-formula.png"))
                page.close()
        finally:
            browser.close()
    REPORT.append(f"book, network blocked: {found}")
    for name, math in found.items():
        assert "formulas" in math, (f"{name}: MathJax did not finish typesetting within {MATHJAX_TIMEOUT_MS} ms "
                                    f"(window.MathJax is {math['mathjax']}); requests blocked: {left_the_site}")
    assert not left_the_site, f"the book asked the network for {left_the_site}"
    for name, math in found.items():
        assert math["formulas"] >= 5, f"{name}: MathJax found {math['formulas']} formulas: {math}"
        assert math["rendered"] >= math["formulas"] and not math["errors"], f"{name}: {math}"
        assert not math["raw"], f"{name}: LaTeX source shown as text: {math['raw']}"
        assert math["font"] == "STIX-Web", f"{name}: MathJax fell back to font {math['font']!r}"
