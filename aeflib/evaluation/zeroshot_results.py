"""Zero-shot results that name their metric per task, and the table writer that insists on it.

``TaskScore`` (one task), ``ZeroShotResult`` (one model on a task set, with harness version, limit, seed and model
checksum) and ``write_table(results, path)`` (.csv / .md / .json). A task without its metric, or one task reported
under acc in one row and acc_norm in another, is refused (known failure 15: HellaSwag is 53 under acc and 68 under
acc_norm for the same model).

Source: [ours] after known failure 15.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["TaskScore", "ZeroShotResult", "check_metric", "item_values", "task_of", "write_table"]


@dataclass(frozen=True)
class TaskScore:
    """One task's score under its named metric, with every metric lm-eval reported for it."""

    task: str
    metric: str  # the reported (and averaged) metric, e.g. "acc_norm"
    value: float  # metrics[metric]
    stderr: float | None  # lm-eval's standard error of ``value``
    n_items: int  # items scored (after ``limit``)
    n_available: int  # items the task has
    metrics: dict[str, float] = field(default_factory=dict)  # every metric, e.g. {"acc": .., "acc_norm": ..}
    chance: float | None = None  # CHANCE[task] where known
    version: str | None = None  # the task's config version
    split: str | None = None  # the split scored, e.g. "validation", "test"
    source: str | None = None  # where its documents came from, e.g. "hub allenai/ai2_arc ARC-Easy"
    item_ids: list[int] | None = None  # ids (indices in the split) of the items scored; None = all of them
    items_hash: str | None = None  # short sha256 of the scored ids (olmo_tasks.item_hash), to compare subsets


@dataclass
class ZeroShotResult:
    """Zero-shot scores of one model on a task set, with how they were measured.

    ``average`` is the plain mean of the per-task values under their named metrics (the paper's "Average").
    """

    task_set: str  # "paper7", "paper7-offline", "local" or "custom"
    scores: dict[str, TaskScore]
    harness: str  # "lm-eval 0.4.13"
    limit: int | float | None
    seed: int
    batch_size: int
    checksum: str  # aeflib.models.checksum(model)
    dtype: str
    wall_s: float
    samples: dict[str, list[dict[str, Any]]] | None = field(default=None, repr=False)  # log_samples=True only
    subset_seed: int | None = None  # seed of the item draw under ``limit`` (None: the first ``limit`` items)

    @property
    def average(self) -> float:
        """Plain mean of the task values."""
        return sum(s.value for s in self.scores.values()) / len(self.scores)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict (samples left out).

        Raises:
            ValueError: If a task has no metric, or its metric is not among the metrics recorded for it.
        """
        for task, s in self.scores.items():
            check_metric(task, s.metric, s.metrics, s.value)
        return {
            "task_set": self.task_set,
            "harness": self.harness,
            "limit": self.limit,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "checksum": self.checksum,
            "dtype": self.dtype,
            "wall_s": self.wall_s,
            "subset_seed": self.subset_seed,
            "average": self.average,
            "tasks": {task: dataclasses.asdict(s) for task, s in self.scores.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ZeroShotResult:
        """Inverse of :meth:`to_dict`.

        Raises:
            ValueError: If a task entry lacks its ``metric`` (the message names the task).
        """
        scores = {}
        for task, s in d["tasks"].items():
            check_metric(task, s.get("metric"), s.get("metrics", {}), s.get("value"))
            scores[task] = TaskScore(**{k: s.get(k) for k in (f.name for f in dataclasses.fields(TaskScore))})
        keys = ("task_set", "harness", "limit", "seed", "batch_size", "checksum", "dtype", "wall_s", "subset_seed")
        return cls(scores=scores, **{k: d.get(k) for k in keys})

    def item_table(self) -> dict[str, dict[str, Any]]:
        """lm-eval's per-sample output reduced to what paired intervals need, compact enough to store.

        Returns:
            ``{task: {"metric": m, "doc_ids": [..], "correct": [0/1 ..], "loglikelihoods": [[..] per item]}}``:
            ``correct`` is lm-eval's own per-item value of the task's reported metric (``acc`` = argmax of the
            choices' log-likelihoods, ``acc_norm`` = argmax of the length-normalised ones), so its mean is the task
            score; ``doc_ids`` are the documents' ids in the task's split, so items pair across models.

        Raises:
            ValueError: If the result has no samples (run ``zeroshot(..., log_samples=True)``) or a sample lacks the
                task's metric.
        """
        if self.samples is None:
            raise ValueError("this zero-shot result has no per-item samples; run zeroshot(..., log_samples=True)")
        table = {}
        for task, score in self.scores.items():
            recs = sorted(self.samples[task], key=lambda r: r["doc_id"])
            missing = [r["doc_id"] for r in recs if score.metric not in r.get("metrics", {})]
            if missing:
                raise ValueError(f"task {task!r}: samples {missing[:3]} carry no per-item {score.metric!r}")
            table[task] = {
                "metric": score.metric,
                "doc_ids": [r["doc_id"] for r in recs],
                "correct": [r["metrics"][score.metric] for r in recs],
                "loglikelihoods": [[round(x, 4) for x in r["loglikelihoods"]] for r in recs],
            }
        return table

    def __str__(self) -> str:
        parts = ", ".join(f"{t} {s.metric} {s.value:.4f} (n={s.n_items})" for t, s in self.scores.items())
        return (
            f"zero-shot {self.task_set}: {parts}; average {self.average:.4f} "
            f"[{self.harness}, limit={self.limit}, seed={self.seed}, model {self.checksum}]"
        )


def item_values(table: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """Flatten :meth:`ZeroShotResult.item_table` to ``{"task/doc_id": correct}`` for ``paired_bootstrap``.

    Pass ``strata=task_of`` to the bootstrap so that the statistic is the plain average of the task means.
    """
    return {f"{task}/{d}": float(c) for task, t in table.items() for d, c in zip(t["doc_ids"], t["correct"],
                                                                                 strict=True)}


def task_of(item_id: str) -> str:
    """The task of an ``item_values`` id (``"aef_qa/17"`` → ``"aef_qa"``)."""
    return item_id.rsplit("/", 1)[0]


def check_metric(task: str, metric: str | None, metrics: Mapping[str, float], value: float | None) -> None:
    """Raise ``ValueError`` naming ``task`` unless it has a metric that was recorded with a value."""
    if not metric:
        raise ValueError(f"task {task!r} has no metric: every zero-shot number must name its metric (acc, acc_norm)")
    if metric not in metrics or value is None:
        raise ValueError(f"task {task!r}: metric {metric!r} was not recorded; recorded metrics: {sorted(metrics)}")


def _cell(score: Mapping[str, Any]) -> str:
    """Accuracies as percentages with two decimals (as the paper prints them); other metrics as they are."""
    value = score["value"]
    return f"{value * 100:.2f}" if score["metric"].startswith("acc") else f"{value:.4g}"


def write_table(
    results: ZeroShotResult | Mapping[str, Any] | Sequence[ZeroShotResult | Mapping[str, Any]]
    | Mapping[str, ZeroShotResult | Mapping[str, Any]],
    path: str | os.PathLike,
) -> Path:
    """Write zero-shot results as a table, one row per result, headers ``task (metric)``.

    CSV and Markdown give accuracies (and their plain average) in percent with two decimals, as the paper does, the
    items and split scored per task (``/``-joined in column order), the limit and the seed of the item draw.

    Args:
        results: One result, a list of them, or ``{row label: result}`` (e.g. ``{"dense": r0, "AEF 20%": r1}``);
            a result may be a ``ZeroShotResult`` or its ``to_dict()``.
        path: ``.csv``, ``.md`` (Markdown) or ``.json`` (full ``to_dict`` per row).

    Returns:
        The path written.

    Raises:
        ValueError: If a task has no metric (the message names it), a task appears under different metrics in two
            rows (acc vs acc_norm, known failure 15), or the suffix is not one of .csv/.md/.json.
    """
    path = Path(path)
    if path.suffix not in (".csv", ".md", ".json"):
        raise ValueError(f"table path {path} must end in .csv, .md or .json")
    if isinstance(results, ZeroShotResult) or (isinstance(results, Mapping) and "tasks" in results):
        results = [results]
    labelled = list(results.items()) if isinstance(results, Mapping) else [(None, r) for r in results]
    rows = []
    for i, (label, r) in enumerate(labelled):
        res = r if isinstance(r, ZeroShotResult) else ZeroShotResult.from_dict(r)
        rows.append((label or res.checksum or f"row {i}", res.to_dict()))  # to_dict checks the metrics
    columns: dict[str, str] = {}
    for label, d in rows:
        for task, s in d["tasks"].items():
            if columns.setdefault(task, s["metric"]) != s["metric"]:
                raise ValueError(
                    f"task {task!r} is reported as {columns[task]!r} in one row and {s['metric']!r} in row {label!r}"
                )
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".json":
        path.write_text(json.dumps({label: d for label, d in rows}, indent=2), encoding="utf-8")
        return path
    header = ["model", *(f"{t} ({m})" for t, m in columns.items()), "average", "n items", "split", "harness", "limit",
              "subset seed", "seed", "checksum"]  # fmt: skip
    body = []
    for label, d in rows:
        cells = [_cell(d["tasks"][t]) if t in d["tasks"] else "" for t in columns]
        n = "/".join(str(d["tasks"][t]["n_items"]) for t in columns if t in d["tasks"])
        splits = "/".join(str(d["tasks"][t].get("split") or "?") for t in columns if t in d["tasks"])
        body.append([label, *cells, f"{d['average'] * 100:.2f}", n, splits, d["harness"], str(d["limit"]),
                     str(d.get("subset_seed")), str(d["seed"]), d["checksum"]])  # fmt: skip
    if path.suffix == ".csv":
        buf = io.StringIO()
        csv.writer(buf).writerows([header, *body])
        path.write_text(buf.getvalue(), encoding="utf-8")
    else:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
