from __future__ import annotations

import time

import pytest
import torch

import aeflib.models
from aeflib.models import MODELS, ModelUnavailableError, load


def test_unknown_model_name_lists_registered_names():
    with pytest.raises(ValueError, match=r"unknown model 'llama-8b'.*smollm2-135m"):
        load("llama-8b")


def test_unsupported_dtype_names_choices():
    with pytest.raises(ValueError, match=r"unsupported dtype 'int8'.*bfloat16"):
        load("tiny-llama", dtype="int8")


def test_unknown_gqa_mode_names_choices():
    with pytest.raises(ValueError, match=r"unknown gqa_mode 'heads'.*kv-groups"):
        load("tiny-gqa", gqa_mode="heads")


@pytest.mark.parametrize("name", [n for n, s in MODELS.items() if s.paper])
def test_paper_model_offline_fails_fast_with_hub_id_and_local_path_hint(name):
    start = time.perf_counter()
    with pytest.raises(ModelUnavailableError) as err:
        load(name)
    assert time.perf_counter() - start < 5
    assert MODELS[name].hub_id in str(err.value) and "local" in str(err.value)


def test_tiny_models_are_seeded():
    a, b = load("tiny-llama", seed=3).model, load("tiny-llama", seed=3).model
    assert aeflib.models.checksum(a) == aeflib.models.checksum(b)
    assert aeflib.models.checksum(a) != aeflib.models.checksum(load("tiny-llama", seed=4).model)


def test_tiny_bf16_keeps_dtype():
    model = load("tiny-bloom", dtype="bfloat16").model
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_missing_folder_is_not_a_model():
    with pytest.raises(ValueError, match="not an existing folder"):
        load("/nonexistent/llama")


def test_local_folder_without_config_is_refused(tmp_path):
    (tmp_path / "weights.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load(tmp_path)


def test_local_folder_of_saved_tiny_model_loads(tmp_path):
    model, tok, _ = load("tiny-llama")
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    again = load(tmp_path)
    x = torch.tensor([[1, 2, 3, 4]])
    assert torch.equal(model(x).logits, again.model(x).logits)
    assert again.adapter.family == "llama"


def test_baichuan_folder_loads_without_remote_code(tmp_path):
    """A hub-style Baichuan folder (config naming remote code) loads through aeflib's own class."""
    import json

    model, tok, _ = load("tiny-baichuan")
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg.update(architectures=["BaichuanForCausalLM"], auto_map={"AutoModelForCausalLM": "modeling_baichuan.X"})
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "modeling_baichuan.py").write_text("raise RuntimeError('remote code must never run')\n")
    again = load(tmp_path)
    x = torch.tensor([[1, 2, 3, 4]])
    torch.testing.assert_close(model(x).logits, again.model(x).logits)
    assert again.adapter.family == "baichuan"


def test_embedded_model_second_load_reads_the_cache(monkeypatch):
    # the GGUF is dequantized once (~20 s); a second load must read the safetensors cache, not convert again
    # (checked by behaviour, not by a timing that a busy machine would break)
    load("smollm2-135m")
    import aeflib.models.embedded as embedded

    def no_second_conversion(target):
        raise AssertionError(f"converted the GGUF again into {target}")

    monkeypatch.setattr(embedded, "_convert", no_second_conversion)
    model, _, adapter = load("smollm2-135m")
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert adapter.widths(model, 0).n_kv_heads == 3


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-bloom"])
def test_load_auto_device_puts_every_model_on_cuda_when_available(name, monkeypatch):
    """Issue 28.4: device="auto" left tiny and embedded models on the CPU; it means CUDA if available everywhere."""
    from aeflib.models.registry import resolve_device

    moved = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: moved.append((a, k)) or self)
    assert resolve_device("auto") == "cuda"
    aeflib.models.load(name, device="auto")
    assert [a for a, _ in moved if a and isinstance(a[0], str)] == [("cuda",)]  # not only build_tiny's .to(dtype)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"


def test_load_refuses_a_device_that_is_not_one():
    with pytest.raises(ValueError, match=r"device='gpu' is not a device; choose one of auto, cpu, cuda, cuda:N"):
        aeflib.models.load("tiny-llama", device="gpu")


@pytest.mark.parametrize(("text", "message"), [("{nope", "is not readable JSON"), ("[1]", "holds a JSON list")])
def test_local_folder_with_corrupt_config_names_the_file(tmp_path, text, message):
    model, tok, _ = load("tiny-llama")
    model.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(ValueError, match=rf"config\.json.*{message}"):
        load(tmp_path)
