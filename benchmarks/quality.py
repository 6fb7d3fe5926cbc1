"""Pruning quality of every criterion and AEF variant on the embedded SmolLM2-135M, without recovery.

For each calibration seed: estimate all criteria once (10 × 64-token windows of the shipped Wikipedia *train*
split), fuse with every AEF variant, prune a copy of the dense model to the target parameter reduction with each
method, and measure

* ``calib_loss`` — mean next-token loss on *held-out calibration* windows (train split, another seed): the only
  number used to choose the default fusion variant (no evaluation data seen);
* perplexity (``llm-pruner-128`` protocol) on the shipped Wikipedia and Lee-news *test* splits;
* with ``--zeroshot-limit N``: the average of the offline zero-shot tasks (lm-eval, ``tasks="local"``), first N
  items of each task.

Prints mean ± spread (min..max over seeds) and ratios to dense; writes JSON to benchmarks/results/. Rows already in
``--out`` (same seed, target and method, with every requested metric) are kept, so an interrupted sweep resumes;
``--summarize A.json B.json`` prints one table over several result files.

    python benchmarks/quality.py --seeds 42,43,44 --targets 0.2,0.5 --zeroshot-limit 20   # ~1.5 h on 2 cores
    python benchmarks/quality.py --summarize benchmarks/results/quality_smollm2_*.json
    python benchmarks/quality.py --smoke                                                  # seconds, tiny model (CI)

``aef`` (the default method) is an alias of :data:`aeflib.fusion.DEFAULT_METHOD`, so its row is that variant's row.
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
from _common import write_json  # benchmarks/ is on sys.path: scripts run as files

import aeflib
from aeflib import data, fusion, importance, pruning
from aeflib.evaluation import perplexity
from aeflib.evaluation.zeroshot import zeroshot
from aeflib.models import load

BASELINES = ["random", "l2", "vector", "element1", "element2"]
VARIANTS = ["aef-layer", "aef-element", "aef-learned"]


@torch.no_grad()
def calib_loss(model, windows: torch.Tensor) -> float:
    return model(input_ids=windows, labels=windows, use_cache=False).loss.item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--seeds", default="42,43,44")
    ap.add_argument("--targets", default="0.2", help="target parameter reductions, comma-separated")
    ap.add_argument("--ratio", type=float, default=None, help="per-structure pruning ratio instead of targets")
    ap.add_argument("--max-windows", type=int, default=64, help="128-token windows per perplexity (first ones)")
    ap.add_argument("--out", default="benchmarks/results/quality.json")
    ap.add_argument("--zeroshot-limit", type=int, default=0,
                    help="items per offline zero-shot task (0 = no zero-shot; lm-eval is the slow part)")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    ap.add_argument("--summarize", nargs="+", metavar="JSON", help="only print the table of these result files")
    ap.add_argument("--markdown", action="store_true", help="with --summarize: a Markdown table (for the README)")
    ap.add_argument("--smoke", action="store_true", help="tiny model, 1 seed, 2 windows: checks the script runs")
    args = ap.parse_args()
    if args.summarize:
        merged = merge([json.loads(Path(f).read_text()) for f in args.summarize])
        markdown(merged) if args.markdown else summarize(merged)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.smoke:
        args.model, args.seeds, args.ratio, args.max_windows = "tiny-llama", "42", 0.5, 2
        args.zeroshot_limit = min(args.zeroshot_limit, 2)
        args.out = str(Path(tempfile.mkdtemp()) / "quality.json")
    seeds = [int(s) for s in args.seeds.split(",")]
    targets = [None] if args.ratio is not None else [float(t) for t in args.targets.split(",")]

    dense, tokenizer, adapter = load(args.model)
    n_cal, len_cal = (4, 16) if args.smoke else (10, 64)
    holdout = data.calibration(tokenizer, n=8 if args.smoke else 32, seq_len=32 if args.smoke else 128, seed=1042)
    out_path = Path(args.out)
    previous = json.loads(out_path.read_text()) if out_path.is_file() else {}
    if previous and (previous.get("model"), previous.get("max_windows")) != (args.model, args.max_windows):
        raise SystemExit(f"{out_path} holds another sweep (model {previous.get('model')}, max_windows "
                         f"{previous.get('max_windows')}); pass another --out")
    results = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                           "aeflib": aeflib.__version__, "threads": torch.get_num_threads()},
               "model": args.model, "max_windows": args.max_windows, "zeroshot_limit": args.zeroshot_limit,
               "rows": previous.get("rows", []), "command": " ".join(sys.argv)}
    metrics = ["calib_loss", "ppl_wikipedia", "ppl_lee_news"] + (["zeroshot_avg"] if args.zeroshot_limit else [])

    def measure(model, known: dict | None = None) -> dict:
        out = {k: v for k, v in (known or {}).items() if k in metrics}
        if "calib_loss" not in out:
            out["calib_loss"] = calib_loss(model, holdout)
        for key, corpus in (("ppl_wikipedia", "wikipedia"), ("ppl_lee_news", "lee-news")):
            if key not in out:
                out[key] = perplexity(model, tokenizer, corpus, "test", max_windows=args.max_windows,
                                      progress=False).value
        if "zeroshot_avg" in metrics and "zeroshot_avg" not in out:
            zs = zeroshot(model, tokenizer, tasks="local", limit=args.zeroshot_limit, bootstrap_iters=0)
            out["zeroshot_avg"] = zs.average
            out["zeroshot"] = {t: s.value for t, s in zs.scores.items()}
            out["zeroshot_items"] = {t: s.n_items for t, s in zs.scores.items()}
        return out

    def done(seed, target, method) -> dict | None:
        for r in results["rows"]:
            if (r["seed"], r["target_params"], r["method"]) == (seed, target, method):
                return r
        return None

    t0 = time.perf_counter()
    results["dense"] = measure(dense, previous.get("dense"))
    print(f"dense: {results['dense']}", flush=True)
    for seed in seeds:
        todo = [(t, m) for t in targets for m in BASELINES + VARIANTS
                 if not (done(seed, t, m) and all(k in done(seed, t, m) for k in metrics))]
        if not todo:
            continue
        calib = data.calibration(tokenizer, n=n_cal, seq_len=len_cal, seed=seed)
        t = time.perf_counter()
        scores = importance.estimate(dense, adapter, calib, criteria=BASELINES, seed=seed)
        est_s = time.perf_counter() - t
        for target in targets:
            if target is None:
                ratio = args.ratio
            else:
                ratio = pruning.plan(dense, adapter, scores["l2"], target_params=target).pruning_ratio
            if not any(t == target for t, _ in todo):
                continue
            methods = {m: scores[m] for m in BASELINES}
            fusion_s = {}
            for variant in VARIANTS:
                if (target, variant) not in todo:
                    continue
                t = time.perf_counter()
                fused = fusion.fuse(scores, variant, model=dense, adapter=adapter, calibration=calib,
                                    pruning_ratio=ratio)
                fusion_s[variant] = time.perf_counter() - t
                methods[variant] = fused.fused
            for name, per_set in methods.items():
                if (target, name) not in todo:
                    continue
                model = copy.deepcopy(dense)
                plan = pruning.plan(model, adapter, per_set, pruning_ratio=ratio, criterion=name)
                pruning.apply(model, adapter, plan)
                old = done(seed, target, name)
                row = {"seed": seed, "target_params": target, "pruning_ratio": ratio, "method": name,
                       "param_reduction": plan.param_reduction, **measure(model, old),
                       "estimate_seconds": est_s, "fusion_seconds": fusion_s.get(name)}
                if old is not None:
                    results["rows"].remove(old)
                results["rows"].append(row)
                print(json.dumps(row), flush=True)
                write_json(results, Path(args.out))
                del model
    results["seconds"] = time.perf_counter() - t0
    write_json(results, Path(args.out))
    summarize(results)


def merge(files: list[dict]) -> dict:
    """One result dict from several sweeps of the same model and protocol (later files win on duplicate rows)."""
    first = files[0]
    for f in files[1:]:
        if (f["model"], f["max_windows"]) != (first["model"], first["max_windows"]):
            raise SystemExit("cannot merge sweeps of different models or perplexity windows")
    rows = {}
    for f in files:
        for r in f["rows"]:
            rows[(r["seed"], r["target_params"], r["method"])] = r
    dense = {}
    for f in files:
        dense.update(f["dense"])
    return {**first, "dense": dense, "rows": list(rows.values())}


def summarize(results: dict) -> None:
    dense = results["dense"]
    rows = results["rows"]
    zs = "zeroshot_avg" in dense
    print(f"\n{results['model']}, no recovery; perplexity llm-pruner-128 on the first {results['max_windows']} "
          "windows of each test split" + (f"; zero-shot: average of the local tasks, first "
                                          f"{results.get('zeroshot_limit')} items each" if zs else "")
          + "; mean [min..max] over the n calibration seeds; ratio = pruned / dense")
    head = (f"{'target':>11} {'method':<12} {'n':>2} {'params -%':>9} {'calib loss':>20} {'PPL wiki':>22} {'ratio':>6} "
            f"{'PPL news':>22} {'ratio':>6}")
    print(head + (f" {'zero-shot avg':>20} {'ratio':>6}" if zs else ""))
    line = (f"{'':>11} {'dense':<12} {'':>2} {'':>9} {dense['calib_loss']:20.3f} {dense['ppl_wikipedia']:22.2f} "
            f"{1:6.2f} {dense['ppl_lee_news']:22.2f} {1:6.2f}")
    print(line + (f" {dense['zeroshot_avg']:20.3f} {1:6.2f}" if zs else ""))
    keys = sorted({(_amount(r), r["method"]) for r in rows}, key=lambda k: (k[0], _order(k[1])))
    for target, method in keys:
        sel = [r for r in rows if _amount(r) == target and r["method"] == method]

        def cell(metric: str, fmt: str, sel=sel) -> str:
            vals = [r[metric] for r in sel if metric in r]
            if not vals:
                return "n/a"
            return f"{statistics.mean(vals):{fmt}} [{min(vals):{fmt}}..{max(vals):{fmt}}]"

        def ratio(metric: str, sel=sel) -> str:
            vals = [r[metric] for r in sel if metric in r]
            return f"{statistics.mean(vals) / dense[metric]:6.2f}" if vals else f"{'n/a':>6}"

        line = (f"{target:>11} {method:<12} {len(sel):2d} "
                f"{100 * statistics.mean(r['param_reduction'] for r in sel):9.2f} {cell('calib_loss', '.3f'):>20} "
                f"{cell('ppl_wikipedia', '.2f'):>22} {ratio('ppl_wikipedia')} {cell('ppl_lee_news', '.2f'):>22} "
                f"{ratio('ppl_lee_news')}")
        if zs:
            n_zs = sum("zeroshot_avg" in r for r in sel)
            line += f" {cell('zeroshot_avg', '.3f'):>20} {ratio('zeroshot_avg')}" + ("" if n_zs == len(sel) else
                                                                                   f" (n={n_zs})")
        print(line)
    for target in sorted({_amount(r) for r in rows}):
        variants = [(statistics.mean(r["calib_loss"] for r in rows if r["method"] == v and
                                     _amount(r) == target), v)
                    for v in VARIANTS if any(r["method"] == v and _amount(r) == target for r in rows)]
        if variants:
            print(f"{target}: fusion variant with the lowest held-out calibration loss: {min(variants)[1]} "
                  "(how aeflib.fusion.DEFAULT_METHOD is chosen; evaluation data not consulted)")
    print(f"aef = {fusion.DEFAULT_METHOD} (aeflib.fusion.DEFAULT_METHOD)")
    m = results.get("machine", {})
    print(f"machine: {m.get('platform')}, {m.get('cpus')} CPUs, torch {m.get('torch')}, threads {m.get('threads')}")


def markdown(results: dict) -> None:
    """The summary as a Markdown table: mean ± half the min..max spread over seeds, and the ratio to dense."""
    dense, rows = results["dense"], results["rows"]
    cols = [("calib_loss", "held-out calib. loss", ".3f"), ("ppl_wikipedia", "PPL Wikipedia", ".2f"),
            ("ppl_lee_news", "PPL Lee news", ".2f")]
    print("| target | method | seeds | params removed | " + " | ".join(
        f"{name} | ratio" if key != "calib_loss" else name for key, name, _ in cols) + " |")
    print("|---" * (4 + 2 * len(cols) - 1) + "|")
    print("| – | dense | – | – | " + " | ".join(
        f"{dense[k]:{f}} | 1.00" if k != "calib_loss" else f"{dense[k]:{f}}" for k, _, f in cols) + " |")
    keys = sorted({(_amount(r), r["method"]) for r in rows}, key=lambda k: (k[0], _order(k[1])))
    for target, method in keys:
        sel = [r for r in rows if _amount(r) == target and r["method"] == method]
        cells = []
        for key, _, fmt in cols:
            vals = [r[key] for r in sel]
            mean, half = statistics.mean(vals), (max(vals) - min(vals)) / 2
            cells.append(f"{mean:{fmt}} ± {half:{fmt}}")
            if key != "calib_loss":
                cells.append(f"{mean / dense[key]:.2f}")
        name = f"{method} (= `aef`)" if method == fusion.DEFAULT_METHOD else method
        print(f"| {target} | {name} | {len(sel)} | "
              f"{100 * statistics.mean(r['param_reduction'] for r in sel):.2f} % | " + " | ".join(cells) + " |")


def _amount(row: dict) -> str:
    """How much a row prunes: its parameter target (``20 %``) or, in ratio mode, its per-structure ratio."""
    t = row["target_params"]
    return f"{100 * t:.0f} %" if t is not None else f"ratio {row['pruning_ratio']:.2f}"


def _order(method: str) -> int:
    order = BASELINES + VARIANTS
    return order.index(method) if method in order else len(order)


if __name__ == "__main__":
    main()
