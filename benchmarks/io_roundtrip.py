"""Save / load / export round trip of a pruned SmolLM2-135M: folder size, save and load times, logits equality.

    .venv/bin/python benchmarks/io_roundtrip.py [--target 0.2] [--keep DIR]   # -> benchmarks/results/io_roundtrip.json
    .venv/bin/python benchmarks/io_roundtrip.py --smoke                        # seconds: tiny-llama, ratio 0.5 (CI)

1. Non-uniform (LLM-Pruner's layer range 4..27): l2 importance, ``target_params`` parameter reduction,
   ``aeflib.io.save``; reload in this process and in a fresh process (``aeflib.models.load(folder)``).
2. Uniform (all 30 layers pruned alike): ``aeflib.io.export_hf``; reload in a fresh process with stock
   ``transformers.AutoModelForCausalLM.from_pretrained`` and no aeflib import; logits max-abs difference.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402
from _common import machine, write_json  # noqa: E402  (benchmarks/ is on sys.path: scripts run as files)
from safetensors.torch import load_file  # noqa: E402

import aeflib.data  # noqa: E402
import aeflib.io  # noqa: E402
import aeflib.models  # noqa: E402
from aeflib.importance import estimate  # noqa: E402
from aeflib.pruning import apply, count_parameters, plan  # noqa: E402

FRESH = """
import sys, time, torch
from safetensors.torch import load_file, save_file
ids = load_file({ids!r})["ids"]
if {stock}:
    from transformers import AutoModelForCausalLM
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained({folder!r}).eval()
    seconds = time.perf_counter() - t0
    assert not [m for m in sys.modules if m.startswith("aeflib")], "stock reload imported aeflib"
else:
    import aeflib.models
    t0 = time.perf_counter()
    model = aeflib.models.load({folder!r}).model
    seconds = time.perf_counter() - t0
with torch.no_grad():
    save_file({{"logits": model(ids).logits, "seconds": torch.tensor(seconds)}}, {out!r})
"""


def _fresh(folder: Path, ids_file: Path, stock: bool) -> tuple[torch.Tensor, float, float]:
    """Logits, load seconds (inside the new process) and wall seconds of a fresh-process reload."""
    out = folder.parent / f"{folder.name}-fresh.safetensors"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", FRESH.format(ids=str(ids_file), stock=stock, folder=str(folder),
                                                       out=str(out))], check=True)
    wall = time.perf_counter() - t0
    got = load_file(out)
    return got["logits"], float(got["seconds"]), wall


def _size(folder: Path) -> tuple[int, int]:
    files = [p for p in folder.iterdir() if p.is_file()]
    return sum(p.stat().st_size for p in files), (folder / aeflib.io.WEIGHTS).stat().st_size


def _prune(args: argparse.Namespace, all_layers: bool) -> tuple:
    model, tokenizer, adapter = aeflib.models.load(args.model)
    layers = range(len(adapter.decoder_layers(model))) if all_layers else None
    base = aeflib.models.checksum(model)
    calib = aeflib.data.calibration(tokenizer)                                   # [10, 64]
    scores = estimate(model, adapter, calib, criteria=["l2"], layers=layers)
    target = args.target if args.ratio is None else None
    pruning_plan = plan(model, adapter, scores["l2"], target_params=target, pruning_ratio=args.ratio, layers=layers,
                    criterion="l2")
    apply(model, adapter, pruning_plan)
    return model, tokenizer, adapter, pruning_plan, base, calib


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=float, default=0.2, help="share of all parameters to remove")
    parser.add_argument("--keep", type=Path, default=None, help="write the folders here instead of a temp dir")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--ratio", type=float, default=None, help="per-structure pruning ratio instead of --target")
    parser.add_argument("--out", default="benchmarks/results/io_roundtrip.json", help="the report as JSON")
    parser.add_argument("--smoke", action="store_true", help="tiny-llama at ratio 0.5, temp output (seconds)")
    args = parser.parse_args()
    if args.smoke:  # tiny-llama cannot reach a parameter target (almost all its parameters are embeddings): a ratio
        args.model, args.ratio, args.keep = "tiny-llama", 0.5, None  # 0.5: a head count export_hf allows
    work = args.keep or Path(tempfile.mkdtemp(prefix="aeflib-io-"))
    work.mkdir(parents=True, exist_ok=True)
    report: dict = {}

    # 1. non-uniform: aeflib format
    model, tokenizer, adapter, pruning_plan, base, calib = _prune(args, all_layers=False)
    start, stop = adapter.default_layer_range(model)
    n_layers = len(adapter.decoder_layers(model))
    ids = calib[:2]                                                               # [2, 64]
    ids_file = work / "ids.safetensors"
    from safetensors.torch import save_file

    save_file({"ids": ids.contiguous()}, str(ids_file))
    with torch.no_grad():
        ref = model(ids).logits                                                   # [2, 64, vocab]
    folder = work / f"{args.model}-pruned"
    t0, c0 = time.perf_counter(), time.process_time()
    aeflib.io.save(model, tokenizer, folder, adapter=adapter, plan=pruning_plan, overwrite=True,
                   provenance={"base_model": args.model, "base_checksum": base, "method": "l2", "seed": 42})
    save_s, save_cpu = time.perf_counter() - t0, time.process_time() - c0
    t0, c0 = time.perf_counter(), time.process_time()
    back = aeflib.models.load(folder)
    load_s, load_cpu = time.perf_counter() - t0, time.process_time() - c0
    with torch.no_grad():
        same_process = torch.equal(ref, back.model(ids).logits)
    fresh, fresh_load_s, fresh_wall = _fresh(folder, ids_file, stock=False)
    total, weights = _size(folder)
    widths = {(w.n_heads, w.n_kv_heads, w.n_channels) for w in adapter.all_widths(model)}
    report[f"aeflib.save (layers {start}..{stop - 1})"] = {
        "params": count_parameters(model), "param_reduction": round(pruning_plan.param_reduction, 4),
        "pruning_ratio_used": round(pruning_plan.pruning_ratio, 4), "distinct layer widths": sorted(widths),
        "folder MB": round(total / 2**20, 1), "weights MB": round(weights / 2**20, 1),
        "save s": round(save_s, 2), "save cpu s": round(save_cpu, 2),
        "load s (same process, incl. tokenizer)": round(load_s, 2), "load cpu s": round(load_cpu, 2),
        "load s (fresh process, after imports)": round(fresh_load_s, 2), "fresh process wall s": round(fresh_wall, 1),
        "logits equal (same process)": same_process, "logits equal (fresh process)": torch.equal(ref, fresh),
    }
    del model, back

    # 2. uniform: stock transformers export
    model, tokenizer, adapter, pruning_plan, base, _ = _prune(args, all_layers=True)
    with torch.no_grad():
        ref = model(ids).logits
    folder = work / f"{args.model}-pruned-hf"
    t0 = time.perf_counter()
    aeflib.io.export_hf(model, tokenizer, folder, adapter, overwrite=True)
    export_s = time.perf_counter() - t0
    stock, stock_load_s, stock_wall = _fresh(folder, ids_file, stock=True)
    w = adapter.widths(model, 0)
    total, weights = _size(folder)
    report[f"export_hf (all {n_layers} layers)"] = {
        "params": count_parameters(model), "param_reduction": round(pruning_plan.param_reduction, 4),
        "widths (heads / kv heads / channels)": [w.n_heads, w.n_kv_heads, w.n_channels],
        "folder MB": round(total / 2**20, 1), "export s": round(export_s, 2),
        "stock load s (fresh process, after imports)": round(stock_load_s, 2),
        "fresh process wall s": round(stock_wall, 1), "stock reload": "ok",
        "logits equal": torch.equal(ref, stock), "logits max abs diff": float((ref - stock).abs().max()),
    }
    report["machine"] = {"cpus": os.cpu_count(), "load average": [round(x, 1) for x in os.getloadavg()],
                         "torch threads": torch.get_num_threads()}
    print(json.dumps(report, indent=1, default=str))
    print(f"folders in {work}")
    out = work / "io_roundtrip.json" if args.smoke else args.out
    write_json({"model": args.model, "target": args.target, "ratio": args.ratio, "report": report,
                "machine": machine()}, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
