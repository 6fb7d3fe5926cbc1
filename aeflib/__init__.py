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

__version__ = "0.1.0"

_SUBMODULES = ("data", "evaluation", "fusion", "importance", "io", "models", "orchestration", "paper", "plots",
               "pruning", "recovery", "scores", "widgets")

__all__ = ["__version__", *_SUBMODULES]


def __getattr__(name: str):
    """Import submodules on first use, so ``import aeflib`` stays cheap and ``aeflib.models.load`` just works."""
    if name in _SUBMODULES:
        return importlib.import_module(f"aeflib.{name}")
    raise AttributeError(f"module 'aeflib' has no attribute {name!r}")
