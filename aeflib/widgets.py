"""ipywidgets explorers for the notebooks; each degrades to a static figure when there is no live frontend.

``plan_explorer(model, adapter, scores)`` — a pruning-ratio slider and a criterion dropdown that redraw the per-layer
plan (heads and channels kept) and the parameter count live. It only calls :func:`aeflib.pruning.plan` on saved
scores, which costs milliseconds: no gradient, no model change. Under papermill (``interactive=False`` in the
notebook's parameters cell) it returns the static figure of the given ratio and criterion instead.

Source: [ours].
"""

from __future__ import annotations

import copy
import logging

from torch import nn

from aeflib import plots
from aeflib.pruning import plan

__all__ = ["plan_explorer"]

log = logging.getLogger(__name__)


def _describe(p) -> str:
    """One line: criterion, ratio, parameters before → after, and the shares removed (the UI test reads it)."""
    after = p.params_before - p.expected_params_removed
    shares = " and ".join(f"{kind}s {100 * p.achieved_ratio(kind):.0f} %" for kind in p.kinds)
    return (f"{p.criterion}: pruning ratio {p.pruning_ratio:.2f} · {p.params_before:,} → {after:,} parameters "
            f"({100 * p.expected_param_reduction:.1f} % of all removed; {shares} removed in the pruned layers)")


def plan_explorer(model: nn.Module, adapter, scores, *, criterion: str | None = None,
                  criteria: list[str] | None = None, pruning_ratio: float = 0.25,
                  layers: range | list[int] | None = None, interactive: bool = True):
    """Explore plans over pruning ratios and criteria from saved scores.

    Args:
        model: The dense model the scores belong to (read only: group shapes and the parameter count).
        adapter: Its structure adapter.
        scores: :class:`~aeflib.scores.Scores` (e.g. ``Scores.load(run / "scores.safetensors")``).
        criterion: Criterion shown first (default: the last one in ``scores``, the fused one after stage 03).
        criteria: Choices of the dropdown (default: all criteria in ``scores``).
        pruning_ratio: Ratio shown first, in [0, 1) (the slider spans 0 to 0.9).
        layers: Pruned layers (default: those the scores cover).
        interactive: False (papermill, static export) → return the static figure of ``pruning_ratio``.

    Returns:
        An ``ipywidgets.VBox`` (interactive) or a ``matplotlib.figure.Figure`` (static).

    Raises:
        ValueError: If ``criterion`` is not in ``scores`` (lists those present) or the ratio is outside [0, 1).
    """
    criteria = list(criteria or scores.criteria)
    criterion = criterion or criteria[-1]
    if criterion not in scores.criteria:
        raise ValueError(f"criterion {criterion!r} is not in the scores; present: {scores.criteria}")
    if not 0 <= pruning_ratio < 1:
        raise ValueError(f"pruning_ratio={pruning_ratio} is outside [0, 1)")
    if layers is None:
        layers = sorted({int(k.split(".")[0]) for k in scores.group_keys})

    def make(ratio: float, name: str):
        return plan(model, adapter, scores[name], pruning_ratio=ratio, layers=layers, criterion=name)

    if interactive:
        try:
            import ipywidgets as w
            from IPython.display import display
        except ImportError:  # pragma: no cover - ipywidgets is a dependency
            log.warning("ipywidgets is not installed; showing a static figure")
            interactive = False
    if not interactive:
        p = make(pruning_ratio, criterion)
        return plots.plan_widths(p, title=_describe(p))

    # The notebook prunes `model` in place right after showing the explorer; plans must keep describing the dense
    # model the scores belong to, so the live widget works on its own copy.
    model = copy.deepcopy(model)
    slider = w.FloatSlider(value=min(pruning_ratio, 0.9), min=0.0, max=0.9, step=0.05, description="pruning ratio",
                           continuous_update=False, readout_format=".2f", style={"description_width": "initial"})
    dropdown = w.Dropdown(options=criteria, value=criterion, description="criterion")
    label = w.HTML()
    out = w.Output()

    def update(_change=None) -> None:
        p = make(slider.value, dropdown.value)
        label.value = f"<b>{_describe(p)}</b>"
        with out:
            out.clear_output(wait=True)
            display(plots.plan_widths(p))

    slider.observe(update, "value")
    dropdown.observe(update, "value")
    update()
    return w.VBox([w.HBox([slider, dropdown]), label, out])
