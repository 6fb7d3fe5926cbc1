"""The structure-adapter interface: what a decoder family must say about its coupled weights.

How to add an architecture family (SliceGPT's recipe, our words): write one file in ``aeflib/models/`` with a
subclass of :class:`StructureAdapter` that answers each abstract member for one decoder layer and sets the class
attributes that say which ``config.model_type`` values it serves, which transformers classes build the model, its
tiny test configs and its stock export. Defining the class registers it (:data:`ADAPTERS`); the registry, the tiny
models, checkpoints, export and the shared contract tests in ``tests/models/test_adapters.py`` find it there and
name no family. ``aeflib/models/llama.py`` is the worked example; ``baichuan.py`` and ``bloom.py`` show fused
q/k/v projections; ``tests/test_fifth_family.py`` adds a family from a test file alone.

Importance, fusion and planning see only the :class:`GroupSet` objects an adapter returns; they never name a
projection or ask which model they are on.

A :class:`GroupSet` describes the ``n`` groups of one kind (attention heads or MLP channels) in one decoder layer
*vectorised*: each :class:`Slice` says how one parameter's dimension factorises (``layout``) and which factor
indexes the groups (``axis``). This single rule covers plain projections (``q_proj`` rows = ``[n_heads,
head_dim]``, axis 0), Baichuan's block-fused ``W_pack`` (rows = ``[3, n_heads, head_dim]``, axis 1), Bloom's
head-interleaved ``query_key_value`` (rows = ``[n_heads, 3, head_dim]``, axis 0) and GQA kv groups (q rows =
``[n_kv_heads, q_per_kv, head_dim]``, axis 0).
"""

from __future__ import annotations

import abc
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
from torch import nn

from aeflib.weights import refuse_weights_without_manifest

__all__ = [
    "ADAPTERS",
    "DTYPES",
    "GQA_MODES",
    "Group",
    "GroupSet",
    "LayerWidths",
    "Loaded",
    "Slice",
    "StructureAdapter",
    "StructureError",
    "adapter_class",
    "adapter_for",
    "resolve_dtype",
]

#: ``config.model_type`` → adapter class; filled by :meth:`StructureAdapter.__init_subclass__` (one file per family).
ADAPTERS: dict[str, type[StructureAdapter]] = {}

GQA_MODES = {
    "query-heads": "groups are query heads; the same number is removed inside every kv group, k/v stay",
    "kv-groups": "groups are kv heads with all their query heads; q, k, v rows and o columns go together",
}


class StructureError(ValueError):
    """A model's weights, attributes or plan disagree with the structure the adapter expects."""


@dataclass(frozen=True)
class Slice:
    """The part of one parameter that belongs to each group of a :class:`GroupSet`.

    The parameter's dimension ``dim`` (length ``prod(layout)``) is viewed as ``layout``; the groups are the
    entries along ``layout[axis]``. Example: ``q_proj.weight`` with 4 heads of 16 dims, rows grouped by head →
    ``Slice("self_attn.q_proj.weight", dim=0, layout=(4, 16), axis=0, role="q")``.

    Attributes:
        param: Parameter name relative to the decoder layer, e.g. ``"mlp.down_proj.weight"``.
        dim: Dimension of the parameter that is cut: 0 = output rows (and biases), 1 = input columns.
        layout: Factorisation of that dimension; ``layout[axis]`` equals the group count.
        axis: Which factor of ``layout`` indexes the groups.
        role: Short human name (``"q"``, ``"qkv"``, ``"o"``, ``"gate"``, ``"down"``, ``"qkv.bias"`` ...).
        vector_len: Elements per index along ``dim`` (the other dimension's size; 1 for a bias).
    """

    param: str
    dim: int
    layout: tuple[int, ...]
    axis: int
    role: str
    vector_len: int = 1

    def positions(self, groups: torch.Tensor) -> torch.Tensor:
        """Indices along ``dim`` owned by ``groups`` (LongTensor [k]) → LongTensor [k * prod(layout)/n], sorted."""
        grid = torch.arange(math.prod(self.layout)).view(self.layout)                 # layout
        picked = grid.index_select(self.axis, groups.to(torch.long))                   # layout with n → k
        return picked.reshape(-1).sort().values

    def per_group(self, tensor: torch.Tensor) -> torch.Tensor:
        """Rearrange a tensor shaped like the parameter into [n_groups, vectors, vector_len].

        A *vector* is one row (``dim=0``) or column (``dim=1``) of the weight; LLM-Pruner scores each vector and
        sums the vectors of a group. For a bias every vector has length 1.
        """
        moved = tensor.movedim(self.dim, 0)                                             # [prod(layout), rest...]
        rest = moved.shape[1:]
        grid = moved.reshape(*self.layout, math.prod(rest))                            # layout + [vector_len]
        grid = grid.movedim(self.axis, 0)                                               # [n, other factors..., len]
        return grid.reshape(self.layout[self.axis], -1, grid.shape[-1])                # [n, vectors, vector_len]


@dataclass(frozen=True)
class Group:
    """One removable structure — an attention head (or kv group) or an MLP channel — for display and teaching.

    Attributes:
        layer: Decoder layer, 0-based.
        kind: The group set's kind (``"head"``, ``"channel"``).
        index: Group index inside the layer (query head, kv group or channel).
        regions: ``(parameter, dim, sorted indices along dim)`` for each coupled weight slice.
    """

    layer: int
    kind: str
    index: int
    regions: tuple[tuple[str, int, tuple[int, ...]], ...]

    def __str__(self) -> str:
        lines = [f"layer {self.layer} {self.kind} {self.index}:"]
        for param, dim, idx in self.regions:
            side = "rows" if dim == 0 else "columns"
            span = f"{idx[0]}..{idx[-1]}" if list(idx) == list(range(idx[0], idx[-1] + 1)) else f"{len(idx)} indices"
            lines.append(f"  {param}: {side} {span} ({len(idx)})")
        return "\n".join(lines)


@dataclass(frozen=True)
class GroupSet:
    """The ``n`` groups of one kind in one decoder layer, removed or kept as whole groups.

    Every group set has exactly one slice cut along input columns (``dim=1``: the output projection of the heads or
    channels); fusion's soft masks scale those input features. ``__post_init__`` enforces the rule.

    Attributes:
        layer: Decoder layer, 0-based.
        kind: What the groups are; ``"head"`` (attention) or ``"channel"`` (MLP intermediate channel) today. The
            key ``"<layer>.<kind>"`` names the set in scores, plans and checkpoints.
        n: Number of groups.
        slices: Every parameter region that each group owns.
        unit: What one group is, in words (``"query head"``, ``"kv group"``, ``"head"``, ``"channel"``).
        blocks: The groups form ``blocks`` equal, contiguous blocks that must each keep the same number of
            groups (query heads inside kv groups under GQA); 1 means no constraint.
    """

    layer: int
    kind: str
    n: int
    slices: tuple[Slice, ...]
    unit: str
    blocks: int = 1

    def __post_init__(self) -> None:
        for s in self.slices:
            if s.layout[s.axis] != self.n:
                raise StructureError(
                    f"slice {s.param} has {s.layout[s.axis]} groups on axis {s.axis}, expected {self.n}")
        if self.n % self.blocks:
            raise StructureError(f"{self.n} groups cannot form {self.blocks} equal blocks")
        inputs = [s.param for s in self.slices if s.dim == 1]
        if len(inputs) != 1:
            raise StructureError(f"group set {self.key} cuts input columns of {inputs or 'no parameter'}; exactly "
                                 "one slice with dim=1 (the output projection) is required")

    @property
    def key(self) -> str:
        """Stable key ``"<layer>.<kind>"`` used by Scores, plans and saved files."""
        return f"{self.layer}.{self.kind}"

    @property
    def params_per_group(self) -> int:
        """Number of parameters one group owns, summed over its slices (weights and biases)."""
        return sum(math.prod(s.layout) // self.n * s.vector_len for s in self.slices)

    def group(self, index: int) -> Group:
        """Expand group ``index`` into a :class:`Group` listing its concrete index ranges."""
        if not 0 <= index < self.n:
            raise IndexError(f"group index {index} is outside 0..{self.n - 1} for {self.key}")
        idx = torch.tensor([index])
        regions = tuple((s.param, s.dim, tuple(s.positions(idx).tolist())) for s in self.slices)
        return Group(self.layer, self.kind, index, regions)


@dataclass
class LayerWidths:
    """The widths one decoder layer runs with, read from its weights (never from module attributes).

    Derived, for reports, checks and export; checkpoints record plans, not widths.

    Attributes:
        n_heads: Query heads.
        n_kv_heads: Key/value heads (= ``n_heads`` without GQA).
        head_dim: Channels per head.
        n_channels: MLP intermediate channels.
    """

    n_heads: int
    n_kv_heads: int
    head_dim: int
    n_channels: int

    def to_dict(self) -> dict:
        """Plain-JSON form."""
        return {"n_heads": self.n_heads, "n_kv_heads": self.n_kv_heads, "head_dim": self.head_dim,
                "n_channels": self.n_channels}


class StructureAdapter(abc.ABC):
    """What aeflib needs to know about one decoder family; one subclass per family file.

    Subclasses answer for *one decoder layer* at a time and read widths from weights and config, never from
    module attributes that transformers may rename (known failure 8). A subclass that sets ``model_types``
    registers itself in :data:`ADAPTERS` when it is defined; aeflib imports every module of ``aeflib.models``, so a
    family file needs no other registration.
    """

    #: Family name shown in reports, e.g. ``"llama"``.
    family: ClassVar[str] = ""
    #: ``config.model_type`` values this adapter serves.
    model_types: ClassVar[tuple[str, ...]] = ()
    #: peft ``target_modules`` for LoRA recovery (docs/paper.md §4).
    lora_targets: ClassVar[tuple[str, ...]] = ()
    #: The transformers configuration and causal-LM classes of the family.
    config_class: ClassVar[type] = type(None)
    model_class: ClassVar[type] = type(None)
    #: Tiny random models of the family: ``{name: () -> config}`` (``aeflib.models.tiny``; tests run on each).
    #: Read from the class itself, not inherited: a subclass family declares its own.
    tiny: ClassVar[dict[str, Callable[[], Any]]] = {}
    #: Why a stock transformers class may not fit a pruned model of the family (added to export refusals).
    export_limits: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Register ``cls`` under each of the ``model_types`` it declares itself in :data:`ADAPTERS`.

        Raises:
            StructureError: A model type another adapter class already serves, naming both classes.
        """
        super().__init_subclass__(**kwargs)
        for model_type in cls.__dict__.get("model_types", ()):
            other = ADAPTERS.get(model_type)
            if other is not None and other.__qualname__ != cls.__qualname__:
                raise StructureError(f"model_type {model_type!r} is served by {other.__qualname__} already; "
                                     f"{cls.__qualname__} cannot serve it too")
            ADAPTERS[model_type] = cls

    # ---- the family's classes, folders and export -----------------------------------------------------------
    @classmethod
    def config_from_dict(cls, raw: dict) -> Any:
        """Build the family's config from a ``config.json`` dict (:attr:`config_class`)."""
        return cls.config_class.from_dict(raw)

    @classmethod
    def build(cls, config: Any, **kwargs: Any) -> nn.Module:
        """Instantiate :attr:`model_class` from ``config`` (``dtype=``, ``attn_implementation=`` as transformers)."""
        return cls.model_class._from_config(config, **kwargs)

    @classmethod
    def load_folder(cls, path: os.PathLike, raw: dict, **kwargs: Any) -> tuple[nn.Module, Any]:
        """Load a transformers checkpoint folder of this family without remote code: ``(model, tokenizer)``.

        Args:
            path: The folder; ``raw`` is its parsed ``config.json``.
            raw: The parsed ``config.json``.
            **kwargs: ``dtype``, ``device_map`` for ``from_pretrained``.

        Raises:
            ValueError: The folder holds weights ``aeflib.io.save`` wrote and its manifest is missing.
        """
        from transformers import AutoTokenizer

        refuse_weights_without_manifest(path)
        model = cls.model_class.from_pretrained(path, trust_remote_code=False, **kwargs)
        return model, AutoTokenizer.from_pretrained(path, trust_remote_code=False)

    def export_config(self, config: Any, widths: LayerWidths) -> Any:
        """Rewrite a copy of the dense config so that the stock class implies ``widths`` in every layer.

        Raises:
            ValueError: Widths no stock config of the family can hold, with the legal values; ``NotImplementedError``
                for a family without a stock export (the default).
        """
        raise NotImplementedError(f"no stock export for family {self.family!r}")

    def export_biases(self, config: Any, names: list[str]) -> None:
        """Set the flags under which the stock class has the biases ``names`` that aeflib added (FLAP).

        Args:
            config: The export config (a copy), changed in place.
            names: Full bias names from ``model.aef_added_biases``, e.g. ``"model.layers.5.mlp.down_proj.bias"``.

        Raises:
            ValueError: A bias no stock config flag of the family creates (the default: none), naming it.
        """
        raise ValueError(f"a stock {self.family} config has no flag for the biases aeflib added ({names[0]!r} ...)")

    def __init__(self, gqa_mode: str = "query-heads") -> None:
        if gqa_mode not in GQA_MODES:
            raise ValueError(f"unknown gqa_mode {gqa_mode!r}; choose one of {sorted(GQA_MODES)}")
        self.gqa_mode = gqa_mode

    # ---- where things are -------------------------------------------------------------------------------------
    @abc.abstractmethod
    def decoder_layers(self, model: nn.Module) -> nn.ModuleList:
        """The decoder layers, in order (``model.model.layers`` for LLaMA, ``model.transformer.h`` for Bloom)."""

    @abc.abstractmethod
    def untouched_layer_params(self, model: nn.Module, layer: int) -> tuple[str, ...]:
        """Parameter names inside decoder layer ``layer`` that pruning leaves as they are (norms, o biases)."""

    # ---- structure ----------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def widths(self, model: nn.Module, layer: int) -> LayerWidths:
        """Read the widths layer ``layer`` runs with from its weight shapes (and head_dim from the config)."""

    @abc.abstractmethod
    def group_sets(self, model: nn.Module, layer: int) -> list[GroupSet]:
        """The group sets of layer ``layer``, one per kind (heads then channels for the built-in families)."""

    @abc.abstractmethod
    def after_cut(self, model: nn.Module, layer: int, kept: dict[str, list[int]]) -> None:
        """After weights were sliced: update the attributes the forward pass reads (kv-group ratio, head count).

        Args:
            model: The model whose layer ``layer`` was just cut.
            layer: Decoder layer, 0-based.
            kept: ``{kind: indices kept, of the groups the layer had before the cut}`` for each kind cut.
        """

    @abc.abstractmethod
    def attribute_widths(self, model: nn.Module, layer: int) -> dict[str, tuple[int, int]]:
        """``{attribute: (value the module holds, value implied by the weights)}`` for the consistency check."""

    def install_runtime(self, model: nn.Module) -> None:  # noqa: B027 - optional hook, empty by default
        """Install forward hooks a pruned model of this family needs (Bloom: per-layer ALiBi). Idempotent."""

    # ---- shared logic -----------------------------------------------------------------------------------------
    def n_layers(self, model: nn.Module) -> int:
        """Number of decoder layers."""
        return len(self.decoder_layers(model))

    def default_layer_range(self, model: nn.Module) -> tuple[int, int]:
        """Layers ``[start, stop)`` pruned by default: LLM-Pruner's 4..n-2 (skip the first 4 and last 2).

        Source: [LLM-Pruner code] ``block_attention_layer_start=4, end=30`` for 32-layer LLaMA-7B. Models with
        fewer than 8 layers (tiny test models) skip only the first and the last layer.
        """
        n = self.n_layers(model)
        return (4, n - 2) if n >= 8 else (1, n - 1)

    def all_group_sets(self, model: nn.Module, layers: range | list[int] | None = None) -> list[GroupSet]:
        """Group sets of the given layers (default: :meth:`default_layer_range`), in :meth:`group_sets` order."""
        if layers is None:
            layers = range(*self.default_layer_range(model))
        n = self.n_layers(model)
        out: list[GroupSet] = []
        for i in layers:
            if not 0 <= i < n:
                raise ValueError(f"layer {i} is outside 0..{n - 1} for this {n}-layer model")
            out.extend(self.group_sets(model, i))
        return out

    def all_widths(self, model: nn.Module) -> list[LayerWidths]:
        """:meth:`widths` of every layer."""
        return [self.widths(model, i) for i in range(self.n_layers(model))]

    def check(self, model: nn.Module) -> None:
        """Compare every width attribute with the weight shapes, and check GQA divisibility, in all layers.

        Raises:
            StructureError: Listing every ``layer.attribute: holds X, weights imply Y`` mismatch (known failures 5-7).
        """
        problems = []
        for i in range(self.n_layers(model)):
            w = self.widths(model, i)
            if w.n_kv_heads < 1 or w.n_heads % w.n_kv_heads:
                problems.append(f"layer {i}: {w.n_heads} query heads not divisible by {w.n_kv_heads} kv heads")
            for attr, (held, implied) in self.attribute_widths(model, i).items():
                if held != implied:
                    problems.append(f"layer {i}.{attr}: holds {held}, weights imply {implied}")
        if problems:
            raise StructureError("structure check failed:\n  " + "\n  ".join(problems))

    def check_coverage(self, model: nn.Module) -> None:
        """Every parameter of every decoder layer is either cut by a group slice or explicitly untouched.

        Raises:
            StructureError: Naming the uncovered parameters (known failure 9).
        """
        for i, layer in enumerate(self.decoder_layers(model)):
            untouched = set(self.untouched_layer_params(model, i))
            covered = {s.param for gs in self.group_sets(model, i) for s in gs.slices}
            names = {name for name, _ in layer.named_parameters()}
            missing = sorted(names - covered - untouched)
            if missing:
                raise StructureError(
                    f"layer {i}: parameters {missing} are neither pruned by a {self.family} rule nor listed as "
                    "untouched; add them to the adapter"
                )


class Loaded(NamedTuple):
    """What ``aeflib.models.load`` and ``aeflib.io.load`` return; unpacks as ``model, tokenizer, adapter``."""

    model: nn.Module
    tokenizer: Any
    adapter: StructureAdapter


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """Accept ``torch.float32`` or one of the names in :data:`DTYPES`.

    Raises:
        ValueError: For any other value, listing the names.
    """
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise ValueError(f"unsupported dtype {dtype!r}; choose one of {sorted(DTYPES)}")


def adapter_class(model_type: Any) -> type[StructureAdapter]:
    """The adapter class registered for ``model_type``.

    Raises:
        ValueError: For a model type no adapter serves, listing those that are served.
    """
    if model_type not in ADAPTERS:
        raise ValueError(f"no structure adapter for model_type {model_type!r}; supported: {sorted(ADAPTERS)}")
    return ADAPTERS[model_type]


def adapter_for(model: nn.Module, gqa_mode: str = "query-heads") -> StructureAdapter:
    """The structure adapter for ``model.config.model_type``, with its runtime hooks installed on ``model``.

    Raises:
        ValueError: For a model type no adapter serves (listing those that are), or an unknown ``gqa_mode``.
    """
    adapter = adapter_class(getattr(model.config, "model_type", None))(gqa_mode=gqa_mode)
    adapter.install_runtime(model)
    return adapter
