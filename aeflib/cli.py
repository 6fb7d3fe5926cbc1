"""The ``aef`` command: a thin typer layer over :mod:`aeflib.pipeline` (the only module that prints).

    aef run [--model smollm2-135m --method aef --target-params 0.2 --name NAME ...]   notebooks 01-07 → runs/NAME/
    aef compare --methods random,l2,vector,element1,element2,aef [...]             one model, many criteria
    aef reproduce --models llama-7b,vicuna-7b,baichuan-7b,bloom-7b1 [--device auto] the paper's protocol
    aef models                                                                     the model registry

Exit codes: 0 done, 1 a stage failed (the failing notebook and cell are printed), 2 bad arguments or missing
models/data.
"""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer

__all__ = ["app"]

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Structured LLM pruning with Adaptive Estimation Fusion (AEF): runs the stage notebooks.")

Model = Annotated[str, typer.Option(help="Registry name (see `aef models`) or a local checkpoint folder.")]
Method = Annotated[str, typer.Option(help="Ranking criterion: random, l1, l2, vector, element1, element2, aef, "
                                          "aef-layer, aef-layer-tuned, aef-element, aef-blend, aef-agree, "
                                          "aef-learned.")]
Target = Annotated[float | None, typer.Option(help="Share of ALL parameters to remove, in (0, 1), solved for a "
                                                   "ratio (default: 0.2; tiny-* models use --pruning-ratio 0.25 "
                                                   "instead).")]
Ratio = Annotated[float | None, typer.Option(help="Share of heads/channels removed per pruned layer, in (0, 1); "
                                                  "instead of --target-params (give one of the two).")]
Runs = Annotated[str, typer.Option(help="Parent folder of run folders.")]


def _echo(line: str, err: bool = False) -> None:
    typer.echo(line, err=err)


def _stage_line(record) -> None:
    cpu = "" if record.cpu_seconds is None else f"  ({record.cpu_seconds:.0f} s CPU)"
    _echo(f"  {record.stage:<26} {record.status:<8} {record.seconds:7.1f} s{cpu}")


def _bad(err: Exception) -> None:
    """Bad arguments: one line on stderr, exit code 2."""
    _echo(f"error: {err}", err=True)
    raise typer.Exit(2) from None


def _layers(text: str | None) -> list[int] | None:
    """``START:STOP`` → ``[start, stop]``; raises ValueError naming the text otherwise."""
    if text is None:
        return None
    parts = text.split(":")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts) or int(parts[0]) >= int(parts[1]):
        raise ValueError(f"--layers {text!r}: give START:STOP with integers 0 <= START < STOP, e.g. 4:30")
    return [int(p) for p in parts]


def _settings(model: str, method: str, target_params: float | None, pruning_ratio: float | None, **fields):
    """RunSettings for the CLI options (tiny-* models start from :meth:`RunSettings.tiny`), validated.

    Raises:
        ValueError: Both amounts given, or a value :meth:`RunSettings.validate` rejects.
    """
    from aeflib.pipeline import RunSettings

    if pruning_ratio is not None and target_params is not None:
        raise ValueError(f"give either --pruning-ratio ({pruning_ratio}) or --target-params ({target_params}), "
                         "not both")
    base = RunSettings.tiny(model) if model.startswith("tiny-") else RunSettings(model=model)
    values = {**{k: v for k, v in fields.items() if v is not None}, "method": method}
    if pruning_ratio is not None:
        values.update(pruning_ratio=pruning_ratio, target_params=None)
    elif target_params is not None:
        values.update(pruning_ratio=None, target_params=target_params)
    for key, value in values.items():
        setattr(base, key, value)
    return base.validate()


def _fail_stage(err) -> None:
    _echo(f"\nstage {err.stage} failed: {err.ename}: {err.evalue}", err=True)
    _echo(f"  executed notebook: {err.notebook}", err=True)
    _echo(f"  failing cell: {err.cell_index}", err=True)
    if err.source.strip():
        _echo("  " + "\n  ".join(err.source.strip().splitlines()[:6]), err=True)
    raise typer.Exit(1)


@app.command()
def run(
    model: Model = "smollm2-135m",
    method: Method = "aef",
    target_params: Target = None,
    pruning_ratio: Ratio = None,
    name: Annotated[str | None, typer.Option(help="Run folder name (default: <model>-<method>-<amount>).")] = None,
    runs_root: Runs = "runs",
    layers: Annotated[str | None, typer.Option(help="Pruned decoder layers START:STOP (default: adapter's).")] = None,
    calib_n: Annotated[int | None, typer.Option(help="Calibration windows.")] = None,
    recovery_steps: Annotated[int | None, typer.Option(help="LoRA optimizer steps.")] = None,
    normalize_with: Annotated[str | None, typer.Option(help="Normalisation of both estimates before fusing: rank "
                                                            "(default), zscore or sum.")] = None,
    fusion_steps: Annotated[int | None, typer.Option(help="aef-learned: most Adam steps (default 50).")] = None,
    fusion_lr: Annotated[float | None, typer.Option(help="aef-learned: Adam learning rate (default 0.1).")] = None,
    fusion_patience: Annotated[int | None, typer.Option(help="aef-learned: stop after this many steps without a "
                                                             "lower held-out loss (default 8).")] = None,
    ppl_max_windows: Annotated[int | None, typer.Option(help="Perplexity windows per corpus.")] = None,
    zeroshot_tasks: Annotated[str | None, typer.Option(help="Zero-shot task set: paper7-offline (default: the "
                                                            "paper's seven tasks, offline), local, or paper7 "
                                                            "(hub).")] = None,
    zeroshot_limit: Annotated[int | None, typer.Option(help="Zero-shot items per task (a seeded subset, the same "
                                                            "for every model).")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, or auto (accelerate sharding).")] = None,
    dtype: Annotated[str | None, typer.Option(help="float32, bfloat16 or float16.")] = None,
    stages: Annotated[str | None, typer.Option(help="Only these stages, e.g. 01,02,03.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Re-run finished stages.")] = False,
    progress: Annotated[bool, typer.Option("--progress", help="Progress bars inside the notebooks.")] = False,
) -> None:
    """Prune one model: run notebooks 01-07 with papermill into RUNS_ROOT/NAME and write report.md."""
    from aeflib.pipeline import StageFailed, _select
    from aeflib.pipeline import run as run_pipeline

    chosen = None if stages is None else [s.strip() for s in stages.split(",") if s.strip()]
    try:
        settings = _settings(model, method, target_params, pruning_ratio, layers=_layers(layers), calib_n=calib_n,
                             recovery_steps=recovery_steps, normalize_with=normalize_with,
                             fusion_steps=fusion_steps, fusion_lr=fusion_lr, fusion_patience=fusion_patience,
                             ppl_max_windows=ppl_max_windows,
                             zeroshot_tasks=zeroshot_tasks, zeroshot_limit=zeroshot_limit, device=device,
                             dtype=dtype)
        _select(chosen)
    except ValueError as err:
        _bad(err)
    _echo(f"aef run: {settings.model}, method {settings.method} → {runs_root}/{name or settings.default_name()}")
    try:
        outcome = run_pipeline(settings, name=name, runs_root=runs_root, force=force, stages=chosen,
                               progress=progress, on_stage=_stage_line)
    except StageFailed as err:
        _fail_stage(err)
    except (ValueError, FileNotFoundError) as err:
        _bad(err)
    _echo(f"done in {outcome.seconds:.0f} s; report: {outcome.report}")


@app.command()
def compare(
    model: Model = "smollm2-135m",
    methods: Annotated[str, typer.Option(help="Comma-separated criteria / AEF variants.")] =
        "random,l2,vector,element1,element2,aef",
    target_params: Target = None,
    pruning_ratio: Ratio = None,
    name: Annotated[str | None, typer.Option(help="Run folder name.")] = None,
    runs_root: Runs = "runs",
    ppl_max_windows: Annotated[int | None, typer.Option(help="Perplexity windows per corpus.")] = None,
    zeroshot: Annotated[bool, typer.Option("--zeroshot", help="Also measure zero-shot accuracy.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Re-estimate the scores.")] = False,
) -> None:
    """Prune one model with each criterion at the same target; write comparison.csv/.md and a figure."""
    from aeflib.stages import fusion_method
    from aeflib.sweep import compare as run_compare

    chosen = [m.strip() for m in methods.split(",") if m.strip()]
    try:
        settings = _settings(model, "aef", target_params, pruning_ratio, ppl_max_windows=ppl_max_windows)
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
    device: Annotated[str, typer.Option(help="auto (shard with accelerate), cuda or cpu.")] = "auto",
    dtype: Annotated[str, typer.Option(help="bfloat16 (paper's recovery precision), float16 or float32.")] =
        "bfloat16",
    runs_root: Runs = "runs",
    force: Annotated[bool, typer.Option("--force", help="Re-run finished stages.")] = False,
) -> None:
    """Run the paper's protocol per model (ratio 0.25, layers 4..n-2, WikiText-2/PTB, seven tasks, LoRA)."""
    from aeflib.pipeline import RunSettings, StageFailed
    from aeflib.sweep import reproduce as run_reproduce

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
    except (RuntimeError, ValueError, FileNotFoundError) as err:
        _bad(err)
    for outcome in outcomes:
        _echo(f"{outcome.run_dir.name}: report {outcome.report}")


@app.command()
def models() -> None:
    """List the model registry."""
    from aeflib.models import MODELS

    for spec in MODELS.values():
        where = spec.hub_id or spec.source
        _echo(f"{spec.name:<14} {spec.family:<9} {'paper' if spec.paper else '':<6} {where:<40} {spec.description}")


def main() -> None:  # pragma: no cover - `python -m aeflib.cli`
    """Entry point with logging on stderr."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
