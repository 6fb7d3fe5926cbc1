"""aeflib.scores: the Scores file round trip, and corrupt or foreign files refused with the file named."""

from __future__ import annotations

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from aeflib.scores import Scores


@pytest.fixture
def saved(tmp_path):
    scores = Scores({"vector": {"1.head": torch.rand(4), "1.channel": torch.rand(8)}}, {"seed": 3})
    return scores, scores.save(tmp_path / "scores.safetensors")


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_load_corrupt_file_raises_value_error_naming_it(saved, damage):
    _, path = saved
    data = path.read_bytes()
    path.write_bytes({"garbage": b"\xff" * len(data), "truncated": data[: len(data) // 2], "empty": b""}[damage])
    with pytest.raises(ValueError, match=rf"scores file {path} cannot be read .*corrupt or truncated") as info:
        Scores.load(path)
    assert isinstance(info.value.__cause__, SafetensorError | OSError | ValueError | RuntimeError)


@pytest.mark.parametrize(("tensors", "meta", "message"), [
    ({"vector/1.head": torch.rand(4)}, "{not json", r"its 'aeflib\.scores\.meta' header is not valid JSON"),
    ({"vector/1.head": torch.rand(4)}, "[1, 2]", r"its '.*' header holds a JSON list, expected an object"),
    ({"vector": torch.rand(4)}, "{}", r"tensor 'vector' .* is not '<criterion>/<layer>\.<head\|channel>'"),
    ({"vector/head": torch.rand(4)}, "{}", r"tensor 'vector/head'"),
    ({"vector/1.head": torch.rand(2, 2)}, "{}", r"tensor 'vector/1\.head' torch\.float32 \[2, 2\]"),
    ({"vector/1.head": torch.arange(4)}, "{}", r"tensor 'vector/1\.head' torch\.int64"),
])
def test_load_malformed_scores_file_raises_value_error_naming_it(tmp_path, tensors, meta, message):
    path = tmp_path / "scores.safetensors"
    save_file(tensors, str(path), metadata={"aeflib.scores.meta": meta})
    with pytest.raises(ValueError, match=rf"scores file {path}: {message}"):
        Scores.load(path)

