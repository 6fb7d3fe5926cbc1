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
                                          "aef-layer, aef-element, aef-learned.")]
Target = Annotated[float | None, typer.Option(help="Share of ALL parameters to remove, solved for a ratio "
                                                   "[default: 0.2; tiny-* models: --pruning-ratio 0.25].")]
Ratio = Annotated[float | None, typer.Option(help="Share of heads/channels removed per pruned layer; "
                                                  "overrides --target-params.")]
Runs = Annotated[str, typer.Option(help="Parent folder of run folders.")]


def _echo(line: str, err: bool = False) -> None:
    typer.echo(line, err=err)


def _stage_line(record) -> None:
    cpu = "" if record.cpu_seconds is None else f"  ({record.cpu_seconds:.0f} s CPU)"
    _echo(f"  {record.stage:<26} {record.status:<8} {record.seconds:7.1f} s{cpu}")


def _settings(model: str, method: str, target_params: float | None, pruning_ratio: float | None, **fields):
    from aeflib.pipeline import RunSettings

    base = RunSettings.tiny(model) if model.startswith("tiny-") else RunSettings(model=model)
    values = {**{k: v for k, v in fields.items() if v is not None}, "method": method}
    if pruning_ratio is not None:
        values.update(pruning_ratio=pruning_ratio, target_params=None)
    elif target_params is not None:
        values.update(pruning_ratio=None, target_params=target_params)
    for key, value in values.items():
        setattr(base, key, value)
    return base


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
    ppl_max_windows: Annotated[int | None, typer.Option(help="Perplexity windows per corpus.")] = None,
    zeroshot_limit: Annotated[int | None, typer.Option(help="Zero-shot items per task.")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, or auto (accelerate sharding).")] = None,
    dtype: Annotated[str | None, typer.Option(help="float32, bfloat16 or float16.")] = None,
    stages: Annotated[str | None, typer.Option(help="Only these stages, e.g. 01,02,03.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Re-run finished stages.")] = False,
    progress: Annotated[bool, typer.Option("--progress", help="Progress bars inside the notebooks.")] = False,
) -> None:
    """Prune one model: run notebooks 01-07 with papermill into RUNS_ROOT/NAME and write report.md."""
    from aeflib.pipeline import StageFailed
    from aeflib.pipeline import run as run_pipeline

    span = None if layers is None else [int(x) for x in layers.split(":")]
    settings = _settings(model, method, target_params, pruning_ratio, layers=span, calib_n=calib_n,
                         recovery_steps=recovery_steps, ppl_max_windows=ppl_max_windows,
                         zeroshot_limit=zeroshot_limit, device=device, dtype=dtype)
    chosen = None if stages is None else stages.split(",")
    _echo(f"aef run: {settings.model}, method {settings.method} → {runs_root}/{name or settings.default_name()}")
    try:
        outcome = run_pipeline(settings, name=name, runs_root=runs_root, force=force, stages=chosen,
                               progress=progress, on_stage=_stage_line)
    except StageFailed as err:
        _fail_stage(err)
    except (ValueError, FileNotFoundError) as err:
        _echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
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
    from aeflib.sweep import compare as run_compare

    settings = _settings(model, "aef", target_params, pruning_ratio, ppl_max_windows=ppl_max_windows)
    try:
        result = run_compare(settings, [m.strip() for m in methods.split(",") if m.strip()], name=name,
                             runs_root=runs_root, zeroshot=zeroshot, force=force)
    except (ValueError, FileNotFoundError) as err:
        _echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
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
    from aeflib.pipeline import StageFailed
    from aeflib.sweep import reproduce as run_reproduce

    names = [m.strip() for m in models.split(",") if m.strip()]
    try:
        outcomes = run_reproduce(names, runs_root=runs_root, force=force, on_stage=_stage_line, method=method,
                                 device=device, dtype=dtype)
    except StageFailed as err:
        _fail_stage(err)
    except RuntimeError as err:
        _echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
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
