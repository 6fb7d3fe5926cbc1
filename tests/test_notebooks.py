"""The stage notebooks under nbval (``--nbval-lax`` semantics) with tiny-model parameters.

Choice: the committed notebooks keep the *real* defaults (SmolLM2-135M) because they are what a learner opens on
Binder; nbval cannot inject parameters. So the session fixture ``tiny_llama_run`` first executes all seven notebooks
with papermill and tiny-llama parameters (``RunSettings.tiny``: ratio 0.25, 4 x 32 calibration tokens, 2 LoRA
steps, 4 perplexity windows) into a temporary run folder — that is ``aef run``, also the pipeline smoke test — and
nbval then re-executes each *executed* notebook (its injected-parameters cell included) in a fresh kernel,
comparing the cells tagged ``nbval-check-output`` (group counts, shapes, parameter counts, plans, published
tables) with the papermill outputs. Cells tagged ``nbval-ignore-output`` (timings, paths) are never compared;
``nbval_sanitize.cfg`` masks paths and timings in the rest.

``make docs``: the book of the same executed notebooks builds, every chapter a page with its figures. Every test that
reads the tiny-llama run lives in this file, so that ``make test`` (two workers, ``--dist loadfile``) runs the
notebook sequence once.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from conftest import check_run_smoke

from aeflib.orchestration.settings import STAGE_NAMES as STAGES

pytestmark = pytest.mark.notebooks
SANITIZE = Path(__file__).with_name("nbval_sanitize.cfg")
ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("build_book", ROOT / "docs" / "build_book.py")
build_book = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build_book)


@pytest.fixture(scope="module")
def tiny_llama_run(tmp_path_factory):
    """The whole notebook sequence (01-07) on tiny-llama, executed once with papermill (``aef run``)."""
    from aeflib.orchestration.runner import run
    from aeflib.orchestration.settings import RunSettings

    return run(RunSettings.tiny("tiny-llama"), name="tiny-llama", runs_root=tmp_path_factory.mktemp("runs"))


def test_run_whole_sequence_on_tiny_llama(tiny_llama_run):
    check_run_smoke(tiny_llama_run, "tiny-llama")


def test_run_records_every_stage_peak_memory_and_reports_it(tiny_llama_run):
    metrics = json.loads((tiny_llama_run.run_dir / "metrics.json").read_text())
    assert list(metrics["memory"]) == list(STAGES)
    report = (tiny_llama_run.run_dir / "report.md").read_text()
    for stage in STAGES:
        peak = metrics["memory"][stage]["peak_rss_mib"]
        assert 100 < peak < 4096, (stage, peak)                  # a kernel with torch loaded, well below 4 GiB
        assert re.search(rf"^\| {stage} \| ran \| [\d.,]+ \| [\d.,]+ \| {peak:,.0f} \| \[notebook\]", report, re.M)


@pytest.mark.parametrize("stage", STAGES)
def test_notebook_records_its_peak_last_and_ends_telling_the_learner_to_shut_down_the_kernel(stage):
    nb = nbformat.read(ROOT / "notebooks" / f"{stage}.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code[-1].source.strip() == f'run.record_peak_memory("{stage}")'
    assert "nbval-ignore-output" in code[-1].metadata.get("tags", [])
    assert nb.cells[-1].cell_type == "markdown" and "Kernel → Shut Down Kernel" in nb.cells[-1].source


def executed(run, stage: str):
    return nbformat.read(run.run_dir / "notebooks" / f"{stage}.ipynb", as_version=4)


def text_of(cell) -> str:
    parts = []
    for o in cell.outputs:
        parts.append(o.get("text", "") if o.output_type == "stream" else o.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def checked_cells(nb):
    return [c for c in nb.cells if "nbval-check-output" in c.metadata.get("tags", [])]


def test_papermill_outputs_show_the_tiny_model_structure(tiny_llama_run):
    nb = executed(tiny_llama_run, "01_model_and_structures")
    shown = "\n".join(text_of(c) for c in checked_cells(nb))
    assert "all parameters" in shown and "6455872" in shown  # tiny-llama: 4 layers, hidden 64, vocab 49152
    assert "layer 1 head 0:" in shown and "self_attn.o_proj.weight: columns 0..15 (16)" in shown
    assert "LayerWidths(n_heads=4, n_kv_heads=4, head_dim=16, n_channels=128" in shown
    nb = executed(tiny_llama_run, "02_importance")
    assert "torch.Size([4, 32])" in "\n".join(text_of(c) for c in checked_cells(nb))


def test_papermill_plan_matches_plan_json(tiny_llama_run):
    plan = json.loads((tiny_llama_run.run_dir / "plan.json").read_text())
    kept = {kind: {k.split(".")[0]: len(v) for k, v in plan["keep"].items() if k.endswith(f".{kind}")}
            for kind in ("head", "channel")}
    assert kept["head"] == {"1": 3, "2": 3}
    assert kept["channel"] == {"1": 96, "2": 96}
    shown = "\n".join(text_of(c) for c in checked_cells(executed(tiny_llama_run, "04_pruning")))
    assert str(plan["params_after"]) in shown and "0.25" in shown


@pytest.mark.parametrize("stage", STAGES)
def test_papermill_outputs_have_no_errors_and_no_walls_of_log(tiny_llama_run, stage):
    nb = executed(tiny_llama_run, stage)
    for i, cell in enumerate(nb.cells):
        for o in cell.get("outputs", []):
            assert o.output_type != "error", f"cell {i}: {o.get('ename')}"
            if o.output_type == "stream" and o.name == "stderr":
                assert not re.search(r"\d+it/s|it/s\]|%\|", o.text), f"cell {i} shows a progress bar"
        streamed = sum(o.text.count("\n") for o in cell.get("outputs", []) if o.output_type == "stream")
        assert streamed <= 12, f"cell {i} prints {streamed} lines"


def test_nbval_lax_reproduces_checked_outputs(tiny_llama_run):
    run_dir = tiny_llama_run.run_dir
    notebooks = [str(run_dir / "notebooks" / f"{s}.ipynb") for s in STAGES]
    cmd = [sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-current-env", "--nbval-sanitize-with",
           str(SANITIZE), "-p", "no:cacheprovider", "-q", "--rootdir", str(run_dir), "-o", "addopts=",
           "-W", "ignore::DeprecationWarning", *notebooks]
    result = subprocess.run(cmd, cwd=run_dir, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert re.search(r"\d+ passed", result.stdout)


# ---- the book (make docs) of the same run -------------------------------------------------------------------------
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
    for page in ("report.html", "glossary.html", "paper.html", "known-failures.html", "results.html",
                 "performance.html", "library.html"):
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


def test_build_book_serves_mathjax_from_the_site_not_a_cdn(book):
    assert (book / "mathjax" / "MathJax.js").is_file()
    assert (book / "mathjax" / "config" / "local" / "aeflib.js").is_file()
    remote_load = re.compile(r"<(?:script|link)\b[^>]*\b(?:src|href)=\"(?:https?:)?//[^\"]+\""
                             r"|import\(\s*[\"'](?:https?:)?//[^\"']+")
    for page in book.rglob("*.html"):
        found = remote_load.findall(page.read_text())
        assert not found, f"{page.relative_to(book)} loads from the network: {found[:3]}"
    chapter = (book / "notebooks" / "02_importance.html").read_text()
    assert '<script src="../mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full,Safe,local/aeflib">' in chapter


def test_build_book_without_jupyter_server_mathjax_is_refused(tmp_path, monkeypatch):
    (tmp_path / "run" / "notebooks").mkdir(parents=True)
    (tmp_path / "run" / "notebooks" / "02_importance.ipynb").write_bytes((ROOT / "notebooks" / "02_importance.ipynb")
                                                                         .read_bytes())
    monkeypatch.setitem(sys.modules, "jupyter_server_mathjax", None)      # import fails as if not installed
    with pytest.raises(RuntimeError, match="needs MathJax from the package jupyter-server-mathjax.*make install-dev"):
        build_book.build_book(tmp_path / "run", tmp_path / "site")
    assert not (tmp_path / "site").exists()


def test_drop_mermaid_loaders_removes_the_cdn_loader_and_refuses_a_diagram(tmp_path):
    loader = ('<script type="module">\n  document.addEventListener("DOMContentLoaded", async () => {\n'
              '    const d = document.querySelectorAll(".jp-Mermaid > pre.mermaid");\n'
              '    const mermaid = (await import("https://cdnjs.cloudflare.com/ajax/libs/mermaid/11.10.0/x.mjs"));\n'
              '  });\n</script>\n')
    page = tmp_path / "a.html"
    page.write_text(f"<head>{loader}<script>keep()</script></head><body>text</body>")
    build_book._drop_mermaid_loaders(tmp_path)
    assert page.read_text() == "<head><script>keep()</script></head><body>text</body>"
    page.write_text(f'<head>{loader}</head><body><div class="jp-Mermaid"><pre class="mermaid">a-->b</pre></div>')
    with pytest.raises(RuntimeError, match=r"a\.html: holds a Mermaid diagram"):
        build_book._drop_mermaid_loaders(tmp_path)
