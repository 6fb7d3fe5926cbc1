"""Rebuild a pruned architecture, with empty (meta) parameters, from its dense config and the plans applied to it.

``build_skeleton(config_dict, plans, ...)`` → ``(model, adapter)``: the family adapter (found by
``config["model_type"]``) builds the dense model with its parameters on the meta device (no memory, no init) and its
buffers real (RoPE ``inv_freq``); then every plan is replayed with :func:`aeflib.pruning.apply` — the very code that
pruned the original, so the shapes and the widths the forward reads (GQA ratio, Bloom's per-layer ALiBi) match.
Loading a state dict with ``assign=True`` then gives a runnable model. :func:`shape_problems` lists what differs
between two sets of shapes, layer by layer, for the error messages of ``aeflib.io``.

Source: [ours] (known failure 1).
"""

from __future__ import annotations

import copy
import re

import torch
from torch import nn

from aeflib.flap import add_zero_biases
from aeflib.models.adapters import StructureAdapter, StructureError, adapter_class, resolve_dtype
from aeflib.pruning import PruningPlan, apply

__all__ = ["build_skeleton", "shape_problems"]


def _torch_dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype):
        raise StructureError(f"unknown dtype {name!r}")
    return dtype


def build_skeleton(
    config: dict,
    plans: list[PruningPlan],
    *,
    gqa_mode: str = "query-heads",
    dtype: torch.dtype | str = torch.float32,
    attn_implementation: str | None = None,
    buffer_dtypes: dict[str, str] | None = None,
    added_biases: list[str] | tuple[str, ...] = (),
) -> tuple[nn.Module, StructureAdapter]:
    """Build the pruned architecture: parameters empty on the meta device, buffers real, plans replayed in order.

    Args:
        config: The dense model's ``config.json`` as a dict; its ``model_type`` must have an adapter.
        plans: The :class:`~aeflib.pruning.PruningPlan` objects applied to the dense model, in order (each is
            replayed under its own ``gqa_mode``).
        gqa_mode: The GQA mode of the returned adapter, recorded with the checkpoint.
        dtype: Parameter dtype of the skeleton (the dtype of the weights that will be assigned).
        attn_implementation: ``"sdpa"``, ``"eager"`` ...; default: transformers' choice.
        buffer_dtypes: ``{buffer name: dtype name}`` to restore, e.g. RoPE ``inv_freq`` after ``model.to(bf16)``.
        added_biases: Full names of biases aeflib added to Linears that had none (FLAP's bias compensation,
            :func:`aeflib.flap.add_zero_biases`), created after the plans are replayed.

    Returns:
        ``(model, adapter)``; load weights with ``model.load_state_dict(state, strict=True, assign=True)``.

    Raises:
        StructureError: Unsupported model type, a plan whose group counts the model does not have, an unknown dtype.

    Source: [ours].
    """
    from accelerate import init_empty_weights  # heavy optional imports, only when a skeleton is built
    from transformers.initialization import no_init_weights

    try:
        cls = adapter_class(config.get("model_type"))
    except ValueError as err:
        raise StructureError(str(err)) from None
    kwargs = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
    with init_empty_weights(include_buffers=False), no_init_weights():  # parameters on meta, buffers real
        model = cls.build(cls.config_from_dict(config), dtype=resolve_dtype(dtype), **kwargs)
    for p in plans:  # replayed on copies: apply records params_after, which belongs to the caller's plan
        apply(model, cls(gqa_mode=p.gqa_mode), copy.deepcopy(p))
    add_zero_biases(model, added_biases)
    adapter = cls(gqa_mode=gqa_mode)
    adapter.install_runtime(model)
    for name, buffer_dtype in (buffer_dtypes or {}).items():
        module_name, _, attr = name.rpartition(".")
        module = model.get_submodule(module_name)
        if module._buffers.get(attr) is not None:
            module._buffers[attr] = module._buffers[attr].to(_torch_dtype(buffer_dtype))
    return model, adapter


def _layer_order(key: str) -> tuple[int, str]:
    """Sort key ``(decoder layer or -1, name)`` so that layer 10 follows layer 9."""
    m = re.search(r"\.(\d+)\.", key)
    return (int(m.group(1)) if m else -1, key)


def shape_problems(expected: dict[str, tuple], actual: dict[str, tuple], what: str) -> list[str]:
    """Missing, unexpected and mis-shaped entries, each naming its layer; ``what`` names the ``actual`` side.

    Example line: ``"layer 1 model.layers.1.mlp.down_proj.weight: model.safetensors has [96, 120], expected
    [96, 119]"``.
    """
    out = [f"missing in {what}: {k} (expected {list(expected[k])})" for k in sorted(expected.keys() - actual.keys())]
    out += [f"unexpected in {what}: {k} {list(actual[k])}" for k in sorted(actual.keys() - expected.keys())]
    for k in sorted(expected.keys() & actual.keys(), key=_layer_order):
        if tuple(expected[k]) != tuple(actual[k]):
            layer = _layer_order(k)[0]
            where = f"layer {layer} " if layer >= 0 else ""
            out.append(f"{where}{k}: {what} has {list(actual[k])}, expected {list(expected[k])}")
    return out
