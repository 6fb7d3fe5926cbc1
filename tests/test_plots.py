"""aeflib.plots: every figure is a Figure with a title, axis labels with units, drawn from the objects it is given."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from conftest import uniform_scores
from matplotlib.container import BarContainer
from matplotlib.figure import Figure
from matplotlib.text import Text

import aeflib.models
import aeflib.paper
import aeflib.pruning
from aeflib import analysis, plots, widgets
from aeflib.scores import Scores


@pytest.fixture(scope="module")
def llama():
    return aeflib.models.load("tiny-llama")


@pytest.fixture(scope="module")
def scores(llama):
    model, _, adapter = llama
    gen = torch.Generator().manual_seed(1)
    values = {c: {k: v + torch.rand(v.shape, generator=gen) for k, v in uniform_scores(model, adapter).items()}
              for c in ("vector", "element1", "element2", "aef")}
    return Scores(values, {})


def titled(fig: Figure) -> str:
    return (fig._suptitle.get_text() if fig._suptitle else "") + " ".join(ax.get_title() for ax in fig.axes)


def assert_labelled(fig: Figure) -> None:
    assert isinstance(fig, Figure)
    assert titled(fig).strip(), "figure has no title"
    for ax in fig.axes:
        assert ax.get_xlabel() and ax.get_ylabel(), f"axes {ax.get_title()!r} lack a label"


@pytest.fixture(scope="module")
def figures(llama, scores):
    model, _, adapter = llama
    agree = analysis.agreement(model, adapter, scores, "element2", "vector", 0.25)
    weights = analysis.fusion_table({"weights": {k: (0.7, 0.3) for k in scores.group_keys}, "details": {},
                                     "influence": {k: (0.9, 0.4) for k in scores.group_keys}})
    pruning_plan = aeflib.pruning.plan(model, adapter, scores["aef"], pruning_ratio=0.25, criterion="aef")
    rows = [{"setting": s, "metric": m, "task": t, "value": v} for s, m, t, v in (
        ("dense", "perplexity", "wikipedia", 30.0), ("no-tune", "perplexity", "wikipedia", 41.0),
        ("dense", "acc_norm", "aef_qa", 40.0), ("no-tune", "acc", "aef_cloze", 20.0))]
    compare = [{"method": "dense", "perplexity": 30.0, "param_reduction": 0.0},
               {"method": "vector", "perplexity": 50.0, "param_reduction": 0.2},
               {"method": "aef", "perplexity": 45.0, "param_reduction": 0.2}]
    figures = [
        plots.structure(analysis.structure_table(model, adapter), "tiny-llama"),
        plots.importance_per_layer(scores, ["vector", "element1"], "4 x 32 tokens"),
        plots.importance_scatter(scores, "vector", "element2", "1.channel"),
        plots.agreement(agree, "element2", "vector", 0.25),
        plots.fusion_weights(weights, "aef-layer"),
        plots.plan_widths(pruning_plan),
        plots.loss_curve([3.0, 2.5, 2.2], 3.1, 2.4, "qa, 3 steps"),
        plots.metric_bars(rows, "perplexity", "perplexity", "Perplexity, llm-pruner-128"),
        plots.metric_bars(rows, "acc", "accuracy (%)", "Zero-shot"),
        plots.comparison(compare, "llm-pruner-128, wikipedia"),
        plots.zeroshot_intervals(_intervals(), "Zero-shot, local tasks, 40 items each"),
        widgets.plan_explorer(model, adapter, scores, interactive=False),
    ]
    return figures


def _intervals() -> dict:
    from aeflib.evaluation.paired import zeroshot_intervals

    def table(k_qa, k_cloze):
        ids = list(range(40))
        return {"aef_qa": {"metric": "acc_norm", "doc_ids": ids, "correct": [1] * k_qa + [0] * (40 - k_qa)},
                "aef_cloze": {"metric": "acc", "doc_ids": ids, "correct": [1] * k_cloze + [0] * (40 - k_cloze)}}

    return zeroshot_intervals({"dense": table(24, 20), "pruned": table(12, 18)}, pairs=[("dense", "pruned")], draws=200)


def test_zeroshot_figure_draws_intervals_and_chance():
    fig = plots.zeroshot_intervals(_intervals(), "Zero-shot, local tasks")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["aef_qa\n(acc_norm)", "aef_cloze\n(acc)",
                                                            "average\n(mean of tasks)"]
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert len(bars) == 2 and all(c.errorbar is not None for c in bars)  # one bar set per model, with intervals
    chance = [c for c in ax.collections if c.get_label() == "chance (uniform guess)"]
    assert chance and chance[0].get_segments()[0][0][1] == pytest.approx(25.0)  # aef_qa: 4 answers
    assert "95 % intervals" in titled(fig)


def test_every_plot_returns_a_labelled_figure(figures):
    for fig in figures:
        assert_labelled(fig)


def test_every_plot_reads_at_notebook_width(figures):
    """At most 10 inches wide, no text under 10 pt, and no legend drawn inside the axes (over the data)."""
    for fig in figures:
        fig.draw_without_rendering()                       # creates the tick labels
        name = titled(fig)[:50]
        assert fig.get_figwidth() <= plots.MAX_WIDTH, f"{name}: {fig.get_figwidth()} in wide"
        small = {t.get_text(): t.get_fontsize() for t in fig.findobj(Text) if t.get_text() and t.get_fontsize() < 10}
        assert not small, f"{name}: text under 10 pt {small}"
        assert all(ax.get_legend() is None for ax in fig.axes), f"{name}: legend inside the axes"


def test_units_and_protocol_appear_in_labels(llama, scores):
    fig = plots.metric_bars([{"setting": "dense", "metric": "perplexity", "task": "wikipedia", "value": 3.0}],
                            "perplexity", "perplexity (exp of mean token loss)", "Perplexity, llm-pruner-128")
    assert "llm-pruner-128" in titled(fig)
    fig = plots.loss_curve([1.0], None, None)
    assert "nats" in fig.axes[0].get_ylabel()


def test_plan_widths_bars_equal_kept_and_removed_counts(llama, scores):
    model, _, adapter = llama
    pruning_plan = aeflib.pruning.plan(model, adapter, scores["aef"], pruning_ratio=0.5, criterion="aef")
    fig = plots.plan_widths(pruning_plan)
    heads_ax = fig.axes[0]
    heights = [round(p.get_height()) for p in heads_ax.patches]
    layers = sorted(pruning_plan.kept("head"))
    assert heights[:len(layers)] == [len(pruning_plan.kept("head")[i]) for i in layers]
    assert heights[len(layers):] == [pruning_plan.groups("head")[i] - len(pruning_plan.kept("head")[i]) for i in layers]
    fig.draw_without_rendering()
    assert all(float(t).is_integer() for t in heads_ax.get_yticks()), heads_ax.get_yticks()   # no "2.5 heads"
    assert heads_ax.get_ylabel() == "heads kept (of 4)" and "(of 128)" in fig.axes[1].get_ylabel()


def test_plan_explorer_widget_redraws_without_recomputing_scores(llama, scores):
    model, _, adapter = llama
    box = widgets.plan_explorer(model, adapter, scores, criterion="vector", pruning_ratio=0.25, interactive=True)
    slider, dropdown = box.children[0].children
    label = box.children[1]
    before = label.value
    slider.value = 0.5
    assert label.value != before and "0.50" in label.value
    dropdown.value = "aef"
    assert label.value.startswith("<b>aef")


def test_plan_explorer_rejects_unknown_criterion(llama, scores):
    model, _, adapter = llama
    with pytest.raises(ValueError, match="criterion 'l9' is not in the scores"):
        widgets.plan_explorer(model, adapter, scores, criterion="l9", interactive=False)


def test_relative_change_figure_has_one_panel_per_setting_and_the_published_bars():
    published = aeflib.paper.load_paper_results(model="llama-7b")
    ours = pd.DataFrame([
        {"model": "tiny-llama", "setting": s, "method": m, "metric": "mean", "task": "average", "value": v,
         "source": "this run"} for s, m, v in (("dense", "dense", 50.0), ("no-tune", "aef", 45.0))])
    headline = aeflib.paper.side_by_side(ours, published, metrics=("perplexity", "mean"))
    relative = aeflib.paper.relative_to_dense(headline)
    fig = plots.relative_change(relative, title="tiny-llama beside llama-7b")
    assert_labelled(fig)
    panels = [ax.get_title() for ax in fig.axes]
    assert panels[0] == "no-tune" and "lora" in panels
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert "aef (tiny-llama)" in labels and "element1 (llama-7b)" in labels
    bar = fig.axes[0].patches[labels.index("aef (tiny-llama)")]
    assert bar.get_width() == pytest.approx(-10.0)  # 45 against 50: −10 %
    with pytest.raises(ValueError, match="no rows of metric 'nope'"):
        plots.relative_change(relative, metric="nope")
