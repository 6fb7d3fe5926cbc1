"""A fifth family, defined in this test file alone, goes through every stage without a line of aeflib changed.

The family is LLaMA's layout under another ``model_type`` (a renamed config and causal-LM class) with an adapter
subclass that declares its model type, classes and tiny config. Defining the adapter registers it; the registry,
the tiny models, importance, planning, checkpoints and export find it there.
"""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import aeflib.io as aio
import aeflib.models
from aeflib import importance, pruning
from aeflib.models import ADAPTERS
from aeflib.models.llama import LlamaAdapter, tiny_llama_config

IDS = torch.tensor([[1, 530, 2417, 87, 9001, 14]])  # [1, 6]


class FifthConfig(LlamaConfig):
    """LLaMA's configuration under a model type no transformers or aeflib module knows."""

    model_type = "aef-fifth"


class FifthForCausalLM(LlamaForCausalLM):
    """LLaMA's causal LM, built from :class:`FifthConfig`."""

    config_class = FifthConfig


@pytest.fixture(scope="module")
def fifth():
    """The adapter class of the fifth family, registered for this module's tests and removed afterwards."""

    class FifthAdapter(LlamaAdapter):
        family = "fifth"
        model_types = ("aef-fifth",)
        config_class, model_class = FifthConfig, FifthForCausalLM
        tiny = {"tiny-fifth": lambda: tiny_llama_config(4, 2, 96, FifthConfig)}

    yield FifthAdapter
    ADAPTERS.pop("aef-fifth")


@torch.no_grad()
def _logits(model) -> torch.Tensor:
    return model(IDS).logits  # [1, 6, vocab]


def test_fifth_family_loads_estimates_prunes_saves_reloads_and_exports(fifth, tmp_path):
    model, tokenizer, adapter = aeflib.models.load("tiny-fifth")
    assert type(adapter) is fifth and aeflib.models.MODELS["tiny-fifth"].family == "fifth"
    adapter.check_coverage(model)

    calib = torch.randint(0, 49152, (2, 8), generator=torch.Generator().manual_seed(0))  # [2, 8]
    every_layer = range(adapter.n_layers(model))  # uniform widths, so that a stock folder can hold them
    scores = importance.estimate(model, adapter, calib, criteria=["l2", "vector"], layers=every_layer)
    plan = pruning.plan(model, adapter, scores["vector"], pruning_ratio=0.5, layers=every_layer, criterion="vector")
    pruning.apply(model, adapter, plan)
    assert plan.params_after < plan.params_before

    back = aeflib.models.load(aio.save(model, tokenizer, tmp_path / "ck", adapter=adapter))
    assert type(back.adapter) is fifth and torch.equal(_logits(back.model), _logits(model))

    folder = aio.export_hf(model, tokenizer, tmp_path / "hf", adapter)
    assert torch.equal(_logits(FifthForCausalLM.from_pretrained(folder)), _logits(model))
    again = aeflib.models.load(folder)  # a transformers folder of the family: the adapter's load_folder
    assert type(again.adapter) is fifth and torch.equal(_logits(again.model), _logits(model))
