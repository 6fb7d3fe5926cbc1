"""Paired bootstrap intervals: known answers (identical → holds 0; +100 of 1,000 → excludes 0 at the normal width)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from aeflib.evaluation.paired import (
    binomial_interval,
    holm,
    mean_interval,
    paired_bootstrap,
    sign_test,
    zeroshot_intervals,
)


def _items(n: int, correct: set[int]) -> dict[int, float]:
    return {i: float(i in correct) for i in range(n)}


def test_identical_results_give_an_interval_holding_zero():
    a = _items(1000, set(range(0, 1000, 2)))
    r = paired_bootstrap(a, dict(a), scale=100, unit="points", labels=("element1", "aef"))
    assert r.lo <= 0 <= r.hi and r.diff == 0 and r.n_discordant == 0
    assert not r.excludes_zero and r.better is None
    assert r.reading().endswith("within noise")


def test_hundred_more_right_of_a_thousand_excludes_zero_at_the_normal_width():
    a = _items(1000, set(range(400)))
    b = _items(1000, set(range(500)))  # right on 100 more, wrong on none that A gets right
    r = paired_bootstrap(a, b, scale=100, unit="points", labels=("A", "B"))
    d = (np.array(list(b.values())) - np.array(list(a.values()))) * 100
    normal = 1.96 * d.std() / np.sqrt(d.size)  # ≈ 1.86 points
    assert r.diff == pytest.approx(10.0) and r.n == 1000 and r.n_discordant == 100
    assert r.excludes_zero and r.better == "B" and r.lo > 0
    assert (r.hi - r.lo) / 2 == pytest.approx(normal, rel=0.10)
    assert r.reading().startswith("B − A = +10.00 points [") and r.reading().endswith(": B better")


def test_lower_is_better_names_the_method_with_the_smaller_nll():
    rng = np.random.default_rng(1)
    base = rng.normal(4.0, 0.5, 300)
    a = dict(enumerate(base))
    b = dict(enumerate(base - 0.1 + rng.normal(0, 0.01, 300)))
    r = paired_bootstrap(a, b, higher_is_better=False, unit="nats", labels=("element1", "aef"))
    assert r.hi < 0 and r.better == "aef"


def test_pairing_is_by_id_not_by_order():
    rng = random.Random(0)
    a = {f"q{i}": float(rng.random() < 0.5) for i in range(400)}
    b = {k: float(rng.random() < 0.6) for k in a}
    keys = list(b)
    rng.shuffle(keys)
    shuffled = {k: b[k] for k in keys}
    assert paired_bootstrap(a, b) == paired_bootstrap(a, shuffled)


def test_mismatched_ids_are_refused_with_examples():
    with pytest.raises(ValueError, match=r"different items — 1 ids only in A \(e.g. \['2'\]\), 1 only in B"):
        paired_bootstrap({0: 1.0, 1: 0.0, 2: 1.0}, {0: 1.0, 1: 0.0, 3: 1.0})
    with pytest.raises(ValueError, match=r"different seeds: A \['42', '43'\], B \['42'\]"):
        paired_bootstrap({42: {0: 1.0}, 43: {0: 1.0}}, {42: {0: 1.0}})
    with pytest.raises(ValueError, match="draws=10 is too few"):
        paired_bootstrap({0: 1.0}, {0: 1.0}, draws=10)


def test_seeds_widen_the_interval_when_methods_disagree_across_seeds():
    """Two-stage bootstrap: a seed-to-seed swing in B − A adds to the item noise."""
    a = {s: _items(500, set(range(250))) for s in (42, 43, 44)}
    steady = {s: _items(500, set(range(275))) for s in (42, 43, 44)}  # +5 points in every seed
    swinging = {42: _items(500, set(range(250))), 43: _items(500, set(range(275))), 44: _items(500, set(range(300)))}
    r_steady = paired_bootstrap(a, steady, scale=100)
    r_swing = paired_bootstrap(a, swinging, scale=100)
    assert r_steady.diff == pytest.approx(5) and r_swing.diff == pytest.approx(5)
    assert r_steady.n_seeds == 3 and r_steady.n == 1500
    assert r_swing.hi - r_swing.lo > 1.5 * (r_steady.hi - r_steady.lo)


def test_strata_average_task_means():
    """The zero-shot average is the plain mean of the task means, whatever each task's size."""
    a = {**{f"big/{i}": 0.0 for i in range(900)}, **{f"small/{i}": 0.0 for i in range(100)}}
    b = {**{f"big/{i}": 0.0 for i in range(900)}, **{f"small/{i}": 1.0 for i in range(100)}}
    r = paired_bootstrap(a, b, strata=lambda k: k.split("/")[0], scale=100)
    assert r.diff == pytest.approx(50.0) and r.lo == pytest.approx(50.0)  # no within-task variance
    assert paired_bootstrap(a, b, scale=100).diff == pytest.approx(10.0)  # pooled items instead


def test_mean_and_binomial_intervals_agree_on_an_accuracy():
    values = _items(400, set(range(100)))
    mean, lo, hi = mean_interval(values)
    wlo, whi = binomial_interval(100, 400)
    assert mean == pytest.approx(0.25) and lo == pytest.approx(wlo, abs=0.01) and hi == pytest.approx(whi, abs=0.01)
    with pytest.raises(ValueError, match="k=5, n=4"):
        binomial_interval(5, 4)


def test_zeroshot_items_are_lm_evals_own_per_item_metric(tokenizer, tmp_path, monkeypatch, one_thread):
    """Per-item results: their mean is the task score; acc_norm = argmax of length-normalised log-likelihoods."""
    import aeflib.models
    from aeflib.evaluation.zeroshot import zeroshot
    from aeflib.evaluation.zeroshot_results import item_values, task_of

    monkeypatch.chdir(tmp_path)
    model = aeflib.models.load("tiny-llama").model
    result = zeroshot(model, tokenizer, tasks="local", limit=4, bootstrap_iters=0, log_samples=True)
    table = result.item_table()
    assert set(table) == set(result.scores)
    for task, t in table.items():
        assert t["metric"] == result.scores[task].metric and len(t["doc_ids"]) == 4
        assert np.mean(t["correct"]) == pytest.approx(result.scores[task].value)
    recs = sorted(result.samples["aef_qa"], key=lambda r: r["doc_id"])
    for rec, correct in zip(recs, table["aef_qa"]["correct"], strict=True):
        norm = [ll / len(cont) for (_, cont), ll in zip(rec["arguments"], rec["loglikelihoods"], strict=True)]
        assert correct == float(int(np.argmax(norm)) == rec["target"])
    items = item_values(table)
    assert len(items) == 12 and {task_of(k) for k in items} == set(table)
    r = paired_bootstrap(items, items, strata=task_of, scale=100)
    assert r.mean_a == pytest.approx(100 * result.average)
    with pytest.raises(ValueError, match=r"log_samples=True"):
        zeroshot(model, tokenizer, tasks=["aef_qa"], limit=1, bootstrap_iters=0).item_table()


def test_perplexity_per_window_nll_averages_to_the_reported_nll(one_thread):
    import aeflib.models
    from aeflib.evaluation import perplexity

    model, tokenizer, _ = aeflib.models.load("tiny-llama")
    plain = perplexity(model, tokenizer, "wikipedia", "test", max_windows=6, batch_size=4, progress=False)
    windows = perplexity(model, tokenizer, "wikipedia", "test", max_windows=6, batch_size=4, progress=False,
                         per_window=True)
    assert plain.window_nll is None and "window_nll" not in plain.to_dict()
    assert windows.value == plain.value and len(windows.window_nll) == 6
    assert np.mean(windows.window_nll) == pytest.approx(plain.nll, rel=1e-9)  # equal-length windows


def test_a_handful_of_items_gets_no_verdict():
    r = paired_bootstrap({0: 1.0, 1: 2.0}, {0: 3.0, 1: 4.0})
    assert r.excludes_zero and r.better is None and r.reading().endswith("too few items to tell")


def test_zeroshot_intervals_carry_chance_wilson_and_paired_readings():
    def table(correct_qa, correct_cloze):
        return {"aef_qa": {"metric": "acc_norm", "doc_ids": list(range(100)), "correct": correct_qa},
                "aef_cloze": {"metric": "acc", "doc_ids": list(range(50)), "correct": correct_cloze}}

    dense = table([1.0] * 60 + [0.0] * 40, [1.0] * 25 + [0.0] * 25)
    pruned = table([1.0] * 30 + [0.0] * 70, [1.0] * 25 + [0.0] * 25)
    out = zeroshot_intervals({"dense": dense, "pruned": pruned}, pairs=[("dense", "pruned")])
    qa = out["models"]["dense"]["tasks"]["aef_qa"]
    lo, hi = binomial_interval(60, 100)
    assert (qa["value"], qa["chance"], qa["n"]) == (60.0, 25.0, 100)
    assert (qa["lo"], qa["hi"]) == pytest.approx((100 * lo, 100 * hi))
    assert out["models"]["pruned"]["average"]["value"] == pytest.approx((30 + 50) / 2)
    by_task = {p["task"]: p for p in out["paired"]}
    assert by_task["aef_qa"]["diff"] == pytest.approx(-30) and by_task["aef_qa"]["excludes_zero"]
    assert "dense better (Holm p" in by_task["aef_qa"]["reading"]
    assert "within noise" in by_task["aef_cloze"]["reading"]  # same answers on every cloze item
    assert by_task["average"]["diff"] == pytest.approx(-15)
    with pytest.raises(ValueError, match=r"no zero-shot items for \['lora'\]"):
        zeroshot_intervals({"dense": dense}, pairs=[("dense", "lora")])


def test_report_shows_intervals_chance_and_calls_small_differences_noise(tmp_path):
    import json

    from aeflib.orchestration.report import write_report

    def table(k):
        return {"aef_qa": {"metric": "acc_norm", "doc_ids": list(range(20)), "correct": [1] * k + [0] * (20 - k)}}

    intervals = zeroshot_intervals({"dense": table(8), "pruned": table(7)}, pairs=[("dense", "pruned")], draws=500)
    (tmp_path / "metrics.json").write_text(json.dumps({"zeroshot_intervals": intervals}))
    text = write_report(tmp_path, records=[]).read_text()
    assert "## Zero-shot accuracy with intervals" in text
    assert "| aef_qa (acc_norm) | 20 | 25 | 40.0 [21.9, 61.3] | 35.0 [18.1, 56.7] |" in text
    assert "| pruned − dense | aef_qa | -5.0 [" in text
    # dense 40 % [21.9, 61.3] does not clear the 25 % chance level: nothing is read from the task
    assert "| at chance (dense 40 % [22, 61], chance 25 %): no difference read |" in text
    assert "Holm–Bonferroni adjusted across the tasks" in text
    assert "The headline difference, pruned − dense on the average, resolves ±" in text


def test_aef_compare_reports_paired_intervals_against_the_best_baseline(tmp_path, one_thread):
    from aeflib.orchestration import sweep
    from aeflib.orchestration.settings import RunSettings

    out = sweep.compare(RunSettings.tiny("tiny-gqa"), ["random", "vector"], name="c", runs_root=tmp_path)
    ppl = dict(zip(out.table["method"], out.table["perplexity"], strict=True))
    ref = min(("random", "vector"), key=ppl.get)
    assert [(p["a"], p["b"]) for p in out.paired] == [(ref, ({"random", "vector"} - {ref}).pop())]
    assert all(p["measure"] == "NLL wikipedia" and p["n"] == 4 for p in out.paired)  # 4 windows paired
    text = out.markdown.read_text()
    assert f"Paired differences against {ref}" in text and "too few items to tell" in text


def test_holm_matches_hand_computed_step_down():
    # sorted 0.01, 0.02, 0.03, 0.04 → ×4, ×3, ×2, ×1 = 0.04, 0.06, 0.06, 0.04 → running max 0.04, 0.06, 0.06, 0.06
    assert holm([0.03, 0.01, 0.04, 0.02]) == pytest.approx([0.06, 0.04, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    with pytest.raises(ValueError, match=r"p-values must lie in \[0, 1\]; got \[1.5\]"):
        holm([0.2, 1.5])


def test_sign_test_is_mcnemars_exact_test():
    a = dict.fromkeys(range(10), 0.0)
    b = {i: 1.0 if i < 8 else 0.0 for i in range(10)}  # 8 items differ, all in B's favour
    assert sign_test(a, b) == pytest.approx(2 / 2**8)
    assert sign_test(a, a) == 1.0


def _seven_tasks(dense_correct: dict[str, int], pruned_gain: dict[str, int], n: int = 100) -> tuple[dict, dict]:
    """Item tables of seven tasks: dense right on the first k items; pruned also right on ``gain`` more."""
    from aeflib.evaluation.zeroshot import TASK_SETS

    dense, pruned = {}, {}
    for task, metric in TASK_SETS["paper7-offline"].items():
        k, g = dense_correct.get(task, 70), pruned_gain.get(task, 0)
        dense[task] = {"metric": metric, "doc_ids": list(range(n)), "correct": [1.0] * k + [0.0] * (n - k)}
        pruned[task] = {"metric": metric, "doc_ids": list(range(n)),
                        "correct": [1.0] * (k + g) + [0.0] * (n - k - g)}
    return dense, pruned


def test_zeroshot_intervals_holm_reads_no_difference_significant_only_alone():
    # 7 of 7 items that differ favour pruned on PIQA: sign test p = 2/128 = 0.016 < 0.05 alone,
    # but Holm over seven tasks gives 7 × 0.016 = 0.11: no finding
    dense, pruned = _seven_tasks({}, {"piqa": 7})
    out = zeroshot_intervals({"dense": dense, "pruned": pruned}, pairs=[("dense", "pruned")], draws=2000)
    piqa = next(p for p in out["paired"] if p["task"] == "piqa")
    assert piqa["p"] == pytest.approx(2 / 2**7) and piqa["p"] < 0.05
    assert piqa["p_holm"] == pytest.approx(7 * 2 / 2**7)
    assert not piqa["significant"] and "within noise (Holm p = 0.11)" in piqa["reading"]
    assert "Holm" in out["correction"]
    # a difference large enough survives the correction
    dense, pruned = _seven_tasks({}, {"piqa": 20})
    out = zeroshot_intervals({"dense": dense, "pruned": pruned}, pairs=[("dense", "pruned")], draws=2000)
    piqa = next(p for p in out["paired"] if p["task"] == "piqa")
    assert piqa["significant"] and "pruned better (Holm p = 0.000)" in piqa["reading"]


def test_zeroshot_intervals_marks_a_task_at_chance_and_reads_nothing_from_it():
    # dense 47 % on WinoGrande (chance 50 %): pruned +20 points there is not read, whatever its p-value
    dense, pruned = _seven_tasks({"winogrande": 47}, {"winogrande": 20})
    out = zeroshot_intervals({"dense": dense, "pruned": pruned}, pairs=[("dense", "pruned")], draws=2000)
    wino = next(p for p in out["paired"] if p["task"] == "winogrande")
    assert wino["p_holm"] < 0.05 and wino["at_chance"] and not wino["significant"]
    assert "at chance (dense 47 % [38, 57], chance 50 %): no difference read" in wino["reading"]
    others = [p for p in out["paired"] if p["task"] not in ("winogrande", "average")]
    assert not any(p["at_chance"] for p in others)  # 70 % on the others: above 25 % and 50 %
    with pytest.raises(ValueError, match=r"reference='lora' is not a model of tables"):
        zeroshot_intervals({"dense": dense, "pruned": pruned}, reference="lora")
