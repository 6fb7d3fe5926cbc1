"""``Scores``: per-group importance values, the currency passed from estimation to fusion to planning.

A :class:`Scores` holds, for each *criterion* (``"vector"``, ``"element1"``, ``"aef"`` ...), one fp32 tensor
``[n_groups]`` per group set, keyed ``"<layer>.<kind>"`` (``"5.head"``, ``"5.channel"``) as
:attr:`aeflib.models.GroupSet.key` spells it. Larger means more important. It saves to one safetensors file
(tensor names ``"<criterion>/<layer>.<kind>"``) with its metadata as a JSON string in the file header.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from aeflib.files import atomic_file

__all__ = ["Scores"]


@dataclass
class Scores:
    """Importance per criterion and group set; reads like a mapping from criterion name to per-set scores.

    ``scores["l2"]`` (``{"<layer>.<kind>": fp32 tensor [n_groups]}``), ``"l2" in scores``, ``len(scores)``,
    ``list(scores)`` / ``scores.keys()`` / :attr:`criteria` (criterion names, insertion order) and ``scores.items()``
    all speak of criteria, as a ``Mapping`` does. The group-set keys are :attr:`group_keys`. (``values`` stays the
    underlying dict attribute, not the ``Mapping`` method: every saved-file reader and writer uses it.)

    Attributes:
        values: ``{criterion: {"<layer>.<kind>": fp32 tensor [n_groups]}}``.
        meta: JSON-able facts about how they were computed (model checksum, calibration, seed, timings...).
    """

    values: dict[str, dict[str, torch.Tensor]]
    meta: dict = field(default_factory=dict)

    @property
    def criteria(self) -> list[str]:
        """Criterion names present, in insertion order."""
        return list(self.values)

    @property
    def group_keys(self) -> list[str]:
        """Group-set keys (``"5.head"``, ``"5.channel"``), ordered by layer then heads before channels."""
        first = next(iter(self.values.values()), {})
        return sorted(first, key=_key_order)

    def keys(self) -> list[str]:
        """Criterion names, as ``Mapping.keys`` (the same list as :attr:`criteria`)."""
        return self.criteria

    def items(self) -> list[tuple[str, dict[str, torch.Tensor]]]:
        """``(criterion, {"<layer>.<kind>": tensor [n_groups]})`` pairs, as ``Mapping.items``."""
        return list(self.values.items())

    def __iter__(self) -> Iterator[str]:
        """Iterate over criterion names."""
        return iter(self.values)

    def __len__(self) -> int:
        """Number of criteria."""
        return len(self.values)

    def __contains__(self, criterion: object) -> bool:
        """``"l2" in scores``: whether scores for that criterion are present."""
        return criterion in self.values

    def __getitem__(self, criterion: str) -> dict[str, torch.Tensor]:
        """Per-set scores of one criterion.

        Raises:
            KeyError: If the criterion is absent (lists the present ones).
        """
        if criterion not in self.values:
            raise KeyError(f"no scores for criterion {criterion!r}; present: {self.criteria}")
        return self.values[criterion]

    def with_criterion(self, name: str, per_set: dict[str, torch.Tensor], **meta) -> Scores:
        """A copy with one more criterion (e.g. a fused one) added; ``meta`` goes under ``meta[name]``."""
        values = {**self.values, name: {k: v.detach().float().cpu() for k, v in per_set.items()}}
        return Scores(values, {**self.meta, **({name: meta} if meta else {})})

    def save(self, path: str | os.PathLike) -> Path:
        """Write one safetensors file atomically (temp file + rename). Returns the path."""
        path = Path(path)
        tensors = {f"{c}/{k}": v.contiguous() for c, per in self.values.items() for k, v in per.items()}
        with atomic_file(path) as tmp:
            save_file(tensors, str(tmp), metadata={"aeflib.scores.meta": json.dumps(self.meta)})
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Scores:
        """Read a file written by :meth:`save`.

        Raises:
            FileNotFoundError: If ``path`` does not exist.
            ValueError: If it is not an aeflib scores file, or it is corrupt or truncated (the message names the
                file; the reader's own error is attached as the cause).
        """
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"scores file {path} does not exist")
        try:
            with safe_open(str(path), "pt") as f:
                header = f.metadata() or {}
            tensors = load_file(str(path)) if "aeflib.scores.meta" in header else {}
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            raise ValueError(f"scores file {path} cannot be read ({err}); it is corrupt or truncated: compute the "
                             "scores again (aeflib.importance.estimate) or restore the file") from err
        if "aeflib.scores.meta" not in header:
            raise ValueError(f"{path} is not an aeflib scores file (no 'aeflib.scores.meta' header)")
        try:
            meta = json.loads(header["aeflib.scores.meta"])
        except json.JSONDecodeError as err:
            raise ValueError(f"scores file {path}: its 'aeflib.scores.meta' header is not valid JSON ({err})") \
                from err
        if not isinstance(meta, dict):
            raise ValueError(f"scores file {path}: its 'aeflib.scores.meta' header holds a JSON "
                             f"{type(meta).__name__}, expected an object")
        values: dict[str, dict[str, torch.Tensor]] = {}
        for name, tensor in tensors.items():
            criterion, _, key = name.partition("/")
            if not criterion or _KEY.fullmatch(key) is None or tensor.ndim != 1 or not tensor.is_floating_point():
                raise ValueError(f"scores file {path}: tensor {name!r} {tensor.dtype} {list(tensor.shape)} is not "
                                 "'<criterion>/<layer>.<head|channel>', a float tensor [n_groups]")
            values.setdefault(criterion, {})[key] = tensor
        return cls(values, meta)


_KEY = re.compile(r"\d+\.(head|channel)")


def _key_order(key: str) -> tuple[int, int]:
    layer, kind = key.split(".")
    return int(layer), 0 if kind == "head" else 1
