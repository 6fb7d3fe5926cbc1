"""The stage notebooks under nbval (``--nbval-lax`` semantics) with tiny-model parameters.

Choice: the committed notebooks keep the *real* defaults (SmolLM2-135M) because they are what a learner opens on
Binder; nbval cannot inject parameters. So the session fixture ``tiny_llama_run`` first executes all seven notebooks
with papermill and tiny-llama parameters (``RunSettings.tiny``: ratio 0.25, 4 x 32 calibration tokens, 2 LoRA
steps, 4 perplexity windows) into a temporary run folder — that is ``aef run``, also the pipeline smoke test — and
nbval then re-executes each *executed* notebook (its injected-parameters cell included) in a fresh kernel,
comparing the cells tagged ``nbval-check-output`` (group counts, shapes, parameter counts, plans, published
tables) with the papermill outputs. Cells tagged ``nbval-ignore-output`` (timings, paths) are never compared;
``nbval_sanitize.cfg`` masks paths and timings in the rest.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from aeflib.orchestration.settings import STAGE_NAMES as STAGES

pytestmark = pytest.mark.notebooks
SANITIZE = Path(__file__).with_name("nbval_sanitize.cfg")


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
