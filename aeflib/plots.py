"""Every figure the notebooks and reports show; each sets a title, axis labels with units, and its protocol.

All functions build a ``matplotlib.figure.Figure`` without pyplot (no global state, nothing shown twice) and return
it: a notebook displays the returned figure, ``RunDir.save_figure`` writes it as PNG.

Layout rules, so that a figure reads at JupyterLab's cell width (about 10 inches at 100 dpi): at most 10 inches
wide, text at 10 pt or more, integer ticks on axes that count things (layers, steps, heads), and legends outside the
axes (below them) so that they never cover data.

| function                | shows                                                           | stage |
|-------------------------|-----------------------------------------------------------------|-------|
| structure               | parameters per decoder layer: heads, channels, the rest         | 01    |
| importance_per_layer    | summed importance per layer, one line per criterion (log scale) | 02    |
| importance_scatter      | rank of each group under two criteria, one group set            | 02    |
| agreement               | Spearman / Kendall / removal overlap per layer                  | 02 03 |
| fusion_weights          | α_fine per layer for heads and channels                         | 03    |
| plan_widths             | heads and channels kept per layer                               | 04    |
| loss_curve              | LoRA training loss and validation loss before/after             | 05    |
| metric_bars             | one metric across models/settings (perplexity, accuracy, speed) | 06    |
| zeroshot_intervals      | zero-shot accuracy per task with intervals and chance levels    | 06    |
| comparison              | methods of one sweep: perplexity vs parameter reduction         | aef compare |
| relative_change         | change vs dense (%) of this run and of the published methods    | 07    |

Source: [ours].
"""

from __future__ import annotations

import functools
import math
import textwrap
from collections.abc import Sequence

import matplotlib as mpl
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter, MaxNLocator

from aeflib.fusion import normalize

__all__ = ["agreement", "comparison", "fusion_weights", "importance_per_layer", "importance_scatter", "loss_curve",
           "metric_bars", "plan_widths", "relative_change", "structure", "zeroshot_intervals"]

_KIND_LABEL = {"head": "attention heads", "channel": "MLP channels"}
MAX_WIDTH = 10.0                     # inches: JupyterLab's cell width at 100 dpi; wider figures get scaled down
# point sizes, none under 10 (matplotlib's "small" legend is 8.3 pt)
_RC = {"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "xtick.labelsize": 10, "ytick.labelsize": 10,
       "legend.fontsize": 10, "figure.titlesize": 13}


def _styled(draw):
    """Build the figure under :data:`_RC` (text sizes are fixed when an artist is created; rcParams are restored)."""
    @functools.wraps(draw)
    def wrapper(*args, **kwargs):
        with mpl.rc_context(_RC):
            return draw(*args, **kwargs)
    return wrapper


def _figure(ncols: int = 1, width: float = 6.4, height: float = 3.6, integer_x: bool = True):
    """A constrained-layout figure of ``ncols`` axes in one row, ``width`` inches wide in all (at most MAX_WIDTH)."""
    fig = Figure(figsize=(min(width, MAX_WIDTH), height), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    if integer_x:                                  # layers and steps are whole numbers
        for ax in axes:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig, axes


def _legend(fig: Figure, axes, ncol: int | None = None) -> None:
    """One legend for the whole figure, centred below the axes (never over data); entries deduplicated by label."""
    entries: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            entries.setdefault(label, handle)
    if entries:
        fig.legend(list(entries.values()), list(entries), loc="outside lower center", frameon=False,
                   ncol=ncol or min(len(entries), 4))


def _title(text: str, width: int = 80) -> str:
    """Wrap a long title onto lines of at most ``width`` characters."""
    return textwrap.fill(text, width) if len(text) > width else text


def _layer_ticks(ax, layers: Sequence[int]) -> None:
    """Tick every layer when there are few, else let MaxNLocator pick whole numbers."""
    if 0 < len(layers) <= 16:
        ax.set_xticks(list(layers))


@_styled
def structure(table, model: str = "") -> Figure:
    """Stacked bars of parameters per decoder layer (from :func:`aeflib.analysis.structure_table`).

    The unit follows the size: millions for real models, thousands for the tiny test models.
    """
    fig, (ax,) = _figure()
    layers = table["layer"].tolist() if "layer" in table.columns else table.index.tolist()
    biggest = float((table["head_params"] + table["channel_params"] + table["other_params"]).max())
    scale, unit = (1e6, "millions") if biggest >= 1e6 else (1e3, "thousands")
    bottom = [0.0] * len(layers)
    for column, label in (("head_params", "attention head groups"), ("channel_params", "MLP channel groups"),
                          ("other_params", "not prunable (norms, shared k/v)")):
        values = (table[column] / scale).tolist()
        ax.bar(layers, values, bottom=bottom, label=label)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    _layer_ticks(ax, layers)
    ax.set_title(_title(f"Parameters per decoder layer{f' — {model}' if model else ''}", 60))
    ax.set_xlabel("decoder layer (0-based)")
    ax.set_ylabel(f"parameters ({unit})")
    _legend(fig, [ax], ncol=2)
    return fig


@_styled
def importance_per_layer(scores, criteria: Sequence[str], protocol: str = "") -> Figure:
    """Summed importance of each layer's groups per criterion; heads and channels side by side, log scale.

    Args:
        scores: :class:`~aeflib.scores.Scores`.
        criteria: Criterion names to draw.
        protocol: Calibration description for the title (e.g. ``"10 x 64 tokens, wikipedia, seed 42"``).
    """
    fig, axes = _figure(2, width=9.6, height=3.8)
    for ax, kind in zip(axes, ("head", "channel"), strict=True):
        keys = [k for k in scores.group_keys if k.endswith("." + kind)]
        layers = [int(k.split(".")[0]) for k in keys]
        for c in criteria:
            ax.plot(layers, [max(scores[c][k].sum().item(), 1e-30) for k in keys], marker="o", ms=4, label=c)
        ax.set_yscale("log")
        _layer_ticks(ax, layers)
        ax.set_title(f"{_KIND_LABEL[kind]}")
        ax.set_xlabel("decoder layer (0-based)")
        ax.set_ylabel("summed importance (log scale)")
    _legend(fig, axes, ncol=min(len(criteria), 5))
    fig.suptitle(_title(f"Importance per layer{f' — calibration {protocol}' if protocol else ''}"))
    return fig


@_styled
def importance_scatter(scores, a: str, b: str, key: str) -> Figure:
    """Rank of every group of one set under criteria ``a`` (x) and ``b`` (y); the diagonal is full agreement."""
    fig, (ax,) = _figure(width=5.2, height=4.6, integer_x=False)
    x, y = normalize(scores[a][key], "rank"), normalize(scores[b][key], "rank")
    ax.scatter(x.tolist(), y.tolist(), s=10, alpha=0.6)
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set_aspect("equal")
    layer, kind = key.split(".")
    ax.set_title(f"Ranks of layer {layer} {_KIND_LABEL[kind]}:\n{a} vs {b}")
    ax.set_xlabel(f"rank under {a} (0 = least important)")
    ax.set_ylabel(f"rank under {b} (0 = least important)")
    return fig


@_styled
def agreement(table, a: str, b: str, pruning_ratio: float) -> Figure:
    """Spearman, Kendall and removal-set overlap per layer (from :func:`aeflib.analysis.agreement`)."""
    fig, axes = _figure(2, width=9.6, height=3.8)
    for ax, kind in zip(axes, ("head", "channel"), strict=True):
        part = table[table["kind"] == kind]
        for column, label in (("spearman", "Spearman ρ"), ("kendall", "Kendall τ-b"),
                              ("overlap", f"overlap of removal sets at ratio {pruning_ratio:.2f}")):
            ax.plot(part["layer"], part[column], marker="o", ms=4, label=label)
        ax.set_ylim(-1.05, 1.05)
        ax.axhline(0, color="grey", lw=0.6)
        _layer_ticks(ax, part["layer"].tolist())
        ax.set_title(_KIND_LABEL[kind])
        ax.set_xlabel("decoder layer (0-based)")
        ax.set_ylabel("correlation or share (−1 to 1)")
    _legend(fig, axes, ncol=3)
    fig.suptitle(_title(f"Agreement of {a} and {b} per layer"))
    return fig


@_styled
def fusion_weights(table, method: str = "") -> Figure:
    """α_fine per layer (left) and the influence it had (right), from :func:`aeflib.analysis.fusion_table`.

    The right panel shows the Spearman correlation of the fused scores with the fine (solid) and the coarse
    (dashed) estimate per layer, when the table has ``rho_fine`` / ``rho_coarse``; α_coarse = 1 − α_fine.
    """
    has_rho = "rho_fine" in table.columns
    fig, axes = _figure(2, width=9.6, height=3.8) if has_rho else _figure()
    ax = axes[0]
    for kind in ("head", "channel"):
        part = table[table["kind"] == kind]
        ax.plot(part["layer"], part["alpha_fine"], marker="o", ms=4, label=_KIND_LABEL[kind])
    ax.axhline(0.5, color="grey", lw=0.6, ls="--", label="equal weights (0.5)")
    layers = sorted(set(table["layer"].tolist()))
    _layer_ticks(ax, layers)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Fusion weight of the fine estimate")
    ax.set_xlabel("decoder layer (0-based)")
    ax.set_ylabel("α_fine (weight of fine estimate)")
    if has_rho:
        ax = axes[1]
        for i, kind in enumerate(("head", "channel")):
            part = table[table["kind"] == kind]
            color = f"C{i}"
            ax.plot(part["layer"], part["rho_fine"], marker="o", ms=4, color=color, label=f"{_KIND_LABEL[kind]}: "
                    "ρ with fine")
            ax.plot(part["layer"], part["rho_coarse"], marker="s", ms=4, ls="--", color=color,
                    label=f"{_KIND_LABEL[kind]}: ρ with coarse")
        _layer_ticks(ax, layers)
        ax.set_ylim(-1.05, 1.05)
        ax.axhline(0, color="grey", lw=0.6)
        ax.set_title("Influence: rank correlation of fused with each")
        ax.set_xlabel("decoder layer (0-based)")
        ax.set_ylabel("Spearman ρ (−1 to 1)")
    fig.suptitle(_title(f"AEF fusion per layer{f' ({method})' if method else ''}"))
    _legend(fig, list(axes), ncol=3)
    return fig


@_styled
def plan_widths(pruning_plan, title: str = "") -> Figure:
    """Groups kept (and removed) per pruned layer of a :class:`~aeflib.pruning.PruningPlan`, one panel per kind.

    The y axes count groups (integer ticks) and say how many each layer had, e.g. ``query heads kept (of 9)``.
    """
    kinds = pruning_plan.kinds
    fig, axes = _figure(len(kinds), width=4.8 * len(kinds), height=3.8)
    axes = list(axes)
    for ax, kind in zip(axes, kinds, strict=True):
        keep, before = pruning_plan.kept(kind), pruning_plan.groups(kind)
        layers = sorted(keep)
        kept = [len(keep[i]) for i in layers]
        removed = [before[i] - len(keep[i]) for i in layers]
        ax.bar(layers, kept, label="kept")
        ax.bar(layers, removed, bottom=kept, label="removed", color="lightgrey")
        _layer_ticks(ax, layers)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 2.5, 5, 10]))  # 0, 25, 50... not 15s
        ax.set_title(_KIND_LABEL.get(kind, kind))
        ax.set_xlabel("decoder layer (0-based)")
        unit = "MLP channel" if kind == "channel" else pruning_plan.units[kind]
        sizes = {before[i] for i in layers}
        ax.set_ylabel(f"{unit}s kept (of {sizes.pop()})" if len(sizes) == 1 else f"{unit}s kept (count)")
    _legend(fig, axes, ncol=2)
    reduction = (pruning_plan.param_reduction if pruning_plan.param_reduction is not None
                 else pruning_plan.expected_param_reduction)
    fig.suptitle(_title(title or (f"Plan by {pruning_plan.criterion}: pruning ratio "
                                  f"{pruning_plan.pruning_ratio:.3f}, parameter reduction {100 * reduction:.1f} %")))
    return fig


@_styled
def loss_curve(train_loss: Sequence[float], val_before: float | None = None, val_after: float | None = None,
               protocol: str = "") -> Figure:
    """LoRA training loss per optimizer step, with the validation loss before and after recovery."""
    fig, (ax,) = _figure()
    ax.plot(range(1, len(train_loss) + 1), list(train_loss), marker="o" if len(train_loss) <= 20 else None, ms=4,
            label="training loss (per step)")
    for value, label, style in ((val_before, "validation before", "--"), (val_after, "validation after", ":")):
        if value is not None and math.isfinite(value):
            ax.axhline(value, ls=style, color="grey" if style == "--" else "black", label=f"{label}: {value:.3f}")
    ax.set_title(_title(f"LoRA recovery{f' — {protocol}' if protocol else ''}", 60))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats/token)")
    _legend(fig, [ax], ncol=3)
    return fig


@_styled
def metric_bars(rows, metric: str, ylabel: str, title: str, tasks: Sequence[str] | None = None) -> Figure:
    """Grouped bars of one metric: x = task, one bar per setting (dense / pruned / recovered).

    Args:
        rows: Long rows (dicts or a DataFrame) with ``setting, metric, task, value`` (see
            :func:`aeflib.analysis.evaluation_rows`).
        metric: Which metric to draw (``"perplexity"``, ``"acc"``...); a prefix match (``"acc"`` takes
            ``acc_norm`` too).
        ylabel: Axis label with the unit.
        title: Title with the protocol.
        tasks: Restrict to these tasks (default: all tasks of the metric, in first-seen order).
    """
    records = rows.to_dict("records") if hasattr(rows, "to_dict") else list(rows)
    picked = [r for r in records if str(r["metric"]).startswith(metric) and (tasks is None or r["task"] in tasks)]
    task_names = list(dict.fromkeys(r["task"] for r in picked))
    settings = list(dict.fromkeys(r["setting"] for r in picked))
    fig, (ax,) = _figure(width=max(5.6, 1.6 * len(task_names) + 2), integer_x=False)
    width = 0.8 / max(len(settings), 1)
    for j, setting in enumerate(settings):
        values = {r["task"]: r["value"] for r in picked if r["setting"] == setting}
        xs = [i + (j - (len(settings) - 1) / 2) * width for i in range(len(task_names))]
        ax.bar(xs, [values.get(t, float("nan")) for t in task_names], width=width, label=setting)
    metric_of = {r["task"]: r["metric"] for r in picked}
    ax.set_xticks(range(len(task_names)), [f"{t}\n({metric_of[t]})" for t in task_names])  # acc vs acc_norm named
    ax.set_title(_title(title, 60))
    ax.set_xlabel("task (metric)")
    ax.set_ylabel(ylabel)
    _legend(fig, [ax])
    return fig


@_styled
def comparison(table, protocol: str = "") -> Figure:
    """Perplexity of each pruned method against its parameter reduction (``aef compare``), dense as a line."""
    fig, (ax,) = _figure(integer_x=False)
    records = table.to_dict("records") if hasattr(table, "to_dict") else list(table)
    for r in records:
        if r["method"] == "dense":
            ax.axhline(r["perplexity"], color="grey", ls="--", label=f"dense: {r['perplexity']:.2f}")
            continue
        ax.scatter([100 * r["param_reduction"]], [r["perplexity"]], s=30)
        ax.annotate(r["method"], (100 * r["param_reduction"], r["perplexity"]), fontsize=10,
                    xytext=(4, 2), textcoords="offset points")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(LogFormatter())                   # 30, 40, 50 rather than 3 x 10^1
    ax.yaxis.set_minor_formatter(LogFormatter(minor_thresholds=(2, 0.5)))
    ax.margins(y=0.12)                                             # room for the labels of the top points
    ax.set_title(_title(f"Pruning criteria compared{f' — {protocol}' if protocol else ''}", 60))
    ax.set_xlabel("parameter reduction (%)")
    ax.set_ylabel("perplexity (log scale)")
    _legend(fig, [ax])
    return fig


@_styled
def relative_change(relative, metric: str = "mean", title: str = "") -> Figure:
    """Change against each model's own dense row (%), one horizontal bar per (model, method), one panel per setting.

    Args:
        relative: Output of :func:`aeflib.paper.relative_to_dense` (columns ``model, setting, method, metric, task,
            change_percent``): this run's rows and the published ones.
        metric: ``"mean"`` (the seven-task average accuracy) or ``"perplexity"``.
        title: Figure title (the run and the published model).

    Raises:
        ValueError: No row of ``metric`` (names the metrics present).

    Source: [ours]; published rows from ``data/paper_results.csv``.
    """
    records = relative.to_dict("records") if hasattr(relative, "to_dict") else list(relative)
    picked = [r for r in records if r["metric"] == metric and r["change_percent"] == r["change_percent"]]
    if not picked:
        raise ValueError(f"no rows of metric {metric!r}; present: {sorted({r['metric'] for r in records})}")
    settings = list(dict.fromkeys(r["setting"] for r in picked))
    n_bars = max(sum(r["setting"] == s for r in picked) for s in settings)
    fig, axes = _figure(ncols=len(settings), width=4.2 * len(settings), height=1.2 + 0.32 * n_bars,
                        integer_x=False)
    models = list(dict.fromkeys(r["model"] for r in picked))
    for ax, setting in zip(axes, settings, strict=True):
        rows = [r for r in picked if r["setting"] == setting]
        labels = [f"{r['method']} ({r['model']}{', ' + r['task'] if metric == 'perplexity' else ''})" for r in rows]
        colours = [f"C{models.index(r['model'])}" for r in rows]
        ax.barh(range(len(rows)), [r["change_percent"] for r in rows], color=colours)
        ax.set_yticks(range(len(rows)), labels)
        ax.invert_yaxis()
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_title(setting)
        ax.set_xlabel("change vs dense (%)" if metric == "mean" else "perplexity change vs dense (%)")
        ax.set_ylabel("method (model)")
    what = "seven-task mean accuracy" if metric == "mean" else "perplexity"
    fig.suptitle(_title(title or f"{what}: change against the same model's dense row", 90))
    return fig


@_styled
def zeroshot_intervals(intervals: dict, title: str) -> Figure:
    """Zero-shot accuracy per task and their average, one bar per model, with intervals and each task's chance level.

    Args:
        intervals: :func:`aeflib.evaluation.paired.zeroshot_intervals` output (accuracies in %).
        title: Title with the protocol (task set, items per task).

    Error bars are the per-task Wilson intervals and the bootstrap interval of the average; a dashed black segment
    over each task marks its chance level (a uniform guess; none drawn where chance is unknown or 0).
    """
    models = list(intervals["models"])
    first = intervals["models"][models[0]]
    tasks = [*first["tasks"], "average"]
    fig, (ax,) = _figure(width=max(5.6, 1.5 * len(tasks) + 2.5), integer_x=False)
    width = 0.8 / max(len(models), 1)
    for j, label in enumerate(models):
        m = intervals["models"][label]
        cells = [m["tasks"].get(t) if t != "average" else m["average"] for t in tasks]
        xs = [i + (j - (len(models) - 1) / 2) * width for i in range(len(tasks))]
        values = [c["value"] if c else math.nan for c in cells]
        err = [[c["value"] - c["lo"] if c else 0 for c in cells], [c["hi"] - c["value"] if c else 0 for c in cells]]
        ax.bar(xs, values, width=width, label=label, yerr=err, capsize=3, error_kw={"lw": 1})
    chances = [first["tasks"][t].get("chance") for t in tasks[:-1]]
    mean_chance = sum(chances) / len(chances) if all(c is not None for c in chances) else None
    drawn = False
    for i, chance in enumerate([*chances, mean_chance]):
        if chance:
            ax.hlines(chance, i - 0.45, i + 0.45, colors="black", linestyles="--", lw=1.2,
                      label=None if drawn else "chance (uniform guess)")
            drawn = True
    metric = {t: first["tasks"][t].get("metric") for t in tasks[:-1]}
    ax.set_xticks(range(len(tasks)), [f"{t}\n({metric[t]})" for t in tasks[:-1]] + ["average\n(mean of tasks)"])
    ax.set_ylim(0, 100)
    ax.set_title(_title(f"{title} — bars: {100 * intervals['level']:.0f} % intervals", 60))
    ax.set_xlabel("task (metric)")
    ax.set_ylabel("accuracy (%)")
    _legend(fig, [ax])
    return fig
