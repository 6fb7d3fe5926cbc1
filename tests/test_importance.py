from __future__ import annotations

import copy

import pytest
import torch

import aeflib.models
from aeflib import importance
from aeflib.importance import ESTIMATORS, estimate, slice_scores
from aeflib.models import Slice
from aeflib.scores import Scores

ALL = list(ESTIMATORS)


def _relative_error(a: Scores, b: Scores) -> float:
    return max(((a[c][k] - b[c][k]).abs().max() / b[c][k].abs().max().clamp_min(1e-30)).item()
               for c in a.criteria for k in a[c])


def test_every_criterion_runs_on_every_architecture(tiny, calib):
    """Field-case 18: no criterion is unreachable for some module type."""
    model, _, adapter = tiny
    scores = estimate(model, adapter, calib, criteria=ALL)
    sets = adapter.all_group_sets(model)
    for c in ALL:
        for gs in sets:
            v = scores[c][gs.key]
            assert v.shape == (gs.n,) and v.dtype == torch.float32 and torch.isfinite(v).all(), (c, gs.key)


def test_bounded_path_equals_naive_path(tiny, calib):
    model, _, adapter = tiny
    bounded = estimate(model, adapter, calib, criteria=ALL)
    naive = estimate(model, adapter, calib, criteria=ALL, path="naive")
    assert _relative_error(bounded, naive) < 1e-6


def test_chunked_calibration_equals_one_pass(calib):
    model, _, adapter = aeflib.models.load("tiny-gqa")
    whole = estimate(model, adapter, calib, criteria=["vector", "element1", "element2"])
    chunked = estimate(model, adapter, calib, criteria=["vector", "element1", "element2"], chunk_size=4)
    assert _relative_error(chunked, whole) < 1e-5


def test_estimation_leaves_weights_flags_and_grads_as_they_were(calib):
    model, _, adapter = aeflib.models.load("tiny-llama")
    before = copy.deepcopy(model.state_dict())
    model.model.embed_tokens.weight.requires_grad_(False)
    estimate(model, adapter, calib)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert not model.model.embed_tokens.weight.requires_grad
    assert model.model.layers[1].mlp.up_proj.weight.requires_grad


def test_scores_are_deterministic_per_seed(calib):
    model, _, adapter = aeflib.models.load("tiny-bloom")
    a = estimate(model, adapter, calib, criteria=["random", "element2"], seed=1)
    b = estimate(model, adapter, calib, criteria=["random", "element2"], seed=1)
    c = estimate(model, adapter, calib, criteria=["random"], seed=2)
    assert all(torch.equal(a[k][s], b[k][s]) for k in a.criteria for s in a[k])
    assert not torch.equal(a["random"]["1.head"], c["random"]["1.head"])


def test_bf16_model_gives_finite_fp32_scores_and_keeps_dtype(calib):
    """Field-case 11."""
    model, _, adapter = aeflib.models.load("tiny-llama", dtype="bfloat16")
    scores = estimate(model, adapter, calib, criteria=ALL)
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for c in ALL for v in scores[c].values())
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


# ---- hand-computed values --------------------------------------------------------------------------------------
def test_slice_scores_match_hand_computation_on_2x3_rows():
    """Two groups of one row each in a [2, 3] weight (an MLP input projection, rows = channels)."""
    w = torch.tensor([[1.0, -2.0, 3.0], [0.5, 0.5, -1.0]])
    g = torch.tensor([[0.1, 0.2, -0.1], [1.0, -1.0, 2.0]])
    f = torch.tensor([[0.2, 0.0, 0.1], [0.0, 1.0, 1.0]])
    s = Slice("mlp.up_proj.weight", 0, (2,), 0, "up", 3)
    out = slice_scores(s, w, g, f, ["l1", "l2", "vector", "element1", "element2"])
    # salience W*g = [[0.1, -0.4, -0.3], [0.5, -0.5, -2.0]]
    torch.testing.assert_close(out["l1"], torch.tensor([6.0, 2.0]))
    torch.testing.assert_close(out["l2"], torch.tensor([14.0, 1.5]))
    torch.testing.assert_close(out["vector"], torch.tensor([0.6, 2.0]))
    torch.testing.assert_close(out["element1"], torch.tensor([0.8, 3.0]))
    # s - W^2 F / 2 = [[0.1-0.1, -0.4, -0.3-0.45], [0.5, -0.5-0.125, -2.0-0.5]]
    torch.testing.assert_close(out["element2"], torch.tensor([1.15, 3.625]))


def test_column_slice_scores_each_column_as_a_vector():
    w = torch.tensor([[1.0, 2.0], [3.0, -4.0]])
    g = torch.tensor([[1.0, 1.0], [-1.0, 1.0]])
    s = Slice("mlp.down_proj.weight", 1, (2,), 0, "down", 2)
    out = slice_scores(s, w, g, None, ["vector", "element1"])
    torch.testing.assert_close(out["vector"], torch.tensor([2.0, 2.0]))     # |1-3|, |2-4|
    torch.testing.assert_close(out["element1"], torch.tensor([4.0, 6.0]))


def test_estimate_matches_a_hand_computed_gradient_on_a_two_layer_model():
    """element1 of one channel = Σ|W ⊙ dL/dW| over its gate row, up row and down column, gradients from autograd."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=24, num_hidden_layers=2,
                      num_attention_heads=2, head_dim=16)
    model = LlamaForCausalLM(cfg).eval()
    adapter = aeflib.models.adapter_for(model)
    ids = torch.randint(0, 50, (3, 8))
    scores = estimate(model, adapter, ids, criteria=["element1", "vector"], layers=[1])
    model(input_ids=ids, labels=ids).loss.backward()
    mlp = model.model.layers[1].mlp
    c = 5
    expected = sum((m.weight * m.weight.grad)[c].abs().sum() for m in (mlp.gate_proj, mlp.up_proj))
    expected = expected + (mlp.down_proj.weight * mlp.down_proj.weight.grad)[:, c].abs().sum()
    torch.testing.assert_close(scores["element1"]["1.channel"][c], expected, rtol=1e-5, atol=1e-9)
    attn = model.model.layers[1].self_attn
    head1 = slice(16, 32)
    vec = sum((m.weight * m.weight.grad)[head1].sum(1).abs().sum() for m in (attn.q_proj, attn.k_proj, attn.v_proj))
    vec = vec + (attn.o_proj.weight * attn.o_proj.weight.grad)[:, head1].sum(0).abs().sum()
    torch.testing.assert_close(scores["vector"]["1.head"][1], vec, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("reduction", ["sum", "mean", "max", "prod"])
def test_group_reduction_combines_per_slice_scores(reduction, calib):
    """Oracle by composition: reduce the per-slice scores ourselves and compare (Torch-Pruning's test idea)."""
    model, _, adapter = aeflib.models.load("tiny-llama")
    scores = estimate(model, adapter, calib, criteria=["l1"], reduction=reduction)
    gs = adapter.group_sets(model, 1)[1]
    layer = adapter.decoder_layers(model)[1]
    per_slice = torch.stack([slice_scores(s, layer.get_parameter(s.param), None, None, ["l1"])["l1"]
                             for s in gs.slices])
    expected = importance.REDUCTIONS[reduction](per_slice)
    torch.testing.assert_close(scores["l1"][gs.key], expected)


@pytest.mark.parametrize("kw, message", [
    ({"criteria": ["taylor"]}, r"unknown criteria \['taylor'\].*element1"),
    ({"reduction": "median"}, r"unknown reduction 'median'.*prod"),
    ({"path": "fast"}, r"unknown path 'fast'"),
    ({"chunk_size": 0}, "chunk_size=0 must be >= 1"),
])
def test_estimate_rejects_bad_arguments(kw, message, calib):
    model, _, adapter = aeflib.models.load("tiny-llama")
    with pytest.raises(ValueError, match=message):
        estimate(model, adapter, calib, **kw)


def test_estimate_rejects_float_calibration():
    model, _, adapter = aeflib.models.load("tiny-llama")
    with pytest.raises(ValueError, match=r"integer tensor \[N, L\]"):
        estimate(model, adapter, torch.rand(2, 8))


def test_scores_roundtrip_through_safetensors(tmp_path, calib):
    model, _, adapter = aeflib.models.load("tiny-bloom")
    scores = estimate(model, adapter, calib, criteria=["l2", "vector"])
    again = Scores.load(scores.save(tmp_path / "scores.safetensors"))
    assert again.criteria == scores.criteria and again.meta == scores.meta
    assert all(torch.equal(again[c][k], scores[c][k]) for c in scores.criteria for k in scores[c])
    assert not list(tmp_path.glob(".*"))


def test_estimate_accepts_one_criterion_as_a_string_and_scores_support_in(calib):
    model, _, adapter = aeflib.models.load("tiny-llama")
    scores = estimate(model, adapter, calib, criteria="l2")
    assert scores.criteria == ["l2"]
    assert "l2" in scores and "vector" not in scores


def test_plan_given_a_whole_scores_object_says_to_pick_a_criterion():
    from aeflib import pruning

    model, _, adapter = aeflib.models.load("tiny-llama")
    sets = adapter.all_group_sets(model, None)
    scores = Scores({"l2": {gs.key: torch.ones(gs.n) for gs in sets}})
    with pytest.raises(TypeError, match=r"pass one criterion's scores, e\.g\. scores\['l2'\]"):
        pruning.plan(model, adapter, scores, pruning_ratio=0.25)
