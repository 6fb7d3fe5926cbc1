"""aeflib.orchestration.settings and .checks: every setting a notebook would reject is refused before any kernel.

The walk over the stage records' parameters runs ``aef run`` in-process (typer's CliRunner): a refusal happens
before any kernel starts, so each case takes milliseconds and the runs root is never created.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import nbformat
import pytest
from typer.testing import CliRunner

from aeflib.orchestration import checks, runner
from aeflib.orchestration.cli import _settings, app
from aeflib.orchestration.settings import STAGE_NAMES, RunSettings, settings_params, stage

HUGE = "1000000000000"
#: out-of-range values per parameter type, as one types them after ``--option``
BAD_BY_TYPE = {int: ["-1", "0", HUGE], float: ["nan", "-1", "0", "1", "inf"], str: ["nope", ""]}
#: out-of-range values of the list-valued parameters: wrong shapes, unknown names, beyond the model
BAD_LISTS = {
    "layers": ["3:1", "1:99", "a:b", "1:2:3", "-1:2", "2:2"],
    "criteria": [",", "nope", "l2,nope", "l2,l2"],
    "ppl_datasets": ["wikipedia", "nope:test", "wikipedia:nope", ",", "bookcorpus:test", "wikipedia:test:x"],
    "zeroshot_tasks": ["nope", "aef_qa,nope", ",", "aef_qa,aef_qa", "None"],
}
#: generated values that are valid for that parameter (a range open above, 0 meaning "none", free text)
VALID = {
    ("seed", "0"), ("show_group", "0"), ("recovery_val_size", "0"), ("efficiency_decode_tokens", "0"),
    ("prompt", "nope"), ("temperature", "1"), ("fusion_lr", "1"), ("recovery_lr", "1"), ("fisher_memory_gib", "1"),
    *((name, HUGE) for name in ("fusion_steps", "fusion_patience", "max_new_tokens", "recovery_steps",
                                "recovery_batch_size", "recovery_cutoff", "recovery_val_size", "ppl_max_windows",
                                "zeroshot_limit", "efficiency_seq_len", "efficiency_decode_tokens",
                                "efficiency_repeats", "eval_batch_size")),
}


def _base(p) -> type:
    """``int | None`` → int; list-valued parameters → list."""
    return next(t for t in (int, float, str) if p.type in (t, t | None)) if p.parse is None else list


def _cases() -> list[tuple[str, str]]:
    cases = []
    for p in settings_params():
        values = BAD_LISTS[p.name] if p.parse else BAD_BY_TYPE[_base(p)]
        cases += [(p.name, v) for v in values if (p.name, v) not in VALID]
    return cases


def test_every_parameter_has_a_refused_value_and_the_valid_exceptions_are_valid():
    refused = {name for name, _ in _cases()}
    assert refused == {p.name for p in settings_params()}
    assert set(checks.CHECKS) == {p.name for p in settings_params()}
    for name, text in VALID:
        _settings({"model": "tiny-llama", name: text})          # no ValueError: the table above is not stale


@pytest.fixture
def no_notebooks(tmp_path, monkeypatch):
    """An empty notebooks folder: a value that is not refused fails fast on the missing notebooks, runs nothing."""
    (tmp_path / "none").mkdir()
    monkeypatch.setenv(runner.NOTEBOOKS_ENV, str(tmp_path / "none"))


@pytest.mark.parametrize("name, text", _cases())
def test_cli_run_refuses_every_out_of_range_setting_with_one_line_and_creates_nothing(tmp_path, no_notebooks, name,
                                                                                      text):
    runs = tmp_path / "runs"
    option = "--" + name.replace("_", "-")
    result = CliRunner().invoke(app, ["run", "--model", "tiny-llama", option, text, "--runs-root", str(runs)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    line = lines[0]
    assert name in line or option in line, line
    p = next(q for q in settings_params() if q.name == name)
    try:
        shown = repr(p.parse(text)) if p.parse else text
    except ValueError:
        shown = text
    assert text in line or shown in line or (p.parse is None and _base(p) is float and str(float(text)) in line), \
        line
    assert not runs.exists()


@pytest.mark.parametrize("field, value, message", [
    ("calib_n", 0, r"calib_n=0: give an integer >= 1 \(calibration windows\)"),
    ("calib_seq_len", 0, r"calib_seq_len=0: give an integer >= 2 .*one-token window has no next-token target"),
    ("calib_seq_len", 1, r"calib_seq_len=1: give an integer >= 2"),
    ("ppl_max_windows", 0, r"ppl_max_windows=0: give an integer >= 1 \(windows per corpus\), or None"),
    ("zeroshot_limit", -1, r"zeroshot_limit=-1: give an integer >= 1"),
    ("temperature", math.nan, r"temperature=nan: give a finite number > 0"),
    ("device", "gpu", r"device='gpu': give \"cpu\", \"cuda\", \"cuda:N\" or \"auto\""),
    ("device", "cuda:99", r"device='cuda:99': (CUDA is not available|this machine has \d+ CUDA device)"),
    ("paper_model", "baichuan-7b", r"paper_model='baichuan-7b': choose a model with published rows"),
    ("calib_corpus", "c4", r"calib_corpus='c4': choose a corpus with a train split"),
    ("ppl_protocol", "nope", r"ppl_protocol='nope': choose a perplexity protocol from \['llm-pruner-128'"),
    ("zeroshot_tasks", "aef_qa", r"zeroshot_tasks='aef_qa': give a task set"),   # a task name needs a list
    ("zeroshot_tasks", None, r"zeroshot_tasks=None: notebook 06 shows zero-shot intervals"),
])
def test_validate_names_the_field_the_value_and_what_is_valid(field, value, message):
    with pytest.raises(ValueError, match=message):
        RunSettings.tiny(**{field: value}).validate()


@pytest.mark.parametrize("overrides, message", [
    ({"layers": [1, 5]}, r"layers=\[1, 5\]: tiny-llama has 4 decoder layers \(tiny-llama's tiny config\)"),
    ({"model": "smollm2-135m", "layers": [4, 31]}, r"smollm2-135m has 30 decoder layers"),
    ({"model": "llama-7b", "layers": [4, 33]}, r"llama-7b has 32 decoder layers"),
    ({"show_group": 4}, r"show_group=4: .* tiny-llama has 4 heads and 128 channels .* give 0\.\.3"),
    ({"recovery_micro_batch_size": 3}, r"recovery_batch_size=2: give a multiple of recovery_micro_batch_size=3"),
    ({"criteria": ["l2", "vector"]}, r"fine='element2': not among the criteria estimated in 02"),
    ({"method": "aef-learned", "calib_n": 1}, r"calib_n=1: method 'aef-learned' holds out calibration windows"),
    ({"calib_n": 85}, r"calib_n=85: .* 'wikipedia' train has 84; give calib_n <= 84"),
])
def test_validate_checks_settings_against_each_other_and_the_model_depth(overrides, message):
    with pytest.raises(ValueError, match=message):
        RunSettings.tiny(**overrides).validate()


def test_validate_accepts_the_shipped_profiles_and_a_single_task_name_from_the_cli():
    RunSettings().validate()
    for model in ("tiny-llama", "tiny-gqa", "tiny-baichuan", "tiny-bloom"):
        RunSettings.tiny(model).validate()
    for model in ("llama-7b", "vicuna-7b", "bloom-7b1", "baichuan-7b"):
        RunSettings.paper(model).validate()
    assert _settings({"model": "tiny-llama", "zeroshot_tasks": "aef_qa"}).zeroshot_tasks == ["aef_qa"]
    assert _settings({"model": "tiny-llama", "zeroshot_tasks": "local"}).zeroshot_tasks == "local"


@pytest.mark.parametrize("option, attribute", [("--ppl-max-windows", "ppl_max_windows"),
                                               ("--zeroshot-limit", "zeroshot_limit"),
                                               ("--recovery-steps", "recovery_steps"), ("--layers", "layers"),
                                               ("--fisher-memory-gib", "fisher_memory_gib")])
def test_settings_option_none_is_a_value_where_the_help_offers_it(option, attribute):
    assert getattr(_settings({"model": "tiny-llama", attribute: "None"}), attribute) is None
    offering = {p.name for p in settings_params() if "None:" in (p.cli_help or p.help)}
    assert offering == {"layers", "ppl_max_windows", "zeroshot_limit", "recovery_steps", "fisher_memory_gib"}


def test_stage_matches_full_names_and_exact_numbers_only():
    assert stage("02").name == stage("02_importance").name == "02_importance"
    for bad in ("02_importanse", "07xyz", "2", "002", "0"):
        with pytest.raises(ValueError, match=f"unknown stage '{bad}'"):
            stage(bad)


def test_cli_run_stages_refuses_every_unknown_name_before_running(tmp_path, no_notebooks):
    runs = tmp_path / "runs"
    result = CliRunner().invoke(app, ["run", "--model", "tiny-llama", "--stages", "02_importanse,07xyz,03",
                                      "--runs-root", str(runs)])
    assert result.exit_code == 2
    assert re.fullmatch(r"error: --stages '02_importanse,07xyz,03': no stage \['02_importanse', '07xyz'\]; .*",
                        result.output.strip()), result.output
    assert not runs.exists()


def test_cli_run_resolves_a_relative_model_folder_once_against_the_current_directory(tmp_path, monkeypatch):
    import aeflib.io
    import aeflib.models

    model, tokenizer, adapter = aeflib.models.load("tiny-llama")
    aeflib.io.save(model, tokenizer, tmp_path / "work" / "ckpt", adapter=adapter)
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    for name in STAGE_NAMES:       # stage 01 stands in for the real one: it opens the folder from the run folder
        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        params = nbformat.v4.new_code_cell('model = "x"\nrun_dir = "."')
        params.metadata["tags"] = ["parameters"]
        nb.cells = [params, nbformat.v4.new_code_cell(
            "from pathlib import Path\n"
            "assert Path(model, 'aeflib.json').is_file(), f'{model} is not an existing folder'")]
        nbformat.write(nb, notebooks / f"{name}.ipynb")
    monkeypatch.setenv(runner.NOTEBOOKS_ENV, str(notebooks))
    monkeypatch.chdir(tmp_path / "work")
    result = CliRunner().invoke(app, ["run", "--model", "ckpt", "--pruning-ratio", "0.25", "--name", "r",
                                      "--runs-root", "runs", "--stages", "01"])
    assert result.exit_code == 0, result.output
    absolute = str((tmp_path / "work" / "ckpt").resolve())
    assert f"aef run: {absolute}," in result.output
    marker = (tmp_path / "work" / "runs" / "r" / ".aef" / "01_model_and_structures.json").read_text()
    assert f'"model": "{absolute}"' in marker
    assert RunSettings.tiny(model="ckpt").validate().model == absolute
    assert Path(RunSettings.tiny(model="ckpt").default_name()).name.startswith("ckpt-")


@pytest.mark.parametrize("config, message", [
    (None, r"config\.json is missing or not a JSON object; give a checkpoint folder"),
    ("[1, 2]", r"config\.json is missing or not a JSON object"),
    ('{"model_type": "gpt2"}', r"config\.json has model_type 'gpt2'; supported: \["),
    ('{"model_type": "llama", "num_hidden_layers": 4}', None),
])
def test_validate_reads_a_model_folder_config_without_loading_weights(tmp_path, config, message):
    if config is not None:
        (tmp_path / "config.json").write_text(config)
    settings = RunSettings.tiny(model=str(tmp_path), layers=[1, 5])
    if message is None:       # a readable config: its depth bounds the layer range
        message = r"layers=\[1, 5\]: .* has 4 decoder layers \(.*config\.json\)"
    with pytest.raises(ValueError, match=message):
        settings.validate()


def test_validate_device_cuda_follows_the_machine(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for device in ("cuda", "cuda:0", "cpu", "auto"):
        RunSettings.tiny(device=device).validate()
    with pytest.raises(ValueError, match=r"device='cuda:1': this machine has 1 CUDA device\(s\), cuda:0\.\.cuda:0"):
        RunSettings.tiny(device="cuda:1").validate()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"device='cuda': CUDA is not available on this machine"):
        RunSettings.tiny(device="cuda").validate()
