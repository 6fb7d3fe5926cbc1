"""Run the stage notebooks with papermill: one pruning run, a sweep of criteria, the paper's protocol per model.

Entry points (``aef`` in ``cli.py`` is a thin layer over these)::

    run(RunSettings(...), name=...)       -> RunOutcome   notebooks 01-07 into runs/<name>/, report.md
    compare(model, methods, ...)          -> Comparison   scores once, one plan per criterion, a table + figure
    missing_for_reproduce(models, ...)    -> list[str]    what a paper run needs that this machine lacks (seconds)
    reproduce(models, ...)                -> list[RunOutcome]

A run folder holds the executed notebooks (``notebooks/``), every artifact the stages write (see
:mod:`aeflib.artifacts`), ``metrics.json`` and ``report.md``. Runs resume: a stage whose marker
(``.aef/<stage>.json``, written when its notebook finished without error) records the same parameters is skipped,
unless ``force``; once a stage runs, every later stage runs too. A failing stage stops the run with
:class:`StageFailed`, naming the executed notebook and the failing cell.

Source: [ours].
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aeflib.artifacts import RunDir

__all__ = ["NOTEBOOKS_ENV", "STAGES", "RunOutcome", "RunSettings", "StageFailed", "StageRecord", "compare",
           "missing_for_reproduce", "notebooks_dir", "reproduce", "run"]

log = logging.getLogger(__name__)

NOTEBOOKS_ENV = "AEFLIB_NOTEBOOKS"
STAGES = ("01_model_and_structures", "02_importance", "03_fusion", "04_pruning", "05_recovery", "06_evaluation",
          "07_reproduce_paper")


def _default_criteria() -> list[str]:
    from aeflib.importance import DEFAULT_CRITERIA  # here, not at the top: importing this module needs no torch

    return list(DEFAULT_CRITERIA)


@dataclass
class RunSettings:
    """Every notebook parameter of a run; the defaults are ``make demo``'s (SmolLM2-135M, ≤ 15 min on 2 cores).

    Field names are the notebooks' parameter names; each stage receives the ones its parameters cell declares.
    """

    model: str = "smollm2-135m"
    method: str = "aef"
    target_params: float | None = 0.2
    pruning_ratio: float | None = None
    layers: list[int] | None = None
    calib_corpus: str = "wikipedia"
    calib_n: int = 10
    calib_seq_len: int = 64
    seed: int = 42
    device: str = "cpu"
    dtype: str = "float32"
    criteria: list[str] = field(default_factory=_default_criteria)
    fine: str = "element2"
    coarse: str = "vector"
    temperature: float = 1.0
    normalize_with: str = "rank"
    fusion_steps: int = 50
    fusion_lr: float = 0.1
    fusion_patience: int = 8
    show_group: int = 0
    prompt: str = "The history of the city"
    max_new_tokens: int = 24
    recovery_dataset: str = "qa"
    recovery_steps: int | None = 20
    recovery_batch_size: int = 4
    recovery_micro_batch_size: int = 4
    recovery_lr: float = 3e-4
    recovery_cutoff: int = 128
    recovery_val_size: int = 16
    ppl_datasets: list[list[str]] = field(default_factory=lambda: [["wikipedia", "test"]])
    ppl_protocol: str = "llm-pruner-128"
    ppl_max_windows: int | None = 48
    zeroshot_tasks: str | list[str] | None = "paper7-offline"  # the paper's seven, offline; "local": aeflib's three
    zeroshot_limit: int | None = 30  # items per task, the same seeded subset for every model (None: all)
    efficiency_seq_len: int | None = 64
    efficiency_decode_tokens: int = 16
    efficiency_repeats: int = 10  # interleaved timing rounds of notebook 06 (8 or more: intervals)
    eval_batch_size: int = 4
    paper_model: str = "llama-7b"

    @classmethod
    def tiny(cls, model: str = "tiny-llama", **overrides: Any) -> RunSettings:
        """Seconds-fast settings for the tiny random models (tests, CI): a ratio, not a parameter target.

        Tiny models hold ~6 M parameters, almost all in the embeddings, so a parameter target is unreachable;
        ``pruning_ratio=0.25`` prunes a quarter of the heads and channels of layers 1-2. Zero-shot scores the
        three ``local`` tasks (4 items each): ``paper7-offline`` loads seven datasets per model, seconds a test
        does not need (its own tests cover it).
        """
        base = dict(model=model, target_params=None, pruning_ratio=0.25, calib_n=4, calib_seq_len=32,
                    max_new_tokens=8, recovery_steps=2, recovery_batch_size=2, recovery_micro_batch_size=2,
                    recovery_cutoff=64, recovery_val_size=4, ppl_max_windows=4, zeroshot_tasks="local",
                    zeroshot_limit=4,
                    efficiency_seq_len=16, efficiency_decode_tokens=4, efficiency_repeats=8)
        return cls(**{**base, **overrides})

    @classmethod
    def paper(cls, model: str, **overrides: Any) -> RunSettings:
        """The paper's protocol (docs/paper.md §4) for ``model``.

        Ratio 0.25 on layers 4..n-2, BookCorpus 10 x 64 calibration, WikiText-2 / PTB perplexity (llm-pruner-128),
        the seven zero-shot tasks, LoRA on Alpaca-cleaned for 2 epochs, bf16, sharded with ``device="auto"``.
        """
        base = dict(model=model, target_params=None, pruning_ratio=0.25, calib_corpus="bookcorpus", device="auto",
                    dtype="bfloat16", recovery_dataset="alpaca-cleaned", recovery_steps=None,
                    recovery_batch_size=64, recovery_micro_batch_size=4, recovery_lr=1e-4, recovery_cutoff=256,
                    recovery_val_size=2000, ppl_datasets=[["wikitext2", "test"], ["ptb", "validation"]],
                    ppl_max_windows=None, zeroshot_tasks="paper7", zeroshot_limit=None, eval_batch_size=8,
                    efficiency_seq_len=128, paper_model=model if model in ("llama-7b", "vicuna-7b", "bloom-7b1")
                    else "llama-7b")
        return cls(**{**base, **overrides})

    def parameters(self) -> dict[str, Any]:
        """All fields as plain JSON values; ``criteria`` gains ``method`` when it is a single criterion not listed.

        So ``method="l1"`` ranks by scores that stage 02 computed, whatever ``criteria`` says.
        """
        from aeflib.importance import ESTIMATORS

        values = json.loads(json.dumps(dataclasses.asdict(self)))
        if self.method in ESTIMATORS and isinstance(values["criteria"], list) and \
                self.method not in values["criteria"]:
            values["criteria"] = [*values["criteria"], self.method]
        return values

    def validate(self) -> RunSettings:
        """Check the values a run would otherwise reject only inside a notebook kernel, without loading weights.

        Returns:
            ``self``, unchanged.

        Raises:
            ValueError: Naming the bad value and the valid choices: an unknown model (neither a registry name nor
                an existing folder), method, criterion or dtype; neither or both of ``pruning_ratio`` and
                ``target_params``, or one outside (0, 1); ``layers`` not ``None`` or ``[start, stop]`` with
                ``0 <= start < stop``; an unknown ``normalize_with``, ``fusion_steps`` / ``fusion_patience`` < 1 or
                ``fusion_lr`` <= 0; an unknown ``zeroshot_tasks`` set name.

        Source: [ours].
        """
        from aeflib.importance import ESTIMATORS
        from aeflib.models import MODELS
        from aeflib.models.registry import DTYPES
        from aeflib.stages import METHODS

        if self.model not in MODELS and not Path(str(self.model)).expanduser().is_dir():
            raise ValueError(f"unknown model {self.model!r}: not a registry name ({', '.join(MODELS)}) and not an "
                             "existing folder")
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {list(METHODS)}")
        if isinstance(self.criteria, str) or not self.criteria:
            raise ValueError(f"criteria={self.criteria!r}: give a non-empty list of names from {list(ESTIMATORS)}")
        for name, value in [*(("criteria", c) for c in self.criteria), ("fine", self.fine), ("coarse", self.coarse)]:
            if value not in ESTIMATORS:
                raise ValueError(f"unknown {name} criterion {value!r}; choose from {list(ESTIMATORS)}")
        if (self.pruning_ratio is None) == (self.target_params is None):
            raise ValueError("give exactly one of pruning_ratio (share of heads/channels per pruned layer) or "
                             f"target_params (share of all parameters); got pruning_ratio={self.pruning_ratio}, "
                             f"target_params={self.target_params}")
        for name in ("pruning_ratio", "target_params"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not 0 < value < 1):
                raise ValueError(f"{name}={value!r}: give a number strictly between 0 and 1 (e.g. 0.2)")
        from aeflib.fusion import NORMALIZATIONS

        if self.normalize_with not in NORMALIZATIONS:
            raise ValueError(f"unknown normalize_with {self.normalize_with!r}; choose one of {sorted(NORMALIZATIONS)}")
        for name in ("fusion_steps", "fusion_patience"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r}: give an integer >= 1")
        if isinstance(self.fusion_lr, bool) or not isinstance(self.fusion_lr, (int, float)) or not self.fusion_lr > 0:
            raise ValueError(f"fusion_lr={self.fusion_lr!r}: give a number > 0 (e.g. 0.1)")
        if self.dtype not in DTYPES:
            raise ValueError(f"unsupported dtype {self.dtype!r}; choose one of {list(DTYPES)}")
        if isinstance(self.zeroshot_tasks, str):
            from aeflib.evaluation.zeroshot import TASK_SETS

            if self.zeroshot_tasks not in TASK_SETS:
                raise ValueError(f"unknown zeroshot_tasks {self.zeroshot_tasks!r}; choose one of {list(TASK_SETS)}, "
                                 "a list of task names, or None (skip zero-shot)")
        layers = self.layers
        if layers is not None and not (isinstance(layers, (list, tuple)) and len(layers) == 2
                                       and all(isinstance(x, int) and not isinstance(x, bool) for x in layers)
                                       and 0 <= layers[0] < layers[1]):
            raise ValueError(f"layers={layers!r}: give None (the model's default) or [start, stop] with "
                             "0 <= start < stop, e.g. [4, 30]")
        return self

    def default_name(self) -> str:
        """``<model>-<method>-<amount>``, e.g. ``smollm2-135m-aef-p20`` (p = parameters, r = ratio, in %)."""
        amount = f"p{round(100 * self.target_params)}" if self.target_params is not None else \
            f"r{round(100 * (self.pruning_ratio or 0))}"
        return f"{Path(self.model).name}-{self.method}-{amount}"


# ---- notebooks, markers, failures --------------------------------------------------------------------------------
def notebooks_dir() -> Path:
    """The stage notebooks: ``$AEFLIB_NOTEBOOKS`` or the repository's ``notebooks/`` next to the package.

    Raises:
        FileNotFoundError: If the folder lacks a stage notebook (e.g. aeflib installed from a wheel).
    """
    env = os.environ.get(NOTEBOOKS_ENV)
    path = Path(env).expanduser() if env else Path(__file__).resolve().parent.parent / "notebooks"
    missing = [s for s in STAGES if not (path / f"{s}.ipynb").is_file()]
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
class StageRecord:
    """What happened to one stage in this invocation."""

    stage: str
    status: str            # "ran", "skipped" (finished before with the same parameters), "failed"
    seconds: float         # this invocation's wall time, or the recorded one when skipped
    notebook: Path
    cpu_seconds: float | None = None   # user + system CPU of the stage's kernel (independent of machine load)


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
    from aeflib.report import write_report

    settings = (settings or RunSettings()).validate()
    chosen = _select(stages)
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


def _select(stages: Sequence[str] | None) -> list[str]:
    if not stages:
        return list(STAGES)
    picked = []
    for s in stages:
        match = [name for name in STAGES if name == s or name[:2] == str(s).zfill(2)[:2]]
        if not match:
            raise ValueError(f"unknown stage {s!r}; choose from {list(STAGES)} (or their two-digit numbers)")
        picked += match
    return [s for s in STAGES if s in picked]


# ---- sweep and paper protocol live in their own module; re-exported here -----------------------------------------
from aeflib.sweep import compare, missing_for_reproduce, reproduce  # noqa: E402
