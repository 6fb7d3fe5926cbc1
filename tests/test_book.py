"""``make docs``: the book of a real run's executed notebooks builds, every chapter is a page with its figures.

The run is the session's tiny-llama ``aef run`` (the fixture the notebook tests share); ``make docs`` builds the
same from the embedded model's run.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.notebooks

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("build_book", ROOT / "docs" / "build_book.py")
build_book = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build_book)


@pytest.fixture(scope="module")
def book(tiny_llama_run, tmp_path_factory):
    return build_book.build_book(tiny_llama_run.run_dir, tmp_path_factory.mktemp("book") / "site")


def _figures_in(notebook: Path) -> int:
    cells = json.loads(notebook.read_text())["cells"]
    return sum("image/png" in o.get("data", {}) for c in cells for o in c.get("outputs", []))


def test_every_chapter_is_a_page_with_its_figures(tiny_llama_run, book):
    notebooks = sorted((Path(tiny_llama_run.run_dir) / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert len(notebooks) == 7
    index = (book / "index.html").read_text()
    for nb in notebooks:
        page = book / "notebooks" / f"{nb.stem}.html"
        assert page.is_file(), f"no page for {nb.name}"
        assert f"notebooks/{nb.stem}.html" in index, f"the start page does not link {nb.stem}"
        html = page.read_text()
        assert len(re.findall(r"<img[^>]+src=\"data:image/png", html)) >= _figures_in(nb), nb.name
        cells = json.loads(nb.read_text())["cells"]
        assert not [o for c in cells for o in c.get("outputs", []) if o["output_type"] == "error"], nb.name
        assert "Traceback" not in html, f"{nb.name}: a traceback on the page"
    assert sum(_figures_in(nb) for nb in notebooks) >= 7  # the run did draw figures


def test_reading_pages_are_in_the_book(book):
    for page in ("report.html", "glossary.html", "paper.html", "known-failures.html"):
        if page == "glossary.html" and not (ROOT / "docs" / "glossary.md").is_file():
            continue
        assert (book / page).is_file(), page


def test_relative_paths_as_make_docs_passes_them(tiny_llama_run, tmp_path, monkeypatch):
    # `make docs` calls build_book.py runs/book build/book from the repository root: relative paths
    monkeypatch.chdir(tmp_path)
    run_copy = tmp_path / "runs" / "book"
    run_copy.mkdir(parents=True)
    (run_copy / "notebooks").symlink_to(Path(tiny_llama_run.run_dir) / "notebooks")
    site = build_book.build_book("runs/book", "build/book")
    assert (tmp_path / "build" / "book" / "index.html").is_file() and site.is_absolute()
    assert not [p for p in (tmp_path / "build").iterdir() if p.name != "book"], "a temporary folder was left"


def test_a_run_without_notebooks_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="no executed notebooks"):
        build_book.build_book(tmp_path, tmp_path / "site")
    assert not (tmp_path / "site").exists()
