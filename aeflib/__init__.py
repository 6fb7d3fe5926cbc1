"""aeflib — structured LLM pruning with Adaptive Estimation Fusion (AEF), arXiv 2403.10799.

The stages, one module each (the method behind them: ``docs/paper.md``)::

    aeflib.models.load(name)          -> Loaded(model, tokenizer, adapter)
    aeflib.data.calibration(...)      -> LongTensor [N, L] token windows
    adapter.all_group_sets(model)     -> list[GroupSet]   (heads, MLP channels per layer)
    aeflib.importance.estimate(...)   -> Scores
    aeflib.fusion.fuse(scores, ...)   -> FusionResult (fused Scores + fusion weights)
    aeflib.pruning.plan(model, adapter, scores["<criterion>"], ...) -> PruningPlan
    aeflib.pruning.apply(model, adapter, plan) -> the same model object, physically smaller
    aeflib.recovery.lora(...)         -> recovered model
    aeflib.evaluation.*               -> metrics that carry their protocol
"""

from __future__ import annotations

import importlib

from aeflib import io, models, pruning, scores  # the core; io registers its checkpoints with models.load
from aeflib._version import __version__

#: submodules with heavy optional dependencies (matplotlib, papermill, peft, lm-eval ...), imported on first use
_LAZY = ("data", "evaluation", "fusion", "importance", "paper", "pipeline", "plots", "recovery", "widgets")

__all__ = ["__version__", "io", "models", "pruning", "scores", *_LAZY]


def __getattr__(name: str):
    """Import the submodules with heavy optional dependencies on first use (``aeflib.plots`` needs matplotlib)."""
    if name in _LAZY:
        return importlib.import_module(f"aeflib.{name}")
    raise AttributeError(f"module 'aeflib' has no attribute {name!r}")
