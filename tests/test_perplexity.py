"""Tests of aeflib.evaluation.perplexity on a tiny random LLaMA and the real SmolLM2 tokenizer, offline."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from aeflib.data import Corpus, load_corpus
from aeflib.evaluation import PROTOCOLS, PerplexityResult, perplexity
from aeflib.evaluation.perplexity import PerplexityProtocol
from aeflib.models.checksum import checksum


@pytest.fixture(scope="module")
def tiny_llama(smollm2_tokenizer):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(smollm2_tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=256,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def corpus():
    lee = load_corpus("lee-news", "test")  # first 8 news documents: ~2 k tokens, ~16 windows of 128 tokens
    return Corpus(lee.name, lee.split, lee.documents[:8], lee.source, lee.licence)


def _hand_ppl(model, tokenizer, corpus: Corpus, seq_len: int, max_windows: int | None = None) -> tuple[float, int]:
    """Independent oracle: LLM-Pruner's recipe written out window by window."""
    ids = tokenizer("\n\n".join(corpus.documents), return_tensors="pt").input_ids[0]
    n = ids.numel() // seq_len
    if max_windows is not None:
        n = min(n, max_windows)
    losses = []
    with torch.no_grad():
        for i in range(n):
            window = ids[i * seq_len : (i + 1) * seq_len].unsqueeze(0)
            logits = model(window).logits[0].float()
            losses.append(F.cross_entropy(logits[:-1], window[0, 1:], reduction="none"))
    return math.exp(torch.cat(losses).mean().item()), n


def test_perplexity_equals_hand_computation(tiny_llama, smollm2_tokenizer, corpus):
    result = perplexity(tiny_llama, smollm2_tokenizer, corpus, batch_size=4, progress=False)
    expected, n = _hand_ppl(tiny_llama, smollm2_tokenizer, corpus, 128)
    assert result.value == pytest.approx(expected, rel=1e-5)
    assert result.n_windows == result.n_windows_available == n > 5
    assert result.n_tokens == n * 127
    assert result.nll == pytest.approx(math.log(result.value))
    assert result.value > 1000  # random weights over 49 k tokens: close to the vocabulary size


def test_perplexity_respects_max_windows(tiny_llama, smollm2_tokenizer, corpus):
    result = perplexity(tiny_llama, smollm2_tokenizer, corpus, max_windows=3, progress=False)
    expected, _ = _hand_ppl(tiny_llama, smollm2_tokenizer, corpus, 128, max_windows=3)
    assert (result.n_windows, result.n_tokens, result.max_windows) == (3, 3 * 127, 3)
    assert result.n_windows_available > 3
    assert result.value == pytest.approx(expected, rel=1e-5)


def test_perplexity_does_not_depend_on_batch_size(tiny_llama, smollm2_tokenizer, corpus):
    one = perplexity(tiny_llama, smollm2_tokenizer, corpus, batch_size=1, max_windows=5, progress=False)
    three = perplexity(tiny_llama, smollm2_tokenizer, corpus, batch_size=3, max_windows=5, progress=False)
    assert one.value == pytest.approx(three.value, rel=1e-5)


def test_perplexity_result_records_protocol_data_and_model(tiny_llama, smollm2_tokenizer, corpus):
    result = perplexity(tiny_llama, smollm2_tokenizer, corpus, max_windows=2, progress=False)
    assert isinstance(result, PerplexityResult)
    assert (result.protocol, result.seq_len, result.stride, result.join, result.bos) == (
        "llm-pruner-128", 128, 128, "\n\n", True,
    )  # fmt: skip
    assert (result.dataset, result.split, result.dtype) == ("lee-news", "test", "float32")
    assert result.checksum == checksum(tiny_llama)
    assert json.loads(json.dumps(result.to_dict()))["value"] == result.value
    assert "llm-pruner-128" in str(result)


def test_perplexity_bf16_model_gives_finite_value_close_to_fp32(smollm2_tokenizer, tiny_llama, corpus):
    bf16 = LlamaForCausalLM(tiny_llama.config)
    bf16.load_state_dict(tiny_llama.state_dict())
    bf16 = bf16.to(torch.bfloat16).eval()
    low = perplexity(bf16, smollm2_tokenizer, corpus, max_windows=2, progress=False)
    full = perplexity(tiny_llama, smollm2_tokenizer, corpus, max_windows=2, progress=False)
    assert low.dtype == "bfloat16" and math.isfinite(low.value)
    assert low.value == pytest.approx(full.value, rel=0.05)


def test_perplexity_restores_training_mode(tiny_llama, smollm2_tokenizer, corpus):
    tiny_llama.train()
    try:
        perplexity(tiny_llama, smollm2_tokenizer, corpus, max_windows=1, progress=False)
        assert tiny_llama.training
    finally:
        tiny_llama.eval()


def test_overlapping_stride_scores_each_token_once(tiny_llama, smollm2_tokenizer, corpus):
    proto = PerplexityProtocol("sliding-64-32", seq_len=64, stride=32, join="\n\n", bos=True)
    result = perplexity(tiny_llama, smollm2_tokenizer, corpus, protocol=proto, max_windows=4, progress=False)
    assert result.n_tokens == 63 + 3 * 32
    # oracle: window w > 0 scores only its last 32 tokens
    ids = smollm2_tokenizer(corpus.text(), return_tensors="pt").input_ids[0]
    losses = []
    with torch.no_grad():
        for w in range(4):
            window = ids[w * 32 : w * 32 + 64].unsqueeze(0)
            loss = F.cross_entropy(tiny_llama(window).logits[0, :-1].float(), window[0, 1:], reduction="none")
            losses.append(loss if w == 0 else loss[-32:])
    assert result.value == pytest.approx(math.exp(torch.cat(losses).mean().item()), rel=1e-5)


def test_protocol_presets_match_llm_pruner_and_sparsegpt():
    assert PROTOCOLS["llm-pruner-128"] == PerplexityProtocol("llm-pruner-128", 128, 128, "\n\n", True)
    assert PROTOCOLS["full-2048"].seq_len == PROTOCOLS["full-2048"].stride == 2048


def test_perplexity_rejects_unknown_protocol_listing_choices(tiny_llama, smollm2_tokenizer, corpus):
    with pytest.raises(ValueError, match=r"unknown perplexity protocol 'ptb-128'; choose one of \['full-2048', "):
        perplexity(tiny_llama, smollm2_tokenizer, corpus, protocol="ptb-128")


def test_perplexity_rejects_text_shorter_than_one_window(tiny_llama, smollm2_tokenizer):
    short = Corpus("short", "test", ["only a few words here"], "test", "none")
    n = len(smollm2_tokenizer("only a few words here").input_ids)
    with pytest.raises(ValueError, match=rf"short/test tokenizes to {n} tokens, fewer than one 128-token window"):
        perplexity(tiny_llama, smollm2_tokenizer, short)


def test_protocol_rejects_stride_outside_window():
    with pytest.raises(ValueError, match=r"stride=200 is outside 1\.\.seq_len=128"):
        PerplexityProtocol("bad", seq_len=128, stride=200, join="\n\n", bos=True)
