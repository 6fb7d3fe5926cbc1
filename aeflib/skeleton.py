"""Rebuild a pruned architecture from its dense config and per-layer widths, with empty (meta) parameters.

``build_skeleton(config_dict, widths, ...)`` → ``(model, adapter)``: the dense model is instantiated with its
parameters on the meta device (no memory, no init) and its buffers real (RoPE ``inv_freq``), then every decoder
layer is shrunk to its :class:`~aeflib.models.LayerWidths` with the adapter's own group slices — the same rules
:func:`aeflib.pruning.apply` cuts with, so the shapes match a model pruned by aeflib — and the widths the forward
reads are set (``adapter.set_widths``, ``adapter.install_runtime``: Bloom's per-layer ALiBi). Loading a state dict
with ``assign=True`` then gives a runnable model. :func:`shape_problems` lists what differs between two sets of
shapes, layer by layer, for the error messages of ``aeflib.io``.

Source: [ours] (known failure 1).
"""

from __future__ import annotations

import re

import torch
from torch import nn

from aeflib.models import ADAPTERS, LayerWidths, StructureAdapter, StructureError, resolve_dtype

__all__ = ["build_skeleton", "shape_problems", "shrink_layer"]


def _resize(block: nn.Module, param_name: str, dim: int, length: int) -> None:
    """Replace ``block.<param_name>`` by an empty parameter whose ``dim`` has ``length`` entries."""
    module_name, _, attr = param_name.rpartition(".")
    module = block.get_submodule(module_name)
    old = getattr(module, attr)
    shape = list(old.shape)
    shape[dim] = length
    setattr(module, attr, nn.Parameter(torch.empty(shape, dtype=old.dtype, device=old.device),
                                       requires_grad=old.requires_grad))
    if isinstance(module, nn.Linear) and attr == "weight":
        module.out_features, module.in_features = shape


def _keep_groups(adapter: StructureAdapter, model: nn.Module, layer: int, kind: str, per_block: int) -> None:
    """Shrink the ``kind`` groups of ``layer`` to ``per_block`` groups in each block (which ones is irrelevant)."""
    gs = next(g for g in adapter.group_sets(model, layer) if g.kind == kind)
    size = gs.n // gs.blocks
    kept = torch.tensor([b * size + j for b in range(gs.blocks) for j in range(per_block)], dtype=torch.long)
    for s in gs.slices:
        _resize(adapter.decoder_layers(model)[layer], s.param, s.dim, len(s.positions(kept)))


def shrink_layer(adapter: StructureAdapter, model: nn.Module, layer: int, want: LayerWidths) -> None:
    """Give dense layer ``layer`` the parameter shapes of ``want``: kv groups (GQA), then query heads, then channels.

    Raises:
        StructureError: If ``want`` exceeds the dense widths, has another ``head_dim``, or cannot be reached.
    """
    have = adapter.widths(model, layer)

    def fail(why: str) -> StructureError:
        return StructureError(f"layer {layer} records {want.to_dict()} but the base config gives {have.to_dict()}: "
                              f"{why}")

    if want.head_dim != have.head_dim:
        raise fail("head_dim differs")
    if not (1 <= want.n_kv_heads <= have.n_kv_heads and 1 <= want.n_heads <= have.n_heads
            and 1 <= want.n_channels <= have.n_channels) or want.n_heads % want.n_kv_heads:
        raise fail("a width is larger than the base, below 1, or the query heads do not fill the kv heads")
    cls = type(adapter)
    if have.n_kv_heads < have.n_heads and want.n_kv_heads < have.n_kv_heads:
        _keep_groups(cls(gqa_mode="kv-groups"), model, layer, "head", want.n_kv_heads)
    now = adapter.widths(model, layer)
    if want.n_heads < now.n_heads:
        blocks = now.n_kv_heads if now.n_kv_heads < now.n_heads else 1
        _keep_groups(cls(gqa_mode="query-heads"), model, layer, "head", want.n_heads // blocks)
    if want.n_channels < have.n_channels:
        _keep_groups(adapter, model, layer, "channel", want.n_channels)
    got = adapter.widths(model, layer)
    if (got.n_heads, got.n_kv_heads, got.n_channels) != (want.n_heads, want.n_kv_heads, want.n_channels):
        raise fail(f"the {adapter.family} layout cannot reach it (rebuilt {got.to_dict()})")


def _torch_dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype):
        raise StructureError(f"unknown dtype {name!r}")
    return dtype


def build_skeleton(
    config: dict,
    widths: list[LayerWidths],
    *,
    gqa_mode: str = "query-heads",
    dtype: torch.dtype | str = torch.float32,
    attn_implementation: str | None = None,
    buffer_dtypes: dict[str, str] | None = None,
) -> tuple[nn.Module, StructureAdapter]:
    """Build the pruned architecture: parameters empty on the meta device, buffers real, widths set per layer.

    Args:
        config: The dense model's ``config.json`` as a dict; its ``model_type`` must have an adapter.
        widths: One :class:`~aeflib.models.LayerWidths` per decoder layer (Bloom: with ``kept_heads``).
        gqa_mode: The adapter's GQA mode, recorded with the checkpoint.
        dtype: Parameter dtype of the skeleton (the dtype of the weights that will be assigned).
        attn_implementation: ``"sdpa"``, ``"eager"`` ...; default: transformers' choice.
        buffer_dtypes: ``{buffer name: dtype name}`` to restore, e.g. RoPE ``inv_freq`` after ``model.to(bf16)``.

    Returns:
        ``(model, adapter)``; load weights with ``model.load_state_dict(state, strict=True, assign=True)``.

    Raises:
        StructureError: Unsupported model type, a layer count or width the config cannot give, an unknown dtype.

    Source: [ours].
    """
    from accelerate import init_empty_weights
    from transformers import CONFIG_MAPPING, AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    model_type = config.get("model_type")
    if model_type not in ADAPTERS:
        raise StructureError(f"model_type {model_type!r} is not supported; supported: {sorted(ADAPTERS)}")
    cfg = CONFIG_MAPPING[model_type].from_dict(config)
    kwargs = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
    with init_empty_weights(include_buffers=False), no_init_weights():  # parameters on meta, buffers real
        model = AutoModelForCausalLM.from_config(cfg, dtype=resolve_dtype(dtype), **kwargs)
    adapter = ADAPTERS[model_type](gqa_mode=gqa_mode)
    if len(widths) != adapter.n_layers(model):
        raise StructureError(f"{len(widths)} layer widths given, the config has {adapter.n_layers(model)} layers")
    for i, w in enumerate(widths):
        shrink_layer(adapter, model, i, w)
        adapter.set_widths(model, i, w)
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
