"""Tiny random models of every layout aeflib supports, built in-process for tests and fast notebook runs.

Each has the architecture of a paper model at toy width: 4 decoder layers, head_dim 16, and the SmolLM2 vocabulary
(49152) so that the embedded tokenizer and the shipped text drive them. Weights are random (seeded): their
perplexity is meaningless, their *structure* is exact.

| name          | layout of                   | heads (q / kv) | MLP channels |
|---------------|-----------------------------|----------------|--------------|
| tiny-llama    | LLaMA-7B, Vicuna-7B (MHA)   | 4 / 4          | 128          |
| tiny-gqa      | SmolLM2, Llama-2/3 (GQA)    | 6 / 2          | 160          |
| tiny-baichuan | Baichuan-7B (fused W_pack)  | 4 / 4          | 128          |
| tiny-bloom    | Bloom-7b1 (fused qkv, ALiBi)| 4 / 4          | 256          |
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import BloomConfig, BloomForCausalLM, LlamaConfig, LlamaForCausalLM, PretrainedConfig

from aeflib.models.baichuan import BaichuanConfig, BaichuanForCausalLM

__all__ = ["TINY", "build_tiny"]

VOCAB = 49152
LAYERS = 4


def _llama(n_heads: int, n_kv: int, channels: int) -> LlamaConfig:
    return LlamaConfig(vocab_size=VOCAB, hidden_size=16 * n_heads, intermediate_size=channels,
                       num_hidden_layers=LAYERS, num_attention_heads=n_heads, num_key_value_heads=n_kv,
                       head_dim=16, max_position_embeddings=512, rms_norm_eps=1e-5, tie_word_embeddings=False,
                       bos_token_id=1, eos_token_id=2, pad_token_id=2)


def _baichuan() -> BaichuanConfig:
    return BaichuanConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=LAYERS,
                          num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                          rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
                          pad_token_id=2)


def _bloom() -> BloomConfig:
    return BloomConfig(vocab_size=VOCAB, hidden_size=64, n_layer=LAYERS, n_head=4, bos_token_id=1,
                       eos_token_id=2, pad_token_id=2)


TINY: dict[str, tuple[Callable[[], PretrainedConfig], type]] = {
    "tiny-llama": (lambda: _llama(4, 4, 128), LlamaForCausalLM),
    "tiny-gqa": (lambda: _llama(6, 2, 160), LlamaForCausalLM),
    "tiny-baichuan": (_baichuan, BaichuanForCausalLM),
    "tiny-bloom": (_bloom, BloomForCausalLM),
}


def build_tiny(name: str, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """Build tiny model ``name`` with weights drawn under ``torch.manual_seed(seed)``.

    Raises:
        ValueError: If ``name`` is not a key of :data:`TINY`.
    """
    if name not in TINY:
        raise ValueError(f"unknown tiny model {name!r}; choose one of {sorted(TINY)}")
    make_config, cls = TINY[name]
    config = make_config()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(config)
    model.config.name_or_path = name
    return model.to(dtype).eval()
