"""The published numbers aeflib compares with, and this run's numbers in the same shape.

``data/paper_results.csv`` holds every number of docs/paper.md §5 (LLM-Pruner's LLaMA-7B and Vicuna-7B tables at
20 % of parameters removed, the FLAP / Wanda-sp anchors, Bloom-7b1 dense harness scores) and the AEF abstract's
claimed gains, one row per number::

    model, setting, method, metric, task, value, source

* ``setting`` — ``dense``, ``no-tune`` (pruned, no recovery), ``lora`` (pruned + LoRA recovery), ``claim``;
* ``method`` — aeflib criterion names (``random``, ``l2``, ``vector``, ``element1``, ``element2``, ``aef``) or
  ``dense`` / another tool's name;
* ``metric`` — ``perplexity``, ``acc``, ``acc_norm``, ``mean`` (plain mean of the seven accuracies, task
  ``average``), ``mean_gain`` (points over the best baseline);
* ``task`` — lm-eval-harness task names (``boolq`` ...) or the perplexity corpus (``wikitext2``, ``ptb``).

:func:`run_results` turns a run's ``metrics.json`` into rows with the same columns so that notebook 07 can set them
side by side (:func:`side_by_side`). Perplexities of the paper use the ``llm-pruner-128`` protocol; a run's rows
carry the protocol it measured with.

Source: docs/paper.md §1 and §5 (regenerate the CSV with ``data/prepare_paper_results.py``).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from aeflib.data import data_dir

__all__ = ["COLUMNS", "PAPER_PROTOCOLS", "PAPER_TASKS", "load_paper_results", "paper_results_path", "paper_table",
           "relative_to_dense", "run_results", "seven_tasks", "side_by_side"]

COLUMNS = ("model", "setting", "method", "metric", "task", "value", "source")

#: the measurement protocol behind each published metric (docs/paper.md §4)
PAPER_PROTOCOLS = {
    "perplexity": "llm-pruner-128: texts joined with '\\n\\n', non-overlapping 128-token windows",
    "acc": "lm-eval-harness, 0-shot, acc",
    "acc_norm": "lm-eval-harness, 0-shot, acc_norm",
    "mean": "plain mean of the seven 0-shot accuracies (x100)",
    "mean_gain": "claimed gain of the average accuracy over the best baseline, points",
}

_SETTING_ORDER = {"dense": 0, "no-tune": 1, "lora": 2, "claim": 3, "claim-50%": 4}


def paper_results_path() -> Path:
    """Path of ``paper_results.csv`` in the shipped data folder (see :func:`aeflib.data.data_dir`)."""
    return data_dir() / "paper_results.csv"


def load_paper_results(path: str | os.PathLike | None = None, *, model: str | None = None,
                       setting: str | None = None):
    """Read the published numbers as a DataFrame.

    Args:
        path: A CSV with :data:`COLUMNS` (default: :func:`paper_results_path`).
        model: Keep only this model's rows (``"llama-7b"``, ``"vicuna-7b"``, ``"bloom-7b1"``, ``"baichuan-7b"``).
        setting: Keep only this setting's rows (``"dense"``, ``"no-tune"``, ``"lora"``, ``"claim"``...).

    Returns:
        ``pandas.DataFrame`` with :data:`COLUMNS` (``value`` as float) plus ``protocol``.

    Raises:
        FileNotFoundError: If the CSV does not exist.
        ValueError: If its header is not :data:`COLUMNS`, or ``model`` / ``setting`` selects no rows (the message
            lists the values present).

    Source: docs/paper.md §5.
    """
    import pandas as pd

    path = Path(path) if path is not None else paper_results_path()
    if not path.is_file():
        raise FileNotFoundError(f"published results file {path} does not exist; regenerate it with "
                                "`python data/prepare_paper_results.py`")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise ValueError(f"{path} has columns {reader.fieldnames}; expected {list(COLUMNS)}")
        rows = list(reader)
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    frame["value"] = frame["value"].astype(float)
    frame["protocol"] = frame["metric"].map(PAPER_PROTOCOLS).fillna("")
    for column, wanted in (("model", model), ("setting", setting)):
        if wanted is None:
            continue
        present = sorted(frame[column].unique())
        frame = frame[frame[column] == wanted].reset_index(drop=True)
        if frame.empty:
            raise ValueError(f"no published rows for {column} {wanted!r}; {column}s with rows: {present}")
    return frame


_TABLE_METRICS = ("perplexity", "acc", "acc_norm", "mean")
_TASK_ORDER = ("wikitext2", "ptb", "wikipedia", "boolq", "piqa", "hellaswag", "winogrande", "arc_easy",
               "arc_challenge", "openbookqa", "aef_continuation", "aef_cloze", "aef_qa", "average")


def paper_table(frame):
    """The paper's layout: one row per (model, setting, method), one column per task and metric.

    Args:
        frame: Rows of :func:`load_paper_results` or :func:`run_results`.

    Returns:
        ``pandas.DataFrame``; columns ``"<task> (<metric>)"`` in the paper's order (perplexities, the seven tasks,
        the average), only perplexity and accuracy metrics.
    """
    part = frame[frame["metric"].isin(_TABLE_METRICS)]
    part = part.assign(column=part["task"] + " (" + part["metric"] + ")",
                       _setting=part["setting"].map(_SETTING_ORDER).fillna(9))
    table = part.pivot_table(index=["model", "_setting", "setting", "method"], columns="column", values="value",
                             aggfunc="first", sort=False)
    order = {t: i for i, t in enumerate(_TASK_ORDER)}
    columns = sorted(table.columns, key=lambda c: (order.get(c.split(" (")[0], len(order)), c))
    table = table[columns].sort_index(level=["model", "_setting"], sort_remaining=False)
    return table.droplevel("_setting")


def relative_to_dense(table):
    """Each pruned / recovered number relative to the dense number of the same model, metric and task.

    Args:
        table: Long rows with ``model, setting, method, metric, task, value`` (e.g. :func:`side_by_side`).

    Returns:
        ``pandas.DataFrame`` with ``model, setting, method, metric, task, value, dense, change_percent`` where
        ``change_percent = 100 * (value / dense - 1)``; rows without a dense counterpart are left out.
    """
    import pandas as pd

    dense = table[table["setting"] == "dense"][["model", "metric", "task", "value"]].rename(columns={"value": "dense"})
    rest = table[~table["setting"].isin(("dense", "claim", "claim-50%"))]
    merged = pd.merge(rest, dense.drop_duplicates(["model", "metric", "task"]), on=["model", "metric", "task"])
    merged = merged.assign(change_percent=(100 * (merged["value"] / merged["dense"] - 1)).round(2))
    return merged[["model", "setting", "method", "metric", "task", "value", "dense", "change_percent"]]


def run_results(metrics: dict[str, Any], source: str = "this run"):
    """This run's evaluation numbers in the columns of :func:`load_paper_results`.

    Args:
        metrics: The parsed ``metrics.json`` of a run (its ``"evaluation"`` section holds ``"rows"``, as written
            by notebook 06 through :func:`aeflib.analysis.evaluation_rows`).
        source: Text for the ``source`` column, e.g. the path of the metrics file.

    Returns:
        ``pandas.DataFrame`` with :data:`COLUMNS` plus ``protocol``; empty when the run has no evaluation yet.

    Source: [ours].
    """
    import pandas as pd

    rows = metrics.get("evaluation", {}).get("rows", [])
    frame = pd.DataFrame([{**{k: r.get(k) for k in COLUMNS if k != "source"}, "source": source,
                           "protocol": r.get("protocol", "")} for r in rows],
                         columns=[*COLUMNS, "protocol"])
    frame["value"] = frame["value"].astype(float)
    return frame


def side_by_side(run, paper, *, settings: tuple[str, ...] = ("dense", "no-tune", "lora"),
                 metrics: tuple[str, ...] = ("perplexity", "acc", "acc_norm", "mean")):
    """One long table: each of this run's numbers beside the published ones of the same setting and metric.

    Args:
        run: :func:`run_results` rows.
        paper: :func:`load_paper_results` rows (usually one model).
        settings: Which settings to show, in this order.
        metrics: Which metrics to show (default: those of the paper's tables; efficiency rows are left out).

    Returns:
        ``pandas.DataFrame`` sorted by setting and metric, this run before the published rows, then by task, with
        columns ``setting, metric, task, model, method, value, source, protocol`` — every number with its source.

    Source: [ours].
    """
    import pandas as pd

    both = pd.concat([run.assign(_order=0), paper.assign(_order=1)], ignore_index=True)
    both = both[both["setting"].isin(settings) & both["metric"].isin(metrics)]
    both = both.assign(_setting=both["setting"].map(_SETTING_ORDER))
    both = both.sort_values(["_setting", "metric", "_order", "task", "method"], kind="stable")
    columns = ["setting", "metric", "task", "model", "method", "value", "source", "protocol"]
    return both[columns].reset_index(drop=True)


#: The paper's seven zero-shot tasks in its column order (lm-eval task names).
PAPER_TASKS = ("boolq", "piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")


def seven_tasks(run, paper, *, settings: tuple[str, ...] = ("dense", "no-tune", "lora")):
    """The paper's seven zero-shot tasks and their mean: this run's accuracy beside every published one.

    Each value keeps its metric (acc for BoolQ, PIQA, WinoGrande, ARC-e; acc_norm for HellaSwag, ARC-c, OBQA; the
    mean of the seven), so a run scored with ``paper7`` or ``paper7-offline`` lines up with LLM-Pruner's table
    column for column. A run scored on a subset says so in its ``protocol`` column (items, split, subset seed). This
    run's ``average`` is shown only for a setting that scored all seven tasks (the mean of other tasks, e.g. the
    ``local`` set, is not the paper's average).

    Args:
        run: :func:`run_results` rows.
        paper: :func:`load_paper_results` rows (usually one model).
        settings: Settings to show, in this order.

    Returns:
        ``pandas.DataFrame``: one row per ``(task, metric)`` (the seven in the paper's order, then ``average``),
        one column per ``(setting, model, method)`` — this run's first in each setting — and, last, ``protocol``:
        how this run measured that task (empty when it did not score it). Empty when neither scored a task.

    Source: [ours].
    """
    import pandas as pd

    tasks = (*PAPER_TASKS, "average")
    if len(run):  # this run's mean stands beside the paper's only when it averages the same seven tasks
        scored = run[run["task"].isin(PAPER_TASKS)].groupby(["setting", "method"])["task"].nunique()
        complete = {key for key, n in scored.items() if n == len(PAPER_TASKS)}
        keep = [r.task != "average" or (r.setting, r.method) in complete for r in run.itertuples()]
        run = run[keep]
    both = side_by_side(run, paper, settings=settings, metrics=("acc", "acc_norm", "mean"))
    both = both[both["task"].isin(tasks)]
    if both.empty:
        return pd.DataFrame()
    mine = set(run["model"]) if len(run) else set()
    both = both.assign(_setting=both["setting"].map(_SETTING_ORDER), _mine=~both["model"].isin(mine))
    table = both.pivot_table(index=["task", "metric"], columns=["_setting", "_mine", "setting", "model", "method"],
                             values="value", aggfunc="first", sort=True)
    table.columns = table.columns.droplevel(["_setting", "_mine"])
    order = {t: i for i, t in enumerate(tasks)}
    table = table.iloc[sorted(range(len(table)), key=lambda i: order[table.index[i][0]])]
    protocol = run[run["task"].isin(tasks)].drop_duplicates(["task", "metric"]).set_index(["task", "metric"])
    table[("protocol", "", "")] = [protocol["protocol"].get(key, "") for key in table.index]
    return table
