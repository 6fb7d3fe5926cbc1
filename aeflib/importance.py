"""Importance estimators of the LLM-Pruner family, computed for every group in one set of backward passes.

Notation: calibration set D of N token windows; L = mean causal-LM cross-entropy over D;
for a weight W with gradient g = dL/dW the *salience* is s = W ⊙ g. A group's slices are cut into *vectors*
(one weight row, or column, each) and every criterion scores a vector, sums the vectors of a slice, then reduces
the slices of the group (``sum`` by default):

| criterion  | per vector v                     | granularity       | source                                   |
|------------|----------------------------------|-------------------|------------------------------------------|
| random     | —  (uniform draw per group)      | baseline          | [LLM-Pruner code] ``random``             |
| l1         | Σ_k |W_k|                        | weight magnitude  | [LLM-Pruner code] ``l1``                 |
| l2         | Σ_k W_k²                         | weight magnitude  | [LLM-Pruner code] ``l2`` (squared norm)  |
| vector     | | Σ_k s_k |                      | coarse (vector)   | [paper] vector-wise; LLM-Pruner ``vectorize`` |
| element1   | Σ_k | s_k |                      | fine (element)    | [LLM-Pruner code] ``param_first``        |
| element2   | Σ_k | s_k − ½ W_k² F_kk |        | fine, 2nd order   | [LLM-Pruner code] ``param_mix``          |
| wanda      | Σ_k |W_k| · ‖X_k‖₂              | weight × activation | [ours, Wanda-style, Sun et al. 2023]   |
| wanda-sp   | Σ_k |W_k| · ‖X_k‖₂, output projection only | weight × activation | [field] FLAP's Wanda-sp baseline |
| fluctuation | Σ_k W_k² · Var(X_k), output projection only | weight × activation | [field] FLAP (WIFV)           |

F is the diagonal empirical Fisher F_kk = (1/N) Σ_j (dL(x_j)/dW_k)², from N single-window backward passes.
‖X_k‖₂ is the L2 norm, over all N·L calibration tokens, of the input feature that W_k multiplies (√(N·L) for a bias,
whose input is 1); Wanda scores single weights this way (arXiv 2306.11695, §3), summed here per group.
``wanda`` sums over every slice of the group (q/k/v or gate/up rows included): a named variant [ours], not FLAP's
Wanda-sp. ``wanda-sp`` and ``fluctuation`` (:attr:`Criterion.output_only`) score only the group's input columns of
its output projection (the one slice cut along input columns, ``dim=1``), as FLAP (arXiv 2312.11983) defines its
Wanda-sp baseline and its fluctuation metric; Var(X_k) is the sample variance over all N·L calibration tokens of the
input feature W_k multiplies (:mod:`aeflib.activations`). Neither needs a backward pass. FLAP's global width
allocation and bias compensation live in :mod:`aeflib.flap`.

Each criterion is a :class:`Criterion` declaring the statistics it needs (:data:`STATISTICS`: ``weight``, ``grad``,
``fisher``, ``activations``, ``variance``); :func:`estimate` collects only their union, and a criterion's function
reads them from a :class:`SliceStats`. Adding a criterion is one entry in :data:`ESTIMATORS`.

Dtype policy: whatever the model dtype, every gradient is upcast to fp32 the moment it exists and all accumulation
is fp32 (bf16 has 8 mantissa bits: sums of squared gradients in bf16 lose small terms); the model keeps its dtype.

Two paths give the same numbers (a test holds them to 1e-6):

* ``path="bounded"`` (default) — per-parameter ``post_accumulate_grad`` hooks turn each gradient into per-group
  scores *during* backward and free it at once; parameters outside the pruned layers get no gradient at all.
  With the whole calibration set in one backward (the paper's 10 × 64 tokens), no per-element gradient buffer
  exists beyond the one parameter being scored. Chunked calibration (``chunk_size``) bounds activation memory;
  it then needs one fp32 gradient accumulator per pruned weight, because |Σ| is not Σ||. ``element2`` needs one
  fp32 Fisher accumulator per pruned weight (the absolute value is taken per element, so it cannot be reduced
  to groups earlier).
* Fisher memory (``fisher_memory_gib``): at LLaMA-7B scale the Fisher accumulators of layers 4..29 (5.26 B weights
  × 4 bytes = 19.6 GiB) do not fit beside the 12.55 GiB of bf16 weights in 24 GiB. When the all-at-once
  accumulators would exceed the budget, the pruned layers are scored a *slice* of consecutive layers at a time:
  only the slice's parameters require grad (so backward stops at the slice's first layer), and the N single-window
  passes accumulate both the Fisher and the gradient sum (fp32, 8 bytes per weight of the slice). With windows of
  equal length the mean of the per-window gradients is the gradient of the mean loss, so no full-batch pass is
  needed and the scores equal the all-at-once ones (a test holds them to 1e-6). The price is time: every slice
  repeats the N forward passes and the backward passes down to its first layer. At LLaMA-7B (202 M pruned weights
  per layer, 1.51 GiB of accumulators) the default 5 GiB gives 3 layers per slice, 9 slices for layers 4..29;
  measured by ``benchmarks/full7b.py --models llama-7b --n 1`` (bf16, 2 CPU threads): 12.55 GiB of weights + 5.42
  GiB of the process's own peak memory, and 875 CPU seconds per calibration window (the time grows linearly with
  N; the memory does not). The all-at-once path would cost about N single-window passes plus one N-window pass,
  with every layer in each backward. Small models (SmolLM2-135M: 0.32 GiB of Fisher) stay on the all-at-once
  path, unchanged.
* ``path="naive"`` — LLM-Pruner's way: full ``.grad`` on every parameter, then score. Kept as the test oracle
  and for the memory benchmark.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from aeflib.activations import capture_inputs
from aeflib.models.adapters import GroupSet, Slice, StructureAdapter
from aeflib.models.checksum import checksum
from aeflib.models.registry import require_resident
from aeflib.scores import Scores
from aeflib.validation import check_calibration, check_layers

__all__ = ["DEFAULT_CRITERIA", "DEFAULT_FISHER_MEMORY_GIB", "ESTIMATORS", "PATHS", "REDUCTIONS", "STATISTICS",
           "Criterion", "SliceStats", "estimate", "fisher_layer_slices", "slice_scores"]

log = logging.getLogger(__name__)

Tensor = torch.Tensor


# ---- criteria: what each one needs, and its function of a per-group view -----------------------------------------
#: Statistics a criterion may declare in :attr:`Criterion.needs`; :func:`estimate` collects only their union.
#: ``weight``: the parameter itself (free); ``grad``: dL/dW of the mean calibration loss (one backward over the
#: calibration set); ``fisher``: the diagonal empirical Fisher (N single-window backward passes, one fp32
#: accumulator per pruned weight); ``activations``: the L2 norm over all calibration tokens of each input feature of
#: the Linear that owns the parameter (one no-grad forward pass; ``[in_features]`` fp32 per Linear).
#: ``variance``: the sample variance over all calibration tokens of the same input features (same forward pass).
STATISTICS = ("weight", "grad", "fisher", "activations", "variance")


class SliceStats:
    """The statistics of one slice in per-group view ``[n_groups, vectors, vector_len]``, fp32; absent ones are None.

    A criterion's function receives this object and reads only what its :attr:`Criterion.needs` declares.

    Attributes:
        weight: W.
        grad: dL/dW (None unless some requested criterion needs ``grad``).
        fisher: Diagonal Fisher F_kk (None unless ``fisher`` is needed).
        activations: ‖X_j‖₂ of the input feature j that each element of W multiplies, broadcast to W's shape (for a
            bias, whose input is the constant 1: √T for T calibration tokens); None unless ``activations`` is needed.
        variance: Var(X_j) over the calibration tokens, broadcast the same way (0 for a bias); None unless
            ``variance`` is needed.

    Source: [ours].
    """

    def __init__(self, weight: Tensor, grad: Tensor | None = None, fisher: Tensor | None = None,
                 activations: Tensor | None = None, variance: Tensor | None = None):
        self.weight, self.grad, self.fisher, self.activations = weight, grad, fisher, activations
        self.variance = variance
        self._salience: Tensor | None = None

    @property
    def salience(self) -> Tensor:
        """W ⊙ g, computed once for all criteria that read it.

        Raises:
            ValueError: If the gradient was not collected (the criterion did not declare ``grad``).
        """
        if self.grad is None:
            raise ValueError("salience W*g needs the gradient: declare 'grad' in the criterion's needs")
        if self._salience is None:
            self._salience = self.weight * self.grad
        return self._salience


@dataclass(frozen=True)
class Criterion:
    """An importance criterion: its name, the statistics it needs and how it scores groups.

    Exactly one of ``fn`` (per slice: ``fn(stats) -> [n_groups]``, fp32; slices are then reduced per group with
    ``reduction``) or ``per_set`` (per group set: ``per_set(sets, seed) -> {key: [n]}``, e.g. ``random``) is given.

    Attributes:
        name: Key in :data:`ESTIMATORS` and in :class:`~aeflib.scores.Scores` (stable: saved runs refer to it).
        needs: Subset of :data:`STATISTICS` that ``fn`` reads from :class:`SliceStats`.
        fn: Per-slice scoring function of a :class:`SliceStats`.
        per_set: Per-group-set scoring function (no statistics).
        source: Where the formula comes from (paper section / LLM-Pruner option / [ours]).
        output_only: Score only the group set's input-column slice of its output projection (``dim=1``; FLAP's
            Wanda-sp and fluctuation), not every slice; ``reduction`` then sees that one slice.

    Raises:
        ValueError: Unknown statistic in ``needs`` (names the valid ones), or not exactly one of ``fn`` / ``per_set``.
    """

    name: str
    needs: frozenset[str]
    fn: Callable[[SliceStats], Tensor] | None = None
    per_set: Callable[[list[GroupSet], int], dict[str, Tensor]] | None = None
    source: str = "[ours]"
    output_only: bool = False

    def __post_init__(self) -> None:
        unknown = sorted(set(self.needs) - set(STATISTICS))
        if unknown:
            raise ValueError(f"criterion {self.name!r} needs unknown statistics {unknown}; valid: {list(STATISTICS)}")
        if (self.fn is None) == (self.per_set is None):
            raise ValueError(f"criterion {self.name!r}: give exactly one of fn= (per slice) or per_set= (per set)")
        object.__setattr__(self, "needs", frozenset(self.needs))


def _random_scores(sets: list[GroupSet], seed: int) -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {gs.key: torch.rand(gs.n, generator=gen) for gs in sets}


def _l1(x: SliceStats) -> Tensor:
    return x.weight.abs().sum((1, 2))


def _l2(x: SliceStats) -> Tensor:
    return x.weight.pow(2).sum((1, 2))


def _vector(x: SliceStats) -> Tensor:
    return x.salience.sum(2).abs().sum(1)          # |Σ over each vector|, then Σ over the vectors of the group


def _element1(x: SliceStats) -> Tensor:
    return x.salience.abs().sum((1, 2))


def _element2(x: SliceStats) -> Tensor:
    return (x.salience - 0.5 * x.weight.pow(2) * x.fisher).abs().sum((1, 2))


def _wanda(x: SliceStats) -> Tensor:
    return (x.weight.abs() * x.activations).sum((1, 2))


def _fluctuation(x: SliceStats) -> Tensor:
    return (x.weight.pow(2) * x.variance).sum((1, 2))      # Σ_j Var(X_j) · ‖W[:, j]‖² over the group's columns


_W, _G, _F, _A, _V = "weight", "grad", "fisher", "activations", "variance"

#: criterion name -> :class:`Criterion`. Add a criterion by adding one entry (its ``needs`` tells :func:`estimate`
#: what to collect); the method list of stages, pipeline and CLI follows this table.
ESTIMATORS: dict[str, Criterion] = {c.name: c for c in (
    Criterion("random", frozenset(), per_set=_random_scores, source="[LLM-Pruner code] random"),
    Criterion("l1", frozenset({_W}), _l1, source="[LLM-Pruner code] l1"),
    Criterion("l2", frozenset({_W}), _l2, source="[LLM-Pruner code] l2 (squared norm)"),
    Criterion("vector", frozenset({_W, _G}), _vector, source="[paper §3] vector-wise; LLM-Pruner vectorize"),
    Criterion("element1", frozenset({_W, _G}), _element1, source="[LLM-Pruner code] param_first"),
    Criterion("element2", frozenset({_W, _G, _F}), _element2, source="[LLM-Pruner code] param_mix"),
    Criterion("wanda", frozenset({_W, _A}), _wanda, source="[ours, Wanda-style, Sun et al. 2023]: every slice"),
    Criterion("wanda-sp", frozenset({_W, _A}), _wanda, output_only=True,
              source="[field] FLAP arXiv 2312.11983, Wanda-sp baseline (Wanda, arXiv 2306.11695)"),
    Criterion("fluctuation", frozenset({_W, _V}), _fluctuation, output_only=True,
              source="[field] FLAP arXiv 2312.11983, fluctuation metric WIFV"),
)}

#: The criteria :func:`estimate`, :class:`~aeflib.pipeline.RunSettings` and :func:`~aeflib.sweep.compare` use by
#: default: the random baseline, weight magnitude and the three Taylor estimates AEF fuses.
DEFAULT_CRITERIA = ("random", "l2", "vector", "element1", "element2")

#: how the per-slice scores of one group are combined (LLM-Pruner ``group_reduction``)
REDUCTIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "sum": lambda t: t.sum(0),
    "mean": lambda t: t.mean(0),
    "max": lambda t: t.max(0).values,
    "prod": lambda t: t.prod(0),
}
PATHS = ("bounded", "naive")

#: Default memory (GiB) the bounded path may hold in fp32 Fisher / gradient accumulators at once; see
#: :func:`fisher_layer_slices`. 5 GiB: LLaMA-7B in bf16 (12.55 GiB of weights) then stays within 24 GiB.
DEFAULT_FISHER_MEMORY_GIB = 5.0


def slice_scores(s: Slice, weight: Tensor, grad: Tensor | None, fisher: Tensor | None,
                 criteria: Iterable[str], activations: Tensor | None = None,
                 variance: Tensor | None = None) -> dict[str, Tensor]:
    """Score the groups of one slice with each criterion.

    Args:
        s: The slice (which parameter dimension, how it factorises into groups).
        weight: The parameter, any float dtype, its full shape (e.g. [out, in]).
        grad: dL/dW, same shape, fp32 (``None`` if no criterion needs ``grad``).
        fisher: Diagonal Fisher, same shape, fp32 (``None`` unless a criterion needs ``fisher``).
        criteria: Names from :data:`ESTIMATORS` with a per-slice ``fn`` (not ``random``, which is per group set).
        activations: ‖X_j‖₂ per element, same shape as ``weight``, fp32 (``None`` unless a criterion needs
            ``activations``; see :class:`SliceStats`).
        variance: Var(X_j) per element, same shape, fp32 (``None`` unless a criterion needs ``variance``).

    Returns:
        ``{criterion: fp32 tensor [n_groups]}``.

    Raises:
        ValueError: If a criterion needs a statistic that was passed as None (names both).

    Source: see the module table; a vector is a row (``dim=0``) or column (``dim=1``), as in LLM-Pruner's
    ``TaylorImportance`` (``salience.sum(1)`` for output channels, ``sum(0)`` for input channels).
    """
    given = {"weight": weight, "grad": grad, "fisher": fisher, "activations": activations, "variance": variance}
    stats = SliceStats(s.per_group(weight.detach().float()),                    # [n, vectors, vector_len]
                       *(None if t is None else s.per_group(t) for t in (grad, fisher, activations, variance)))
    out = {}
    for c in criteria:
        crit = ESTIMATORS[c]
        missing = [k for k in STATISTICS if k in crit.needs and given[k] is None]
        if missing or crit.fn is None:
            raise ValueError(f"criterion {c!r} cannot be scored per slice: " +
                             (f"{missing} not given" if missing else "it scores whole group sets"))
        out[c] = crit.fn(stats)
    return out


class _Accumulator:
    """Turns the statistics the criteria declare into per-slice scores, as gradients arrive (hooks) or after."""

    def __init__(self, sets: list[GroupSet], layers: nn.ModuleList, criteria: list[str]):
        self.criteria = [c for c in criteria if ESTIMATORS[c].fn is not None]
        self.needs = frozenset().union(*(ESTIMATORS[c].needs for c in self.criteria))
        self.needs_grad = "grad" in self.needs or "fisher" in self.needs      # the Fisher comes from backward
        self.needs_fisher = "fisher" in self.needs
        self.needs_activations = "activations" in self.needs or "variance" in self.needs
        # parameter -> the (set key, slice index, slice) entries it feeds
        self.owners: dict[nn.Parameter, list[tuple[str, int, Slice]]] = {}
        self.layer_of: dict[nn.Parameter, int] = {}
        self.module_of: dict[nn.Parameter, nn.Module] = {}      # the Linear that owns it (for activations)
        for gs in sets:
            block = layers[gs.layer]
            for j, s in enumerate(gs.slices):
                p = block.get_parameter(s.param)
                self.owners.setdefault(p, []).append((gs.key, j, s))
                self.layer_of[p] = gs.layer
                self.module_of[p] = block.get_submodule(s.param.rpartition(".")[0])
        self.results: dict[tuple[str, int], dict[str, Tensor]] = {}
        self.grad_sum: dict[nn.Parameter, Tensor] = {}     # fp32, only while chunking
        self.fisher: dict[nn.Parameter, Tensor] = {}       # fp32, only for criteria that need the Fisher
        self.input_norm: dict[nn.Module, Tensor] = {}      # fp32 [in_features], only for activation criteria
        self.input_var: dict[nn.Module, Tensor] = {}       # fp32 [in_features], sample variance, same
        self.tokens = 0                                    # calibration tokens the input norms cover

    def activations(self, p: nn.Parameter) -> Tensor | None:
        """‖X_j‖₂ broadcast to ``p``'s shape: per input column for a weight [out, in], √T for a bias."""
        if not self.needs_activations:
            return None
        if p.ndim == 1:                                    # a bias multiplies the constant input 1
            return torch.full(p.shape, float(self.tokens) ** 0.5, device=p.device)
        return self.input_norm[self.module_of[p]].to(p.device).expand(p.shape)

    def variance(self, p: nn.Parameter) -> Tensor | None:
        """Var(X_j) broadcast to ``p``'s shape (0 for a bias: its input is constant)."""
        if not self.needs_activations:
            return None
        if p.ndim == 1:
            return torch.zeros(p.shape, device=p.device)
        return self.input_var[self.module_of[p]].to(p.device).expand(p.shape)

    def score(self, p: nn.Parameter, grad: Tensor | None) -> None:
        fisher, acts, var = self.fisher.get(p), self.activations(p), self.variance(p)
        for key, j, s in self.owners[p]:
            wanted = [c for c in self.criteria if s.dim == 1 or not ESTIMATORS[c].output_only]
            self.results[(key, j)] = slice_scores(s, p, grad, fisher, wanted, acts, var)

    def add_fisher(self, p: nn.Parameter, grad: Tensor, n: int) -> None:
        sq = grad.float().pow(2).div_(n)
        if p in self.fisher:
            self.fisher[p].add_(sq)
        else:
            self.fisher[p] = sq

    def add_grad(self, p: nn.Parameter, grad: Tensor) -> None:
        if p in self.grad_sum:
            self.grad_sum[p].add_(grad.float())
        else:
            self.grad_sum[p] = grad.float().clone()


def fisher_layer_slices(layer_numel: dict[int, int], fisher_memory_gib: float | None,
                        all_at_once_bytes_per_weight: int = 4) -> list[list[int]] | None:
    """Split the scored layers into slices whose fp32 accumulators fit a memory budget.

    Args:
        layer_numel: Scored layer index -> number of grouped (pruned) weights in it.
        fisher_memory_gib: Budget in GiB (2**30 bytes) for the accumulators held at once; ``None``: no limit.
        all_at_once_bytes_per_weight: Accumulator bytes per weight on the all-at-once path (4: the Fisher; 8 when
            the calibration is also chunked and needs a gradient sum).

    Returns:
        ``None`` when all layers' accumulators fit at once (``all_at_once_bytes_per_weight`` bytes per weight);
        otherwise lists of consecutive layer indices, each holding at most the budget at 8 bytes per weight
        (Fisher + gradient sum, fp32) — at least one layer per slice, even if one layer alone exceeds the budget.

    Raises:
        ValueError: If ``fisher_memory_gib`` is not ``None`` and not > 0.

    Source: [ours].
    """
    if fisher_memory_gib is not None and not fisher_memory_gib > 0:
        raise ValueError(f"fisher_memory_gib={fisher_memory_gib!r} must be > 0 (GiB), or None for no limit")
    budget = None if fisher_memory_gib is None else fisher_memory_gib * 2**30
    if budget is None or all_at_once_bytes_per_weight * sum(layer_numel.values()) <= budget:
        return None
    slices: list[list[int]] = []
    held = 0
    for layer in sorted(layer_numel):
        need = 8 * layer_numel[layer]
        if slices and held + need <= budget:
            slices[-1].append(layer)
            held += need
        else:
            slices.append([layer])
            held = need
    return slices


def _loss(model: nn.Module, ids: Tensor) -> Tensor:
    """Mean next-token cross-entropy of ``ids`` [B, L] (transformers upcasts logits to fp32 for the loss).

    Raises:
        FloatingPointError: If the loss is NaN or inf (before its backward: no score is built on it).
    """
    loss = model(input_ids=ids, labels=ids, use_cache=False).loss
    if not torch.isfinite(loss):
        raise FloatingPointError(
            f"the calibration loss is {loss.item()} on a chunk of {ids.shape[0]} windows [{ids.shape[0]}, "
            f"{ids.shape[1]}]; scores from it would be meaningless. Check the model's weights and dtype (float16 "
            "overflows; use float32 or bfloat16)")
    return loss


def _chunks(calibration: Tensor, size: int) -> list[Tensor]:
    return list(calibration.split(size))


def _backward_passes(model: nn.Module, calibration: Tensor, chunk_size: int) -> Iterable[None]:
    """Backward of the mean loss over all windows, chunk by chunk; yields after each chunk's backward.

    Every window has the same length, so weighting each chunk's mean loss by its share of windows makes the
    summed gradient equal the gradient of the mean loss over the whole calibration set.
    """
    n = calibration.shape[0]
    for chunk in _chunks(calibration, chunk_size):
        (_loss(model, chunk) * (chunk.shape[0] / n)).backward()
        yield


def _fisher_passes(model: nn.Module, calibration: Tensor) -> Iterable[None]:
    """One backward per window of that window's own mean loss (unscaled); yields after each.

    The gradient of each pass is dL(x_j)/dW, whose square (÷ N) the Fisher accumulates, as LLM-Pruner's
    ``param_mix`` does (``loss = model(example_prompts[j:j+1]).loss; loss.backward(); acc_grad += grad² / N``).
    """
    for window in calibration.split(1):
        _loss(model, window).backward()
        yield

@torch.no_grad()
def _collect_activations(model: nn.Module, acc: _Accumulator, calibration: Tensor, chunk_size: int,
                         keep_inputs: bool = False) -> None:
    """‖X_j‖₂ and Var(X_j) over all calibration tokens of each input j of every Linear owning a pruned parameter.

    One no-grad forward pass, chunk by chunk (:func:`aeflib.activations.capture_inputs`): a forward pre-hook on each
    Linear merges each chunk's moments (``keep_inputs=False``, memory [in_features] fp64 per Linear), or keeps every
    fp32 input and takes the moments at the end (``keep_inputs=True``: the naive path, the oracle of the merged one).

    Raises:
        ValueError: If a pruned parameter's module is not an ``nn.Linear`` (its input features would be unknown).
    """
    moments = capture_inputs(model, acc.module_of.values(), calibration, chunk_size, keep_inputs=keep_inputs)
    acc.input_norm = {m: mom.norm for m, mom in moments.items()}
    acc.input_var = {m: mom.variance for m, mom in moments.items()}
    acc.tokens = calibration.numel()



def estimate(
    model: nn.Module,
    adapter: StructureAdapter,
    calibration: Tensor,
    *,
    criteria: Iterable[str] = DEFAULT_CRITERIA,
    layers: range | list[int] | None = None,
    reduction: str = "sum",
    chunk_size: int | None = None,
    path: str = "bounded",
    seed: int = 42,
    fisher_memory_gib: float | None = DEFAULT_FISHER_MEMORY_GIB,
) -> Scores:
    """Estimate the importance of every head and channel group of the pruned layers, all criteria at once.

    Args:
        model: Any supported causal LM, any float dtype, on any device; its weights and dtype are unchanged.
        adapter: Its structure adapter.
        calibration: LongTensor [N, L] of token windows (``aeflib.data.calibration``), moved to the model's device.
        criteria: Names from :data:`ESTIMATORS` (default :data:`DEFAULT_CRITERIA`), or one name as a string. Only
            the statistics their :attr:`Criterion.needs` declare are collected: no backward pass for weight-only
            criteria, the N single-window Fisher passes only for ``fisher``, one no-grad forward pass for
            ``activations`` and ``variance`` (``wanda``, ``wanda-sp``, ``fluctuation``: no backward pass at all).
        layers: Decoder layers to score (default: the adapter's pruned range).
        reduction: How a group's slice scores are combined, a key of :data:`REDUCTIONS`.
        chunk_size: Windows per backward pass (default: all N in one pass). Smaller bounds activation memory.
        path: ``"bounded"`` (hooks, default) or ``"naive"`` (full ``.grad`` and, for ``activations``, every
            Linear input kept until the end: LLM-Pruner's way, the oracle).
        seed: Seed of the ``random`` criterion.
        fisher_memory_gib: Only with ``element2`` on the bounded path: GiB of fp32 accumulators held at once. If the
            all-at-once Fisher (4 bytes per pruned weight) exceeds it, layers are scored a slice at a time (see
            :func:`fisher_layer_slices` and the module notes): same scores, memory 8 bytes per weight of one slice
            instead of 4 per weight of all layers, time ≈ one set of N single-window passes per slice instead of
            N single-window passes plus one full-batch pass. ``None``: always all at once. The naive path (the
            oracle) ignores it.

    Returns:
        :class:`~aeflib.scores.Scores` with one fp32 tensor [n_groups] per criterion and group set, and ``meta``
        holding the calibration shape, reduction, path, wall time, model checksum and the Fisher layer slices
        (``fisher_layer_slices``: ``null`` when all at once).

    Raises:
        ValueError: Unknown criterion, reduction or path; calibration not a 2-D integer tensor, with 0 windows,
            windows of fewer than 2 tokens, or token ids outside [0, vocab_size); an empty ``layers`` range or one
            outside the model; chunk_size < 1; fisher_memory_gib not > 0; a model offloaded by accelerate
            (``aeflib.models.registry.require_resident``). All checked before any forward pass.
        FloatingPointError: If a calibration loss is NaN or inf (checked before its backward).

    Source: [paper] coarse vector-wise + fine element-wise Taylor estimates; [LLM-Pruner code] formulas, Fisher
    from single-sample passes, ``group_reduction``; the hook path and the layer slices [ours].
    """
    criteria = list(dict.fromkeys([criteria] if isinstance(criteria, str) else criteria))
    unknown = [c for c in criteria if c not in ESTIMATORS]
    if unknown or not criteria:
        raise ValueError(f"unknown criteria {unknown or criteria}; choose from {sorted(ESTIMATORS)}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; choose one of {sorted(REDUCTIONS)}")
    if path not in PATHS:
        raise ValueError(f"unknown path {path!r}; choose one of {PATHS}")
    check_calibration(model, calibration)
    check_layers(layers)
    require_resident(model, "importance estimation")
    n = calibration.shape[0]
    chunk_size = n if chunk_size is None else chunk_size
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size} must be >= 1")
    if fisher_memory_gib is not None and not fisher_memory_gib > 0:
        raise ValueError(f"fisher_memory_gib={fisher_memory_gib!r} must be > 0 (GiB), or None for no limit")

    t0 = time.perf_counter()
    sets = adapter.all_group_sets(model, layers)
    acc = _Accumulator(sets, adapter.decoder_layers(model), criteria)
    device = next(model.parameters()).device
    calibration = calibration.to(device)
    layer_slices = None
    if acc.needs_fisher and path == "bounded":
        numel: dict[int, int] = {}
        for p, layer in acc.layer_of.items():
            numel[layer] = numel.get(layer, 0) + p.numel()
        layer_slices = fisher_layer_slices(numel, fisher_memory_gib, 8 if chunk_size < n else 4)
    if acc.needs_activations:
        _collect_activations(model, acc, calibration, chunk_size, keep_inputs=path == "naive")
    if layer_slices is not None:
        _run_bounded_sliced(model, acc, calibration, layer_slices)
    elif acc.needs_grad:
        (_run_bounded if path == "bounded" else _run_naive)(model, acc, calibration, chunk_size)
    else:
        for p in acc.owners:
            acc.score(p, None)

    values: dict[str, dict[str, Tensor]] = {}
    for c in criteria:
        if ESTIMATORS[c].per_set is not None:
            values[c] = ESTIMATORS[c].per_set(sets, seed)
            continue
        values[c] = {gs.key: REDUCTIONS[reduction](torch.stack([acc.results[(gs.key, j)][c]
                                                                for j in range(len(gs.slices))
                                                                if c in acc.results[(gs.key, j)]]))
                     for gs in sets}
    meta = {
        "criteria": criteria, "reduction": reduction, "path": path, "chunk_size": chunk_size,
        "calibration_shape": list(calibration.shape), "seed": seed, "model_checksum": checksum(model),
        "model_dtype": str(next(model.parameters()).dtype), "layers": sorted({gs.layer for gs in sets}),
        "units": {gs.key: gs.unit for gs in sets}, "fisher_memory_gib": fisher_memory_gib,
        "fisher_layer_slices": layer_slices, "seconds": round(time.perf_counter() - t0, 3),
    }
    log.info("estimated %s on %d group sets in %.1f s", criteria, len(sets), meta["seconds"])
    return Scores(values, meta)


class _GradScope:
    """Only the pruned layers' grouped parameters require grad while estimating; flags restored afterwards."""

    def __init__(self, model: nn.Module, wanted: Iterable[nn.Parameter], everything: bool = False):
        self.model, self.wanted, self.everything = model, set(wanted), everything

    def __enter__(self) -> _GradScope:
        self.saved = [(p, p.requires_grad) for p in self.model.parameters()]
        for p in self.model.parameters():
            p.requires_grad_(self.everything or p in self.wanted)
            p.grad = None
        return self

    def __exit__(self, *exc) -> None:
        for p, flag in self.saved:
            p.requires_grad_(flag)
            p.grad = None


def _run_bounded(model: nn.Module, acc: _Accumulator, calibration: Tensor, chunk_size: int) -> None:
    """Gradients become scores inside ``post_accumulate_grad`` hooks and are freed at once."""
    n = calibration.shape[0]
    handles = []
    mode = {"phase": "grad", "last": False}

    def hook(p: nn.Parameter) -> None:
        grad, p.grad = p.grad, None                    # free the model-dtype gradient right away
        if mode["phase"] == "fisher":
            acc.add_fisher(p, grad, n)
        elif mode["last"]:
            if p in acc.grad_sum:
                total = acc.grad_sum.pop(p).add_(grad.float())
            else:
                total = grad.float()
            acc.score(p, total)
            acc.fisher.pop(p, None)                    # this parameter's Fisher is no longer needed
        else:
            acc.add_grad(p, grad)

    with _GradScope(model, acc.owners):
        try:
            for p in acc.owners:
                handles.append(p.register_post_accumulate_grad_hook(hook))
            if acc.needs_fisher:
                mode["phase"] = "fisher"
                for _ in _fisher_passes(model, calibration):
                    pass
                mode["phase"] = "grad"
            chunks = _chunks(calibration, chunk_size)
            for i, chunk in enumerate(chunks):
                mode["last"] = i == len(chunks) - 1
                (_loss(model, chunk) * (chunk.shape[0] / n)).backward()
        finally:
            for h in handles:
                h.remove()
    missing = [p for p in acc.owners if not any((k, j) in acc.results for k, j, _ in acc.owners[p])]
    if missing:
        raise RuntimeError(f"{len(missing)} grouped parameters received no gradient; is the model's loss connected?")


def _run_bounded_sliced(model: nn.Module, acc: _Accumulator, calibration: Tensor, slices: list[list[int]]) -> None:
    """Fisher and gradient from the N single-window passes, one slice of layers at a time.

    Only the slice's grouped parameters require grad, so autograd records (and backward runs) from the slice's
    first layer up only. Per window j the hook adds (g_j)² / N to the Fisher and g_j / N to the gradient sum, both
    fp32; after the N windows, the slice is scored and its accumulators freed. With equal-length windows
    (1/N) Σ_j g_j is the gradient of the mean loss over all windows, the gradient the all-at-once path takes from
    one full-batch pass.
    """
    n = calibration.shape[0]

    def hook(p: nn.Parameter) -> None:
        grad, p.grad = p.grad, None
        g = grad.float()
        acc.add_fisher(p, g, n)
        g = g / n
        if p in acc.grad_sum:
            acc.grad_sum[p].add_(g)
        else:
            acc.grad_sum[p] = g

    for layer_slice in slices:
        wanted = set(layer_slice)
        params = [p for p in acc.owners if acc.layer_of[p] in wanted]
        with _GradScope(model, params):
            handles = [p.register_post_accumulate_grad_hook(hook) for p in params]
            try:
                for _ in _fisher_passes(model, calibration):
                    pass
            finally:
                for h in handles:
                    h.remove()
        missing = [p for p in params if p not in acc.grad_sum]
        if missing:
            raise RuntimeError(f"{len(missing)} grouped parameters of layers {layer_slice} received no gradient; "
                               "is the model's loss connected?")
        for p in params:
            acc.score(p, acc.grad_sum.pop(p))
            acc.fisher.pop(p)
        log.info("scored layers %s (%d windows)", layer_slice, n)


def _run_naive(model: nn.Module, acc: _Accumulator, calibration: Tensor, chunk_size: int) -> None:
    """LLM-Pruner's way: every parameter keeps its full ``.grad``; scores are computed afterwards."""
    n = calibration.shape[0]
    with _GradScope(model, acc.owners, everything=True):
        if acc.needs_fisher:
            for _ in _fisher_passes(model, calibration):
                for p in acc.owners:
                    acc.add_fisher(p, p.grad, n)
                model.zero_grad(set_to_none=True)
        for _ in _backward_passes(model, calibration, chunk_size):
            for p in acc.owners:                        # accumulate in fp32, not in the model dtype
                acc.add_grad(p, p.grad)
            model.zero_grad(set_to_none=True)
        for p in acc.owners:
            acc.score(p, acc.grad_sum.pop(p))
