"""Tiny random models of every layout aeflib supports, built in-process for tests and fast notebook runs.

Each family's adapter declares its tiny configs (``StructureAdapter.tiny``); this module only collects and builds
them. The built-in ones have the architecture of a paper model at toy width: 4 decoder layers, head_dim 16, and
the SmolLM2 vocabulary (49152) so that the embedded tokenizer and the shipped text drive them. Weights are random
(seeded): their perplexity is meaningless, their *structure* is exact.

| name          | layout of                   | heads (q / kv) | MLP channels |
|---------------|-----------------------------|----------------|--------------|
| tiny-llama    | LLaMA-7B, Vicuna-7B (MHA)   | 4 / 4          | 128          |
| tiny-gqa      | SmolLM2, Llama-2/3 (GQA)    | 6 / 2          | 160          |
| tiny-baichuan | Baichuan-7B (fused W_pack)  | 4 / 4          | 128          |
| tiny-bloom    | Bloom-7b1 (fused qkv, ALiBi)| 4 / 4          | 256          |
"""

from __future__ import annotations

import torch

from aeflib.models.adapters import ADAPTERS, StructureAdapter

__all__ = ["build_tiny", "tiny_config", "tiny_models"]


def tiny_models() -> dict[str, type[StructureAdapter]]:
    """``{tiny name: adapter class}`` over every registered family (a family declares its own ``tiny``)."""
    return {name: cls for cls in dict.fromkeys(ADAPTERS.values()) for name in cls.__dict__.get("tiny", {})}


def tiny_config(name: str):
    """The transformers config of tiny model ``name`` (no weights built).

    Raises:
        ValueError: If ``name`` is not a tiny model of a registered family, listing those that are.
    """
    models = tiny_models()
    if name not in models:
        raise ValueError(f"unknown tiny model {name!r}; choose one of {sorted(models)}")
    return models[name].__dict__["tiny"][name]()


def build_tiny(name: str, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """Build tiny model ``name`` with weights drawn under ``torch.manual_seed(seed)``.

    Returns:
        The model in eval mode, parameters of ``dtype``, ``config.name_or_path == name``.

    Raises:
        ValueError: If ``name`` is not a tiny model of a registered family, listing those that are.
    """
    cls, config = tiny_models().get(name), tiny_config(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls.model_class(config)
    model.config.name_or_path = name
    return model.to(dtype).eval()
