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
from dataclasses import MISSING, asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from aeflib.files import write_text
from aeflib.models.adapters import GroupSet, StructureAdapter, adapter_for
from aeflib.scores import Scores
from aeflib.validation import check_layers, check_plan, split_key

__all__ = ["PruningPlan", "apply", "check_plan", "count_parameters", "install_static_cache_shapes", "mask_removed",
           "plan", "removal_counts", "select", "solve_ratio", "split_key", "static_cache_shapes"]

log = logging.getLogger(__name__)


def count_parameters(model: nn.Module) -> int:
    """Parameters of ``model``, shared (tied) tensors counted once — what ``sum(p.numel())`` reports."""
    return sum(p.numel() for p in model.parameters())


@dataclass
class PruningPlan:
    """Which groups each pruned group set keeps, keyed by group-set key ``"<layer>.<kind>"`` (:attr:`GroupSet.key`).

    Attributes:
        keep: ``{"<layer>.<kind>": kept group indices, ascending}``; indices of the group set the plan was made on
            (query heads, or kv groups under ``gqa_mode="kv-groups"``).
        n_groups: ``{"<layer>.<kind>": groups before pruning}``.
        units: ``{kind: what one group is}`` (``{"head": "query head", "channel": "channel"}``).
        criterion: Name of the importance criterion that ranked the groups.
        pruning_ratio: Per-structure ratio used (requested, or solved from ``target_params``).
        target_params: Requested share of all parameters to remove, if the plan was asked that way.
        params_before: Parameters of the dense model (measured).
        expected_params_removed: Parameters the plan removes, from the group shapes.
        gqa_mode: The adapter's GQA mode the group indices refer to (a checkpoint replays the plan with it).
        params_after: Measured after :func:`apply`; ``None`` until then.
    """

    keep: dict[str, list[int]]
    n_groups: dict[str, int]
    units: dict[str, str]
    criterion: str
    pruning_ratio: float
    target_params: float | None
    params_before: int
    expected_params_removed: int
    gqa_mode: str = "query-heads"
    params_after: int | None = None

    @property
    def layers(self) -> list[int]:
        """Pruned layers, ascending."""
        return sorted({split_key(k)[0] for k in self.keep})

    @property
    def kinds(self) -> list[str]:
        """Kinds of group sets the plan was made for, in the adapter's order (``["head", "channel"]``)."""
        return list(self.units)

    def kept(self, kind: str) -> dict[int, list[int]]:
        """``{layer: kept indices}`` of the group sets of ``kind``, by ascending layer."""
        return {split_key(k)[0]: v for k, v in sorted(self.keep.items(), key=lambda kv: split_key(kv[0]))
                if split_key(k)[1] == kind}

    def groups(self, kind: str) -> dict[int, int]:
        """``{layer: groups before pruning}`` of the group sets of ``kind``, by ascending layer."""
        return {split_key(k)[0]: v for k, v in sorted(self.n_groups.items(), key=lambda kv: split_key(kv[0]))
                if split_key(k)[1] == kind}

    @property
    def expected_param_reduction(self) -> float:
        """Share of all parameters the plan removes, from group shapes (before apply)."""
        return self.expected_params_removed / self.params_before

    @property
    def param_reduction(self) -> float | None:
        """Measured share of all parameters removed, once applied."""
        return None if self.params_after is None else 1 - self.params_after / self.params_before

    def achieved_ratio(self, kind: str) -> float:
        """Share of groups of ``kind`` (``"head"``, ``"channel"`` ...) removed over the pruned layers."""
        keys = [k for k in self.keep if split_key(k)[1] == kind]
        n = sum(self.n_groups[k] for k in keys)
        return 0.0 if n == 0 else 1 - sum(len(self.keep[k]) for k in keys) / n

    def summary(self) -> dict:
        """Requested and achieved numbers, for tables and reports (``<kind>_ratio_achieved`` per kind)."""
        return {
            "criterion": self.criterion,
            "layers": f"{self.layers[0]}..{self.layers[-1]}" if self.layers else "none",
            "pruning_ratio_requested": None if self.target_params is not None else self.pruning_ratio,
            "pruning_ratio_used": self.pruning_ratio,
            **{f"{kind}_ratio_achieved": round(self.achieved_ratio(kind), 4) for kind in self.kinds},
            "target_params": self.target_params,
            "expected_param_reduction": round(self.expected_param_reduction, 4),
            "param_reduction": None if self.param_reduction is None else round(self.param_reduction, 4),
            "params_before": self.params_before,
            "params_after": self.params_after,
        }

    def to_dict(self) -> dict:
        """Plain-JSON form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PruningPlan:
        """Inverse of :meth:`to_dict`; also reads the plans aeflib wrote before group-set keys.

        Those (format-1 checkpoints, old ``plan.json``) have ``keep_heads``, ``keep_channels``, ``n_heads``,
        ``n_channels`` and ``head_unit``; they become ``"<layer>.head"`` and ``"<layer>.channel"`` keys.

        Raises:
            ValueError: A dict that is neither form, naming the missing fields.
        """
        d = dict(d)
        if "keep_heads" in d:
            d = _from_layer_dicts(d)
        names = {f.name for f in _FIELDS}
        missing = sorted(f.name for f in _FIELDS if f.name not in d and f.default is MISSING)
        if missing:
            raise ValueError(f"not a pruning plan: fields {missing} are missing")
        d["keep"] = {str(k): [int(i) for i in v] for k, v in d["keep"].items()}
        d["n_groups"] = {str(k): int(v) for k, v in d["n_groups"].items()}
        return cls(**{k: v for k, v in d.items() if k in names})

    def save(self, path: str | os.PathLike) -> Path:
        """Write JSON atomically."""
        return write_text(path, json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike) -> PruningPlan:
        """Read a plan written by :meth:`save`."""
        return cls.from_dict(json.loads(Path(path).read_text()))


_FIELDS = PruningPlan.__dataclass_fields__.values()


def _from_layer_dicts(d: dict) -> dict:
    """A plan dict of aeflib format 1 (per-layer head and channel dicts) in group-set keys."""
    out = {k: v for k, v in d.items() if k not in ("keep_heads", "keep_channels", "n_heads", "n_channels",
                                                     "head_unit", "extra")}
    out["keep"] = {f"{i}.head": v for i, v in d["keep_heads"].items()}
    out["keep"].update({f"{i}.channel": v for i, v in d["keep_channels"].items()})
    out["n_groups"] = {f"{i}.head": v for i, v in d["n_heads"].items()}
    out["n_groups"].update({f"{i}.channel": v for i, v in d["n_channels"].items()})
    out["units"] = {"head": d.get("head_unit", "head"), "channel": "channel"}
    out.setdefault("gqa_mode", "kv-groups" if d.get("head_unit") == "kv group" else "query-heads")
    return out


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


def _group_sets(model: nn.Module, adapter: StructureAdapter, layers, kinds) -> list[GroupSet]:
    """The adapter's group sets of ``layers`` whose kind is in ``kinds`` (default: every kind).

    Raises:
        ValueError: ``layers`` empty (a reversed range), ``kinds`` empty or naming a kind the adapter does not have.
    """
    check_layers(layers)
    sets = adapter.all_group_sets(model, layers)
    available = list(dict.fromkeys(gs.kind for gs in sets)) or ["head", "channel"]
    if kinds is None:
        return sets
    bad = [k for k in kinds if k not in available]
    if bad or not kinds:
        raise ValueError(f"kinds={kinds!r}: choose from {' and '.join(repr(k) for k in available)}")
    return [gs for gs in sets if gs.kind in kinds]


def solve_ratio(model: nn.Module, adapter: StructureAdapter, target_params: float, *,
                layers: range | list[int] | None = None, kinds: tuple[str, ...] | None = None) -> float:
    """The per-structure pruning ratio whose whole-group removal comes closest to ``target_params``.

    The answer depends only on group shapes and the parameter count, never on scores. Among ratios that remove
    equally close to the goal the smallest is returned (the removal is a monotone step function of the ratio).

    Args:
        model: The dense model (read only).
        adapter: Its structure adapter.
        target_params: Share of *all* parameters (embeddings and skipped layers included) to remove, in [0, 1).
        layers: Decoder layers to prune (default: the adapter's, LLM-Pruner's 4..n-2).
        kinds: Kinds of group sets to prune (default: all the adapter has).

    Returns:
        A ratio in [0, 0.999], on a grid of 4000 steps.

    Raises:
        ValueError: ``target_params`` outside [0, 1), a bad kind, or a target the group sets cannot reach.

    Source: [ours].
    """
    _check_ratio(target_params, "target_params")
    sets = _group_sets(model, adapter, layers, kinds)
    total = count_parameters(model)
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
def select(gs: GroupSet, scores: torch.Tensor, n_remove: int) -> list[int]:
    """Keep all but the ``n_remove`` lowest-scored groups of ``gs``, the same number from each block.

    Args:
        gs: The group set.
        scores: Float tensor [gs.n], higher = more important; ties keep the lower index.
        n_remove: Groups to remove, a multiple of ``gs.blocks`` (see :func:`removal_counts`).

    Returns:
        Kept group indices, ascending.

    Raises:
        ValueError: Scores of another shape, NaN or inf scores, or ``n_remove`` outside ``0..n - blocks`` or not a
            multiple of ``gs.blocks``.

    Source: [LLM-Pruner code] local ranking; per-block selection [ours] (known failure 5).
    """
    if scores.shape != (gs.n,):
        raise ValueError(f"scores for {gs.key} have shape {tuple(scores.shape)}, the model has {gs.n} groups there")
    if not torch.isfinite(scores).all():
        raise ValueError(f"scores for {gs.key} contain NaN or inf; check the estimator's dtype policy")
    if not 0 <= n_remove <= gs.n - gs.blocks or n_remove % gs.blocks:
        raise ValueError(f"n_remove={n_remove} for {gs.key}: must be a multiple of {gs.blocks} in "
                         f"0..{gs.n - gs.blocks} (every block keeps a group)")
    per_block, remove_per_block = gs.n // gs.blocks, n_remove // gs.blocks
    kept: list[int] = []
    for b in range(gs.blocks):
        block = scores[b * per_block:(b + 1) * per_block].double()
        order = torch.argsort(block, stable=True)                        # ascending: least important first
        kept += sorted((order[remove_per_block:] + b * per_block).tolist())
    return kept


_kept = select  # fusion.py imports this name (fusion.py is rewritten on another branch)


def plan(
    model: nn.Module,
    adapter: StructureAdapter,
    scores: dict[str, torch.Tensor],
    *,
    pruning_ratio: float | None = None,
    target_params: float | None = None,
    layers: range | list[int] | None = None,
    kinds: tuple[str, ...] | None = None,
    criterion: str = "unnamed",
) -> PruningPlan:
    """Choose the groups to keep in every group set from one criterion's scores.

    Args:
        model: The model to be pruned (read only).
        adapter: Its structure adapter.
        scores: ``{"<layer>.<kind>": tensor [n_groups]}`` — one criterion of a :class:`~aeflib.scores.Scores`.
        pruning_ratio: Share of the groups to remove in each pruned group set, in [0, 1).
        target_params: Share of all parameters to remove, in [0, 1); the ratio is solved for (:func:`solve_ratio`).
            Give exactly one.
        layers: Decoder layers to prune (default: the adapter's, LLM-Pruner's 4..n-2).
        kinds: Which kinds of group sets to prune (``("head",)``, ``("channel",)``); default all the adapter has.
        criterion: Name recorded in the plan.

    Returns:
        A :class:`PruningPlan` (``params_after`` filled in by :func:`apply`).

    Raises:
        ValueError: Neither or both of ratio/target given, either outside [0, 1), an empty ``layers`` range, an
            unknown kind, a target that the layer range cannot reach, or scores whose shapes do not fit the model.
        TypeError: ``scores`` is a whole :class:`~aeflib.scores.Scores` rather than one criterion of it.

    Source: [LLM-Pruner code] local (per-layer) ranking, ``block_wise`` head + channel pruning; target solving [ours].
    """
    if isinstance(scores, Scores):
        raise TypeError(f"scores is a Scores object with criteria {scores.criteria}; pass one criterion's scores, "
                        f"e.g. scores[{(scores.criteria or ['<criterion>'])[0]!r}]")
    if (pruning_ratio is None) == (target_params is None):
        raise ValueError("give exactly one of pruning_ratio (per-structure share) or target_params (share of all "
                         f"parameters); got pruning_ratio={pruning_ratio}, target_params={target_params}")
    sets = _group_sets(model, adapter, layers, kinds)
    missing = [gs.key for gs in sets if gs.key not in scores]
    if missing:
        raise ValueError(f"scores lack group sets {missing[:5]}{'...' if len(missing) > 5 else ''}; "
                         "estimate importance on the same layers you prune")
    if target_params is not None:
        pruning_ratio = solve_ratio(model, adapter, target_params, layers=layers, kinds=kinds)
    _check_ratio(pruning_ratio)
    return PruningPlan(
        keep={gs.key: select(gs, scores[gs.key].float(), removal_counts(gs, pruning_ratio)) for gs in sets},
        n_groups={gs.key: gs.n for gs in sets}, units={gs.kind: gs.unit for gs in sets}, criterion=criterion,
        pruning_ratio=float(pruning_ratio), target_params=target_params, params_before=count_parameters(model),
        expected_params_removed=_removed_params(sets, pruning_ratio), gqa_mode=adapter.gqa_mode)


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


def _planned_sets(adapter: StructureAdapter, model: nn.Module, layer: int, pruning_plan: PruningPlan
                  ) -> list[GroupSet]:
    """The group sets of ``layer`` that ``pruning_plan`` covers (the plan checked by ``check_plan`` first)."""
    return [gs for gs in adapter.group_sets(model, layer) if gs.key in pruning_plan.keep]


def apply(model: nn.Module, adapter: StructureAdapter, pruning_plan: PruningPlan) -> nn.Module:
    """Remove every group the plan does not keep, in place; the forward code is unchanged.

    After cutting a layer, the adapter updates the widths the forward reads (``after_cut``: GQA group ratio, Bloom
    head count and ALiBi slopes) and :meth:`StructureAdapter.check` verifies every width attribute against the
    weights. The plan is appended to ``model.aef_plans`` (the cuts a checkpoint replays; ``aeflib.io.save``).
    Works on a model on the meta device too (``aeflib.skeleton``).

    Args:
        model: The model the plan was made on (same widths in the planned layers).
        adapter: Its structure adapter.
        pruning_plan: From :func:`plan`; ``params_after`` is set here from a fresh ``sum(p.numel())``.

    Returns:
        ``model`` itself.

    Raises:
        StructureError: Before any tensor is changed, if the plan does not fit the model
            (:func:`aeflib.validation.check_plan`: group counts differ from the plan's — a plan for another model, or a
            model already pruned —, a layer or kind the model lacks, kept indices out of range, repeated, or
            unequal across kv blocks); or if a width check fails afterwards.

    Source: [ours]; the couplings are LLM-Pruner's (``hf_llama_pruner.py``) as written in each adapter.
    """
    check_plan(model, adapter, pruning_plan)
    layers = adapter.decoder_layers(model)
    for layer in pruning_plan.layers:
        kept = {}
        for gs in _planned_sets(adapter, model, layer, pruning_plan):
            kept[gs.kind] = pruning_plan.keep[gs.key]
            index = torch.tensor(kept[gs.kind], dtype=torch.long)
            for s in gs.slices:
                _slice_parameter(layers[layer], s.param, s.dim, s.positions(index))
        adapter.after_cut(model, layer, kept)
    adapter.check(model)
    install_static_cache_shapes(model)
    pruning_plan.params_after = count_parameters(model)
    model.aef_plans = [*getattr(model, "aef_plans", []), pruning_plan.to_dict()]
    log.info("pruned %d layers: %d -> %d parameters (%.1f %% removed)", len(pruning_plan.layers),
             pruning_plan.params_before, pruning_plan.params_after, 100 * pruning_plan.param_reduction)
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
def mask_removed(model: nn.Module, adapter: StructureAdapter, pruning_plan: PruningPlan) -> nn.Module:
    """Zero, in place, every weight slice of the groups the plan removes; shapes stay dense.

    The reference for the same-function guarantee: a physically pruned model computes what the dense model
    computes with its removed groups zeroed. Also handy to preview a plan without changing shapes.

    Raises:
        StructureError: As :func:`apply`, for a plan that does not fit the model (:func:`aeflib.validation.check_plan`).
    """
    check_plan(model, adapter, pruning_plan)
    layers = adapter.decoder_layers(model)
    for layer in pruning_plan.layers:
        for gs in _planned_sets(adapter, model, layer, pruning_plan):
            removed = torch.tensor(sorted(set(range(gs.n)) - set(pruning_plan.keep[gs.key])), dtype=torch.long)
            if removed.numel() == 0:
                continue
            for s in gs.slices:
                param = layers[layer].get_parameter(s.param)
                param.index_fill_(s.dim, s.positions(removed).to(param.device), 0.0)
    return model
