"""Efficiency: analytic MACs against FlopCounterMode, parameter accounting, timings, pruned/dense ratios, and the
interleaved latency comparison (structure and ordering; wall-clock values are never asserted)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY_NAMES, prune_nonuniform

import aeflib.models
from aeflib.evaluation.efficiency import analytic_macs, counted_macs, efficiency, efficiency_ratios
from aeflib.evaluation.timing import LatencyRatio, _median_interval, compare_latency, rounds_needed
from aeflib.pruning import count_parameters

pytestmark = pytest.mark.usefixtures("one_thread")  # 2 shared cores: OpenMP barriers thrash under load


@pytest.fixture(scope="module", params=TINY_NAMES)
def pruned(request):
    """Each tiny layout pruned to non-uniform widths, built once per module (the tests below only read it)."""
    return prune_nonuniform(aeflib.models.load(request.param))


def test_analytic_macs_agree_with_flop_counter_on_pruned_models(pruned):
    model, _tokenizer, adapter = pruned
    layers, head = analytic_macs(model, 24)
    counted = counted_macs(model, 24)
    assert sum(layers) + head == pytest.approx(counted, rel=0.02)
    # pruned layers cost less than dense ones, in proportion to what they kept
    assert layers[1] < layers[2] < layers[0] and layers[3] == layers[0]


def test_analytic_macs_grow_with_seq_len_by_the_attention_term(pruned):
    model, _tokenizer, adapter = pruned
    short, _ = analytic_macs(model, 8)
    long, _ = analytic_macs(model, 16)
    for i, w in enumerate(adapter.all_widths(model)):
        assert long[i] - short[i] == 2 * 8 * w.n_heads * w.head_dim


def test_efficiency_counts_parameters_by_part(pruned):
    model, _tokenizer, adapter = pruned
    result = efficiency(model, seq_len=16, repeats=0)
    assert result.params_total == count_parameters(model)
    assert result.params_total == (result.params_embeddings + result.params_lm_head + sum(result.params_layers)
                                   + result.params_other)
    blocks = adapter.decoder_layers(model)
    assert result.params_layers == [sum(p.numel() for p in b.parameters()) for b in blocks]
    assert result.params_embeddings == model.get_input_embeddings().weight.numel()
    assert result.timings == {} and result.checksum == aeflib.models.checksum(model)


def test_efficiency_times_prefill_and_decode_on_pruned_models(pruned):
    model, tokenizer, _adapter = pruned
    model.train()
    result = efficiency(model, tokenizer, seq_len=8, batch_sizes=(1, 2), decode_tokens=3, repeats=1)
    assert model.training  # restored
    model.eval()
    assert set(result.timings) == {1, 2}
    for b, t in result.timings.items():
        assert t.prefill_s > 0 and t.decode_tokens_per_s > 0 and t.decode_ms_per_step > 0
        assert t.prefill_tokens_per_s == pytest.approx(b * 8 / t.prefill_s)
        assert t.peak_mem_bytes > 0 and t.peak_mem_delta_bytes >= 0
    assert result.memory_method
    assert result.to_dict()["timings"]["2"]["batch_size"] == 2
    assert "bs 2: prefill" in str(result) and str(result).count("tok/s") == 2
    prefill_only = efficiency(model, tokenizer, seq_len=8, batch_sizes=(1,), decode_tokens=0, repeats=1)
    assert "tok/s" not in str(prefill_only)  # an untimed decode is not shown as 0.0 tok/s


def test_compare_gives_pruned_over_dense_ratios():
    loaded = aeflib.models.load("tiny-gqa")
    dense = efficiency(loaded.model, seq_len=16, batch_sizes=(1,), decode_tokens=2, repeats=1)
    prune_nonuniform(loaded)
    pruned = efficiency(loaded.model, seq_len=16, batch_sizes=(1,), decode_tokens=2, repeats=1)
    ratios = efficiency_ratios(dense, pruned)
    assert ratios["params_total"] == pytest.approx(pruned.params_total / dense.params_total)
    assert ratios["params_total"] < 1 and ratios["macs_per_token"] < 1 and ratios["macs_per_token_attention"] < 1
    assert "peak_mem_delta_bytes@bs1" in ratios
    assert not any(k.startswith(("prefill", "decode")) for k in ratios)  # separately timed: not a comparison
    assert pruned.machine["torch_threads"] >= 1 and len(pruned.machine["load_average_after"]) == 3
    assert "peak_mem_bytes@bs1" not in ratios  # CPU: absolute RSS is the process history, not comparable
    with pytest.raises(ValueError, match="seq_len 32 .pruned. with MACs at seq_len 16"):
        efficiency_ratios(dense, efficiency(loaded.model, seq_len=32, repeats=0))


def test_efficiency_rejects_bad_arguments():
    model = aeflib.models.load("tiny-llama").model
    with pytest.raises(ValueError, match=r"batch_sizes=\[0\]"):
        efficiency(model, batch_sizes=(0,))
    with pytest.raises(ValueError, match="seq_len=0 must be >= 1"):
        analytic_macs(model, 0)


def test_counted_macs_restores_the_attention_implementation():
    model = aeflib.models.load("tiny-llama").model
    before = model.config._attn_implementation
    counted_macs(model, 4)
    assert model.config._attn_implementation == before
    with torch.no_grad():
        model(input_ids=torch.zeros(1, 4, dtype=torch.long))


# ---- interleaved comparison (issue 15): structure and ordering, never wall-clock values -----------------------------
@pytest.fixture(scope="module")
def two_models():
    """tiny-gqa dense and pruned to non-uniform widths (two different shapes to time)."""
    dense = aeflib.models.load("tiny-gqa")
    return {"dense": dense.model, "pruned": prune_nonuniform(aeflib.models.load("tiny-gqa")).model}, dense.tokenizer


def test_compare_latency_interleaves_rotating_rounds_and_reports_spreads(two_models):
    models, tokenizer = two_models
    models["pruned"].train()
    result = compare_latency(models, tokenizer, seq_len=6, decode_tokens=2, rounds=8, warmup=1)
    assert models["pruned"].training and not models["dense"].training  # flags restored
    models["pruned"].eval()
    assert result.order[:2] == [[-1, "dense"], [-1, "pruned"]]  # warm-up of each first
    timed = result.order[2:]
    assert [r for r, _ in timed] == [r for r in range(8) for _ in range(2)]
    assert [n for _, n in timed] == ["dense", "pruned", "pruned", "dense"] * 4  # A B, B A, ...
    assert set(result.spreads) == {"prefill_s", "decode_s_per_token"}
    for per in result.spreads.values():
        for s in per.values():
            assert len(s.samples) == 8 and min(s.samples) <= s.q1 <= s.median <= s.q3 <= max(s.samples)
    assert [(r.quantity, r.model, r.reference) for r in result.ratios] == [
        ("prefill_s", "pruned", "dense"), ("decode_s_per_token", "pruned", "dense")]
    for r in result.ratios:
        assert r.rounds == 8 and r.rounds_needed == 7 and r.low <= r.ratio <= r.high and r.confidence == 0.95
        assert r.measurable == (not r.low <= 1.0 <= r.high)
        assert r.verdict == ("no measurable difference" if not r.measurable else "faster" if r.ratio < 1 else "slower")
    assert result.ratio("prefill_s", "pruned", "dense") is result.ratios[0]
    with pytest.raises(KeyError, match="no ratio .*measured"):
        result.ratio("prefill_s", "dense", "pruned")
    assert {"cpus", "cpus_usable", "torch_threads", "load_average_before", "load_average_after"} <= set(result.machine)
    assert result.settings["rounds"] == 8 and result.settings["input"] == "shipped Wikipedia test text"
    assert "Bonferroni over 2 ratios" in result.settings["interval"]
    d = json.loads(json.dumps(result.to_dict()))
    assert d["ratios"][0]["verdict"] == result.ratios[0].verdict
    assert len(d["spreads"]["prefill_s"]["dense"]["samples"]) == 8
    assert list(result.table().index) == ["dense", "pruned"]
    assert list(result.ratio_table()["verdict"]) == [r.verdict for r in result.ratios]
    assert "interleaved rounds" in str(result)


def test_compare_latency_forms_every_pair_and_skips_an_untimed_decode(two_models):
    models, _ = two_models
    three = {"dense": models["dense"], "pruned": models["pruned"], "again": models["pruned"]}
    result = compare_latency(three, seq_len=4, decode_tokens=0, rounds=3, warmup=0)
    assert set(result.spreads) == {"prefill_s"} and result.settings["input"] == "seeded random ids"
    assert [(r.model, r.reference) for r in result.ratios] == [("pruned", "dense"), ("again", "dense"),
                                                               ("again", "pruned")]
    assert [n for _, n in result.order[:3]] == ["dense", "pruned", "again"]
    assert [n for _, n in result.order[3:6]] == ["pruned", "again", "dense"]  # rotated by one
    for r in result.ratios:  # 3 rounds: no interval, no claimed difference
        assert r.low is None and not r.measurable
        assert r.verdict == f"no finding: 3 rounds, an interval needs at least {rounds_needed(0.95, 3)}"


def test_latency_ratio_calls_an_interval_covering_one_no_measurable_difference():
    def ratio(value, low, high):
        return LatencyRatio("prefill_s", "b", "a", value, low, high, 0.95, 10, 8)

    assert ratio(0.98, 0.9, 1.05).verdict == "no measurable difference"
    assert ratio(0.5, 0.4, 0.6).verdict == "faster" and ratio(0.5, 0.4, 0.6).measurable
    assert ratio(1.5, 1.2, 1.8).verdict == "slower"
    assert "no measurable difference" in str(ratio(1.0, 0.95, 1.0))  # an end at exactly 1.0 covers it



def test_median_interval_is_the_sign_test_interval():
    # n = 10 at 95 %: [2nd smallest, 2nd largest] misses with 2 * P(Bin(10, 1/2) <= 1) = 2.1 %; the 3rd: 10.9 %
    assert _median_interval([float(x) for x in range(10, 0, -1)], 0.95) == (2.0, 9.0)
    assert _median_interval([2.0] * 7, 0.95) == (2.0, 2.0)
    assert _median_interval([1.0, 2.0, 3.0, 4.0, 5.0], 0.95) is None  # [min, max] of 5 misses 6.25 % > 5 %
    assert _median_interval([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 0.95) == (1.0, 6.0)
    assert rounds_needed(0.95) == 6 and rounds_needed(0.95, 6) == 8  # Bonferroni: more ratios, more rounds


def test_compare_latency_rejects_bad_arguments(two_models):
    models, _ = two_models
    with pytest.raises(ValueError, match=r"models needs at least two entries, got \['dense'\]"):
        compare_latency({"dense": models["dense"]})
    with pytest.raises(ValueError, match=r"rounds=0; confidence=1.5"):
        compare_latency(models, rounds=0, confidence=1.5)
    with pytest.raises(ValueError, match=r"seq_len=None"):  # e.g. notebook 06 with efficiency_seq_len = None
        compare_latency(models, seq_len=None)
    with pytest.raises(TypeError, match=r"models must be a dict \{name: causal LM\}, got list"):
        compare_latency(list(models.values()))
    with pytest.raises(ValueError, match=r"models\['oops'\] is str, not a transformers causal LM"):
        compare_latency({"dense": models["dense"], "oops": "not a model"})
    with pytest.raises(ValueError, match=r"models\['lin'\] is Linear, not a transformers causal LM"):
        compare_latency({"dense": models["dense"], "lin": torch.nn.Linear(2, 2)})
    with pytest.raises(ValueError, match=r"tokenizer is str, not a callable tokenizer"):
        compare_latency(models, tokenizer="gpt2")


def test_report_shows_latency_spreads_and_calls_an_interval_over_one_no_measurable_difference(tmp_path):
    from aeflib.evaluation.timing import LatencyComparison, LatencySpread
    from aeflib.orchestration.report import write_report

    spreads = {"prefill_s": {"dense": LatencySpread.of([0.010, 0.011, 0.012]),
                             "pruned": LatencySpread.of([0.006, 0.0065, 0.007]),
                             "pruned + LoRA": LatencySpread.of([0.0061, 0.0066, 0.0068])}}
    ratios = [LatencyRatio("prefill_s", "pruned", "dense", 0.6, 0.55, 0.65, 0.95, 10, 7),
              LatencyRatio("prefill_s", "pruned + LoRA", "dense", 0.61, 0.56, 0.66, 0.95, 10, 7),
              LatencyRatio("prefill_s", "pruned + LoRA", "pruned", 1.02, 0.95, 1.08, 0.95, 10, 7)]
    settings = {"seq_len": 64, "batch_size": 1, "decode_tokens": 0, "rounds": 10, "warmup": 1, "confidence": 0.95}
    machine = {"cpus_usable": 2, "torch_threads": 1, "load_average_before": [1.5, 1.2, 1.0],
               "load_average_after": [1.6, 1.2, 1.0]}
    latency = LatencyComparison(["dense", "pruned", "pruned + LoRA"], spreads, ratios, [], settings, machine)
    (tmp_path / "metrics.json").write_text(json.dumps({"evaluation": {"latency": latency.to_dict()}}))
    text = write_report(tmp_path).read_text()
    section = text[text.index("## Latency"):]
    assert "| dense | 11.00 (10.50–11.50) |" in section  # median (IQR) in ms
    assert "| prefill | pruned / dense | 0.600 | 0.550–0.650 | faster |" in section
    assert "| prefill | pruned + LoRA / pruned | 1.020 | 0.950–1.080 | no measurable difference |" in section
    assert "[1.5, 1.2, 1.0] before" in section and "1 torch threads" in section
