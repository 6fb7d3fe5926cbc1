"""Baichuan-7B: its layout as a transformers model (no remote code) and its structure adapter.

Baichuan-7B is a LLaMA decoder whose q, k and v projections are stored as one fused ``W_pack`` of shape
``[3 * hidden, hidden]`` holding three blocks ``[Q; K; V]`` (rows ``0:h``, ``h:2h``, ``2h:3h``), with RoPE,
RMSNorm and a SwiGLU MLP. transformers 5.24 ships no Baichuan class and the hub checkpoint's own class needs
``trust_remote_code``; aeflib defines the layout here instead, reusing transformers' LLaMA pieces, so the hub
weights load by name (``model.layers.N.self_attn.W_pack.weight`` ...) and no downloaded code ever runs.

Head ``h`` owns rows ``h*d:(h+1)*d`` of *each* block: as a :class:`~aeflib.models.adapters.Slice`, the rows of
``W_pack`` are laid out ``[3, n_heads, head_dim]`` and groups sit on axis 1. The same head ratio therefore removes
the same number of heads as on LLaMA — no ``ratio / 3`` fudge (known failure 10).

Source: layout [docs/paper.md §4] and Baichuan-7B's ``modeling_baichuan.py`` (read, not copied).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import (
    ALL_ATTENTION_FUNCTIONS,
    apply_rotary_pos_emb,
    eager_attention_forward,
)

from aeflib.models.adapters import LayerWidths, Slice
from aeflib.models.llama import TINY_LAYERS, TINY_VOCAB, LlamaAdapter
from aeflib.weights import refuse_weights_without_manifest

__all__ = ["BaichuanAdapter", "BaichuanAttention", "BaichuanConfig", "BaichuanForCausalLM", "config_from_hub_json"]


class BaichuanConfig(LlamaConfig):
    """LLaMA configuration under ``model_type="baichuan"``; Baichuan-7B is multi-head (no GQA)."""

    model_type = "baichuan"


class BaichuanAttention(nn.Module):
    """LLaMA attention with the fused ``W_pack = [Q; K; V]`` projection of Baichuan-7B.

    Shapes: input ``[batch, L, hidden]``; ``W_pack.weight`` ``[3 * n_heads * head_dim, hidden]``; output
    ``[batch, L, hidden]``. The head count is read from the weights (``-1`` in the reshape), so a pruned layer
    needs no attribute edits.
    """

    def __init__(self, config: BaichuanConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.num_key_value_groups = 1
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        self.is_causal = True
        width = config.num_attention_heads * self.head_dim
        bias = getattr(config, "attention_bias", False)  # False in Baichuan-7B; True in a FLAP-compensated export
        self.W_pack = nn.Linear(config.hidden_size, 3 * width, bias=bias)
        self.o_proj = nn.Linear(width, config.hidden_size, bias=bias)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        attention_mask: torch.Tensor | None = None,
        cache=None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Same contract as ``LlamaAttention.forward``."""
        if cache is None and "past_key_values" in kwargs:
            cache = kwargs.pop("past_key_values")
        input_shape = hidden_states.shape[:-1]                                       # [B, L]
        qkv = self.W_pack(hidden_states).view(*input_shape, 3, -1, self.head_dim)    # [B, L, 3, n_heads, d]
        query, key, value = (t.transpose(1, 2) for t in qkv.unbind(dim=-3))         # 3 x [B, n_heads, L, d]
        cos, sin = position_embeddings
        query, key = apply_rotary_pos_emb(query, key, cos, sin)
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx, kwargs=kwargs)
        attention: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        out, weights = attention(self, query, key, value, attention_mask,
                                 dropout=0.0 if not self.training else self.attention_dropout,
                                 scaling=self.scaling, **kwargs)
        out = out.reshape(*input_shape, -1).contiguous()                               # [B, L, n_heads * d]
        return self.o_proj(out), weights


class BaichuanForCausalLM(LlamaForCausalLM):
    """``LlamaForCausalLM`` with :class:`BaichuanAttention` in every layer; loads Baichuan-7B weights by name."""

    config_class = BaichuanConfig

    def __init__(self, config: BaichuanConfig):
        super().__init__(config)
        for i, layer in enumerate(self.model.layers):
            layer.self_attn = BaichuanAttention(config, i)
        self.post_init()


AutoConfig.register("baichuan", BaichuanConfig, exist_ok=True)
AutoModelForCausalLM.register(BaichuanConfig, BaichuanForCausalLM, exist_ok=True)


def config_from_hub_json(raw: dict) -> BaichuanConfig:
    """Build a :class:`BaichuanConfig` from the ``config.json`` of the hub checkpoint (which names remote code).

    Args:
        raw: The parsed ``config.json`` of ``baichuan-inc/Baichuan-7B`` (keys as in that file).

    Returns:
        A config with the same sizes; ``auto_map`` and the remote class names are dropped.

    Raises:
        ValueError: If a size field is missing, naming it.
    """
    needed = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    missing = [k for k in needed if k not in raw]
    if missing:
        raise ValueError(f"Baichuan config.json lacks {missing}; is this a Baichuan-7B folder?")
    keep = {k: raw[k] for k in (*needed, "rms_norm_eps", "max_position_embeddings", "hidden_act",
                                "bos_token_id", "eos_token_id", "pad_token_id", "tie_word_embeddings") if k in raw}
    return BaichuanConfig(**keep, num_key_value_heads=raw["num_attention_heads"], rope_theta=10000.0)


class BaichuanAdapter(LlamaAdapter):
    """Coupled structures of :class:`BaichuanForCausalLM`: LLaMA's, with q/k/v fused block-wise in ``W_pack``.

    Source: [LLM-Pruner code] prunes ``W_pack`` with ``ratio / 3`` tricks; here [ours] the head is a proper group.
    """

    family = "baichuan"
    model_types = ("baichuan",)
    lora_targets = ("W_pack", "o_proj", "gate_proj", "up_proj", "down_proj")
    config_class, model_class = BaichuanConfig, BaichuanForCausalLM
    #: Baichuan-7B layout (fused W_pack), 4 / 4 heads, 128 channels.
    tiny = {"tiny-baichuan": lambda: BaichuanConfig(
        vocab_size=TINY_VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=TINY_LAYERS,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512, rms_norm_eps=1e-6,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=2)}

    @classmethod
    def load_folder(cls, path: os.PathLike, raw: dict, **kwargs: Any) -> tuple[nn.Module, Any]:
        """Load a Baichuan folder; the hub's ``config.json`` names remote code, which never runs.

        Sizes are read by :func:`config_from_hub_json`; the SentencePiece ``tokenizer.model`` loads as a
        ``LlamaTokenizer`` when the tokenizer class the folder names is unknown.
        """
        from transformers import AutoTokenizer, LlamaTokenizer

        refuse_weights_without_manifest(path)
        model = BaichuanForCausalLM.from_pretrained(path, config=config_from_hub_json(raw), trust_remote_code=False,
                                                    **kwargs)
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        except (ValueError, OSError, KeyError):
            tokenizer = LlamaTokenizer.from_pretrained(path)
        return model, tokenizer

    def _qk_rows(self, block: nn.Module) -> tuple[int, int]:
        rows = block.self_attn.W_pack.weight.shape[0] // 3
        return rows, rows

    def head_slices(self, block: nn.Module, w: LayerWidths) -> tuple[tuple[Slice, ...], int, str, int]:
        """Rows ``[3, n_heads, head_dim]`` of ``W_pack`` (groups on axis 1) and columns of ``o_proj``."""
        n, d = w.n_heads, w.head_dim
        hidden = block.self_attn.o_proj.weight.shape[0]
        slices = [Slice("self_attn.W_pack.weight", 0, (3, n, d), 1, "qkv", hidden)]
        if block.self_attn.W_pack.bias is not None:  # attention_bias=True (a FLAP-compensated export)
            slices.append(Slice("self_attn.W_pack.bias", 0, (3, n, d), 1, "qkv.bias"))
        slices.append(Slice("self_attn.o_proj.weight", 1, (n, d), 0, "o", hidden))
        return tuple(slices), n, "head", 1
