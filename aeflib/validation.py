"""Checks of what estimation and pruning are given, run before any work so that a refusal changes nothing.

Entry points::

    check_calibration(model, calibration)     # windows a next-token loss can be computed on
    check_layers(layers)                      # a non-empty layer selection
    check_plan(model, adapter, pruning_plan)  # a whole plan against the model, before anything is cut
    split_key("12.head") -> (12, "head")

Each raises one error naming the bad value, where it is, and what is valid (issue 30: a plan keeping head
``[0, 0, 0]`` used to be applied, a later layer's mismatch left the earlier layers cut, one-token windows gave NaN
losses and all-zero scores). ``aeflib.importance.estimate``, ``aeflib.pruning.plan``, ``apply`` and ``mask_removed``
call them.

Source: [ours].
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from aeflib.models.adapters import GroupSet, StructureAdapter, StructureError

if TYPE_CHECKING:
    from aeflib.pruning import PruningPlan

__all__ = ["check_calibration", "check_layers", "check_plan", "split_key"]


def split_key(key: str) -> tuple[int, str]:
    """``"12.head"`` → ``(12, "head")``: the layer and kind of a group-set key (:attr:`GroupSet.key`).

    Raises:
        ValueError: A key that is not ``"<layer>.<kind>"`` with an integer layer.
    """
    layer, _, kind = str(key).partition(".")
    if not layer.isdigit() or not kind:
        raise ValueError(f"group-set key {key!r} is not '<layer>.<kind>' (e.g. '4.head')")
    return int(layer), kind


def check_layers(layers: range | list[int] | None) -> None:
    """Refuse an empty layer selection (``range(5, 2)`` is empty: a reversed range scores, and prunes, nothing).

    Args:
        layers: Decoder layers to score or prune, or None for the adapter's default range.

    Raises:
        ValueError: If ``layers`` is given and empty, naming it.
    """
    if layers is not None and len(layers) == 0:
        raise ValueError(f"layers={layers!r} is empty; give ascending decoder layers, e.g. range(2, 5), or None "
                         "for the adapter's default range")


def check_calibration(model: nn.Module, calibration: torch.Tensor) -> None:
    """Refuse calibration windows no next-token loss can be computed on, before any forward pass.

    Args:
        model: The causal LM (its input embedding gives the vocabulary size).
        calibration: Token ids, expected LongTensor [N, L].

    Raises:
        ValueError: Not a 2-D integer tensor; N = 0 windows; L < 2 tokens per window (no target for the
            next-token loss); a token id outside ``[0, vocab_size)`` (naming the id and its window).
    """
    if calibration.ndim != 2 or calibration.dtype not in (torch.long, torch.int32, torch.int64):
        raise ValueError(f"calibration must be an integer tensor [N, L]; got {calibration.dtype} "
                         f"{tuple(calibration.shape)}")
    n, length = calibration.shape
    if n < 1:
        raise ValueError(f"calibration has 0 windows (shape {tuple(calibration.shape)}); give N >= 1 windows of "
                         "L >= 2 tokens (aeflib.data.calibration)")
    if length < 2:
        raise ValueError(f"calibration windows have L={length} tokens (shape {tuple(calibration.shape)}); the "
                         "next-token loss needs L >= 2 (one token of context, one target)")
    vocab = model.get_input_embeddings().num_embeddings
    low, high = int(calibration.min()), int(calibration.max())
    if low < 0 or high >= vocab:
        bad = low if low < 0 else high
        window = int((calibration == bad).any(1).nonzero()[0])
        raise ValueError(f"calibration holds token id {bad} (window {window}); ids must be in [0, {vocab}), the "
                         "model's vocabulary: tokenize with the model's own tokenizer")


def _kept_problems(gs: GroupSet, kept: object) -> list[str]:
    """What is wrong with ``kept`` as the kept indices of ``gs`` (empty when it is a legal choice)."""
    if not isinstance(kept, list | tuple) or not all(isinstance(i, int) and not isinstance(i, bool) for i in kept):
        return [f"{gs.key}: kept indices {kept!r} are not a list of integers"]
    problems = []
    outside = sorted({i for i in kept if not 0 <= i < gs.n})
    if outside:
        problems.append(f"{gs.key}: kept indices {outside} are outside 0..{gs.n - 1} ({gs.n} {gs.unit} groups)")
    repeated = sorted({i for i in kept if kept.count(i) > 1})
    if repeated:
        problems.append(f"{gs.key}: kept indices {repeated} repeat (each group is kept at most once)")
    elif list(kept) != sorted(kept):
        problems.append(f"{gs.key}: kept indices {list(kept)} are not ascending")
    per_block = gs.n // gs.blocks
    counts = [sum(b * per_block <= i < (b + 1) * per_block for i in kept) for b in range(gs.blocks)]
    if not outside and (min(counts) < 1 or len(set(counts)) > 1):
        what = f"per block of {per_block} (one block per kv head) {counts}" if gs.blocks > 1 else f"{counts[0]}"
        problems.append(f"{gs.key}: keeps {what} of {gs.n} {gs.unit} groups; every block must keep the same "
                        "number, at least 1")
    return problems


def check_plan(model: nn.Module, adapter: StructureAdapter, pruning_plan: PruningPlan) -> None:
    """Check a whole plan against the model before anything is cut, so that a refused plan changes nothing.

    Every key must be ``"<layer>.<kind>"`` of an existing layer and a kind that layer has; the model's group counts
    must be those the plan was made for, in the same GQA mode; and per group set the kept indices must be integers
    in ``0..n-1``, unique, ascending, with the same number (at least one) in every kv block.

    Args:
        model: The model the plan is to be applied to (read only).
        adapter: Its structure adapter.
        pruning_plan: The plan (from :func:`aeflib.pruning.plan`, ``PruningPlan.load``, or made by hand).

    Raises:
        StructureError: Listing every problem found (the first five, and how many more), each naming the group
            set, the bad value and what is valid.

    Source: [ours].
    """
    n_layers = adapter.n_layers(model)
    problems = []
    if pruning_plan.gqa_mode != adapter.gqa_mode:
        problems.append(f"the plan's indices are in gqa_mode={pruning_plan.gqa_mode!r}, the adapter's is "
                        f"{adapter.gqa_mode!r}; load the model with gqa_mode={pruning_plan.gqa_mode!r}")
    by_layer: dict[int, list[str]] = {}
    for key in pruning_plan.keep:
        try:
            layer, _ = split_key(key)
        except ValueError as err:
            problems.append(str(err))
            continue
        if not 0 <= layer < n_layers:
            problems.append(f"{key}: layer {layer} is outside 0..{n_layers - 1} for this {n_layers}-layer model")
        elif key not in pruning_plan.n_groups:
            problems.append(f"{key}: the plan records no group count (n_groups) for it")
        else:
            by_layer.setdefault(layer, []).append(key)
    for layer, keys in sorted(by_layer.items()):
        sets = {gs.key: gs for gs in adapter.group_sets(model, layer)}
        for key in keys:
            gs = sets.get(key)
            if gs is None:
                problems.append(f"{key}: layer {layer} has no such group set; it has {sorted(sets)}")
            elif gs.n != pruning_plan.n_groups[key]:
                problems.append(f"{key}: layer {layer} has {gs.n} {gs.unit} groups, the plan was made for "
                                f"{pruning_plan.n_groups[key]}; plans apply once, to the model they were made on")
            else:
                problems += _kept_problems(gs, pruning_plan.keep[key])
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise StructureError(f"pruning plan refused, nothing was cut: {'; '.join(problems[:5])}{more}")
