"""LLaMA-family structure adapter: LLaMA-7B and Vicuna-7B (multi-head), SmolLM2 and Llama-2/3 style GQA.

A LLaMA decoder layer (transformers ``LlamaDecoderLayer``) couples, per attention head ``h`` with ``head_dim``
``d``: rows ``h*d:(h+1)*d`` of ``q_proj``, ``k_proj``, ``v_proj`` and the same columns of ``o_proj``; and per MLP
channel ``c``: row ``c`` of ``gate_proj`` and ``up_proj`` and column ``c`` of ``down_proj``. This is the
dependency graph LLM-Pruner traces for LLaMA (``hf_llama_pruner.py``), written down once.

Under grouped-query attention (``n_kv_heads < n_heads``) query head ``h`` reads kv head ``h // (n_heads /
n_kv_heads)`` (``repeat_kv`` in transformers). Two ways to keep that legal (known failures 3, 5):

* ``gqa_mode="query-heads"`` — a group is one query head (q rows, o columns); k/v stay; every kv group loses the
  same number of query heads (``GroupSet.blocks = n_kv_heads``), so ``n_heads % n_kv_heads == 0`` holds.
* ``gqa_mode="kv-groups"`` — a group is one kv head with all its query heads; q/k/v rows and o columns go.

``LlamaAttention`` reshapes with ``-1`` heads, so after slicing the forward needs only
``num_key_value_groups`` updated (known failure 6).
"""

from __future__ import annotations

from typing import Any

from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from aeflib.models.adapters import GroupSet, LayerWidths, Slice, StructureAdapter

__all__ = ["LlamaAdapter", "tiny_llama_config"]

#: Width of every tiny model: the SmolLM2 vocabulary, so that the embedded tokenizer and shipped text drive them.
TINY_VOCAB = 49152
TINY_LAYERS = 4


def tiny_llama_config(n_heads: int, n_kv: int, channels: int, config_class: type = LlamaConfig) -> Any:
    """A 4-layer LLaMA-layout config with head_dim 16 and the SmolLM2 vocabulary (tiny random test models)."""
    return config_class(vocab_size=TINY_VOCAB, hidden_size=16 * n_heads, intermediate_size=channels,
                        num_hidden_layers=TINY_LAYERS, num_attention_heads=n_heads, num_key_value_heads=n_kv,
                        head_dim=16, max_position_embeddings=512, rms_norm_eps=1e-5, tie_word_embeddings=False,
                        bos_token_id=1, eos_token_id=2, pad_token_id=2)


def _linear(module: nn.Module, name: str) -> nn.Linear:
    return module.get_submodule(name)


class LlamaAdapter(StructureAdapter):
    """Coupled structures of ``LlamaForCausalLM`` (MHA and GQA).

    Source: [LLM-Pruner code] ``hf_llama_pruner.py`` couplings; GQA handling [ours] after known failures 3 and 5.
    """

    family = "llama"
    model_types = ("llama",)
    lora_targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    config_class, model_class = LlamaConfig, LlamaForCausalLM
    #: LLaMA-7B / Vicuna-7B layout (MHA, 4 / 4 heads, 128 channels) and SmolLM2 / Llama-2/3 (GQA, 6 / 2, 160).
    tiny = {"tiny-llama": lambda: tiny_llama_config(4, 4, 128), "tiny-gqa": lambda: tiny_llama_config(6, 2, 160)}

    attn = "self_attn"
    mlp_in = ("mlp.gate_proj", "mlp.up_proj")
    mlp_out = "mlp.down_proj"

    def decoder_layers(self, model: nn.Module) -> nn.ModuleList:
        """``model.model.layers``."""
        return model.model.layers

    def untouched_layer_params(self, model: nn.Module, layer: int) -> tuple[str, ...]:
        """RMSNorm weights and output-side biases (added to the never-cut residual stream).

        Under GQA in ``query-heads`` mode also k/v, which keep all their kv heads.
        """
        names = ("input_layernorm.weight", "post_attention_layernorm.weight", "self_attn.o_proj.bias",
                 "mlp.down_proj.bias")
        w = self.widths(model, layer)
        if w.n_kv_heads < w.n_heads and self.gqa_mode == "query-heads":
            names += tuple(f"{self.attn}.{p}_proj.{t}" for p in "kv" for t in ("weight", "bias"))
        return names

    def head_dim(self, model: nn.Module) -> int:
        """Channels per head, from the config (``head_dim`` if set, else ``hidden_size // num_attention_heads``)."""
        cfg = model.config
        return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads

    def widths(self, model: nn.Module, layer: int) -> LayerWidths:
        """Head counts from q/k rows, channels from gate rows."""
        block = self.decoder_layers(model)[layer]
        d = self.head_dim(model)
        n_heads, n_kv = self._qk_rows(block)
        n_ch = _linear(block, self.mlp_in[0]).weight.shape[0]
        return LayerWidths(n_heads // d, n_kv // d, d, n_ch)

    def _qk_rows(self, block: nn.Module) -> tuple[int, int]:
        """Rows of the query and key projections (fused layouts override this)."""
        attn = block.get_submodule(self.attn)
        return attn.q_proj.weight.shape[0], attn.k_proj.weight.shape[0]

    def head_slices(self, block: nn.Module, w: LayerWidths) -> tuple[tuple[Slice, ...], int, str, int]:
        """Slices, group count, unit name and block count of the head groups (fused layouts override this)."""
        a, d, hidden = self.attn, w.head_dim, _linear(block, f"{self.attn}.o_proj").weight.shape[0]
        q_per_kv = w.n_heads // w.n_kv_heads
        with_bias = _linear(block, f"{a}.q_proj").bias is not None
        if w.n_kv_heads == w.n_heads or self.gqa_mode == "kv-groups":
            # one group = one kv head and its q_per_kv query heads (q_per_kv = 1 without GQA)
            n, unit = w.n_kv_heads, ("head" if q_per_kv == 1 else "kv group")
            q_layout, kv_layout = (n, q_per_kv, d), (n, d)
            slices = [Slice(f"{a}.q_proj.weight", 0, q_layout, 0, "q", hidden),
                      Slice(f"{a}.k_proj.weight", 0, kv_layout, 0, "k", hidden),
                      Slice(f"{a}.v_proj.weight", 0, kv_layout, 0, "v", hidden)]
            if with_bias:
                slices += [Slice(f"{a}.{p}_proj.bias", 0, lay, 0, f"{p}.bias")
                           for p, lay in (("q", q_layout), ("k", kv_layout), ("v", kv_layout))]
            slices.append(Slice(f"{a}.o_proj.weight", 1, q_layout, 0, "o", hidden))
            return tuple(slices), n, unit, 1
        # GQA, query-heads mode: one group = one query head; k/v rows stay
        n = w.n_heads
        slices = [Slice(f"{a}.q_proj.weight", 0, (n, d), 0, "q", hidden)]
        if with_bias:
            slices.append(Slice(f"{a}.q_proj.bias", 0, (n, d), 0, "q.bias"))
        slices.append(Slice(f"{a}.o_proj.weight", 1, (n, d), 0, "o", hidden))
        return tuple(slices), n, "query head", w.n_kv_heads

    def channel_slices(self, block: nn.Module, w: LayerWidths) -> tuple[Slice, ...]:
        """Rows of the MLP input projections (and biases) and columns of the output projection."""
        n, hidden = w.n_channels, _linear(block, self.mlp_out).weight.shape[0]
        slices = []
        for name in self.mlp_in:
            role = name.split(".")[-1].removesuffix("_proj")
            slices.append(Slice(f"{name}.weight", 0, (n,), 0, role, hidden))
            if _linear(block, name).bias is not None:
                slices.append(Slice(f"{name}.bias", 0, (n,), 0, f"{role}.bias"))
        slices.append(Slice(f"{self.mlp_out}.weight", 1, (n,), 0, self.mlp_out.split(".")[-1].removesuffix("_proj"),
                            hidden))
        return tuple(slices)

    def group_sets(self, model: nn.Module, layer: int) -> list[GroupSet]:
        """Head groups then channel groups of layer ``layer``."""
        block = self.decoder_layers(model)[layer]
        w = self.widths(model, layer)
        head_slices, n, unit, blocks = self.head_slices(block, w)
        return [GroupSet(layer, "head", n, head_slices, unit, blocks),
                GroupSet(layer, "channel", w.n_channels, self.channel_slices(block, w), "channel")]

    def after_cut(self, model: nn.Module, layer: int, kept: dict[str, list[int]]) -> None:
        """``num_key_value_groups`` is the only width ``LlamaAttention.forward`` reads (eager and sdpa)."""
        widths = self.widths(model, layer)
        attn = self.decoder_layers(model)[layer].get_submodule(self.attn)
        attn.num_key_value_groups = widths.n_heads // widths.n_kv_heads

    def export_config(self, config: Any, w: LayerWidths) -> Any:
        """``num_attention_heads``, ``num_key_value_heads``, ``intermediate_size`` and an explicit ``head_dim``.

        Raises:
            ValueError: A head count that does not divide ``hidden_size`` (transformers 5 ``LlamaConfig`` validates
                it even with an explicit ``head_dim``; known failure 3), listing the legal uniform counts.
        """
        if config.hidden_size % w.n_heads:
            step = w.n_kv_heads if w.n_kv_heads < w.n_heads else 1  # GQA: whole query heads per kv head
            legal = [n for n in range(step, config.num_attention_heads + 1, step) if config.hidden_size % n == 0]
            raise ValueError(f"cannot export {w.n_heads} query heads: stock transformers requires hidden_size "
                             f"({config.hidden_size}) to be a multiple of num_attention_heads even with an explicit "
                             f"head_dim; legal uniform head counts: {legal}")
        config.num_attention_heads, config.num_key_value_heads = w.n_heads, w.n_kv_heads
        config.head_dim, config.intermediate_size = w.head_dim, w.n_channels
        return config

    def export_biases(self, config: Any, names: list[str]) -> None:
        """``attention_bias`` for added ``o_proj`` biases, ``mlp_bias`` for ``down_proj`` (q/k/v, gate/up get zeros).

        Raises:
            ValueError: Any other added bias, naming it.
        """
        for name in names:
            if name.endswith(f"{self.attn}.o_proj.bias"):
                config.attention_bias = True
            elif name.endswith(f"{self.mlp_out}.bias"):
                config.mlp_bias = True
            else:
                raise ValueError(f"no stock {self.family} config flag creates the bias {name!r}")

    def attribute_widths(self, model: nn.Module, layer: int) -> dict[str, tuple[int, int]]:
        """Attention attributes and every Linear's in/out features against the weights."""
        block = self.decoder_layers(model)[layer]
        w = self.widths(model, layer)
        attn = block.get_submodule(self.attn)
        out = {
            f"{self.attn}.num_key_value_groups": (attn.num_key_value_groups, w.n_heads // max(w.n_kv_heads, 1)),
            f"{self.attn}.head_dim": (attn.head_dim, w.head_dim),
            f"{self.attn}.o_proj.weight columns": (attn.o_proj.weight.shape[1], w.n_heads * w.head_dim),
            f"{self.mlp_out}.weight columns": (_linear(block, self.mlp_out).weight.shape[1], w.n_channels),
        }
        out.update(_linear_features(block))
        return out


def _linear_features(block: nn.Module) -> dict[str, tuple[int, int]]:
    """``in_features``/``out_features`` of every Linear in ``block`` against its weight shape."""
    out = {}
    for name, mod in block.named_modules():
        if isinstance(mod, nn.Linear):
            out[f"{name}.out_features"] = (mod.out_features, mod.weight.shape[0])
            out[f"{name}.in_features"] = (mod.in_features, mod.weight.shape[1])
    return out
