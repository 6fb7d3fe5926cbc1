from __future__ import annotations

from dataclasses import dataclass

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


MEASURING = [m for m, variant in fusion.FUSIONS.items() if variant.measures]


@pytest.mark.parametrize("method", MEASURING)
def test_measuring_methods_give_convex_weights_and_leave_model_unchanged(method, calib):
    model, _, adapter = aeflib.models.load("tiny-gqa")
    scores = estimate(model, adapter, calib, criteria=["vector", "element2"])
    before = aeflib.models.checksum(model)
    result = fuse(scores, method, model=model, adapter=adapter, calibration=calib, pruning_ratio=0.5, steps=3)
    assert set(result.influence) == set(result.weights) and len(result.settings["fingerprint"]) == 12
    assert aeflib.models.checksum(model) == before
    assert all(p.requires_grad for p in model.parameters())
    for k, (a_f, a_c) in result.weights.items():
        assert 0 <= a_f <= 1 and a_f + a_c == pytest.approx(1)
        assert torch.isfinite(result.fused[k]).all()
    p = pruning.plan(model, adapter, result.fused, pruning_ratio=0.5, criterion=result.name)
    assert p.criterion == method


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gqa", "tiny-baichuan", "tiny-bloom"])
def test_replaying_the_layers_before_a_pruned_set_gives_the_full_forward_loss(name, calib):
    """aef-layer restarts the forward at the pruned layer (``_Prefix``): same increases as full forward passes."""
    model, _, adapter = aeflib.models.load(name)
    scores = estimate(model, adapter, calib, criteria=["vector", "element1"])
    f, c = scores["element1"], scores["vector"]
    sets = [gs for gs in adapter.all_group_sets(model) if gs.key in f]
    masks = fusion._GroupMask(model, adapter, sets)
    try:
        full = fusion._measure_sets(model, masks, sets, f, c, 0.5, calib)
        replayed = fusion._measure_sets(model, masks, sets, f, c, 0.5, calib, adapter)
    finally:
        masks.remove()
    assert replayed[0] == pytest.approx(full[0], abs=1e-6)
    for k, (d_f, d_c) in full[1].items():
        assert replayed[1][k] == pytest.approx((d_f, d_c), abs=1e-5), k
    assert all("forward" not in layer.__dict__ for layer in adapter.decoder_layers(model))


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
    ({"method": "aef-element", "steps": 0}, "steps=0 must be an integer >= 1"),
    ({"method": "aef-element", "patience": 1.5}, "patience=1.5 must be an integer >= 1"),
    ({"method": "aef-element", "lr": -1}, "lr=-1 must be a positive number"),
])
def test_fuse_rejects_bad_arguments(kw, message):
    with pytest.raises(ValueError, match=message):
        fuse(_scores(SETS), **kw)


# ---- influence -------------------------------------------------------------------------------------------------
def test_spearman_known_answers():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    assert fusion.spearman(x, torch.tensor([2.0, 1.0, 4.0, 3.0, 5.0])) == pytest.approx(0.8)   # 1 - 6·4/(5·24)
    assert fusion.spearman(x, x.flip(0)) == pytest.approx(-1.0)
    assert fusion.spearman(x, torch.exp(x)) == pytest.approx(1.0)                                # any increasing map
    assert fusion.spearman(x, torch.ones(5)) == 0.0                                             # constant: no ranking
    # ties share their mean rank: scipy.stats.spearmanr([1,2,3,4], [1,1,2,2]) = 0.894427...
    assert fusion.spearman(x[:4], torch.tensor([1.0, 1.0, 2.0, 2.0])) == pytest.approx(0.8944272, abs=1e-6)
    with pytest.raises(ValueError, match=r"same shape; got \(5,\) and \(4,\)"):
        fusion.spearman(x, x[:4])


@pytest.mark.parametrize("weights, expected", [((1, 0), (1.0, None)), ((0, 1), (None, 1.0))])
def test_influence_is_one_with_the_input_a_unit_weight_selects(weights, expected):
    result = fuse(_scores(SETS), "fixed", weights=weights)
    for rho_f, rho_c in result.influence.values():
        if expected[0] is not None:
            assert rho_f == pytest.approx(1.0)
        if expected[1] is not None:
            assert rho_c == pytest.approx(1.0)
    assert result.to_dict()["influence"]["1.head"] == list(result.influence["1.head"])


def test_default_normalisation_gives_equal_weights_equal_influence_where_sum_does_not():
    """Coarse spreads far more than fine (heavy tail): with ``sum`` the 50/50 blend follows coarse; ``rank`` not."""
    gen = torch.Generator().manual_seed(1)
    fine = {"1.channel": 1 + 0.3 * torch.rand(4000, generator=gen)}                  # narrow: CV ≈ 0.08
    coarse = {"1.channel": torch.exp(2 * torch.randn(4000, generator=gen))}          # lognormal: CV ≫ 1
    scores = Scores({"element2": fine, "vector": coarse})
    rank = fuse(scores, "fixed", weights=(0.5, 0.5)).influence["1.channel"]
    assert fusion.DEFAULT_NORMALIZATION == "rank"
    assert abs(rank[0] - rank[1]) < 0.05 and rank[0] == pytest.approx(0.707, abs=0.05)       # 1/√2 each
    by_sum = fuse(scores, "fixed", weights=(0.5, 0.5), normalize_with="sum").influence["1.channel"]
    assert by_sum[1] > 0.85 and by_sum[0] < 0.4                                           # follows coarse


# ---- the tuned variants ------------------------------------------------------------------------------------------
def test_split_holdout_keeps_the_last_windows_apart():
    windows = torch.arange(20).view(10, 2)
    fit, held = fusion.split_holdout(windows)
    assert fit.shape[0] == 7 and torch.equal(held, windows[7:])
    other = torch.zeros(3, 4, dtype=torch.long)
    assert fusion.split_holdout(windows, other)[1] is other
    with pytest.raises(ValueError, match=r"cannot hold out windows from 1 calibration window"):
        fusion.split_holdout(windows[:1])


@pytest.fixture
def planted():
    """A tiny model with a known answer: in every pruned set, half the groups are dead (their output is zeroed).

    ``good`` ranks the dead half lowest, ``bad`` is its reverse. Pruning by ``good`` at ratio 0.5 leaves the loss
    exactly unchanged; pruning by ``bad`` removes live groups. The windows are the model's own greedy text under
    sharpened logits, so removing live groups raises their loss (by ~4 nats here).
    """
    model, _, adapter = aeflib.models.load("tiny-llama")
    with torch.no_grad():
        model.lm_head.weight.mul_(30)
    gen = torch.Generator().manual_seed(0)
    sets = adapter.all_group_sets(model)
    dead = fusion._GroupMask(model, adapter, sets)
    good = {}
    for gs in sets:
        good[gs.key] = torch.rand(gs.n, generator=gen)
        alive = torch.zeros(gs.n)
        alive[torch.argsort(good[gs.key])[gs.n // 2:]] = 1
        dead.masks[gs.key] = alive
    start = torch.randint(0, 49152, (6, 1), generator=gen)
    windows = model.generate(input_ids=start, attention_mask=torch.ones_like(start), max_new_tokens=15,
                             do_sample=False, pad_token_id=2)
    yield model, adapter, good, {k: v.max() - v for k, v in good.items()}, windows
    dead.remove()


@pytest.mark.parametrize("method", ["aef-layer-tuned", "aef-blend", "aef-agree"])
def test_tuned_variants_fall_back_to_the_good_estimate_when_the_other_is_reversed(method, planted):
    """Fine = the known-good ranking, coarse = its reverse: every tuned choice must land on fine's plan."""
    model, adapter, good, bad, calib = planted
    scores = Scores({"element2": good, "vector": bad})
    result = fuse(scores, method, model=model, adapter=adapter, calibration=calib, pruning_ratio=0.5)
    ref = pruning.plan(model, adapter, good, pruning_ratio=0.5)
    got = pruning.plan(model, adapter, result.fused, pruning_ratio=0.5)
    assert got.keep == ref.keep
    chosen = result.details["chosen"] if method == "aef-layer-tuned" else "channel=1,head=1"
    assert result.details["holdout_loss"][chosen] == min(result.details["holdout_loss"].values())


def test_aef_layer_tuned_judges_every_candidate_on_held_out_windows(planted):
    model, adapter, good, bad, calib = planted
    result = fuse(Scores({"element2": bad, "vector": good}), "aef-layer-tuned", model=model, adapter=adapter,
                  calibration=calib, pruning_ratio=0.5)
    losses = result.details["holdout_loss"]
    assert set(losses) == {"fine", "coarse", "hard", *(f"tau={t:g}" for t in fusion.TEMPERATURES)}
    assert losses[result.details["chosen"]] == min(losses.values())
    assert losses["coarse"] + 1 < losses["fine"]                   # the good ranking hurts less than its reverse
    assert result.weights and all(a_c >= 0.5 for _, a_c in result.weights.values())
    assert (result.details["fit_windows"], result.details["holdout_windows"]) == (4, 2)


def test_aef_agree_removes_what_both_remove_and_keeps_what_both_keep(calib):
    model, _, adapter = aeflib.models.load("tiny-gqa")
    scores = estimate(model, adapter, calib, criteria=["vector", "element2"])
    result = fuse(scores, "aef-agree", model=model, adapter=adapter, calibration=calib, pruning_ratio=0.5)
    kept = {"fine": pruning.plan(model, adapter, scores["element2"], pruning_ratio=0.5),
            "coarse": pruning.plan(model, adapter, scores["vector"], pruning_ratio=0.5)}
    fused = pruning.plan(model, adapter, result.fused, pruning_ratio=0.5)
    for kind in ("head", "channel"):
        for layer, keep in fused.kept(kind).items():
            a, b = set(kept["fine"].kept(kind)[layer]), set(kept["coarse"].kept(kind)[layer])
            assert a & b <= set(keep) <= a | b, (kind, layer)


def test_aef_learned_stops_early_and_keeps_its_best_held_out_step(calib):
    model, _, adapter = aeflib.models.load("tiny-gqa")
    scores = estimate(model, adapter, calib, criteria=["vector", "element2"])
    result = fuse(scores, "aef-learned", model=model, adapter=adapter, calibration=calib, pruning_ratio=0.5,
                  steps=40, patience=2, lr=0.5)
    d = result.details
    assert d["steps_run"] <= 40 and len(d["holdout_loss"]) == d["steps_run"] + 1
    assert d["holdout_loss"][d["best_step"]] == min(d["holdout_loss"])
    assert d["steps_run"] - d["best_step"] <= 2 or d["steps_run"] == 40
    assert result.settings["patience"] == 2 and result.settings["steps"] == 40


def test_fingerprint_changes_with_the_settings_and_only_with_them():
    a = fuse(_scores(SETS), "fixed", weights=(0.3, 0.7)).settings["fingerprint"]
    assert fuse(_scores(SETS, seed=5), "fixed", weights=(0.3, 0.7)).settings["fingerprint"] == a
    assert fuse(_scores(SETS), "fixed", weights=(0.4, 0.6)).settings["fingerprint"] != a
    assert fuse(_scores(SETS), "fixed", weights=(0.3, 0.7)).scores.meta["fixed"]["fingerprint"] == a


def test_oracle_is_not_a_method_and_picks_the_set_by_evaluation_loss(planted):
    model, adapter, good, bad, evaluation = planted
    result = fusion.oracle_choice(Scores({"element2": good, "vector": bad}), evaluation, model=model,
                                  adapter=adapter, pruning_ratio=0.5)
    assert fusion.ORACLE not in fusion.FUSIONS and result.name == result.method == "oracle"
    for k, inc in result.details["loss_increase"].items():
        expected = (1.0, 0.0) if inc["fine"] < inc["coarse"] else (0.0, 1.0) if inc["coarse"] < inc["fine"] \
            else (0.5, 0.5)
        assert result.weights[k] == expected, k
    assert "evaluation" in result.settings["note"]
    assert all(w == (1.0, 0.0) for w in result.weights.values())  # fine = good here: every set picks it


# ---- variants as objects -----------------------------------------------------------------------------------------
def test_every_variant_declares_its_name_needs_and_settings():
    assert list(fusion.FUSIONS) == ["aef-layer", "aef-layer-tuned", "aef-element", "aef-blend", "aef-agree",
                                    "aef-learned", "fixed"]
    for name, variant in fusion.FUSIONS.items():
        assert isinstance(variant, fusion.FusionVariant) and variant.name == name
        assert variant.needs <= set(fusion.NEEDS) and variant.measures == bool({"model", "calibration"} & variant.needs)
    assert fusion.AefLayerTuned.Params().temperatures == fusion.TEMPERATURES
    assert fusion.AefBlend.Params().grid == fusion.AefAgree.Params().grid == fusion.BLEND_GRID
    assert fusion.AefLearned.Params() == fusion.AefLearned.Params(steps=50, lr=0.1, patience=8)


def test_fingerprints_are_those_of_the_keyword_bag_era():
    """The settings and their hash are unchanged by the variant objects (values from commit 7697dd2)."""
    a = fuse(_scores(SETS), "fixed", weights=(0.3, 0.7))
    b = fuse(_scores(SETS), "aef-element", temperature=0.5)
    assert (a.settings["fingerprint"], b.settings["fingerprint"]) == ("00c976c0466a", "a88e04fbd102")
    assert list(a.settings) == ["method", "fine", "coarse", "normalize", "temperature", "pruning_ratio", "alias_of",
                                "weights", "fingerprint"]


def test_params_object_equals_the_keyword_form():
    by_keyword = fuse(_scores(SETS), "fixed", weights=(0.3, 0.7))
    by_params = fuse(_scores(SETS), "fixed", params=fusion.Fixed.Params(weights=(0.3, 0.7)))
    assert by_params.settings == by_keyword.settings
    assert all(torch.equal(by_params.fused[k], by_keyword.fused[k]) for k in SETS)


@pytest.mark.parametrize("make, message", [
    (lambda: fusion.AefLayerTuned.Params(temperatures=()), r"temperatures=\(\) must be a non-empty tuple"),
    (lambda: fusion.AefLayerTuned.Params(temperatures=(1.0, 0)), r"temperatures=\(1.0, 0\).*> 0"),
    (lambda: fusion.GridParams(grid=(0.5, 1.5)), r"grid=\(0.5, 1.5\).*in \[0, 1\]"),
    (lambda: fusion.AefLearned.Params(steps=0), "steps=0 must be an integer >= 1"),
    (lambda: fusion.AefLearned.Params(lr=float("nan")), "lr=nan must be a positive number"),
    (lambda: fusion.Fixed.Params(weights=(1, -1)), "needs weights="),
])
def test_variant_params_validate_their_values(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_params_of_another_variant_are_rejected():
    with pytest.raises(TypeError, match=r"params for 'aef-element' must be a NoParams; got GridParams"):
        fuse(_scores(SETS), "aef-element", params=fusion.GridParams())


def test_a_new_variant_is_one_class_and_one_registry_entry(monkeypatch):
    """fuse() dispatches on the object: no name is branched on; its settings enter the fingerprint."""

    class Coarse(fusion.FusionVariant):
        name = "coarse-only"

        @dataclass(frozen=True)
        class Params:
            scale: float = 1.0

        def fuse(self, inputs, params):
            return fusion.FusionOutput({k: params.scale * v for k, v in inputs.coarse.items()},
                                       {k: (0.0, 1.0) for k in inputs.coarse}, {"scale": params.scale})

    monkeypatch.setitem(fusion.FUSIONS, "coarse-only", Coarse())
    result = fuse(_scores(SETS), "coarse-only", params=Coarse.Params(scale=2.0))
    assert result.settings["scale"] == 2.0 and result.details == {"scale": 2.0}
    assert torch.equal(result.fused["1.head"], 2 * normalize(_scores(SETS)["vector"]["1.head"], "rank"))
    assert result.settings["fingerprint"] != fuse(_scores(SETS), "coarse-only").settings["fingerprint"]


def test_a_variant_declaring_an_unknown_input_is_refused_at_definition():
    with pytest.raises(TypeError, match=r"needs unknown inputs \['evaluation'\]; valid: \['model'"):
        class Peek(fusion.FusionVariant):
            name = "peek"
            needs = frozenset({"model", "evaluation"})

            def fuse(self, inputs, params):
                raise AssertionError


@pytest.mark.parametrize(("coarse_sets", "message"), [
    ({"1.head": 8, "1.channel": 64, "2.channel": 64},
     r"score different group sets: only 'element2' has \['2\.head'\], only 'vector' has \[\]"),
    ({**SETS, "3.head": 8}, r"only 'element2' has \[\], only 'vector' has \['3\.head'\]"),
    ({**SETS, "2.head": 6}, r"different group counts .* in 2\.head: \[8\] vs \[6\]"),
])
@pytest.mark.parametrize("method", ["aef-element", "fixed", "aef-layer"])
def test_fuse_refuses_fine_and_coarse_over_different_groups(coarse_sets, message, method):
    fine, coarse = _scores(SETS), _scores(coarse_sets, seed=1)
    scores = Scores({"element2": fine["element2"], "vector": coarse["vector"]})
    with pytest.raises(ValueError, match=message):
        fuse(scores, method, weights=(0.5, 0.5))  # refused before the missing model is noticed


def test_fuse_measuring_method_refuses_scores_of_another_model(calib):
    model, _, adapter = aeflib.models.load("tiny-llama")
    good = {gs.key: torch.rand(gs.n) for gs in adapter.all_group_sets(model, [1, 2])}
    for sets, message in ((SETS | {"7.head": 8}, r"group sets the model does not have: \['7\.head'\] .*4 layers"),
                          ({**good, "1.head": torch.rand(5)}, r"1\.head: 5 scores, the model has 4 groups")):
        per = {k: torch.rand(v) if isinstance(v, int) else v for k, v in sets.items()}
        with pytest.raises(ValueError, match=message):
            fuse(Scores({"element2": per, "vector": per}), "aef-layer", model=model, adapter=adapter,
                 calibration=calib)


@pytest.mark.parametrize("coarse", ["wanda-sp", "fluctuation"])
def test_fuse_takes_an_activation_estimate_as_the_coarse_input_by_name(coarse, calib):
    """AEF's fusion over any two estimates: element1 with FLAP's Wanda-sp or fluctuation; unit weights reproduce
    each input's ranking, and a measuring variant runs on them."""
    from aeflib.orchestration.settings import RunSettings

    model, _, adapter = aeflib.models.load("tiny-llama")
    scores = estimate(model, adapter, calib, criteria=["element1", coarse])
    for weights, source in (((1, 0), "element1"), ((0, 1), coarse)):
        fused = fuse(scores, "fixed", fine="element1", coarse=coarse, weights=weights).fused
        for k in scores.group_keys:
            assert torch.equal(torch.argsort(fused[k], stable=True), torch.argsort(scores[source][k], stable=True))
    result = fuse(scores, "aef-layer", fine="element1", coarse=coarse, model=model, adapter=adapter,
                  calibration=calib, pruning_ratio=0.25)
    assert result.settings["coarse"] == coarse and result.name in result.scores
    settings = RunSettings(model="tiny-llama", fine="element1", coarse=coarse, method=coarse,
                           criteria=["element1", coarse])
    assert settings.validate() is settings
