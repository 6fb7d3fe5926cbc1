"""Contract checks every structure adapter must pass, run on a tiny model of each family (SliceGPT-style)."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import TINY_NAMES, uniform_scores

import aeflib.models
from aeflib import pruning
from aeflib.models import GQA_MODES, GroupSet, Slice, StructureError


def test_group_sets_cover_every_layer_parameter(tiny):
    model, _, adapter = tiny
    adapter.check_coverage(model)  # raises on any parameter neither pruned nor listed untouched (known failure 9)


def test_check_passes_on_dense_model(tiny):
    model, _, adapter = tiny
    adapter.check(model)


@pytest.mark.parametrize("name", TINY_NAMES)
@pytest.mark.parametrize("mode", sorted(GQA_MODES))
def test_group_slices_partition_each_cut_dimension(name, mode):
    """The groups of a set own disjoint index ranges that together cover the whole cut dimension."""
    model, _, adapter = aeflib.models.load(name, gqa_mode=mode)
    for gs in adapter.group_sets(model, 1):
        layer = adapter.decoder_layers(model)[1]
        for s in gs.slices:
            size = layer.get_parameter(s.param).shape[s.dim]
            owned = torch.cat([s.positions(torch.tensor([i])) for i in range(gs.n)])
            assert sorted(owned.tolist()) == list(range(size)), f"{gs.key} {s.param}"


def test_coverage_check_names_an_uncovered_parameter(tiny):
    model, _, adapter = tiny
    layer = adapter.decoder_layers(model)[0]
    layer.register_parameter("stray", torch.nn.Parameter(torch.zeros(3)))
    with pytest.raises(StructureError, match="stray"):
        adapter.check_coverage(model)


def test_check_reports_stale_width_attribute(tiny):
    """A width attribute that disagrees with the weights is reported with layer and values (known failure 7)."""
    model, _, adapter = tiny
    layer = adapter.decoder_layers(model)[2]
    linear = [m for m in layer.modules() if isinstance(m, torch.nn.Linear)][0]
    linear.out_features += 1
    with pytest.raises(StructureError, match=r"layer 2\..*out_features: holds"):
        adapter.check(model)


def test_llama_head_group_names_q_k_v_rows_and_o_columns():
    model, _, adapter = aeflib.models.load("tiny-llama")
    group = adapter.group_sets(model, 1)[0].group(1)
    regions = {param: (dim, idx) for param, dim, idx in group.regions}
    for p in ("q", "k", "v"):
        assert regions[f"self_attn.{p}_proj.weight"] == (0, tuple(range(16, 32)))
    assert regions["self_attn.o_proj.weight"] == (1, tuple(range(16, 32)))


def test_baichuan_head_group_takes_rows_from_each_wpack_block():
    model, _, adapter = aeflib.models.load("tiny-baichuan")
    group = adapter.group_sets(model, 1)[0].group(1)
    dim, idx = {p: (d, i) for p, d, i in group.regions}["self_attn.W_pack.weight"]
    hidden = 64
    assert dim == 0
    assert idx == tuple(range(16, 32)) + tuple(range(hidden + 16, hidden + 32)) + tuple(range(2 * hidden + 16,
                                                                                                2 * hidden + 32))


def test_bloom_head_group_takes_interleaved_qkv_rows_and_bias():
    model, _, adapter = aeflib.models.load("tiny-bloom")
    regions = {p: (d, i) for p, d, i in adapter.group_sets(model, 1)[0].group(2).regions}
    assert regions["self_attention.query_key_value.weight"] == (0, tuple(range(96, 144)))  # [h][q,k,v][d]
    assert regions["self_attention.query_key_value.bias"] == (0, tuple(range(96, 144)))
    assert regions["self_attention.dense.weight"] == (1, tuple(range(32, 48)))


def test_gqa_kv_groups_mode_groups_query_heads_with_their_kv_head():
    model, _, adapter = aeflib.models.load("tiny-gqa", gqa_mode="kv-groups")
    heads = adapter.group_sets(model, 1)[0]
    assert (heads.n, heads.unit, heads.blocks) == (2, "kv group", 1)
    regions = {p: i for p, _, i in heads.group(1).regions}
    assert regions["self_attn.q_proj.weight"] == tuple(range(48, 96))   # 3 query heads x 16
    assert regions["self_attn.k_proj.weight"] == tuple(range(16, 32))   # 1 kv head x 16


def test_gqa_query_heads_mode_keeps_kv_and_blocks_by_kv_group():
    model, _, adapter = aeflib.models.load("tiny-gqa", gqa_mode="query-heads")
    heads = adapter.group_sets(model, 1)[0]
    assert (heads.n, heads.unit, heads.blocks) == (6, "query head", 2)
    assert {s.role for s in heads.slices} == {"q", "o"}


def test_same_head_ratio_removes_same_number_of_heads_on_every_layout():
    """Field-case 10: no ratio/3 fudge for fused projections."""
    removed = {}
    for name in ("tiny-llama", "tiny-baichuan", "tiny-bloom"):
        model, _, adapter = aeflib.models.load(name)
        p = pruning.plan(model, adapter, uniform_scores(model, adapter), pruning_ratio=0.5, kinds=("head",))
        removed[name] = [p.groups("head")[i] - len(k) for i, k in p.kept("head").items()]
    assert len({tuple(v) for v in removed.values()}) == 1, removed


def test_shapes_come_from_config_on_three_layer_head_dim_16_model():
    """Field-case 17: nothing assumes LLaMA-7B sizes."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=100, hidden_size=48, intermediate_size=40, num_hidden_layers=3,
                      num_attention_heads=3, num_key_value_heads=3, head_dim=16)
    model = LlamaForCausalLM(cfg).eval()
    adapter = aeflib.models.adapter_for(model)
    ref = copy.deepcopy(model)
    p = pruning.plan(model, adapter, uniform_scores(model, adapter, layers=range(3)), pruning_ratio=0.34,
                     layers=range(3))
    pruning.apply(model, adapter, p)
    pruning.mask_removed(ref, adapter, p)
    x = torch.randint(0, 100, (1, 5))
    torch.testing.assert_close(model(x).logits, ref(x).logits, rtol=1e-5, atol=1e-5)
    assert [w.n_heads for w in adapter.all_widths(model)] == [2, 2, 2]


def test_group_set_needs_exactly_one_input_column_slice():
    rows = Slice("mlp.up_proj.weight", 0, (4,), 0, "up", 8)
    with pytest.raises(StructureError, match=r"0\.channel cuts input columns of no parameter"):
        GroupSet(0, "channel", 4, (rows,), "channel")
    cols = [Slice(f"mlp.{n}.weight", 1, (4,), 0, n, 8) for n in ("down_proj", "other_proj")]
    with pytest.raises(StructureError, match=r"exactly one slice with dim=1"):
        GroupSet(0, "channel", 4, (rows, *cols), "channel")
