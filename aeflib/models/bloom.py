"""Bloom structure adapter (Bloom-7b1): head-interleaved fused ``query_key_value`` with biases, ALiBi, GELU MLP.

A ``BloomBlock`` couples, per head ``h``: the rows of ``self_attention.query_key_value`` (weight and bias) that
transformers views as ``[n_heads, 3, head_dim]`` (``BloomAttention._reshape``: q, k, v *interleaved per head*),
and columns ``h*d:(h+1)*d`` of ``self_attention.dense``; per MLP channel ``c``: row ``c`` (and bias) of
``mlp.dense_h_to_4h`` and column ``c`` of ``mlp.dense_4h_to_h``.

ALiBi: ``BloomModel.forward`` builds one bias tensor for all layers from ``config.n_head`` slopes and passes it
to every block. A pruned layer keeps a subset of its heads, each of which must keep *its own* slope. The adapter
therefore records the original indices of the kept heads on the attention module (``aef_kept_heads``) and
installs a forward pre-hook on each block that selects those rows of the ALiBi tensor. Dense layers pass through
untouched, so an empty plan is bit-identical.

Source: layout [docs/paper.md §4], transformers ``modeling_bloom.py``; the per-layer ALiBi hook [ours].
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import BloomConfig, BloomForCausalLM

from aeflib.models.adapters import GroupSet, LayerWidths, Slice, StructureAdapter
from aeflib.models.llama import TINY_LAYERS, TINY_VOCAB, _linear_features

__all__ = ["BloomAdapter"]

_HOOK_FLAG = "_aef_alibi_hook"


def _select_alibi(block: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    """Forward pre-hook: keep the ALiBi rows of this layer's surviving heads (original slopes)."""
    kept = getattr(block.self_attention, "aef_kept_heads", None)
    alibi = kwargs.get("alibi")
    if kept is None or alibi is None:
        return None
    n_total = block.aef_n_head_dense
    if len(kept) == n_total:
        return None
    batch = alibi.shape[0] // n_total
    per_head = alibi.view(batch, n_total, *alibi.shape[1:])                     # [B, n_head, 1, kv_len]
    index = torch.as_tensor(kept, device=alibi.device)
    kwargs["alibi"] = per_head.index_select(1, index).reshape(batch * len(kept), *alibi.shape[1:])
    return args, kwargs


class BloomAdapter(StructureAdapter):
    """Coupled structures of ``BloomForCausalLM``.

    Source: [LLM-Pruner code] prunes ``query_key_value`` with a ``ratio / 3`` fudge; here [ours] one group is one
    head (its 3 * head_dim interleaved rows), so head ratios mean the same as on LLaMA (known failure 10).
    """

    family = "bloom"
    model_types = ("bloom",)
    lora_targets = ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")
    config_class, model_class = BloomConfig, BloomForCausalLM
    #: Bloom-7b1 layout (fused interleaved qkv, ALiBi), 4 heads, 256 channels.
    tiny = {"tiny-bloom": lambda: BloomConfig(vocab_size=TINY_VOCAB, hidden_size=64, n_layer=TINY_LAYERS, n_head=4,
                                              bos_token_id=1, eos_token_id=2, pad_token_id=2)}
    export_limits = ("stock Bloom derives head_dim = hidden_size // n_head, the MLP width 4 * hidden_size and the "
                     "ALiBi slopes from n_head, so only an unpruned Bloom model exports")

    def decoder_layers(self, model: nn.Module) -> nn.ModuleList:
        """``model.transformer.h``."""
        return model.transformer.h

    def untouched_layer_params(self, model: nn.Module, layer: int) -> tuple[str, ...]:
        """LayerNorms and the output-side biases (added to the residual stream, which is never cut)."""
        return ("input_layernorm.weight", "input_layernorm.bias", "post_attention_layernorm.weight",
                "post_attention_layernorm.bias", "self_attention.dense.bias", "mlp.dense_4h_to_h.bias")

    def head_dim(self, model: nn.Module) -> int:
        """``hidden_size // n_head`` from the config, as ``BloomAttention`` computes it."""
        return model.config.hidden_size // model.config.n_head

    def widths(self, model: nn.Module, layer: int) -> LayerWidths:
        """Heads from the fused rows (3 per head channel), channels from ``dense_h_to_4h`` rows."""
        block = self.decoder_layers(model)[layer]
        d = self.head_dim(model)
        n_heads = block.self_attention.query_key_value.weight.shape[0] // (3 * d)
        n_ch = block.mlp.dense_h_to_4h.weight.shape[0]
        return LayerWidths(n_heads, n_heads, d, n_ch)

    def kept_heads(self, model: nn.Module, layer: int) -> list[int]:
        """Original (dense) indices of the heads layer ``layer`` still has; their ALiBi slopes are used."""
        attn = self.decoder_layers(model)[layer].self_attention
        n_heads = attn.query_key_value.weight.shape[0] // (3 * self.head_dim(model))
        kept = getattr(attn, "aef_kept_heads", None)
        return list(range(n_heads)) if kept is None else [int(h) for h in kept]

    def group_sets(self, model: nn.Module, layer: int) -> list[GroupSet]:
        """One group per head (interleaved fused rows + bias, dense columns), one per MLP channel."""
        block = self.decoder_layers(model)[layer]
        w = self.widths(model, layer)
        n, d, c = w.n_heads, w.head_dim, w.n_channels
        hidden = block.self_attention.dense.weight.shape[0]
        heads = (
            Slice("self_attention.query_key_value.weight", 0, (n, 3, d), 0, "qkv", hidden),
            Slice("self_attention.query_key_value.bias", 0, (n, 3, d), 0, "qkv.bias"),
            Slice("self_attention.dense.weight", 1, (n, d), 0, "o", hidden),
        )
        channels = (
            Slice("mlp.dense_h_to_4h.weight", 0, (c,), 0, "h_to_4h", hidden),
            Slice("mlp.dense_h_to_4h.bias", 0, (c,), 0, "h_to_4h.bias"),
            Slice("mlp.dense_4h_to_h.weight", 1, (c,), 0, "4h_to_h", hidden),
        )
        return [GroupSet(layer, "head", n, heads, "head"), GroupSet(layer, "channel", c, channels, "channel")]

    def after_cut(self, model: nn.Module, layer: int, kept: dict[str, list[int]]) -> None:
        """``BloomAttention`` reads ``num_heads``; the kept heads' original indices select their ALiBi slopes.

        ``kept["head"]`` indexes the heads the layer had before this cut: composed with what earlier cuts kept.
        """
        attn = self.decoder_layers(model)[layer].self_attention
        if "head" in kept:
            # computed before num_heads changes: kept_heads reads the pre-cut bookkeeping
            before = getattr(attn, "aef_kept_heads", None)
            before = list(range(model.config.n_head)) if before is None else before
            attn.aef_kept_heads = [int(before[i]) for i in kept["head"]]
        attn.num_heads = self.widths(model, layer).n_heads
        self.install_runtime(model)

    def export_config(self, config: Any, w: LayerWidths) -> Any:
        """``n_head``: stock Bloom derives head_dim, the MLP width (4 * hidden) and the ALiBi slopes from it."""
        config.n_head = w.n_heads
        return config

    def attribute_widths(self, model: nn.Module, layer: int) -> dict[str, tuple[int, int]]:
        """``num_heads``, ``head_dim``, kept-head bookkeeping and every Linear's features against the weights."""
        block = self.decoder_layers(model)[layer]
        w = self.widths(model, layer)
        attn = block.self_attention
        out = {
            "self_attention.num_heads": (attn.num_heads, w.n_heads),
            "self_attention.head_dim": (attn.head_dim, w.head_dim),
            "self_attention.kept heads": (len(self.kept_heads(model, layer)), w.n_heads),
            "self_attention.dense.weight columns": (attn.dense.weight.shape[1], w.n_heads * w.head_dim),
            "mlp.dense_4h_to_h.weight columns": (block.mlp.dense_4h_to_h.weight.shape[1], w.n_channels),
        }
        out.update(_linear_features(block))
        return out

    def install_runtime(self, model: nn.Module) -> None:
        """Register the per-layer ALiBi pre-hook on every block, once."""
        for block in self.decoder_layers(model):
            if getattr(block, _HOOK_FLAG, False):
                continue
            block.aef_n_head_dense = model.config.n_head
            block.register_forward_pre_hook(_select_alibi, with_kwargs=True)
            setattr(block, _HOOK_FLAG, True)
