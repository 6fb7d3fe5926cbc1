"""Zero-shot evaluation on lm-eval-harness: local tasks, provenance, the offline fail-fast and result tables."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import prune_nonuniform

import aeflib.models
from aeflib.data import load_corpus
from aeflib.evaluation.zeroshot import (
    HUB_DATASETS,
    TASK_SETS,
    ZeroShotResult,
    ZeroShotUnavailableError,
    local_task_configs,
    tasks_dir,
    write_table,
    zeroshot,
)

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("one_thread")  # 2 shared cores: OpenMP barriers thrash under load


def _plain_loglikelihood(model, tokenizer, context: str, continuation: str) -> float:
    """log p(continuation | context) from one forward pass, tokenized as lm-eval's HFLM does (whole, then split)."""
    whole = tokenizer(context + continuation)["input_ids"]
    n_ctx = len(tokenizer(context)["input_ids"])
    ids = torch.tensor([whole])  # [1, T]
    with torch.no_grad():
        logp = F.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)  # [T, vocab]
    targets = ids[0, n_ctx:]  # [T - n_ctx]
    return logp[n_ctx - 1 : -1].gather(1, targets[:, None]).sum().item()


@pytest.mark.parametrize("name", ["tiny-gqa", "tiny-bloom"])
def test_zeroshot_loglikelihoods_equal_plain_forward_on_nonuniform_pruned_model(name, tmp_path, monkeypatch):
    loaded = prune_nonuniform(aeflib.models.load(name))
    model, tokenizer, adapter = loaded
    assert len({w.n_heads for w in adapter.all_widths(model)}) > 1  # widths differ between layers
    monkeypatch.chdir(tmp_path)  # data paths must not depend on the working directory
    model.train()
    result = zeroshot(model, tokenizer, tasks=["aef_qa"], limit=1, batch_size=3, seed=7, log_samples=True,
                      bootstrap_iters=0)
    assert model.training  # restored after lm-eval switched it to eval
    model.eval()
    item = result.samples["aef_qa"][0]
    assert len(item["arguments"]) == 4
    for (context, continuation), ll in zip(item["arguments"], item["loglikelihoods"], strict=True):
        assert ll == pytest.approx(_plain_loglikelihood(model, tokenizer, context, continuation), rel=1e-4, abs=1e-3)
    # provenance of every result
    score = result.scores["aef_qa"]
    assert (score.metric, score.n_items, score.n_available) == ("acc_norm", 1, 117)
    assert result.harness == "lm-eval 0.4.13" and result.limit == 1 and result.seed == 7
    assert result.checksum == aeflib.models.checksum(model)


def test_zeroshot_local_set_scores_every_task_with_its_metric(tokenizer, tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)  # outside any git checkout, as a notebook run folder under /tmp
    model = aeflib.models.load("tiny-llama").model
    result = zeroshot(model, tokenizer, tasks="local", limit=1, batch_size=8, bootstrap_iters=0)
    assert "not a git repository" not in capfd.readouterr().err  # lm-eval's git lookup stays quiet
    assert result.task_set == "local"
    assert {t: s.metric for t, s in result.scores.items()} == TASK_SETS["local"]
    assert set(result.scores["aef_cloze"].metrics) == {"acc", "perplexity"}
    assert set(result.scores["aef_continuation"].metrics) == {"acc", "acc_norm"}
    assert all(s.n_items == 1 for s in result.scores.values())
    assert result.average == pytest.approx(sum(s.value for s in result.scores.values()) / 3)
    assert json.loads(json.dumps(result.to_dict()))["tasks"]["aef_qa"]["metric"] == "acc_norm"


def test_zeroshot_paper7_fails_fast_offline_naming_datasets(tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_DATASETS_CACHE", raising=False)
    model = aeflib.models.load("tiny-llama").model
    start = time.perf_counter()
    with pytest.raises(ZeroShotUnavailableError, match=r"hellaswag \(Rowan/hellaswag\).*tasks='local'"):
        zeroshot(model, tokenizer, tasks="paper7")
    assert time.perf_counter() - start < 5


def test_hub_datasets_match_installed_lm_eval_task_yamls():
    from lm_eval.tasks._yaml_loader import load_yaml

    root = Path(importlib.util.find_spec("lm_eval").origin).parent / "tasks"
    files = {"boolq": "super_glue/boolq/default.yaml", "piqa": "piqa/piqa.yaml",
             "hellaswag": "hellaswag/hellaswag.yaml", "winogrande": "winogrande/default.yaml",
             "arc_easy": "arc/arc_easy.yaml",
             "arc_challenge": "arc/arc_challenge.yaml", "openbookqa": "openbookqa/openbookqa.yaml"}
    assert set(files) == set(HUB_DATASETS) == set(TASK_SETS["paper7"])
    for task, rel in files.items():
        cfg = load_yaml(root / rel, resolve_func=False, recursive=True)
        assert cfg["task"] == task
        assert (cfg["dataset_path"], cfg.get("dataset_name")) == HUB_DATASETS[task]
        assert TASK_SETS["paper7"][task] in [m["metric"] for m in cfg["metric_list"]]


def test_paper7_metrics_are_the_papers():
    acc = {t for t, m in TASK_SETS["paper7"].items() if m == "acc"}
    assert acc == {"boolq", "piqa", "winogrande", "arc_easy"}
    assert {t for t, m in TASK_SETS["paper7"].items() if m == "acc_norm"} == {"hellaswag", "arc_challenge",
                                                                             "openbookqa"}


def test_zeroshot_rejects_unknown_task_set_and_tasks_without_metric(tokenizer):
    model = aeflib.models.load("tiny-llama").model
    with pytest.raises(ValueError, match=r"unknown task set 'paper8'.*\['local', 'paper7', 'paper7-offline'\]"):
        zeroshot(model, tokenizer, tasks="paper8")
    with pytest.raises(ValueError, match=r"\['lambada_openai'\] have no metric"):
        zeroshot(model, tokenizer, tasks=["aef_qa", "lambada_openai"])


def test_local_task_configs_use_absolute_existing_data_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    configs = local_task_configs()
    assert sorted(c["task"] for c in configs) == sorted(TASK_SETS["local"])
    for c in configs:
        (path,) = c["dataset_kwargs"]["data_files"].values()
        assert Path(path).is_absolute() and Path(path).is_file()


def test_local_tasks_regenerate_byte_for_byte_from_test_splits(tmp_path):
    spec = importlib.util.spec_from_file_location("prepare_tasks", ROOT / "data" / "prepare_tasks.py")
    prepare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prepare)
    counts = prepare.build(tmp_path)
    assert (tmp_path / "SHA256SUMS").read_text() == (tasks_dir() / "SHA256SUMS").read_text()
    assert prepare.check() == []
    assert all(n >= 100 for n in counts.values())
    held_out = {c: "\n".join(load_corpus(c, "train").documents + load_corpus(c, "valid").documents)
                for c in ("wikipedia", "lee-news")}
    test_text = "\n".join(load_corpus("wikipedia", "test").documents + load_corpus("lee-news", "test").documents)
    for line in (tmp_path / "aef_cloze.jsonl").read_text().splitlines()[:50]:
        snippet = json.loads(line)["context"][:80]
        assert snippet in test_text and not any(snippet in t for t in held_out.values())
    for line in (tmp_path / "aef_continuation.jsonl").read_text().splitlines():
        item = json.loads(line)
        assert len(item["choices"]) == 4 and len(set(item["choices"])) == 4 and 0 <= item["label"] < 4


def _result_dict(**task_overrides):
    task = {"task": "hellaswag", "metric": "acc_norm", "value": 0.5, "stderr": None, "n_items": 10,
            "n_available": 10042, "metrics": {"acc": 0.4, "acc_norm": 0.5}, "chance": 0.25, "version": "1.0"}
    task.update(task_overrides)
    return {"task_set": "custom", "harness": "lm-eval 0.4.13", "limit": 10, "seed": 1234, "batch_size": 8,
            "checksum": "abc", "dtype": "float32", "wall_s": 1.0, "tasks": {"hellaswag": task}}


def test_write_table_refuses_a_task_without_metric(tmp_path):
    with pytest.raises(ValueError, match="task 'hellaswag' has no metric"):
        write_table({"dense": _result_dict(metric=None)}, tmp_path / "t.csv")
    with pytest.raises(ValueError, match="task 'hellaswag': metric 'acc_norm' was not recorded"):
        write_table([_result_dict(metrics={"acc": 0.4})], tmp_path / "t.md")


def test_write_table_refuses_one_task_under_two_metrics(tmp_path):
    rows = {"dense": _result_dict(), "pruned": _result_dict(metric="acc", value=0.4)}
    with pytest.raises(ValueError, match="'hellaswag' is reported as 'acc_norm' in one row and 'acc'"):
        write_table(rows, tmp_path / "t.csv")


@pytest.mark.parametrize("suffix", [".csv", ".md", ".json"])
def test_write_table_names_the_metric_in_every_header(tmp_path, suffix):
    path = write_table({"dense": ZeroShotResult.from_dict(_result_dict())}, tmp_path / f"t{suffix}")
    text = path.read_text()
    if suffix == ".json":
        assert json.loads(text)["dense"]["tasks"]["hellaswag"]["metric"] == "acc_norm"
    else:
        assert "hellaswag (acc_norm)" in text and "50.00" in text and "lm-eval 0.4.13" in text


def test_zeroshot_leaves_a_tokenizer_without_pad_token_as_it_was(tokenizer):
    """lm-eval's HFLM sets ``pad_token`` on a tokenizer that has none (issue 28.3): it gets a copy instead."""
    import copy

    model = aeflib.models.load("tiny-llama").model
    tok = copy.deepcopy(tokenizer)
    tok.pad_token = None
    vocab = len(tok)
    zeroshot(model, tok, tasks=["aef_cloze"], limit=1, batch_size=2, bootstrap_iters=0)
    assert (tok.pad_token, tok.pad_token_id, len(tok), tok.padding_side) == (None, None, vocab, "right")


def test_zeroshot_names_task_item_and_lengths_of_a_continuation_longer_than_the_context(tokenizer):
    """A continuation that does not fit the model's context: one error, not lm-eval's bare AssertionError."""
    model = aeflib.models.load("tiny-llama").model
    model.config.max_position_embeddings = 3  # lm-eval reads the context length from the config
    with pytest.raises(ValueError, match=r"zero-shot task 'aef_continuation', item \d+: the continuation .* is \d+ "
                                         r"tokens \(context \d+\), but lm-eval scores only continuations of 1\.\.3 "
                                         r"tokens"):
        zeroshot(model, tokenizer, tasks=["aef_continuation"], limit=2, batch_size=2, bootstrap_iters=0)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-baichuan"])
def test_continuation_lm_loglikelihoods_equal_hflm(name, monkeypatch):
    from unittest import mock

    from lm_eval.models.huggingface import HFLM

    model, tokenizer, _ = aeflib.models.load(name)
    # BoolQ: one-token continuations sharing a row; HellaSwag, PIQA, ...: multi-token endings
    kwargs = dict(tasks="paper7-offline", limit=2, batch_size=2, log_samples=True, bootstrap_iters=0)
    fast = zeroshot(model, tokenizer, **kwargs)
    with mock.patch("aeflib.evaluation.loglikelihood.ContinuationLM", HFLM):
        reference = zeroshot(model, tokenizer, **kwargs)
    for task in TASK_SETS["paper7-offline"]:
        for a, b in zip(fast.samples[task], reference.samples[task], strict=True):
            assert a["loglikelihoods"] == pytest.approx(b["loglikelihoods"], rel=1e-5, abs=1e-4)
            assert a["is_greedy"] == b["is_greedy"]


def test_continuation_lm_falls_back_when_logits_are_not_the_output_layer(tokenizer, caplog):
    from aeflib.evaluation.loglikelihood import ContinuationLM

    model, tokenizer, _ = aeflib.models.load("tiny-llama")
    original = model.forward

    def scaled(*args, **kwargs):  # a logit scale the shortcut does not know about
        out = original(*args, **kwargs)
        out.logits = 2 * out.logits
        return out

    model.forward = scaled
    lm = ContinuationLM(pretrained=model, tokenizer=tokenizer, batch_size=2)
    requests = [(("a", " b"), [5, 6, 7], [8, 9]), (("c", " d"), [10, 11], [12])]
    with caplog.at_level("INFO", logger="aeflib.evaluation.loglikelihood"):
        got = lm._loglikelihood_tokens(requests, disable_tqdm=True)
    assert "scoring with lm-eval's HFLM method instead" in caplog.text
    with torch.no_grad():
        logp = F.log_softmax(model(torch.tensor([[5, 6, 7, 8]])).logits[0], dim=-1)  # [4, vocab]
    assert got[0][0] == pytest.approx((logp[2, 8] + logp[3, 9]).item(), rel=1e-5)
