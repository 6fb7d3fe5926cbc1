"""LoRA recovery of SmolLM2-135M pruned by 20 % of its parameters with AEF: Wikipedia perplexity dense / pruned /
recovered, on a CPU-sized budget.

Pipeline: calibration (10 x 64 tokens of the shipped Wikipedia train split, seed 42) -> importance (vector,
element2) -> the per-structure ratio that removes 20 % of all parameters (``plan(target_params=0.2)``) -> AEF fusion
at that ratio -> plan on the fused scores -> apply -> ``aeflib.recovery.lora`` (paper's LoRA r=8, alpha=16, dropout
0.05, all projections; a step budget instead of 2 epochs). Perplexity: ``llm-pruner-128`` protocol on the shipped
Wikipedia *test* split, first ``--max-windows`` windows. Prints the numbers and the ratios recovered / pruned;
writes JSON to benchmarks/results/.

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python benchmarks/recovery_smollm2.py               # default budget
    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python benchmarks/recovery_smollm2.py --time-dtypes # fp32 vs bf16 step
    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python benchmarks/recovery_smollm2.py --smoke       # seconds (CI)

The plan is cached (``--plan``): importance + AEF fusion run once (tens of minutes on a busy 2-core machine); later
runs with the same target reuse it.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
from _common import write_json  # benchmarks/ is on sys.path: scripts run as files

import aeflib
from aeflib import data, fusion, importance, pruning, recovery
from aeflib.evaluation import perplexity
from aeflib.models import load


def fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def time_dtypes(model, tok, adapter, args) -> dict:
    """Wall and CPU seconds per optimizer step of the same 2-step run in fp32 and in bf16 autocast (on copies)."""
    out = {}
    for dtype in ("float32", "bfloat16"):
        cpu = time.process_time()
        res = recovery.lora(copy.deepcopy(model), tok, adapter, args.dataset, steps=2, batch_size=args.batch_size,
                            micro_batch_size=args.micro_batch_size, cutoff=args.cutoff, val_size=0, lr=args.lr,
                            dtype=dtype, progress=False)
        out[dtype] = {"wall_s_per_step": res.seconds / 2, "cpu_s_per_step": (time.process_time() - cpu) / 2}
        print(f"  {dtype:9s}: {out[dtype]['wall_s_per_step']:.1f} s wall, {out[dtype]['cpu_s_per_step']:.1f} s CPU "
              f"per step (incl. data prep); losses {[round(x, 3) for x in res.train_loss]}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--target", type=float, default=0.2, help="share of all parameters to remove")
    ap.add_argument("--ratio", type=float, default=None, help="per-structure pruning ratio instead of --target")
    ap.add_argument("--method", default="aef", help="aef (the default fusion) or a baseline criterion, e.g. element1")
    ap.add_argument("--dataset", default="qa", help="recovery data: qa, wikipedia, lee-news (alpaca-cleaned online)")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--micro-batch-size", type=int, default=4)
    ap.add_argument("--cutoff", type=int, default=128)
    ap.add_argument("--lr", type=float, default=5e-4, help="paper: 1e-4 over ~1.5 k steps; higher for a short budget")
    ap.add_argument("--dtype", default="float32", help="float32 or bfloat16 (autocast); see --time-dtypes")
    ap.add_argument("--val-size", type=int, default=16)
    ap.add_argument("--max-windows", type=int, default=32, help="128-token windows per perplexity (first ones)")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default); 1 is "
                    "faster on a shared machine, where 2 OpenMP threads stall each other")
    ap.add_argument("--time-dtypes", action="store_true", help="first time one step in fp32 and in bf16")
    ap.add_argument("--out", default="benchmarks/results/recovery_smollm2_{method}.json")
    ap.add_argument("--plan", default="benchmarks/results/recovery_smollm2_plan_{method}_t{target}.json",
                    help="pruning plan cache: read if present, else computed (importance + AEF) and written")
    ap.add_argument("--smoke", action="store_true", help="tiny model, 2 steps, temp output: checks the script runs")
    args = ap.parse_args()
    if args.smoke:  # tiny-llama cannot reach a parameter target (its parameters are almost all embeddings): a ratio
        work = Path(tempfile.mkdtemp(prefix="aeflib-recovery-smoke-"))
        args.model, args.ratio, args.steps, args.batch_size, args.micro_batch_size = "tiny-llama", 0.25, 2, 2, 2
        args.cutoff, args.val_size, args.max_windows = 64, 4, 2
        args.out, args.plan = str(work / "recovery.json"), str(work / "plan_{method}_{target}.json")
    if args.threads:
        torch.set_num_threads(args.threads)

    t_all, cpu_all = time.perf_counter(), time.process_time()
    model, tok, adapter = load(args.model)
    args.out = args.out.format(method=args.method)
    plan_path = Path(args.plan.format(method=args.method,
                                      target=round(args.target * 100) if args.ratio is None else f"r{args.ratio}"))
    t0 = time.perf_counter()
    if plan_path.is_file():  # importance + AEF fusion take minutes on 2 cores; the plan is deterministic (seed 42)
        pruning_plan = pruning.PruningPlan.load(plan_path)
        fusion_path = plan_path.with_name(f"{plan_path.stem}_fusion.json")
        fusion_info = json.loads(fusion_path.read_text()) if fusion_path.is_file() else \
            json.loads(plan_path.read_text()).get("extra", {}).get("fusion")  # older plans held it inside
        ratio = pruning_plan.pruning_ratio
        print(f"plan read from {plan_path}", flush=True)
    else:
        calib = data.calibration(tok)  # [10, 64], shipped Wikipedia train, seed 42
        criteria = ["vector", "element2"] if args.method == "aef" else [args.method]
        scores = importance.estimate(model, adapter, calib, criteria=criteria)
        ratio = args.ratio if args.ratio is not None else \
            pruning.solve_ratio(model, adapter, args.target)
        if args.method == "aef":
            fused = fusion.fuse(scores, "aef", model=model, adapter=adapter, calibration=calib, pruning_ratio=ratio)
            pruning_plan = pruning.plan(model, adapter, fused.fused, pruning_ratio=ratio, criterion=fused.name)
            fusion_info = fused.to_dict()
            write_json(fusion_info, plan_path.with_name(f"{plan_path.stem}_fusion.json"))
        else:
            pruning_plan = pruning.plan(model, adapter, scores[args.method], pruning_ratio=ratio, criterion=args.method)
            fusion_info = None
        pruning_plan.save(plan_path)
    t_prune = time.perf_counter() - t0

    def ppl(m) -> float:
        return perplexity(m, tok, "wikipedia", "test", max_windows=args.max_windows, progress=False).value

    dense = ppl(model)
    pruning.apply(model, adapter, pruning_plan)
    pruned = ppl(model)
    print(f"{args.model}: pruning ratio {ratio:.4f} -> parameter reduction {pruning_plan.param_reduction:.4f} "
          f"({pruning_plan.params_before} -> {pruning_plan.params_after}); importance+fusion {t_prune:.0f} s",
          flush=True)

    dtype_times = time_dtypes(model, tok, adapter, args) if args.time_dtypes else None
    cpu_rec = time.process_time()
    res = recovery.lora(model, tok, adapter, args.dataset, steps=args.steps, batch_size=args.batch_size,
                        micro_batch_size=args.micro_batch_size, cutoff=args.cutoff, lr=args.lr, dtype=args.dtype,
                        val_size=args.val_size, progress=False)
    cpu_rec = time.process_time() - cpu_rec
    recovered = ppl(model)
    adapter.check(model)
    assert pruning.count_parameters(model) == pruning_plan.params_after

    print(f"recovery: {args.dataset}, {res.settings['steps']} steps x {args.batch_size} seqs (cutoff {args.cutoff}), "
          f"lr {args.lr}, {res.settings['compute_dtype']}: {res.seconds:.0f} s wall, {cpu_rec:.0f} s CPU; train loss "
          f"{res.train_loss[0]:.3f} -> {sum(res.train_loss[-3:]) / 3:.3f} (last 3); val loss "
          f"{fmt(res.val_loss_before)} -> {fmt(res.val_loss_after)}")
    print(f"perplexity, shipped Wikipedia test, llm-pruner-128, first {args.max_windows} windows:")
    print(f"  dense {dense:.2f} | pruned {pruned:.2f} | recovered {recovered:.2f}")
    print(f"  recovered / pruned = {recovered / pruned:.3f}; pruned / dense = {pruned / dense:.3f}; recovered / dense "
          f"= {recovered / dense:.3f}; gap closed = {(pruned - recovered) / (pruned - dense):.1%}")
    wall, cpu = time.perf_counter() - t_all, time.process_time() - cpu_all
    print(f"total: {wall:.0f} s wall, {cpu:.0f} s CPU ({torch.get_num_threads()} threads, {os.cpu_count()} cores; "
          f"load average {os.getloadavg()[0]:.1f})")
    write_json({
        "model": args.model, "args": vars(args), "pruning": pruning_plan.summary(), "fusion": fusion_info,
        "ppl": {"dense": dense, "pruned": pruned, "recovered": recovered, "protocol": "llm-pruner-128",
                "corpus": "wikipedia/test", "max_windows": args.max_windows},
        "ratios": {"recovered_over_pruned": recovered / pruned, "pruned_over_dense": pruned / dense,
                   "recovered_over_dense": recovered / dense},
        "recovery": res.to_dict(), "recovery_cpu_s": cpu_rec, "seconds_per_step_by_dtype": dtype_times,
        "wall_s": wall, "cpu_s": cpu, "load_average": os.getloadavg()[0],
        "env": {"aeflib": aeflib.__version__, "torch": torch.__version__, "python": platform.python_version(),
                "threads": torch.get_num_threads()},
    }, Path(args.out))


if __name__ == "__main__":
    main()
