"""Export a uniformly pruned model as a plain transformers folder that loads without aeflib.

``export_hf(model, tokenizer, folder)`` → a folder that ``transformers.AutoModelForCausalLM.from_pretrained`` loads
with stock classes. A stock config holds one width for all layers, so this works only when every decoder layer
(pruned or not) has the same widths; LLM-Pruner's default layer range (4..n-2) leaves layers dense and is never
uniform. Before writing, a stock model is built on the meta device from the rewritten config and every parameter
shape it implies is compared with the model's (known failure 2, Torch-Pruning #439/#441: transformers derives
``head_dim`` from ``hidden_size / num_heads``); any difference is refused with the layer and width named and a
pointer to :func:`aeflib.io.save`, whose folders keep per-layer widths.

Each family's adapter rewrites the config (``StructureAdapter.export_config``): LLaMA gets
``num_attention_heads``, ``num_key_value_heads``, ``intermediate_size`` and an explicit ``head_dim``; transformers 5
also requires ``hidden_size % num_attention_heads == 0``, so a head count that breaks it is refused with the legal
counts (known failure 3). Baichuan keeps ``model_type="baichuan"``: transformers has no such class, so ``import
aeflib.models`` (which registers aeflib's) before loading. Stock Bloom derives ``head_dim``, the MLP width
(``4 * hidden_size``) and the ALiBi slopes from ``n_head``: only an unpruned Bloom model exports.

Source: [ours] (known failures 2 and 3).
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from aeflib.files import atomic_folder
from aeflib.models.adapters import LayerWidths, StructureAdapter, adapter_for
from aeflib.skeleton import shape_problems
from aeflib.weights import WEIGHTS, split_tied, write_weights

__all__ = ["ExportError", "export_hf"]

log = logging.getLogger(__name__)


class ExportError(ValueError):
    """A model cannot be written as a stock transformers folder (non-uniform widths or shapes a config cannot imply)."""


def _describe(w: LayerWidths) -> str:
    return f"{w.n_heads} heads / {w.n_kv_heads} kv heads / {w.n_channels} channels"


def export_hf(
    model: nn.Module,
    tokenizer: Any,
    folder: str | os.PathLike,
    adapter: StructureAdapter | None = None,
    *,
    overwrite: bool = False,
) -> Path:
    """Write a plain transformers folder that ``AutoModelForCausalLM.from_pretrained`` loads without aeflib.

    Only possible when every decoder layer (pruned or not) has the same widths and the stock class built from the
    rewritten config has exactly the model's parameter shapes. LLaMA gets ``num_attention_heads``,
    ``num_key_value_heads``, ``intermediate_size`` and an explicit ``head_dim``. Baichuan folders keep
    ``model_type="baichuan"`` and need ``import aeflib.models`` before loading. Only an unpruned Bloom model
    exports (see the module docstring).

    Args:
        model: A supported causal LM.
        tokenizer: Its tokenizer, or ``None``.
        folder: Target folder; must not exist unless ``overwrite``.
        adapter: Its structure adapter (default: :func:`aeflib.models.adapter_for`).
        overwrite: Replace an existing checkpoint folder atomically.

    Returns:
        The folder path.

    Raises:
        ExportError: Non-uniform per-layer widths, or a config-implied shape that differs from the model's
            (known failure 2); the message names the layer and width and points to :func:`aeflib.io.save`.
        FileExistsError: As for :func:`aeflib.io.save`.

    Source: [ours] (known failures 2 and 3).
    """
    adapter = adapter if adapter is not None else adapter_for(model)
    adapter.check(model)
    widths = adapter.all_widths(model)
    hint = ("save it with aeflib.io.save(model, tokenizer, folder) instead, which records per-layer widths and "
            "reloads with aeflib.models.load(folder)")
    distinct: dict[tuple, list[int]] = {}
    for i, w in enumerate(widths):
        distinct.setdefault((w.n_heads, w.n_kv_heads, w.head_dim, w.n_channels), []).append(i)
    if len(distinct) > 1:
        rows = "; ".join(f"layers {layers}: {_describe(widths[layers[0]])}" for layers in distinct.values())
        raise ExportError(
            f"cannot export to a stock transformers folder: the layers have different widths ({rows}). A stock "
            "config holds one width for all layers; pruning only a layer range (LLM-Pruner's default 4..n-2) leaves "
            f"the other layers dense, so the model is not uniform. Prune every layer (plan(..., layers=range("
            f"{len(widths)}))) for a stock export, or {hint}")
    try:
        config = adapter.export_config(copy.deepcopy(model.config), widths[0])
    except NotImplementedError as err:
        raise ExportError(f"{err}; {hint}") from None
    except ValueError as err:
        raise ExportError(f"{err}; or {hint}") from None
    added = list(getattr(model, "aef_added_biases", []))  # FLAP's compensation: the stock config's bias flags
    if added:
        try:
            adapter.export_biases(config, added)
        except ValueError as err:
            raise ExportError(f"{err}; {hint}") from None
    config.dtype = next(model.parameters()).dtype
    try:
        if hasattr(config, "validate"):
            config.validate()  # what save_pretrained and from_pretrained run
        with torch.device("meta"):
            reference = adapter.build(copy.deepcopy(config))
    except Exception as err:  # transformers raises ValueError or StrictDataclassError (not a ValueError)
        raise ExportError(f"cannot export: a stock {type(model).__name__} cannot be built with "
                          f"{_describe(widths[0])} ({err}); {hint}") from err
    state, tied = split_tied(model)
    if tied and not getattr(config, "tie_word_embeddings", False):  # the stock model would not re-tie: store both
        state.update({alias: state[name].clone() for alias, name in tied.items()})
        tied = {}
    elif getattr(config, "tie_word_embeddings", False) and not tied:
        raise ExportError("config.tie_word_embeddings is true but the model's output and input embeddings are "
                          f"different tensors; a stock reload would tie them and lose one; {hint}")
    expected = {k: tuple(v.shape) for k, v in reference.state_dict().items() if k not in tied}
    if added:  # the flags give every layer's q/k/v (gate/up) a bias too: zero, as no bias computes
        dtype = next(model.parameters()).dtype
        state.update({k: torch.zeros(expected[k], dtype=dtype) for k in expected.keys() - state.keys()
                      if k.endswith(".bias")})
    problems = shape_problems(expected, {k: tuple(v.shape) for k, v in state.items()}, "the model")
    if problems:
        raise ExportError(
            f"cannot export: the config a stock {type(model).__name__} would read ({_describe(widths[0])}) implies "
            f"other shapes than the model has (known failure 2):\n  " + "\n  ".join(problems[:10])
            + (f"\n{adapter.export_limits}" if adapter.export_limits else "") + f"\n{hint}")
    target = Path(folder).expanduser()
    with atomic_folder(target, overwrite, replaceable=("aeflib.json", "config.json")) as tmp:
        write_weights(state, tmp / WEIGHTS, {"format": "pt"})
        config.save_pretrained(tmp)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    log.info("exported %s (%s) to %s", type(model).__name__, _describe(widths[0]), target)
    return target
