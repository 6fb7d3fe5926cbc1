"""What a sound ``aeflib.json`` holds: type and range checks of a checkpoint manifest's ``model`` and ``plans``.

``model_problems(info)`` and ``plan_problems(i, plan)`` return one line per field that has the wrong type or an
unknown value (empty lists when the record is sound); :func:`aeflib.io.read_manifest` joins them into one
``CheckpointError``. They exist because a manifest is a user's file: a hand-edited one (head 99 kept, a duplicate
index, a string where an integer belongs, a tie aliasing a method) must be refused by name before any plan is
replayed, and values are only taken from closed lists (dtypes, GQA modes, attention implementations: a hub kernel
name would fetch and run code).

Source: [ours] (known failure 1: no checkpoint runs code).
"""

from __future__ import annotations

import math
import re
from typing import Any

from aeflib.models.adapters import DTYPES, GQA_MODES

__all__ = ["ATTENTION_IMPLEMENTATIONS", "is_int", "model_problems", "plan_problems"]

_GROUP_SET = re.compile(r"(0|[1-9]\d{0,5})\.(head|channel)")
_INT_MAX = 2**53  # larger integers are not exact in JSON readers
#: The attention implementations a manifest may name (a hub kernel id would download and run code).
ATTENTION_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")


def is_int(value: Any, low: int = 0, high: int = _INT_MAX) -> bool:
    """Whether ``value`` is an integer (not a bool) in ``[low, high]``."""
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _one_of(value: Any, choices: Any) -> bool:
    return isinstance(value, str) and value in choices


def _str_map(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())


def model_problems(info: dict) -> list[str]:
    """List what in a manifest's ``model`` record has the wrong type or an unknown value.

    Args:
        info: The ``model`` object, holding at least the fields :func:`aeflib.io.read_manifest` requires.

    Returns:
        One line per problem, naming the field and the value; empty when the record is sound.
    """
    out = [f"model.{k} must be a string, got {info[k]!r}" for k in ("model_type", "class", "checksum")
           if not isinstance(info[k], str)]
    if not _one_of(info["gqa_mode"], GQA_MODES):
        out.append(f"model.gqa_mode {info['gqa_mode']!r} is not one of {sorted(GQA_MODES)}")
    if not _one_of(info["dtype"], DTYPES):
        out.append(f"model.dtype {info['dtype']!r} is not one of {sorted(DTYPES)}")
    attention = info["attn_implementation"]
    if attention is not None and not _one_of(attention, ATTENTION_IMPLEMENTATIONS):
        out.append(f"model.attn_implementation {attention!r} is not one of {list(ATTENTION_IMPLEMENTATIONS)}")
    if not _str_map(info["tied"]):
        out.append(f"model.tied must map parameter names to parameter names, got {info['tied']!r}"[:300])
    buffers = info.get("buffers", {})
    if not _str_map(buffers) or not all(_one_of(v, DTYPES) for v in buffers.values()):
        out.append(f"model.buffers must map buffer names to one of {sorted(DTYPES)}, got {buffers!r}"[:300])
    added = info.get("added_biases", [])
    if not isinstance(added, list) or not all(isinstance(b, str) and b.endswith(".bias") for b in added):
        out.append(f"model.added_biases must be a list of bias names (ending in '.bias'), got {added!r}"[:300])
    layers = info.get("layers", [])
    if not isinstance(layers, list) or not all(isinstance(d, dict) for d in layers):
        out.append("model.layers (format 1) must be a list of objects")
    return out


def plan_problems(i: int, d: Any) -> list[str]:
    """List what in the ``i``-th plan record cannot be a plan aeflib wrote.

    Kept indices must be integers, ascending, each once, inside ``[0, n_groups)``, at least one per set; group-set
    keys ``"<layer>.head"`` / ``"<layer>.channel"``; the scalar fields of :class:`~aeflib.pruning.PruningPlan`
    of their types. A format-1 record (``keep_heads``) is checked after conversion.

    Args:
        i: The plan's position in ``plans`` (for the message).
        d: The plan record as read from JSON.

    Returns:
        One line per problem; empty when the record is sound.
    """
    if not isinstance(d, dict):
        return [f"plans[{i}] must be an object, got {type(d).__name__}"]
    if "keep_heads" in d:  # format 1: checked after conversion
        return []
    keep, n_groups = d.get("keep"), d.get("n_groups")
    if not isinstance(keep, dict) or not isinstance(n_groups, dict) or keep.keys() != n_groups.keys():
        return [f"plans[{i}]: 'keep' and 'n_groups' must be objects with the same group-set keys"]
    out = []
    for key, kept in keep.items():
        n = n_groups[key]
        if not _GROUP_SET.fullmatch(key):
            out.append(f"plans[{i}]: group set {key!r} is not '<layer>.head' or '<layer>.channel'")
        elif not is_int(n, 1):
            out.append(f"plans[{i}].n_groups[{key!r}] = {n!r} is not a positive integer")
        elif not (isinstance(kept, list) and kept and all(is_int(j, 0, n - 1) for j in kept)
                  and all(a < b for a, b in zip(kept, kept[1:], strict=False))):
            out.append(f"plans[{i}].keep[{key!r}] must list at least one group index in [0, {n}), each once, "
                       f"ascending; got {kept!r}"[:300])
    for name, ok in (("criterion", isinstance(d.get("criterion"), str)), ("pruning_ratio", _is_number(
            d.get("pruning_ratio"))), ("params_before", is_int(d.get("params_before"))),
            ("expected_params_removed", is_int(d.get("expected_params_removed"))),
            ("units", _str_map(d.get("units"))), ("gqa_mode", _one_of(d.get("gqa_mode", "query-heads"), GQA_MODES)),
            ("target_params", d.get("target_params") is None or _is_number(d["target_params"])),
            ("params_after", d.get("params_after") is None or is_int(d["params_after"]))):
        if not ok:
            out.append(f"plans[{i}].{name} = {d.get(name)!r} has the wrong type or value"[:300])
    return out
