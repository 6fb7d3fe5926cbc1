"""Measuring never changes what is measured (issue 15).

One property, checked for every measurement aeflib offers — perplexity, zero-shot, efficiency (MAC count, timing,
interleaved latency), generation (greedy helper, static cache), importance estimation on both paths and every fusion
variant — on dense and non-uniformly pruned tiny models of all four layouts, and on a checkpoint whose config says
``tie_word_embeddings: true`` while its ``lm_head`` is stored apart (it loads untied): before and after, the model has
the same checksum, the same parameter objects (identity, storage, ``requires_grad``, no ``.grad``), the same tying,
training flag, attention implementation, config, hooks and logits; and its tokenizer the same pad token, padding and
truncation sides, special tokens and vocabulary (the dense subjects' tokenizers have no pad token: lm-eval's HFLM
sets one on a tokenizer without, issue 28.3).

Plus the small inputs of the issue: lm-eval's ``tie_weights`` call, and generation with a static cache on models
pruned to different widths per layer. (Interleaved timing: tests/test_efficiency.py.)
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import TINY_NAMES, prune_nonuniform

import aeflib.io
import aeflib.models
import aeflib.pruning
from aeflib import fusion, importance
from aeflib.analysis import generate
from aeflib.evaluation import counted_macs, efficiency, perplexity, zeroshot
from aeflib.evaluation.timing import compare_latency
from aeflib.models import checksum

pytestmark = pytest.mark.usefixtures("one_thread")

SUBJECTS = [f"{name}/{state}" for name in TINY_NAMES for state in ("dense", "pruned")] + ["untied-config-tied"]
PROBE = torch.randint(0, 49152, (1, 8), generator=torch.Generator().manual_seed(3))  # [1, 8] logits probe


@pytest.fixture(scope="module", autouse=True)
def _no_pip_list():
    """lm-eval records the environment by running ``pip list`` (torch's collect_env, ~1 s per call): skipped here."""
    import lm_eval.evaluator

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lm_eval.evaluator, "add_env_info", lambda results: None)
        yield


def _untied_with_tied_config(folder):
    """tiny-llama saved with its own lm_head, config.json edited to tie_word_embeddings: true, loaded by aeflib."""
    model, tokenizer, _ = aeflib.models.load("tiny-llama")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["tie_word_embeddings"] = True
    (folder / "config.json").write_text(json.dumps(config))
    return aeflib.models.load(str(folder))


@pytest.fixture(scope="module", params=SUBJECTS)
def subject(request, tmp_path_factory):
    """``(Loaded, calibration, scores, reference fingerprint)`` built once per module for each subject model.

    The measurements find the model in eval mode, as aeflib hands models out, except the pruned ones, left in
    training mode (a measurement switches to eval and must restore the flag). Every measurement must leave the
    model as the reference fingerprint describes it (so the "before" of one test is the "after" of the previous).
    """
    if request.param == "untied-config-tied":
        loaded = _untied_with_tied_config(tmp_path_factory.mktemp("untied"))
        assert loaded.model.lm_head.weight is not loaded.model.get_input_embeddings().weight  # the case at hand
    else:
        name, state = request.param.split("/")
        loaded = aeflib.models.load(name)
        if state == "pruned":
            prune_nonuniform(loaded)
    calib = torch.randint(0, 49152, (2, 8), generator=torch.Generator().manual_seed(0))  # [2, 8]
    scores = importance.estimate(loaded.model, loaded.adapter, calib, criteria=["vector", "element2"])  # fusion's
    loaded.model.train(request.param.endswith("/pruned"))
    if request.param.endswith("/dense"):
        loaded.tokenizer.pad_token = None
    return loaded, calib, scores, (fingerprint(loaded.model), tokenizer_fingerprint(loaded.tokenizer))


def tokenizer_fingerprint(tokenizer) -> dict:
    """Everything of a tokenizer a measurement must leave as it found it (lm-eval writes pad_token, padding_side)."""
    backend = getattr(tokenizer, "_tokenizer", None)
    return {
        "pad": (tokenizer.pad_token, tokenizer.pad_token_id), "sides": (tokenizer.padding_side,
                                                                    tokenizer.truncation_side),
        "special": repr(tokenizer.special_tokens_map), "special_ids": list(tokenizer.all_special_ids),
        "vocab": len(tokenizer), "added": repr(tokenizer.added_tokens_decoder),
        "max_length": tokenizer.model_max_length, "attrs": sorted(vars(tokenizer)),
        "backend": None if backend is None else (repr(backend.padding), repr(backend.truncation)),
        "encoding": tokenizer("The city of", return_attention_mask=True)["input_ids"],
    }


def fingerprint(model: torch.nn.Module) -> dict:
    """Everything a measurement must leave as it found it."""
    params = [(n, id(p), p.data_ptr(), p.requires_grad, p.grad is None, p.dtype, p.device)
              for n, p in model.named_parameters(remove_duplicate=False)]
    buffers = [(n, b.data_ptr(), b.dtype, tuple(b.shape), float(b.double().sum()))
               for n, b in model.named_buffers(remove_duplicate=False)]
    hooks = sum(len(m._forward_pre_hooks) + len(m._forward_hooks) + len(m._backward_hooks)
                + len(m._backward_pre_hooks) for m in model.modules())
    grad_hooks = sum(len(getattr(p, "_post_accumulate_grad_hooks", None) or {}) + len(p._backward_hooks or {})
                     for p in model.parameters())
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=PROBE, use_cache=False).logits.clone()  # [1, 8, V]
    model.train(was_training)
    return {
        "checksum": checksum(model), "params": params, "buffers": buffers, "hooks": hooks, "grad_hooks": grad_hooks,
        "tied": head is not None and head.weight is embed.weight, "training": was_training,
        "attn_implementation": model.config._attn_implementation, "config": model.config.to_dict(),
        "logits": logits,
    }


def _changed(before: dict, after: dict) -> list[str]:
    return [k for k in before if not (torch.equal(before[k], after[k]) if k == "logits" else before[k] == after[k])]


# ---- the measurements: each takes (Loaded, calibration, scores) and may return anything ------------------------------
def _fuse(method: str):
    def run(loaded, calib, scores):
        return fusion.fuse(scores, method, model=loaded.model, adapter=loaded.adapter, calibration=calib,
                           pruning_ratio=0.25, steps=2, weights=(0.5, 0.5) if method == "fixed" else None)
    return run


MEASUREMENTS = {
    "perplexity": lambda ld, c, s: perplexity(ld.model, ld.tokenizer, max_windows=1, batch_size=1, progress=False),
    "zeroshot": lambda ld, c, s: zeroshot(ld.model, ld.tokenizer, tasks=["aef_cloze"], limit=1, batch_size=2,
                                          bootstrap_iters=0),
    "efficiency-timed": lambda ld, c, s: efficiency(ld.model, None, seq_len=8, decode_tokens=2, repeats=1),
    "counted-macs": lambda ld, c, s: counted_macs(ld.model, 4),
    "compare-latency": lambda ld, c, s: compare_latency({"a": ld.model, "b": ld.model}, None, seq_len=4,
                                                        decode_tokens=2, rounds=1, warmup=0),
    "generate": lambda ld, c, s: generate(ld.model, ld.tokenizer, "The city", max_new_tokens=3),
    "generate-static-cache": lambda ld, c, s: ld.model.generate(
        input_ids=PROBE[:, :5], max_new_tokens=3, do_sample=False, pad_token_id=2, cache_implementation="static",
        prefill_chunk_size=2),
    "estimate-bounded": lambda ld, c, s: importance.estimate(ld.model, ld.adapter, c, path="bounded"),
    "estimate-naive": lambda ld, c, s: importance.estimate(ld.model, ld.adapter, c, path="naive"),
    **{f"fuse-{m}": _fuse(m) for m in fusion.FUSIONS},
}


@pytest.mark.parametrize("measurement", list(MEASUREMENTS))
def test_measurement_leaves_its_subject_as_found(subject, measurement):
    loaded, calib, scores, (before, tokenizer_before) = subject
    MEASUREMENTS[measurement](loaded, calib, scores)
    changed = _changed(before, fingerprint(loaded.model))
    tokenizer_after = tokenizer_fingerprint(loaded.tokenizer)
    changed += [f"tokenizer {k}" for k in tokenizer_before if tokenizer_before[k] != tokenizer_after[k]]
    assert not changed, f"{measurement} changed {changed}"


def test_the_tokenizer_fingerprint_sees_each_kind_of_change(tokenizer):
    """The tokenizer half of the property test can fail: each change lm-eval could make shows."""
    changes = {
        "pad": lambda t: setattr(t, "pad_token", None),
        "sides": lambda t: setattr(t, "padding_side", "left"),
        "vocab": lambda t: t.add_special_tokens({"pad_token": "<|pad|>"}),
        "backend": lambda t: t._tokenizer.enable_truncation(4),
    }
    for expected, change in changes.items():
        tok = copy.deepcopy(tokenizer)
        before = tokenizer_fingerprint(tok)
        change(tok)
        after = tokenizer_fingerprint(tok)
        assert before[expected] != after[expected], expected


def test_the_fingerprint_sees_each_kind_of_change(tmp_path):
    """The property test can fail: every change a measurement could make shows in the fingerprint."""
    model = _untied_with_tied_config(tmp_path).model
    changes = {
        "tied": lambda m: m.tie_weights(),  # what lm-eval's HFLM did
        "training": lambda m: m.train(),
        "params": lambda m: m.model.norm.weight.requires_grad_(False),
        "attn_implementation": lambda m: setattr(m.config, "_attn_implementation", "eager"),
        "hooks": lambda m: m.model.layers[0].register_forward_hook(lambda *a: None),
        "checksum": lambda m: m.model.norm.weight.data.mul_(2),
    }
    for expected, change in changes.items():
        before = fingerprint(model)
        with torch.no_grad():
            change(model)
        assert expected in _changed(before, fingerprint(model)), expected


def test_every_fusion_variant_is_checked():
    assert {f"fuse-{m}" for m in fusion.FUSIONS} <= set(MEASUREMENTS)


# ---- small input 1: lm-eval's tie_weights ----------------------------------------------------------------------------
def test_zeroshot_scores_an_untied_head_as_loaded_and_records_its_checksum(tmp_path):
    model, tokenizer, _ = _untied_with_tied_config(tmp_path)
    before = checksum(model)
    logits = model(input_ids=PROBE).logits
    result = zeroshot(model, tokenizer, tasks=["aef_cloze"], limit=1, batch_size=2, bootstrap_iters=0)
    assert model.lm_head.weight is not model.get_input_embeddings().weight  # HFLM's tie_weights() neutralised
    assert result.checksum == before == checksum(model)
    assert torch.equal(model(input_ids=PROBE).logits, logits)
    assert "tie_weights" not in vars(model)  # the stand-in was removed again


def test_zeroshot_refuses_a_result_for_a_model_that_changed_while_scored(monkeypatch):
    import lm_eval

    model, tokenizer, _ = aeflib.models.load("tiny-llama")
    real = lm_eval.simple_evaluate

    def evaluate_and_change(*args, **kwargs):
        out = real(*args, **kwargs)
        with torch.no_grad():
            model.lm_head.weight.add_(1.0)
        return out

    monkeypatch.setattr(lm_eval, "simple_evaluate", evaluate_and_change)
    with pytest.raises(RuntimeError, match=r"zero-shot evaluation changed the model it scored: checksum \w+ before"):
        zeroshot(model, tokenizer, tasks=["aef_cloze"], limit=1, batch_size=2, bootstrap_iters=0)


# ---- small input 3: static cache on per-layer widths -----------------------------------------------------------------
@pytest.fixture(scope="module", params=TINY_NAMES)
def pruned(request):
    return prune_nonuniform(aeflib.models.load(request.param))


def _greedy(model, **kwargs):
    ids = torch.tensor([[1, 450, 4272, 310, 278, 3303, 338]])  # [1, 7]
    return model.generate(input_ids=ids, max_new_tokens=6, do_sample=False, pad_token_id=2, **kwargs)


def test_static_cache_generates_what_the_dynamic_cache_does_on_pruned_models(pruned):
    model, _, adapter = pruned
    kv_heads, head_dims = aeflib.pruning.static_cache_shapes(model)
    widths = adapter.all_widths(model)
    assert kv_heads == [w.n_kv_heads for w in widths] and head_dims == [w.head_dim for w in widths]
    assert len({(w.n_heads, w.n_kv_heads) for w in widths}) > 1  # non-uniform per layer
    dynamic = _greedy(model)
    assert torch.equal(_greedy(model, cache_implementation="static"), dynamic)
    # with a chunked prefill transformers initialises the cache up front: from the per-layer shapes, not the config
    assert torch.equal(_greedy(model, cache_implementation="static", prefill_chunk_size=3), dynamic)
    twin = copy.deepcopy(model)  # the shape provider follows the copy
    assert twin._get_static_cache_init_shape.model is twin
    assert torch.equal(_greedy(twin, cache_implementation="static", prefill_chunk_size=3), dynamic)


def test_static_cache_works_after_save_and_load(tmp_path):
    loaded = prune_nonuniform(aeflib.models.load("tiny-gqa"))
    aeflib.io.save(loaded.model, loaded.tokenizer, tmp_path / "pruned", adapter=loaded.adapter)
    model = aeflib.io.load(tmp_path / "pruned").model
    assert torch.equal(_greedy(model, cache_implementation="static", prefill_chunk_size=2), _greedy(loaded.model))


# ---- small input 4 (issue 28.4): a model dispatched by accelerate with CPU and disk offload --------------------------
def _offloaded(folder):
    """tiny-llama dispatched by accelerate: layers 2-3 offloaded to disk (their parameters left on ``meta``)."""
    from accelerate import dispatch_model

    loaded = aeflib.models.load("tiny-llama")
    names = ["model.embed_tokens", "model.layers.0", "model.layers.1", "model.norm", "model.rotary_emb", "lm_head"]
    device_map = {**dict.fromkeys(names, "cpu"), "model.layers.2": "disk", "model.layers.3": "disk"}
    dispatch_model(loaded.model, device_map=device_map, offload_dir=str(folder))
    return loaded


OFFLOAD_REFUSALS = {
    "importance estimation": lambda ld: importance.estimate(ld.model, ld.adapter, torch.ones(2, 8, dtype=torch.long)),
    "perplexity": lambda ld: perplexity(ld.model, ld.tokenizer, max_windows=1, batch_size=1, progress=False),
    "zero-shot evaluation": lambda ld: zeroshot(ld.model, ld.tokenizer, tasks=["aef_cloze"], limit=1,
                                                bootstrap_iters=0),
}


@pytest.mark.parametrize("purpose", list(OFFLOAD_REFUSALS))
def test_measurement_refuses_an_offloaded_model_before_any_forward_pass(purpose, tmp_path):
    """Estimation failed after the backward ("no gradient"), perplexity in checksum() after scoring every window."""
    loaded = _offloaded(tmp_path)
    forwards = []
    loaded.model.register_forward_pre_hook(lambda *a: forwards.append(1))
    with pytest.raises(ValueError, match=rf"{purpose} needs every weight of the model in memory, but 18 of its tensors "
                                         r"\(first: model\.layers\.2\.self_attn\.q_proj\.weight\) hold no data: .*"
                                         r"offload.*load the whole model on one device instead"):
        OFFLOAD_REFUSALS[purpose](loaded)
    assert not forwards


def test_checksum_of_an_offloaded_model_names_the_tensor_without_data(tmp_path):
    """It failed with torch's "Cannot copy out of meta tensor; no data!", naming no tensor."""
    with pytest.raises(ValueError, match=r"cannot checksum the model: tensor model\.layers\.2\.\S+ is on the meta "
                                         r"device \(offloaded by accelerate"):
        checksum(_offloaded(tmp_path).model)
