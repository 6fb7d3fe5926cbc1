"""Compound steps the stage notebooks call in one line: method names, ratio solving, evaluation, metric sections.

The notebooks' code cells stay "a few aeflib calls and a display"; whatever needs a branch or a loop lives here:

* :func:`fusion_method` — what ``method="aef"`` or ``"vector"`` means for stages 03-04;
* :func:`solve_ratio` — the per-structure pruning ratio a parameter target implies (fusion judges removals at it);
* :func:`evaluate` — perplexity on each corpus, zero-shot and efficiency of one model, as rows + raw results;
* :func:`model_section`, :func:`importance_section`, :func:`fusion_section` — the ``metrics.json`` sections.

Source: [ours].
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from aeflib import pruning
from aeflib.analysis import evaluation_rows
from aeflib.evaluation import perplexity
from aeflib.evaluation.efficiency import efficiency
from aeflib.evaluation.zeroshot import zeroshot
from aeflib.fusion import FUSIONS
from aeflib.importance import ESTIMATORS
from aeflib.models.checksum import checksum
from aeflib.pruning import count_parameters, plan

__all__ = ["METHODS", "Evaluation", "evaluate", "fusion_method", "fusion_section",
           "importance_section", "model_section", "solve_ratio"]

log = logging.getLogger(__name__)

#: every value the ``method`` parameter accepts: a single estimator, or AEF (alias or a named variant)
METHODS = (*ESTIMATORS, "aef", *(m for m in FUSIONS if m != "fixed"))


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {list(METHODS)}")


def fusion_method(method: str) -> str:
    """The fusion stage 03 runs: ``method`` itself when it is an AEF variant, else ``"aef"`` (shown for teaching).

    Raises:
        ValueError: If ``method`` is not in :data:`METHODS`.
    """
    _check_method(method)
    return method if method == "aef" or method in FUSIONS else "aef"


def solve_ratio(model: nn.Module, adapter, scores, *, pruning_ratio: float | None = None,
                target_params: float | None = None, layers=None) -> float:
    """The per-structure pruning ratio of the run: ``pruning_ratio`` as given, or solved from ``target_params``.

    The solution depends only on group shapes, not on the scores (any criterion gives the same ratio).

    Raises:
        ValueError: As :func:`aeflib.pruning.plan` (neither or both given, out of range, unreachable target).
    """
    if (pruning_ratio is None) == (target_params is None):
        raise ValueError("give exactly one of pruning_ratio (per-structure share) or target_params (share of all "
                         f"parameters); got pruning_ratio={pruning_ratio}, target_params={target_params}")
    if target_params is not None:
        return pruning.solve_ratio(model, adapter, target_params, layers=layers)
    first = scores.criteria[0]  # validates the ratio and the scores as plan() does
    return plan(model, adapter, scores[first], pruning_ratio=pruning_ratio, layers=layers,
                criterion=first).pruning_ratio


# ---- metrics.json sections ---------------------------------------------------------------------------------------
def model_section(name: str, model: nn.Module, adapter, layers: range) -> dict[str, Any]:
    """What stage 01 records about the model."""
    widths = adapter.widths(model, layers.start)
    return {"name": str(name), "family": adapter.family, "model_type": model.config.model_type,
            "n_layers": adapter.n_layers(model), "pruned_layers": [layers.start, layers.stop],
            "parameters": count_parameters(model), "checksum": checksum(model),
            "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
            "widths_of_first_pruned_layer": widths.to_dict(), "gqa_mode": adapter.gqa_mode}


def importance_section(scores, agreement_table, fine: str, coarse: str) -> dict[str, Any]:
    """What stage 02 records: how scores were computed and how much fine and coarse agree per kind."""
    means = agreement_table.groupby("kind")[["spearman", "kendall", "overlap"]].mean().round(4)
    return {"criteria": scores.criteria, "meta": scores.meta, "fine": fine, "coarse": coarse,
            "agreement_mean": means.to_dict(orient="index")}


def fusion_section(result, comparisons: dict[str, Any]) -> dict[str, Any]:
    """What stage 03 records: the method, its settings, mean fusion weights and influence per kind, agreement.

    ``mean_influence`` is the mean over layers of the Spearman correlation of the fused scores with each input
    (:func:`aeflib.fusion.influence`): what the weights did to the ranking.
    """
    weights = {kind: [v for k, v in result.weights.items() if k.endswith("." + kind)] for kind in ("head", "channel")}
    mean_fine = {kind: round(sum(a for a, _ in w) / len(w), 4) for kind, w in weights.items() if w}
    rho = {kind: [v for k, v in getattr(result, "influence", {}).items() if k.endswith("." + kind)]
           for kind in ("head", "channel")}
    mean_rho = {kind: {"fine": round(sum(a for a, _ in r) / len(r), 4),
                       "coarse": round(sum(b for _, b in r) / len(r), 4)} for kind, r in rho.items() if r}
    return {"name": result.name, "method": result.method, "settings": result.settings,
            "mean_alpha_fine": mean_fine, "mean_influence": mean_rho,
            "agreement_mean": {versus: t.groupby("kind")[["spearman", "kendall", "overlap"]].mean().round(4)
                               .to_dict(orient="index") for versus, t in comparisons.items()}}


# ---- evaluation ------------------------------------------------------------------------------------------------------
@dataclass
class Evaluation:
    """One model's evaluation: long rows (for tables and ``metrics.json``) and the raw result objects."""

    rows: list[dict[str, Any]]
    perplexity: list = field(default_factory=list)
    zeroshot: Any = None
    efficiency: Any = None

    def to_dict(self) -> dict[str, Any]:
        """Rows plus each raw result's ``to_dict()``, and the zero-shot items (doc ids, 0/1) for paired intervals."""
        items = None
        if self.zeroshot is not None and self.zeroshot.samples is not None:
            items = {t: {k: v[k] for k in ("metric", "doc_ids", "correct")}
                     for t, v in self.zeroshot.item_table().items()}
        return {"rows": self.rows, "perplexity": [p.to_dict() for p in self.perplexity],
                "zeroshot": None if self.zeroshot is None else self.zeroshot.to_dict(), "zeroshot_items": items,
                "efficiency": None if self.efficiency is None else _as_dict(self.efficiency)}


@contextlib.contextmanager
def _silenced(active: bool):
    """Swallow Python-level stdout/stderr (progress bars, notes) of a block when ``active``."""
    if not active:
        yield
        return
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield


def _as_dict(obj: Any) -> Any:
    return obj.to_dict() if hasattr(obj, "to_dict") else obj


def evaluate(model: nn.Module, tokenizer, *, name: str, setting: str, method: str,
             ppl_datasets: list[list[str]] | None = (("wikipedia", "test"),), ppl_protocol: str = "llm-pruner-128",
             ppl_max_windows: int | None = None, zeroshot_tasks: str | list[str] | None = "local",
             zeroshot_limit: int | None = None, efficiency_seq_len: int | None = 128,
             efficiency_decode_tokens: int = 16, efficiency_repeats: int = 0, batch_size: int = 4,
             progress: bool = False) -> Evaluation:
    """Perplexity on every ``[corpus, split]``, zero-shot accuracy and efficiency of one model.

    Args:
        model: Dense, pruned or recovered causal LM.
        tokenizer: Its tokenizer.
        name: Model name recorded in the rows.
        setting: ``"dense"``, ``"no-tune"`` or ``"lora"`` (the columns of the paper's tables).
        method: Pruning criterion, ``"dense"`` for the dense model.
        ppl_datasets: ``[[corpus, split], ...]`` for :func:`aeflib.evaluation.perplexity`; empty/None = skip.
        ppl_protocol: Perplexity protocol name.
        ppl_max_windows: Windows scored per corpus (None = the whole split).
        zeroshot_tasks: ``"paper7-offline"``, ``"paper7"``, ``"local"`` or task names for
            :func:`~aeflib.evaluation.zeroshot.zeroshot`; None = skip.
        zeroshot_limit: Items per task, a seeded subset, the same for every model (None = all).
        efficiency_seq_len: Prompt length of the latency measurement; None = skip efficiency.
        efficiency_decode_tokens: Tokens generated in the decode measurement.
        efficiency_repeats: Timed runs of this model alone (median); 0 (default) = parameters and MACs only.
            Models that one report compares are timed together instead, interleaved, with
            :func:`aeflib.evaluation.compare_latency` (timed one after the other, machine drift passes for a
            difference between them).
        batch_size: Batch of perplexity windows and zero-shot requests.
        progress: tqdm bars.

    Returns:
        :class:`Evaluation`.
    """
    ppl = [perplexity(model, tokenizer, corpus=corpus, split=split, protocol=ppl_protocol, batch_size=batch_size,
                      max_windows=ppl_max_windows, progress=progress) for corpus, split in (ppl_datasets or [])]
    zs = None
    if zeroshot_tasks:

        with _silenced(not progress):  # lm-eval draws its own bars and prints bootstrapping notes
            zs = zeroshot(model, tokenizer, tasks=zeroshot_tasks, limit=zeroshot_limit, batch_size=2 * batch_size,
                          log_samples=True)  # per-item results: intervals and paired differences (notebook 06)
    eff = None
    if efficiency_seq_len:

        eff = efficiency(model, tokenizer, seq_len=efficiency_seq_len, decode_tokens=efficiency_decode_tokens,
                         repeats=efficiency_repeats)
    rows = evaluation_rows(name, setting, method, perplexity=ppl, zeroshot=zs, efficiency=eff)
    rows.append({"model": name, "setting": setting, "method": method, "metric": "parameters", "task": "model",
                 "value": count_parameters(model), "protocol": "sum(p.numel()), tied tensors once"})
    return Evaluation(rows, ppl, zs, eff)
