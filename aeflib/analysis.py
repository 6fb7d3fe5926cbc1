"""Tables the notebooks show: model structure, estimator agreement, fusion weights, plans, evaluation rows.

Each function takes aeflib objects and returns a ``pandas.DataFrame`` (or a plain dict) so that a notebook cell is
one call and a display; tables a notebook shows are indexed by something meaningful (layer, quantity), never 0..n.
The statistics are computed here, never in a cell:

* :func:`structure_table` — per decoder layer: head and channel groups and the parameters they own;
* :func:`parameter_table` — where the parameters are (all, decoder layers, outside them, prunable), with shares;
* :func:`as_table` — any ``{name: value}`` mapping (settings, results) as a two-column table instead of a dict;
* :func:`agreement` — per (layer, kind): Spearman and Kendall rank correlation of two criteria and the overlap of
  the groups each would remove at a pruning ratio;
* :func:`fusion_table` — the fusion weights (α_fine, α_coarse) per (layer, kind) and the method's evidence;
* :func:`plan_table`, :func:`plan_summary` — kept heads/channels per layer, requested vs achieved reduction;
* :func:`generate` — a greedy text sample (before/after pruning);
* :func:`evaluation_rows` — perplexity, zero-shot and efficiency results as long rows for ``metrics.json``.

Source: [ours].
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from aeflib.fusion import normalize
from aeflib.pruning import PruningPlan, count_parameters, plan

__all__ = ["agreement", "agreement_summary", "as_table", "evaluation_rows", "evaluation_table", "fusion_table",
           "generate", "kendall", "parameter_summary", "parameter_table", "plan_summary", "plan_table", "score_table",
           "spearman", "structure_table"]


# ---- structure -----------------------------------------------------------------------------------------------------
def structure_table(model: nn.Module, adapter):
    """Per decoder layer: head groups, channel groups and the parameters each kind owns.

    Returns:
        ``pandas.DataFrame`` indexed by ``layer`` with columns ``heads, head_unit, head_params, channels,
        channel_params, other_params`` (norms, and k/v under GQA ``query-heads`` grouping, which pruning leaves as
        they are).
    """
    import pandas as pd

    rows = []
    for i, layer in enumerate(adapter.decoder_layers(model)):
        sets = {gs.kind: gs for gs in adapter.group_sets(model, i)}
        heads, channels = sets["head"], sets["channel"]
        head_params, channel_params = heads.n * heads.params_per_group, channels.n * channels.params_per_group
        total = sum(p.numel() for p in layer.parameters())
        rows.append({"layer": i, "heads": heads.n, "head_unit": heads.unit, "head_params": head_params,
                     "channels": channels.n, "channel_params": channel_params,
                     "other_params": total - head_params - channel_params})
    return pd.DataFrame(rows).set_index("layer")


def parameter_summary(model: nn.Module, adapter, layers: range | None = None) -> dict[str, Any]:
    """Where the parameters are: total, in decoder layers, prunable in ``layers``, outside the layers.

    Args:
        model: Any supported model.
        adapter: Its structure adapter.
        layers: Layers that will be pruned (default: the adapter's range).

    Returns:
        Counts (``int``) and shares (``float`` in [0, 1]) of all parameters, tied tensors counted once.
    """
    layers = range(*adapter.default_layer_range(model)) if layers is None else layers
    total = count_parameters(model)
    in_layers = sum(p.numel() for p in adapter.decoder_layers(model).parameters())
    prunable = sum(gs.n * gs.params_per_group for gs in adapter.all_group_sets(model, layers))
    return {"total": total, "in_decoder_layers": in_layers, "outside_layers": total - in_layers,
            "prunable_in_pruned_layers": prunable, "pruned_layers": f"{layers.start}..{layers.stop - 1}",
            "prunable_share": round(prunable / total, 4), "outside_share": round((total - in_layers) / total, 4)}


def parameter_table(model: nn.Module, adapter, layers: range | None = None):
    """:func:`parameter_summary` as a table a learner reads: one row per place, its parameters and share of all.

    Args:
        model: Any supported model.
        adapter: Its structure adapter.
        layers: Layers that will be pruned (default: the adapter's range).

    Returns:
        ``pandas.DataFrame`` indexed by ``where`` with ``parameters`` (int) and ``share of all (%)``.
    """
    import pandas as pd

    s = parameter_summary(model, adapter, layers)
    places = {"all parameters": s["total"], "in the decoder layers": s["in_decoder_layers"],
              "outside them (embeddings, final norm, LM head)": s["outside_layers"],
              f"prunable groups of layers {s['pruned_layers']}": s["prunable_in_pruned_layers"]}
    return pd.DataFrame({"parameters": list(places.values()),
                         "share of all (%)": [round(100 * v / s["total"], 2) for v in places.values()]},
                        index=pd.Index(list(places), name="where"))


def as_table(mapping: dict[str, Any], *, index: str = "quantity", column: str = "value", digits: int = 4):
    """A ``{name: value}`` mapping as a table (one row per name) — what a notebook shows instead of a raw dict.

    Args:
        mapping: Names and values (settings, results); floats are rounded to ``digits``, ``None`` shows as "—",
            lists and tuples as comma-separated text.
        index: Name of the index (the names).
        column: Name of the value column.
        digits: Decimal places kept for floats.

    Returns:
        ``pandas.DataFrame`` indexed by ``index`` with the single column ``column``.
    """
    import pandas as pd

    def shown(v: Any) -> Any:
        if v is None:
            return "—"
        if isinstance(v, float):
            return round(v, digits)
        if isinstance(v, list | tuple):
            return ", ".join("/".join(map(str, x)) if isinstance(x, list | tuple) else str(shown(x)) for x in v)
        return v

    # object dtype: each value keeps its own form (an all-float column would print every value with 4 decimals)
    return pd.DataFrame({column: [shown(v) for v in mapping.values()]},
                        index=pd.Index([str(k) for k in mapping], name=index), dtype=object)


# ---- rank statistics -------------------------------------------------------------------------------------------------
def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation of two score vectors [n] (average ranks for ties); NaN if either is constant."""
    ra, rb = normalize(a, "rank").double(), normalize(b, "rank").double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = (ra.norm() * rb.norm()).item()
    return float("nan") if den == 0 else (ra @ rb).item() / den


def kendall(a: torch.Tensor, b: torch.Tensor) -> float:
    """Kendall's tau-b of two score vectors [n] (O(n²) pairs; ties handled); NaN if either is constant."""
    sa = torch.sign(a.double()[:, None] - a.double()[None, :])                 # [n, n]
    sb = torch.sign(b.double()[:, None] - b.double()[None, :])                 # [n, n]
    den = math.sqrt((sa.abs().sum() * sb.abs().sum()).item())
    return float("nan") if den == 0 else (sa * sb).sum().item() / den


def agreement(model: nn.Module, adapter, scores, a: str, b: str, pruning_ratio: float):
    """How much two criteria agree, per (layer, kind).

    Args:
        model: The dense model the scores were estimated on.
        adapter: Its structure adapter.
        scores: :class:`~aeflib.scores.Scores` holding criteria ``a`` and ``b``.
        a: First criterion name (its removal set is the reference of ``overlap``).
        b: Second criterion name.
        pruning_ratio: Ratio at which the removal sets are compared (the plan's rounding per kv block applies).

    Returns:
        ``pandas.DataFrame`` with ``layer, kind, groups, spearman, kendall, removed, overlap`` where ``overlap`` is
        the share of the groups ``a`` removes that ``b`` removes too (1 = same choice; NaN when nothing is removed).
    """
    import pandas as pd

    keys = scores.group_keys
    layers = sorted({int(k.split(".")[0]) for k in keys})
    plans = {c: plan(model, adapter, scores[c], pruning_ratio=pruning_ratio, layers=layers, criterion=c)
             for c in (a, b)}
    rows = []
    for key in keys:
        layer, kind = int(key.split(".")[0]), key.split(".")[1]
        n = scores[a][key].numel()
        keep = {c: set(p.keep[key]) for c, p in plans.items()}
        removed = {c: set(range(n)) - keep[c] for c in keep}
        overlap = len(removed[a] & removed[b]) / len(removed[a]) if removed[a] else float("nan")
        rows.append({"layer": layer, "kind": kind, "groups": n, "spearman": round(spearman(scores[a][key],
                                                                                           scores[b][key]), 4),
                     "kendall": round(kendall(scores[a][key], scores[b][key]), 4), "removed": len(removed[a]),
                     "overlap": round(overlap, 4)})
    return pd.DataFrame(rows)


def agreement_summary(tables: dict[str, Any]):
    """Mean Spearman, Kendall and overlap per kind, one row per compared pair.

    Args:
        tables: ``{"<a> vs <b>": agreement table}`` from :func:`agreement`.

    Returns:
        ``pandas.DataFrame`` indexed by ``(pair, kind)`` with ``spearman, kendall, overlap`` (means over layers).
    """
    import pandas as pd

    parts = [t.groupby("kind", sort=False)[["spearman", "kendall", "overlap"]].mean().round(4).reset_index()
             .assign(pair=pair) for pair, t in tables.items()]
    return pd.concat(parts, ignore_index=True).set_index(["pair", "kind"])[["spearman", "kendall", "overlap"]]


def score_table(scores, key: str, criteria: list[str] | None = None):
    """Every criterion's score of each group of one set (``"<layer>.<kind>"``), largest = most important.

    Returns:
        ``pandas.DataFrame`` indexed by group, one column per criterion (raw values, criterion units).
    """
    import pandas as pd

    criteria = criteria or scores.criteria
    frame = pd.DataFrame({c: scores[c][key].tolist() for c in criteria})
    frame.index.name = f"{key} group"
    return frame


# ---- fusion and plans ------------------------------------------------------------------------------------------------
def fusion_table(fusion):
    """Fusion weights per (layer, kind) of a :class:`~aeflib.fusion.FusionResult` (or its ``to_dict()``).

    Returns:
        ``pandas.DataFrame`` with ``layer, kind, alpha_fine, alpha_coarse``, the influence ``rho_fine, rho_coarse``
        (Spearman correlation of the fused scores with each input, :func:`aeflib.fusion.influence`) and, for the
        variants that measure it, the calibration-loss increase of pruning the set by each estimate alone
        (``dloss_fine``, ``dloss_coarse``).
    """
    import pandas as pd

    d = fusion if isinstance(fusion, dict) else fusion.to_dict()
    increase = d.get("details", {}).get("loss_increase", {})
    rho = d.get("influence", {})
    rows = []
    for key, (a_f, a_c) in d["weights"].items():
        layer, kind = key.split(".")
        row = {"layer": int(layer), "kind": kind, "alpha_fine": round(a_f, 4), "alpha_coarse": round(a_c, 4)}
        if key in rho:
            row.update(rho_fine=rho[key][0], rho_coarse=rho[key][1])
        if key in increase:
            row.update(dloss_fine=round(increase[key]["fine"], 5), dloss_coarse=round(increase[key]["coarse"], 5))
        rows.append(row)
    return pd.DataFrame(rows).sort_values(["layer", "kind"], ascending=[True, False]).reset_index(drop=True)


def plan_table(pruning_plan: PruningPlan):
    """Per pruned layer: the groups of each kind before and kept.

    Returns:
        ``pandas.DataFrame`` indexed by ``layer`` with ``<kind>s_before, <kind>s_kept`` per kind of the plan
        (``heads_before, heads_kept, channels_before, channels_kept``); ``None`` where a layer has no such set.
    """
    import pandas as pd

    rows = []
    for i in pruning_plan.layers:
        row: dict[str, Any] = {"layer": i}
        for kind in pruning_plan.kinds:
            key = f"{i}.{kind}"
            row[f"{kind}s_before"] = pruning_plan.n_groups.get(key)
            row[f"{kind}s_kept"] = len(pruning_plan.keep[key]) if key in pruning_plan.keep else None
        rows.append(row)
    return pd.DataFrame(rows).set_index("layer")


#: what each quantity of :meth:`aeflib.pruning.PruningPlan.summary` means (shown beside it; under 50 characters,
#: the width at which pandas cuts a cell)
_SUMMARY_MEANING = {
    "criterion": "criterion that ranked the groups",
    "layers": "decoder layers pruned",
    "pruning_ratio_requested": "ratio asked for (— with a target)",
    "pruning_ratio_used": "share of groups removed per pruned layer",
    "head_ratio_achieved": "share of head groups removed (after rounding)",
    "channel_ratio_achieved": "share of MLP channels removed",
    "target_params": "share of ALL parameters asked for",
    "expected_param_reduction": "share of all parameters the plan removes",
    "param_reduction": "the same, measured by apply",
    "params_before": "parameters of the dense model",
    "params_after": "parameters after pruning",
}


def plan_summary(pruning_plan: PruningPlan):
    """Requested vs achieved, one row per quantity (pruning ratio and parameter reduction are both reported).

    Returns:
        ``pandas.DataFrame`` indexed by ``quantity`` (the keys of ``PruningPlan.summary()``) with ``value`` and
        ``meaning``; ``None`` shows as "—".
    """
    table = as_table(pruning_plan.summary())
    return table.assign(meaning=[_SUMMARY_MEANING.get(k, "") for k in table.index])


# ---- generation --------------------------------------------------------------------------------------------------
@torch.no_grad()
def generate(model: nn.Module, tokenizer, prompt: str, max_new_tokens: int = 24) -> str:
    """Greedy continuation of ``prompt`` (deterministic), without the prompt.

    Args:
        model: A causal LM (dense or pruned).
        tokenizer: Its tokenizer.
        prompt: Text to continue.
        max_new_tokens: Tokens to generate (>= 1).
    """
    device = next(model.parameters()).device
    ids = tokenizer(prompt, return_tensors="pt").to(device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)  # [1, L + new]
    return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


# ---- evaluation rows -------------------------------------------------------------------------------------------------
def evaluation_rows(model: str, setting: str, method: str, *, perplexity=None, zeroshot=None,
                    efficiency=None) -> list[dict[str, Any]]:
    """Long rows (``model, setting, method, metric, task, value, protocol``) from evaluation results.

    The columns are those of ``data/paper_results.csv`` so that notebook 07 can set a run beside the paper.

    Args:
        model: Model name.
        setting: ``"dense"``, ``"no-tune"`` (pruned) or ``"lora"`` (pruned + recovery).
        method: Pruning criterion (``"dense"`` for the dense model).
        perplexity: A :class:`~aeflib.evaluation.PerplexityResult`, a list of them, or None.
        zeroshot: A zero-shot result with ``to_dict()`` (or the dict), or None.
        efficiency: An efficiency result with ``to_dict()`` (or the dict), or None.

    Returns:
        Rows; accuracies are percentages (x100) as in the paper's tables.
    """
    rows: list[dict[str, Any]] = []
    base = {"model": model, "setting": setting, "method": method}
    ppls = [] if perplexity is None else perplexity if isinstance(perplexity, list | tuple) else [perplexity]
    for p in ppls:
        protocol = f"{p.protocol}: {p.seq_len}-token windows, {p.n_windows} of {p.n_windows_available} windows"
        rows.append({**base, "metric": "perplexity", "task": p.dataset, "value": round(p.value, 4),
                     "protocol": protocol})
    if zeroshot is not None:
        rows += _zeroshot_rows(base, zeroshot if isinstance(zeroshot, dict) else zeroshot.to_dict())
    if efficiency is not None:
        rows += _efficiency_rows(base, efficiency if isinstance(efficiency, dict) else efficiency.to_dict())
    return rows


def _zeroshot_rows(base: dict, d: dict) -> list[dict]:
    """Rows of a ``ZeroShotResult.to_dict()``: each task under its named metric, then the plain mean (x100)."""
    protocol = f"{d.get('harness', 'lm-eval')}, 0-shot, task set {d.get('task_set')}, limit {d.get('limit')}"
    if d.get("subset_seed") is not None:
        protocol += f" (items drawn with subset seed {d['subset_seed']})"
    rows = [{**base, "metric": s["metric"], "task": task, "value": round(100 * s["value"], 4),
             "protocol": f"{protocol}, {s.get('split') or 'split not recorded'}, {s.get('n_items')} items"}
            for task, s in d.get("tasks", {}).items()]  # fmt: skip
    if rows and d.get("average") is not None:
        rows.append({**base, "metric": "mean", "task": "average", "value": round(100 * d["average"], 4),
                     "protocol": protocol})
    return rows


def evaluation_table(rows):
    """Pivot long evaluation rows: one row per (metric, task), one column per setting (dense, no-tune, lora).

    The rows mix scales (perplexity ~10⁴ on a random model, accuracy in %, MACs ~10⁹), which pandas would print in
    scientific notation for the whole column; values are shown instead as plain numbers: whole ones as integers,
    the others rounded to 4 decimals (object dtype — a table to read; compute on the rows).
    """
    import pandas as pd

    frame = pd.DataFrame(rows)
    order = list(dict.fromkeys(frame["setting"]))
    table = frame.pivot_table(index=["metric", "task"], columns="setting", values="value", aggfunc="first", sort=False)
    table = table[[s for s in order if s in table.columns]]

    def shown(v):
        if v is None or math.isnan(v):
            return "—"
        return int(v) if float(v).is_integer() else round(float(v), 4)

    # built cell by cell: DataFrame.map would infer float64 again, and pandas prints a float column as 6.4e+06
    return pd.DataFrame([[shown(v) for v in row] for row in table.to_numpy(dtype=float)], index=table.index,
                        columns=table.columns, dtype=object)


def _efficiency_rows(base: dict, d: dict) -> list[dict]:
    """Rows of an ``EfficiencyResult.to_dict()``: MACs per token, then prefill/decode speed and memory per batch."""
    protocol = f"{d.get('device')}, {d.get('dtype')}, prefill {d.get('seq_len')} tokens, median of {d.get('repeats')}"
    rows = [{**base, "metric": "macs_per_token", "task": "efficiency", "value": d["macs_per_token"],
             "protocol": f"analytic, seq_len {d.get('seq_len')}"}]
    for batch, t in d.get("timings", {}).items():
        for metric, value in (("prefill_ms", 1e3 * t["prefill_s"]), ("decode_tokens_per_s", t["decode_tokens_per_s"]),
                              ("peak_mem_delta_mib", t["peak_mem_delta_bytes"] / 2**20)):
            rows.append({**base, "metric": f"{metric}@bs{batch}", "task": "efficiency", "value": round(value, 3),
                         "protocol": f"{protocol}, {d.get('decode_tokens')} decode steps"})
    return rows
