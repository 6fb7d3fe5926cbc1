"""Tests of aeflib.recovery: the Alpaca data path, LoRA on pruned models of every layout, dtypes, loss, merge."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch
from peft.tuners.tuners_utils import BaseTunerLayer

import aeflib.models
from aeflib import pruning, recovery
from aeflib.data import CorpusUnavailableError, load_corpus
from aeflib.evaluation import perplexity
from aeflib.models.checksum import checksum
from aeflib.recovery import ALPACA_TEMPLATE, alpaca_prompt, lora, text_windows, tokenize_instruction

RECORDS = [  # short records: the Alpaca template alone is ~35 tokens, so cutoff 64 keeps the tiny runs cheap
    {"instruction": "Name a colour.", "input": "", "output": "Blue."},
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
    {"instruction": "Say hello.", "input": "", "output": "Hello there!"},
    {"instruction": "What is ice?", "input": "", "output": "Frozen water."},
]
FAST = dict(batch_size=2, micro_batch_size=2, cutoff=64, val_size=1, progress=False)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models are per-op overhead bound; one intra-op thread avoids oversubscribing a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _prune_non_uniform(loaded):
    """Prune heads and channels at 0.5 with random scores, then layer 1 again: per-layer widths differ."""
    model, _, adapter = loaded
    gen = torch.Generator().manual_seed(0)
    for layers in (None, [1]):
        scores = {gs.key: torch.rand(gs.n, generator=gen) for gs in adapter.all_group_sets(model, layers)}
        pruning.apply(model, adapter, pruning.plan(model, adapter, scores, pruning_ratio=0.5, layers=layers))
    widths = adapter.all_widths(model)
    assert widths[1].n_channels < widths[2].n_channels < widths[0].n_channels  # non-uniform, as intended
    return model


# ------------------------------------------------------------------------------------------------ data path
def test_alpaca_prompt_matches_llm_pruner_template():
    assert alpaca_prompt("Do X.") == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\nDo X.\n\n### Response:\n"
    )
    assert alpaca_prompt("Do X.", "with Y", "Done.") == (
        "Below is an instruction that describes a task, paired with an input that provides further context. Write a "
        "response that appropriately completes the request.\n\n### Instruction:\nDo X.\n\n### Input:\nwith Y\n\n"
        "### Response:\nDone."
    )
    assert set(ALPACA_TEMPLATE) == {"prompt_input", "prompt_no_input"}


def test_tokenize_instruction_masks_prompt_and_appends_eos(tokenizer):
    record = RECORDS[1]
    ids, labels = tokenize_instruction(record, tokenizer, cutoff=256)
    prompt = tokenizer(alpaca_prompt(record["instruction"], record["input"]))["input_ids"]
    full = tokenizer(alpaca_prompt(**record))["input_ids"]
    assert ids == full + [tokenizer.eos_token_id]
    assert labels == [-100] * len(prompt) + ids[len(prompt):]
    assert ids[: len(prompt)] == prompt  # the template ends in "\n": the prompt tokens are a prefix
    ids_all, labels_all = tokenize_instruction(record, tokenizer, cutoff=256, train_on_inputs=True)
    assert ids_all == labels_all == ids
    short, short_labels = tokenize_instruction(record, tokenizer, cutoff=10)
    assert len(short) == len(short_labels) == 10 and set(short_labels) == {-100}  # truncated, no EOS


def test_text_windows_are_non_overlapping_and_fully_trained(tokenizer):
    text = load_corpus("lee-news", "test").documents[0]
    ids = tokenizer(text)["input_ids"]
    windows = text_windows(text, tokenizer, cutoff=16)
    assert len(windows) == len(ids) // 16 > 3
    assert all(x == y and len(x) == 16 for x, y in windows)
    assert windows[1][0] == ids[16:32]


# ------------------------------------------------------------------------------------------------ errors
def test_lora_refuses_fp16_training_naming_the_issues():
    model, tok, adapter = aeflib.models.load("tiny-llama")
    with pytest.raises(ValueError, match=r"float16.*#13 and #81"):
        lora(model, tok, adapter, RECORDS, steps=1, dtype="float16", **FAST)
    with pytest.raises(ValueError, match=r"unsupported dtype 'int8'"):
        lora(model, tok, adapter, RECORDS, steps=1, dtype="int8", **FAST)


def test_lora_rejects_bad_arguments_with_choices():
    model, tok, adapter = aeflib.models.load("tiny-llama")
    with pytest.raises(ValueError, match=r"unknown recovery dataset 'alpaca'; choose one of .*'qa'"):
        lora(model, tok, adapter, "alpaca", steps=1, **FAST)
    with pytest.raises(ValueError, match=r"batch_size=6 must be a positive multiple of micro_batch_size=4"):
        lora(model, tok, adapter, RECORDS, steps=1, batch_size=6, micro_batch_size=4, progress=False)
    with pytest.raises(ValueError, match=r"record 1 needs non-empty 'instruction' and 'output'"):
        lora(model, tok, adapter, [RECORDS[0], {"instruction": "x"}], steps=1, **FAST)
    with pytest.raises(ValueError, match=r"leaving none to train on"):
        lora(model, tok, adapter, RECORDS, steps=1, **{**FAST, "val_size": 4})


def test_lora_alpaca_cleaned_fails_clearly_offline():
    model, tok, adapter = aeflib.models.load("tiny-llama")
    before = checksum(model)
    with pytest.raises(CorpusUnavailableError, match=r"yahma/alpaca-cleaned.*data_files"):
        lora(model, tok, adapter, "alpaca-cleaned", steps=1, **FAST)
    assert checksum(model) == before


def test_lora_alpaca_cleaned_reads_local_files(tmp_path):
    path = tmp_path / "alpaca.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in RECORDS))
    model, tok, adapter = aeflib.models.load("tiny-llama")
    res = lora(model, tok, adapter, "alpaca-cleaned", steps=1, data_files=str(path), **FAST)
    assert (res.settings["n_train"], res.settings["n_val"]) == (3, 1)


# ------------------------------------------------------------------------------------------------ all layouts
def test_lora_on_non_uniform_pruned_model_keeps_structure_and_frozen_weights(tiny):
    model, tok, adapter = tiny
    _prune_non_uniform(tiny)
    widths = [w.to_dict() for w in adapter.all_widths(model)]
    n_params = pruning.count_parameters(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    modes = []  # training flag of decoder layer 0 at each forward
    hook = adapter.decoder_layers(model)[0].register_forward_pre_hook(lambda m, a: modes.append(m.training))

    res = lora(model, tok, adapter, RECORDS, steps=2, **FAST)
    hook.remove()

    assert res.model is model and type(model).__name__.endswith("ForCausalLM")
    assert not any(isinstance(m, BaseTunerLayer) for m in model.modules())
    assert not any("lora_" in n or "base_layer" in n for n, _ in model.named_parameters())
    assert not hasattr(model, "peft_config")
    assert pruning.count_parameters(model) == n_params
    assert [w.to_dict() for w in adapter.all_widths(model)] == widths
    adapter.check(model)
    assert True in modes and not model.training and not any(m.training for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())  # flags restored (all True after load)
    targeted = tuple(f"{t}.weight" for t in adapter.lora_targets)
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert changed and all(n.endswith(targeted) for n in changed)  # embeddings, norms, biases, head: bit-identical
    assert len(res.train_loss) == 2 and all(math.isfinite(x) for x in res.train_loss)
    assert math.isfinite(res.val_loss_before) and math.isfinite(res.val_loss_after)
    assert res.settings["targets"] == list(adapter.lora_targets) and res.settings["r"] == 8
    assert json.loads(json.dumps(res.to_dict()))["settings"]["alpha"] == 16
    out = model.generate(torch.tensor([tok("Hello")["input_ids"]]), max_new_tokens=3, do_sample=False)
    assert out.shape[1] == len(tok("Hello")["input_ids"]) + 3


# ------------------------------------------------------------------------------------------------ training
def test_lora_reduces_training_loss_on_repeated_data():
    model, tok, adapter = aeflib.models.load("tiny-llama")
    res = lora(model, tok, adapter, RECORDS[:2] * 4, steps=20, lr=5e-3, warmup_steps=0, **{**FAST, "val_size": 0})
    first, last = res.train_loss[0], sum(res.train_loss[-3:]) / 3
    # random weights start near ln(49152) = 10.8 nats; measured: with lr=0 the curve stays within 0.01 nats of its
    # start (dropout noise only), with lr=5e-3 it ends ~1.3 nats lower
    assert last < first - 1.0, res.train_loss
    assert all(b < a for a, b in zip(res.train_loss[:4], res.train_loss[1:5], strict=True))  # drops from the start
    assert res.val_loss_before is None and res.settings["n_train"] == 8


def test_lora_is_seeded_and_keeps_global_rng():
    runs = []
    for _ in range(2):
        model, tok, adapter = aeflib.models.load("tiny-llama")
        torch.manual_seed(123)
        res = lora(model, tok, adapter, RECORDS, steps=1, **FAST)
        runs.append((res.train_loss, checksum(model), torch.rand(1).item()))
    assert runs[0] == runs[1]


def test_lora_nonfinite_loss_restores_the_unmerged_model():
    model, tok, adapter = aeflib.models.load("tiny-llama")
    before, flags = checksum(model), [p.requires_grad for p in model.parameters()]
    with pytest.raises(FloatingPointError, match=r"training loss is (nan|inf)"):
        lora(model, tok, adapter, RECORDS, steps=4, lr=1e30, warmup_steps=0, max_grad_norm=1e30, **FAST)
    assert checksum(model) == before and [p.requires_grad for p in model.parameters()] == flags
    assert not any(isinstance(m, BaseTunerLayer) for m in model.modules()) and not model.training


def test_lora_plain_text_dataset_trains_every_token():
    model, tok, adapter = aeflib.models.load("tiny-gqa")
    res = lora(model, tok, adapter, "lee-news", steps=1, batch_size=1, micro_batch_size=1, cutoff=16, val_size=1,
               progress=False)
    assert res.settings["prompt_template"] is None and res.settings["n_train"] > 1000
    assert math.isfinite(res.train_loss[0])


# ------------------------------------------------------------------------------------------------ precision
@pytest.mark.parametrize(("weights", "dtype", "compute", "autocast"), [
    ("float32", "bfloat16", "bfloat16", True),     # bf16 autocast over fp32 weights
    ("bfloat16", None, "bfloat16", False),         # pure bf16 weights, fp32 LoRA adapters
    ("float16", None, "bfloat16", True),           # fp16 model: bf16 over fp32 masters, cast back
    ("float16", "float32", "float32", False),
])
def test_lora_dtype_policy_keeps_loss_finite_and_model_dtype(weights, dtype, compute, autocast, caplog):
    model, tok, adapter = aeflib.models.load("tiny-baichuan", dtype=weights)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if "norm" in n or "embed" in n}
    with caplog.at_level(logging.WARNING, logger="aeflib.recovery"):
        res = lora(model, tok, adapter, RECORDS, steps=1, dtype=dtype, **FAST)
    assert all(math.isfinite(x) for x in res.train_loss) and math.isfinite(res.val_loss_after)
    assert (res.settings["compute_dtype"], res.settings["autocast"]) == (compute, autocast)
    assert {p.dtype for p in model.parameters()} == {getattr(torch, weights)}
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    assert ("NaN, LLM-Pruner #13/#81" in caplog.text) == (weights == "float16")


@pytest.mark.parametrize(("dtype", "tol"), [("bfloat16", 0.01), ("float16", 0.002)])
def test_half_precision_perplexity_matches_fp32(tiny, dtype, tol):
    """Eval-only half precision: the NLL (log PPL) of a half copy is within ``tol`` nats of the fp32 one.

    The lm_head is scaled by 10 so that logits spread (std ~1.6 instead of ~0.02, which gives a flat ln(vocab) that
    no rounding can move). Error model: a logit of size |z| computed through k roundings of relative error <= u
    (bf16 u = 2^-9, fp16 u = 2^-12) is off by ~u*|z|*sqrt(k) ~ 1e-2 (bf16) / 1e-3 (fp16) for k ~ 10; the NLL
    averages such errors over 127 tokens with mixed signs. Measured on the four layouts: |dNLL| <= 2.1e-3 (bf16),
    <= 4e-4 (fp16); the bounds (1 % / 0.2 % in PPL) leave 5x room. Losses are taken on fp32-upcast logits.
    """
    name = tiny.model.config.name_or_path
    corpus = load_corpus("lee-news", "test")
    half = aeflib.models.load(name, dtype=dtype).model
    for model in (tiny.model, half):
        with torch.no_grad():
            model.get_output_embeddings().weight.mul_(10)
    ref = perplexity(tiny.model, tiny.tokenizer, corpus, max_windows=1, progress=False)
    got = perplexity(half, tiny.tokenizer, corpus, max_windows=1, progress=False)
    assert ref.nll > math.log(49152) + 1  # logits are far from flat
    assert got.dtype == dtype and got.n_tokens == ref.n_tokens == 127
    assert abs(got.nll - ref.nll) < tol, (got.nll, ref.nll)


def test_recovery_module_lists_its_datasets():
    assert set(recovery.DATASETS) == {"alpaca-cleaned", "qa", "wikipedia", "lee-news"}
