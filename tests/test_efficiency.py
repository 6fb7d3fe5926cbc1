"""Efficiency: analytic MACs against FlopCounterMode, parameter accounting, timings and pruned/dense ratios."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_NAMES, prune_nonuniform

import aeflib.models
from aeflib.evaluation.efficiency import analytic_macs, compare, counted_macs, efficiency
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
    ratios = compare(dense, pruned)
    assert ratios["params_total"] == pytest.approx(pruned.params_total / dense.params_total)
    assert ratios["params_total"] < 1 and ratios["macs_per_token"] < 1 and ratios["macs_per_token_attention"] < 1
    assert {"prefill_s@bs1", "decode_tokens_per_s@bs1", "peak_mem_delta_bytes@bs1"} <= set(ratios)
    assert "peak_mem_bytes@bs1" not in ratios  # CPU: absolute RSS is the process history, not comparable
    with pytest.raises(ValueError, match="seq_len 32 .pruned. with MACs at seq_len 16"):
        compare(dense, efficiency(loaded.model, seq_len=32, repeats=0))


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
