"""Wall time and peak memory of importance estimation: memory-bounded (hooks) vs naive (full .grad) path.

Each measurement runs in a fresh subprocess so that its peak RSS (``ru_maxrss``) is its own; on CUDA the peak is
``torch.cuda.max_memory_allocated``. Reported per case: seconds (wall and CPU), peak memory, peak / weight bytes, and
the naive / bounded ratio measured in the same run.

Models: the embedded SmolLM2-135M (layers 4..27 scored, as LLM-Pruner's range) and a random-weight model with
LLaMA-7B widths (hidden 4096, 32 heads, MLP 11008, vocab 32000) but only ``--layers`` decoder layers, all scored.

``--full7b`` measures the full LLaMA-7B shape instead (32 layers, random weights built directly in bf16 by
``full7b.random_model`` — meta device, then one tensor at a time, never an fp32 copy — layers 4..29 scored, 10 × 64
tokens, 2 threads): first order (vector + element1) and with the Fisher term (vector + element1 + element2, default
``fisher_memory_gib``), bounded path. The naive path is not run there: it holds a bf16 ``.grad`` for every parameter
(12.55 GiB) beside the weights (12.55 GiB) and fp32 gradient sums for the pruned weights (19.6 GiB) — over 44 GiB.

    python benchmarks/estimation_cost.py                 # several minutes on 2 cores
    python benchmarks/estimation_cost.py --full7b        # ~1 h on 2 cores, peak < 20 GiB -> estimation_cost_full7b.json
    python benchmarks/estimation_cost.py --full7b --fisher-memory-gib 7.5   # 4 layers per slice: 7 slices, not 9
    python benchmarks/estimation_cost.py --smoke         # seconds (CI)
    python benchmarks/estimation_cost.py --device cuda --full7b   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

from _common import machine, write_json  # benchmarks/ is on sys.path: scripts run as files

#: criteria sets: "all" is every criterion aeflib estimates (one set of backward passes feeds them all)
CRITERIA = {"first-order": ["vector", "element1"], "with-fisher": ["vector", "element1", "element2"],
            "all": ["random", "l1", "l2", "vector", "element1", "element2"]}


def _child(spec: dict) -> dict:
    """Run one estimation and report its own time and peak memory."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    import aeflib.models
    from aeflib import data, importance

    dtype = aeflib.models.resolve_dtype(spec["dtype"])
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    build = time.perf_counter()
    sampler = None
    if spec["model"] == "llama-7b-random":
        from full7b import MemorySampler, random_model, random_model_mmap

        if spec["device"] == "cpu":
            model, adapter = random_model_mmap("llama-7b", spec["dtype"])
            sampler = MemorySampler().__enter__()
            anon_before = sampler.peak["RssAnon"]
        else:
            model, adapter = random_model("llama-7b", spec["dtype"], spec["device"])
        layers = None                                                   # the adapter's 4..29
        calib = torch.randint(0, 32000, (spec["n"], spec["seq_len"]), generator=torch.Generator().manual_seed(42))
    elif spec["model"] == "llama7b-width":
        cfg = LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                          num_hidden_layers=spec["layers"], num_attention_heads=32, num_key_value_heads=32)
        with torch.device(spec["device"]):
            model = LlamaForCausalLM(cfg).to(dtype).eval()
        adapter = aeflib.models.adapter_for(model)
        layers = range(spec["layers"])
        calib = torch.randint(0, 32000, (spec["n"], spec["seq_len"]), generator=torch.Generator().manual_seed(42))
    else:
        model, tokenizer, adapter = aeflib.models.load(spec["model"], dtype=dtype, device=spec["device"])
        layers = None
        calib = data.calibration(tokenizer, n=spec["n"], seq_len=spec["seq_len"], seed=42)
    build_seconds = time.perf_counter() - build
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if spec["device"].startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    t, cpu = time.perf_counter(), time.process_time()
    budget = spec.get("fisher_memory_gib") or importance.DEFAULT_FISHER_MEMORY_GIB
    scores = importance.estimate(model, adapter, calib, criteria=CRITERIA[spec["criteria"]], layers=layers,
                                 path=spec["path"], fisher_memory_gib=budget)
    seconds, cpu_seconds = time.perf_counter() - t, time.process_time() - cpu
    out = {**spec, "seconds": seconds, "cpu_seconds": cpu_seconds, "threads": torch.get_num_threads(),
           "weight_bytes": weight_bytes, "build_seconds": build_seconds, "fisher_memory_gib_used": budget,
           "fisher_layer_slices": scores.meta["fisher_layer_slices"], "scored_layers": scores.meta["layers"]}
    if spec["device"].startswith("cuda"):
        torch.cuda.synchronize()
        out["peak_bytes"] = torch.cuda.max_memory_allocated()
        out["peak_above_weights_bytes"] = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        out["peak_bytes"] = peak
        out["peak_above_weights_bytes"] = peak - rss_before
    if sampler is not None:                 # weights memory-mapped: what the run needs = weights + own memory
        sampler.__exit__()
        out["sampled_peak_gib"] = sampler.gib()
        out["anon_before_bytes"] = anon_before
        out["peak_above_weights_bytes"] = sampler.peak["RssAnon"] - anon_before
        out["needed_bytes"] = weight_bytes + sampler.peak["RssAnon"]
    return out


def _run(spec: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if proc.returncode:
        raise RuntimeError(f"case {spec} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--layers", type=int, default=2, help="decoder layers of the LLaMA-7B-width model")
    ap.add_argument("--full7b", action="store_true",
                    help="only the full LLaMA-7B shape, bf16, 2 threads (-> estimation_cost_full7b.json)")
    ap.add_argument("--fisher-memory-gib", type=float, default=None,
                    help="--full7b: importance.estimate's Fisher budget (default: its DEFAULT_FISHER_MEMORY_GIB); "
                         "more GiB, fewer layer slices, fewer repeated passes")
    ap.add_argument("--out", default=None, help="default benchmarks/results/estimation_cost[_full7b].json")
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return

    if args.smoke:
        cases = [dict(model="tiny-llama", layers=0, n=4, seq_len=16, path=p, criteria="with-fisher",
                      device=args.device, dtype=args.dtype) for p in ("bounded", "naive")]
        cases.append(dict(model="tiny-llama", layers=0, n=4, seq_len=16, path="bounded", criteria="with-fisher",
                          device=args.device, dtype=args.dtype, fisher_memory_gib=1e-6))   # one layer per slice
    elif args.full7b:
        cases = [dict(model="llama-7b-random", layers=32, n=10, seq_len=64, path="bounded", criteria=crit,
                      device=args.device, dtype="bfloat16", threads=2,
                      fisher_memory_gib=args.fisher_memory_gib if crit == "with-fisher" else None)
                 for crit in ("first-order", "with-fisher")]   # the quick case first: a stopped run keeps it
    else:
        cases = []
        for crit in ("first-order", "all"):
            for path in ("bounded", "naive"):
                cases.append(dict(model="smollm2-135m", layers=0, n=10, seq_len=64, path=path, criteria=crit,
                                  device=args.device, dtype=args.dtype))
        for k in (args.layers, args.layers + 1):
            for path in ("bounded", "naive"):
                cases.append(dict(model="llama7b-width", layers=k, n=10, seq_len=64, path=path,
                                  criteria="first-order", device=args.device, dtype=args.dtype))
    if args.full7b and args.device == "cpu":     # write the random weights file once, in its own process
        subprocess.run([sys.executable, str(Path(__file__).with_name("full7b.py")), "--prepare", "llama-7b"],
                       check=True)
    out = Path(args.out or f"benchmarks/results/estimation_cost{'_full7b' if args.full7b else ''}.json")
    rows = []
    for spec in cases:
        row = _run(spec)
        rows.append(row)
        print(f"{row['model']:>15} L={row['layers']:<2} {row['criteria']:<12} {row['path']:<8} "
              f"{row['seconds']:8.1f} s ({row['cpu_seconds']:7.1f} s CPU)  peak {row['peak_bytes'] / 2**30:6.2f} GiB  "
              f"above weights {row['peak_above_weights_bytes'] / 2**30:6.2f} GiB  "
              f"peak/weights {row['peak_bytes'] / row['weight_bytes']:5.2f}  "
              f"Fisher slices {row['fisher_layer_slices']}", flush=True)
        if "needed_bytes" in row:
            print(f"{'':>15} weights memory-mapped: weights {row['weight_bytes'] / 2**30:.2f} GiB + peak own "
                  f"(anonymous) memory {row['sampled_peak_gib']['anon']:.2f} GiB = needed "
                  f"{row['needed_bytes'] / 2**30:.2f} GiB; peak RSS {row['sampled_peak_gib']['rss']:.2f} GiB",
                  flush=True)
        if args.full7b:                          # each case takes long: keep what was measured
            write_json({"machine": machine(), "rows": rows}, out)
    print("\nnaive / bounded, same run:")
    for r in rows:
        if r["path"] != "naive":
            continue
        b = next(x for x in rows if x["path"] == "bounded" and not x.get("fisher_memory_gib")
                 and all(x[k] == r[k] for k in ("model", "layers", "criteria")))
        print(f"  {r['model']} L={r['layers']} {r['criteria']}: memory above weights "
              f"{r['peak_above_weights_bytes'] / max(b['peak_above_weights_bytes'], 1):.2f}x, "
              f"time {r['seconds'] / b['seconds']:.2f}x")
    wide = {(r["layers"], r["path"]): r for r in rows if r["model"] == "llama7b-width" and r["layers"] < 32}
    projection = {}
    for path in ("bounded", "naive"):
        k = args.layers
        if (k, path) in wide and (k + 1, path) in wide:
            delta = wide[(k + 1, path)]["peak_bytes"] - wide[(k, path)]["peak_bytes"]
            projection[path] = wide[(k, path)]["peak_bytes"] + (32 - k) * delta
            print(f"  projected LLaMA-7B (32 layers, {args.dtype}, first-order) peak, {path}: "
                  f"{projection[path] / 2**30:.1f} GiB  (peak(k={k}) + (32-k)·Δ, Δ = {delta / 2**30:.2f} GiB/layer)")
    if args.full7b:
        first, fisher = (next(r for r in rows if r["criteria"] == c) for c in ("first-order", "with-fisher"))
        print(f"\nfull LLaMA-7B shape: with the Fisher term / first order, same run: peak "
              f"{fisher['peak_bytes'] / first['peak_bytes']:.2f}x, time {fisher['seconds'] / first['seconds']:.2f}x "
              f"wall, {fisher['cpu_seconds'] / first['cpu_seconds']:.2f}x CPU")
    elif not args.smoke:
        write_json({"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                "load_average": os.getloadavg()},
                    "rows": rows, "projection_7b_bytes": projection}, out)


if __name__ == "__main__":
    main()
