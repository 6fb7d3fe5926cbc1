"""Run the stage notebooks with papermill into one run folder: ``aef run``.

    run(RunSettings(...), name=...)       -> RunOutcome   the notebooks of STAGES into runs/<name>/, report.md

A run folder holds the executed notebooks (``notebooks/``), every artifact the stages write (see
:mod:`aeflib.artifacts`), ``metrics.json`` and ``report.md``. Runs resume: a stage whose marker
(``.aef/<stage>.json``, written when its notebook finished without error) records the same parameters is skipped,
unless ``force``; once a stage runs, every later stage runs too. A failing stage stops the run with
:class:`StageFailed`, naming the executed notebook and the failing cell.

Imports only :mod:`~aeflib.orchestration.settings` and :mod:`~aeflib.orchestration.report` (the run writes its
report at the end); the sweeps (:mod:`~aeflib.orchestration.sweep`) and the command build on it.

Source: [ours].
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from aeflib.artifacts import RunDir
from aeflib.orchestration.report import StageRecord, write_report
from aeflib.orchestration.settings import STAGE_NAMES, RunSettings, stage

__all__ = ["NOTEBOOKS_ENV", "RunOutcome", "StageFailed", "notebooks_dir", "run", "select"]

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


def _quiet_kernel_manager(stderr_log: Path):
    """A kernel manager whose kernel writes its own stderr (TCP warning, subprocess noise) to ``stderr_log``.

    Cell output (including Python-level stderr) still goes into the executed notebook; only what the kernel
    process prints outside any cell lands in the log, instead of the terminal running ``aef``.
    """
    from jupyter_client.manager import AsyncKernelManager

    class QuietKernelManager(AsyncKernelManager):
        async def _async_launch_kernel(self, kernel_cmd, **kw):
            stderr_log.parent.mkdir(parents=True, exist_ok=True)
            with open(stderr_log, "ab") as f:
                kw["stderr"] = f
                return await super()._async_launch_kernel(kernel_cmd, **kw)

    return QuietKernelManager


def _execute(stage: str, source: Path, target: Path, parameters: dict, run_dir: Path, progress: bool) -> None:
    import papermill
    from papermill.exceptions import PapermillExecutionError

    env_before = os.environ.get("TQDM_DISABLE")
    if not progress:
        os.environ["TQDM_DISABLE"] = "1"           # tqdm reads it at import, in the kernel
    try:
        papermill.execute_notebook(str(source), str(target), parameters=parameters, kernel_name="python3",
                                   progress_bar=False, log_output=False, cwd=str(run_dir),
                                   request_save_on_cell_execute=False,
                                   kernel_manager_class=_quiet_kernel_manager(run_dir / ".aef" / f"{stage}.stderr"))
    except PapermillExecutionError as err:
        raise StageFailed(stage, target, err.cell_index, err.source, err.ename, err.evalue) from None
    finally:
        if env_before is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = env_before


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
        ValueError: Unknown stage names, or settings :meth:`RunSettings.validate` rejects; raised before the run
            folder is created.
        FileNotFoundError: The stage notebooks are missing (:func:`notebooks_dir`), before the folder is created.
    """
    settings = (settings or RunSettings()).validate()
    chosen = select(stages)
    source_dir = notebooks_dir()
    run_dir = RunDir(Path(runs_root) / (name or settings.default_name())).root
    t0, records, upstream_ran = time.perf_counter(), [], False
    try:
        for stage in chosen:
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
                marker.unlink(missing_ok=True)
                target.parent.mkdir(parents=True, exist_ok=True)
                started, cpu_before = time.perf_counter(), _children_cpu()
                log.info("stage %s: running %s", stage, source.name)
                try:
                    _execute(stage, source, target, params, run_dir, progress)
                except StageFailed:
                    records.append(StageRecord(stage, "failed", round(time.perf_counter() - started, 1), target))
                    raise
                seconds, cpu = round(time.perf_counter() - started, 1), round(_children_cpu() - cpu_before, 1)
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.write_text(json.dumps({"stage": stage, "parameters": params, "seconds": seconds,
                                              "cpu_seconds": cpu, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")},
                                             indent=1))
                record, upstream_ran = StageRecord(stage, "ran", seconds, target, cpu), True
            records.append(record)
            if on_stage:
                on_stage(record)
    finally:
        seconds = round(time.perf_counter() - t0, 1)
        report = write_report(run_dir, settings, records, seconds)
    return RunOutcome(run_dir, records, report, seconds)


def select(stages: Sequence[str] | None) -> list[str]:
    """The stage names to run: ``stages`` (names or two-digit numbers) in pipeline order; all when empty.

    Raises:
        ValueError: An unknown stage, naming it and the stages.
    """
    if not stages:
        return list(STAGE_NAMES)
    picked = {stage(s).name for s in stages}
    return [s for s in STAGE_NAMES if s in picked]
