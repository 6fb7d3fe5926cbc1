"""Zero-shot cost per model: seconds and lm-eval requests per second of the ``paper7-offline`` subset vs ``local``.

For each model (dense SmolLM2-135M and the same model with 20 % of its parameters removed by an ``l2`` plan, i.e.
the shape the demo scores after pruning), scores each task set with ``aeflib.evaluation.zeroshot`` at ``--limit``
items per task (seeded subset, ``subset_seed=0``: the demo's items) and reports items, requests (one per answer
choice), wall and CPU seconds, requests per second, and the ratio paper7-offline / local of wall seconds measured in
the same run. Writes JSON to benchmarks/results/.

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python benchmarks/zeroshot_speed.py --limit 30   # the demo's subset
    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python benchmarks/zeroshot_speed.py --smoke      # seconds (tests)
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
from pathlib import Path

import torch
from _common import machine, write_json  # benchmarks/ is on sys.path: scripts run as files

import aeflib.models
from aeflib import importance, pruning
from aeflib.evaluation.zeroshot import zeroshot


def l2_pruned(loaded, target: float | None, ratio: float | None, layers):
    """A copy of the model with an ``l2`` plan applied (weights only: no forward pass), and its parameter count."""
    model = copy.deepcopy(loaded.model)
    dummy = torch.zeros(1, 8, dtype=torch.long)  # l2 reads weights only; estimate() still wants a [N, L] batch
    scores = importance.estimate(model, loaded.adapter, dummy, criteria=["l2"], layers=layers)["l2"]
    plan = pruning.plan(model, loaded.adapter, scores, target_params=target, pruning_ratio=ratio, layers=layers,
                        criterion="l2")  # fmt: skip
    pruning.apply(model, loaded.adapter, plan)
    return model


def measure(model, tokenizer, task_set: str, limit: int, batch_size: int) -> dict:
    """Score ``task_set`` once; wall / CPU seconds, items and requests (one per answer choice) per task."""
    wall, cpu = time.perf_counter(), time.process_time()
    res = zeroshot(model, tokenizer, tasks=task_set, limit=limit, batch_size=batch_size, bootstrap_iters=0,
                   log_samples=True)  # fmt: skip
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    tasks = {t: {"items": s.n_items, "requests": sum(len(r["arguments"]) for r in res.samples[t]),
                 "split": s.split, "metric": s.metric, "value": s.value, "items_hash": s.items_hash}
             for t, s in res.scores.items()}  # fmt: skip
    requests = sum(t["requests"] for t in tasks.values())
    return {"task_set": task_set, "limit": limit, "items": sum(t["items"] for t in tasks.values()),
            "requests": requests, "wall_s": wall, "cpu_s": cpu, "requests_per_s": requests / wall,
            "average": res.average, "tasks": tasks}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--limit", type=int, default=30, help="items per task (seeded subset, subset_seed=0)")
    ap.add_argument("--sets", default="paper7-offline,local")
    ap.add_argument("--batch-size", type=int, default=8, help="requests per forward (the demo: 2 x eval_batch_size)")
    ap.add_argument("--target", type=float, default=0.2, help="share of all parameters the pruned model lacks")
    ap.add_argument("--out", default="benchmarks/results/zeroshot_speed_smollm2.json")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default); 1 is "
                    "faster on a shared machine, where 2 OpenMP threads stall each other")
    ap.add_argument("--smoke", action="store_true", help="tiny model, 2 items per task, temp output")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    target, ratio, layers = args.target, None, list(range(4, 28))
    if args.smoke:
        args.model, args.limit = "tiny-llama", 2
        target, ratio, layers = None, 0.25, [1, 2]  # tiny models hold their parameters in the embeddings
        args.out = str(Path(tempfile.mkdtemp(prefix="aeflib-zeroshot-speed-")) / "zeroshot_speed.json")

    loaded = aeflib.models.load(args.model)
    label = f"pruned ratio {ratio:.2f}" if ratio else f"pruned {round(100 * target)} %"
    models = {"dense": loaded.model, label: l2_pruned(loaded, target, ratio, layers)}
    sets = args.sets.split(",")
    zeroshot(loaded.model, loaded.tokenizer, tasks=sets[0], limit=1, batch_size=args.batch_size)  # warm caches
    records = []
    for name, model in models.items():
        params = sum(p.numel() for p in model.parameters())
        for task_set in sets:
            rec = {"model": name, "params": params, **measure(model, loaded.tokenizer, task_set, args.limit,
                                                              args.batch_size)}  # fmt: skip
            records.append(rec)
            print(f"{name:18s} {task_set:15s} items {rec['items']:4d}  requests {rec['requests']:5d}  "
                  f"wall {rec['wall_s']:7.1f} s  CPU {rec['cpu_s']:7.1f} s  {rec['requests_per_s']:6.2f} requests/s  "
                  f"average {rec['average'] * 100:5.1f}", flush=True)
    print(f"\nratio of wall seconds, measured in the same run ({args.model}, limit {args.limit} per task):")
    by = {(r["model"], r["task_set"]): r for r in records}
    for name in models:
        for task_set in sets[1:]:
            ratio_s = by[(name, sets[0])]["wall_s"] / by[(name, task_set)]["wall_s"]
            print(f"  {name:18s} {sets[0]} / {task_set} = {ratio_s:.2f}")
    print("per task (first model, requests / items):", {t: f"{v['requests']}/{v['items']} {v['split']}"
                                                        for t, v in records[0]["tasks"].items()})  # fmt: skip
    out = {"model": args.model, "limit": args.limit, "subset_seed": 0, "batch_size": args.batch_size,
           "threads": torch.get_num_threads(), "records": records, "machine": machine(),
           "command": f"python benchmarks/zeroshot_speed.py --limit {args.limit} --threads {args.threads}"}  # fmt: skip
    write_json(out, args.out)
    print(f"wrote {args.out}; machine: {out['machine']}")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    main()
