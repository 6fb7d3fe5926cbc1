"""aeflib.io: self-describing pruned folders (save/load), stock transformers export, corrupt folders, atomicity."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import aeflib.io as aio
import aeflib.models
from aeflib.models import Loaded, adapter_for, checksum
from aeflib.models.tiny import build_tiny
from aeflib.pruning import PruningPlan, apply, count_parameters, plan

IDS = torch.tensor([[1, 530, 2417, 87, 9001, 14, 48000], [2, 77, 31000, 12, 640, 5, 999]])  # [2, 7]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny matmuls gain nothing from threads, and on a busy 2-core machine OpenMP waits make them ~25x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tiny(name: str, tokenizer=None, gqa_mode: str = "query-heads", dtype=torch.float32) -> Loaded:
    """A tiny model without reloading the tokenizer (the session fixture's is passed in when a test needs it)."""
    model = build_tiny(name, dtype=dtype)
    return Loaded(model, tokenizer, adapter_for(model, gqa_mode))


def _random_plan(model, adapter, layers, ratio, seed) -> PruningPlan:
    gen = torch.Generator().manual_seed(seed)
    scores = {gs.key: torch.rand(gs.n, generator=gen) for gs in adapter.all_group_sets(model, layers)}
    return plan(model, adapter, scores, pruning_ratio=ratio, layers=layers, criterion="random")


def _prune_non_uniform(loaded) -> list[PruningPlan]:
    """Default layers (1..2) at 25 %, then layer 2 again at 50 %: four different widths, Bloom heads not contiguous."""
    model, _, adapter = loaded
    plans = [_random_plan(model, adapter, None, 0.25, seed=0)]
    apply(model, adapter, plans[0])
    plans.append(_random_plan(model, adapter, [2], 0.5, seed=1))
    apply(model, adapter, plans[1])
    return plans


def _prune_uniform(loaded, ratio: float) -> None:
    model, _, adapter = loaded
    apply(model, adapter, _random_plan(model, adapter, range(adapter.n_layers(model)), ratio, seed=0))


@torch.no_grad()
def _logits(model) -> torch.Tensor:
    return model(IDS).logits  # [2, 7, vocab]


def _run(code: str) -> None:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]


# ---- save / load ---------------------------------------------------------------------------------------------------
def test_save_load_non_uniform_keeps_logits_widths_and_ties(tiny, tmp_path):
    model, tokenizer, adapter = tiny
    plans = _prune_non_uniform(tiny)
    saved_plans = copy.deepcopy(plans)
    widths = adapter.all_widths(model)
    assert len({(w.n_heads, w.n_channels) for w in widths}) >= 3
    folder = aio.save(model, tokenizer, tmp_path / "ck", adapter=adapter, plan=plans, metrics={"ppl": 12.5},
                      provenance={"base_model": "tiny", "seed": 7})
    loaded = aeflib.models.load(folder)  # dispatches to aeflib.io.load
    assert torch.equal(_logits(model), _logits(loaded.model))
    assert [w.to_dict() for w in loaded.adapter.all_widths(loaded.model)] == [w.to_dict() for w in widths]
    assert checksum(loaded.model) == checksum(model)
    assert count_parameters(loaded.model) == count_parameters(model)
    emb, head = loaded.model.get_input_embeddings().weight, loaded.model.get_output_embeddings().weight
    assert (emb is head) == (model.get_input_embeddings().weight is model.get_output_embeddings().weight)
    assert loaded.tokenizer("hello world")["input_ids"] == tokenizer("hello world")["input_ids"]
    assert loaded.model.generation_config.eos_token_id == model.generation_config.eos_token_id

    assert [p.params_after for p in plans] == [p.params_after for p in saved_plans]  # save leaves the plans alone
    manifest = aio.read_manifest(folder)
    assert manifest["format_version"] == aio.FORMAT_VERSION
    assert [PruningPlan.from_dict(d).kept("head") for d in manifest["plans"]] == [p.kept("head") for p in plans]
    prov = manifest["provenance"]
    assert prov["base_model"] == "tiny" and prov["seed"] == 7 and prov["method"] == "random"
    assert prov["checksum"] == checksum(model) and prov["params"] == count_parameters(model)
    assert prov["pruning"][0]["head_ratio_achieved"] == plans[0].summary()["head_ratio_achieved"]
    assert set(prov["versions"]) >= {"aeflib", "transformers", "torch"}
    assert manifest["metrics"] == {"ppl": 12.5}


def test_save_writes_no_pickle(tmp_path, tokenizer):
    model, tokenizer, adapter = _tiny("tiny-bloom", tokenizer)  # tied embeddings, stored once
    folder = aio.save(model, tokenizer, tmp_path / "ck", adapter=adapter)
    names = [p.name for p in folder.iterdir()]
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"))], names
    assert aio.read_manifest(folder)["model"]["tied"] == {"lm_head.weight": "transformer.word_embeddings.weight"}
    assert "lm_head.weight" not in load_file(folder / aio.WEIGHTS)


def test_load_gqa_kv_groups_mode_and_dtype(tmp_path):
    model, tokenizer, adapter = loaded = _tiny("tiny-gqa", gqa_mode="kv-groups")
    _prune_uniform(loaded, 0.5)  # 2 kv groups -> 1: 3 query heads / 1 kv head
    assert adapter.widths(model, 0).n_kv_heads == 1
    folder = aio.save(model, None, tmp_path / "ck", adapter=adapter)
    back = aio.load(folder)
    assert back.tokenizer is None
    assert back.adapter.gqa_mode == "kv-groups" and torch.equal(_logits(model), _logits(back.model))
    half = aio.load(folder, dtype="bfloat16")
    assert next(half.model.parameters()).dtype == torch.bfloat16
    torch.testing.assert_close(_logits(half.model).float(), _logits(model), atol=0.1, rtol=0.1)


def test_save_load_bf16_model_keeps_dtype_and_logits(tmp_path):
    model, tokenizer, adapter = loaded = _tiny("tiny-llama", dtype=torch.bfloat16)
    _prune_non_uniform(loaded)
    back = aio.load(aio.save(model, None, tmp_path / "ck", adapter=adapter))
    assert next(back.model.parameters()).dtype == torch.bfloat16
    assert torch.equal(_logits(model), _logits(back.model))


# ---- atomicity -----------------------------------------------------------------------------------------------------
def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_save_failure_leaves_no_folder(tmp_path, monkeypatch):
    model, tokenizer, adapter = _tiny("tiny-llama")

    def broken(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(aio, "_write_weights", broken)
    with pytest.raises(OSError, match="simulated"):
        aio.save(model, tokenizer, tmp_path / "ck", adapter=adapter)
    assert not (tmp_path / "ck").exists() and _leftovers(tmp_path) == []


def test_save_overwrite_is_atomic_and_opt_in(tmp_path, monkeypatch):
    model, tokenizer, adapter = loaded = _tiny("tiny-llama")
    folder = aio.save(model, tokenizer, tmp_path / "ck", adapter=adapter)
    old = checksum(model)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        aio.save(model, tokenizer, folder, adapter=adapter)
    _prune_non_uniform(loaded)
    with monkeypatch.context() as m:
        m.setattr(aio, "_write_weights", lambda *a, **k: (_ for _ in ()).throw(OSError("simulated")))
        with pytest.raises(OSError, match="simulated"):
            aio.save(model, tokenizer, folder, adapter=adapter, overwrite=True)
    assert aio.read_manifest(folder)["model"]["checksum"] == old and _leftovers(tmp_path) == []
    aio.save(model, tokenizer, folder, adapter=adapter, overwrite=True)
    assert aio.read_manifest(folder)["model"]["checksum"] == checksum(model) and _leftovers(tmp_path) == []
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a checkpoint folder"):
        aio.save(model, tokenizer, tmp_path / "other", adapter=adapter, overwrite=True)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork to kill a save mid-way")
def test_save_removes_temp_folder_of_a_killed_save_and_nothing_else(tmp_path):
    """A process killed inside save leaves its hidden temp folder; the next save to that target removes it."""
    model, _, adapter = _tiny("tiny-llama")
    pid = os.fork()  # a child process that dies inside save, as a kernel killed during stage 04 does
    if pid == 0:
        def killed(state, path, metadata):
            path.write_bytes(b"half")
            os._exit(3)

        aio._write_weights = killed
        try:
            aio.save(model, None, tmp_path / "ck", adapter=adapter)
        finally:
            os._exit(4)  # never return into pytest from the child
    assert os.waitpid(pid, 0)[1] >> 8 == 3
    (stale,) = _leftovers(tmp_path)
    assert stale.startswith(".ck.tmp-")
    prefix, host = stale.split("-")[:2]
    live = tmp_path / f"{prefix}-{host}-{os.getpid()}-live"  # the same form, written by a process that runs
    live.mkdir()
    mine = [tmp_path / ".ck.tmp-mine", tmp_path / ".other.tmp-x", tmp_path / "notes"]  # not save's temp names
    for p in mine:
        p.mkdir()
    aio.save(model, None, tmp_path / "ck", adapter=adapter)
    assert not (tmp_path / stale).exists()
    assert live.is_dir() and all(p.is_dir() for p in mine)
    assert aio.load(tmp_path / "ck").model is not None


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_save_after_a_save_killed_mid_swap_restores_the_previous_checkpoint(tmp_path, monkeypatch):
    """Killed between setting the old folder aside and renaming the new one in: the target is missing."""
    model, _, adapter = _tiny("tiny-llama")
    names = []
    with monkeypatch.context() as m:  # learn save's temp-name form (host, pid) from a save that fails
        m.setattr(aio, "_write_weights", lambda state, path, meta: names.append(path.parent.name) or 1 / 0)
        with pytest.raises(ZeroDivisionError):
            aio.save(model, None, tmp_path / "ck", adapter=adapter)
    parts = names[0].split("-")
    assert len(parts) == 4 and (parts[0], parts[2]) == (".ck.tmp", str(os.getpid()))
    host = parts[1]
    folder = aio.save(model, None, tmp_path / "ck", adapter=adapter)
    before = aio.read_manifest(folder)["model"]["checksum"]
    folder.rename(tmp_path / f".ck.old-{host}-{_dead_pid()}-0a1b2c3d")  # what the killed swap left
    with pytest.raises(FileExistsError, match="already exists"):
        aio.save(build_tiny("tiny-llama", seed=1), None, folder)
    assert aio.read_manifest(folder)["model"]["checksum"] == before and _leftovers(tmp_path) == []


# ---- corrupt folders -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    loaded = _tiny("tiny-gqa")
    _prune_non_uniform(loaded)
    return aio.save(loaded.model, None, tmp_path_factory.mktemp("io") / "ck", adapter=loaded.adapter)


@pytest.fixture
def copy_of(saved, tmp_path):
    import shutil

    return Path(shutil.copytree(saved, tmp_path / "ck"))


def _edit_manifest(folder: Path, edit) -> None:
    manifest = json.loads((folder / aio.MANIFEST).read_text())
    edit(manifest)
    (folder / aio.MANIFEST).write_text(json.dumps(manifest))


def test_load_rejects_bad_json(copy_of):
    (copy_of / aio.MANIFEST).write_text('{"format": "aeflib-pruned-checkpoint", "format_version": 1,')
    with pytest.raises(aio.CheckpointError, match=r"aeflib\.json is not valid JSON"):
        aio.load(copy_of)


def test_load_rejects_truncated_weights(copy_of):
    weights = copy_of / aio.WEIGHTS
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(aio.CheckpointError, match=r"model\.safetensors has \d+ bytes, .* records \d+: the file is "
                                                  "truncated"):
        aio.load(copy_of)
    _edit_manifest(copy_of, lambda m: m["files"].pop(aio.WEIGHTS))  # size check skipped: safetensors itself fails
    with pytest.raises(aio.CheckpointError, match=r"model\.safetensors: cannot read the weights .* corrupt or "
                                                  "truncated"):
        aio.load(copy_of)


def test_load_rejects_newer_format_version(copy_of):
    _edit_manifest(copy_of, lambda m: m.update(format_version=aio.FORMAT_VERSION + 1))
    newer, ours = aio.FORMAT_VERSION + 1, aio.FORMAT_VERSION
    with pytest.raises(aio.CheckpointError, match=rf"format_version {newer} was written by a newer aeflib.*<= {ours}"):
        aio.load(copy_of)


def test_load_rejects_manifest_paths_outside_the_folder(copy_of):
    _edit_manifest(copy_of, lambda m: m.update(weights="../elsewhere.safetensors"))
    with pytest.raises(aio.CheckpointError, match=r"must name plain files inside the folder"):
        aio.load(copy_of)


def test_load_rejects_weights_that_do_not_match_recorded_widths(copy_of):
    def shrink(m):  # the plans rebuild the widths: layer 1 keeps one channel fewer
        m["plans"][0]["keep"]["1.channel"].pop()

    _edit_manifest(copy_of, shrink)
    with pytest.raises(aio.CheckpointError, match=r"do not match the widths recorded.*\n  layer 1 "
                                                  r"model\.layers\.1\.mlp\.down_proj\.weight: model\.safetensors "
                                                  r"has \[96, 120\], expected \[96, 119\]"):
        aio.load(copy_of)


def _keep_head_99(m):
    m["plans"][0]["keep"]["1.head"][-1] = 99


@pytest.mark.parametrize(("edit", "message"), [
    (_keep_head_99, r"plans\[0\]\.keep\['1\.head'\] must list at least one group index in \[0, 6\), each once, "
                    r"ascending; got \[0, 1, \d, 99\]"),
    (lambda m: m["plans"][0]["keep"]["1.head"].__setitem__(1, 0), r"keep\['1\.head'\] must list .* got \[0, 0, \d"),
    (lambda m: m["plans"][0]["keep"]["1.channel"].insert(0, -1), r"keep\['1\.channel'\] must list .* got \[-1, "),
    (lambda m: m["plans"][0]["n_groups"].update({"1.head": "6"}), r"n_groups\['1\.head'\] = '6' is not a positive"),
    (lambda m: m["model"].update(tied={"forward": "model.embed_tokens.weight"}),
     r"model\.tied 'forward' -> 'model\.embed_tokens\.weight': an alias must name a parameter"),
    (lambda m: m["model"].update(tied={"lm_head.weight": "model.layers.0.mlp.down_proj.weight"}),
     r"model\.tied 'lm_head\.weight' -> 'model\.layers\.0\.mlp\.down_proj\.weight'.*of its shape"),
    (lambda m: m["model"].update(attn_implementation="kernels-community/flash-attn"),
     r"model\.attn_implementation 'kernels-community/flash-attn' is not one of \['eager', 'sdpa'"),
    (lambda m: m["model"].update(dtype="int8"), r"model\.dtype 'int8' is not one of"),
    (lambda m: m["model"].update(buffers={"model.rotary_emb.inv_freq": "Tensor"}), r"model\.buffers must map"),
    (lambda m: m.update(format_version=True), r"not an aeflib checkpoint manifest"),
    (lambda m: m["files"].update({"config.json": "big"}), r"'files' must map file names to sizes"),
    (lambda m: m["model"].update(model_type="bloom"), r"config\.json: model_type 'llama' differs from 'bloom'"),
])
def test_load_hand_edited_manifest_raises_checkpoint_error_naming_it(copy_of, edit, message):
    _edit_manifest(copy_of, edit)
    with pytest.raises(aio.CheckpointError, match=message) as info:
        aio.load(copy_of)
    assert str(copy_of) in str(info.value)


@pytest.mark.parametrize(("name", "message"), [
    ("tokenizer.json", r"the tokenizer files \[.*'tokenizer\.json'.*\] cannot be read \(JSONDecodeError"),
    ("tokenizer_config.json", r"the tokenizer files .* cannot be read"),
    ("generation_config.json", r"generation_config\.json is not valid JSON"),
])
def test_load_corrupt_file_of_recorded_size_raises_checkpoint_error_naming_it(tmp_path, tokenizer, name, message):
    model, _, adapter = _tiny("tiny-llama")
    folder = aio.save(model, tokenizer, tmp_path / "ck", adapter=adapter)
    path = folder / name
    path.write_bytes(b"\x00" * path.stat().st_size)  # the size check passes: the content is garbage
    with pytest.raises(aio.CheckpointError, match=message) as info:
        aio.load(folder)
    assert str(folder) in str(info.value) and info.value.__cause__ is not None


@pytest.mark.parametrize("name", ["tiny-gqa", "tiny-baichuan"])
def test_models_load_pruned_folder_without_manifest_says_the_manifest_is_missing(tmp_path, name):
    loaded = _tiny(name)
    _prune_non_uniform(loaded)
    folder = aio.save(loaded.model, None, tmp_path / "ck", adapter=loaded.adapter)
    (folder / aio.MANIFEST).unlink()
    with pytest.raises(ValueError, match=rf"{folder} is a checkpoint written by aeflib\.io\.save \(model\.safetensors "
                                         r"records aeflib format 2\) but its manifest aeflib\.json is missing"):
        aeflib.models.load(folder)


@pytest.mark.parametrize(("value", "message"), [
    ("3", r"cannot rebuild the recorded structure: .*num_hidden_layers"),
    (-1, r"cannot rebuild the recorded structure")])
def test_load_config_transformers_rejects_raises_checkpoint_error(copy_of, value, message):
    _edit_manifest(copy_of, lambda m: m["files"].pop("config.json"))  # so that the size record lets the edit through
    config = json.loads((copy_of / "config.json").read_text())
    (copy_of / "config.json").write_text(json.dumps({**config, "num_hidden_layers": value}))
    with pytest.raises(aio.CheckpointError, match=rf"{copy_of}.*{message}"):
        aio.load(copy_of)


def test_load_manifest_that_is_a_folder_raises_checkpoint_error(copy_of):
    (copy_of / aio.MANIFEST).unlink()
    (copy_of / aio.MANIFEST).mkdir()
    with pytest.raises(aio.CheckpointError, match=r"aeflib\.json cannot be read \(IsADirectoryError"):
        aio.load(copy_of)


def _as_format_1(manifest: dict, widths: list[dict], with_plans: bool = True) -> None:
    """Rewrite a manifest as aeflib format 1 wrote it: per-layer widths and per-layer head/channel plans."""
    old = []
    for d in manifest["plans"]:
        kind_of = {k: k.split(".") for k in d["keep"]}
        per = {f"{field}_{kind}s": {i: d[src][k] for k, (i, kd) in kind_of.items() if kd == kind}
               for kind in ("head", "channel") for field, src in (("keep", "keep"), ("n", "n_groups"))}
        rest = {k: v for k, v in d.items() if k not in ("keep", "n_groups", "units", "gqa_mode")}
        old.append({**per, "head_unit": d["units"]["head"], **rest, "extra": {}})
    manifest.update(format_version=1, plans=old if with_plans else [])
    manifest["model"]["layers"] = widths


def test_format_1_checkpoint_loads_or_says_how_to_convert(tmp_path):
    model, _, adapter = loaded = _tiny("tiny-bloom")
    _prune_non_uniform(loaded)
    widths = [{**w.to_dict(), "kept_heads": adapter.kept_heads(model, i)}
              for i, w in enumerate(adapter.all_widths(model))]
    folder = aio.save(model, None, tmp_path / "ck", adapter=adapter)
    _edit_manifest(folder, lambda m: _as_format_1(m, widths))
    back = aio.load(folder)
    assert torch.equal(_logits(back.model), _logits(model))
    assert [back.adapter.kept_heads(back.model, i) for i in range(4)] == [w["kept_heads"] for w in widths]
    _edit_manifest(folder, lambda m: m.update(plans=[]))
    with pytest.raises(aio.CheckpointError, match=r"format_version 1 checkpoint records per-layer widths its plans do "
                                                  r"not rebuild \(layers \[1, 2\]\).*Convert it"):
        aio.load(folder)


def test_load_rejects_modified_weights(copy_of):
    weights = copy_of / aio.WEIGHTS
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF  # same size, one tensor byte changed
    weights.write_bytes(bytes(data))
    with pytest.raises(aio.CheckpointError, match=r"checksum .* differs .* the weights were modified"):
        aio.load(copy_of)


def test_load_rejects_missing_config_and_never_runs_folder_code(copy_of, tmp_path):
    marker = tmp_path / "ran"
    (copy_of / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    config = json.loads((copy_of / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (copy_of / "config.json").write_text(json.dumps(config))
    _edit_manifest(copy_of, lambda m: m["files"].pop("config.json"))
    aio.load(copy_of)
    assert not marker.exists()
    (copy_of / "config.json").unlink()
    with pytest.raises(aio.CheckpointError, match=r"config\.json is missing"):
        aio.load(copy_of)


# ---- a fresh process: stock transformers (no aeflib import) on exported folders, then aeflib on saved ones ----------
@pytest.fixture(scope="module")
def fresh_process(tmp_path_factory, tokenizer):
    """Write folders, reload them all in ONE new Python process (one interpreter start), return both sides' logits."""
    base = tmp_path_factory.mktemp("fresh")
    expected: dict[str, torch.Tensor] = {}
    for name, ratio in (("tiny-llama", 0.5), ("tiny-gqa", 0.25), ("tiny-bloom", None)):
        loaded = _tiny(name, tokenizer)
        if ratio is not None:  # uniform: every layer pruned alike (4 -> 2 heads; 6/2 -> 4/2 heads)
            _prune_uniform(loaded, ratio)
        aio.export_hf(loaded.model, loaded.tokenizer, base / f"hf-{name}", loaded.adapter)
        expected[f"hf-{name}"] = _logits(loaded.model)
    for name in ("tiny-gqa", "tiny-bloom"):
        loaded = _tiny(name, tokenizer)
        aio.save(loaded.model, loaded.tokenizer, base / f"aef-{name}", plan=_prune_non_uniform(loaded))
        expected[f"aef-{name}"] = _logits(loaded.model)
    _run(f"""
import sys, torch
from transformers import AutoModelForCausalLM
from safetensors.torch import save_file
ids, base, out = torch.tensor({IDS.tolist()}), {str(base)!r}, {{}}
with torch.no_grad():
    for name in {[k for k in expected if k.startswith("hf-")]}:
        out[name] = AutoModelForCausalLM.from_pretrained(base + '/' + name).eval()(ids).logits
    assert not [m for m in sys.modules if m.startswith('aeflib')], 'stock reload imported aeflib'
    import aeflib.models
    for name in {[k for k in expected if k.startswith("aef-")]}:
        out[name] = aeflib.models.load(base + '/' + name).model(ids).logits
save_file(out, base + '/out.safetensors')
""")
    return base, expected, load_file(base / "out.safetensors")


@pytest.mark.parametrize("name", ["aef-tiny-gqa", "aef-tiny-bloom"])
def test_load_in_fresh_process_equals_in_memory(fresh_process, name):
    _, expected, got = fresh_process
    assert torch.equal(expected[name], got[name])


@pytest.mark.parametrize("name", ["hf-tiny-llama", "hf-tiny-gqa", "hf-tiny-bloom"])
def test_export_hf_reloads_in_stock_transformers_without_aeflib(fresh_process, name):
    base, expected, got = fresh_process
    assert torch.equal(expected[name], got[name])
    if name == "hf-tiny-gqa":
        config = json.loads((base / name / "config.json").read_text())
        assert (config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]) == (4, 2, 16)
        assert config["intermediate_size"] == 120


# ---- export to stock transformers: what cannot be exported -----------------------------------------------------
def test_export_hf_baichuan_loads_with_aeflib_class(tmp_path):
    from transformers import AutoModelForCausalLM

    loaded = _tiny("tiny-baichuan")
    _prune_uniform(loaded, 0.5)
    folder = aio.export_hf(loaded.model, loaded.tokenizer, tmp_path / "hf", loaded.adapter)
    assert json.loads((folder / "config.json").read_text())["model_type"] == "baichuan"
    back = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=False).eval()
    assert torch.equal(_logits(loaded.model), _logits(back))


def test_export_hf_refuses_non_uniform_model(tmp_path):
    loaded = _tiny("tiny-llama")
    _prune_non_uniform(loaded)
    with pytest.raises(aio.ExportError, match=r"layers \[0, 3\]: 4 heads / 4 kv heads / 128 channels; layers \[1\]: "
                                              r"3 heads.*not uniform.*layers=range\(4\).*aeflib\.io\.save"):
        aio.export_hf(loaded.model, loaded.tokenizer, tmp_path / "hf", loaded.adapter)
    assert not (tmp_path / "hf").exists()


def test_export_hf_refuses_head_counts_stock_config_rejects(tmp_path):
    loaded = _tiny("tiny-llama")
    _prune_uniform(loaded, 0.25)  # 3 heads of 16 dims; transformers requires hidden_size 64 % heads == 0
    with pytest.raises(aio.ExportError, match=r"cannot export 3 query heads.*multiple of num_attention_heads.*"
                                              r"legal uniform head counts: \[1, 2, 4\].*aeflib\.io\.save"):
        aio.export_hf(loaded.model, loaded.tokenizer, tmp_path / "hf", loaded.adapter)


def test_export_hf_refuses_pruned_bloom_naming_the_width(tmp_path):
    loaded = _tiny("tiny-bloom")
    _prune_uniform(loaded, 0.5)
    with pytest.raises(aio.ExportError, match=r"implies other shapes.*\n  layer 0 transformer\.h\.0\.mlp\."
                                              r"dense_4h_to_h\.weight: the model has \[64, 128\], expected \[64, "
                                              r"256\](.|\n)*4 \* hidden_size(.|\n)*aeflib\.io\.save"):
        aio.export_hf(loaded.model, loaded.tokenizer, tmp_path / "hf", loaded.adapter)


def test_load_names_a_missing_folder_and_a_file_given_as_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"checkpoint folder .*nope does not exist"):
        aio.load(tmp_path / "nope")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(NotADirectoryError, match=r"file\.txt is a file, not a folder"):
        aio.load(tmp_path / "file.txt")


# ---- crafted manifests: every one is a CheckpointError or loads the very model saved ---------------------------------
_ODD_VALUES = ("1", "", [], {}, None, True, 1.5, -1, 99, 10**30, 2**63, -(10**30), float("nan"), "forward",
               "transformer.h", "kernels-community/flash-attn", [0, 0], {"a": 1})


def _paths(value, prefix=()):
    """Every (path to a value) in a JSON tree, the root excluded."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        yield (*prefix, k)
        yield from _paths(v, (*prefix, k))


def _mutate(manifest: dict, rng) -> str:
    """Apply one seeded mutation in place; returns what it did."""
    paths = list(_paths(manifest))
    if not paths:
        return "nothing left"
    path = rng.choice(paths)
    *head, last = path
    parent = manifest
    for k in head:
        parent = parent[k]
    value = parent[last]
    how = rng.choice(["replace", "replace", "delete", "extra", "dup", "swap", "pop", "append", "tied"])
    if isinstance(manifest.get("model"), dict) and (how == "tied" or how == "extra" and value == {}):
        alias, target = rng.choice([("forward", "transformer.word_embeddings.weight"),
                                    ("lm_head.weight", "forward"), ("transformer.h", "lm_head.weight"),
                                    ("lm_head.weight", "transformer.h.0.mlp.dense_4h_to_h.weight"),
                                    ("transformer.word_embeddings.weight", "lm_head.weight"),
                                    ("lm_head", "transformer.word_embeddings.weight")])
        manifest["model"]["tied"] = {alias: target}
        return f"model.tied = {{{alias!r}: {target!r}}}"
    if how == "delete" and isinstance(parent, dict):
        del parent[last]
        return f"delete {path}"
    if how == "extra" and isinstance(value, dict):
        value[rng.choice(["x", "1.head", "99.channel", "__class__"])] = rng.choice(_ODD_VALUES)
        return f"extra key in {path}"
    if isinstance(value, list) and value and how in ("dup", "swap", "pop", "append"):
        if how == "dup":
            value[-1] = value[0]
        elif how == "swap":
            value.reverse()
        elif how == "pop":
            value.pop()
        else:
            value.append(value[-1] if not isinstance(value[-1], int) else value[-1] + rng.choice([1, 50, 10**6]))
        return f"{how} in {path}"
    parent[last] = new = rng.choice(_ODD_VALUES)
    return f"{path} = {new!r}"


@pytest.fixture(scope="module")
def tied_saved(tmp_path_factory):
    loaded = _tiny("tiny-bloom")
    _prune_non_uniform(loaded)
    folder = aio.save(loaded.model, None, tmp_path_factory.mktemp("tied") / "ck", adapter=loaded.adapter)
    assert aio.read_manifest(folder)["model"]["tied"]  # lm_head is tied to the embedding
    return folder, _logits(loaded.model)


@pytest.mark.parametrize("seed", range(8))
def test_load_crafted_manifest_raises_checkpoint_error_or_loads_the_saved_model(tied_saved, tmp_path, seed):
    import random
    import shutil

    saved_folder, expected = tied_saved
    folder = Path(shutil.copytree(saved_folder, tmp_path / "ck"))
    original = (saved_folder / aio.MANIFEST).read_text()
    rng = random.Random(seed)
    outcomes = []
    for _ in range(20):
        manifest = json.loads(original)
        done = [_mutate(manifest, rng) for _ in range(rng.choice([1, 1, 2]))]
        (folder / aio.MANIFEST).write_text(json.dumps(manifest))
        modules = set(sys.modules)
        try:
            back = aio.load(folder)
        except aio.CheckpointError as err:
            assert str(folder / aio.MANIFEST) in str(err) or str(folder) in str(err), (done, err)
            outcomes.append("refused")
        except Exception as err:  # noqa: BLE001 - the point of the test: nothing else may escape
            pytest.fail(f"{done} raised {type(err).__name__}: {err}")
        else:
            assert torch.equal(_logits(back.model), expected), done
            outcomes.append("loaded")
        assert not {m for m in set(sys.modules) - modules if "kernels" in m or "flash" in m}, done
    assert "refused" in outcomes
