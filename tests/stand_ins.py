"""Stand-in stage notebooks for the runner's tests: a parameters cell like the real ones and one body cell."""

from __future__ import annotations

from pathlib import Path

import nbformat


def write_stand_in(folder: Path, stage: str, body: str) -> None:
    """Write ``folder/<stage>.ipynb``: parameters (model, seed, run_dir, progress), imports, then ``body``."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell('model = "x"\nseed = 42\nrun_dir = "."\nprogress = True')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell("from pathlib import Path\nimport time"),
                nbformat.v4.new_code_cell(body)]
    nbformat.write(nb, folder / f"{stage}.ipynb")
