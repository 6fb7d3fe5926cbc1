"""Plan and apply structured pruning: choose the heads and channels to keep, then cut them out physically.

``plan(model, adapter, scores, pruning_ratio=0.25)`` or ``plan(..., target_params=0.20)`` → :class:`PruningPlan`
``apply(model, adapter, plan)`` → the same model object with smaller weights and the same forward code.

Two ways to say how much (docs/paper.md §4; they are *not* the same number, both are reported):

* **pruning ratio** — the share of heads and of channels removed in each pruned layer (LLM-Pruner's
  ``--pruning_ratio``; the paper's "20 %" LLaMA setting uses 0.25 on layers 4-29);
* **parameter reduction** — the share of *all* model parameters removed (embeddings and skipped layers count in
  the denominator), measured as ``sum(p.numel())`` before and after.

Selection is local, as LLM-Pruner's default: inside each (layer, kind) the lowest-scored groups go. Counts are
whole groups: ``round(ratio * n)`` per group set (per kv block under GQA, so every kv group keeps the same number
of query heads), never leaving a set empty. What a ratio achieves is recorded next to what was asked.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from aeflib.models.adapters import GroupSet, StructureAdapter, StructureError

__all__ = ["PruningPlan", "apply", "count_parameters", "install_static_cache_shapes", "mask_removed", "plan",
           "removal_counts", "static_cache_shapes"]

log = logging.getLogger(__name__)


def count_parameters(model: nn.Module) -> int:
    """Parameters of ``model``, shared (tied) tensors counted once — what ``sum(p.numel())`` reports."""
    return sum(p.numel() for p in model.parameters())


@dataclass
class PruningPlan:
    """Which heads and channels each pruned layer keeps; JSON round-trip restores the int layer keys.

    Attributes:
        keep_heads: ``{layer: kept head-group indices, ascending}``; indices of the group set the plan was made
            on (query heads, or kv groups under ``gqa_mode="kv-groups"``).
        keep_channels: ``{layer: kept MLP channel indices, ascending}``.
        n_heads: ``{layer: head groups before pruning}``; ``n_channels`` likewise.
        head_unit: What one head group is (``"head"``, ``"query head"``, ``"kv group"``).
        criterion: Name of the importance criterion that ranked the groups.
        pruning_ratio: Per-structure ratio used (requested, or solved from ``target_params``).
        target_params: Requested parameter reduction, if the plan was asked that way.
        params_before: Parameters of the dense model (measured).
        expected_params_removed: Parameters the plan removes, from the group shapes.
        params_after: Measured after :func:`apply`; ``None`` until then.
    """

    keep_heads: dict[int, list[int]]
    keep_channels: dict[int, list[int]]
    n_heads: dict[int, int]
    n_channels: dict[int, int]
    head_unit: str
    criterion: str
    pruning_ratio: float
    target_params: float | None
    params_before: int
    expected_params_removed: int
    params_after: int | None = None
    extra: dict = field(default_factory=dict)

    @property
    def layers(self) -> list[int]:
        """Pruned layers, ascending."""
        return sorted(set(self.keep_heads) | set(self.keep_channels))

    @property
    def expected_param_reduction(self) -> float:
        """Share of all parameters the plan removes, from group shapes (before apply)."""
        return self.expected_params_removed / self.params_before

    @property
    def param_reduction(self) -> float | None:
        """Measured share of all parameters removed, once applied."""
        return None if self.params_after is None else 1 - self.params_after / self.params_before

    def achieved_ratio(self, kind: str) -> float:
        """Share of groups of ``kind`` (``"head"``/``"channel"``) removed over the pruned layers."""
        keep, total = (self.keep_heads, self.n_heads) if kind == "head" else (self.keep_channels, self.n_channels)
        n = sum(total[i] for i in keep)
        return 0.0 if n == 0 else 1 - sum(len(v) for v in keep.values()) / n

    def summary(self) -> dict:
        """Requested and achieved numbers, for tables and reports."""
        return {
            "criterion": self.criterion,
            "layers": f"{self.layers[0]}..{self.layers[-1]}" if self.layers else "none",
            "pruning_ratio_requested": None if self.target_params is not None else self.pruning_ratio,
            "pruning_ratio_used": self.pruning_ratio,
            "head_ratio_achieved": round(self.achieved_ratio("head"), 4),
            "channel_ratio_achieved": round(self.achieved_ratio("channel"), 4),
            "target_param_reduction": self.target_params,
            "expected_param_reduction": round(self.expected_param_reduction, 4),
            "param_reduction": None if self.param_reduction is None else round(self.param_reduction, 4),
            "params_before": self.params_before,
            "params_after": self.params_after,
        }

    def to_dict(self) -> dict:
        """Plain-JSON form (layer keys become strings)."""
        d = asdict(self)
        for k in ("keep_heads", "keep_channels", "n_heads", "n_channels"):
            d[k] = {str(i): v for i, v in d[k].items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> PruningPlan:
        """Inverse of :meth:`to_dict`; int layer keys restored."""
        d = dict(d)
        for k in ("keep_heads", "keep_channels", "n_heads", "n_channels"):
            d[k] = {int(i): v for i, v in d[k].items()}
        return cls(**d)

    def save(self, path: str | os.PathLike) -> Path:
        """Write JSON atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "w") as f:
            json.dump(self.to_dict(), f, indent=1)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> PruningPlan:
        """Read a plan written by :meth:`save`."""
        return cls.from_dict(json.loads(Path(path).read_text()))


# ---- how many groups go --------------------------------------------------------------------------------------
def _check_ratio(ratio: float, name: str = "pruning_ratio") -> None:
    if not (isinstance(ratio, int | float) and 0 <= ratio < 1):
        raise ValueError(f"{name}={ratio!r} is outside [0, 1)")


def removal_counts(gs: GroupSet, ratio: float) -> int:
    """Groups removed from ``gs`` at ``ratio``: ``round(ratio * n / blocks)`` per block, at least one kept per block.

    Source: [ours] whole-group rounding (known failure 3); equal per kv block keeps GQA legal (known failure 5).
    """
    per_block = gs.n // gs.blocks
    remove = min(math.floor(ratio * per_block + 0.5), per_block - 1)
    return remove * gs.blocks


def _removed_params(sets: list[GroupSet], ratio: float) -> int:
    return sum(removal_counts(gs, ratio) * gs.params_per_group for gs in sets)


def _solve_ratio(sets: list[GroupSet], target_params: float, total: int) -> float:
    """Smallest ratio whose removal is closest to ``target_params * total`` (the step function is monotone)."""
    goal = target_params * total
    max_removed = _removed_params(sets, 0.999999)
    if goal > max_removed:
        raise ValueError(
            f"target_params={target_params} cannot be reached: pruning these {len(sets)} group sets removes at most "
            f"{max_removed / total:.3f} of {total} parameters; widen the layer range or lower the target"
        )
    grid = torch.linspace(0, 0.999, 4000).tolist()
    removed = [_removed_params(sets, r) for r in grid]
    best = min(range(len(grid)), key=lambda i: (abs(removed[i] - goal), grid[i]))
    return grid[best]


# ---- which groups go -------------------------------------------------------------------------------------------
def _kept(gs: GroupSet, score: torch.Tensor, n_remove: int) -> list[int]:
    """Keep all but the ``n_remove`` lowest-scored groups, the same number from each block."""
    if score.shape != (gs.n,):
        raise ValueError(f"scores for {gs.key} have shape {tuple(score.shape)}, the model has {gs.n} groups there")
    if not torch.isfinite(score).all():
        raise ValueError(f"scores for {gs.key} contain NaN or inf; check the estimator's dtype policy")
    per_block, remove_per_block = gs.n // gs.blocks, n_remove // gs.blocks
    kept: list[int] = []
    for b in range(gs.blocks):
        block = score[b * per_block:(b + 1) * per_block].double()
        order = torch.argsort(block, stable=True)                        # ascending: least important first
        kept += sorted((order[remove_per_block:] + b * per_block).tolist())
    return kept


def plan(
    model: nn.Module,
    adapter: StructureAdapter,
    scores: dict[str, torch.Tensor],
    *,
    pruning_ratio: float | None = None,
    target_params: float | None = None,
    layers: range | list[int] | None = None,
    kinds: tuple[str, ...] = ("head", "channel"),
    criterion: str = "unnamed",
) -> PruningPlan:
    """Choose the heads and channels to keep from one criterion's scores.

    Args:
        model: The model to be pruned (read only).
        adapter: Its structure adapter.
        scores: ``{"<layer>.<kind>": tensor [n_groups]}`` — one criterion of a :class:`~aeflib.scores.Scores`.
        pruning_ratio: Share of heads and channels to remove per pruned layer, in [0, 1).
        target_params: Share of all parameters to remove, in [0, 1); the ratio is solved for. Give exactly one.
        layers: Decoder layers to prune (default: the adapter's, LLM-Pruner's 4..n-2).
        kinds: Which structures to prune: ``"head"``, ``"channel"`` or both.
        criterion: Name recorded in the plan.

    Returns:
        A :class:`PruningPlan` (``params_after`` filled in by :func:`apply`).

    Raises:
        ValueError: Neither or both of ratio/target given, either outside [0, 1), an unknown kind, a target that
            the layer range cannot reach, or scores whose shapes do not fit the model.
        TypeError: ``scores`` is a whole :class:`~aeflib.scores.Scores` rather than one criterion of it.

    Source: [LLM-Pruner code] local (per-layer) ranking, ``block_wise`` head + channel pruning; target solving [ours].
    """
    from aeflib.scores import Scores

    if isinstance(scores, Scores):
        raise TypeError(f"scores is a Scores object with criteria {scores.criteria}; pass one criterion's scores, "
                        f"e.g. scores[{(scores.criteria or ['<criterion>'])[0]!r}]")
    if (pruning_ratio is None) == (target_params is None):
        raise ValueError("give exactly one of pruning_ratio (per-structure share) or target_params (share of all "
                         f"parameters); got pruning_ratio={pruning_ratio}, target_params={target_params}")
    bad = [k for k in kinds if k not in ("head", "channel")]
    if bad or not kinds:
        raise ValueError(f"kinds={kinds!r}: choose from 'head' and 'channel'")
    sets = [gs for gs in adapter.all_group_sets(model, layers) if gs.kind in kinds]
    missing = [gs.key for gs in sets if gs.key not in scores]
    if missing:
        raise ValueError(f"scores lack group sets {missing[:5]}{'...' if len(missing) > 5 else ''}; "
                         "estimate importance on the same layers you prune")
    total = count_parameters(model)
    if target_params is not None:
        _check_ratio(target_params, "target_params")
        pruning_ratio = _solve_ratio(sets, target_params, total)
    _check_ratio(pruning_ratio)
    result = PruningPlan({}, {}, {}, {}, head_unit="head", criterion=criterion, pruning_ratio=float(pruning_ratio),
                         target_params=target_params, params_before=total,
                         expected_params_removed=_removed_params(sets, pruning_ratio))
    for gs in sets:
        kept = _kept(gs, scores[gs.key].float(), removal_counts(gs, pruning_ratio))
        if gs.kind == "head":
            result.keep_heads[gs.layer], result.n_heads[gs.layer], result.head_unit = kept, gs.n, gs.unit
        else:
            result.keep_channels[gs.layer], result.n_channels[gs.layer] = kept, gs.n
    return result


# ---- cutting -------------------------------------------------------------------------------------------------------
def _slice_parameter(block: nn.Module, param_name: str, dim: int, index: torch.Tensor) -> None:
    """Replace ``block.<param_name>`` by its rows/columns ``index`` and fix the owning Linear's features."""
    module_name, _, attr = param_name.rpartition(".")
    module = block.get_submodule(module_name)
    old = getattr(module, attr)
    new = nn.Parameter(old.data.index_select(dim, index.to(old.device)).clone(), requires_grad=old.requires_grad)
    setattr(module, attr, new)
    if isinstance(module, nn.Linear) and attr == "weight":
        module.out_features, module.in_features = new.shape


def _group_sets_by_kind(adapter: StructureAdapter, model: nn.Module, layer: int) -> dict[str, GroupSet]:
    return {gs.kind: gs for gs in adapter.group_sets(model, layer)}


def apply(model: nn.Module, adapter: StructureAdapter, the_plan: PruningPlan) -> nn.Module:
    """Remove every group the plan does not keep, in place; the forward code is unchanged.

    After cutting, the adapter updates the widths the forward reads (GQA group ratio, Bloom head count and ALiBi
    slopes) and :meth:`StructureAdapter.check` verifies every width attribute against the weights.

    Args:
        model: The model the plan was made on (same widths in the planned layers).
        adapter: Its structure adapter.
        the_plan: From :func:`plan`; ``params_after`` is set here from a fresh ``sum(p.numel())``.

    Returns:
        ``model`` itself.

    Raises:
        StructureError: If the model's group counts differ from the plan's (a plan for another model, or a model
            already pruned), or a width check fails afterwards.

    Source: [ours]; the couplings are LLM-Pruner's (``hf_llama_pruner.py``) as written in each adapter.
    """
    layers = adapter.decoder_layers(model)
    for layer in the_plan.layers:
        sets = _group_sets_by_kind(adapter, model, layer)
        widths = adapter.widths(model, layer)
        for kind, keep, n_before in (("head", the_plan.keep_heads, the_plan.n_heads),
                                     ("channel", the_plan.keep_channels, the_plan.n_channels)):
            if layer not in keep:
                continue
            gs = sets[kind]
            if gs.n != n_before[layer]:
                raise StructureError(f"layer {layer} has {gs.n} {gs.unit} groups, the plan was made for "
                                     f"{n_before[layer]}; plans apply once, to the model they were made on")
            kept = torch.tensor(keep[layer], dtype=torch.long)
            for s in gs.slices:
                _slice_parameter(layers[layer], s.param, s.dim, s.positions(kept))
            if kind == "head" and widths.kept_heads:
                # heads are per query head for Bloom (no GQA): compose with what earlier prunes kept
                widths.kept_heads = [widths.kept_heads[i] for i in keep[layer]]
        new = adapter.widths(model, layer)
        new.kept_heads = widths.kept_heads
        adapter.set_widths(model, layer, new)
    adapter.check(model)
    install_static_cache_shapes(model)
    the_plan.params_after = count_parameters(model)
    log.info("pruned %d layers: %d -> %d parameters (%.1f %% removed)", len(the_plan.layers),
             the_plan.params_before, the_plan.params_after, 100 * the_plan.param_reduction)
    return model


def static_cache_shapes(model: nn.Module) -> tuple[list[int], list[int]]:
    """Per decoder layer: the key/value heads and head size a KV cache must hold, read from the weights.

    Returns:
        ``(kv_heads, head_dims)``, one int per decoder layer each (a pruned layer holds fewer heads than the
        config's dense ``num_key_value_heads``).

    Raises:
        ValueError: If no aeflib adapter serves the model type.

    Source: [ours].
    """
    from aeflib.models.registry import adapter_for  # registry imports this module

    widths = adapter_for(model).all_widths(model)
    return [w.n_kv_heads for w in widths], [w.head_dim for w in widths]


class _StaticCacheInitShape:
    """Per-layer stand-in for transformers' ``GenerationMixin._get_static_cache_init_shape`` on one model.

    An object holding the model (not a bound method): ``copy.deepcopy`` and pickle carry it to the copy.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __call__(self):
        dense = type(self.model)._get_static_cache_init_shape(self.model)  # None: transformers initialises lazily
        return None if dense is None else static_cache_shapes(self.model)


def install_static_cache_shapes(model: nn.Module) -> None:
    """Let ``generate(..., cache_implementation="static")`` size each layer's cache from that layer's weights.

    transformers 5 sizes a ``StaticCache`` it initialises up front (``prefill_chunk_size`` set) from the config's
    dense head counts (``GenerationMixin._get_static_cache_init_shape``), so a model pruned to different widths per
    layer failed with ``index_copy_(): Source/destination tensor must have same slice shapes``. Its
    ``StaticCache.early_initialization`` accepts per-layer lists; this installs, on ``model`` alone, a method that
    returns them (:func:`static_cache_shapes`). Weights, config and forward are untouched; ``copy.deepcopy`` and
    pickle carry it to the copy. Done by :func:`apply` and ``aeflib.io.load``; idempotent; a no-op on a model without
    that method (other transformers versions: the lazily initialised cache reads shapes from the first keys).

    Args:
        model: A transformers causal LM an aeflib adapter serves, dense or pruned.

    Source: [ours]; transformers ``cache_utils.StaticCache.early_initialization`` (per-layer lists).
    """
    if hasattr(type(model), "_get_static_cache_init_shape"):
        model._get_static_cache_init_shape = _StaticCacheInitShape(model)


@torch.no_grad()
def mask_removed(model: nn.Module, adapter: StructureAdapter, the_plan: PruningPlan) -> nn.Module:
    """Zero, in place, every weight slice of the groups the plan removes; shapes stay dense.

    The reference for the same-function guarantee: a physically pruned model computes what the dense model
    computes with its removed groups zeroed. Also handy to preview a plan without changing shapes.
    """
    layers = adapter.decoder_layers(model)
    for layer in the_plan.layers:
        sets = _group_sets_by_kind(adapter, model, layer)
        for kind, keep in (("head", the_plan.keep_heads), ("channel", the_plan.keep_channels)):
            if layer not in keep:
                continue
            gs = sets[kind]
            removed = torch.tensor(sorted(set(range(gs.n)) - set(keep[layer])), dtype=torch.long)
            if removed.numel() == 0:
                continue
            for s in gs.slices:
                param = layers[layer].get_parameter(s.param)
                param.index_fill_(s.dim, s.positions(removed).to(param.device), 0.0)
    return model
