"""Wall and CPU time of each stage of ``aef run`` on the embedded default, and its share of the 15-minute budget.

What is measured: one run of the stage notebooks 01-07 with the default
:class:`aeflib.orchestration.settings.RunSettings` (SmolLM2-135M, AEF, 20 % of the parameters; what ``aef run`` and
``make demo`` do), executed by :func:`aeflib.orchestration.runner.run` with ``force=True`` into a fresh run folder.
Per stage: wall seconds and the CPU seconds (user + system) of its notebook kernel, as
:class:`aeflib.orchestration.report.StageRecord` records them; the total wall time of the run (stages + kernel
start-up + report) and the CPU time of this process and all its kernels.

How to read it: ``share`` = a stage's wall time / the run's total wall time; ``CPU/wall`` > 1 means the stage kept
more than one core busy, < 1 that it waited (on I/O, on kernel start-up, or on other processes when the machine is
shared: compare with the load average printed). ``budget`` = total wall time / ``--budget`` (900 s: the promise that
the default run finishes within 15 minutes on 2 cores); CPU time / budget is the share a machine with nothing else to
do would need.

Commands:

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python benchmarks/pipeline.py              # ~15 min on 2 cores
    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python benchmarks/pipeline.py --smoke      # tiny-llama, temp run root
    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python benchmarks/pipeline.py --smoke --stages 01 02   # seconds

The run folder (``--runs-root``/``--name``, default ``runs/bench-pipeline-<time>``) is kept for inspection; the
numbers go to ``benchmarks/results/pipeline_smollm2.json`` (``--out``).

Memory: each stage's kernel records its own peak resident memory (``metrics.json`` section ``memory``); the script
prints it per stage and FAILS (exit 1, a line naming the stage) when a stage peaked above ``--max-peak-mib``
(1,800 MiB: a free Binder session has 2 GiB, and JupyterLab itself needs some of it).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from _common import machine, write_json  # noqa: E402  (benchmarks/ is on sys.path: scripts run as files)

from aeflib.orchestration.report import StageRecord  # noqa: E402
from aeflib.orchestration.runner import StageFailed, run  # noqa: E402
from aeflib.orchestration.settings import RunSettings  # noqa: E402


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _peaks(run_dir: Path, records: list[StageRecord]) -> dict[str, float | None]:
    """Stage -> its kernel's peak resident memory in MiB, from the run folder's ``metrics.json`` (None: missing)."""
    path = Path(run_dir) / "metrics.json"
    memory = json.loads(path.read_text()).get("memory", {}) if path.is_file() else {}
    return {r.stage: memory.get(r.stage, {}).get("peak_rss_mib") for r in records}


def print_table(records: list[StageRecord], total_wall: float, total_cpu: float, budget: float) -> None:
    print(f"\n{'stage':<26} {'status':<8} {'wall s':>8} {'CPU s':>8} {'CPU/wall':>9} {'share':>7}")
    for r in records:
        cpu = r.cpu_seconds
        print(
            f"{r.stage:<26} {r.status:<8} {r.seconds:8.1f} {'n/a' if cpu is None else f'{cpu:.1f}':>8} "
            f"{'n/a' if not cpu or not r.seconds else f'{cpu / r.seconds:.2f}':>9} "
            f"{r.seconds / total_wall if total_wall else float('nan'):7.1%}"
        )
    stages_wall = sum(r.seconds for r in records)
    stages_cpu = sum(r.cpu_seconds or 0 for r in records)
    print(
        f"{'stages':<26} {'':<8} {stages_wall:8.1f} {stages_cpu:8.1f} "
        f"{stages_cpu / stages_wall if stages_wall else float('nan'):9.2f} "
        f"{stages_wall / total_wall if total_wall else float('nan'):7.1%}"
    )
    print(
        f"{'run total':<26} {'':<8} {total_wall:8.1f} {total_cpu:8.1f} "
        f"{total_cpu / total_wall if total_wall else float('nan'):9.2f} {1:7.1%}"
    )
    print(
        f"budget: total wall {total_wall:.0f} s / {budget:.0f} s = {total_wall / budget:.1%} of the budget; "
        f"CPU {total_cpu:.0f} s / {budget:.0f} s = {total_cpu / budget:.1%} "
        f"({os.cpu_count()} cores; the run's wall time is within budget: {'yes' if total_wall <= budget else 'NO'})"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs-root", default="runs", help="parent folder of the run folder")
    ap.add_argument("--name", default=None, help="run folder name (default bench-pipeline-<time>: always fresh)")
    ap.add_argument("--stages", nargs="+", default=None, help="only these stages (names or two-digit numbers)")
    ap.add_argument("--budget", type=float, default=900.0, help="the wall-time budget in seconds (15 min)")
    ap.add_argument("--out", default="benchmarks/results/pipeline_smollm2.json")
    ap.add_argument("--max-peak-mib", type=float, default=1800.0,
                    help="fail when a stage's kernel peaked above this resident memory (MiB)")
    ap.add_argument("--smoke", action="store_true", help="RunSettings.tiny() on tiny-llama, temp run root and output")
    args = ap.parse_args()
    settings = RunSettings()
    if args.smoke:
        settings = RunSettings.tiny("tiny-llama")
        work = Path(tempfile.mkdtemp(prefix="aeflib-pipeline-smoke-"))
        args.runs_root, args.out = str(work / "runs"), str(work / "pipeline.json")
    name = args.name or f"bench-pipeline-{time.strftime('%Y%m%d-%H%M%S')}"
    info = machine()
    print(f"machine: {info}", flush=True)
    print(
        f"aef run: {settings.model}, {settings.method}, stages {args.stages or 'all'} -> {args.runs_root}/{name}",
        flush=True,
    )

    records: list[StageRecord] = []

    def on_stage(record: StageRecord) -> None:
        records.append(record)
        print(
            f"  {record.stage}: {record.status} in {record.seconds:.1f} s "
            f"({record.cpu_seconds if record.cpu_seconds is not None else 'n/a'} s CPU)",
            flush=True,
        )

    t0, cpu0, children0 = time.perf_counter(), time.process_time(), _children_cpu()
    failed = None
    try:
        outcome = run(settings, name=name, runs_root=args.runs_root, force=True, stages=args.stages, on_stage=on_stage)
        run_dir, run_seconds = outcome.run_dir, outcome.seconds
    except StageFailed as err:
        failed, run_dir, run_seconds = str(err), Path(args.runs_root) / name, None
    total_wall = time.perf_counter() - t0
    own_cpu, kernels_cpu = time.process_time() - cpu0, _children_cpu() - children0
    total_cpu = own_cpu + kernels_cpu

    print_table(records, total_wall, total_cpu, args.budget)
    peaks = _peaks(run_dir, records)
    over = {stage: mib for stage, mib in peaks.items() if mib is not None and mib > args.max_peak_mib}
    for stage, mib in peaks.items():
        print(f"memory: {stage} peak {'not recorded' if mib is None else f'{mib:.0f} MiB'} resident "
              f"(limit {args.max_peak_mib:.0f} MiB)")
    if failed:
        print(f"FAILED: {failed}")
    for stage, mib in over.items():
        print(f"FAILED: stage {stage} peaked at {mib:.0f} MiB resident, above --max-peak-mib {args.max_peak_mib:.0f}")
    write_json(
        {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "machine": info,
            "machine_at_end": {"load_average": [round(x, 2) for x in os.getloadavg()]},
            "settings": settings.parameters(),
            "stages_selected": args.stages,
            "run_dir": str(run_dir),
            "stages": [
                {
                    "stage": r.stage,
                    "status": r.status,
                    "seconds": r.seconds,
                    "cpu_seconds": r.cpu_seconds,
                    "notebook": str(r.notebook),
                    "peak_rss_mib": peaks.get(r.stage),
                }
                for r in records
            ],
            "stages_wall_s": sum(r.seconds for r in records),
            "stages_cpu_s": sum(r.cpu_seconds or 0 for r in records),
            "run_seconds": run_seconds,
            "total_wall_s": total_wall,
            "orchestrator_cpu_s": own_cpu,
            "kernels_cpu_s": kernels_cpu,
            "total_cpu_s": total_cpu,
            "budget_s": args.budget,
            "budget_share_wall": total_wall / args.budget,
            "budget_share_cpu": total_cpu / args.budget,
            "max_peak_mib": args.max_peak_mib,
            "failed": failed,
            "over_memory": over,
        },
        args.out,
    )
    print(f"wrote {args.out}; run folder {run_dir}")
    if failed or over:
        sys.exit(1)


if __name__ == "__main__":
    main()
