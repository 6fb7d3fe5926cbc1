"""Models: the registry (``load``), the structure adapters (one file per family) and model fingerprints.

Importing this package imports every module in it, so that each family file's adapter registers itself
(``StructureAdapter.__init_subclass__``); no other file lists the families.
"""

from __future__ import annotations

import importlib
import pkgutil

import transformers

_SUPPORTED_TRANSFORMERS = ("5.24",)
if not transformers.__version__.startswith(_SUPPORTED_TRANSFORMERS):  # known failure 8: fail loudly, not oddly
    raise ImportError(
        f"aeflib supports transformers {', '.join(_SUPPORTED_TRANSFORMERS)}.x (pinned in constraints.txt); "
        f"found {transformers.__version__}. Install with: pip install -c constraints.txt -e ."
    )

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

from aeflib.models.adapters import (  # noqa: E402
    ADAPTERS,
    GQA_MODES,
    Group,
    GroupSet,
    LayerWidths,
    Loaded,
    Slice,
    StructureAdapter,
    StructureError,
    adapter_for,
    resolve_dtype,
)
from aeflib.models.checksum import checksum  # noqa: E402
from aeflib.models.registry import (  # noqa: E402
    MODELS,
    ModelSpec,
    ModelUnavailableError,
    load,
    require_resident,
    resolve_device,
)

__all__ = [
    "ADAPTERS", "GQA_MODES", "MODELS", "Group", "GroupSet", "LayerWidths", "Loaded", "ModelSpec",
    "ModelUnavailableError", "Slice", "StructureAdapter", "StructureError", "adapter_for", "checksum", "load",
    "require_resident", "resolve_device", "resolve_dtype",
]
