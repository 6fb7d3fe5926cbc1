from __future__ import annotations

import copy

import pytest
import torch
from conftest import TINY_NAMES, uniform_scores

import aeflib.models
from aeflib import pruning
from aeflib.models import StructureError
from aeflib.pruning import PruningPlan

PROMPT = torch.tensor([[1, 5, 9, 200, 3000, 17, 4]])  # 7 tokens (known failure 6)


def _plan(model, adapter, ratio=0.5, seed=0, **kw):
    return pruning.plan(model, adapter, uniform_scores(model, adapter, seed), pruning_ratio=ratio, **kw)


def test_empty_plan_keeps_logits_bit_identical(tiny):
    model, _, adapter = tiny
    before = model(PROMPT).logits
    p = _plan(model, adapter, ratio=0.0)
    pruning.apply(model, adapter, p)
    assert torch.equal(model(PROMPT).logits, before)
    assert p.param_reduction == 0


@pytest.mark.parametrize("name", TINY_NAMES)
@pytest.mark.parametrize("mode", ["query-heads", "kv-groups"])
def test_pruned_model_equals_dense_model_with_removed_groups_zeroed(name, mode):
    """Same-function guarantee: positions, ALiBi slopes, GQA mapping and biases of kept groups are untouched."""
    model, _, adapter = aeflib.models.load(name, gqa_mode=mode)
    p = _plan(model, adapter, ratio=0.5, seed=1)
    reference = pruning.mask_removed(copy.deepcopy(model), adapter, p)
    pruning.apply(model, adapter, p)
    torch.testing.assert_close(model(PROMPT).logits, reference(PROMPT).logits, rtol=1e-5, atol=1e-5)


def test_bloom_alibi_keeps_each_kept_heads_own_slope():
    """Without the per-layer ALiBi selection the pruned Bloom differs from its masked reference."""
    model, _, adapter = aeflib.models.load("tiny-bloom")
    for block in adapter.decoder_layers(model):  # sharpen attention so slopes matter
        block.self_attention.query_key_value.weight.data.mul_(30)
    scores = {gs.key: torch.arange(gs.n, dtype=torch.float) for gs in adapter.all_group_sets(model)}
    p = pruning.plan(model, adapter, scores, pruning_ratio=0.5)          # keeps heads 2, 3
    reference = pruning.mask_removed(copy.deepcopy(model), adapter, p)
    pruning.apply(model, adapter, p)
    torch.testing.assert_close(model(PROMPT).logits, reference(PROMPT).logits, rtol=1e-5, atol=1e-5)
    assert adapter.kept_heads(model, 1) == [2, 3]
    for block in adapter.decoder_layers(model):
        block.self_attention.aef_kept_heads = list(range(block.self_attention.num_heads))  # wrong slopes
    assert not torch.allclose(model(PROMPT).logits, reference(PROMPT).logits, rtol=1e-4, atol=1e-4)


def test_forward_backward_and_generate_work_after_pruning(tiny):
    model, _, adapter = tiny
    pruning.apply(model, adapter, _plan(model, adapter, ratio=0.5))
    out = model(PROMPT, labels=PROMPT)
    out.loss.backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
    cached = model.generate(PROMPT, max_new_tokens=6, do_sample=False, use_cache=True)
    uncached = model.generate(PROMPT, max_new_tokens=6, do_sample=False, use_cache=False)
    assert cached.shape == (1, 13) and torch.equal(cached, uncached)


def test_plan_removes_exactly_the_lowest_scored_groups():
    model, _, adapter = aeflib.models.load("tiny-llama")
    scores = {gs.key: torch.arange(gs.n, dtype=torch.float).flip(0) for gs in adapter.all_group_sets(model)}
    p = pruning.plan(model, adapter, scores, pruning_ratio=0.25)
    assert p.keep["1.head"] == [0, 1, 2]                  # head 3 has the lowest score
    assert p.keep["1.channel"] == list(range(96))          # 32 of 128 channels removed, the highest indices
    pruning.apply(model, adapter, p)
    assert adapter.widths(model, 1).n_channels == 96 and adapter.widths(model, 0).n_channels == 128


def test_gqa_query_heads_mode_removes_same_count_per_kv_group():
    model, _, adapter = aeflib.models.load("tiny-gqa")
    scores = {gs.key: torch.tensor([5.0, 4, 3, 0.1, 0.2, 0.3]) if gs.kind == "head" else torch.rand(gs.n)
              for gs in adapter.all_group_sets(model)}
    p = pruning.plan(model, adapter, scores, pruning_ratio=0.34)
    assert p.keep["1.head"] == [0, 1, 4, 5]               # one head from each kv group, not the two lowest overall
    pruning.apply(model, adapter, p)
    w = adapter.widths(model, 1)
    assert (w.n_heads, w.n_kv_heads) == (4, 2) and w.n_heads % w.n_kv_heads == 0


def test_ratio_is_rounded_to_whole_groups_and_achieved_is_reported():
    model, _, adapter = aeflib.models.load("tiny-llama")
    p = _plan(model, adapter, ratio=0.3)                     # 0.3 * 4 heads = 1.2 -> 1 head
    assert [len(v) for v in p.kept("head").values()] == [3, 3]
    assert p.achieved_ratio("head") == pytest.approx(0.25)
    assert p.summary()["pruning_ratio_requested"] == 0.3


def test_target_params_is_solved_and_measured():
    model, _, adapter = aeflib.models.load("tiny-llama")
    sets = adapter.all_group_sets(model)
    layer_params = sum(gs.n * gs.params_per_group for gs in sets)
    target = 0.5 * layer_params / pruning.count_parameters(model)
    p = pruning.plan(model, adapter, uniform_scores(model, adapter), target_params=target)
    pruning.apply(model, adapter, p)
    assert p.param_reduction == pytest.approx(p.expected_param_reduction, abs=1e-9)
    assert p.param_reduction == pytest.approx(target, rel=0.1)
    assert p.params_after == sum(t.numel() for t in model.parameters())


def test_unreachable_target_names_the_maximum():
    model, _, adapter = aeflib.models.load("tiny-llama")
    with pytest.raises(ValueError, match=r"target_params=0.5 cannot be reached.*at most 0.0"):
        pruning.plan(model, adapter, uniform_scores(model, adapter), target_params=0.5)


@pytest.mark.parametrize("kw, message", [
    ({"pruning_ratio": 1.5}, r"pruning_ratio=1.5 is outside \[0, 1\)"),
    ({"pruning_ratio": -0.1}, r"pruning_ratio=-0.1 is outside \[0, 1\)"),
    ({"target_params": 1.0}, r"target_params=1.0 is outside \[0, 1\)"),
    ({}, "give exactly one of pruning_ratio"),
    ({"pruning_ratio": 0.2, "target_params": 0.2}, "give exactly one of pruning_ratio"),
    ({"pruning_ratio": 0.2, "kinds": ("neuron",)}, "kinds=.*choose from 'head' and 'channel'"),
    ({"pruning_ratio": 0.2, "layers": [7]}, "layer 7 is outside 0..3"),
])
def test_plan_rejects_bad_arguments(kw, message):
    model, _, adapter = aeflib.models.load("tiny-llama")
    with pytest.raises(ValueError, match=message):
        pruning.plan(model, adapter, uniform_scores(model, adapter), **kw)


def test_plan_rejects_scores_of_wrong_shape_or_nan():
    model, _, adapter = aeflib.models.load("tiny-llama")
    scores = uniform_scores(model, adapter)
    scores["1.head"] = torch.rand(7)
    with pytest.raises(ValueError, match=r"1.head have shape \(7,\), the model has 4"):
        pruning.plan(model, adapter, scores, pruning_ratio=0.2)
    scores["1.head"] = torch.tensor([1.0, float("nan"), 2, 3])
    with pytest.raises(ValueError, match="NaN"):
        pruning.plan(model, adapter, scores, pruning_ratio=0.2)


def test_plan_applies_only_to_the_model_it_was_made_for():
    model, _, adapter = aeflib.models.load("tiny-llama")
    p = _plan(model, adapter)
    pruning.apply(model, adapter, p)
    with pytest.raises(StructureError, match="plans apply once"):
        pruning.apply(model, adapter, PruningPlan.from_dict(p.to_dict()))


def test_plan_json_roundtrip_restores_int_keys(tmp_path):
    model, _, adapter = aeflib.models.load("tiny-bloom")
    p = _plan(model, adapter)
    again = PruningPlan.load(p.save(tmp_path / "plan.json"))
    assert again == p and all(isinstance(k, int) for k in again.kept("head"))


def test_pruning_twice_with_different_layers_gives_non_uniform_widths(tiny):
    model, _, adapter = tiny
    pruning.apply(model, adapter, _plan(model, adapter, ratio=0.5, layers=[1]))
    pruning.apply(model, adapter, _plan(model, adapter, ratio=0.25, layers=[1, 2]))
    widths = [w.n_channels for w in adapter.all_widths(model)]
    assert widths[1] < widths[2] < widths[0]
    model(PROMPT)


def test_solve_ratio_is_the_ratio_plan_uses_and_select_keeps_whole_blocks():
    model, _, adapter = aeflib.models.load("tiny-gqa")
    scores = uniform_scores(model, adapter)
    ratio = pruning.solve_ratio(model, adapter, 0.005)
    assert pruning.plan(model, adapter, scores, target_params=0.005).pruning_ratio == ratio
    gs = adapter.group_sets(model, 1)[0]                      # 6 query heads in 2 kv blocks
    assert pruning.select(gs, torch.tensor([5.0, 4, 3, 0.1, 0.2, 0.3]), 2) == [0, 1, 4, 5]
    with pytest.raises(ValueError, match=r"n_remove=1 for 1\.head: must be a multiple of 2"):
        pruning.select(gs, torch.rand(6), 1)


def _state(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same_state(model, before: dict) -> bool:
    after = model.state_dict()
    return after.keys() == before.keys() and all(after[k].shape == v.shape and torch.equal(after[k], v)
                                                 for k, v in before.items())


def test_apply_refuses_a_plan_keeping_one_head_three_times_and_changes_nothing():
    """Issue 30: keep [0, 0, 0] used to be applied, scrambling the layer with duplicated rows."""
    model, _, adapter = aeflib.models.load("tiny-llama")
    p = _plan(model, adapter, ratio=0.25)
    p.keep["1.head"] = [0, 0, 0]
    before = _state(model)
    with pytest.raises(StructureError, match=r"nothing was cut: 1\.head: kept indices \[0\] repeat"):
        pruning.apply(model, adapter, p)
    assert _same_state(model, before) and not hasattr(model, "aef_plans")


def test_apply_refuses_a_plan_whose_last_layer_does_not_match_before_cutting_the_first():
    """Issue 30 kind 5: the earlier layers were cut before the later layer's StructureError."""
    model, _, adapter = aeflib.models.load("tiny-gqa")
    p = _plan(model, adapter, ratio=0.5)
    last = f"{p.layers[-1]}.channel"
    p.n_groups[last] += 1
    before = _state(model)
    with pytest.raises(StructureError, match=rf"{last}: layer {p.layers[-1]} has 160 channel groups, the plan was "
                                             r"made for 161"):
        pruning.apply(model, adapter, p)
    assert _same_state(model, before) and not hasattr(model, "aef_plans")


def _corrupt(p: PruningPlan, model, adapter, rng) -> tuple[PruningPlan, str]:
    """A copy of ``p`` with one seeded corruption, mostly in its last layer (so earlier layers would cut first)."""
    bad = PruningPlan.from_dict(copy.deepcopy(p.to_dict()))
    keys = sorted(bad.keep, key=lambda k: pruning.split_key(k))
    key = keys[-1] if rng.random() < 0.7 else rng.choice(keys)
    kept, n = bad.keep[key], bad.n_groups[key]
    kind = rng.choice(["duplicate", "out-of-range", "negative", "wrong-count", "empty", "unknown-layer",
                       "unknown-kind", "group-count", "unsorted", "not-int"])
    if kind == "duplicate":
        bad.keep[key] = sorted([*kept[:-1], kept[0]])
    elif kind == "out-of-range":
        bad.keep[key] = [*kept[:-1], n + rng.randrange(3)]
    elif kind == "negative":
        bad.keep[key] = [-1 - rng.randrange(3), *kept[1:]]
    elif kind == "wrong-count":  # one block keeps one group fewer (GQA), or a set keeps all and one more
        gs = next(g for g in adapter.group_sets(model, pruning.split_key(key)[0]) if g.key == key)
        bad.keep[key] = kept[1:] if gs.blocks > 1 else [*range(n), 0]
    elif kind == "empty":
        bad.keep[key] = []
    elif kind == "unknown-layer":
        layer = adapter.n_layers(model) + rng.randrange(5)
        bad.keep[f"{layer}.head"], bad.n_groups[f"{layer}.head"] = [0], 4
    elif kind == "unknown-kind":
        bad.keep[f"{pruning.split_key(key)[0]}.neuron"], bad.n_groups[f"{pruning.split_key(key)[0]}.neuron"] = [0], 2
    elif kind == "group-count":
        bad.n_groups[key] = n + rng.choice([-1, 1, n])
    elif kind == "unsorted":
        bad.keep[key] = kept[::-1] if len(kept) > 1 else [*kept, kept[0]]
    else:
        bad.keep[key] = [float(i) for i in kept]
    return bad, kind


@pytest.mark.parametrize("name", TINY_NAMES)
def test_apply_refuses_every_corrupt_plan_and_leaves_state_dict_and_plans_unchanged(name):
    """Property: seeded corrupt plans (duplicates, out of range, wrong counts, unknown layers or kinds, a bad last
    layer) are refused by apply and mask_removed with StructureError, and the model is exactly as before."""
    import random

    model, _, adapter = aeflib.models.load(name)
    first = pruning.plan(model, adapter, uniform_scores(model, adapter, 1, layers=[0]), pruning_ratio=0.25, layers=[0])
    pruning.apply(model, adapter, first)  # a model with recorded plans
    plans = copy.deepcopy(model.aef_plans)
    good = pruning.plan(model, adapter, uniform_scores(model, adapter, 3, layers=[1, 2, 3]), pruning_ratio=0.5,
                        layers=[1, 2, 3])
    before = _state(model)
    rng = random.Random(name)
    kinds = set()
    for _ in range(40):
        bad, kind = _corrupt(good, model, adapter, rng)
        kinds.add(kind)
        for fn in (pruning.apply, pruning.mask_removed):
            with pytest.raises(StructureError, match="pruning plan refused, nothing was cut"):
                fn(model, adapter, bad)
            assert _same_state(model, before), (kind, fn.__name__)
            assert model.aef_plans == plans, kind
    assert len(kinds) >= 8
    pruning.apply(model, adapter, good)  # the valid plan still applies
    assert len(model.aef_plans) == 2


def test_plan_refuses_a_reversed_layer_range():
    """Issue 30: range(3, 1) is empty; it gave a plan that prunes nothing."""
    model, _, adapter = aeflib.models.load("tiny-llama")
    with pytest.raises(ValueError, match=r"layers=range\(3, 1\) is empty; give ascending decoder layers"):
        _plan(model, adapter, layers=range(3, 1))
    with pytest.raises(ValueError, match=r"layers=\[\] is empty"):
        pruning.solve_ratio(model, adapter, 0.01, layers=[])
