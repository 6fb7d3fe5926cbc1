"""Pruning quality of every criterion and AEF variant on the embedded SmolLM2-135M, without recovery.

For each calibration seed: estimate all criteria once (10 × 64-token windows of the shipped Wikipedia *train*
split), fuse with every AEF variant, prune a copy of the dense model to the target parameter reduction with each
method, and measure

* ``calib_loss`` — mean next-token loss on *held-out calibration* windows (train split, another seed): the only
  number used to choose the default fusion variant (no evaluation data seen);
* perplexity (``llm-pruner-128`` protocol) on the shipped Wikipedia and Lee-news *test* splits.

Prints mean ± spread (min..max over seeds) and ratios to dense; writes JSON to benchmarks/results/.

    python benchmarks/quality.py --seeds 42,43,44 --targets 0.2            # ~20-40 min on 2 cores
    python benchmarks/quality.py --smoke                                   # seconds, tiny model (CI)
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import aeflib
from aeflib import data, fusion, importance, pruning
from aeflib.evaluation import perplexity
from aeflib.models import load

BASELINES = ["random", "l2", "vector", "element1", "element2"]
VARIANTS = ["aef-layer", "aef-element", "aef-learned"]


@torch.no_grad()
def calib_loss(model, windows: torch.Tensor) -> float:
    return model(input_ids=windows, labels=windows, use_cache=False).loss.item()


def write_json(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--seeds", default="42,43,44")
    ap.add_argument("--targets", default="0.2", help="target parameter reductions, comma-separated")
    ap.add_argument("--ratio", type=float, default=None, help="per-structure pruning ratio instead of targets")
    ap.add_argument("--max-windows", type=int, default=64, help="128-token windows per perplexity (first ones)")
    ap.add_argument("--out", default="benchmarks/results/quality.json")
    ap.add_argument("--smoke", action="store_true", help="tiny model, 1 seed, 2 windows: checks the script runs")
    args = ap.parse_args()
    if args.smoke:
        args.model, args.seeds, args.ratio, args.max_windows = "tiny-llama", "42", 0.5, 2
        args.out = str(Path(tempfile.mkdtemp()) / "quality.json")
    seeds = [int(s) for s in args.seeds.split(",")]
    targets = [None] if args.ratio is not None else [float(t) for t in args.targets.split(",")]

    dense, tokenizer, adapter = load(args.model)
    n_cal, len_cal = (4, 16) if args.smoke else (10, 64)
    holdout = data.calibration(tokenizer, n=8 if args.smoke else 32, seq_len=32 if args.smoke else 128, seed=1042)
    results = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                           "aeflib": aeflib.__version__},
               "model": args.model, "max_windows": args.max_windows, "rows": [], "command": " ".join(sys.argv)}

    def measure(model) -> dict:
        return {"calib_loss": calib_loss(model, holdout),
                "ppl_wikipedia": perplexity(model, tokenizer, "wikipedia", "test", max_windows=args.max_windows,
                                            progress=False).value,
                "ppl_lee_news": perplexity(model, tokenizer, "lee-news", "test", max_windows=args.max_windows,
                                           progress=False).value}

    t0 = time.perf_counter()
    results["dense"] = measure(dense)
    print(f"dense: {results['dense']}", flush=True)
    for seed in seeds:
        calib = data.calibration(tokenizer, n=n_cal, seq_len=len_cal, seed=seed)
        t = time.perf_counter()
        scores = importance.estimate(dense, adapter, calib, criteria=BASELINES, seed=seed)
        est_s = time.perf_counter() - t
        for target in targets:
            if target is None:
                ratio = args.ratio
            else:
                ratio = pruning.plan(dense, adapter, scores["l2"], target_params=target).pruning_ratio
            methods = {m: scores[m] for m in BASELINES}
            fusion_s = {}
            for variant in VARIANTS:
                t = time.perf_counter()
                fused = fusion.fuse(scores, variant, model=dense, adapter=adapter, calibration=calib,
                                    pruning_ratio=ratio)
                fusion_s[variant] = time.perf_counter() - t
                methods[variant] = fused.fused
            for name, per_set in methods.items():
                model = copy.deepcopy(dense)
                plan = pruning.plan(model, adapter, per_set, pruning_ratio=ratio, criterion=name)
                pruning.apply(model, adapter, plan)
                row = {"seed": seed, "target_params": target, "pruning_ratio": ratio, "method": name,
                       "param_reduction": plan.param_reduction, **measure(model),
                       "estimate_seconds": est_s, "fusion_seconds": fusion_s.get(name)}
                results["rows"].append(row)
                print(json.dumps(row), flush=True)
                write_json(results, Path(args.out))
                del model
    results["seconds"] = time.perf_counter() - t0
    write_json(results, Path(args.out))
    summarize(results)


def summarize(results: dict) -> None:
    dense = results["dense"]
    rows = results["rows"]
    print(f"\n{results['model']}, no recovery; perplexity llm-pruner-128 on the first {results['max_windows']} "
          "windows of each test split; mean [min..max] over seeds; ratio = pruned / dense")
    print(f"{'target':>6} {'method':<12} {'params -%':>9} {'calib loss':>16} {'PPL wiki':>22} {'ratio':>6} "
          f"{'PPL news':>22} {'ratio':>6}")
    print(f"{'':>6} {'dense':<12} {'':>9} {dense['calib_loss']:16.3f} {dense['ppl_wikipedia']:22.2f} {1:6.2f} "
          f"{dense['ppl_lee_news']:22.2f} {1:6.2f}")
    keys = sorted({(r["target_params"] or 0, r["method"]) for r in rows}, key=lambda k: (k[0], _order(k[1])))
    for target, method in keys:
        sel = [r for r in rows if (r["target_params"] or 0) == target and r["method"] == method]

        def cell(metric: str, fmt: str, sel=sel) -> str:
            vals = [r[metric] for r in sel]
            return f"{statistics.mean(vals):{fmt}} [{min(vals):{fmt}}..{max(vals):{fmt}}]"

        wiki = statistics.mean(r["ppl_wikipedia"] for r in sel) / dense["ppl_wikipedia"]
        news = statistics.mean(r["ppl_lee_news"] for r in sel) / dense["ppl_lee_news"]
        print(f"{target:6.2f} {method:<12} {100 * statistics.mean(r['param_reduction'] for r in sel):9.2f} "
              f"{cell('calib_loss', '.3f'):>16} {cell('ppl_wikipedia', '.2f'):>22} {wiki:6.2f} "
              f"{cell('ppl_lee_news', '.2f'):>22} {news:6.2f}")
    variants = [(statistics.mean(r["calib_loss"] for r in rows if r["method"] == v), v) for v in VARIANTS
                if any(r["method"] == v for r in rows)]
    if variants:
        print(f"\nfusion variant with the lowest held-out calibration loss: {min(variants)[1]} "
              f"(this is how aeflib.fusion.DEFAULT_METHOD is chosen; evaluation data not consulted)")


def _order(method: str) -> int:
    order = BASELINES + VARIANTS
    return order.index(method) if method in order else len(order)


if __name__ == "__main__":
    main()
