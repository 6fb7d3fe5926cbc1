"""The stage records: one :class:`Stage` per notebook, one :class:`Param` per notebook parameter.

Everything else about a stage is derived from these records:

* the notebooks' parameters cells (:func:`parameters_cell`; ``make notebooks`` writes them with
  :func:`write_parameter_cells`, a test checks that the committed notebooks hold them);
* :class:`RunSettings`, whose fields are the union of the stages' parameters (defaults, types) and whose
  :meth:`RunSettings.tiny` / :meth:`RunSettings.paper` take the ``tiny`` / ``paper`` values of each parameter;
* the ``aef run`` options (:mod:`aeflib.orchestration.cli` builds one option per parameter);
* which notebook writes which artifact (``RunDir.require`` names it when an input is missing);
* the sections of ``report.md`` (:mod:`aeflib.orchestration.report` renders one per stage that has one).

Adding a stage: write ``notebooks/NN_name.py`` (jupytext pair), add its :class:`Stage` to :data:`STAGES`, run
``make notebooks`` (writes its parameters cell) — and, if the notebook needs one, its helper in :mod:`aeflib.stages`.

What each setting may be lives in :mod:`aeflib.orchestration.checks` (one check per parameter, a test walks them);
:meth:`RunSettings.validate` runs them before any kernel starts.

Source: [ours].
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aeflib.evaluation.zeroshot import TASK_SETS
from aeflib.importance import DEFAULT_CRITERIA, ESTIMATORS
from aeflib.models import MODELS
from aeflib.orchestration.checks import PAPER_MODELS, check_settings

__all__ = ["COMMON", "PAPER_MODELS", "STAGES", "STAGE_NAMES", "Param", "RunSettings", "Stage", "parameters_cell",
           "producers", "settings_params", "stage", "write_parameter_cells"]

#: ``Param.tiny`` / ``Param.paper`` when the parameter keeps its default under that profile
UNSET: Any = type("Unset", (), {"__repr__": lambda self: "UNSET"})()

#: a code line longer than 90 characters overflows a JupyterLab cell beside the file browser
LINE = 90
#: the column of the comments beside the assignments, and the width of the cell's group headings
COMMENT_COLUMN, HEADING = 31, 89


@dataclass(frozen=True)
class Param:
    """One notebook parameter: a :class:`RunSettings` field, a line of the parameters cell, an ``aef run`` option.

    Args:
        name: The variable in the notebook, the settings field, the option (``--name-with-dashes``).
        type: Its annotation, e.g. ``float | None``.
        default: The notebook's value and the settings default (``make demo``'s run on SmolLM2-135M).
        help: Comment beside (or, when the line would be too long, above) the assignment in the notebook.
        cli_help: The option's help when it should say more than ``help``; default ``help``.
        tiny: Value under :meth:`RunSettings.tiny` (tests on the tiny random models); :data:`UNSET`: the default.
        paper: Value under :meth:`RunSettings.paper` (the paper's protocol), or a function of the model name.
        parse: For a list-valued parameter, how the option's text becomes its value (raise ``ValueError`` naming
            the text); scalar parameters take typer's conversion.
        runtime: Set by ``aef run`` itself (``run_dir``, ``progress``, ``interactive``): in the cell, not a setting.
    """

    name: str
    type: Any
    default: Any
    help: str = ""
    cli_help: str | None = None
    tiny: Any = UNSET
    paper: Any = UNSET
    parse: Callable[[str], Any] | None = None
    runtime: bool = False

    def line(self) -> str:
        """Its source in the parameters cell: the assignment, its comment beside it (above when too long)."""
        code = f"{self.name} = {_literal(self.default)}"
        if not self.help:
            return code
        beside = f"{code:<{max(COMMENT_COLUMN, len(code) + 2)}}# {self.help}"
        return beside if len(beside) <= LINE else f"# {self.help}\n{code}"


@dataclass(frozen=True)
class Stage:
    """One notebook stage: the notebook, its own parameters, what it writes, its section of the report.

    Args:
        name: ``NN_name``: the notebook is ``notebooks/<name>.py`` (source) and ``<name>.ipynb`` (what runs).
        params: The stage's own parameters, after the :data:`COMMON` ones every stage declares.
        produces: Artifacts it writes into the run folder (files or folders); a later stage that misses one is told
            to run this notebook first.
        metrics: The ``metrics.json`` section it merges in, if any.
        report_section: Heading of its section in ``report.md`` (None: no section). The body is the renderer
            :data:`aeflib.orchestration.report.SECTIONS` registers for the stage, else a table of the scalar values
            of its ``metrics`` section.
    """

    name: str
    params: tuple[Param, ...] = ()
    produces: tuple[str, ...] = ()
    metrics: str | None = None
    report_section: str | None = None

    @property
    def notebook(self) -> str:
        """File name of the executed notebook (``<name>.ipynb``)."""
        return f"{self.name}.ipynb"

    def all_params(self) -> list[Param]:
        """Every parameter its cell declares: the common ones, then its own."""
        return [*(p for _, group in COMMON for p in group), *self.params]


def _literal(value: Any) -> str:
    """A parameter value as Python source in the notebooks' style (double-quoted strings)."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    return repr(value)


# ---- parsers of the list-valued options ---------------------------------------------------------------------------
def _parse_layers(text: str) -> list[int] | None:
    """``START:STOP`` → ``[start, stop]``; ``None`` → None (the model's default).

    Raises:
        ValueError: Naming the text, unless it is two integers ``0 <= START < STOP``.
    """
    if text.strip() == "None":
        return None
    parts = text.split(":")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts) or int(parts[0]) >= int(parts[1]):
        raise ValueError(f"--layers {text!r}: give START:STOP with integers 0 <= START < STOP, e.g. 4:30")
    return [int(p) for p in parts]


def _parse_names(text: str) -> list[str]:
    """``a,b,c`` → ``["a", "b", "c"]``."""
    return [t.strip() for t in text.split(",") if t.strip()]


def _parse_ppl_datasets(text: str) -> list[list[str]]:
    """``wikitext2:test,ptb:validation`` → ``[["wikitext2", "test"], ["ptb", "validation"]]``.

    Raises:
        ValueError: Naming the text, unless every item is ``CORPUS:SPLIT``.
    """
    pairs = [item.split(":") for item in _parse_names(text)]
    if not pairs or any(len(p) != 2 or not all(p) for p in pairs):
        raise ValueError(f"--ppl-datasets {text!r}: give CORPUS:SPLIT pairs separated by commas, e.g. "
                         "wikitext2:test,ptb:validation")
    return pairs


def _parse_tasks(text: str) -> str | list[str] | None:
    """A task-set name (``paper7-offline``) → itself; task names separated by commas (even one) → a list.

    ``None`` → None (which notebook 06 refuses, through :meth:`RunSettings.validate`).
    """
    text = text.strip()
    if text == "None":
        return None
    return text if text in TASK_SETS else _parse_names(text)


def _paper_model(model: str) -> str:
    return model if model in PAPER_MODELS else "llama-7b"


# ---- the parameters -----------------------------------------------------------------------------------------------
_FINE = Param("fine", str, "element2", "fine estimate fused in 03 [paper]: Taylor + Fisher")
_COARSE = Param("coarse", str, "vector", "the coarse-grained estimate [paper]")

#: the parameters every stage declares, in groups (a heading line each), in the cell's order
COMMON: tuple[tuple[str, tuple[Param, ...]], ...] = (
    ("what to prune", (
        Param("model", str, "smollm2-135m", "name from `aef models` (tiny-*: test models) or a folder",
              "Registry name (see `aef models`) or a local checkpoint folder."),
        Param("run_dir", str, "../runs/notebooks", "the stages read earlier artifacts here, write their own",
              runtime=True),
        Param("layers", list[int] | None, None, "layers to prune, [start, stop); None: default (4..n-2)",
              "Pruned decoder layers START:STOP (default, or None: the adapter's, 4..n-2).", parse=_parse_layers),
        Param("method", str, "aef", "method: random, l1, l2, vector, element1, element2, wanda, "
              "aef (= aef-agree), aef-*",
              "Ranking criterion: random, l1, l2, vector, element1, element2, aef, aef-layer, aef-layer-tuned, "
              "aef-element, aef-blend, aef-agree, aef-learned."),
        Param("target_params", float | None, 0.2, "share of ALL parameters to remove (a ratio is solved for)",
              "Share of ALL parameters to remove, in (0, 1), solved for a ratio (default: 0.2; tiny-* models use "
              "--pruning-ratio 0.25 instead).", tiny=None, paper=None),
        Param("pruning_ratio", float | None, None, "share of heads/channels removed per layer (if no target)",
              "Share of heads/channels removed per pruned layer, in (0, 1); instead of --target-params (give one "
              "of the two).", tiny=0.25, paper=0.25),
    )),
    ("calibration set (paper: 10 BookCorpus windows of 64 tokens, seed 42)", (
        Param("calib_corpus", str, "wikipedia", 'shipped Wikipedia text; "bookcorpus" needs the hub',
              paper="bookcorpus"),
        Param("calib_n", int, 10, cli_help="Calibration windows.", tiny=4),
        Param("calib_seq_len", int, 64, cli_help="Tokens per calibration window.", tiny=32),
        Param("seed", int, 42, cli_help="Seed of the calibration windows (and every seeded choice)."),
    )),
    ("runtime", (
        Param("device", str, "cpu", '"cpu", "cuda", or "auto" (CUDA if available; no offload)',
              "cpu, cuda, cuda:N, or auto (CUDA if available, else CPU; whole model, no offload); cuda is refused "
              "where CUDA is not available.", paper="auto"),
        Param("dtype", str, "float32", '"float32", "bfloat16" or "float16"', "float32, bfloat16 or float16.",
              paper="bfloat16"),
        Param("progress", bool, True, "progress bars (aef run sets False)", runtime=True),
        Param("interactive", bool, True, "live widgets (aef run sets False: static figures)", runtime=True),
    )),
)

#: the notebook stages, in the order ``aef run`` executes them
STAGES: tuple[Stage, ...] = (
    Stage("01_model_and_structures", (
        Param("show_group", int, 0, "which head / channel of the first pruned layer to print"),
    ), produces=("metrics.json",), metrics="model"),
    Stage("02_importance", (
        Param("criteria", list[str], list(DEFAULT_CRITERIA),
              cli_help="Criteria estimated in 02 (comma-separated); the method's own is added.", parse=_parse_names),
        _FINE, _COARSE,
        Param("fisher_memory_gib", float | None, 0.2, "GiB of fp32 Fisher/gradient sums held at once",
              "GiB of fp32 Fisher and gradient accumulators held at once in 02 (default 0.2: SmolLM2 scores three "
              "slices of layers and stays under 1.8 GiB; None: all layers at once).", paper=5.0),
    ), produces=("scores.safetensors",), metrics="importance"),
    Stage("03_fusion", (
        _FINE, _COARSE,
        Param("normalize_with", str, "rank", "rank, zscore or sum; rank: equal weights, equal influence",
              "Normalisation of both estimates before fusing: rank (default), zscore or sum."),
        Param("temperature", float, 1.0, "softmax temperature of the gates"),
        Param("fusion_steps", int, 50, "aef-learned: most Adam steps", "aef-learned: most Adam steps (default 50)."),
        Param("fusion_lr", float, 0.1, "aef-learned: Adam learning rate",
              "aef-learned: Adam learning rate (default 0.1)."),
        Param("fusion_patience", int, 8, "aef-learned: steps without a lower held-out loss",
              "aef-learned: stop after this many steps without a lower held-out loss (default 8)."),
    ), produces=("fusion.json",), metrics="fusion", report_section="Fusion"),
    Stage("04_pruning", (
        Param("prompt", str, "The history of the city", cli_help="Prompt of the greedy samples before/after."),
        Param("max_new_tokens", int, 24, cli_help="Tokens of each greedy sample.", tiny=8),
    ), produces=("plan.json", "pruned"), metrics="pruning", report_section="Pruning"),
    Stage("05_recovery", (
        Param("recovery_dataset", str, "qa", 'shipped QA pairs; the paper: "alpaca-cleaned" (hub)',
              paper="alpaca-cleaned"),
        Param("recovery_steps", int | None, 20, "optimizer steps (None: 2 epochs, as the paper)",
              "LoRA optimizer steps (None: 2 epochs, as the paper).", tiny=2, paper=None),
        Param("recovery_batch_size", int, 4, "sequences per step (paper: 64)", tiny=2, paper=64),
        Param("recovery_micro_batch_size", int, 1, "sequences per forward/backward pass (1: least memory)",
              tiny=2),
        Param("recovery_lr", float, 3e-4, "peak learning rate (paper: 1e-4 over ~1.5 k steps)", paper=1e-4),
        Param("recovery_cutoff", int, 128, "tokens per sequence (paper: 256)", tiny=64, paper=256),
        Param("recovery_val_size", int, 16, "validation sequences scored before and after", tiny=4, paper=2000),
    ), produces=("recovered",), metrics="recovery", report_section="Recovery (LoRA)"),
    Stage("06_evaluation", (
        Param("ppl_datasets", list[list[str]], [["wikipedia", "test"]],
              "[corpus, split] pairs; the paper: wikitext2/test and ptb/validation (hub)",
              "Perplexity corpora CORPUS:SPLIT, comma-separated (e.g. wikitext2:test,ptb:validation).",
              paper=[["wikitext2", "test"], ["ptb", "validation"]], parse=_parse_ppl_datasets),
        Param("ppl_protocol", str, "llm-pruner-128", cli_help="Perplexity protocol."),
        Param("ppl_max_windows", int | None, 48, "windows per corpus (None: the whole split)",
              "Perplexity windows per corpus (None: the whole split).", tiny=4, paper=None),
        Param("zeroshot_tasks", str | list[str] | None, "paper7-offline",
              'the paper\'s seven, offline; "paper7": hub; "local"',
              "Zero-shot task set: paper7-offline (default: the paper's seven tasks, offline), local, or paper7 "
              "(hub); or task names, comma-separated.", tiny="local", paper="paper7", parse=_parse_tasks),
        Param("zeroshot_limit", int | None, 50, "items per task, seeded subset (None: all)",
              "Zero-shot items per task (a seeded subset, the same for every model; None: all; 100 narrows a "
              "task's 95 % interval from about ±14 to ±10 points at twice the zero-shot time).", tiny=4,
              paper=None),
        Param("efficiency_seq_len", int | None, 64, "prompt tokens of the latency measurement",
              "Prompt tokens of the latency measurement (notebook 06 times every model: None, which skips it "
              "in aeflib.stages.evaluate, is refused here).", tiny=16, paper=128),
        Param("efficiency_decode_tokens", int, 16, cli_help="Tokens of the decode measurement.", tiny=4),
        Param("efficiency_repeats", int, 10, "interleaved timing rounds (8 or more for intervals)", tiny=8),
        Param("eval_batch_size", int, 4, cli_help="Batch of perplexity windows and zero-shot requests.", paper=8),
    ), metrics="evaluation", report_section="Key results"),
    Stage("07_reproduce_paper", (
        Param("paper_model", str, "llama-7b", "llama-7b, vicuna-7b or bloom-7b1 (published rows)",
              paper=_paper_model),
    ), produces=("paper_comparison.csv",)),
)

STAGE_NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)


def stage(name: str) -> Stage:
    """The stage record named ``name``: its full name or exactly its two-digit number (``"02"``).

    Raises:
        ValueError: Naming ``name`` and the stages (``02_importanse`` or ``07xyz`` is no stage).
    """
    text = str(name).strip()
    for s in STAGES:
        if text == s.name or (len(text) == 2 and text.isdigit() and text == s.name[:2]):
            return s
    raise ValueError(f"unknown stage {name!r}; choose from {list(STAGE_NAMES)} (or their two-digit numbers)")


def settings_params() -> list[Param]:
    """Every parameter that is a :class:`RunSettings` field, once, in pipeline order (runtime ones left out).

    Raises:
        ValueError: Two stages declare one name with different defaults or types (the run could not give both).
    """
    seen: dict[str, Param] = {}
    for s in STAGES:
        for p in s.all_params():
            if p.runtime:
                continue
            known = seen.setdefault(p.name, p)
            if (known.default, known.type) != (p.default, p.type):
                raise ValueError(f"parameter {p.name!r} is declared twice with different defaults or types: "
                                 f"{known.default!r} ({known.type}) and {p.default!r} ({p.type}) in {s.name}")
    return list(seen.values())


def producers() -> dict[str, str]:
    """Artifact → the stage that writes it (the first, if several do)."""
    out: dict[str, str] = {}
    for s in STAGES:
        for artifact in s.produces:
            out.setdefault(artifact, s.name)
    return out


# ---- parameters cells ---------------------------------------------------------------------------------------------
def parameters_cell(name: str) -> str:
    """The source of stage ``name``'s parameters cell: the common groups, then ``this stage``'s parameters."""
    groups = [*COMMON, ("this stage", stage(name).params)]
    lines = []
    for title, params in groups:
        lines.append(f"# --- {title} ".ljust(HEADING, "-"))
        lines += [p.line() for p in params]
    return "\n".join(lines)


def write_parameter_cells(folder: str | Path | None = None, names: Iterable[str] | None = None) -> list[Path]:
    """Rewrite the parameters cell of each stage's ``.py`` source from the records; returns the files changed.

    The ``.ipynb`` twins follow with ``jupytext --sync`` (``make notebooks`` does both).

    Raises:
        ValueError: A notebook source without a ``# %% tags=["parameters"]`` cell.
    """
    folder = Path(folder) if folder else Path(__file__).resolve().parents[2] / "notebooks"
    changed = []
    for name in names or STAGE_NAMES:
        path = folder / f"{name}.py"
        text = path.read_text()
        # the cell's body: from its header line to the next cell's header (or the end), blank lines included
        cell = re.search(r'^# %% tags=\["parameters"\]\n(.*?)(?=^# %%|\Z)', text, re.S | re.M)
        if cell is None:
            raise ValueError(f"{path} has no parameters cell (a line '# %% tags=[\"parameters\"]')")
        end = "\n\n" if cell.end(1) < len(text) else "\n"
        new = text[:cell.start(1)] + parameters_cell(name) + end + text[cell.end(1):]
        if new != text:
            path.write_text(new)
            changed.append(path)
    return changed


# ---- settings -----------------------------------------------------------------------------------------------------
def _from_params(cls: type) -> type:
    """Make ``cls`` a dataclass whose fields are :func:`settings_params`, with their types and defaults."""
    cls.__annotations__ = {}
    for p in settings_params():
        cls.__annotations__[p.name] = p.type
        # a list default is copied per instance: two settings never share one list
        default = dataclasses.field(default_factory=lambda v=p.default: copy.deepcopy(v)) \
            if isinstance(p.default, list) else p.default
        setattr(cls, p.name, default)
    return dataclass(cls)


@_from_params
class RunSettings:
    """Every notebook parameter of a run; the defaults are ``make demo``'s (SmolLM2-135M, ≤ 15 min on 2 cores).

    The fields are the parameters of :data:`STAGES` (names, types, defaults: :func:`settings_params`); each stage
    receives the ones its parameters cell declares.
    """

    @classmethod
    def tiny(cls, model: str = "tiny-llama", **overrides: Any) -> RunSettings:
        """Seconds-fast settings for the tiny random models (tests, CI): a ratio, not a parameter target.

        Tiny models hold ~6 M parameters, almost all in the embeddings, so a parameter target is unreachable;
        ``pruning_ratio=0.25`` prunes a quarter of the heads and channels of layers 1-2. Zero-shot scores the
        three ``local`` tasks (4 items each): ``paper7-offline`` loads seven datasets per model, seconds a test
        does not need (its own tests cover it). Each value is its parameter's ``tiny``.
        """
        base = {p.name: copy.deepcopy(p.tiny) for p in settings_params() if p.tiny is not UNSET}
        return cls(**{**base, "model": model, **overrides})

    @classmethod
    def paper(cls, model: str, **overrides: Any) -> RunSettings:
        """The paper's protocol (docs/paper.md §4) for ``model``; each value is its parameter's ``paper``.

        Ratio 0.25 on layers 4..n-2, BookCorpus 10 x 64 calibration, WikiText-2 / PTB perplexity (llm-pruner-128),
        the seven zero-shot tasks, LoRA on Alpaca-cleaned for 2 epochs, bf16, ``device="auto"`` (CUDA if available).
        """
        base = {p.name: p.paper(model) if callable(p.paper) else copy.deepcopy(p.paper) for p in settings_params()
                if p.paper is not UNSET}
        return cls(**{**base, "model": model, **overrides})

    def parameters(self) -> dict[str, Any]:
        """All fields as plain JSON values; ``criteria`` gains ``method`` when it is a single criterion not listed.

        So ``method="l1"`` ranks by scores that stage 02 computed, whatever ``criteria`` says.
        """
        values = json.loads(json.dumps(dataclasses.asdict(self)))
        if self.method in ESTIMATORS and isinstance(values["criteria"], list) and \
                self.method not in values["criteria"]:
            values["criteria"] = [*values["criteria"], self.method]
        return values

    def validate(self) -> RunSettings:
        """Check every value a stage notebook would reject, before any kernel starts and without loading weights.

        A model folder becomes its absolute path, resolved once against the current directory: the kernels run
        in the run folder, and the stages, the markers and the report all see the same folder.

        Returns:
            ``self`` (with ``model`` resolved when it is a folder).

        Raises:
            ValueError: ``"<field>=<value>: <what is valid>"`` for a value outside its range or registry (the rules:
                :data:`aeflib.orchestration.checks.CHECKS`), or a message naming the fields of a combination the
                stages cannot run (neither or both amounts, ``fine``/``coarse`` not estimated, micro-batches that
                do not divide the batch, a layer range beyond the model's depth; :data:`~aeflib.orchestration.
                checks.RELATIONS`).

        Source: [ours].
        """
        folder = Path(str(self.model)).expanduser()
        if isinstance(self.model, str) and self.model and self.model not in MODELS and folder.is_dir():
            self.model = str(folder.resolve())
        check_settings(self)
        return self

    def default_name(self) -> str:
        """``<model>-<method>-<amount>``, e.g. ``smollm2-135m-aef-p20`` (p = parameters, r = ratio, in %)."""
        amount = f"p{round(100 * self.target_params)}" if self.target_params is not None else \
            f"r{round(100 * (self.pruning_ratio or 0))}"
        return f"{Path(self.model).name}-{self.method}-{amount}"
