"""Weights as safetensors, shared by ``aeflib.io`` (checkpoints) and ``aeflib.export`` (stock folders).

``split_tied(model)`` → ``(state dict with each shared tensor once, {alias: stored name})``
``write_weights(state, path, metadata)`` → one safetensors file, readable by everyone
``refuse_weights_without_manifest(folder)`` → ``ValueError`` when aeflib wrote the weights but the manifest is gone

Source: [ours] (known failure 4: tied embeddings stored twice or lost).
"""

from __future__ import annotations

import os
from pathlib import Path

import safetensors.torch
import torch
from torch import nn

from aeflib.files import umask

__all__ = ["MANIFEST", "WEIGHTS", "refuse_weights_without_manifest", "split_tied", "write_weights"]

#: The weights file of aeflib and stock transformers folders.
WEIGHTS = "model.safetensors"
#: The manifest of an aeflib checkpoint folder (``aeflib.io``); its weights header holds ``_AEFLIB_KEY``.
MANIFEST = "aeflib.json"
_AEFLIB_KEY = "aeflib_format_version"


def split_tied(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """State dict with every shared tensor stored once, and ``{alias: stored name}`` for the others.

    The input embedding keeps its name when it is shared (SmolLM2 and Bloom tie ``lm_head`` to it), as transformers
    expects. Tensors that share storage without being the same view are cloned, since safetensors refuses them.
    """
    state = {k: v.detach() for k, v in model.state_dict().items()}
    embedding = model.get_input_embeddings()
    preferred = {f"{n}.weight" for n, mod in model.named_modules() if embedding is not None and mod is embedding}
    by_storage: dict[tuple, list[str]] = {}
    for name, t in state.items():
        by_storage.setdefault((t.device, t.untyped_storage().data_ptr()), []).append(name)
    tied: dict[str, str] = {}
    for names in by_storage.values():
        if len(names) < 2:
            continue
        names.sort(key=lambda n: (n not in preferred, n))
        keep = state[names[0]]
        for alias in names[1:]:
            t = state[alias]
            if (t.data_ptr(), t.shape, t.stride(), t.dtype) == (keep.data_ptr(), keep.shape, keep.stride(), keep.dtype):
                tied[alias] = names[0]
                del state[alias]
            else:
                state[alias] = t.clone()
    return {k: v.contiguous() for k, v in state.items()}, tied


def write_weights(state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """Write ``state`` as safetensors (CPU copies) at ``path``, readable by group and others as usual files are."""
    safetensors.torch.save_file({k: v.cpu() for k, v in state.items()}, str(path), metadata=metadata)
    os.chmod(path, 0o666 & ~umask())  # safetensors creates 0600


def refuse_weights_without_manifest(folder: str | os.PathLike) -> None:
    """Refuse a folder whose weights ``aeflib.io.save`` wrote but whose manifest ``aeflib.json`` is gone.

    Such a folder looks like a transformers checkpoint, but its ``config.json`` is the *dense* architecture: only
    the plans the manifest records rebuild the pruned widths, and transformers would fail on the first mismatched
    shape without saying why. The weights file's header (written by ``aeflib.io.save``) tells them apart.

    Args:
        folder: A folder about to be loaded as a transformers checkpoint.

    Raises:
        ValueError: ``model.safetensors`` carries aeflib's header and ``aeflib.json`` is missing, naming both.

    Source: [ours] (known failure 1).
    """
    from safetensors import SafetensorError, safe_open

    folder = Path(folder)
    weights = folder / WEIGHTS
    if (folder / MANIFEST).exists() or not weights.is_file():
        return
    try:
        with safe_open(str(weights), "pt") as f:
            version = (f.metadata() or {}).get(_AEFLIB_KEY)
    except (SafetensorError, OSError, ValueError):
        return  # not readable here: the loader names the file
    if version is not None:
        raise ValueError(
            f"{folder} is a checkpoint written by aeflib.io.save ({weights.name} records aeflib format {version}) but "
            f"its manifest {MANIFEST} is missing: the manifest records the pruning plans that rebuild the per-layer "
            f"widths (config.json is the dense model), so the folder cannot load without it. Restore {MANIFEST} from "
            "where the folder came from, or prune and save the model again with aeflib.io.save")
