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


def test_fisher_one_layer_slice_at_a_time_equals_all_at_once(tiny, calib):
    """A budget below one layer's accumulators: every layer is its own slice of N single-window passes.

    In float64 (the model; accumulation stays fp32) so that the comparison tests the identity mean of per-window
    gradients = gradient of the mean loss, not fp32 GEMM blocking of batch 1 vs batch N (≈1e-6 by itself).
    """
    model, _, adapter = tiny
    model.double()
    crit = ["vector", "element1", "element2"]
    whole = estimate(model, adapter, calib, criteria=crit, layers=range(4))
    sliced = estimate(model, adapter, calib, criteria=crit, layers=range(4), fisher_memory_gib=1e-9)
    assert whole.meta["fisher_layer_slices"] is None
    assert sliced.meta["fisher_layer_slices"] == [[0], [1], [2], [3]]
    assert _relative_error(sliced, whole) < 1e-6
    naive = estimate(model, adapter, calib, criteria=crit, layers=range(4), path="naive")
    assert _relative_error(sliced, naive) < 1e-6
    assert all(p.grad is None for p in model.parameters())


def test_fisher_slices_pack_consecutive_layers_within_the_budget(calib):
    gib = 2**30
    six = {i: gib // 100 for i in range(6)}                 # all at once: 4 B x 6 layers = 0.24 GiB of Fisher
    assert importance.fisher_layer_slices(six, 0.25) is None
    assert importance.fisher_layer_slices(six, None) is None
    assert importance.fisher_layer_slices(six, 0.17) == [[0, 1], [2, 3], [4, 5]]   # 8 B per weight per slice
    assert importance.fisher_layer_slices(six, 0.1) == [[0], [1], [2], [3], [4], [5]]
    assert importance.fisher_layer_slices(six, 0.01) == [[0], [1], [2], [3], [4], [5]]   # >= 1 layer per slice
    model, _, adapter = aeflib.models.load("tiny-gqa")
    fisher_gib = 4 * sum(p.numel() for p in _grouped_params(model, adapter)) / gib
    assert estimate(model, adapter, calib, criteria="element2", layers=range(4),
                    fisher_memory_gib=fisher_gib * 1.01).meta["fisher_layer_slices"] is None
    assert estimate(model, adapter, calib, criteria="element2", layers=range(4),
                    fisher_memory_gib=fisher_gib * 0.99).meta["fisher_layer_slices"] == [[0], [1], [2], [3]]
    first_order = estimate(model, adapter, calib, criteria="element1", layers=range(4), fisher_memory_gib=1e-9)
    assert first_order.meta["fisher_layer_slices"] is None          # no Fisher asked: one full-batch pass


def _grouped_params(model, adapter):
    layers = adapter.decoder_layers(model)
    return {layers[gs.layer].get_parameter(s.param) for gs in adapter.all_group_sets(model, range(4))
            for s in gs.slices}


def test_fisher_slices_at_llama7b_scale_stay_within_the_default_budget():
    """Layers 4..29 of LLaMA-7B, 202.4 M grouped weights each: 19.6 GiB of Fisher at once, 3 layers per slice."""
    per_layer = 4 * 4096 * 4096 + 3 * 4096 * 11008
    slices = importance.fisher_layer_slices({i: per_layer for i in range(4, 30)}, importance.DEFAULT_FISHER_MEMORY_GIB)
    assert [len(s) for s in slices] == [3] * 8 + [2]
    assert max(8 * per_layer * len(s) for s in slices) <= importance.DEFAULT_FISHER_MEMORY_GIB * 2**30


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


def test_element2_uses_the_fisher_of_each_windows_own_loss():
    """F = (1/N) Σ_j (dL(x_j)/dW)², L(x_j) the mean loss of window j alone (LLM-Pruner ``param_mix``), by hand."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=24, num_hidden_layers=2,
                      num_attention_heads=2, head_dim=16)
    model = LlamaForCausalLM(cfg).eval()
    adapter = aeflib.models.adapter_for(model)
    ids = torch.randint(0, 50, (3, 8))
    scores = estimate(model, adapter, ids, criteria=["element2"], layers=[1])
    sliced = estimate(model, adapter, ids, criteria=["element2"], layers=[1], fisher_memory_gib=1e-9)
    mlp = model.model.layers[1].mlp
    weights = (mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight)
    fisher = [torch.zeros_like(w) for w in weights]
    for j in range(3):
        model.zero_grad()
        model(input_ids=ids[j:j + 1], labels=ids[j:j + 1]).loss.backward()
        for f, w in zip(fisher, weights, strict=True):
            f += w.grad.pow(2) / 3
    model.zero_grad()
    model(input_ids=ids, labels=ids).loss.backward()
    term = [(w * w.grad - 0.5 * w.pow(2) * f).abs().detach() for w, f in zip(weights, fisher, strict=True)]
    expected = term[0].sum(1) + term[1].sum(1) + term[2].sum(0)          # gate row + up row + down column
    torch.testing.assert_close(scores["element2"]["1.channel"], expected, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(sliced["element2"]["1.channel"], expected, rtol=1e-5, atol=1e-9)


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
    ({"fisher_memory_gib": 0}, r"fisher_memory_gib=0 must be > 0 \(GiB\), or None"),
])
def test_estimate_rejects_bad_arguments(kw, message, calib):
    model, _, adapter = aeflib.models.load("tiny-llama")
    with pytest.raises(ValueError, match=message):
        estimate(model, adapter, calib, **kw)


def test_estimate_rejects_float_calibration():
    model, _, adapter = aeflib.models.load("tiny-llama")
    with pytest.raises(ValueError, match=r"integer tensor \[N, L\]"):
        estimate(model, adapter, torch.rand(2, 8))


def _bad_ids(value: int) -> torch.Tensor:
    ids = torch.randint(0, 49152, (3, 8), generator=torch.Generator().manual_seed(0))  # [3, 8]
    ids[1, 5] = value
    return ids


@pytest.mark.parametrize("calibration, message", [
    (torch.zeros(0, 16, dtype=torch.long), r"calibration has 0 windows \(shape \(0, 16\)\); give N >= 1 windows"),
    (torch.ones(6, 1, dtype=torch.long), r"windows have L=1 tokens \(shape \(6, 1\)\); the next-token loss needs L"),
    (torch.ones(6, 0, dtype=torch.long), r"windows have L=0 tokens"),
    (_bad_ids(49152), r"token id 49152 \(window 1\); ids must be in \[0, 49152\), the model's vocabulary"),
    (_bad_ids(-1), r"token id -1 \(window 1\); ids must be in \[0, 49152\)"),
], ids=["empty", "one-token", "zero-length", "id-too-large", "negative-id"])
@pytest.mark.parametrize("criteria", [["vector", "element2"], ["l2"]])
def test_estimate_refuses_calibration_it_cannot_score_before_any_forward_pass(calibration, message, criteria):
    """Issue 30 kinds 4 and 6: one-token windows gave NaN losses and all-zero scores; empty calibration, zero-length
    windows and ids outside the vocabulary failed deep inside torch or transformers with messages naming nothing."""
    model, _, adapter = aeflib.models.load("tiny-llama")
    forwards = []
    model.register_forward_pre_hook(lambda *a: forwards.append(1))
    with pytest.raises(ValueError, match=message):
        estimate(model, adapter, calibration, criteria=criteria)
    assert not forwards


def test_estimate_raises_on_a_non_finite_loss_instead_of_returning_scores(calib):
    model, _, adapter = aeflib.models.load("tiny-llama")
    with torch.no_grad():
        model.model.norm.weight[0] = float("inf")
    for path in ("bounded", "naive"):
        with pytest.raises(FloatingPointError, match=r"the calibration loss is nan on a chunk of 6 windows \[6, 16\]"):
            estimate(model, adapter, calib, criteria=["vector"], path=path)
    with pytest.raises(FloatingPointError, match="calibration loss is nan on a chunk of 1 windows"):
        estimate(model, adapter, calib, criteria=["element2"], fisher_memory_gib=1e-9)  # the layer-slice path
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("layers", [range(3, 1), [], range(2, 2)])
def test_estimate_refuses_an_empty_layer_range(layers, calib):
    """Issue 30 kind 4: a reversed range gave empty scores (and then a plan that prunes nothing)."""
    model, _, adapter = aeflib.models.load("tiny-llama")
    with pytest.raises(ValueError, match=r"layers=.* is empty; give ascending decoder layers, e\.g\. range\(2, 5\)"):
        estimate(model, adapter, calib, layers=layers)


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


# ---- criteria declare what they need -----------------------------------------------------------------------------
def _two_layer_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=24, num_hidden_layers=2,
                      num_attention_heads=2, head_dim=16)
    model = LlamaForCausalLM(cfg).eval()
    return model, aeflib.models.adapter_for(model), torch.randint(0, 50, (5, 8))


def test_activation_norms_accumulated_per_chunk_equal_the_norm_of_all_inputs():
    """‖X_j‖₂ per input feature of every pruned Linear, chunked, against the inputs kept whole (by hand)."""
    model, adapter, ids = _two_layer_llama()
    inputs = {}

    def keep(module, args):
        inputs.setdefault(module, []).append(args[0].reshape(-1, args[0].shape[-1]))

    handles = [m.register_forward_pre_hook(keep) for m in model.model.layers[1].modules()
               if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        model(input_ids=ids)
    for h in handles:
        h.remove()
    acc = importance._Accumulator(adapter.all_group_sets(model, [1]), adapter.decoder_layers(model), ["wanda"])
    importance._collect_activations(model, acc, ids, chunk_size=2)
    assert acc.tokens == 40 and set(acc.input_norm) == set(inputs)
    for m, xs in inputs.items():
        torch.testing.assert_close(acc.input_norm[m], torch.cat(xs).norm(dim=0), rtol=1e-5, atol=1e-7)


def test_wanda_scores_a_channel_by_weight_magnitude_times_input_norm():
    """wanda of one channel = Σ |W| ‖X_j‖ over its gate row, up row and down column, norms from the forward pass."""
    model, adapter, ids = _two_layer_llama()
    mlp = model.model.layers[1].mlp
    norms = {}
    handles = [m.register_forward_pre_hook(lambda m, a: norms.__setitem__(m, a[0].reshape(-1, a[0].shape[-1])
                                                                          .norm(dim=0)))
               for m in (mlp.gate_proj, mlp.up_proj, mlp.down_proj)]
    with torch.no_grad():
        model(input_ids=ids)
    for h in handles:
        h.remove()
    scores = estimate(model, adapter, ids, criteria=["wanda"], layers=[1])
    naive = estimate(model, adapter, ids, criteria=["wanda"], layers=[1], path="naive")
    term = {m: (m.weight.abs() * norms[m]).detach() for m in norms}
    expected = term[mlp.gate_proj].sum(1) + term[mlp.up_proj].sum(1) + term[mlp.down_proj].sum(0)
    torch.testing.assert_close(scores["wanda"]["1.channel"], expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(naive["wanda"]["1.channel"], expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("criteria, collected", [
    (["l2"], set()),
    (["wanda", "l1"], {"activations"}),
    (["element1"], {"grad"}),
    (["vector", "element2"], {"grad", "fisher"}),
    (["random", "wanda", "element2"], {"activations", "grad", "fisher"}),
])
def test_estimate_collects_only_the_statistics_the_criteria_declare(criteria, collected, monkeypatch, calib):
    model, _, adapter = aeflib.models.load("tiny-llama")
    ran = set()

    def spy(stat, fn):
        def wrapped(*args, **kwargs):
            ran.add(stat)
            return fn(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(importance, "_collect_activations", spy("activations", importance._collect_activations))
    monkeypatch.setattr(importance, "_run_bounded", spy("grad", importance._run_bounded))
    monkeypatch.setattr(importance, "_fisher_passes", spy("fisher", importance._fisher_passes))
    scores = estimate(model, adapter, calib, criteria=criteria)
    assert ran == collected and scores.criteria == criteria


def test_a_new_criterion_is_one_entry_that_declares_its_needs(monkeypatch):
    """A gradient-magnitude criterion, Σ|g|, added without touching the accumulator; checked by hand."""
    model, adapter, ids = _two_layer_llama()
    grad_l1 = importance.Criterion("grad-l1", frozenset({"grad"}), lambda x: x.grad.abs().sum((1, 2)))
    monkeypatch.setitem(ESTIMATORS, "grad-l1", grad_l1)
    scores = estimate(model, adapter, ids, criteria=["grad-l1"], layers=[1])
    model(input_ids=ids, labels=ids).loss.backward()
    mlp = model.model.layers[1].mlp
    expected = mlp.gate_proj.weight.grad.abs().sum(1) + mlp.up_proj.weight.grad.abs().sum(1) + \
        mlp.down_proj.weight.grad.abs().sum(0)
    torch.testing.assert_close(scores["grad-l1"]["1.channel"], expected, rtol=1e-5, atol=1e-9)


def test_criteria_declare_known_statistics_and_one_scoring_function():
    assert all(c.needs <= set(importance.STATISTICS) and c.name == n for n, c in ESTIMATORS.items())
    assert ESTIMATORS["element2"].needs == {"weight", "grad", "fisher"}
    with pytest.raises(ValueError, match=r"'x' needs unknown statistics \['hessian'\]; valid: \['weight'"):
        importance.Criterion("x", frozenset({"hessian"}), lambda s: s.weight)
    with pytest.raises(ValueError, match="give exactly one of fn="):
        importance.Criterion("x", frozenset())
    s = Slice("mlp.up_proj.weight", 0, (2,), 0, "up", 3)
    with pytest.raises(ValueError, match=r"criterion 'vector'.*\['grad'\] not given"):
        slice_scores(s, torch.ones(2, 3), None, None, ["vector"])


def test_the_default_criteria_are_one_constant():
    from aeflib.orchestration.settings import RunSettings

    assert importance.DEFAULT_CRITERIA == ("random", "l2", "vector", "element1", "element2")
    assert RunSettings().criteria == list(importance.DEFAULT_CRITERIA)
    assert importance.estimate.__kwdefaults__["criteria"] is importance.DEFAULT_CRITERIA


def test_scores_read_like_a_mapping_of_criteria():
    scores = Scores({"l2": {"2.head": torch.ones(2), "1.channel": torch.ones(3), "1.head": torch.ones(2)},
                     "vector": {"2.head": torch.ones(2), "1.channel": torch.ones(3), "1.head": torch.ones(2)}})
    assert scores.keys() == scores.criteria == list(scores) == ["l2", "vector"] and len(scores) == 2
    assert [c for c, _ in scores.items()] == ["l2", "vector"] and scores.items()[0][1] is scores["l2"]
    assert scores.group_keys == ["1.head", "1.channel", "2.head"]
    with pytest.raises(KeyError, match=r"no scores for criterion 'aef'; present: \['l2', 'vector'\]"):
        scores["aef"]


#: the output projections (heads, channels) of each family, named here so the oracle does not ask the adapter
_OUTPUTS = {"llama": ("self_attn.o_proj", "mlp.down_proj"), "baichuan": ("self_attn.o_proj", "mlp.down_proj"),
            "bloom": ("self_attention.dense", "mlp.dense_4h_to_h")}


def test_wanda_sp_and_fluctuation_equal_a_direct_computation_from_hooked_inputs(tiny, calib):
    """Per head / channel: Σ over its output-projection columns j of Σ_i |W_ij|·‖X_j‖ (Wanda-sp) and of
    Var(X_j)·‖W_:,j‖² (fluctuation), X_j the inputs of column j over all N·L tokens, kept by hooks."""
    model, _, adapter = tiny
    layers = range(4)
    blocks = adapter.decoder_layers(model)
    inputs = {}
    modules = {(i, kind): blocks[i].get_submodule(name) for i in layers
               for kind, name in zip(("head", "channel"), _OUTPUTS[adapter.family], strict=True)}
    handles = [m.register_forward_pre_hook(lambda m, a: inputs.__setitem__(m, a[0].reshape(-1, a[0].shape[-1])))
               for m in modules.values()]
    with torch.no_grad():
        model(input_ids=calib)
    for h in handles:
        h.remove()
    bounded = estimate(model, adapter, calib, criteria=["wanda-sp", "fluctuation", "wanda"], layers=layers)
    naive = estimate(model, adapter, calib, criteria=["wanda-sp", "fluctuation"], layers=layers, path="naive")
    head_dim = model.config.hidden_size // model.config.num_attention_heads
    for (i, kind), m in modules.items():
        x, w = inputs[m].double(), m.weight.detach().double()                   # [N*L, in], [out, in]
        assert x.shape[0] == calib.numel()
        wanda_sp = (w.abs() * x.norm(dim=0)).sum(0)                              # per column [in]
        fluctuation = x.var(dim=0, unbiased=True) * w.pow(2).sum(0)
        width = head_dim if kind == "head" else 1
        for name, per_column in (("wanda-sp", wanda_sp), ("fluctuation", fluctuation)):
            expected = per_column.view(-1, width).sum(1).float()                 # [n_groups]
            for scores in (bounded, naive):
                torch.testing.assert_close(scores[name][f"{i}.{kind}"], expected, rtol=1e-5, atol=0)
        assert (bounded["wanda"][f"{i}.{kind}"] > bounded["wanda-sp"][f"{i}.{kind}"]).all()  # wanda: every slice


def test_activation_criteria_need_no_backward_pass(monkeypatch, calib):
    model, _, adapter = aeflib.models.load("tiny-gqa")
    for fn in ("_run_bounded", "_run_naive", "_run_bounded_sliced"):
        monkeypatch.setattr(importance, fn, lambda *a, **k: pytest.fail("a backward pass ran"))
    scores = estimate(model, adapter, calib, criteria=["wanda-sp", "fluctuation"])
    assert all(p.grad is None for p in model.parameters()) and scores.criteria == ["wanda-sp", "fluctuation"]
