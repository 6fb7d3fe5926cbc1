"""Models: the registry (``load``), the structure adapters (one per family) and model fingerprints."""

from __future__ import annotations

import transformers

_SUPPORTED_TRANSFORMERS = ("5.24",)
if not transformers.__version__.startswith(_SUPPORTED_TRANSFORMERS):  # known failure 8: fail loudly, not oddly
    raise ImportError(
        f"aeflib supports transformers {', '.join(_SUPPORTED_TRANSFORMERS)}.x (pinned in constraints.txt); "
        f"found {transformers.__version__}. Install with: pip install -c constraints.txt -e ."
    )

from aeflib.models.adapters import GQA_MODES, Group, GroupSet, LayerWidths, Slice, StructureAdapter, StructureError  # noqa: E402
from aeflib.models.checksum import checksum  # noqa: E402
from aeflib.models.registry import (  # noqa: E402
    ADAPTERS,
    MODELS,
    Loaded,
    ModelSpec,
    ModelUnavailableError,
    adapter_for,
    load,
    resolve_dtype,
)

__all__ = [
    "ADAPTERS", "GQA_MODES", "MODELS", "Group", "GroupSet", "LayerWidths", "Loaded", "ModelSpec",
    "ModelUnavailableError", "Slice", "StructureAdapter", "StructureError", "adapter_for", "checksum", "load",
    "resolve_dtype",
]
