"""The whole pipeline at the paper's 7B shapes, random weights, on one 24 GiB machine: peak memory and time per stage.

For each layout — LLaMA-7B (also Vicuna-7B's shape), Baichuan-7B (fused ``W_pack``) and Bloom-7b1 (fused
interleaved ``query_key_value``, ALiBi, vocabulary 250,880) — the model is built *directly in bf16* (parameters
created on the meta device, then materialised one tensor at a time with a cheap random init: never an fp32 copy).
On the CPU its weights are written once to a file in the temp folder and memory-mapped (``random_model_mmap``), so
that on a machine shared with other jobs the kernel can page them out instead of killing the run; the memory the run
needs is then reported as weights + peak anonymous memory (sampled from ``/proc/self/status``), an upper bound.
Then, in one process:

1. ``estimate`` — ``importance.estimate(criteria=["vector", "element2"])`` on the adapter's pruned layers (4..n-2),
   N × L random token windows (default 10 × 64, the paper's calibration size), default ``fisher_memory_gib``;
2. ``plan`` — ``pruning.plan`` on element2 at 20 % of all parameters (``target_params=0.2``);
3. ``fusion forward`` — one calibration-loss forward pass (no grad) of the dense model on the N windows: the unit
   of the fusion's cost. How many such passes a variant needs is :func:`fusion_passes`: the default ``aef``
   (``aef-agree``) and ``aef-blend`` judge a coordinate search over α_fine per kind on held-out windows (5 grid
   values × 2 kinds, the starting point shared: 9 passes over the held-out windows, whatever the model's depth);
   ``aef-layer`` measures the loss once unpruned and then with each pruned group set (one layer's heads, or its
   channels) pruned alone by the fine and by the coarse estimate: at most 1 + 2 × (group sets) passes;
4. ``apply`` — physical pruning; 5. ``save`` — ``aeflib.io.save`` to a temporary folder.

Then a fresh process reloads the folder (``aeflib.io.load``) and checks its logits on 2 windows against those of the
pruned model before saving. Peak RSS (``ru_maxrss``) is read after every stage (it is a running maximum); the
folder (~10 GiB) is deleted at the end. Random weights make the scores meaningless; the point is that every
code path runs at the real widths within the memory.

    python benchmarks/full7b.py                              # all three layouts, ~1 h on 2 cores
    python benchmarks/full7b.py --models llama-7b --n 10
    python benchmarks/full7b.py --smoke                      # tiny shapes, seconds (CI)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import machine, write_json  # benchmarks/ is on sys.path: scripts run as files

GIB = 2**30


def shape_config(name: str):
    """``(model class, config)`` of a paper model's shape (``llama-7b``, ``baichuan-7b``, ``bloom-7b1``) or a
    ``smoke-*`` miniature of it; sizes from the hub ``config.json`` files named in ``aeflib.models.MODELS``."""
    from transformers import BloomConfig, BloomForCausalLM, LlamaConfig, LlamaForCausalLM

    from aeflib.models.baichuan import BaichuanConfig, BaichuanForCausalLM

    smoke = name.startswith("smoke-")
    base = name.removeprefix("smoke-")
    hidden, inter, layers, heads = (64, 128, 8, 4) if smoke else (4096, 11008, 32, 32)
    if base == "llama-7b":
        return LlamaForCausalLM, LlamaConfig(
            vocab_size=512 if smoke else 32000, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
            num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=2048, rms_norm_eps=1e-6,
            tie_word_embeddings=False)
    if base == "baichuan-7b":
        return BaichuanForCausalLM, BaichuanConfig(
            vocab_size=512 if smoke else 64000, hidden_size=hidden, intermediate_size=inter,
            num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
            max_position_embeddings=4096, rms_norm_eps=1e-6, tie_word_embeddings=False, rope_theta=10000.0)
    if base == "bloom-7b1":
        return BloomForCausalLM, BloomConfig(vocab_size=512 if smoke else 250880, hidden_size=hidden,
                                             n_layer=30 if not smoke else layers, n_head=heads)
    raise ValueError(f"unknown shape {name!r}; choose from llama-7b, baichuan-7b, bloom-7b1 (or smoke-<name>)")


def random_model(name: str, dtype: str = "bfloat16", device: str = "cpu", seed: int = 0):
    """Build shape ``name`` with random weights directly in ``dtype`` on ``device``: ``(model, adapter)``.

    Parameters are created on the meta device (``accelerate.init_empty_weights``; buffers such as RoPE's
    ``inv_freq`` stay real), then each is materialised in ``dtype``: norm weights 1, biases 0, every other tensor
    N(0, 0.02²). Tied parameters (Bloom's LM head) stay tied. Peak memory ≈ the weights.
    """
    import torch
    from accelerate import init_empty_weights

    import aeflib.models

    cls, config = shape_config(name)
    with init_empty_weights(include_buffers=False):
        model = cls(config)
    model.tie_weights()                     # tied parameters become one meta tensor, materialised once
    torch_dtype = aeflib.models.resolve_dtype(dtype)
    gen = torch.Generator(device).manual_seed(seed)
    made: dict[int, torch.nn.Parameter] = {}
    for module_name, module in model.named_modules():
        for pname, p in list(module._parameters.items()):
            if p is None or not p.is_meta:
                continue
            if id(p) not in made:
                t = torch.empty(p.shape, dtype=torch_dtype, device=device)
                is_norm = "norm" in module_name or "ln" in module_name.split(".")[-1]
                if pname == "bias":
                    t.zero_()
                elif is_norm:
                    t.fill_(1.0)
                else:
                    t.normal_(0.0, 0.02, generator=gen)
                made[id(p)] = torch.nn.Parameter(t, requires_grad=p.requires_grad)
            module._parameters[pname] = made[id(p)]
    model.tie_weights()
    model.config.name_or_path = f"random-{name}"
    model.eval()
    return model, aeflib.models.adapter_for(model)


def random_model_mmap(name: str, dtype: str = "bfloat16", seed: int = 0):
    """:func:`random_model` on the CPU, its weights memory-mapped from a file cached in the temp folder.

    The first call builds the model and writes its ``state_dict`` there (temp file, then rename); every call then
    loads it with ``torch.load(mmap=True)`` and ``load_state_dict(assign=True)``. The weights are clean file-backed
    pages: on a machine shared with other jobs the kernel can drop them under pressure (and read them again)
    instead of killing the process. Memory needed to run without that = weight bytes + peak anonymous memory,
    which :class:`MemorySampler` measures.
    """
    import torch
    from accelerate import init_empty_weights

    import aeflib.models
    from aeflib.files import atomic_file

    path = Path(tempfile.gettempdir()) / "aeflib-random-weights" / f"{name}-{dtype}-seed{seed}.pt"
    if not path.is_file():
        model, _ = random_model(name, dtype, "cpu", seed)
        with atomic_file(path) as tmp:
            torch.save(model.state_dict(), tmp)
        del model
    cls, config = shape_config(name)
    with init_empty_weights(include_buffers=False):
        model = cls(config)
    model.load_state_dict(torch.load(path, mmap=True, weights_only=True), assign=True, strict=True)
    model.tie_weights()
    model.config.name_or_path = f"random-{name}"
    model.eval()
    return model, aeflib.models.adapter_for(model)


class MemorySampler:
    """Samples ``/proc/self/status`` every ``interval`` s in a thread: peak RSS, peak anonymous and file RSS (GiB).

    ``ru_maxrss`` counts file-backed pages (memory-mapped weights) as well; the anonymous peak is what the process
    allocated itself (activations, gradients, accumulators, pruned copies).
    """

    def __init__(self, interval: float = 0.2):
        import threading

        self.interval, self.peak = interval, {"VmRSS": 0, "RssAnon": 0, "RssFile": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        try:
            lines = Path("/proc/self/status").read_text().splitlines()
        except OSError:
            return
        for line in lines:
            key, _, value = line.partition(":")
            if key in self.peak:
                self.peak[key] = max(self.peak[key], int(value.split()[0]) * 1024)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> MemorySampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def gib(self) -> dict[str, float]:
        """``{"rss": …, "anon": …, "file": …}`` peaks in GiB (each its own maximum; /proc not readable: zeros)."""
        return {"rss": round(self.peak["VmRSS"] / GIB, 3), "anon": round(self.peak["RssAnon"] / GIB, 3),
                "file": round(self.peak["RssFile"] / GIB, 3)}


def _peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB


def _stage(stages: list, name: str, fn, sampler: MemorySampler | None = None):
    t, cpu = time.perf_counter(), time.process_time()
    out = fn()
    stages.append({"stage": name, "seconds": round(time.perf_counter() - t, 2),
                   "cpu_seconds": round(time.process_time() - cpu, 2), "peak_rss_gib_so_far": round(_peak_gib(), 3)})
    s = stages[-1]
    anon = ""
    if sampler is not None:
        sampler.sample()
        s["peak_anon_gib_so_far"] = sampler.gib()["anon"]
        anon = f", own (anonymous) {s['peak_anon_gib_so_far']:6.2f} GiB"
    print(f"  {name:<15} {s['seconds']:8.1f} s  ({s['cpu_seconds']:8.1f} s CPU)  peak RSS so far "
          f"{s['peak_rss_gib_so_far']:6.2f} GiB{anon}", file=sys.stderr, flush=True)   # stdout carries the JSON
    return out


def _pipeline_child(spec: dict) -> dict:
    """Build → estimate → plan → one fusion forward → apply → save, in this process."""
    import logging

    import torch

    from aeflib import importance, io, pruning

    logging.basicConfig(stream=sys.stderr, format="    %(asctime)s %(message)s")
    logging.getLogger("aeflib.importance").setLevel(logging.INFO)    # "scored layers [...]": progress per slice
    torch.set_num_threads(spec["threads"])
    stages: list[dict] = []
    sampler = MemorySampler().__enter__()
    if spec["device"] == "cpu":
        model, adapter = _stage(stages, "build (mmap)", lambda: random_model_mmap(spec["model"], spec["dtype"]),
                                sampler)
    else:
        model, adapter = _stage(stages, "build", lambda: random_model(spec["model"], spec["dtype"], spec["device"]))
    n_params = sum(p.numel() for p in model.parameters())
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    vocab = model.config.vocab_size
    calib = torch.randint(0, vocab, (spec["n"], spec["seq_len"]), generator=torch.Generator().manual_seed(42))
    calib = calib.to(spec["device"])
    scores = _stage(stages, "estimate", lambda: importance.estimate(
        model, adapter, calib, criteria=["vector", "element2"], fisher_memory_gib=spec["fisher_memory_gib"]), sampler)
    pruning_plan = _stage(stages, "plan", lambda: pruning.plan(model, adapter, scores["element2"],
                                                           target_params=spec["target"],
                                                           criterion="element2"), sampler)

    def one_forward():
        with torch.no_grad():
            return float(model(input_ids=calib, labels=calib, use_cache=False).loss)

    loss = _stage(stages, "fusion forward", one_forward, sampler)
    n_sets = len(adapter.all_group_sets(model))
    _stage(stages, "apply", lambda: pruning.apply(model, adapter, pruning_plan), sampler)
    probe = calib[:2, :16]
    with torch.no_grad():
        logits = model(input_ids=probe, use_cache=False).logits.float()
    _stage(stages, "save", lambda: io.save(model, None, spec["folder"], adapter=adapter, plan=pruning_plan), sampler)
    sampler.__exit__()
    torch.save({"probe": probe.cpu(), "logits": logits.cpu()}, Path(spec["folder"]).parent / "probe.pt")
    return {"stages": stages, "params": n_params, "params_after": sum(p.numel() for p in model.parameters()),
            "weight_gib": round(weight_bytes / GIB, 3), "calibration_loss": loss,
            "pruning_ratio": pruning_plan.pruning_ratio, "group_sets": n_sets,
            "fisher_layer_slices": scores.meta["fisher_layer_slices"], "peak_rss_gib": round(_peak_gib(), 3),
            "sampled_peak_gib": sampler.gib(),
            "needed_gib_at_most": round(weight_bytes / GIB + sampler.gib()["anon"], 3)}


def _reload_child(spec: dict) -> dict:
    """Fresh process: reload the saved folder and compare logits on the probe windows."""
    import torch

    from aeflib import io

    torch.set_num_threads(spec["threads"])
    stages: list[dict] = []
    sampler = MemorySampler().__enter__()
    loaded = _stage(stages, "reload", lambda: io.load(spec["folder"], device=spec["device"]), sampler)
    ref = torch.load(Path(spec["folder"]).parent / "probe.pt")
    with torch.no_grad():
        logits = loaded.model(input_ids=ref["probe"].to(spec["device"]), use_cache=False).logits.float().cpu()
    sampler.__exit__()
    return {"stages": stages, "logits_equal": bool(torch.equal(logits, ref["logits"])),
            "sampled_peak_gib": sampler.gib(),
            "logits_max_abs_diff": float((logits - ref["logits"]).abs().max()),
            "params": sum(p.numel() for p in loaded.model.parameters()), "peak_rss_gib": round(_peak_gib(), 3)}


def _run(kind: str, spec: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, f"--{kind}", json.dumps(spec)], text=True,
                          stdout=subprocess.PIPE, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if proc.returncode:
        raise RuntimeError(f"{kind} of {spec['model']} failed (exit {proc.returncode}); see stderr above")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--prepare", help=argparse.SUPPRESS)
    ap.add_argument("--reload", help=argparse.SUPPRESS)
    ap.add_argument("--models", default="llama-7b,baichuan-7b,bloom-7b1")
    ap.add_argument("--n", type=int, default=10, help="calibration windows")
    ap.add_argument("--fisher-memory-gib", type=float, default=None,
                    help="importance.estimate's budget (default: its DEFAULT_FISHER_MEMORY_GIB; smoke: 1e-6, one "
                         "layer per slice)")
    ap.add_argument("--target", type=float, default=0.2, help="share of all parameters to remove (smoke: 0.05)")
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--out", default="benchmarks/results/full7b.json")
    ap.add_argument("--drop-weights", action="store_true", help="delete each random weights file after its model")
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    if args.prepare:                           # write the memory-mapped random weights file, nothing else
        random_model_mmap(args.prepare, args.dtype)
        return
    if args.child or args.reload:
        fn = _pipeline_child if args.child else _reload_child
        print(json.dumps(fn(json.loads(args.child or args.reload))))
        return

    from aeflib.fusion import DEFAULT_METHOD

    names = [m.strip() for m in args.models.split(",") if m.strip()]
    for m in names:
        shape_config(m)                                      # fail fast on a bad name
    if args.smoke:
        names = [f"smoke-{m}" for m in names]
        args.target, args.n, args.seq_len = min(args.target, 0.05), min(args.n, 4), min(args.seq_len, 16)
        args.fisher_memory_gib = args.fisher_memory_gib or 1e-6
    if args.fisher_memory_gib is None:
        from aeflib.importance import DEFAULT_FISHER_MEMORY_GIB

        args.fisher_memory_gib = DEFAULT_FISHER_MEMORY_GIB
    results = {"machine": machine(), "settings": {**vars(args), "criteria": ["vector", "element2"]},
               "models": []}
    out = Path(tempfile.gettempdir()) / "full7b.json" if args.smoke else Path(args.out)
    for name in names:
        work = Path(tempfile.mkdtemp(prefix="aef-full7b-"))
        spec = {"model": name, "n": args.n, "seq_len": args.seq_len, "threads": args.threads,
                "device": args.device, "dtype": args.dtype, "folder": str(work / "pruned"), "target": args.target,
                "fisher_memory_gib": args.fisher_memory_gib}
        print(f"{name} ({args.dtype}, {args.n} x {args.seq_len} tokens, {args.threads} threads):", flush=True)
        try:
            if args.device == "cpu" and not args.smoke:   # the random weights file, written in its own process
                subprocess.run([sys.executable, __file__, "--prepare", name, "--dtype", args.dtype], check=True)
            row = {"model": name, **_run("child", spec)}
            print(f"  {'(fresh process)':<15}", flush=True)
            row["reload"] = _run("reload", spec)
            row["saved_gib"] = round(sum(f.stat().st_size for f in (work / "pruned").rglob("*") if f.is_file())
                                     / GIB, 3)
        finally:
            shutil.rmtree(work, ignore_errors=True)
            if args.drop_weights:
                for f in (Path(tempfile.gettempdir()) / "aeflib-random-weights").glob(f"{name}-*.pt"):
                    f.unlink()
        fwd = next(s for s in row["stages"] if s["stage"] == "fusion forward")
        row["fusion_forward_passes_at_most"] = {m: fusion_passes(m, row["group_sets"])
                                                for m in (DEFAULT_METHOD, "aef-layer")}
        row["fusion_projected_seconds_at_most"] = {m: round(n * fwd["seconds"], 1)
                                                   for m, n in row["fusion_forward_passes_at_most"].items()}
        print(f"  params {row['params'] / 1e6:.1f} M -> {row['params_after'] / 1e6:.1f} M "
              f"(pruning ratio {row['pruning_ratio']:.3f}); weights {row['weight_gib']:.2f} GiB; "
              f"peak RSS {row['peak_rss_gib']:.2f} GiB; needed at most {row['needed_gib_at_most']:.2f} GiB (weights "
              f"+ peak own memory {row['sampled_peak_gib']['anon']:.2f} GiB); reload process peak RSS "
              f"{row['reload']['peak_rss_gib']:.2f} GiB; "
              f"reloaded logits equal: {row['reload']['logits_equal']}; Fisher layer slices "
              f"{row['fisher_layer_slices']}", flush=True)
        passes, secs = row["fusion_forward_passes_at_most"], row["fusion_projected_seconds_at_most"]
        print(f"  fusion: one calibration-loss forward {fwd['seconds']:.1f} s; at most "
              + "; ".join(f"{m} {passes[m]} passes (<= {secs[m]:.0f} s)" for m in passes)
              + f" ({row['group_sets']} group sets; aef = {DEFAULT_METHOD})", flush=True)
        results["models"].append(row)
        write_json(results, out)                     # after each model: a stopped run keeps what it measured
    print(f"wrote {out}")


def fusion_passes(method: str, group_sets: int) -> int | None:
    """Most loss forward passes a fusion variant needs at the model's width (``None``: not counted here).

    ``aef-agree`` / ``aef-blend``: ``aeflib.fusion._per_kind_search`` tries every value of ``BLEND_GRID`` for each
    kind in turn, the starting point of each later kind already judged: kinds × grid − (kinds − 1) passes over the
    held-out windows. ``aef-layer``: the unpruned loss, then each group set pruned by each estimate alone.
    """
    from aeflib.fusion import BLEND_GRID

    kinds = 2  # heads and channels
    if method in ("aef-agree", "aef-blend"):
        return kinds * len(BLEND_GRID) - (kinds - 1)
    if method == "aef-layer":
        return 1 + 2 * group_sets
    return None


if __name__ == "__main__":
    main()
