"""FLAP: fluctuation scores, one global width allocation across layers and kinds, and bias compensation.

``flap.plan(model, adapter, calibration, target_params=0.20)`` → :class:`FlapPlan` (a
:class:`~aeflib.pruning.PruningPlan` whose layers keep different widths, plus the bias each output projection gains)
``flap.apply(model, adapter, flap_plan)`` → the model, pruned, with the removed groups' mean contribution folded into
the biases of its output projections.

FLAP (An et al., "Fluctuation-based Adaptive Structured Pruning for Large Language Models", AAAI 2024,
arXiv 2312.11983) without any training:

1. **Fluctuation** of input column j of an output projection W [hidden, in] (o_proj / down_proj; Bloom's dense /
   dense_4h_to_h): S_j = Var(X_j) · ‖W[:, j]‖₂², the sample variance of that input over the calibration tokens
   times the squared norm of the weight column it multiplies; a group's score is the sum over its columns (a head:
   its head_dim columns). It is the ``fluctuation`` criterion of :data:`aeflib.importance.ESTIMATORS`.
2. **Standardisation**: z = (S − mean) / std over all group scores of one kind (heads, channels) across the pruned
   layers (``standardize_with="kind"``), so that heads and channels share one scale.
3. **One global threshold** across layers and both kinds: groups are removed lowest z first until the removed
   parameters come closest to ``target_params`` × all parameters of the model (the target every aeflib method
   uses), so each layer and each kind gets its own width. Each group costs its own parameters
   (:attr:`~aeflib.models.adapters.GroupSet.params_per_group`, exact for every family, GQA and biases included).
4. **Bias compensation**: the removed columns R of W contributed W[:, R] x̄_R on the mean calibration input x̄;
   that vector is *added* to W's bias (a zero bias is created where the model had none), so the output on the
   mean input is unchanged: b' = b + W[:, R] @ x̄_R.

Where FLAP's released code (``CASIA-IVA-Lab/FLAP``, ``lib/prune.py`` and ``lib/layerwrapper.py``, read, not copied)
differs from this plain reading of the paper, and what aeflib does:

* *Fluctuation accumulation*: the code updates a running mean window by window in place before taking deviations
  (the first window adds nothing) and scales by windows; aeflib uses the exact sample variance over all tokens
  (:mod:`aeflib.activations`) — the paper's definition; constant factors vanish in step 2.
* *Attention metric and standardisation*: the code squares the attention channels' metric, z-scores each layer's
  columns on their own (``mean``/``std`` over each layer's row of the stacked metric), then takes a head's *mean*
  standardised column. aeflib's default is the reading the issue asks for (z-scores per kind across layers, a head
  = the sum of its columns, standardised as a group); ``standardize_with="layer"`` z-scores each group set on its
  own, the code's per-layer choice, kept as a named variant. (The squaring is not reproduced: being monotone it
  keeps each layer's order of heads, but it changes their z-scores and so the share of heads the threshold takes.)
* *Head cost in the global threshold*: the code weighs a head 512/3 channels (4·d·hidden / 3·hidden at LLaMA's
  head_dim 128, MHA) and keeps the share (1 − ratio) of the summed weights of all 32 layers; aeflib charges every
  group its exact parameters and aims at the same share of *all* parameters as the other methods, on the same
  layers (default: the adapter's 4..n-2; pass ``layers=range(n_layers)`` for FLAP's all layers).
* *Bias assigned or added*: the code assigns ``bias.data = W[:, R] @ x̄_R`` (LLaMA has no bias, so it is the same
  there); aeflib adds, which keeps Bloom's own dense biases.
* *GQA*: the code prunes q, k and v rows with one head mask (multi-head LLaMA only). aeflib follows the adapter's
  ``gqa_mode``: ``"kv-groups"`` makes a whole kv group (its query heads, k and v rows) one unit of the threshold;
  in ``"query-heads"`` mode every kv group must keep the same number of query heads, so the unit is one query head
  from *each* kv group (the k-th weakest of every group together, scored by the mean of their z-scores, costing
  ``n_kv_heads`` heads' parameters); k/v rows stay.
* *Uniform variant*: ``allocation="uniform"`` is the code's ``UL-UM`` structure (the same ratio in every set,
  :func:`aeflib.pruning.plan`), with bias compensation; a stock transformers export needs it with every layer
  pruned.

*Hardware-aligned widths* [ours]: ``align={"channel": 8}`` makes every pruned set keep a multiple of 8 channels
(the unit of the threshold is then 8 channels; with ``allocation="uniform"`` each kept count is rounded to the
multiple); whole kv groups under GQA are ``gqa_mode="kv-groups"``. With ``compensate=False`` and ``scores=`` any
criterion gets aligned widths this way.

Parameters the compensation adds (one bias of ``hidden`` values per output projection of the pruned layers that
had none: 2 · hidden per LLaMA layer) count: the allocation removes that many more, so the *measured* parameter
reduction after :func:`apply` comes within half of one unit's parameters of the target.

Source: [field] FLAP arXiv 2312.11983 and its released code as noted; exact costs, GQA units [ours].
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from aeflib.activations import capture_inputs, output_slice
from aeflib.importance import ESTIMATORS, slice_scores
from aeflib.models.adapters import GroupSet, StructureAdapter
from aeflib.pruning import PruningPlan, count_parameters, select, split_key
from aeflib.pruning import apply as apply_plan
from aeflib.pruning import plan as uniform_plan

__all__ = ["ALLOCATIONS", "STANDARDIZATIONS", "FlapPlan", "add_zero_biases", "allocate", "apply", "bias_compensation",
           "plan", "standardize"]

log = logging.getLogger(__name__)

Tensor = torch.Tensor

#: How widths are chosen: ``global`` (FLAP's default ``AL-AM``: one threshold across layers and kinds) or
#: ``uniform`` (``UL-UM``: the same per-structure ratio in every group set).
ALLOCATIONS = ("global", "uniform")
#: Over what the scores are z-scored before the global threshold: ``kind`` (all sets of one kind across layers;
#: the default) or ``layer`` (each set on its own, as FLAP's released code does).
STANDARDIZATIONS = ("kind", "layer")
#: Criteria :func:`plan` computes from input moments (no backward pass).
_MOMENT_CRITERIA = ("fluctuation", "wanda-sp")


@dataclass
class FlapPlan:
    """A FLAP pruning: which groups stay and what each output projection's bias gains.

    Attributes:
        plan: The :class:`~aeflib.pruning.PruningPlan` (per-layer widths under ``allocation="global"``).
        biases: ``{full bias parameter name: fp32 [out_features]}`` to add, e.g.
            ``"model.layers.5.self_attn.o_proj.bias"``; empty without compensation.
        allocation: A value of :data:`ALLOCATIONS`.
        standardize: A value of :data:`STANDARDIZATIONS` (``global`` allocation only).
        scores: The raw scores that ranked the groups, ``{"<layer>.<kind>": fp32 [n]}``.
        means: Mean calibration input of each set's output projection, ``{"<layer>.<kind>": fp32 [in_features]}``.
        added_bias_params: Parameters of the biases :func:`apply` creates (output projections without one).
        threshold: The z-score of the last unit removed (``global``; None if nothing is removed).
    """

    plan: PruningPlan
    biases: dict[str, Tensor]
    allocation: str
    standardize: str
    scores: dict[str, Tensor] = field(repr=False, default_factory=dict)
    means: dict[str, Tensor] = field(repr=False, default_factory=dict)
    added_bias_params: int = 0
    threshold: float | None = None

    def summary(self) -> dict:
        """The plan's summary with the allocation, standardisation and added bias parameters."""
        return {**self.plan.summary(), "allocation": self.allocation, "standardize": self.standardize,
                "bias_compensation": bool(self.biases), "added_bias_params": self.added_bias_params}


def standardize(scores: dict[str, Tensor], how: str = "kind") -> dict[str, Tensor]:
    """Z-score group scores per kind across layers (``"kind"``) or per group set (``"layer"``).

    Args:
        scores: ``{"<layer>.<kind>": fp32 [n]}``.
        how: A value of :data:`STANDARDIZATIONS`.

    Returns:
        Same keys and shapes, (x − mean) / std with the unbiased std of the pool (0 where the pool is constant).

    Raises:
        ValueError: An unknown ``how``.

    Source: [field] FLAP (standardised scores, comparable across layers and modules).
    """
    if how not in STANDARDIZATIONS:
        raise ValueError(f"unknown standardize={how!r}; choose one of {list(STANDARDIZATIONS)}")
    pools: dict[str, list[str]] = {}
    for key in scores:
        pools.setdefault(split_key(key)[1] if how == "kind" else key, []).append(key)
    out = {}
    for keys in pools.values():
        pool = torch.cat([scores[k].double().reshape(-1) for k in keys])
        mean = pool.mean()
        std = pool.std() if pool.numel() > 1 else torch.zeros((), dtype=torch.float64)
        for k in keys:
            centred = scores[k].double() - mean
            out[k] = (centred / std if std > 0 else torch.zeros_like(centred)).float()
    return out


def _step(gs: GroupSet, align: dict[str, int] | None) -> int:
    """Groups one unit of ``gs`` removes: ``blocks`` (one per kv block), or the kind's alignment multiple.

    Raises:
        ValueError: An alignment that does not divide the set's group count or is not a multiple of its blocks.
    """
    a = (align or {}).get(gs.kind, 1)
    if isinstance(a, bool) or not isinstance(a, int) or a < 1:
        raise ValueError(f"align[{gs.kind!r}]={a!r} must be a positive integer")
    step = max(a, gs.blocks)
    if gs.n % step or step % gs.blocks:
        raise ValueError(f"align[{gs.kind!r}]={a} does not fit {gs.key}: {gs.n} {gs.unit}s in {gs.blocks} equal "
                         f"block(s) need a multiple of {gs.blocks} that divides {gs.n}")
    return step


def _units(gs: GroupSet, z: Tensor, step: int) -> Tensor:
    """Scores of the removable units of ``gs``, weakest first: unit k removes ``step`` more groups.

    Stripe i is the i-th weakest group of every block (score: their mean z); unit k is stripes k·q .. (k+1)·q − 1,
    q = step / blocks (score: their mean), k < per_block / q − 1 (every block keeps q groups). The scores are
    non-decreasing in k, so a global ascending sort removes each set's units in order.
    """
    per_block, q = gs.n // gs.blocks, step // gs.blocks
    stripes = z.view(gs.blocks, per_block).sort(dim=1).values.mean(0)          # [per_block]
    return stripes.view(per_block // q, q).mean(1)[:-1]                          # [per_block / q - 1]


def allocate(model: nn.Module, adapter: StructureAdapter, scores: dict[str, Tensor], *, target_params: float,
             layers: range | list[int] | None = None, standardize_with: str = "kind", extra_params: int = 0,
             criterion: str = "fluctuation", align: dict[str, int] | None = None) -> tuple[PruningPlan, float | None]:
    """One global threshold on standardised scores across layers and kinds, reaching a parameter target.

    Args:
        model: The dense model (read only).
        adapter: Its structure adapter.
        scores: ``{"<layer>.<kind>": fp32 [n]}`` for every group set of ``layers`` (higher = more important).
        target_params: Share of all parameters of ``model`` to remove, in [0, 1).
        layers: Decoder layers to prune (default: the adapter's 4..n-2).
        standardize_with: A value of :data:`STANDARDIZATIONS`.
        extra_params: Parameters that will be *added* afterwards (compensation biases); removed on top of the target.
        criterion: Name recorded in the plan.
        align: Hardware-aligned widths: ``{kind: multiple}`` (e.g. ``{"channel": 8}``); every set of that kind then
            keeps a multiple of it (the unit of the threshold becomes that many groups). Whole kv groups under GQA:
            an adapter in ``gqa_mode="kv-groups"``.

    Returns:
        ``(plan, threshold)``: the plan removes the lowest units (a group; under GQA ``query-heads`` mode one query
        head per kv group) whose cumulative parameters come closest to ``target_params · P + extra_params``
        (within half of one unit's parameters); ``pruning_ratio`` records the achieved share of groups removed.
        ``threshold``: the z-score of the last unit removed (None if none).

    Raises:
        ValueError: ``target_params`` outside [0, 1), scores missing a group set, or a target the layers cannot reach.

    Source: [field] FLAP's adaptive structure search (AL-AM); exact group costs [ours].
    """
    _check_target(target_params)
    sets = adapter.all_group_sets(model, layers)
    missing = [gs.key for gs in sets if gs.key not in scores]
    if missing:
        raise ValueError(f"scores lack group sets {missing[:5]}; score the same layers you prune")
    z = standardize({gs.key: scores[gs.key].float() for gs in sets}, standardize_with)
    steps = [_step(gs, align) for gs in sets]
    unit_scores, unit_cost, unit_set = [], [], []
    for i, gs in enumerate(sets):
        u = _units(gs, z[gs.key], steps[i])
        unit_scores.append(u)
        unit_cost.append(torch.full_like(u, steps[i] * gs.params_per_group, dtype=torch.float64))
        unit_set.append(torch.full(u.shape, i, dtype=torch.long))
    flat = torch.cat(unit_scores)
    order = torch.argsort(flat, stable=True)                                     # weakest unit first
    cost = torch.cat(unit_cost)[order]
    cum = torch.cat([torch.zeros(1, dtype=torch.float64), cost.cumsum(0)])      # removed after m units, m = 0..U
    total = count_parameters(model)
    goal = target_params * total + extra_params
    if goal > cum[-1]:
        raise ValueError(f"target_params={target_params} cannot be reached: these {len(sets)} group sets can lose at "
                         f"most {cum[-1].item() / total:.3f} of {total} parameters (keeping a group per kv block); "
                         "widen the layer range or lower the target")
    m = int(torch.argmin((cum - goal).abs()))                                    # ties: the fewer units
    removed_units = torch.bincount(torch.cat(unit_set)[order[:m]], minlength=len(sets))
    keep = {gs.key: select(gs, scores[gs.key].float(), int(removed_units[i]) * steps[i])
            for i, gs in enumerate(sets)}
    n_groups = sum(gs.n for gs in sets)
    removed_groups = sum(gs.n - len(keep[gs.key]) for gs in sets)
    pruning_plan = PruningPlan(
        keep=keep, n_groups={gs.key: gs.n for gs in sets}, units={gs.kind: gs.unit for gs in sets},
        criterion=criterion, pruning_ratio=removed_groups / n_groups, target_params=target_params,
        params_before=total, expected_params_removed=int(cum[m]), gqa_mode=adapter.gqa_mode)
    return pruning_plan, (flat[order[m - 1]].item() if m else None)


def _uniform_aligned(model: nn.Module, adapter: StructureAdapter, scores: dict[str, Tensor], goal: float,
                     layers: range | list[int] | None, align: dict[str, int], criterion: str) -> PruningPlan:
    """One per-structure ratio r for every set, each kept count rounded to its kind's multiple, closest to ``goal``.

    Kept = step · max(1, round((1 − r) · n / step)); r on a 4000-step grid in [0, 0.999], ties → the smaller r.
    """
    sets = adapter.all_group_sets(model, layers)
    missing = [gs.key for gs in sets if gs.key not in scores]
    if missing:
        raise ValueError(f"scores lack group sets {missing[:5]}; score the same layers you prune")
    steps = [_step(gs, align) for gs in sets]

    def removed(r: float) -> list[int]:
        return [gs.n - step * max(1, int((1 - r) * gs.n / step + 0.5)) for gs, step in zip(sets, steps, strict=True)]

    grid = torch.linspace(0, 0.999, 4000).tolist()
    cost = [sum(k * gs.params_per_group for k, gs in zip(removed(r), sets, strict=True)) for r in grid]
    best = min(range(len(grid)), key=lambda i: (abs(cost[i] - goal), grid[i]))
    counts = removed(grid[best])
    return PruningPlan(
        keep={gs.key: select(gs, scores[gs.key].float(), k) for gs, k in zip(sets, counts, strict=True)},
        n_groups={gs.key: gs.n for gs in sets}, units={gs.kind: gs.unit for gs in sets}, criterion=criterion,
        pruning_ratio=float(grid[best]), target_params=None, params_before=count_parameters(model),
        expected_params_removed=int(cost[best]), gqa_mode=adapter.gqa_mode)


def _check_target(target_params: object) -> None:
    if isinstance(target_params, bool) or not isinstance(target_params, int | float) or not 0 <= target_params < 1:
        raise ValueError(f"target_params={target_params!r} is outside [0, 1)")


def _prefix(model: nn.Module, adapter: StructureAdapter) -> str:
    """Module path of the decoder layers inside ``model`` (``"model.layers"``, ``"transformer.h"``)."""
    layers = adapter.decoder_layers(model)
    return next(name for name, mod in model.named_modules() if mod is layers)


def _output_module(model: nn.Module, adapter: StructureAdapter, gs: GroupSet) -> tuple[str, nn.Linear]:
    """``(full module name, module)`` of the output projection of ``gs``."""
    name = output_slice(gs).param.rpartition(".")[0]
    return (f"{_prefix(model, adapter)}.{gs.layer}.{name}",
            adapter.decoder_layers(model)[gs.layer].get_submodule(name))


def bias_compensation(model: nn.Module, adapter: StructureAdapter, pruning_plan: PruningPlan,
                      means: dict[str, Tensor]) -> dict[str, Tensor]:
    """The bias each output projection gains: the removed columns' contribution on the mean input, W[:, R] @ x̄_R.

    Args:
        model: The dense model the plan was made on (read only).
        adapter: Its structure adapter.
        pruning_plan: Which groups stay.
        means: ``{"<layer>.<kind>": x̄}``, the mean calibration input of each set's output projection,
            fp32 [in_features].

    Returns:
        ``{full bias name: fp32 [out_features]}`` for every planned set (zeros where nothing is removed).

    Raises:
        ValueError: A planned set without its mean.

    Source: [field] FLAP (bias compensation), added rather than assigned (module docstring).
    """
    out = {}
    for gs in adapter.all_group_sets(model, pruning_plan.layers):
        if gs.key not in pruning_plan.keep:
            continue
        if gs.key not in means:
            raise ValueError(f"no mean input for {gs.key}; capture the means on the layers of the plan")
        name, module = _output_module(model, adapter, gs)
        removed = torch.tensor(sorted(set(range(gs.n)) - set(pruning_plan.keep[gs.key])), dtype=torch.long)
        cols = output_slice(gs).positions(removed).to(module.weight.device)
        w = module.weight.detach().index_select(1, cols).double()               # [out_features, |R|]
        mean = means[gs.key].to(w.device).double().index_select(0, cols)        # [|R|]
        out[f"{name}.bias"] = (w @ mean).float()                                # [out_features]
    return out


def add_zero_biases(model: nn.Module, names: Iterable[str]) -> list[str]:
    """Give each named Linear a zero bias where it has none, in place; the function is unchanged.

    The names are recorded in ``model.aef_added_biases`` (sorted), which :func:`aeflib.io.save` writes to the
    manifest so that :func:`aeflib.io.load` rebuilds them, and :func:`aeflib.export.export_hf` turns into the
    stock config's bias flags.

    Args:
        model: Any model.
        names: Full bias parameter names, e.g. ``"model.layers.5.mlp.down_proj.bias"``.

    Returns:
        The names that were created now.

    Raises:
        ValueError: A name whose module is not an ``nn.Linear`` or does not end in ``.bias``.

    Source: [ours].
    """
    created = []
    for name in names:
        module_name, _, attr = name.rpartition(".")
        module = model.get_submodule(module_name) if attr == "bias" else None
        if not isinstance(module, nn.Linear):
            raise ValueError(f"cannot add a bias {name!r}: not the bias of an nn.Linear")
        if module.bias is None:
            w = module.weight
            module.bias = nn.Parameter(torch.zeros(w.shape[0], dtype=w.dtype, device=w.device),
                                       requires_grad=w.requires_grad)
            created.append(name)
    if created:
        model.aef_added_biases = sorted({*getattr(model, "aef_added_biases", []), *created})
    return created


def plan(
    model: nn.Module,
    adapter: StructureAdapter,
    calibration: Tensor,
    *,
    target_params: float,
    layers: range | list[int] | None = None,
    allocation: str = "global",
    standardize_with: str = "kind",
    compensate: bool = True,
    criterion: str = "fluctuation",
    scores: dict[str, Tensor] | None = None,
    chunk_size: int | None = None,
    align: dict[str, int] | None = None,
) -> FlapPlan:
    """Score, allocate and compute the bias compensation of a FLAP pruning, from one no-grad forward pass.

    Args:
        model: The dense model (read only), any dtype and device.
        adapter: Its structure adapter (its ``gqa_mode`` decides the GQA unit, see the module docstring).
        calibration: LongTensor [N, L] of calibration windows.
        target_params: Share of all parameters to remove, in [0, 1), measured after :func:`apply`.
        layers: Decoder layers to prune (default: the adapter's 4..n-2; FLAP prunes every layer).
        allocation: A value of :data:`ALLOCATIONS`.
        standardize_with: A value of :data:`STANDARDIZATIONS` (``global`` only).
        compensate: Fold the removed groups' mean contribution into the output projections' biases.
        criterion: ``"fluctuation"`` (FLAP) or ``"wanda-sp"``, computed from the captured input moments with the
            same code as :func:`aeflib.importance.estimate`.
        scores: Rank by these instead (``{"<layer>.<kind>": [n]}``, any criterion, e.g. a fused one); the
            forward pass then only gives the means.
        chunk_size: Windows per forward pass (default all).
        align: Hardware-aligned widths ``{kind: multiple}``, e.g. ``{"channel": 8}`` (see :func:`allocate`); with
            ``allocation="uniform"`` each set's kept count is the ratio's, rounded to the multiple. With
            ``compensate=False`` and ``scores=`` this plans any criterion's aligned widths.

    Returns:
        :class:`FlapPlan`.

    Raises:
        ValueError: A bad target, allocation, standardisation, criterion or calibration, naming the value.

    Source: [field] FLAP arXiv 2312.11983 (module docstring for each choice).
    """
    _check_target(target_params)
    if allocation not in ALLOCATIONS:
        raise ValueError(f"unknown allocation={allocation!r}; choose one of {list(ALLOCATIONS)}")
    if standardize_with not in STANDARDIZATIONS:
        raise ValueError(f"unknown standardize_with={standardize_with!r}; choose one of {list(STANDARDIZATIONS)}")
    if scores is None and criterion not in _MOMENT_CRITERIA:
        raise ValueError(f"criterion={criterion!r}: plan computes {list(_MOMENT_CRITERIA)} itself; pass scores= for "
                         f"any other criterion of {sorted(ESTIMATORS)}")
    if not isinstance(calibration, Tensor) or calibration.ndim != 2 or calibration.is_floating_point():
        raise ValueError(f"calibration must be an integer tensor [N, L]; got {getattr(calibration, 'dtype', None)} "
                         f"{tuple(getattr(calibration, 'shape', ()))}")
    sets = adapter.all_group_sets(model, layers)
    outputs = {gs.key: _output_module(model, adapter, gs) for gs in sets}
    device = next(model.parameters()).device
    moments = capture_inputs(model, [m for _, m in outputs.values()], calibration.to(device), chunk_size)
    means = {k: moments[m].mean.float() for k, (_, m) in outputs.items()}
    if scores is None:
        scores = {}
        for gs in sets:
            w, mom = outputs[gs.key][1].weight, moments[outputs[gs.key][1]]
            stats = {"activations": mom.norm.to(w.device).expand(w.shape),
                     "variance": mom.variance.to(w.device).expand(w.shape)}
            scores[gs.key] = slice_scores(output_slice(gs), w, None, None, [criterion], **stats)[criterion]
    added = sum(m.out_features for _, m in outputs.values() if m.bias is None) if compensate else 0
    threshold = None
    if allocation == "global":
        pruning_plan, threshold = allocate(model, adapter, scores, target_params=target_params, layers=layers,
                                           standardize_with=standardize_with, extra_params=added, criterion=criterion,
                                           align=align)
    else:
        total = count_parameters(model)
        if align:
            pruning_plan = _uniform_aligned(model, adapter, scores, target_params * total + added, layers, align,
                                            criterion)
        else:
            pruning_plan = uniform_plan(model, adapter, scores, target_params=(target_params * total + added) / total,
                                        layers=layers, criterion=criterion)
        pruning_plan.target_params = target_params
    biases = bias_compensation(model, adapter, pruning_plan, means) if compensate else {}
    log.info("FLAP plan (%s, %s): %.4f of parameters removed from group shapes, %d bias parameters added",
             allocation, standardize_with, pruning_plan.expected_param_reduction, added)
    return FlapPlan(pruning_plan, biases, allocation, standardize_with, scores, means, added, threshold)


def apply(model: nn.Module, adapter: StructureAdapter, flap_plan: FlapPlan) -> nn.Module:
    """Cut the plan's groups (:func:`aeflib.pruning.apply`), then add the compensation to the output biases.

    Args:
        model: The model the plan was made on.
        adapter: Its structure adapter.
        flap_plan: From :func:`plan`.

    Returns:
        ``model`` itself; ``flap_plan.plan.params_after`` is measured after the biases were added.

    Raises:
        ValueError: A bias that names no Linear of the model or has another length (checked before any cut).
        StructureError: As :func:`aeflib.pruning.apply`.

    Source: [field] FLAP; [ours] add rather than assign.
    """
    for name, delta in flap_plan.biases.items():
        module_name, _, attr = name.rpartition(".")
        try:
            module = model.get_submodule(module_name)
        except AttributeError:
            module = None
        if attr != "bias" or not isinstance(module, nn.Linear) or delta.shape != (module.out_features,):
            raise ValueError(f"bias compensation {name!r} [{tuple(delta.shape)}] does not fit this model: not the "
                             "bias of an nn.Linear with that many outputs; use the model the plan was made on")
    apply_plan(model, adapter, flap_plan.plan)
    add_zero_biases(model, flap_plan.biases)
    with torch.no_grad():
        for name, delta in flap_plan.biases.items():
            bias = model.get_parameter(name)
            bias.add_(delta.to(device=bias.device, dtype=bias.dtype))
    flap_plan.plan.params_after = count_parameters(model)
    model.aef_plans[-1] = flap_plan.plan.to_dict()
    return model
