from __future__ import annotations

import pytest
import torch

import aeflib.models
from aeflib import fusion, pruning
from aeflib.fusion import fuse, normalize
from aeflib.importance import estimate
from aeflib.scores import Scores


def _scores(sets: dict[str, int], seed=0, scale_fine=1.0, scale_coarse=1.0) -> Scores:
    gen = torch.Generator().manual_seed(seed)
    fine = {k: torch.rand(n, generator=gen) * scale_fine for k, n in sets.items()}
    coarse = {k: torch.rand(n, generator=gen) * scale_coarse for k, n in sets.items()}
    return Scores({"element2": fine, "vector": coarse})


SETS = {"1.head": 8, "1.channel": 64, "2.head": 8, "2.channel": 64}


@pytest.mark.parametrize("how", ["sum", "zscore", "rank"])
@pytest.mark.parametrize("weights, source", [((1, 0), "element2"), ((0, 1), "vector")])
def test_unit_weights_reproduce_each_estimate_ranking_exactly(how, weights, source):
    scores = _scores(SETS)
    fused = fuse(scores, "fixed", weights=weights, normalize_with=how).fused
    for k in SETS:
        assert torch.equal(torch.argsort(fused[k], stable=True), torch.argsort(scores[source][k], stable=True))


@pytest.mark.parametrize("method", ["aef-element", "fixed"])
def test_permuting_groups_permutes_the_fused_scores(method):
    scores = _scores(SETS)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(3))
    permuted = Scores({c: {k: (v[perm] if k == "1.head" else v) for k, v in per.items()}
                       for c, per in scores.values.items()})
    a = fuse(scores, method, weights=(0.3, 0.7)).fused["1.head"]
    b = fuse(permuted, method, weights=(0.3, 0.7)).fused["1.head"]
    torch.testing.assert_close(a[perm], b)


@pytest.mark.parametrize("how", ["sum", "zscore", "rank"])
def test_a_million_fold_scale_gap_does_not_let_one_estimate_swamp_the_other(how):
    """Field-case 13: after normalisation, equal weights mean equal influence whatever the raw scales."""
    balanced = fuse(_scores(SETS), "fixed", weights=(0.5, 0.5), normalize_with=how).fused
    skewed = fuse(_scores(SETS, scale_fine=1e-6, scale_coarse=1.0), "fixed", weights=(0.5, 0.5),
                  normalize_with=how).fused
    for k in SETS:
        torch.testing.assert_close(torch.argsort(balanced[k]), torch.argsort(skewed[k]))


def test_rank_normalisation_averages_ties():
    torch.testing.assert_close(normalize(torch.tensor([3.0, 1.0, 3.0, 2.0]), "rank"),
                               torch.tensor([2.5, 0.0, 2.5, 1.0]) / 3)


def test_aef_element_weights_are_a_per_group_softmax():
    scores = _scores({"1.head": 4})
    result = fuse(scores, "aef-element", temperature=0.5)
    f, c = normalize(scores["element2"]["1.head"], "rank"), normalize(scores["vector"]["1.head"], "rank")
    alpha = torch.softmax(torch.stack([f, c]) / 0.5, 0)
    torch.testing.assert_close(result.fused["1.head"], alpha[0] * f + alpha[1] * c)
    assert result.weights["1.head"][0] == pytest.approx(alpha[0].mean().item())


@pytest.mark.parametrize("method", ["aef-layer", "aef-learned"])
def test_measuring_methods_give_convex_weights_and_leave_model_unchanged(method, calib):
    model, _, adapter = aeflib.models.load("tiny-gqa")
    scores = estimate(model, adapter, calib, criteria=["vector", "element2"])
    before = aeflib.models.checksum(model)
    result = fuse(scores, method, model=model, adapter=adapter, calibration=calib, pruning_ratio=0.5, steps=3)
    assert aeflib.models.checksum(model) == before
    assert all(p.requires_grad for p in model.parameters())
    for k, (a_f, a_c) in result.weights.items():
        assert 0 <= a_f <= 1 and a_f + a_c == pytest.approx(1)
        assert torch.isfinite(result.fused[k]).all()
    p = pruning.plan(model, adapter, result.fused, pruning_ratio=0.5, criterion=result.name)
    assert p.criterion == method


def test_aef_layer_prefers_the_estimate_whose_removal_hurts_less(calib):
    """Give the coarse estimate the true ranking and the fine one its reverse: the gate must favour coarse."""
    model, _, adapter = aeflib.models.load("tiny-llama")
    good = estimate(model, adapter, calib, criteria=["element1"])["element1"]
    scores = Scores({"vector": good, "element2": {k: v.max() - v + 1e-3 for k, v in good.items()}})
    result = fuse(scores, "aef-layer", model=model, adapter=adapter, calibration=calib, pruning_ratio=0.5)
    for k, inc in result.details["loss_increase"].items():
        if inc["coarse"] < inc["fine"]:
            assert result.weights[k][1] > 0.5, k


def test_aef_alias_resolves_to_the_documented_default():
    result = fuse(_scores(SETS), "aef-element")
    assert result.method == "aef-element"
    assert fusion.DEFAULT_METHOD in fusion.FUSIONS


@pytest.mark.parametrize("kw, message", [
    ({"method": "attention"}, r"unknown fusion method 'attention'.*aef-layer"),
    ({"method": "aef-element", "normalize_with": "minmax"}, r"unknown normalisation 'minmax'"),
    ({"method": "aef-element", "temperature": 0}, "temperature=0 must be a positive number"),
    ({"method": "aef-element", "fine": "element1"}, r"scores lack \['element1'\]"),
    ({"method": "aef-layer"}, "pass model=, adapter= and calibration="),
    ({"method": "fixed"}, "needs weights="),
    ({"method": "fixed", "weights": (0, 0)}, "needs weights="),
])
def test_fuse_rejects_bad_arguments(kw, message):
    with pytest.raises(ValueError, match=message):
        fuse(_scores(SETS), **kw)
