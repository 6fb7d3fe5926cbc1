"""Choose aeflib's default fusion variant on calibration data only: held-out calibration loss and fusion time.

For each calibration seed (10 × 64-token windows of the shipped Wikipedia *train* split) and each setting (20 % of
the parameters removed, and the per-layer pruning ratio 0.64 of the paper's 50 % LLaMA-7B setting), estimate the
vector, element1 and element2 importance once, fuse with every AEF variant of ``aeflib.fusion.FUSIONS`` (except
``fixed``), prune a copy of the dense model with each, and measure the mean token NLL of every window of a
*held-out calibration* set (train split, seed 1042, 128-token windows — the first 16 of the 32 windows behind the
"held-out calib. loss" of ``benchmarks/quality.py``; never the evaluation split). Also the fusion's wall and CPU
seconds. Two methods whose plans remove the same groups share one measurement (their losses are equal anyway).

The default rule: among the variants, the one with the lowest mean paired difference to element1 (held-out NLL,
windows paired, seeds 42-44) averaged over both settings. Each variant's difference to element1 gets a two-stage
bootstrap interval (seeds, then windows; ``aeflib.evaluation.paired``); a difference is called real only when
its interval excludes zero.

    python benchmarks/fusion_select.py                          # seeds 42,43,44; p0.2 and r0.64 (~1-2 h, 2 cores)
    python benchmarks/fusion_select.py --summarize [A.json B.json]   # table + rule from result files only
    python benchmarks/fusion_select.py --smoke                  # seconds, tiny model (CI)

Rows already in ``--out`` (same seed, setting and method) are kept, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import machine, write_json  # benchmarks/ is on sys.path: scripts run as files

from aeflib import data, fusion, importance, pruning
from aeflib.evaluation.paired import paired_bootstrap
from aeflib.models import load

BASELINES = ["vector", "element1", "element2"]
VARIANTS = [m for m in fusion.FUSIONS if m != "fixed"]
# cheap first, so an interrupted run has the most rows; aef-layer (the old default) last
PRIORITY = ["aef-element", "aef-blend", "aef-agree", "aef-learned", "aef-layer-tuned", "aef-layer"]
ORDER = BASELINES + [m for m in PRIORITY if m in VARIANTS] + [m for m in VARIANTS if m not in PRIORITY]


@torch.no_grad()
def window_nll(model, windows: torch.Tensor, chunk: int = 8) -> list[float]:
    """Mean next-token NLL (nats) of each window [N, L] → N floats."""
    out = []
    for ids in windows.split(chunk):
        logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        out += nll.mean(1).tolist()
    return out


def _setting(label: str) -> tuple[float | None, float | None]:
    kind, value = label[0], float(label[1:])
    if kind not in "pr" or not 0 < value < 1:
        raise SystemExit(f"setting {label!r}: give p<share of parameters> or r<pruning ratio>, e.g. p0.2,r0.64")
    return (value, None) if kind == "p" else (None, value)


def _summary(fusion_result) -> dict:
    """What to keep of a FusionResult: weights and influence means per kind, the choices it made."""
    out = {"fingerprint": fusion_result.settings["fingerprint"], "settings": fusion_result.settings}
    for kind in ("head", "channel"):
        keys = [k for k in fusion_result.weights if k.endswith("." + kind)]
        if keys:
            out[f"alpha_fine_{kind}"] = round(statistics.mean(fusion_result.weights[k][0] for k in keys), 4)
            out[f"rho_fine_{kind}"] = round(statistics.mean(fusion_result.influence[k][0] for k in keys), 4)
            out[f"rho_coarse_{kind}"] = round(statistics.mean(fusion_result.influence[k][1] for k in keys), 4)
    d = fusion_result.details
    for key in ("chosen", "alpha_fine", "best_step", "steps_run"):
        if key in d:
            out[key] = d[key]
    return out


def summarize(results: dict) -> dict:
    """Per setting: mean held-out NLL per method, paired difference to element1, the rule's choice; printed."""
    rows = results["rows"]
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    report: dict = {"settings": {}}
    per_variant: dict[str, list[float]] = {}
    for setting in settings:
        part = [r for r in rows if r["setting"] == setting]
        by = {m: {r["seed"]: dict(enumerate(r["window_nll"])) for r in part if r["method"] == m}
              for m in ORDER if any(r["method"] == m for r in part)}
        ref = by.get("element1")
        table = {}
        print(f"\n{setting}: held-out calibration NLL (nats/token), mean over seeds; fusion seconds (wall / CPU)")
        for m, seeds in by.items():
            sel = [r for r in part if r["method"] == m]
            entry = {"seeds": sorted(seeds), "calib_loss": statistics.mean(r["calib_loss"] for r in sel)}
            if sel[0].get("fusion_seconds") is not None:
                entry["fusion_seconds"] = statistics.mean(r["fusion_seconds"] for r in sel)
                entry["fusion_cpu_seconds"] = statistics.mean(r["fusion_cpu_seconds"] for r in sel)
            if ref and m != "element1" and set(seeds) == set(ref):
                diff = paired_bootstrap(ref, seeds, unit="nats", higher_is_better=False,
                                        labels=("element1", m), draws=2000)
                entry["vs_element1"] = diff.to_dict()
                if m in VARIANTS:
                    per_variant.setdefault(m, []).append(diff.diff)
            table[m] = entry
            t = "" if "fusion_seconds" not in entry else \
                f"  {entry['fusion_seconds']:7.1f} / {entry['fusion_cpu_seconds']:7.1f} s"
            reading = entry.get("vs_element1", {}).get("reading", "")
            print(f"  {m:<16} {entry['calib_loss']:.4f}  seeds {entry['seeds']}{t}  {reading}")
        report["settings"][setting] = table
    complete = {m: v for m, v in per_variant.items() if len(v) == len(settings)}
    if complete:
        best = min(complete, key=lambda m: statistics.mean(complete[m]))
        report["rule"] = ("variant with the lowest mean paired difference to element1 in held-out calibration NLL, "
                          "averaged over the settings " + ", ".join(settings))
        report["mean_diff_vs_element1"] = {m: round(statistics.mean(v), 5) for m, v in complete.items()}
        report["chosen"] = best
        print(f"\nrule: {report['rule']}\n  " + ", ".join(f"{m} {v:+.4f}" for m, v in sorted(
            report["mean_diff_vs_element1"].items(), key=lambda kv: kv[1])) + f"\n  → default: {best}")
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--seeds", default="42,43,44")
    ap.add_argument("--settings", default="p0.2,r0.64", help="p<share of parameters> or r<pruning ratio>")
    ap.add_argument("--methods", default=",".join(ORDER), help="baselines and variants to run, comma-separated")
    ap.add_argument("--holdout-n", type=int, default=16, help="held-out 128-token windows (seed 1042)")
    ap.add_argument("--out", default="benchmarks/results/fusion_select_smollm2.json")
    ap.add_argument("--summarize", nargs="*", metavar="JSON",
                    help="only print the table and the rule of these result files (default: --out), merged")
    ap.add_argument("--smoke", action="store_true", help="tiny model, 1 seed, few windows: checks the script runs")
    args = ap.parse_args()
    out_path = Path(args.out)
    if args.summarize is not None:
        files = [json.loads(Path(f).read_text()) for f in (args.summarize or [out_path])]
        summarize({**files[0], "rows": [r for f in files for r in f["rows"]]})
        return
    if args.smoke:
        args.model, args.seeds, args.settings = "tiny-llama", "42", "r0.5"
        out_path = Path(tempfile.mkdtemp()) / "fusion_select.json"
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in ORDER]
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; choose from {ORDER}")
    seeds = [int(s) for s in args.seeds.split(",")]
    settings = [s.strip() for s in args.settings.split(",")]
    for s in settings:
        _setting(s)

    dense, tokenizer, adapter = load(args.model)
    n_cal, len_cal = (6, 16) if args.smoke else (10, 64)
    holdout = data.calibration(tokenizer, n=6 if args.smoke else 32, seq_len=32 if args.smoke else 128,
                               seed=1042)[: args.holdout_n]
    previous = json.loads(out_path.read_text()) if out_path.is_file() else {}
    if previous and previous.get("model") != args.model:
        raise SystemExit(f"{out_path} holds another model ({previous.get('model')}); pass another --out")
    results = {"machine": machine(), "model": args.model, "calibration": [n_cal, len_cal],
               "holdout": {"n": holdout.shape[0], "seq_len": holdout.shape[1], "seed": 1042, "split": "train"},
               "rows": previous.get("rows", []), "command": " ".join(sys.argv)}

    def done(seed, setting, method) -> bool:
        return any((r["seed"], r["setting"], r["method"]) == (seed, setting, method) for r in results["rows"])

    t0 = time.perf_counter()
    for seed in seeds:
        if all(done(seed, s, m) for s in settings for m in methods):
            continue
        calib = data.calibration(tokenizer, n=n_cal, seq_len=len_cal, seed=seed)
        scores = importance.estimate(dense, adapter, calib, criteria=BASELINES, seed=seed)
        for setting in settings:
            measured: dict[str, tuple] = {}   # plan (kept groups) -> (method, window NLL), this seed and setting
            target, ratio = _setting(setting)
            if target is not None:
                ratio = pruning.solve_ratio(dense, adapter, target)
            for method in methods:
                if done(seed, setting, method):
                    continue
                row = {"seed": seed, "setting": setting, "target_params": target, "pruning_ratio": ratio,
                       "method": method, "fusion_seconds": None, "fusion_cpu_seconds": None}
                if method in BASELINES:
                    per_set = scores[method]
                else:
                    wall, cpu = time.perf_counter(), time.process_time()
                    result = fusion.fuse(scores, method, model=dense, adapter=adapter, calibration=calib,
                                         pruning_ratio=ratio)
                    row.update(fusion_seconds=round(time.perf_counter() - wall, 2),
                               fusion_cpu_seconds=round(time.process_time() - cpu, 2), **_summary(result))
                    per_set = result.fused
                plan = pruning.plan(dense, adapter, per_set, pruning_ratio=ratio, criterion=method)
                key = json.dumps(plan.keep, sort_keys=True)
                if key not in measured:
                    model = copy.deepcopy(dense)
                    pruning.apply(model, adapter, plan)
                    measured[key] = (method, window_nll(model, holdout), plan.param_reduction)
                    del model
                else:
                    row["same_plan_as"] = measured[key][0]
                _, nll, reduction = measured[key]
                row.update(param_reduction=reduction, calib_loss=statistics.mean(nll), window_nll=nll,
                           load_average=machine()["load_average"])
                results["rows"].append(row)
                print(json.dumps({k: v for k, v in row.items() if k not in ("window_nll", "settings")}), flush=True)
                write_json(results, out_path)
    results["seconds"] = round(time.perf_counter() - t0, 1)
    results["summary"] = summarize(results)
    write_json(results, out_path)
    print(f"\nwrote {out_path} ({results['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
