"""What the default fusion chose, per setting and calibration seed: the α_fine per kind and the share of agreement.

``aef-agree`` (``aeflib.fusion.AefAgree``) keeps the groups that the element-wise (element2) and the vector-wise
estimate both keep, removes those both remove, and orders the disputed ones by a blend ``α_fine · fine + (1 − α_fine)
· coarse`` whose α_fine per kind (heads, channels) is picked from a grid by the loss of the jointly pruned model on
*held-out calibration* windows. This script repeats exactly the fusion of ``benchmarks/quality.py`` (same
calibration: 10 × 64-token windows of the Wikipedia train split per seed; same settings) and prints, per seed and
setting, the chosen α_fine per kind (1 = element-wise alone, 0 = vector-wise alone), the mean share of groups both
estimates treat alike, and the held-out loss of the element-wise estimate alone beside the chosen blend's — the
account of *why* the fused model differs from its inputs where it does. No evaluation text is read.

    python benchmarks/fusion_choices.py                     # SmolLM2-135M, seeds 42-44, 20 % / ratio 0.64 / 50 %
    python benchmarks/fusion_choices.py --smoke             # seconds, tiny model (CI)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import machine, write_json  # benchmarks/ is on sys.path: scripts run as files
from quality import parse_settings, setting_key  # the sweep's own setting syntax and labels

from aeflib import data, fusion, importance, pruning
from aeflib.models import load


def choices(model: str, seeds: list[int], settings: list[tuple[str, float]], n_cal: int, len_cal: int) -> list[dict]:
    """One dict per (seed, setting): ratio, α_fine per kind, mean agreed share per kind, held-out losses."""
    dense, tokenizer, adapter = load(model)
    rows = []
    for seed in seeds:
        calib = data.calibration(tokenizer, n=n_cal, seq_len=len_cal, seed=seed)
        scores = importance.estimate(dense, adapter, calib, criteria=["vector", "element2"], seed=seed)
        for setting in settings:
            ratio = pruning.solve_ratio(dense, adapter, setting[1]) if setting[0] == "target" else setting[1]
            t = time.perf_counter()
            fused = fusion.fuse(scores, "aef-agree", model=dense, adapter=adapter, calibration=calib,
                                pruning_ratio=ratio)
            details = fused.details
            alpha = details["alpha_fine"]
            agreed: dict[str, list[float]] = {}
            for key, share in details["agreed_share"].items():  # keys are "<layer>.<kind>"
                agreed.setdefault(key.split(".", 1)[1], []).append(share)
            tried = details["holdout_loss"]  # "channel=1,head=0.5" -> loss; the search starts at fine alone (all 1)
            label = ",".join(f"{k}={alpha[k]:g}" for k in sorted(alpha))
            fine_alone = ",".join(f"{k}=1" for k in sorted(alpha))
            rows.append({"seed": seed, "setting": setting_key(setting), "pruning_ratio": ratio, "alpha_fine": alpha,
                         "agreed_share": {k: statistics.mean(v) for k, v in agreed.items()},
                         "holdout_loss": {"fine alone": tried[fine_alone], "chosen": tried[label]},
                         "fusion_seconds": time.perf_counter() - t})
            print(_line(rows[-1]), flush=True)
    return rows


def _line(r: dict) -> str:
    alpha = ", ".join(f"{k} {a:g}" for k, a in sorted(r["alpha_fine"].items()))
    agreed = ", ".join(f"{k} {100 * s:.0f} %" for k, s in sorted(r["agreed_share"].items()))
    loss = ", ".join(f"{k} {v:.3f}" for k, v in r["holdout_loss"].items())
    return f"seed {r['seed']}  {r['setting']:>10}  α_fine: {alpha}  |  agreed: {agreed}  |  held-out loss: {loss}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--seeds", default="42,43,44")
    ap.add_argument("--settings", default="0.2,r0.64,0.5", help="as in quality.py (default: %(default)s)")
    ap.add_argument("--out", default="benchmarks/results/fusion_choices_smollm2.json")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    ap.add_argument("--smoke", action="store_true", help="tiny model, 1 seed: checks it runs")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n_cal, len_cal = 10, 64
    if args.smoke:
        args.model, args.seeds, args.settings, n_cal, len_cal = "tiny-llama", "42", "r0.5", 4, 16
        args.out = str(Path(tempfile.mkdtemp()) / "fusion_choices.json")
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        raise SystemExit(f"--seeds: {args.seeds!r} is not a comma-separated list of integers") from None
    t0 = time.perf_counter()
    rows = choices(args.model, seeds, parse_settings(args.settings), n_cal, len_cal)
    write_json({"model": args.model, "calibration": {"windows": n_cal, "tokens": len_cal}, "rows": rows,
                "seconds": time.perf_counter() - t0, "command": " ".join(sys.argv), "machine": machine()}, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
