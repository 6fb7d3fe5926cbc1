"""aeflib — structured LLM pruning with Adaptive Estimation Fusion (AEF), arXiv 2403.10799.

The stages, one module each (the method behind them: ``docs/paper.md``)::

    aeflib.models.load(name)          -> Loaded(model, tokenizer, adapter)
    aeflib.data.calibration(...)      -> LongTensor [N, L] token windows
    adapter.all_group_sets(model)     -> list[GroupSet]   (heads, MLP channels per layer)
    aeflib.importance.estimate(...)   -> Scores
    aeflib.fusion.fuse(scores, ...)   -> FusionResult (fused Scores + fusion weights)
    aeflib.pruning.plan(model, adapter, scores["<criterion>"], ...) -> PruningPlan
    aeflib.pruning.apply(model, adapter, plan) -> the same model object, physically smaller
    aeflib.flap.plan(model, adapter, calib, target_params=0.2) -> FlapPlan; flap.apply(...)  (FLAP, [field])
    aeflib.recovery.lora(...)         -> recovered model
    aeflib.evaluation.*               -> metrics that carry their protocol
"""

from __future__ import annotations

import importlib

# the core, imported in dependency order; io registers its checkpoint format with models.load
from aeflib import activations, data, flap, fusion, importance, io, models, pruning, scores
from aeflib._version import __version__

#: submodules with heavy optional dependencies (matplotlib, pandas, papermill, peft, lm-eval), imported on first use
_LAZY = ("evaluation", "orchestration", "paper", "plots", "recovery", "widgets")

__all__ = ["__version__", "activations", "data", "flap", "fusion", "importance", "io", "models", "pruning", "scores",
           *_LAZY]


def __getattr__(name: str):
    """Import the submodules with heavy optional dependencies on first use (``aeflib.plots`` needs matplotlib)."""
    if name in _LAZY:
        return importlib.import_module(f"aeflib.{name}")
    raise AttributeError(f"module 'aeflib' has no attribute {name!r}")
