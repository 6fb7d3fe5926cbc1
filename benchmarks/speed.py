"""Speed of pruned vs dense models: parameters, MACs per token, prefill latency and decode speed, as pruned / dense.

What is measured, for each model dense and pruned:

* parameters (every tensor once; tied embeddings once) and analytic MACs per token at ``--seq-len`` (all
  ``nn.Linear`` layers incl. ``lm_head``, plus the attention scores/values term of each layer's own head count);
* prefill latency: one forward over ``[batch, --seq-len]`` tokens, at each of ``--batch-sizes`` (default 1 and 8);
* decode speed: ``--decode-tokens`` greedy steps with the KV cache after an (untimed) prefill, at
  ``--decode-batch-sizes`` (default batch 1).

How: :func:`aeflib.evaluation.efficiency` counts parameters and MACs (see its module docstring for the
conventions); :func:`aeflib.evaluation.compare_latency` times the dense model and every pruned copy of it
*interleaved* — after a warm-up round, each of ``--repeats`` rounds times every model once, the order rotating — so
that the machine's drift (other processes on a shared CPU) falls on all models alike. Each time ratio is the median
of the per-round pruned / dense ratios with an interval over rounds (all intervals of one comparison hold together
with 95 % probability); a ratio whose interval covers 1.0 is printed with ``~`` (no measurable difference). The
load average, CPU count and torch threads are recorded.

Models:

1. The embedded SmolLM2-135M, pruned by ``--targets`` (20 % and 50 %) of all its parameters with
   ``aeflib.pruning.plan(target_params=...)`` on LLM-Pruner's layer range (4..27). Scores are ``l2`` weight
   magnitudes (no calibration pass): for speed only the widths a plan leaves matter, not which heads survive.
2. A random-weight model with LLaMA-7B's widths (hidden 4096, 32 heads, MLP 11008, vocab 32000, fp32) but only
   ``--layers`` decoder layers, pruned on all its layers at the same per-structure ratios the SmolLM2 targets needed.
   Its embedding and ``lm_head`` (2 x 131 M parameters) weigh much more than 2 layers (2 x 202 M): the time ratios
   of a full 32-layer model would be closer to the per-layer ratios.

Ratios (all pruned / dense of a *cost*, so < 1 = cheaper / faster):

* ``params``: the parameter reduction the plan achieved (the reference the time ratios are read against: if time
  scaled with the weights, every time ratio would equal it);
* ``MACs``: the compute per token the pruned model does (compute-bound reference);
* ``prefill@bsB``: prefill seconds; ``decode@bs1``: seconds per generated token (= dense tok/s / pruned tok/s);
  ``~`` before a ratio: no measurable difference.

Commands:

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python benchmarks/speed.py                  # ~10 min on 2 idle cores
    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python benchmarks/speed.py --threads 1      # on a busy shared machine
    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python benchmarks/speed.py --device cuda --layers 32   # GPU, full 7B shape
    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python benchmarks/speed.py --control        # + an A/A control model
    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 python benchmarks/speed.py --smoke          # seconds, tiny models (CI)

Writes ``benchmarks/results/speed_smollm2.json`` (``--out``): machine, settings, every ``EfficiencyResult`` (parameters,
MACs), each pruned model's ratios, intervals and verdicts, and every ``LatencyComparison`` (samples per round).
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402
from _common import machine, write_json  # noqa: E402  (benchmarks/ is on sys.path: scripts run as files)

import aeflib.models  # noqa: E402
from aeflib import importance, pruning  # noqa: E402
from aeflib.evaluation import LatencyComparison, compare_latency, efficiency, efficiency_ratios  # noqa: E402

LLAMA7B = {"hidden": 4096, "heads": 32, "mlp": 11008, "vocab": 32000}
SMOKE_WIDE = {"hidden": 128, "heads": 4, "mlp": 344, "vocab": 1000}  # --smoke: the same layout, seconds to time


def l2_plan(model, adapter, *, target: float | None = None, ratio: float | None = None, layers=None):
    """A plan from ``l2`` weight-magnitude scores (no forward or backward pass) at a parameter target or a ratio."""
    dummy = torch.zeros(1, 8, dtype=torch.long)  # l2 reads weights only; estimate() still wants a [N, L] batch
    scores = importance.estimate(model, adapter, dummy, criteria=["l2"], layers=layers)["l2"]
    return pruning.plan(
        model, adapter, scores, target_params=target, pruning_ratio=ratio, layers=layers, criterion="l2"
    )


def llama_wide(layers: int, widths: dict, dtype: torch.dtype):
    """Random-weight LLaMA with the given widths and ``layers`` decoder layers (seeded), and its adapter."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=widths["vocab"],
        hidden_size=widths["hidden"],
        intermediate_size=widths["mlp"],
        num_hidden_layers=layers,
        num_attention_heads=widths["heads"],
        num_key_value_heads=widths["heads"],
        max_position_embeddings=2048,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(dtype).eval()
    return model, aeflib.models.adapter_for(model)


def latency(models: dict, tokenizer, args) -> dict[int, LatencyComparison]:
    """``compare_latency`` of all ``models`` at each batch size (decode timed at ``--decode-batch-sizes`` only)."""
    out = {}
    for b in args.batch_sizes:
        out[b] = compare_latency(
            models,
            tokenizer,
            seq_len=args.seq_len,
            batch_size=b,
            decode_tokens=args.decode_tokens if b in args.decode_batch_sizes else 0,
            rounds=args.repeats,
            warmup=1,
        )
    return out


def bench_model(name: str, dense, tokenizer, adapter, plans: list[tuple[dict, pruning.PruningPlan]], args) -> dict:
    """Count ``dense`` and a pruned copy per plan, time them all interleaved; print lines; return the JSON record."""
    record = {"model": name, "dense": None, "pruned": [], "latency": {}}
    base = efficiency(dense, tokenizer, seq_len=args.seq_len, repeats=0)  # parameters and MACs
    record["dense"] = base.to_dict()
    models = {"dense": dense}
    if args.control:  # an A/A control: the same model twice must come out as no measurable difference
        models["dense copy"] = copy.deepcopy(dense)
    labels = {}
    for label, pruning_plan in plans:
        model = copy.deepcopy(dense)
        pruning.apply(model, adapter, pruning_plan)
        key = f"pruned r{label['pruning_ratio']:.3f}"
        models[key], labels[key] = model, (label, pruning_plan)
    t = time.perf_counter()
    timed = latency(models, tokenizer, args)
    print(f"{name}: {len(models)} models timed interleaved in {time.perf_counter() - t:.0f} s", flush=True)
    for b, comparison in timed.items():
        print(f"  bs {b}: {comparison}", flush=True)
        record["latency"][str(b)] = comparison.to_dict()
    if args.control:
        record["control"] = {
            f"{q}@bs{b}": {"ratio": r.ratio, "interval": [r.low, r.high], "verdict": r.verdict}
            for b, comparison in timed.items()
            for q in comparison.spreads
            for r in [comparison.ratio(q, "dense copy", "dense")]
        }
    for key, (label, pruning_plan) in labels.items():
        res = efficiency(models[key], tokenizer, seq_len=args.seq_len, repeats=0)
        ratios = {k: v for k, v in efficiency_ratios(base, res).items() if not math.isnan(v)}
        intervals, verdicts = {}, {}
        for b, comparison in timed.items():
            for quantity in comparison.spreads:
                r = comparison.ratio(quantity, key, "dense")
                ratios[f"{quantity}@bs{b}"] = r.ratio
                intervals[f"{quantity}@bs{b}"] = [r.low, r.high]
                verdicts[f"{quantity}@bs{b}"] = r.verdict
        record["pruned"].append(
            {**label, "plan": pruning_plan.summary(), "efficiency": res.to_dict(), "ratios": ratios,
             "intervals": intervals, "verdicts": verdicts}
        )
    del models
    return record


def _cell(p: dict, key: str) -> str:
    """A ratio, or ``~`` + ratio when its interval covers 1.0 (no measurable difference), or ``?`` (no interval)."""
    value = p["ratios"].get(key, float("nan"))
    verdict = p.get("verdicts", {}).get(key)
    if verdict is None or verdict in ("faster", "slower"):
        return f"{value:.3f}"
    return ("~" if verdict == "no measurable difference" else "?") + f"{value:.3f}"


def print_table(records: list[dict], args) -> None:
    cols = [("params", "params_total"), ("MACs/tok", "macs_per_token")]
    cols += [(f"prefill@bs{b}", f"prefill_s@bs{b}") for b in args.batch_sizes]
    cols += [(f"decode@bs{b}", f"decode_s_per_token@bs{b}") for b in args.decode_batch_sizes]
    print(
        f"\npruned / dense, measured in the same run (cost ratios: < 1 = cheaper / faster; prefill = seconds for "
        f"[batch, {args.seq_len}] tokens, decode = seconds per token over {args.decode_tokens} greedy steps; "
        f"all models timed interleaved, {args.repeats} rounds after a warm-up; each time ratio is the median of the "
        f"per-round ratios)"
    )
    print(f"{'model':<28} {'target':>6} {'ratio':>6} " + " ".join(f"{c:>12}" for c, _ in cols))
    for rec in records:
        for p in rec["pruned"]:
            target = "-" if p.get("target_params") is None else f"{p['target_params']:.2f}"
            cells = " ".join(f"{_cell(p, key):>12}" for _, key in cols)
            print(f"{rec['model']:<28} {target:>6} {p['pruning_ratio']:6.3f} {cells}")
    print(
        "(params = the parameter-reduction reference: the time ratio if time scaled with the weights; "
        "MACs = the compute reference; ~ = no measurable difference: the interval of the ratio covers 1.0; "
        "? = too few rounds for an interval)"
    )
    print("\nintervals (sign-test order statistics over rounds; per batch size all hold together with 95 % "
          "probability):")
    for rec in records:
        for p in rec["pruned"]:
            parts = [f"{k} {p['ratios'][k]:.3f} [{lo:.3f}, {hi:.3f}]" for k, (lo, hi) in p["intervals"].items()
                     if lo is not None]
            print(f"  {rec['model']} r{p['pruning_ratio']:.3f}: " + ("; ".join(parts) or "none (too few rounds)"))
        if "control" in rec:
            parts = [f"{k} {c['ratio']:.3f} ({c['verdict']})" for k, c in rec["control"].items()]
            print(f"  {rec['model']} control, dense copy / dense: " + "; ".join(parts))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m", help="the real model (a key of aeflib.models.MODELS)")
    ap.add_argument("--targets", default="0.2,0.5", help="shares of all parameters to remove, comma-separated")
    ap.add_argument("--ratios", default=None, help="per-structure pruning ratios instead of --targets")
    ap.add_argument("--layers", type=int, default=2, help="decoder layers of the LLaMA-7B-width model (0 = skip it)")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-sizes", default="1,8", help="prefill batch sizes")
    ap.add_argument("--decode-batch-sizes", default="1", help="batch sizes also timed decoding (subset of the above)")
    ap.add_argument("--decode-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=10, help="interleaved timing rounds after one warm-up round "
                    "(>= 5 for an interval)")
    ap.add_argument("--control", action="store_true", help="also time a copy of the dense model (A/A control: "
                    "its ratio to the dense model must be 'no measurable difference')")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    ap.add_argument("--out", default="benchmarks/results/speed_smollm2.json")
    ap.add_argument("--smoke", action="store_true", help="tiny models, 1 repeat, short sequences, temp output")
    args = ap.parse_args()
    wide = LLAMA7B
    if args.smoke:  # tiny-llama cannot reach a parameter target (almost all its parameters are embeddings): ratios
        args.model, args.ratios, args.layers, args.seq_len = "tiny-llama", "0.2,0.5", 1, 16
        args.batch_sizes, args.decode_tokens, args.repeats = "1,2", 4, 5
        args.out = str(Path(tempfile.mkdtemp(prefix="aeflib-speed-smoke-")) / "speed.json")
        wide = SMOKE_WIDE
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    args.decode_batch_sizes = [int(b) for b in args.decode_batch_sizes.split(",") if int(b) in args.batch_sizes]
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = aeflib.models.resolve_dtype(args.dtype)
    info = machine()
    print(f"machine: {info}", flush=True)
    t_all = time.perf_counter()

    # 1. the real model: a plan per target (its per-structure ratio is then reused for the wide model)
    dense, tokenizer, adapter = aeflib.models.load(args.model, dtype=dtype, device=args.device)
    if args.ratios:
        plans = [
            ({"target_params": None, "pruning_ratio": r}, l2_plan(dense, adapter, ratio=r))
            for r in map(float, args.ratios.split(","))
        ]
    else:
        plans = []
        for target in map(float, args.targets.split(",")):
            pruning_plan = l2_plan(dense, adapter, target=target)
            plans.append(({"target_params": target, "pruning_ratio": pruning_plan.pruning_ratio}, pruning_plan))
    records = [bench_model(args.model, dense, tokenizer, adapter, plans, args)]
    del dense

    # 2. LLaMA-7B widths, few layers, all pruned at the same per-structure ratios
    if args.layers > 0:
        name = f"llama7b-width-L{args.layers}" if wide is LLAMA7B else f"llama-wide-smoke-L{args.layers}"
        model, wide_adapter = llama_wide(args.layers, wide, dtype)
        model.to(args.device)
        wide_plans = [
            (label, l2_plan(model, wide_adapter, ratio=label["pruning_ratio"], layers=range(args.layers)))
            for label, _ in plans
        ]
        records.append(bench_model(name, model, None, wide_adapter, wide_plans, args))
        records[-1]["widths"] = {**wide, "layers": args.layers}
        del model

    print_table(records, args)
    seconds = time.perf_counter() - t_all
    print(f"total {seconds:.0f} s; load average now {os.getloadavg()[0]:.1f} (at start {info['load_average'][0]})")
    write_json(
        {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "machine": info,
            "machine_at_end": {"load_average": [round(x, 2) for x in os.getloadavg()]},
            "settings": {k: v for k, v in vars(args).items()},
            "models": records,
            "seconds": seconds,
        },
        args.out,
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
