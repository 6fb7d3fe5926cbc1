"""Run the stage notebooks with papermill into one run folder: ``aef run``.

    run(RunSettings(...), name=...)       -> RunOutcome   the notebooks of STAGES into runs/<name>/, report.md

A run folder holds the executed notebooks (``notebooks/``), every artifact the stages write (see
:mod:`aeflib.artifacts`), ``metrics.json`` and ``report.md``. Runs resume: a stage whose marker
(``.aef/<stage>.json``, written when its notebook finished without error) records the same parameters is skipped,
unless ``force``; once a stage runs, every later stage runs too (their markers are removed when it starts). A
failing stage stops the run with :class:`StageFailed`, naming the executed notebook and the failing cell; a kernel
that dies (out of memory, a crash) with :class:`KernelDied`, naming the likely cause and the kernel's stderr log
(``.aef/<stage>.stderr``). Ctrl-C or SIGTERM stop it with :class:`RunInterrupted`; the report is written in every
case.

The run folder is checked before anything is written (:func:`run_folder`): its name stays inside ``runs_root``, an
existing folder must be one ``aef run`` made (it holds ``.aef/``) and for the same model. While a run works in it,
the folder's lock (``.aef/lock``, an ``flock`` released when the process ends, however it ends) turns a second run
on the same folder away with :class:`RunFolderError` naming the holder; under it, hidden temporary folders that a
killed save left (``.pruned.tmp-*``) are removed.

Imports only :mod:`~aeflib.orchestration.settings`, :mod:`~aeflib.orchestration.report` (the run writes its
report at the end) and :mod:`~aeflib.orchestration.kernel`; the sweeps (:mod:`~aeflib.orchestration.sweep`) and
the command build on it.

Source: [ours].
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from aeflib.files import write_text
from aeflib.orchestration.kernel import clean_outputs, death_cause, kernel_manager, oom_kills
from aeflib.orchestration.report import StageRecord, write_report
from aeflib.orchestration.settings import STAGE_NAMES, RunSettings, stage

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: runs are not locked
    fcntl = None

__all__ = ["NOTEBOOKS_ENV", "KernelDied", "RunFolderError", "RunInterrupted", "RunOutcome", "StageFailed",
           "notebooks_dir", "run", "run_folder", "select"]

log = logging.getLogger(__name__)

NOTEBOOKS_ENV = "AEFLIB_NOTEBOOKS"


# ---- notebooks, markers, failures --------------------------------------------------------------------------------
def notebooks_dir() -> Path:
    """The stage notebooks: ``$AEFLIB_NOTEBOOKS`` or the repository's ``notebooks/`` next to the package.

    Raises:
        FileNotFoundError: If the folder lacks a stage notebook (e.g. aeflib installed from a wheel).
    """
    env = os.environ.get(NOTEBOOKS_ENV)
    path = Path(env).expanduser() if env else Path(__file__).resolve().parents[2] / "notebooks"
    missing = [s for s in STAGE_NAMES if not (path / f"{s}.ipynb").is_file()]
    if missing:
        raise FileNotFoundError(f"stage notebooks {missing} not found in {path}; use a source checkout "
                                f"(pip install -e .) or set {NOTEBOOKS_ENV} to the folder holding them")
    return path


class StageFailed(RuntimeError):
    """A stage notebook raised; carries where (executed notebook, cell) and what."""

    def __init__(self, stage: str, notebook: Path, cell_index: int | None, source: str, ename: str, evalue: str):
        self.stage, self.notebook, self.cell_index = stage, notebook, cell_index
        self.source, self.ename, self.evalue = source, ename, evalue
        where = f"cell {cell_index}" if cell_index is not None else "an unknown cell"
        first = source.strip().splitlines()[0] if source.strip() else ""
        super().__init__(f"stage {stage} failed in {where} of {notebook}: {ename}: {evalue}"
                         f"{f' (cell starts: {first!r})' if first else ''}")


class KernelDied(StageFailed):
    """A stage's kernel process ended before its notebook finished: killed (out of memory), crashed, or exited.

    Attributes:
        returncode: The kernel's exit status (negative: killed by that signal; None: unknown).
        cause: :func:`~aeflib.orchestration.kernel.death_cause` in words.
        stderr_log: The kernel's own stderr (``.aef/<stage>.stderr``: a fatal error's trace lands there).
    """

    def __init__(self, stage: str, notebook: Path, cell_index: int | None, source: str, returncode: int | None,
                 cause: str, stderr_log: Path):
        super().__init__(stage, notebook, cell_index, source, "KernelDied", cause)
        self.returncode, self.cause, self.stderr_log = returncode, cause, stderr_log
        where = f" in cell {cell_index}" if cell_index is not None else ""
        self.args = (f"stage {stage} failed: its kernel died{where}, {cause}; kernel stderr: {stderr_log}",)


class RunFolderError(RuntimeError):
    """The run folder cannot be used now: another run holds its lock, or it cannot be written."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM stopped a run; the report was written first.

    Attributes:
        stage: The stage that was running (None: between stages).
        signal_name: "SIGINT" or "SIGTERM".
        outcome: The :class:`RunOutcome` so far (its report lists the interrupted stage).
    """

    def __init__(self, stage: str | None, signal_name: str, outcome: RunOutcome):
        super().__init__(f"{signal_name} during stage {stage}" if stage else signal_name)
        self.stage, self.signal_name, self.outcome = stage, signal_name, outcome


@dataclass
class RunOutcome:
    """A finished (or stopped) run."""

    run_dir: Path
    stages: list[StageRecord]
    report: Path | None
    seconds: float


def _children_cpu() -> float:
    """User + system CPU seconds of finished child processes (the stage kernels) so far."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _marker(run_dir: Path, stage: str) -> Path:
    return run_dir / ".aef" / f"{stage}.json"


def _declared(notebook: Path) -> set[str]:
    import papermill

    return set(papermill.inspect_notebook(str(notebook)))


def _cell_running(notebook: Path) -> tuple[int | None, str]:
    """The last cell papermill started in a (partly) executed notebook: (index, source), or (None, "")."""
    import nbformat

    try:
        nb = nbformat.read(notebook, as_version=4)
    except (OSError, ValueError):
        return None, ""
    started = [i for i, c in enumerate(nb.cells) if c.get("metadata", {}).get("papermill", {}).get("start_time")]
    return (started[-1], nb.cells[started[-1]].source) if started else (None, "")


def _execute(stage: str, source: Path, target: Path, parameters: dict, run_dir: Path, progress: bool) -> None:
    import papermill
    from nbclient.exceptions import DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    stderr_log = run_dir / ".aef" / f"{stage}.stderr"
    launched: list = []
    env_before, oom_before = os.environ.get("TQDM_DISABLE"), oom_kills()
    if not progress:
        os.environ["TQDM_DISABLE"] = "1"           # tqdm reads it at import, in the kernel
    try:
        papermill.execute_notebook(str(source), str(target), parameters=parameters, kernel_name="python3",
                                   progress_bar=False, log_output=False, cwd=str(run_dir),
                                   request_save_on_cell_execute=True,      # a dead kernel leaves the cells so far
                                   kernel_manager_class=kernel_manager(stderr_log, launched))
    except PapermillExecutionError as err:
        if not progress:
            with contextlib.suppress(OSError, ValueError):
                clean_outputs(target, stderr_log)
        raise StageFailed(stage, target, err.cell_index, err.source, err.ename, err.evalue) from None
    except DeadKernelError:
        returncode = None
        if launched:
            with contextlib.suppress(Exception):
                returncode = launched[-1].wait(timeout=10)
        cell, cell_source = _cell_running(target)
        raise KernelDied(stage, target, cell, cell_source, returncode, death_cause(returncode, oom_before),
                         stderr_log) from None
    except KeyboardInterrupt:
        for process in launched:                   # the kernel has its own session: Ctrl-C never reached it
            with contextlib.suppress(OSError):
                process.kill()
        raise
    finally:
        if env_before is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = env_before
    if not progress:
        clean_outputs(target, stderr_log)


# ---- the run folder ----------------------------------------------------------------------------------------------
def run_folder(settings: RunSettings, *, name: str | None = None, runs_root: str | os.PathLike = "runs") -> Path:
    """The run folder :func:`run` would use, checked; reads only, writes nothing.

    Args:
        settings: The run's settings (the default name and the model come from them).
        name: Run folder name: one plain folder name (default: :meth:`RunSettings.default_name`).
        runs_root: Parent folder of runs (created by :func:`run` when missing).

    Returns:
        The absolute path ``runs_root/name``.

    Raises:
        ValueError: ``runs_root`` is not a folder; ``name`` is not a plain folder name that stays inside
            ``runs_root`` (``../x``, an absolute path, a link out of it); the folder exists but is not a run folder
            ``aef run`` made (no ``.aef/`` inside, and not empty); or its ``metrics.json`` records another model.
    """
    root = Path(runs_root).expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise ValueError(f"runs_root {str(runs_root)!r} is a file, not a folder; give a folder (created if missing)")
    name = name or settings.default_name()
    folder = root / name
    if (Path(name).name != name or name in (".", "..") or "\\" in name
            or (folder.exists() and root not in folder.resolve().parents)):
        raise ValueError(f"run name {name!r} does not stay inside runs_root {str(root)!r}: give one folder name "
                         f"without '/' or '..', e.g. {settings.default_name()!r}")
    if not folder.exists():
        return folder
    if not folder.is_dir():
        raise ValueError(f"run folder {str(folder)!r} exists and is a file; choose another name")
    if not (folder / ".aef").is_dir() and any(folder.iterdir()):
        raise ValueError(f"{str(folder)!r} exists and is not a run folder made by aef run (it has no .aef/ "
                         "folder): choose another name, or move that folder away; aef run does not reuse it")
    metrics = folder / "metrics.json"
    try:
        recorded = json.loads(metrics.read_text()).get("model", {}).get("name") if metrics.is_file() else None
    except (OSError, ValueError, AttributeError) as err:
        raise ValueError(f"cannot read {metrics} ({err}); choose another name, or remove the file") from None
    model = str(settings.parameters()["model"])
    if recorded is not None and recorded != model:
        raise ValueError(f"run folder {str(folder)!r} was made with model {recorded!r} (its metrics.json), this run "
                         f"was given model {model!r}: choose another name, or the same model")
    return folder


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Hold ``folder/.aef/lock`` (flock: released when the process ends, even by SIGKILL) for the block.

    Raises:
        RunFolderError: Another process holds it (naming its pid and start time), or it cannot be written.
    """
    path = folder / ".aef" / "lock"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        raise RunFolderError(f"cannot use run folder {folder}: {err}; aef run writes its lock, stage markers and "
                             "report there: give a writable runs root") from None
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                try:
                    holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
                except ValueError:
                    holder = {}
                who = ", ".join(f"{k} {holder[k]}" for k in ("pid", "started", "host") if k in holder) or "unknown"
                raise RunFolderError(f"run folder {folder} is in use by another aef run ({who}); wait for it to "
                                     "finish, or choose another name") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                  "host": socket.gethostname()}).encode(), 0)
        yield
    finally:
        os.close(fd)                               # releases the lock


def _remove_leftovers(folder: Path) -> None:
    """Remove the hidden temporary folders a killed save left (``.pruned.tmp-*``: :func:`aeflib.files.atomic_folder`).

    Called under the folder's lock, so no other run is writing them. ``.<name>.old-*`` folders (the previous
    version while a save swaps it) are kept: after a kill at that moment they hold the only copy.
    """
    for path in folder.iterdir():
        if path.name.startswith(".") and ".tmp-" in path.name and path.is_dir() and not path.is_symlink():
            log.info("removing %s, left by a save that did not finish", path)
            shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt for the block (main thread only), so that the report is written."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt("SIGTERM")

    before = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def run(settings: RunSettings | None = None, *, name: str | None = None, runs_root: str | os.PathLike = "runs",
        force: bool = False, stages: Sequence[str] | None = None, progress: bool = False,
        on_stage: Callable[[StageRecord], None] | None = None) -> RunOutcome:
    """Execute the stage notebooks in order into ``runs_root/name`` and write ``report.md``.

    Args:
        settings: Notebook parameters (default: :class:`RunSettings` defaults, the demo).
        name: Run folder name (default: :meth:`RunSettings.default_name`).
        runs_root: Parent folder of runs.
        force: Re-run finished stages.
        stages: Run only these stages (names or two-digit prefixes), in pipeline order; default all.
        progress: Progress bars inside the notebooks.
        on_stage: Called after each stage (the CLI prints a line).

    Returns:
        :class:`RunOutcome`.

    Raises:
        StageFailed: A notebook raised; the report is still written with the stages done so far.
        KernelDied: (a :class:`StageFailed`) a stage's kernel died: killed (out of memory), crashed or exited.
        RunInterrupted: Ctrl-C or SIGTERM; the report is still written, the stage running then is listed.
        RunFolderError: Another run holds the folder's lock, or the folder cannot be written.
        ValueError: Unknown stage names, settings :meth:`RunSettings.validate` rejects, or a run folder
            :func:`run_folder` refuses; raised before anything is written.
        FileNotFoundError: The stage notebooks are missing (:func:`notebooks_dir`), before the folder is created.
    """
    settings = (settings or RunSettings()).validate()
    chosen = select(stages)
    source_dir = notebooks_dir()
    run_dir = run_folder(settings, name=name, runs_root=runs_root)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunFolderError(f"cannot create run folder {run_dir}: {err}; give a writable runs root") from None
    held = contextlib.ExitStack()
    held.enter_context(_locked(run_dir))
    held.enter_context(_sigterm_interrupts())
    _remove_leftovers(run_dir)
    t0, records, upstream_ran = time.perf_counter(), [], False
    current, interrupted, report_error = None, None, None
    try:
        for stage in chosen:
            current = stage
            source, target = source_dir / f"{stage}.ipynb", run_dir / "notebooks" / f"{stage}.ipynb"
            declared = _declared(source)
            params = {k: v for k, v in settings.parameters().items() if k in declared}
            params.update({k: v for k, v in (("run_dir", str(run_dir)), ("progress", progress),
                                             ("interactive", False)) if k in declared})
            marker = _marker(run_dir, stage)
            recorded = json.loads(marker.read_text()) if marker.is_file() else None
            if not force and not upstream_ran and recorded and recorded["parameters"] == params and target.is_file():
                record = StageRecord(stage, "skipped", recorded["seconds"], target, recorded.get("cpu_seconds"))
            else:
                for later in STAGE_NAMES[STAGE_NAMES.index(stage):]:   # their results no longer follow from this
                    _marker(run_dir, later).unlink(missing_ok=True)
                (run_dir / ".aef" / f"{stage}.stderr").unlink(missing_ok=True)
                target.parent.mkdir(parents=True, exist_ok=True)
                started, cpu_before = time.perf_counter(), _children_cpu()
                log.info("stage %s: running %s", stage, source.name)
                try:
                    _execute(stage, source, target, params, run_dir, progress)
                except (StageFailed, KeyboardInterrupt) as err:
                    status = "failed" if isinstance(err, StageFailed) else "interrupted"
                    records.append(StageRecord(stage, status, round(time.perf_counter() - started, 1), target))
                    raise
                seconds, cpu = round(time.perf_counter() - started, 1), round(_children_cpu() - cpu_before, 1)
                try:
                    write_text(marker, json.dumps({"stage": stage, "parameters": params, "seconds": seconds,
                                                   "cpu_seconds": cpu,
                                                   "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=1))
                except OSError as err:
                    raise RunFolderError(f"stage {stage} finished but its marker {marker} cannot be written: "
                                         f"{err}") from None
                record, upstream_ran = StageRecord(stage, "ran", seconds, target, cpu), True
            records.append(record)
            if on_stage:
                on_stage(record)
        current = None
    except KeyboardInterrupt as err:
        interrupted = "SIGTERM" if str(err) == "SIGTERM" else "SIGINT"
    finally:
        seconds = round(time.perf_counter() - t0, 1)
        try:
            report = write_report(run_dir, settings, records, seconds)
        except OSError as err:     # e.g. a read-only folder; an error already on its way is the one to report
            report, report_error = None, err
            log.warning("cannot write %s: %s", run_dir / "report.md", err)
        held.close()
    outcome = RunOutcome(run_dir, records, report, seconds)
    if interrupted:
        raise RunInterrupted(current, interrupted, outcome)
    if report_error is not None:
        raise RunFolderError(f"the stages finished but {run_dir / 'report.md'} cannot be written: {report_error}")
    return outcome


def select(stages: Sequence[str] | None) -> list[str]:
    """The stage names to run: ``stages`` (names or two-digit numbers) in pipeline order; all when empty.

    Raises:
        ValueError: An unknown stage, naming it and the stages.
    """
    if not stages:
        return list(STAGE_NAMES)
    picked = {stage(s).name for s in stages}
    return [s for s in STAGE_NAMES if s in picked]
