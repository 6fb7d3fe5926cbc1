"""aeflib.orchestration.runner and kernel: the run folder (name, reuse, lock), dead kernels, the stage interpreter,
clean executed notebooks, interrupts and file-system errors — each ends ``aef run`` with one line.

All on stand-in notebooks (a few lines each, seconds per stage): the real notebooks run in test_notebooks.py.
"""

from __future__ import annotations

import errno
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from stand_ins import write_stand_in
from typer.testing import CliRunner

from aeflib.orchestration import runner
from aeflib.orchestration.cli import app
from aeflib.orchestration.report import StageRecord, write_report
from aeflib.orchestration.runner import KernelDied, RunFolderError
from aeflib.orchestration.settings import STAGE_NAMES as STAGES
from aeflib.orchestration.settings import RunSettings

ROOT = Path(__file__).resolve().parents[1]
#: stage 01's stand-in: records the model in metrics.json as the real notebook does
WRITE_MODEL = 'import json\n(Path(run_dir) / "metrics.json").write_text(json.dumps({"model": {"name": model}}))'
#: a stand-in that says it started, then waits (at most 60 s) for the test to create ``go``
WAIT_FOR_GO = ('(Path(run_dir) / "started").write_text("")\n'
               'for _ in range(600):\n'
               '    if (Path(run_dir) / "go").exists():\n'
               '        break\n'
               '    time.sleep(0.1)')


def _notebooks(folder: Path, bodies: dict[str, str] | None = None) -> Path:
    """Stand-in notebooks for every stage in ``folder``: ``bodies[stage]`` or one that writes ``<stage>.txt``."""
    folder.mkdir(parents=True, exist_ok=True)
    for stage in STAGES:
        body = (bodies or {}).get(stage, f'(Path(run_dir) / "{stage}.txt").write_text(f"{{seed}} {{time.time()}}")')
        write_stand_in(folder, stage, body)
    return folder


@pytest.fixture
def notebooks(tmp_path, monkeypatch):
    """Install stand-in notebooks (``AEFLIB_NOTEBOOKS``); call with bodies to replace some stages."""
    def install(bodies: dict[str, str] | None = None) -> Path:
        folder = _notebooks(tmp_path / "notebooks", bodies)
        monkeypatch.setenv(runner.NOTEBOOKS_ENV, str(folder))
        return folder

    install()
    return install


def _cli(*args: str):
    return CliRunner().invoke(app, ["run", "--model", "tiny-llama", *args])


def _one_error_line(result, code: int) -> str:
    """One line (after the banner and the stage lines, if any), the exit status ``code``, no traceback."""
    assert result.exit_code == code and isinstance(result.exception, SystemExit), (result.output, result.exception)
    lines = [line for line in result.output.strip().splitlines()
             if line and not line.startswith(("aef run: ", "  "))]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---- a dead kernel -----------------------------------------------------------------------------------------------
def test_run_dead_kernel_ends_with_one_line_naming_stage_cause_and_log_and_resumes(notebooks, tmp_path):
    runs = tmp_path / "runs"
    notebooks({"02_importance": "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)"})
    result = _cli("--name", "r", "--runs-root", str(runs), "--stages", "01,02")
    line = _one_error_line(result, 1)
    log = runs / "r" / ".aef" / "02_importance.stderr"
    assert line.startswith("stage 02_importance failed: its kernel died in cell 3"), line
    assert "killed by signal 9 (SIGKILL): often the out-of-memory killer" in line and str(log) in line, line
    assert log.is_file()
    report = (runs / "r" / "report.md").read_text()
    assert "| 01_model_and_structures | ran |" in report and "| 02_importance | failed |" in report
    assert not (runs / "r" / ".aef" / "02_importance.json").exists()
    notebooks()                                                  # the cause is gone: the rerun resumes at 02
    again = runner.run(RunSettings(model="tiny-llama"), name="r", runs_root=runs, stages=["01", "02"])
    assert [r.status for r in again.stages] == ["skipped", "ran"]


def test_kernel_died_is_a_stage_failure_with_the_exit_status(notebooks, tmp_path):
    notebooks({"01_model_and_structures": "import os\nos._exit(3)"})
    with pytest.raises(KernelDied, match=r"kernel died in cell 3, exited with status 3") as info:
        runner.run(RunSettings(model="tiny-llama"), name="r", runs_root=tmp_path / "runs", stages=["01"])
    assert info.value.returncode == 3 and isinstance(info.value, runner.StageFailed)


# ---- the interpreter ---------------------------------------------------------------------------------------------
def test_run_stages_use_the_interpreter_running_aef_not_a_python3_kernelspec(notebooks, tmp_path, monkeypatch):
    decoy = tmp_path / "jupyter" / "kernels" / "python3"
    decoy.mkdir(parents=True)
    (decoy / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"], "language": "python",
        "display_name": "decoy", "env": {"AEF_DECOY_KERNEL": "started from the decoy kernel spec"}}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    notebooks({"01_model_and_structures": 'import json, os, sys\n(Path(run_dir) / "kernel.json").write_text('
                                          'json.dumps([sys.executable, os.environ.get("AEF_DECOY_KERNEL")]))'})
    outcome = runner.run(RunSettings(model="tiny-llama"), name="r", runs_root=tmp_path / "runs", stages=["01"])
    assert json.loads((outcome.run_dir / "kernel.json").read_text()) == [sys.executable, None]


# ---- clean executed notebooks ------------------------------------------------------------------------------------
def test_run_executed_notebook_holds_no_progress_widget_or_stderr_stream(notebooks, tmp_path):
    """tqdm.auto in a kernel is tqdm's notebook class (transformers' GGUF loader uses it): no frozen widget."""
    notebooks({"01_model_and_structures": (
        "from aeflib import artifacts\nartifacts.setup_notebook(progress)\nfrom tqdm.auto import tqdm\n"
        'bar = tqdm(range(3), desc="Converting and de-quantizing GGUF tensors...")\nn = sum(1 for _ in bar)\n'
        '(Path(run_dir) / "tqdm.txt").write_text(f"{bar.disable} {n}")\n'
        'import sys\nprint("a library warning", file=sys.stderr)\nprint("kept")')})
    outcome = runner.run(RunSettings(model="tiny-llama"), name="r", runs_root=tmp_path / "runs", stages=["01"])
    assert (outcome.run_dir / "tqdm.txt").read_text() == "True 3"
    outputs = [o for c in nbformat.read(outcome.stages[0].notebook, as_version=4).cells for o in c.get("outputs", [])]
    assert not [o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert not [o for o in outputs if o.get("name") == "stderr"], outputs
    assert any("kept" in o.get("text", "") for o in outputs)
    assert "a library warning" in (outcome.run_dir / ".aef" / "01_model_and_structures.stderr").read_text()


# ---- the run folder ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../escape", "ABSOLUTE", "a/b", ".."])
def test_cli_run_refuses_a_name_outside_the_runs_root_and_creates_nothing(notebooks, tmp_path, name):
    runs = tmp_path / "runs"
    name = str(tmp_path / "elsewhere") if name == "ABSOLUTE" else name   # inside tmp_path even when not refused
    line = _one_error_line(_cli("--name", name, "--runs-root", str(runs)), 2)
    assert f"run name {name!r} does not stay inside runs_root" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notebooks"]


def test_cli_run_refuses_a_folder_aef_did_not_make_and_changes_nothing(notebooks, tmp_path):
    folder = tmp_path / "runs" / "userdata"
    folder.mkdir(parents=True)
    (folder / "report.md").write_text("my notes")
    (folder / "metrics.json").write_text('{"mine": 1}')
    before = _snapshot(folder)
    line = _one_error_line(_cli("--name", "userdata", "--runs-root", str(tmp_path / "runs")), 2)
    assert "is not a run folder made by aef run (it has no .aef/ folder)" in line and "userdata" in line, line
    assert _snapshot(folder) == before


def test_cli_run_refuses_another_model_and_leaves_the_folder_byte_for_byte(notebooks, tmp_path):
    notebooks({"01_model_and_structures": WRITE_MODEL})
    runs = tmp_path / "runs"
    assert _cli("--name", "base", "--runs-root", str(runs), "--stages", "01,02").exit_code == 0
    before = _snapshot(runs / "base")
    result = CliRunner().invoke(app, ["run", "--model", "tiny-gqa", "--name", "base", "--runs-root", str(runs)])
    line = _one_error_line(result, 2)
    assert "was made with model 'tiny-llama' (its metrics.json), this run was given model 'tiny-gqa'" in line, line
    assert _snapshot(runs / "base") == before


def test_run_removes_the_temporary_folder_a_killed_save_left(notebooks, tmp_path):
    runs = tmp_path / "runs"
    runner.run(RunSettings(model="tiny-llama"), name="r", runs_root=runs, stages=["01"])
    left = runs / "r" / ".pruned.tmp-k1ll3d"
    (left / "model.safetensors").parent.mkdir()
    (left / "model.safetensors").write_bytes(b"half a model")
    (runs / "r" / ".pruned.old-12345678").mkdir()         # a swap's previous version: maybe the only copy
    again = runner.run(RunSettings(model="tiny-llama"), name="r", runs_root=runs, stages=["01"])
    assert [r.status for r in again.stages] == ["skipped"]
    assert not left.exists() and (runs / "r" / ".pruned.old-12345678").is_dir()


def _start_aef(tmp_path: Path, *args: str) -> subprocess.Popen:
    """``aef run`` in a child process (its own interpreter: signals and locks as from a terminal)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-m", "aeflib.orchestration.cli", "run", "--model", "tiny-llama",
                             "--name", "r", "--runs-root", str(tmp_path / "runs"), "--stages", "01", *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, process: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.2)


def test_cli_run_second_run_on_a_busy_folder_fails_at_once_naming_the_holder(notebooks, tmp_path):
    """A second run on the folder is refused while the first works; SIGTERM then stops the first with a report."""
    notebooks({"01_model_and_structures": WAIT_FOR_GO})
    first = _start_aef(tmp_path)
    folder = tmp_path / "runs" / "r"
    try:
        _wait_for(folder / "started", first)
        start = time.perf_counter()
        line = _one_error_line(_cli("--name", "r", "--runs-root", str(tmp_path / "runs"), "--stages", "01"), 1)
        assert time.perf_counter() - start < 10
        assert f"run folder {folder} is in use by another aef run (pid {first.pid}, started 20" in line, line
        first.send_signal(signal.SIGTERM)
        _out, err = first.communicate(timeout=60)
    finally:
        (folder / "go").write_text("")
        if first.poll() is None:
            first.kill()
    _check_interrupted(first.returncode, err, "SIGTERM", 143, folder)


def test_run_lock_of_a_killed_run_is_not_stale(notebooks, tmp_path):
    folder = tmp_path / "runs" / "r"
    (folder / ".aef").mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time\n"
                               f"fd = os.open({str(folder / '.aef' / 'lock')!r}, os.O_RDWR | os.O_CREAT)\n"
                               "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('locked', flush=True)\ntime.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "locked\n"
    with pytest.raises(RunFolderError, match=r"in use by another aef run \(unknown\)"):
        runner.run(RunSettings(model="tiny-llama"), name="r", runs_root=folder.parent, stages=["01"])
    holder.kill()
    holder.wait(10)
    runner.run(RunSettings(model="tiny-llama"), name="r", runs_root=folder.parent, stages=["01"])


# ---- interrupts --------------------------------------------------------------------------------------------------
def _check_interrupted(returncode: int, err: str, name: str, code: int, folder: Path) -> None:
    """Exit status ``code``, one last line naming the stage and the command that resumes, which does resume."""
    assert returncode == code, err
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err and last.startswith(f"interrupted ({name}) during stage 01_model_and_structures; "
                                                       "finished: none; report: "), err
    resume = last.split("resume with: ", 1)[1]
    assert resume == shlex.join(["aef", "run", "--model", "tiny-llama", "--name", "r", "--runs-root",
                                 str(folder.parent), "--stages", "01"])
    assert "| 01_model_and_structures | interrupted |" in (folder / "report.md").read_text()
    again = CliRunner().invoke(app, shlex.split(resume)[1:])
    assert again.exit_code == 0 and "01_model_and_structures    ran" in again.output, again.output


def test_cli_run_ctrl_c_writes_the_report_and_prints_the_command_that_resumes(notebooks, tmp_path):
    notebooks({"01_model_and_structures": WAIT_FOR_GO})
    process = _start_aef(tmp_path)
    folder = tmp_path / "runs" / "r"
    try:
        _wait_for(folder / "started", process)
        process.send_signal(signal.SIGINT)
        _out, err = process.communicate(timeout=60)
    finally:
        (folder / "go").write_text("")
        if process.poll() is None:
            process.kill()
    _check_interrupted(process.returncode, err, "SIGINT", 130, folder)


# ---- file-system errors ------------------------------------------------------------------------------------------
def test_cli_run_runs_root_that_is_a_file_is_a_usage_error(notebooks, tmp_path):
    (tmp_path / "runs").write_text("not a folder")
    line = _one_error_line(_cli("--runs-root", str(tmp_path / "runs")), 2)
    assert f"runs_root {str(tmp_path / 'runs')!r} is a file, not a folder" in line, line
    assert (tmp_path / "runs").read_text() == "not a folder"


def test_cli_run_runs_root_that_cannot_be_created_ends_with_one_line(notebooks, tmp_path):
    (tmp_path / "file").write_text("")
    line = _one_error_line(_cli("--runs-root", str(tmp_path / "file" / "runs")), 1)
    assert line.startswith("error: cannot create run folder") and "Not a directory" in line, line


def _read_only(monkeypatch, folder: Path) -> None:
    """Writes under ``folder`` fail as on a read-only mount (chmod does not stop root, who runs CI containers)."""
    real_open, real_mkdir = os.open, os.mkdir

    def refuse(real):
        def call(path, *args, **kwargs):
            if Path(path).resolve().is_relative_to(folder.resolve()) and (real is real_mkdir or args and
                                                                           args[0] & (os.O_WRONLY | os.O_RDWR)):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
            return real(path, *args, **kwargs)
        return call

    monkeypatch.setattr(os, "open", refuse(real_open))
    monkeypatch.setattr(os, "mkdir", refuse(real_mkdir))


def test_cli_run_resuming_on_a_read_only_folder_ends_with_one_line_and_changes_nothing(notebooks, tmp_path,
                                                                                      monkeypatch):
    runs = tmp_path / "runs"
    assert _cli("--name", "r", "--runs-root", str(runs), "--stages", "01").exit_code == 0
    before = _snapshot(runs / "r")
    _read_only(monkeypatch, runs)
    line = _one_error_line(_cli("--name", "r", "--runs-root", str(runs), "--stages", "01"), 1)
    assert line.startswith(f"error: cannot use run folder {runs / 'r'}: [Errno 30] Read-only file system"), line
    assert _snapshot(runs / "r") == before


def test_cli_run_report_that_cannot_be_written_ends_with_one_line(notebooks, tmp_path, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), "report.md")

    monkeypatch.setattr(runner, "write_report", read_only)
    line = _one_error_line(_cli("--name", "r", "--runs-root", str(tmp_path / "runs"), "--stages", "01"), 1)
    assert "report.md cannot be written: [Errno 30] Read-only file system" in line, line


# ---- the report shows no stale numbers ---------------------------------------------------------------------------
def test_write_report_failed_stage_shows_no_numbers_from_an_earlier_invocation(tmp_path):
    rows = [{"metric": "perplexity", "task": "wikitext2", "setting": s, "value": v, "protocol": "4 windows"}
            for s, v in (("dense", 11111.5), ("no-tune", 22222.5), ("lora", 33333.5))]
    (tmp_path / "metrics.json").write_text(json.dumps({"model": {"name": "tiny-llama"},
                                                       "evaluation": {"rows": rows, "settings": {}},
                                                       "pruning": {"criterion": "aef", "param_reduction": 0.123}}))
    (tmp_path / ".aef").mkdir()
    for stage in STAGES[:5]:
        (tmp_path / ".aef" / f"{stage}.json").write_text(json.dumps({"seconds": 1.0}))
    (tmp_path / "figures").mkdir()
    for figure in ("04_plan", "06_perplexity"):
        (tmp_path / "figures" / f"{figure}.png").write_bytes(b"")
    failed = [StageRecord("06_evaluation", "failed", 1.0, tmp_path / "notebooks" / "06_evaluation.ipynb")]
    text = write_report(tmp_path, records=failed, seconds=1.0).read_text()
    assert "**No results: stage 06_evaluation failed in this invocation.**" in text
    assert "11,111" not in text and "22,222" not in text and "06_perplexity" not in text
    assert "0.1230" in text and "figures/04_plan.png" in text          # stage 04 finished: its numbers stay
    rebuilt = write_report(tmp_path).read_text()                       # from the markers: 06 has none
    assert "11,111" not in rebuilt and "has not finished with the current settings" in rebuilt


def test_run_stage_that_runs_again_invalidates_the_later_stages(notebooks, tmp_path):
    runs = tmp_path / "runs"
    runner.run(RunSettings(model="tiny-llama"), name="r", runs_root=runs, stages=["01", "02", "03"])
    runner.run(RunSettings(model="tiny-llama"), name="r", runs_root=runs, stages=["02"], force=True)
    again = runner.run(RunSettings(model="tiny-llama"), name="r", runs_root=runs, stages=["03"])
    assert [r.status for r in again.stages] == ["ran"]       # 03 used the old 02: it reruns
