"""The ``aef`` command: a thin typer layer over :mod:`aeflib.orchestration` (the only module that prints).

    aef run [--model smollm2-135m --method aef --target-params 0.2 --name NAME ...]   the notebooks → runs/NAME/
    aef compare --methods random,l2,vector,element1,element2,aef [...]             one model, many criteria
    aef reproduce --models llama-7b,vicuna-7b,baichuan-7b,bloom-7b1 [--device auto] the paper's protocol
    aef models                                                                     the model registry

``aef run`` has one option per notebook parameter (:func:`aeflib.orchestration.settings.settings_params`): a new
stage parameter is an option without an edit here. Exit codes: 0 done, 1 a stage failed (the failing notebook and
cell are printed; a dead kernel: one line with the likely cause and its stderr log) or the run folder cannot be
used (locked by another run, not writable), 2 bad arguments or missing models/data, 130 Ctrl-C and 143 SIGTERM
(one line: what finished, the report, the command that resumes).
"""

from __future__ import annotations

import functools
import inspect
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Annotated, Any

import typer

from aeflib.importance import DEFAULT_CRITERIA
from aeflib.models import MODELS
from aeflib.orchestration.runner import KernelDied, RunFolderError, RunInterrupted, StageFailed, run_folder, select
from aeflib.orchestration.runner import run as run_pipeline
from aeflib.orchestration.settings import STAGE_NAMES, Param, RunSettings, settings_params, stage
from aeflib.orchestration.sweep import compare as run_compare
from aeflib.orchestration.sweep import reproduce as run_reproduce
from aeflib.stages import fusion_method

__all__ = ["app", "main"]

# no markup: help texts are plain (the notebooks' comments say "[paper]", a tag to rich)
app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Structured LLM pruning with Adaptive Estimation Fusion (AEF): runs the stage notebooks.")

Method = Annotated[str, typer.Option(help="Ranking criterion: random, l1, l2, vector, element1, element2, aef, "
                                          "aef-layer, aef-layer-tuned, aef-element, aef-blend, aef-agree, "
                                          "aef-learned.")]
Runs = Annotated[str, typer.Option(help="Parent folder of run folders.")]
#: scalar annotation -> (what the option's text becomes, its metavar); ``X | None`` options also take ``None``
_SCALARS = {str: (str, "TEXT"), int: (int, "INTEGER"), float: (float, "NUMBER"), str | None: (str, "TEXT"),
            int | None: (int, "INTEGER"), float | None: (float, "NUMBER")}


def _option(p: Param) -> inspect.Parameter:
    """The ``--name`` option of parameter ``p``: text that :func:`_parsed` reads (``p.parse`` or its scalar type).

    Every option is text, so that a bad value ends in one line naming it (not click's usage box) and ``None``
    can be given where the type allows it. Its default is None (= not given: the settings' value stays, tiny-*
    models keep theirs).

    Raises:
        TypeError: A parameter whose type is neither a scalar nor given a ``parse`` (say how to read the text).
    """
    if p.parse is None and p.type not in _SCALARS:
        raise TypeError(f"parameter {p.name!r} of type {p.type} needs a parse function to become an option")
    metavar = "TEXT" if p.parse else _SCALARS[p.type][1]
    help_text = p.cli_help or (p.help + "." if p.help else p.name.replace("_", " "))
    # the default as it will apply (None: not given), unless the help already says it
    default = "" if p.default is None or "default" in help_text else f" (default: {_text(p.default)})"
    return inspect.Parameter(p.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                             annotation=Annotated[str | None, typer.Option(help=help_text + default, metavar=metavar,
                                                                            show_default=False)])


def _scalar(p: Param, text: str) -> Any:
    """The option text of scalar parameter ``p`` as its value (``None`` where its type allows None).

    Raises:
        ValueError: ``--name 'text': give ...`` when the text is not of the parameter's type.
    """
    kind = _SCALARS[p.type][0]
    option = f"--{p.name.replace('_', '-')}"
    if text.strip() == "None" and p.type in (int | None, float | None, str | None):
        return None
    try:
        return kind(text.strip()) if kind is not str else text
    except ValueError:
        none = " (or None)" if p.type in (int | None, float | None) else ""
        raise ValueError(f"{option} {text!r}: give {'an integer' if kind is int else 'a number'}{none}") from None


def _text(value: Any) -> str:
    """A default as one would type it: lists joined by commas, pairs by colons."""
    if isinstance(value, list):
        return ",".join(":".join(map(str, v)) if isinstance(v, list) else str(v) for v in value)
    return str(value)


def settings_options(names: Sequence[str] | None = None) -> Callable[[Callable], Callable]:
    """Give a command one option per settings parameter (``names``, or all); it receives them as ``fields``.

    Args:
        names: The parameters to offer (default: every :func:`~aeflib.orchestration.settings.settings_params`).

    Returns:
        A decorator for a command whose first parameter is ``fields: dict[str, Any]``: each parameter's option
        value (text for list-valued ones, see :func:`_parsed`), None when the option was not given.

    Raises:
        ValueError: A name in ``names`` that is not a settings parameter (naming it and the parameters).
    """
    params = settings_params()
    if names is not None:
        known = {p.name for p in params}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"not settings parameters: {unknown}; choose from {sorted(known)}")
        params = [p for p in params if p.name in names]

    def decorate(command: Callable) -> Callable:
        own = [q.replace(kind=inspect.Parameter.KEYWORD_ONLY)
               for q in inspect.signature(command, eval_str=True).parameters.values() if q.name != "fields"]
        options = [_option(p) for p in params]

        @functools.wraps(command)
        def with_options(**kwargs: Any) -> Any:
            given = {p.name: kwargs.pop(p.name) for p in params}
            return command(fields=given, **kwargs)

        del with_options.__wrapped__       # typer reads the signature below, not the command's
        with_options.__signature__ = inspect.Signature(options + own)    # the settings first in --help
        with_options.__annotations__ = {q.name: q.annotation for q in options + own}
        return with_options

    return decorate


def _parsed(fields: dict[str, Any]) -> dict[str, Any]:
    """The options given, as settings values.

    List-valued ones are read by their parameter's ``parse``, scalars by :func:`_scalar` (``None`` is a value where
    the parameter allows it).

    Raises:
        ValueError: From a parse function or :func:`_scalar`, naming the option and its text.
    """
    params = {p.name: p for p in settings_params()}
    return {k: params[k].parse(v) if params[k].parse else _scalar(params[k], v) for k, v in fields.items()
            if v is not None}


def _echo(line: str, err: bool = False) -> None:
    typer.echo(line, err=err)


def _stage_line(record) -> None:
    cpu = "" if record.cpu_seconds is None else f"  ({record.cpu_seconds:.0f} s CPU)"
    _echo(f"  {record.stage:<26} {record.status:<8} {record.seconds:7.1f} s{cpu}")


def _bad(err: Exception) -> None:
    """Bad arguments: one line on stderr, exit code 2."""
    _echo(f"error: {err}", err=True)
    raise typer.Exit(2) from None


def _settings(fields: dict[str, Any], method: str | None = None) -> RunSettings:
    """RunSettings for the options given (tiny-* models start from :meth:`RunSettings.tiny`), validated.

    Args:
        fields: Option values by parameter name, None where not given.
        method: Overrides ``fields["method"]`` (``aef compare`` has no ``--method``).

    Raises:
        ValueError: Both amounts given, an option text its parameter cannot read, or a value
            :meth:`RunSettings.validate` rejects.
    """
    values = _parsed(fields)
    if method is not None:
        values["method"] = method
    target_params, pruning_ratio = values.pop("target_params", None), values.pop("pruning_ratio", None)
    if pruning_ratio is not None and target_params is not None:
        raise ValueError(f"give either --pruning-ratio ({pruning_ratio}) or --target-params ({target_params}), "
                         "not both")
    model = values.pop("model", RunSettings.model)
    base = RunSettings.tiny(model) if model.startswith("tiny-") else RunSettings(model=model)
    if pruning_ratio is not None:
        values.update(pruning_ratio=pruning_ratio, target_params=None)
    elif target_params is not None:
        values.update(pruning_ratio=None, target_params=target_params)
    for key, value in values.items():
        setattr(base, key, value)
    return base.validate()


def _stage_list(text: str) -> list[str]:
    """``--stages`` text → stage names in pipeline order: full names or exact two-digit numbers, comma-separated.

    Raises:
        ValueError: Naming every item that is no stage (``02_importanse``, ``07xyz``) and the stages, or an empty list.
    """
    items = [item.strip() for item in text.split(",") if item.strip()]
    bad = []
    for item in items:
        try:
            stage(item)
        except ValueError:
            bad.append(item)
    if bad or not items:
        raise ValueError(f"--stages {text!r}: {'no stage ' + repr(bad) if bad else 'no stage given'}; give full "
                         f"names or two-digit numbers from {list(STAGE_NAMES)}, comma-separated")
    return select(items)


def _fail_stage(err) -> None:
    if isinstance(err, KernelDied):        # no cell raised: one line with the cause and the kernel's log
        _echo(f"\n{err}; rerun the same command to resume from this stage", err=True)
        raise typer.Exit(1)
    _echo(f"\nstage {err.stage} failed: {err.ename}: {err.evalue}", err=True)
    _echo(f"  executed notebook: {err.notebook}", err=True)
    _echo(f"  failing cell: {err.cell_index}", err=True)
    if err.source.strip():
        _echo("  " + "\n  ".join(err.source.strip().splitlines()[:6]), err=True)
    raise typer.Exit(1)


@app.command()
@settings_options()
def run(
    fields: dict[str, Any],
    name: Annotated[str | None, typer.Option(help="Run folder name (default: <model>-<method>-<amount>).")] = None,
    runs_root: Runs = "runs",
    stages: Annotated[str | None, typer.Option(help="Only these stages, e.g. 01,02,03.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Re-run finished stages.")] = False,
    progress: Annotated[bool, typer.Option("--progress", help="Progress bars inside the notebooks.")] = False,
) -> None:
    """Prune one model: run the stage notebooks with papermill into RUNS_ROOT/NAME and write report.md."""
    try:
        chosen = None if stages is None else _stage_list(stages)
        settings = _settings(fields)
    except ValueError as err:
        _bad(err)
    try:
        folder = run_folder(settings, name=name, runs_root=runs_root)
    except ValueError as err:
        _bad(err)
    _echo(f"aef run: {settings.model}, method {settings.method} → {folder}")
    try:
        outcome = run_pipeline(settings, name=folder.name, runs_root=folder.parent, force=force, stages=chosen,
                               progress=progress, on_stage=_stage_line)
    except StageFailed as err:
        _fail_stage(err)
    except RunInterrupted as err:
        _interrupted(err, _resume_command(fields, folder, stages, progress))
    except (ValueError, FileNotFoundError) as err:
        _bad(err)
    except (RunFolderError, OSError) as err:           # the file system: one line, not a traceback
        _echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    _echo(f"done in {outcome.seconds:.0f} s; report: {outcome.report}")


def _resume_command(fields: dict[str, Any], folder, stages: str | None, progress: bool) -> str:
    """The ``aef run`` command line that resumes this run: the options given, the folder spelled out, no --force."""
    import shlex

    words = ["aef", "run"]
    for key, value in fields.items():
        if value is not None:
            words += [f"--{key.replace('_', '-')}", str(value)]
    words += ["--name", folder.name, "--runs-root", str(folder.parent)]
    words += ["--stages", stages] if stages else []
    words += ["--progress"] if progress else []
    return shlex.join(words)


def _interrupted(err: RunInterrupted, resume: str) -> None:
    """Ctrl-C / SIGTERM: one line with what finished, where the report is and how to resume; 130 or 143."""
    finished = [r.stage for r in err.outcome.stages if r.status in ("ran", "skipped")]
    during = f" during stage {err.stage}" if err.stage else ""
    report = f"report: {err.outcome.report}; " if err.outcome.report else ""
    _echo(f"\ninterrupted ({err.signal_name}){during}; finished: {', '.join(finished) or 'none'}; {report}"
          f"resume with: {resume}", err=True)
    raise typer.Exit(143 if err.signal_name == "SIGTERM" else 130)


@app.command()
@settings_options(["model", "target_params", "pruning_ratio", "ppl_max_windows"])
def compare(
    fields: dict[str, Any],
    methods: Annotated[str, typer.Option(help="Comma-separated criteria / AEF variants.")] =
        ",".join((*DEFAULT_CRITERIA, "aef")),
    name: Annotated[str | None, typer.Option(help="Run folder name.")] = None,
    runs_root: Runs = "runs",
    zeroshot: Annotated[bool, typer.Option("--zeroshot", help="Also measure zero-shot accuracy.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Re-estimate the scores.")] = False,
) -> None:
    """Prune one model with each criterion at the same target; write comparison.csv/.md and a figure."""
    chosen = [m.strip() for m in methods.split(",") if m.strip()]
    try:
        settings = _settings(fields, method="aef")
        if not chosen:
            raise ValueError(f"--methods {methods!r}: give at least one method")
        for m in chosen:
            fusion_method(m)                      # ValueError naming the method and the choices
    except ValueError as err:
        _bad(err)
    try:
        result = run_compare(settings, chosen, name=name, runs_root=runs_root, zeroshot=zeroshot, force=force)
    except (ValueError, FileNotFoundError) as err:
        _bad(err)
    _echo(result.table.to_string(index=False))
    _echo(f"\n{result.csv}\n{result.markdown}\n{result.figure}\n({result.seconds:.0f} s)")


@app.command()
def reproduce(
    models: Annotated[str, typer.Option(help="Comma-separated paper models or local folders.")] =
        "llama-7b,vicuna-7b,baichuan-7b,bloom-7b1",
    method: Method = "aef",
    device: Annotated[str, typer.Option(help="auto (CUDA if available, else CPU; no offload), cuda or cpu.")] = "auto",
    dtype: Annotated[str, typer.Option(help="bfloat16 (paper's recovery precision), float16 or float32.")] =
        "bfloat16",
    runs_root: Runs = "runs",
    force: Annotated[bool, typer.Option("--force", help="Re-run finished stages.")] = False,
) -> None:
    """Run the paper's protocol per model (ratio 0.25, layers 4..n-2, WikiText-2/PTB, seven tasks, LoRA)."""
    names = [m.strip() for m in models.split(",") if m.strip()]
    try:
        if not names:
            raise ValueError(f"--models {models!r}: give at least one model")
        for m in names:
            RunSettings.paper(m, method=method, device=device, dtype=dtype).validate()
    except ValueError as err:
        _bad(err)
    try:
        outcomes = run_reproduce(names, runs_root=runs_root, force=force, on_stage=_stage_line, method=method,
                                 device=device, dtype=dtype)
    except StageFailed as err:
        _fail_stage(err)
    except RunInterrupted as err:
        _interrupted(err, "the same aef reproduce command (without --force)")
    except RunFolderError as err:
        _echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    except (RuntimeError, ValueError, FileNotFoundError) as err:
        _bad(err)
    for outcome in outcomes:
        _echo(f"{outcome.run_dir.name}: report {outcome.report}")


@app.command()
def models() -> None:
    """List the model registry."""
    for spec in MODELS.values():
        where = spec.hub_id or spec.source
        _echo(f"{spec.name:<14} {spec.family:<9} {'paper' if spec.paper else '':<6} {where:<40} {spec.description}")


def main() -> None:  # pragma: no cover - `python -m aeflib.orchestration.cli`
    """Entry point with logging on stderr."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
