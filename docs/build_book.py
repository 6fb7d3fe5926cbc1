"""Build the book: a static website of one real run's executed notebooks, to read without running anything.

    python docs/build_book.py runs/book build/book      # then open build/book/index.html in a browser

``make docs`` runs the main job first (``aef run --name book`` on the embedded SmolLM2-135M, about 6 minutes on 2
cores) when ``runs/book`` does not exist yet, then calls this script. The pages are the run's executed notebooks
(outputs and figures as the run produced them; widgets appear as the static figures ``aef run`` draws), the run's
``report.md``, and the project's reading pages (glossary, the library, the measured results and performance, what
the paper states, known failures).

Built with mkdocs + mkdocs-jupyter (notebooks are converted, never executed here) and the mkdocs-material theme,
with web fonts off so the site opens offline. The formulas are typeset by MathJax 2.7 from the PyPI package
``jupyter-server-mathjax`` (a dev dependency), copied into the site as ``mathjax/`` and referenced by a relative
path: the book needs no network, and no page loads a script from a CDN (nbconvert's Mermaid loader, which names
one, is dropped from pages without a Mermaid diagram; a page with one is refused). The site is written to a
temporary folder and renamed into place.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

DOCS = Path(__file__).resolve().parent
#: Where the site keeps its copy of MathJax 2.7 (the static files of PyPI ``jupyter-server-mathjax``).
MATHJAX_DIR = "mathjax"
#: MathJax for the notebooks' LaTeX (nbconvert's templates configure MathJax 2), relative to a chapter page
#: (``notebooks/NN_*.html``). ``TeX-AMS-MML_HTMLorMML-full`` is the combined configuration the package ships (TeX
#: input, HTML-CSS output); ``local/aeflib`` is ours, written by :func:`build_book` (the package ships only the
#: STIX-Web fonts, so MathJax must not wait for its default TeX fonts).
MATHJAX = f"../{MATHJAX_DIR}/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full,Safe,local/aeflib"
_MATHJAX_LOCAL_CONFIG = """MathJax.Hub.Config({"HTML-CSS": {availableFonts: [], preferredFont: null,
                                             webFont: "STIX-Web", imageFont: null}});
MathJax.Ajax.loadComplete("[MathJax]/config/local/aeflib.js");
"""
#: nbconvert's lab template adds, to every page, a module script that imports Mermaid from a CDN when the page
#: holds a Mermaid diagram (``.jp-Mermaid``). The book's notebooks hold none: the loader is removed.
_MERMAID_LOADER = re.compile(r'<script type="module">(?:(?!</script>).)*?mermaid(?:(?!</script>).)*?</script>\s*',
                             re.S)
#: Reading pages copied from docs/ (those that exist), with their titles in the navigation.
PAGES = {"glossary.md": "Glossary", "library.md": "The library: stages, API, models",
         "results.md": "Results: estimators and fusions measured", "performance.md": "Performance: time and memory",
         "paper.md": "What the paper states", "known-failures.md": "Known failures"}


def _title(notebook: Path) -> str:
    """The notebook's first markdown heading, e.g. ``02 · Importance: coarse and fine estimates``."""
    for cell in json.loads(notebook.read_text())["cells"]:
        if cell["cell_type"] == "markdown":
            for line in "".join(cell["source"]).splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return notebook.stem


def _index(run_dir: Path, notebooks: list[Path]) -> str:
    report = run_dir / "report.md"
    # the report's summary line: "Model **smollm2-135m** (134,515,008 parameters, ...), method **aef**. Written ..."
    summary = next((line for line in report.read_text().splitlines() if line.startswith("Model ")), "") \
        if report.is_file() else ""
    rows = "\n".join(f"| [{_title(nb)}](notebooks/{nb.name}) |" for nb in notebooks)
    what = summary.split(". Written")[0] if summary else "its settings are in its report"
    return f"""# aeflib — the book

Structured pruning of a language model with **Adaptive Estimation Fusion** (AEF, arXiv
[2403.10799](https://arxiv.org/abs/2403.10799)), built on LLM-Pruner
([2305.11627](https://arxiv.org/abs/2305.11627)), one stage per chapter. Every chapter is a notebook **as it ran** in
one real `aef run` ({what}): the numbers and figures are that run's own, nothing here was typed in by hand.

| chapter |
|---|
{rows}

The run times quoted at the top of each chapter were measured on an idle 2-core machine; this run's own stage times
(and the machine's load while it ran) are in its [report](report.md), which gathers its numbers on one page; the
[glossary](glossary.md) explains the terms (salience, group set, kv group, nats/token, …). The project's measured
[results](results.md) (every estimator and fusion variant over calibration seeds, with paired intervals) and
[performance](performance.md) (time and memory up to the 7B layouts) have their own pages. To run the chapters
yourself, open `notebooks/` in JupyterLab.
"""


def _mathjax_static() -> Path:
    """The MathJax 2.7 files of the installed ``jupyter-server-mathjax`` (its ``static/`` folder)."""
    try:
        import jupyter_server_mathjax
    except ImportError as e:
        raise RuntimeError("the book needs MathJax from the package jupyter-server-mathjax, which is not installed "
                           "in this environment: run `make install-dev` (it is a dev dependency)") from e
    static = Path(jupyter_server_mathjax.__file__).resolve().parent / "static"
    if not (static / "MathJax.js").is_file():
        raise RuntimeError(f"{static}: no MathJax.js in the installed jupyter-server-mathjax; reinstall it "
                           "(make install-dev)")
    return static


def _drop_mermaid_loaders(site: Path) -> None:
    """Remove nbconvert's Mermaid loader (a CDN import) from every page; refuse a page that holds a diagram."""
    for page in site.rglob("*.html"):
        html = page.read_text()
        if "mermaid" not in html:
            continue
        if re.search(r'class="[^"]*\bjp-Mermaid\b', html):
            raise RuntimeError(f"{page.relative_to(site)}: holds a Mermaid diagram, which would need Mermaid from a "
                               "CDN; the book ships no Mermaid (draw the diagram as a figure instead)")
        page.write_text(_MERMAID_LOADER.sub("", html))


def build_book(run_dir: str | Path, site_dir: str | Path) -> Path:
    """Build the static site of run ``run_dir`` into ``site_dir`` (replaced as a whole when the build succeeds).

    Args:
        run_dir: A finished ``aef run`` folder (holds ``notebooks/NN_*.ipynb`` executed, ``report.md``, ``figures/``).
        site_dir: Output folder; ``site_dir/index.html`` is the start page.

    Returns:
        ``site_dir`` as a Path.

    Raises:
        FileNotFoundError: ``run_dir`` has no executed notebooks.
        RuntimeError: jupyter-server-mathjax is not installed, a notebook holds a Mermaid diagram, or mkdocs failed
            (its output is included).
    """
    # absolute paths: mkdocs reads a relative docs_dir from the folder of its config file, which is the temporary one
    run_dir, site_dir = Path(run_dir).resolve(), Path(site_dir).resolve()
    notebooks = sorted((run_dir / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if not notebooks:
        raise FileNotFoundError(f"{run_dir}: no executed notebooks in {run_dir / 'notebooks'}; run `aef run` first "
                                "(make docs does it)")
    mathjax = _mathjax_static()
    site_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=site_dir.parent, prefix=f".{site_dir.name}-") as tmp:
        src = Path(tmp) / "src"
        (src / "notebooks").mkdir(parents=True)
        for nb in notebooks:
            # the notebooks link the reading pages as ../docs/<page>.md (right in the repository); in the book those
            # pages sit at the site root
            text = nb.read_text()
            for page in PAGES:
                text = text.replace(f"../docs/{page}", f"../{Path(page).stem}.html")  # nbconvert keeps .md links
            (src / "notebooks" / nb.name).write_text(text)
        if (run_dir / "figures").is_dir():
            shutil.copytree(run_dir / "figures", src / "figures")
        nav = [{"Start": "index.md"}, {"Chapters": [{_title(nb): f"notebooks/{nb.name}"} for nb in notebooks]}]
        if (run_dir / "report.md").is_file():
            shutil.copy2(run_dir / "report.md", src / "report.md")
            nav.append({"The run's report": "report.md"})
        for page, title in PAGES.items():
            if (DOCS / page).is_file():
                shutil.copy2(DOCS / page, src / page)
                nav.append({title: page})
        (src / "index.md").write_text(_index(run_dir, notebooks))
        # the SVG output's font data is of no use without the SVG output jax, which the package does not ship
        shutil.copytree(mathjax, src / MATHJAX_DIR, ignore=shutil.ignore_patterns("SVG"))
        (src / MATHJAX_DIR / "config" / "local").mkdir(parents=True, exist_ok=True)
        (src / MATHJAX_DIR / "config" / "local" / "aeflib.js").write_text(_MATHJAX_LOCAL_CONFIG)
        config = {
            "site_name": "aeflib — structured pruning with AEF, stage by stage",
            "docs_dir": str(src), "site_dir": str(Path(tmp) / "site"), "use_directory_urls": False,
            "theme": {"name": "material", "font": False},  # no web fonts: the site opens offline
            "markdown_extensions": ["tables", "pymdownx.arithmatex", "pymdownx.details", "admonition"],
            "plugins": [{"mkdocs-jupyter": {"execute": False, "include_source": True, "custom_mathjax_url": MATHJAX,
                                            }}],  # solutions shown with their code
            "extra_javascript": [], "nav": nav,
        }
        (Path(tmp) / "mkdocs.yml").write_text(json.dumps(config))  # JSON is YAML
        done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "-q", "-f", str(Path(tmp) / "mkdocs.yml")],
                              capture_output=True, text=True,
                              env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})  # no theme end-of-life banner
        if done.returncode:
            raise RuntimeError(f"mkdocs build failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        _drop_mermaid_loaders(Path(tmp) / "site")
        if site_dir.exists():
            shutil.rmtree(site_dir)
        (Path(tmp) / "site").rename(site_dir)
    return site_dir


def main() -> None:  # noqa: D103
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", help="a finished `aef run` folder, e.g. runs/book")
    ap.add_argument("site_dir", nargs="?", default="build/book", help="output folder (default: %(default)s)")
    args = ap.parse_args()
    site = build_book(args.run_dir, args.site_dir)
    print(f"book written: open {site / 'index.html'}")


if __name__ == "__main__":
    main()
