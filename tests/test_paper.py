"""data/paper_results.csv and its loader: every published number, round-trips, the notebook-07 tables."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from aeflib import paper

NOTES = Path(__file__).resolve().parents[1] / "docs" / "paper.md"


def value(frame, **where):
    rows = frame
    for k, v in where.items():
        rows = rows[rows[k] == v]
    assert len(rows) == 1, f"{where} matched {len(rows)} rows"
    return rows["value"].item()


def test_load_paper_results_round_trips_published_values():
    frame = paper.load_paper_results()
    assert value(frame, model="llama-7b", setting="dense", metric="perplexity", task="wikitext2") == 12.62
    assert value(frame, model="llama-7b", setting="no-tune", method="element1", task="average") == 56.69
    assert value(frame, model="llama-7b", setting="lora", method="element2", task="ptb") == 30.39
    assert value(frame, model="vicuna-7b", setting="no-tune", method="random", task="hellaswag") == 54.67
    assert value(frame, model="bloom-7b1", setting="dense", task="arc_challenge") == 33.45
    assert value(frame, model="baichuan-7b", setting="claim", task="average") == 2.0


def test_load_paper_results_names_metric_and_protocol_per_task():
    frame = paper.load_paper_results(model="llama-7b")
    metric = dict(zip(frame["task"], frame["metric"], strict=False))
    assert metric["hellaswag"] == "acc_norm" and metric["boolq"] == "acc" and metric["wikitext2"] == "perplexity"
    assert (frame["protocol"] != "").all() and (frame["source"] != "").all()
    assert frame["protocol"][frame["metric"] == "perplexity"].str.contains("128-token").all()


def test_load_paper_results_rejects_unknown_model_listing_models():
    with pytest.raises(ValueError, match=r"no published rows for model 'llama-13b'.*llama-7b"):
        paper.load_paper_results(model="llama-13b")


def test_load_paper_results_rejects_wrong_header(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("model,value\nx,1\n")
    with pytest.raises(ValueError, match="expected"):
        paper.load_paper_results(bad)


def test_csv_holds_every_number_of_the_notes_tables():
    section = NOTES.read_text().split("## 5.")[1]
    numbers = re.findall(r"\|\s*(\d+\.\d+)\s*(?=\|)", section)
    published = {f"{v:.2f}" for v in paper.load_paper_results()["value"]}
    assert len(numbers) == 170
    assert sorted(set(numbers) - published) == []


def test_paper_table_has_the_papers_layout():
    table = paper.paper_table(paper.load_paper_results(model="llama-7b"))
    assert table.shape == (11, 10)          # 9 LLM-Pruner rows + the FLAP and Wanda-sp anchors
    assert list(table.columns[:3]) == ["wikitext2 (perplexity)", "ptb (perplexity)", "boolq (acc)"]
    assert table.loc[("llama-7b", "no-tune", "element1"), "average (mean)"] == 56.69


def test_side_by_side_puts_run_rows_beside_published_ones():
    run_metrics = {"evaluation": {"rows": [
        {"model": "smollm2-135m", "setting": "dense", "method": "dense", "metric": "perplexity",
         "task": "wikipedia", "value": 30.1, "protocol": "llm-pruner-128: 128-token windows, 48 of 900 windows"},
        {"model": "smollm2-135m", "setting": "no-tune", "method": "aef", "metric": "perplexity",
         "task": "wikipedia", "value": 45.0, "protocol": "llm-pruner-128: 128-token windows, 48 of 900 windows"}]}}
    ours = paper.run_results(run_metrics, source="this run")
    table = paper.side_by_side(ours, paper.load_paper_results(model="llama-7b"))
    block = table[(table["setting"] == "dense") & (table["metric"] == "perplexity")]
    assert block.iloc[0]["model"] == "smollm2-135m" and block.iloc[0]["source"] == "this run"
    assert list(block["task"][1:]) == ["ptb", "wikitext2"]
    assert (table["source"] != "").all()
    rel = paper.relative_to_dense(table)
    ours_rel = rel[rel["model"] == "smollm2-135m"]
    assert ours_rel["change_percent"].item() == pytest.approx(100 * (45.0 / 30.1 - 1), abs=0.01)


def test_seven_tasks_puts_each_task_of_the_run_beside_the_published_one():
    protocol = "lm-eval 0.4.13, 0-shot, task set paper7-offline, limit 30, validation, 30 items"
    rows = [{"model": "smollm2-135m", "setting": s, "method": m, "metric": metric, "task": task, "value": v,
             "protocol": protocol}
            for s, m, v in (("dense", "dense", 60.0), ("no-tune", "aef", 50.0))
            for task, metric in (("boolq", "acc"), ("hellaswag", "acc_norm"), ("average", "mean"))]  # fmt: skip
    ours = paper.run_results({"evaluation": {"rows": rows}}, source="this run")
    table = paper.seven_tasks(ours, paper.load_paper_results(model="llama-7b"))
    assert [t for t, _ in table.index] == [*paper.PAPER_TASKS, "average"]
    assert table.loc[("hellaswag", "acc_norm"), ("dense", "smollm2-135m", "dense")] == 60.0
    assert table.loc[("hellaswag", "acc_norm"), ("dense", "llama-7b", "dense")] == 72.99
    assert table.loc[("boolq", "acc"), ("no-tune", "llama-7b", "element1")] == 57.06
    assert list(table.columns[:3]) == [("dense", "smollm2-135m", "dense"), ("dense", "llama-7b", "dense"),
                                       ("no-tune", "smollm2-135m", "aef")]  # this run first in each setting
    assert table.loc[("boolq", "acc"), ("protocol", "", "")] == protocol
    assert table.loc[("piqa", "acc"), ("protocol", "", "")] == ""  # not scored by this run
    # the mean of two tasks is not the paper's average; the mean of all seven is
    assert table[("dense", "smollm2-135m", "dense")].isna()[("average", "mean")]
    metric = {"boolq": "acc", "piqa": "acc", "hellaswag": "acc_norm", "winogrande": "acc", "arc_easy": "acc",
              "arc_challenge": "acc_norm", "openbookqa": "acc_norm", "average": "mean"}
    full = [{**rows[0], "task": t, "metric": m} for t, m in metric.items()]
    ours = paper.run_results({"evaluation": {"rows": full}})
    table = paper.seven_tasks(ours, paper.load_paper_results(model="llama-7b"))
    assert table.loc[("average", "mean"), ("dense", "smollm2-135m", "dense")] == 60.0
