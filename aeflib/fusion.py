"""Adaptive Estimation Fusion (AEF): blend the coarse (vector-wise) and fine (element-wise) importance per structure.

What the paper states [paper]: for each substructure, a fine-grained estimate (element-wise Taylor with a Fisher
approximation of the Hessian) and a coarse-grained one (vector-wise) are fused "adaptively", with an "attention
mechanism" finding "the optimal blend of granularity" from "the results from complex and multilayer structures";
then groups are sorted and the least important pruned (arXiv 2403.10799, §3). The exact formula is **not public**.
Everything below that goes further is **[ours]**, a reconstruction offered as named variants:

1. Normalise each estimate within its group set (one layer, one kind). The default is ``rank`` (average ranks scaled
   to [0, 1]): both estimates then have the same spread, so equal weights give equal influence on the fused
   ranking. ``sum`` (x / Σx) keeps each estimate's own spread — the coarse estimate spreads 2-3x more than the fine
   one on SmolLM2, so at α_fine = 0.5 the fused ranking follows the coarse one; ``zscore`` equalises the spread
   but not the tails. Raw sums are never used: estimates differ by orders of magnitude (the Fisher term is ~1e-5 of
   the Taylor term, LLM-Pruner issue #23).
2. Fuse ``I_i = α_f · f̂_i + α_c · ĉ_i`` with weights from one of the variants below; ``fixed`` with ``(1, 0)`` /
   ``(0, 1)`` reproduces the element-wise / vector-wise ranking exactly.
3. Report, beside α, the **influence**: the Spearman rank correlation of the fused scores with each input, per
   (layer, kind) — what the fusion actually did to the ranking (:func:`influence`).

| method          | fusion weights                                                                               |
|-----------------|----------------------------------------------------------------------------------------------|
| aef-layer       | one softmax gate per (layer, kind) over the *measured* calibration-loss increase ΔL of pruning |
|                 | that set alone by each estimate: ``α = softmax(−ΔL / (τ · mean |ΔL|))``                        |
| aef-layer-tuned | the same measurements; τ (or the hard choice τ → 0, or either input alone) picked by the loss |
|                 | of the jointly pruned model on held-out calibration windows                                  |
| aef-element     | per-group attention ``[α_f, α_c]_i = softmax([f̂_i, ĉ_i] / τ)`` (scores in rank scale)          |
| aef-blend       | one α_fine per kind (heads, channels) from a grid, picked on held-out calibration windows    |
| aef-agree       | per-group gate by agreement: groups both estimates remove are removed, groups both keep are   |
|                 | kept, the disputed ones are ordered by a blend whose α_fine per kind is picked on held-out    |
|                 | calibration windows                                                                          |
| aef-learned     | gate logits per (layer, kind) trained with Adam on the calibration loss through a             |
|                 | differentiable soft mask, early-stopped on the held-out loss of the hard (real) pruning       |
| fixed           | user-given ``(α_f, α_c)`` everywhere                                                         |

*Held-out calibration windows* are calibration windows (train split) the gate measurements or the training do not
see: ``holdout=`` when given, else the last ``round(0.3 · N)`` of the N calibration windows. Evaluation text is never
used, except by :func:`oracle_choice`, an upper bound for benchmarks that is not a method and never a default.

``aef`` is an alias for the variant chosen by a calibration-only measurement (see :data:`DEFAULT_METHOD`); the fusion
weights, the influence and a fingerprint of the settings of every run are returned, saved and plotted.

Each variant is a :class:`FusionVariant` object in :data:`FUSIONS`: its name, what it needs (:data:`NEEDS`: the model,
calibration windows, held-out windows) and a ``Params`` dataclass of its own settings, with defaults and validation.
:func:`fuse` normalises, builds the inputs the variant declares and calls it; adding a variant is one class and one
entry in :data:`FUSIONS` (the stages, pipeline and CLI method lists follow it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import ClassVar, NamedTuple

import torch
from torch import nn

from aeflib.models.adapters import GroupSet, StructureAdapter
from aeflib.pruning import removal_counts, select
from aeflib.scores import Scores

__all__ = ["BLEND_GRID", "DEFAULT_METHOD", "DEFAULT_NORMALIZATION", "FUSIONS", "NEEDS", "NORMALIZATIONS", "ORACLE",
           "TEMPERATURES", "AefAgree", "AefBlend", "AefElement", "AefLayer", "AefLayerTuned", "AefLearned", "Fixed",
           "FusionInputs", "FusionOutput", "FusionResult", "FusionVariant", "GridParams", "NoParams", "fuse",
           "influence", "normalize", "oracle_choice", "spearman", "split_holdout"]

log = logging.getLogger(__name__)
Tensor = torch.Tensor

#: What ``method="aef"`` means. The rule, on calibration data only: the variant with the lowest mean paired difference
#: to element1 in held-out calibration NLL (train split, 16 windows of 128 tokens, seed 1042), averaged over 20 % of
#: SmolLM2-135M's parameters and pruning ratio 0.64 (``benchmarks/fusion_select.py``). Measured (partial: 20 % with
#: seeds 42-43, 0.64 with seed 42; aef-layer and aef-layer-tuned did not finish on the shared 2-core machine):
#: aef-agree −0.005 nats/token, aef-blend −0.003, aef-element +0.43 — aef-agree's difference lies within noise
#: (95 % interval [−0.03, +0.02] at 20 %), so it is chosen as the rule says, not because it beats element1: no
#: variant did. It falls back to the fine estimate where the calibration loss gives no reason to deviate. On evaluation
#: text (``benchmarks/quality.py``, 300 Wikipedia + 54 Lee-news windows, seeds 42-44) it is within noise of element1 at
#: 20 % (+0.006 nats/token [−0.001, +0.015]) and of element2 at ratio 0.64 (−0.023 [−0.066, +0.000]); on the paper's
#: seven zero-shot tasks (30 items each) within noise as well (−0.63 points [−3.65, +1.90] at 20 %). The headroom is
#: small: the sweep's oracle (per layer and kind the better of the two estimates by *evaluation* loss, an upper bound)
#: gains −0.040 nats [−0.093, +0.012] on Wikipedia and −0.069 [−0.116, −0.027] on Lee news over element1 (seeds 42-43).
DEFAULT_METHOD = "aef-agree"

#: Normalisation applied within each group set before fusing (``fuse(normalize_with=...)``). ``rank`` gives both
#: estimates the same spread, so α measures influence (see the module docstring).
DEFAULT_NORMALIZATION = "rank"

#: Temperatures τ that ``aef-layer-tuned`` tries (besides the hard choice and each input alone).
TEMPERATURES = (0.25, 0.5, 1.0, 2.0, 4.0)

#: α_fine values per kind that ``aef-blend`` and ``aef-agree`` try (5 x 5 combinations of heads x channels).
BLEND_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)

#: Share of the calibration windows held out when ``holdout=`` is not given.
HOLDOUT_FRACTION = 0.3

#: Criterion name of :func:`oracle_choice` (not a key of :data:`FUSIONS`: it reads evaluation text).
ORACLE = "oracle"


# ---- normalisation within one group set -----------------------------------------------------------------------
def _sum(x: Tensor) -> Tensor:
    total = x.sum()
    return x / total if total > 0 else torch.full_like(x, 1 / x.numel())


def _zscore(x: Tensor) -> Tensor:
    std = x.std(unbiased=False)
    return (x - x.mean()) / std if std > 0 else torch.zeros_like(x)


def _rank(x: Tensor) -> Tensor:
    """Average ranks scaled to [0, 1] (ties share their mean rank)."""
    n = x.numel()
    if n == 1:
        return torch.ones_like(x)
    order = torch.argsort(x.double(), stable=True)
    ranks = torch.empty(n, dtype=torch.float64)
    ranks[order] = torch.arange(n, dtype=torch.float64)
    uniq, inverse = torch.unique(x.double(), return_inverse=True)
    if uniq.numel() < n:  # average the ranks of ties
        mean_rank = torch.zeros(uniq.numel(), dtype=torch.float64).index_add_(0, inverse, ranks)
        mean_rank /= torch.bincount(inverse, minlength=uniq.numel()).double()
        ranks = mean_rank[inverse]
    return (ranks / (n - 1)).float()


NORMALIZATIONS: dict[str, Callable[[Tensor], Tensor]] = {"sum": _sum, "zscore": _zscore, "rank": _rank}


def normalize(x: Tensor, how: str) -> Tensor:
    """Normalise one group set's scores [n] with a key of :data:`NORMALIZATIONS`; every choice is increasing.

    Args:
        x: Scores of one group set, shape [n], any float dtype.
        how: ``"rank"`` (average ranks / (n − 1), in [0, 1]), ``"zscore"`` or ``"sum"`` (x / Σx).

    Returns:
        float32 tensor [n].

    Raises:
        ValueError: For an unknown name, listing the choices.

    Source: [ours].
    """
    if how not in NORMALIZATIONS:
        raise ValueError(f"unknown normalisation {how!r}; choose one of {sorted(NORMALIZATIONS)}")
    return NORMALIZATIONS[how](x.float())


# ---- influence: what the fusion did to the ranking ----------------------------------------------------------------
def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman rank correlation of two score vectors [n] (average ranks for ties; Pearson of the ranks).

    Returns:
        A float in [-1, 1]; 0.0 when either vector is constant (no ranking to correlate) or n < 2.

    Raises:
        ValueError: If the shapes differ.

    Source: [ours] (the textbook definition; equals ``scipy.stats.spearmanr``).
    """
    if a.shape != b.shape:
        raise ValueError(f"spearman needs two vectors of the same shape; got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.numel() < 2:
        return 0.0
    ra, rb = _rank(a.flatten()).double(), _rank(b.flatten()).double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = (ra.square().sum() * rb.square().sum()).sqrt()
    return float((ra * rb).sum() / denom) if denom > 0 else 0.0


def influence(fused: dict[str, Tensor], fine: dict[str, Tensor], coarse: dict[str, Tensor]) -> dict[str, tuple]:
    """Effective influence of each input on the fused ranking, per group set.

    Args:
        fused: ``{"<layer>.<kind>": fused scores [n]}``.
        fine: The fine estimate, same keys and shapes (raw or normalised: ranks do not change).
        coarse: The coarse estimate, same keys and shapes.

    Returns:
        ``{key: (ρ_fine, ρ_coarse)}``, Spearman correlations of the fused scores with each input. A fusion that
        follows one input has ρ = 1 with it; with rank normalisation and equal weights both are equal in expectation.

    Source: [ours].
    """
    return {k: (round(spearman(v, fine[k]), 4), round(spearman(v, coarse[k]), 4)) for k, v in fused.items()}


def split_holdout(calibration: Tensor, holdout: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Windows to fit on and windows to judge on: ``(calibration, holdout)`` or a split of ``calibration``.

    Args:
        calibration: LongTensor [N, L] of calibration windows.
        holdout: LongTensor [M, L'] of other calibration windows (train split), or None to hold out the last
            ``max(1, round(HOLDOUT_FRACTION · N))`` windows of ``calibration``.

    Returns:
        ``(fit [N', L], held_out [M', L'])``.

    Raises:
        ValueError: If ``holdout`` is None and ``calibration`` has fewer than 2 windows.

    Source: [ours].
    """
    if holdout is not None:
        return calibration, holdout
    n = calibration.shape[0]
    if n < 2:
        raise ValueError(f"cannot hold out windows from {n} calibration window(s); pass holdout= or use n >= 2")
    k = min(n - 1, max(1, round(HOLDOUT_FRACTION * n)))
    return calibration[: n - k], calibration[n - k:]


# ---- result -----------------------------------------------------------------------------------------------------
@dataclass
class FusionResult:
    """Fused importance, the fusion weights that produced it and their effective influence.

    Attributes:
        scores: The input :class:`~aeflib.scores.Scores` plus the fused criterion under ``name``.
        name: Criterion name of the fused scores (the method, or ``aef`` when the alias was used).
        method: Resolved variant (a key of :data:`FUSIONS`, or ``oracle``).
        weights: ``{"<layer>.<kind>": (α_fine, α_coarse)}``; for per-group variants the mean over the set's groups.
        settings: fine/coarse criteria, normalisation, temperature, ratio, method options and ``fingerprint`` (a
            12-hex-digit hash of the other settings: two results with the same fingerprint were made alike).
        details: Method evidence (measured loss increases, held-out losses of candidates, loss curves...).
        influence: ``{"<layer>.<kind>": (ρ_fine, ρ_coarse)}``, see :func:`influence`.
    """

    scores: Scores
    name: str
    method: str
    weights: dict[str, tuple[float, float]]
    settings: dict
    details: dict = field(default_factory=dict)
    influence: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def fused(self) -> dict[str, Tensor]:
        """``{"<layer>.<kind>": fused scores [n]}``."""
        return self.scores[self.name]

    def to_dict(self) -> dict:
        """JSON-able weights, influence, settings and details (tensors excluded; they live in the Scores file)."""
        return {"name": self.name, "method": self.method, "settings": self.settings,
                "weights": {k: list(v) for k, v in self.weights.items()},
                "influence": {k: list(v) for k, v in self.influence.items()}, "details": self.details}


def _fingerprint(settings: dict) -> str:
    text = json.dumps({k: v for k, v in settings.items() if k != "fingerprint"}, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


# ---- soft and hard masks of groups on the output side ------------------------------------------------------------
class _GroupMask:
    """Scale each group's contribution by a mask value, via pre-hooks on the Linear that reads the groups.

    Every group set has exactly one slice cut along input columns (``dim=1``: o_proj, dense, down_proj,
    dense_4h_to_h); multiplying those input features by the group's mask value removes the group (0), keeps it (1)
    or anything between — a differentiable stand-in for pruning that leaves the weights untouched.
    """

    def __init__(self, model: nn.Module, adapter: StructureAdapter, sets: list[GroupSet]):
        layers = adapter.decoder_layers(model)
        self.masks: dict[str, Tensor | None] = {gs.key: None for gs in sets}
        self.handles = []
        for gs in sets:
            (s,) = [s for s in gs.slices if s.dim == 1]
            shape = [1] * len(s.layout)
            shape[s.axis] = gs.n
            owner = torch.arange(gs.n).view(shape).expand(s.layout).reshape(-1)      # group of each input feature
            module = layers[gs.layer].get_submodule(s.param.rpartition(".")[0])
            self.handles.append(module.register_forward_pre_hook(self._hook(gs.key, owner)))

    def _hook(self, key: str, owner: Tensor):
        def pre_hook(module: nn.Module, args: tuple):
            mask = self.masks[key]
            if mask is None:
                return None
            x = args[0]
            return (x * mask.to(x.dtype)[owner.to(x.device)],) + args[1:]
        return pre_hook

    def clear(self) -> None:
        for k in self.masks:
            self.masks[k] = None

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


@torch.no_grad()
def _loss(model: nn.Module, calibration: Tensor, chunk: int = 16) -> float:
    total, n = 0.0, calibration.shape[0]
    for ids in calibration.split(chunk):
        total += model(input_ids=ids, labels=ids, use_cache=False).loss.float().item() * ids.shape[0] / n
    return total


def _removal_mask(score: Tensor, gs: GroupSet, ratio: float) -> Tensor:
    """1 for kept groups, 0 for the ``removal_counts`` lowest-scored (per kv block), as :func:`pruning.plan`."""
    keep = torch.zeros(gs.n)
    keep[select(gs, score, removal_counts(gs, ratio))] = 1.0
    return keep


# ---- shared measurements ------------------------------------------------------------------------------------------
def _joint_loss(model: nn.Module, masks: _GroupMask, sets: list[GroupSet], scores: dict[str, Tensor], ratio: float,
                windows: Tensor) -> float:
    """Loss on ``windows`` with every set pruned at ``ratio`` by ``scores`` at once (hard masks)."""
    try:
        for gs in sets:
            masks.masks[gs.key] = _removal_mask(scores[gs.key], gs, ratio)
        return _loss(model, windows)
    finally:
        masks.clear()


class _Prefix:
    """Every decoder layer's output on some windows, so that a forward pass can restart at layer ℓ.

    Pruning one set of layer ℓ leaves layers 0..ℓ-1 unchanged, so their outputs are computed once (unmasked) and
    replayed: while :meth:`loss_from` runs, the ``forward`` of each earlier layer is replaced by a function that
    returns its recorded output. The loss is the same as a full forward pass; the skipped layers cost nothing.
    """

    def __init__(self, model: nn.Module, adapter: StructureAdapter, windows: Tensor, chunk: int = 16):
        self.model, self.layers = model, list(adapter.decoder_layers(model))
        self.chunks = list(windows.split(chunk))
        self.outputs: list[list] = [[None] * len(self.layers) for _ in self.chunks]
        self._chunk = 0

        def record(j: int):
            def hook(module, args, output):
                self.outputs[self._chunk][j] = output
            return hook

        handles = [layer.register_forward_hook(record(j)) for j, layer in enumerate(self.layers)]
        try:
            self.base = self._run()
        finally:
            for h in handles:
                h.remove()

    @torch.no_grad()
    def _run(self) -> float:
        total, n = 0.0, sum(ids.shape[0] for ids in self.chunks)
        for i, ids in enumerate(self.chunks):
            self._chunk = i
            total += self.model(input_ids=ids, labels=ids, use_cache=False).loss.float().item() * ids.shape[0] / n
        return total

    def loss_from(self, start: int) -> float:
        """Loss with layers ``0..start-1`` replayed from the unmasked pass (masks act from ``start`` on)."""

        def replay(j: int):
            return lambda *args, **kwargs: self.outputs[self._chunk][j]

        own = [self.layers[j].__dict__.get("forward") for j in range(start)]   # e.g. accelerate's wrapper
        for j in range(start):
            self.layers[j].forward = replay(j)
        try:
            return self._run()
        finally:
            for j in range(start):
                if own[j] is None:
                    del self.layers[j].forward       # back to the class's forward
                else:
                    self.layers[j].forward = own[j]


def _measure_sets(model, masks, sets, f, c, ratio, windows, adapter=None) -> tuple[float, dict]:
    """Loss increase on ``windows`` of pruning each set alone by the fine and by the coarse estimate.

    A set the ratio leaves whole, or where both estimates remove the same groups, costs no extra forward pass;
    with ``adapter`` the layers before the pruned set are replayed, not recomputed (:class:`_Prefix`).
    """
    if adapter is not None:
        prefix = _Prefix(model, adapter, windows)
        base = prefix.base

        def loss(layer: int) -> float:
            return prefix.loss_from(layer)
    else:
        base = _loss(model, windows)

        def loss(layer: int) -> float:
            return _loss(model, windows)
    increase = {}
    try:
        for gs in sets:
            k = gs.key
            if removal_counts(gs, ratio) == 0:
                increase[k] = (0.0, 0.0)
                continue
            keep_f, keep_c = _removal_mask(f[k], gs, ratio), _removal_mask(c[k], gs, ratio)
            masks.masks[k] = keep_f
            d_f = loss(gs.layer) - base
            if torch.equal(keep_f, keep_c):
                d_c = d_f
            else:
                masks.masks[k] = keep_c
                d_c = loss(gs.layer) - base
            masks.masks[k] = None
            increase[k] = (d_f, d_c)
    finally:
        masks.clear()
    return base, increase


def _layer_gate(d_f: float, d_c: float, temperature: float) -> tuple[float, float]:
    """``softmax(−[ΔL_f, ΔL_c] / (τ · mean |ΔL|))``; τ = 0 is the hard choice (ties: equal weights).

    Scaling by the mean absolute increase makes the gate unit-free, which bounds it: with both increases positive
    the logit gap is at most 2/τ, so at τ = 1 α stays within [0.12, 0.88] — a soft preference, never a switch.
    A negative increase (pruning that set by that estimate lowered the calibration loss: noise, or redundancy) is
    kept as measured: it simply favours that estimate more. Equal increases give (0.5, 0.5): no evidence either way.
    """
    if d_f == d_c:
        return 0.5, 0.5
    if temperature == 0:
        return (1.0, 0.0) if d_f < d_c else (0.0, 1.0)
    d = torch.tensor([d_f, d_c], dtype=torch.float64)
    alpha = torch.softmax(-d / (temperature * d.abs().mean()), dim=0)
    return alpha[0].item(), alpha[1].item()


def _blend(f, c, gates: dict[str, tuple[float, float]]) -> dict[str, Tensor]:
    return {k: gates[k][0] * f[k] + gates[k][1] * c[k] for k in f}


def _kind(key: str) -> str:
    return key.split(".", 1)[1]


def _per_kind_search(make: Callable[[dict[str, float]], dict[str, Tensor]], judge: Callable[[dict], float],
                     kinds: list[str], grid: tuple[float, ...] = BLEND_GRID
                     ) -> tuple[dict[str, float], dict[str, float]]:
    """Coordinate search of α_fine per kind over ``grid``, starting from the fine estimate alone.

    Each kind in turn takes the grid value with the lowest judged loss, the others held; ties keep the earlier
    value (1.0 = fine alone first), so with no evidence the search stays at the fine estimate.
    """
    alpha = dict.fromkeys(kinds, 1.0)
    tried: dict[str, float] = {}
    for kind in kinds:
        best = None
        for value in sorted(grid, reverse=True):
            trial = {**alpha, kind: value}
            label = ",".join(f"{k}={trial[k]:g}" for k in kinds)
            if label not in tried:
                tried[label] = judge(make(trial))
            if best is None or tried[label] < best[0]:
                best = (tried[label], value)
        alpha[kind] = best[1]
    return alpha, tried


# ---- the variant interface ----------------------------------------------------------------------------------------
#: What a variant may declare in :attr:`FusionVariant.needs`. ``model``: the model, its adapter, the group sets and
#: mask hooks (to measure losses of pruned sets; the weights are never changed); ``calibration``: calibration windows
#: [N, L]; ``holdout``: it judges its choices on held-out calibration windows (``holdout=`` or a split of
#: ``calibration``, see :func:`split_holdout`).
NEEDS = ("model", "calibration", "holdout")


@dataclass(frozen=True)
class FusionInputs:
    """What :func:`fuse` hands a variant. Fields a variant's ``needs`` do not declare are None.

    Attributes:
        fine: ``{"<layer>.<kind>": normalised fine scores [n]}``, fp32.
        coarse: The coarse estimate, same keys and shapes.
        temperature: Softmax temperature τ (> 0 from :func:`fuse`; 0 means the hard choice, used by the oracle).
        ratio: Per-structure pruning ratio in [0, 1) that the plan will use.
        model: The model (``model``).
        adapter: Its structure adapter (``model``).
        sets: The group sets of ``fine``'s keys (``model``).
        masks: Mask hooks on those sets' output-side Linears (``model``); cleared after every use.
        calibration: LongTensor [N, L] on the model's device (``calibration``).
        holdout: LongTensor [M, L'] on the model's device, or None (split off ``calibration`` where needed).
    """

    fine: dict[str, Tensor]
    coarse: dict[str, Tensor]
    temperature: float
    ratio: float = 0.25
    model: nn.Module | None = None
    adapter: StructureAdapter | None = None
    sets: list[GroupSet] | None = None
    masks: _GroupMask | None = None
    calibration: Tensor | None = None
    holdout: Tensor | None = None


class FusionOutput(NamedTuple):
    """What a variant returns: fused scores ``{key: [n]}``, weights ``{key: (α_fine, α_coarse)}`` and evidence."""

    fused: dict[str, Tensor]
    weights: dict[str, tuple[float, float]]
    details: dict


@dataclass(frozen=True)
class NoParams:
    """Settings of a variant that has none of its own."""


def _check_count(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} must be an integer >= 1")


def _check_positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not (isinstance(value, int | float) and value > 0 and math.isfinite(value)):
        raise ValueError(f"{name}={value!r} must be a positive number")


def _check_values(name: str, values: object, low: float, high: float | None) -> None:
    ok = isinstance(values, tuple | list) and len(values) > 0 and all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v >= low
        and (high is None or v <= high) for v in values)
    if not ok or (high is None and min(values) <= low):
        bound = f"in [{low:g}, {high:g}]" if high is not None else f"> {low:g}"
        raise ValueError(f"{name}={values!r} must be a non-empty tuple of numbers {bound}")


class FusionVariant(ABC):
    """One way to fuse the fine and coarse estimate: a name, what it needs, its own settings and :meth:`fuse`.

    A subclass sets the class attributes and implements :meth:`fuse`; one instance per variant goes into
    :data:`FUSIONS`, from which :func:`fuse` dispatches, the stages/CLI method list and the benchmarks read.

    Attributes:
        name: Key in :data:`FUSIONS` and the method name in saved runs (stable).
        needs: Subset of :data:`NEEDS`.
        Params: Frozen dataclass of the variant's own settings, with defaults; its ``__post_init__`` validates them
            and raises ValueError naming the bad value. Recorded in :attr:`FusionResult.settings` (tuples as lists),
            so they enter the fingerprint.
        normalization: A key of :data:`NORMALIZATIONS` the variant always works on (overrides ``normalize_with``),
            or None.

    Raises:
        TypeError: At class definition, if ``needs`` names something outside :data:`NEEDS` or ``Params`` is not a
            dataclass.
    """

    name: ClassVar[str]
    needs: ClassVar[frozenset[str]] = frozenset()
    Params: ClassVar[type] = NoParams
    normalization: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        unknown = sorted(set(cls.needs) - set(NEEDS))
        if unknown:
            raise TypeError(f"fusion variant {cls.__name__} needs unknown inputs {unknown}; valid: {list(NEEDS)}")
        if not is_dataclass(cls.Params):
            raise TypeError(f"fusion variant {cls.__name__}: Params must be a dataclass, not {cls.Params!r}")

    @property
    def measures(self) -> bool:
        """Whether it measures calibration losses: it needs the model or calibration windows (then both are given)."""
        return bool({"model", "calibration"} & self.needs)

    def settings(self, params: object) -> dict:
        """``params`` as JSON values for :attr:`FusionResult.settings` (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple | list) else v for k, v in asdict(params).items()}

    @abstractmethod
    def fuse(self, inputs: FusionInputs, params: object) -> FusionOutput:
        """Fused scores, per-set weights and evidence from the normalised estimates in ``inputs``."""


# ---- the variants -------------------------------------------------------------------------------------------------
class AefElement(FusionVariant):
    """Per-group attention ``[α_f, α_c]_i = softmax([f̂_i, ĉ_i] / τ)`` over rank-normalised scores. Source: [ours]."""

    name = "aef-element"
    normalization = "rank"          # the softmax compares the two scores, so they must share one scale

    def fuse(self, inputs: FusionInputs, params: NoParams) -> FusionOutput:
        """Details: none; weights are the per-set means of the per-group α."""
        f, c = inputs.fine, inputs.coarse
        fused, weights = {}, {}
        for k in f:
            stacked = torch.stack([f[k], c[k]])                                     # [2, n]
            alpha = torch.softmax(stacked / inputs.temperature, dim=0)              # per-group attention
            fused[k] = (alpha * stacked).sum(0)
            weights[k] = (alpha[0].mean().item(), alpha[1].mean().item())
        return FusionOutput(fused, weights, {})


class AefLayer(FusionVariant):
    """Gate per set from the measured loss increase of pruning that set alone by each estimate. Source: [ours]."""

    name = "aef-layer"
    needs = frozenset({"model", "calibration"})

    def fuse(self, inputs: FusionInputs, params: NoParams) -> FusionOutput:
        """Details: ``base_loss`` and ``loss_increase`` ``{key: {"fine": ΔL_f, "coarse": ΔL_c}}``."""
        x = inputs
        base, increase = _measure_sets(x.model, x.masks, x.sets, x.fine, x.coarse, x.ratio, x.calibration, x.adapter)
        gates = {k: _layer_gate(*increase[k], x.temperature) for k in x.fine}
        return FusionOutput(_blend(x.fine, x.coarse, gates), gates, {
            "base_loss": base, "loss_increase": {k: {"fine": d[0], "coarse": d[1]} for k, d in increase.items()}})


class AefLayerTuned(FusionVariant):
    """aef-layer's measurements on the fit windows; τ / hard / either input alone picked on held-out windows.

    Source: [ours].
    """

    name = "aef-layer-tuned"
    needs = frozenset({"model", "calibration", "holdout"})

    @dataclass(frozen=True)
    class Params:
        """``temperatures``: the τ values tried besides the hard choice and each input alone (each > 0)."""

        temperatures: tuple[float, ...] = TEMPERATURES

        def __post_init__(self) -> None:
            _check_values("temperatures", self.temperatures, 0, None)

    def fuse(self, inputs: FusionInputs, params: Params) -> FusionOutput:
        """Details: aef-layer's, plus ``holdout_loss`` per candidate, ``chosen``, window counts."""
        x, f, c = inputs, inputs.fine, inputs.coarse
        fit, held = split_holdout(x.calibration, x.holdout)
        base, increase = _measure_sets(x.model, x.masks, x.sets, f, c, x.ratio, fit, x.adapter)
        candidates = {"fine": {k: (1.0, 0.0) for k in f}, "hard": {k: _layer_gate(*increase[k], 0) for k in f},
                      **{f"tau={t:g}": {k: _layer_gate(*increase[k], t) for k in f} for t in params.temperatures},
                      "coarse": {k: (0.0, 1.0) for k in f}}
        losses = {name: _joint_loss(x.model, x.masks, x.sets, _blend(f, c, g), x.ratio, held)
                  for name, g in candidates.items()}
        chosen = min(losses, key=losses.get)                               # ties: the first listed (fine alone)
        return FusionOutput(_blend(f, c, candidates[chosen]), candidates[chosen], {
            "base_loss": base, "loss_increase": {k: {"fine": d[0], "coarse": d[1]} for k, d in increase.items()},
            "holdout_loss": losses, "chosen": chosen, "fit_windows": fit.shape[0], "holdout_windows": held.shape[0]})


@dataclass(frozen=True)
class GridParams:
    """``grid``: the α_fine values tried per kind (each in [0, 1]); ``aef-blend`` and ``aef-agree``."""

    grid: tuple[float, ...] = BLEND_GRID

    def __post_init__(self) -> None:
        _check_values("grid", self.grid, 0, 1)


class AefBlend(FusionVariant):
    """One α_fine per kind from the grid, judged on the held-out windows (all calibration if none). Source: [ours]."""

    name = "aef-blend"
    needs = frozenset({"model", "calibration", "holdout"})
    Params = GridParams

    def fuse(self, inputs: FusionInputs, params: GridParams) -> FusionOutput:
        """Details: ``holdout_loss`` per grid point tried, ``alpha_fine`` per kind, ``holdout_windows``."""
        x, f, c = inputs, inputs.fine, inputs.coarse
        windows = x.calibration if x.holdout is None else x.holdout
        kinds = sorted({_kind(k) for k in f})

        def make(alpha):
            return _blend(f, c, {k: (alpha[_kind(k)], 1 - alpha[_kind(k)]) for k in f})

        alpha, tried = _per_kind_search(make, lambda s: _joint_loss(x.model, x.masks, x.sets, s, x.ratio, windows),
                                        kinds, params.grid)
        gates = {k: (alpha[_kind(k)], 1 - alpha[_kind(k)]) for k in f}
        return FusionOutput(_blend(f, c, gates), gates, {"holdout_loss": tried, "alpha_fine": alpha,
                                                         "holdout_windows": windows.shape[0]})


def _consensus(f, c, sets, ratio, alpha: dict[str, float]) -> dict[str, Tensor]:
    """Groups both estimates remove stay removed, groups both keep stay kept; the blend orders the disputed."""
    out = {}
    for gs in sets:
        k = gs.key
        b = alpha[_kind(k)] * f[k] + (1 - alpha[_kind(k)]) * c[k]
        keep_f, keep_c = _removal_mask(f[k], gs, ratio), _removal_mask(c[k], gs, ratio)
        span = 2 * (b.max() - b.min()).clamp_min(1e-6)
        out[k] = b + span * (keep_f * keep_c) - span * ((1 - keep_f) * (1 - keep_c))
    return out


class AefAgree(FusionVariant):
    """Per-group gate by agreement; the disputed groups' blend weight per kind judged on held-out windows.

    Source: [ours].
    """

    name = "aef-agree"
    needs = frozenset({"model", "calibration", "holdout"})
    Params = GridParams

    def fuse(self, inputs: FusionInputs, params: GridParams) -> FusionOutput:
        """Details: aef-blend's, plus ``agreed_share`` per set (share of groups both estimates treat alike)."""
        x, f, c = inputs, inputs.fine, inputs.coarse
        windows = x.calibration if x.holdout is None else x.holdout
        kinds = sorted({_kind(k) for k in f})
        alpha, tried = _per_kind_search(lambda a: _consensus(f, c, x.sets, x.ratio, a),
                                        lambda s: _joint_loss(x.model, x.masks, x.sets, s, x.ratio, windows), kinds,
                                        params.grid)
        fused = _consensus(f, c, x.sets, x.ratio, alpha)
        agreed = {}
        for gs in x.sets:
            keep_f, keep_c = _removal_mask(f[gs.key], gs, x.ratio), _removal_mask(c[gs.key], gs, x.ratio)
            agreed[gs.key] = round((keep_f == keep_c).float().mean().item(), 4)
        gates = {k: (alpha[_kind(k)], 1 - alpha[_kind(k)]) for k in f}
        return FusionOutput(fused, gates, {"holdout_loss": tried, "alpha_fine": alpha, "agreed_share": agreed,
                                           "holdout_windows": windows.shape[0]})


def _soft_masks(masks, sets, f, c, logits, ratio, temperature) -> None:
    for gs in sets:
        n_remove = removal_counts(gs, ratio)
        if n_remove == 0:
            continue
        alpha = torch.softmax(logits[gs.key], 0)
        score = alpha[0] * f[gs.key] + alpha[1] * c[gs.key]
        s_sorted = torch.sort(score).values
        threshold = 0.5 * (s_sorted[n_remove - 1] + s_sorted[min(n_remove, gs.n - 1)])
        spread = score.std(unbiased=False).clamp_min(1e-12)
        masks.masks[gs.key] = torch.sigmoid((score - threshold) / (temperature * 0.1 * spread))


class AefLearned(FusionVariant):
    """Gate logits trained through a soft mask, early-stopped on the held-out loss of the hard pruning.

    The model's weights are frozen and unchanged. Starts from equal weights (step 0 is judged too); keeps the
    logits with the lowest held-out loss and stops after ``patience`` steps without a new lowest one.

    Source: [ours].
    """

    name = "aef-learned"
    needs = frozenset({"model", "calibration", "holdout"})

    @dataclass(frozen=True)
    class Params:
        """``steps``: most Adam steps (>= 1); ``lr``: learning rate (> 0); ``patience``: stop after so many steps.

        ``patience`` (>= 1) counts steps without a lower held-out loss.
        """

        steps: int = 50
        lr: float = 0.1
        patience: int = 8

        def __post_init__(self) -> None:
            _check_count("steps", self.steps)
            _check_count("patience", self.patience)
            _check_positive("lr", self.lr)

    def fuse(self, inputs: FusionInputs, params: Params) -> FusionOutput:
        """Details: ``soft_mask_loss`` and ``holdout_loss`` curves, ``best_step``, ``steps_run``, window counts."""
        x, f, c, model, masks, sets = inputs, inputs.fine, inputs.coarse, inputs.model, inputs.masks, inputs.sets
        fit, held = split_holdout(x.calibration, x.holdout)
        logits = {gs.key: torch.zeros(2, requires_grad=True) for gs in sets}
        opt = torch.optim.Adam(list(logits.values()), lr=params.lr)
        flags = [(p, p.requires_grad) for p in model.parameters()]
        for p, _ in flags:
            p.requires_grad_(False)

        def held_loss() -> float:
            gates = {k: tuple(torch.softmax(lg.detach(), 0).tolist()) for k, lg in logits.items()}
            return _joint_loss(model, masks, sets, _blend(f, c, gates), x.ratio, held)

        curve, held_curve = [], [held_loss()]
        best = (held_curve[0], {k: lg.detach().clone() for k, lg in logits.items()}, 0)
        try:
            for step in range(1, params.steps + 1):
                _soft_masks(masks, sets, f, c, logits, x.ratio, x.temperature)
                loss = model(input_ids=fit, labels=fit, use_cache=False).loss
                masks.clear()
                opt.zero_grad()
                loss.backward()
                opt.step()
                curve.append(loss.item())
                held_curve.append(held_loss())
                if held_curve[-1] < best[0]:
                    best = (held_curve[-1], {k: lg.detach().clone() for k, lg in logits.items()}, step)
                elif step - best[2] >= params.patience:
                    break
        finally:
            masks.clear()
            for p, flag in flags:
                p.requires_grad_(flag)
        gates = {k: tuple(torch.softmax(lg, 0).tolist()) for k, lg in best[1].items()}
        return FusionOutput(_blend(f, c, gates), gates, {
            "soft_mask_loss": curve, "holdout_loss": held_curve, "best_step": best[2], "steps_run": len(curve),
            "fit_windows": fit.shape[0], "holdout_windows": held.shape[0]})


class Fixed(FusionVariant):
    """User-given ``(α_f, α_c)`` everywhere (normalised to sum 1); ``(1, 0)`` / ``(0, 1)`` reproduce each input."""

    name = "fixed"

    @dataclass(frozen=True)
    class Params:
        """``weights``: ``(α_fine, α_coarse)``, both >= 0 and not both 0 (required)."""

        weights: tuple[float, float] | None = None

        def __post_init__(self) -> None:
            w = self.weights
            if w is None or len(w) != 2 or min(w) < 0 or sum(w) <= 0:
                raise ValueError(f"method 'fixed' needs weights=(alpha_fine, alpha_coarse) >= 0, not both 0; got {w}")

    def fuse(self, inputs: FusionInputs, params: Params) -> FusionOutput:
        """Details: none."""
        f, c, weights = inputs.fine, inputs.coarse, params.weights
        a_f, a_c = weights[0] / sum(weights), weights[1] / sum(weights)
        return FusionOutput({k: a_f * f[k] + a_c * c[k] for k in f}, {k: (a_f, a_c) for k in f}, {})


#: method -> variant. Names are stable: benchmarks and saved runs refer to them. Every variant is [ours] (the paper's
#: formula is not public). Adding a variant is one :class:`FusionVariant` subclass and one entry here.
FUSIONS: dict[str, FusionVariant] = {v.name: v for v in (
    AefLayer(), AefLayerTuned(), AefElement(), AefBlend(), AefAgree(), AefLearned(), Fixed())}


def _prepare(scores: Scores, fine: str, coarse: str, how: str) -> tuple[dict, dict]:
    missing = [c for c in (fine, coarse) if c not in scores.values]
    if missing:
        raise ValueError(f"scores lack {missing}; estimate them first (present: {scores.criteria})")
    if how not in NORMALIZATIONS:
        raise ValueError(f"unknown normalisation {how!r}; choose one of {sorted(NORMALIZATIONS)}")
    return ({k: normalize(v, how) for k, v in scores[fine].items()},
            {k: normalize(v, how) for k, v in scores[coarse].items()})


def _result(scores: Scores, fused, gates, details, settings: dict, *, fine: str, coarse: str, name: str,
            method: str) -> FusionResult:
    settings["fingerprint"] = _fingerprint(settings)
    new_scores = scores.with_criterion(name, fused, **{k: v for k, v in settings.items() if v is not None})
    return FusionResult(new_scores, name, method, gates, settings, details,
                        influence(new_scores[name], scores[fine], scores[coarse]))


def _check_same_groups(scores: Scores, fine: str, coarse: str) -> None:
    """Both estimates score the same group sets with the same group counts (one 1-D tensor each).

    Raises:
        ValueError: Naming the sets only one of them has, or the sets whose counts differ.
    """
    if fine not in scores.values or coarse not in scores.values:
        return  # _prepare names the missing criteria
    f, c = scores.values[fine], scores.values[coarse]
    only_f, only_c = sorted(f.keys() - c.keys()), sorted(c.keys() - f.keys())
    if only_f or only_c:
        raise ValueError(f"fine={fine!r} and coarse={coarse!r} score different group sets: only {fine!r} has "
                         f"{only_f[:8]}, only {coarse!r} has {only_c[:8]}; estimate both on the same model and "
                         "layers (one aeflib.importance.estimate call)")
    shapes = {k: (tuple(f[k].shape), tuple(c[k].shape)) for k in f}
    bad = {k: v for k, v in shapes.items() if v[0] != v[1] or len(v[0]) != 1}
    if bad:
        rows = ", ".join(f"{k}: {list(a)} vs {list(b)}" for k, (a, b) in sorted(bad.items())[:8])
        raise ValueError(f"fine={fine!r} and coarse={coarse!r} give different group counts (or not one score per "
                         f"group) in {rows}; estimate both on the same model")


def _model_sets(model: nn.Module, adapter: StructureAdapter, scored: dict[str, Tensor]) -> list[GroupSet]:
    """The model's group sets the scores cover; every scored set must exist there with the scored group count.

    Raises:
        ValueError: Naming the scored sets the model does not have, or whose group counts differ.
    """
    n_layers = adapter.n_layers(model)
    layers = sorted({int(k.split(".")[0]) for k in scored})
    outside = [i for i in layers if not 0 <= i < n_layers]
    sets = [gs for gs in adapter.all_group_sets(model, [i for i in layers if 0 <= i < n_layers]) if gs.key in scored]
    missing = sorted(scored.keys() - {gs.key for gs in sets})
    if outside or missing:
        raise ValueError(f"the scores have group sets the model does not have: {missing[:8]} (the model has "
                         f"{n_layers} layers); pass the model the scores were estimated on")
    wrong = [f"{gs.key}: {scored[gs.key].numel()} scores, the model has {gs.n} groups" for gs in sets
             if scored[gs.key].numel() != gs.n]
    if wrong:
        raise ValueError(f"the scores do not match the model's group counts ({'; '.join(wrong[:8])}); pass the "
                         "model the scores were estimated on (before pruning)")
    return sets


def fuse(
    scores: Scores,
    method: str = "aef",
    *,
    fine: str = "element2",
    coarse: str = "vector",
    normalize_with: str = DEFAULT_NORMALIZATION,
    temperature: float = 1.0,
    model: nn.Module | None = None,
    adapter: StructureAdapter | None = None,
    calibration: Tensor | None = None,
    holdout: Tensor | None = None,
    pruning_ratio: float = 0.25,
    weights: tuple[float, float] | None = None,
    steps: int = 50,
    lr: float = 0.1,
    patience: int = 8,
    name: str | None = None,
    params: object | None = None,
) -> FusionResult:
    """Fuse a fine and a coarse estimate per group set into one importance.

    Args:
        scores: Estimates from :func:`aeflib.importance.estimate`, holding ``fine`` and ``coarse``.
        method: ``"aef"`` (alias of :data:`DEFAULT_METHOD`) or a key of :data:`FUSIONS`.
        fine: Fine-grained criterion (``"element2"`` [paper]: Taylor + Fisher; or ``"element1"``).
        coarse: Coarse-grained criterion (``"vector"`` [paper]).
        normalize_with: Key of :data:`NORMALIZATIONS` (default ``rank``: equal weights, equal influence), applied
            per group set before fusing. ``aef-element`` always works on ``rank`` scale so its softmax compares
            like with like.
        temperature: Softmax temperature τ > 0 of the gates (``aef-layer``, ``aef-element``; the soft mask of
            ``aef-learned``). ``aef-layer-tuned`` picks its own from :data:`TEMPERATURES`.
        model: Needed by every variant that measures the calibration loss (all but ``aef-element`` and
            ``fixed``); its weights are never changed.
        adapter: The model's structure adapter (same variants).
        calibration: LongTensor [N, L] of calibration windows (same variants).
        holdout: LongTensor [M, L'] of held-out calibration windows (train split, not in ``calibration``) that
            ``aef-layer-tuned``, ``aef-blend``, ``aef-agree`` and ``aef-learned`` judge their choices on. None:
            ``aef-layer-tuned`` and ``aef-learned`` hold out the last ``round(0.3 · N)`` calibration windows
            (:func:`split_holdout`); ``aef-blend`` and ``aef-agree``, which fit nothing else, judge on all N.
        pruning_ratio: Per-structure ratio the plan will use (the gates judge the removal at this ratio).
        weights: ``(α_fine, α_coarse)`` for ``method="fixed"``.
        steps: Most Adam steps of ``aef-learned`` (>= 1).
        lr: Adam learning rate of ``aef-learned`` (> 0).
        patience: ``aef-learned`` stops after this many steps (>= 1) without a lower held-out loss.
        name: Criterion name for the fused scores (default: ``method`` as given).
        params: The variant's own settings, an instance of ``FUSIONS[method].Params`` (e.g.
            ``fusion.AefLayerTuned.Params(temperatures=(0.5, 1.0))``). None: built from the keywords above whose
            names are fields of ``Params`` (``weights``; ``steps``, ``lr``, ``patience``), other fields at their
            defaults.

    Returns:
        :class:`FusionResult` with weights, influence, settings (and their fingerprint) and evidence.

    Raises:
        ValueError: Unknown method / normalisation, missing criteria, τ <= 0, ratio outside [0, 1), steps,
            patience < 1 or lr <= 0 (checked whatever the method), settings the variant's ``Params`` rejects, a
            measuring method without model/adapter/calibration; ``fine`` and ``coarse`` over different group sets
            or group counts (naming them), or, for a measuring method, scored sets the model lacks or counts it
            does not have — all before any work.
        TypeError: ``params`` not an instance of the variant's ``Params``.

    Source: [paper] fusion of coarse and fine estimates per substructure; formulas [ours] (module docstring).
    """
    resolved = DEFAULT_METHOD if method == "aef" else method
    if resolved not in FUSIONS:
        raise ValueError(f"unknown fusion method {method!r}; choose 'aef' or one of {sorted(FUSIONS)}")
    if normalize_with not in NORMALIZATIONS:
        raise ValueError(f"unknown normalisation {normalize_with!r}; choose one of {sorted(NORMALIZATIONS)}")
    if not (isinstance(temperature, int | float) and temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature={temperature!r} must be a positive number")
    if not 0 <= pruning_ratio < 1:
        raise ValueError(f"pruning_ratio={pruning_ratio} is outside [0, 1)")
    _check_count("steps", steps)
    _check_count("patience", patience)
    _check_positive("lr", lr)
    _check_same_groups(scores, fine, coarse)
    variant = FUSIONS[resolved]
    if params is not None and not isinstance(params, variant.Params):
        raise TypeError(f"params for {resolved!r} must be a {variant.Params.__qualname__}; got {params!r}")
    how = variant.normalization or normalize_with
    f, c = _prepare(scores, fine, coarse, how)
    if params is None:      # the keyword form: the keywords named like the variant's settings
        keywords = {"weights": weights, "steps": steps, "lr": lr, "patience": patience}
        params = variant.Params(**{k.name: keywords[k.name] for k in fields(variant.Params) if k.name in keywords})
    settings = {"method": resolved, "fine": fine, "coarse": coarse, "normalize": how, "temperature": temperature,
                "pruning_ratio": pruning_ratio, "alias_of": resolved if method == "aef" else None,
                **variant.settings(params)}
    if not variant.measures:
        fused, gates, details = variant.fuse(FusionInputs(f, c, temperature, pruning_ratio), params)
    else:
        if model is None or adapter is None or calibration is None:
            raise ValueError(f"method {resolved!r} measures the calibration loss: pass model=, adapter= and "
                             "calibration=")
        sets = _model_sets(model, adapter, f)
        device = next(model.parameters()).device
        settings["holdout"] = "split" if holdout is None else f"given [{holdout.shape[0]}, {holdout.shape[1]}]"
        masks = _GroupMask(model, adapter, sets)
        try:
            inputs = FusionInputs(f, c, temperature, pruning_ratio, model=model, adapter=adapter, sets=sets,
                                  masks=masks, calibration=calibration.to(device),
                                  holdout=None if holdout is None else holdout.to(device))
            fused, gates, details = variant.fuse(inputs, params)
        finally:
            masks.remove()
    log.info("fused %s + %s with %s", fine, coarse, resolved)
    return _result(scores, fused, gates, details, settings, fine=fine, coarse=coarse, name=name or method,
                   method=resolved)


def oracle_choice(
    scores: Scores,
    evaluation: Tensor,
    *,
    model: nn.Module,
    adapter: StructureAdapter,
    pruning_ratio: float,
    fine: str = "element2",
    coarse: str = "vector",
    normalize_with: str = DEFAULT_NORMALIZATION,
) -> FusionResult:
    """Upper-bound reference for benchmarks: per (layer, kind), the estimate whose removal hurts *evaluation* less.

    **Reads evaluation text** — it is not a fusion method, is not in :data:`FUSIONS`, and must never be a default
    or be compared as a method; it shows the headroom between the estimates and the best per-set choice. For each
    group set alone, the loss increase on ``evaluation`` of pruning it at ``pruning_ratio`` by the fine and by the
    coarse estimate is measured (as ``aef-layer`` does on calibration windows), and the lower one wins outright.

    Args:
        scores: Estimates holding ``fine`` and ``coarse``.
        evaluation: LongTensor [M, L] of windows from the *evaluation* split.
        model: The dense model (weights are not changed).
        adapter: Its structure adapter.
        pruning_ratio: Per-structure ratio of the plan, in [0, 1).
        fine: Fine criterion name.
        coarse: Coarse criterion name.
        normalize_with: Key of :data:`NORMALIZATIONS`.

    Returns:
        :class:`FusionResult` named :data:`ORACLE`, weights (1, 0) or (0, 1) per set.

    Raises:
        ValueError: Missing criteria, unknown normalisation, ratio outside [0, 1).

    Source: [ours].
    """
    if not 0 <= pruning_ratio < 1:
        raise ValueError(f"pruning_ratio={pruning_ratio} is outside [0, 1)")
    f, c = _prepare(scores, fine, coarse, normalize_with)
    layers = sorted({int(k.split(".")[0]) for k in f})
    sets = [gs for gs in adapter.all_group_sets(model, layers) if gs.key in f]
    masks = _GroupMask(model, adapter, sets)
    try:
        inputs = FusionInputs(f, c, 0, pruning_ratio, model=model, adapter=adapter, sets=sets, masks=masks,
                              calibration=evaluation.to(next(model.parameters()).device))
        fused, gates, details = FUSIONS["aef-layer"].fuse(inputs, NoParams())   # τ = 0: the hard choice
    finally:
        masks.remove()
    settings = {"method": ORACLE, "fine": fine, "coarse": coarse, "normalize": normalize_with,
                "pruning_ratio": pruning_ratio, "evaluation_windows": list(evaluation.shape),
                "note": "upper bound: chosen on evaluation text"}
    return _result(scores, fused, gates, details, settings, fine=fine, coarse=coarse, name=ORACLE, method=ORACLE)
