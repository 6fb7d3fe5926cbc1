"""aeflib.analysis, aeflib.stages, aeflib.artifacts and aeflib.orchestration.report: the notebook cells' helpers."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import uniform_scores
from scipy import stats

import aeflib.models
import aeflib.pruning
from aeflib import analysis, stages
from aeflib.artifacts import RunDir, pruned_layers
from aeflib.orchestration import report
from aeflib.scores import Scores


@pytest.fixture(scope="module")
def gqa():
    return aeflib.models.load("tiny-gqa")


def test_rank_correlations_equal_scipy_with_ties():
    gen = torch.Generator().manual_seed(0)
    a = torch.randint(0, 6, (40,), generator=gen).float()
    b = a + torch.randint(0, 4, (40,), generator=gen).float()
    assert analysis.spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-6)
    assert analysis.kendall(a, b) == pytest.approx(stats.kendalltau(a, b).statistic, abs=1e-6)
    assert analysis.spearman(a, a) == pytest.approx(1.0) and analysis.kendall(a, -a) == pytest.approx(-1.0)


def test_agreement_of_a_criterion_with_itself_is_perfect(gqa):
    model, _, adapter = gqa
    scores = Scores({"a": uniform_scores(model, adapter), "b": uniform_scores(model, adapter, seed=1)}, {})
    table = analysis.agreement(model, adapter, scores, "a", "a", 0.5)
    assert (table["spearman"] == 1).all() and (table["overlap"] == 1).all()
    other = analysis.agreement(model, adapter, scores, "a", "b", 0.5)
    heads = other[other["kind"] == "head"]
    assert (heads["removed"] == 4).all()        # 6 query heads in 2 kv groups: round(0.5 * 3) = 2 per kv group
    assert set(other.columns) == {"layer", "kind", "groups", "spearman", "kendall", "removed", "overlap"}


def test_structure_table_counts_match_the_model(gqa):
    model, _, adapter = gqa
    table = analysis.structure_table(model, adapter)
    layers = adapter.decoder_layers(model)
    assert len(table) == adapter.n_layers(model)
    assert (table["heads"] == 6).all() and (table["channels"] == 160).all()
    total = table[["head_params", "channel_params", "other_params"]].sum(axis=1)
    assert total.tolist() == [sum(p.numel() for p in layer.parameters()) for layer in layers]
    summary = analysis.parameter_summary(model, adapter)
    assert summary["total"] == aeflib.pruning.count_parameters(model)
    assert summary["pruned_layers"] == "1..2"
    assert table.index.name == "layer" and table.index.tolist() == [0, 1, 2, 3]
    shown = analysis.parameter_table(model, adapter)
    assert shown.loc["all parameters", "parameters"] == summary["total"]
    assert shown.loc["prunable groups of layers 1..2", "share of all (%)"] == pytest.approx(
        100 * summary["prunable_in_pruned_layers"] / summary["total"], abs=0.01)


def test_mappings_and_plans_show_as_tables_with_meaningful_indexes(gqa):
    model, _, adapter = gqa
    table = analysis.as_table({"loss": 10.818893, "steps": 3, "datasets": [["wikipedia", "test"]], "target": None})
    assert table["value"].tolist() == [10.8189, 3, "wikipedia/test", "—"] and table.index.name == "quantity"
    pruning_plan = aeflib.pruning.plan(model, adapter, uniform_scores(model, adapter), pruning_ratio=0.5)
    assert analysis.plan_table(pruning_plan).index.name == "layer"
    summary = analysis.plan_summary(pruning_plan)
    assert summary.index.name == "quantity" and summary.loc["params_before", "value"] == pruning_plan.params_before
    assert (summary["meaning"].str.len().between(1, 49)).all()       # pandas cuts cells at 50 characters


def test_method_names_resolve_and_unknown_ones_list_the_choices():
    assert stages.fusion_method("vector") == "aef" and stages.fusion_method("aef-element") == "aef-element"
    with pytest.raises(ValueError, match=r"unknown method 'taylor'.*element2"):
        stages.fusion_method("taylor")


def test_solve_ratio_matches_pruning_plan(gqa):
    model, _, adapter = gqa
    scores = Scores({"a": uniform_scores(model, adapter)}, {})
    assert stages.solve_ratio(model, adapter, scores, pruning_ratio=0.3) == 0.3
    ratio = stages.solve_ratio(model, adapter, scores, target_params=0.005)
    plan = aeflib.pruning.plan(model, adapter, scores["a"], pruning_ratio=ratio)
    assert plan.expected_param_reduction == pytest.approx(0.005, abs=0.003)


def test_evaluation_rows_carry_protocol_and_percentages():
    zs = {"harness": "lm-eval 0.4.13", "task_set": "local", "limit": 4, "average": 0.5,
          "tasks": {"aef_qa": {"metric": "acc_norm", "value": 0.5, "n_items": 4}}}
    rows = analysis.evaluation_rows("m", "dense", "dense", zeroshot=zs)
    assert rows[0]["metric"] == "acc_norm" and rows[0]["value"] == 50.0 and "lm-eval 0.4.13" in rows[0]["protocol"]
    assert rows[-1]["task"] == "average" and rows[-1]["value"] == 50.0
    table = analysis.evaluation_table(rows + analysis.evaluation_rows("m", "no-tune", "aef", zeroshot=zs))
    assert list(table.columns) == ["dense", "no-tune"]
    assert "e+" not in table.to_string() and table.loc[("acc_norm", "aef_qa"), "dense"] == 50   # no 5.0e+01


def test_run_dir_names_the_missing_stage_and_merges_sections(tmp_path):
    run = RunDir(tmp_path / "r")
    with pytest.raises(FileNotFoundError, match="run notebook 02_importance"):
        run.require("scores.safetensors")
    run.merge_metrics("model", {"name": "tiny-llama", "shape": torch.Size([2, 3])})
    run.merge_metrics("pruning", {"ratio": 0.25})
    assert json.loads((run / "metrics.json").read_text()) == {"model": {"name": "tiny-llama", "shape": [2, 3]},
                                                              "pruning": {"ratio": 0.25}}
    run.check_model("tiny-llama")
    with pytest.raises(ValueError, match="made with model 'tiny-llama'"):
        run.check_model("tiny-bloom")


def test_pruned_layers_default_and_validation(gqa):
    model, _, adapter = gqa
    assert pruned_layers(adapter, model, None) == range(1, 3)
    assert pruned_layers(adapter, model, [0, 4]) == range(0, 4)
    with pytest.raises(ValueError, match=r"layers=\[3, 9\]"):
        pruned_layers(adapter, model, [3, 9])


def test_report_from_metrics_alone(tmp_path):
    run = RunDir(tmp_path / "r")
    run.merge_metrics("model", {"name": "tiny-llama", "parameters": 100, "n_layers": 4, "dtype": "float32"})
    run.merge_metrics("evaluation", {"settings": {"ppl_max_windows": 8}, "rows": [
        {"model": "tiny-llama", "setting": s, "method": "m", "metric": "perplexity", "task": "wikipedia",
         "value": v, "protocol": "llm-pruner-128"} for s, v in (("dense", 10.0), ("no-tune", 12.5))]})
    text = report.write_report(run.root).read_text()
    assert "| perplexity (wikipedia) | 10.00 | 12.50 | – | llm-pruner-128 |" in text
    assert "first 8 windows" in text
