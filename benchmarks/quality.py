"""Pruning quality of every criterion and AEF variant on the embedded SmolLM2-135M, without recovery.

For each calibration seed: estimate all criteria once (10 × 64-token windows of the shipped Wikipedia *train*
split), fuse with every AEF variant, prune a copy of the dense model with each method at each setting (a parameter
target such as ``0.2`` = 20 % of all parameters removed, or a per-structure pruning ratio such as ``r0.64``), and
measure

* ``calib_loss`` — mean next-token loss on *held-out calibration* windows (train split, another seed): the only
  number used to choose the default fusion variant (no evaluation data seen);
* perplexity (``llm-pruner-128`` protocol) on the first ``--max-windows`` windows of the shipped Wikipedia test split
  and on the whole Lee-news test split (54 windows), with every window's mean token NLL kept;
* zero-shot (lm-eval, 0-shot): the ``local`` task set on every item (``--local-limit`` to cut it) and, with
  ``--paper7-limit N``, the ``paper7-offline`` set on a seeded subset of N items per task (the same items for every
  model) — the average and each task's metric.

Per-item results (each zero-shot item's 0/1 under its task's metric and its log-likelihoods; each perplexity
window's NLL) go to ``<out>.items.json`` beside the rows, so ``--summarize`` computes *paired* intervals (items
paired by id across methods, bootstrap over items and seeds; ``aeflib.evaluation.paired``) without re-running a
model. Rows are written one by one, atomically; a rerun keeps every row that has all requested metrics (an AEF row
also needs the same fusion fingerprint: resolved variant and its settings), so an interrupted sweep resumes. The
work is ordered so that the baseline estimators come first (vector, element1, element2 at the first two settings),
then the default AEF variant, the ``oracle`` row, the other variants, random and l2, then the remaining settings.

``oracle`` is an upper bound, never a method: per (layer, kind) it keeps whichever of element2 and vector hurts the
loss on *evaluation* text less (``aeflib.fusion.oracle_choice`` on the first 32 windows of the Wikipedia test split),
so the distance between the element-wise estimate and the best per-layer choice of the two is visible.

    python benchmarks/quality.py --seeds 42,43,44 --settings 0.2,r0.64,0.5 --threads 1          # days on 2 busy cores
    python benchmarks/quality.py ... --paper7-limit 100     # a later pass adds paper7-offline to the finished rows
    python benchmarks/quality.py ... --methods aef-layer --out 'benchmarks/results/quality_paired_aef_s{seed}.json'
    python benchmarks/quality.py --summarize benchmarks/results/quality_{paired,stress,variants}_smollm2_s4?.json \
        [--markdown]            # docs/results.md's tables: 20 % / r0.64, the 50 % stress row, the AEF variants
    python benchmarks/quality.py --smoke                                                         # seconds (CI)

``aef`` (the default method) is an alias of :data:`aeflib.fusion.DEFAULT_METHOD`, so its row is that variant's row.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import inspect
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import write_json  # benchmarks/ is on sys.path: scripts run as files

import aeflib
from aeflib import data, fusion, importance, pruning
from aeflib.evaluation import perplexity
from aeflib.evaluation.zeroshot import CHANCE, TASK_SETS, zeroshot

BASELINES = list(importance.DEFAULT_CRITERIA)
ESTIMATORS = ["vector", "element1", "element2"]  # the baselines AEF fuses; "best baseline" is chosen among them
VARIANTS = [m for m in fusion.FUSIONS if m != "fixed"]
#: Upper bound, never a method: per (layer, kind) the better of element2 and vector chosen by the loss on *evaluation*
#: text (the first ORACLE_WINDOWS 128-token windows of the Wikipedia test split, a subset of the scored ones).
ORACLE, ORACLE_WINDOWS = fusion.ORACLE, 32
PAPER7 = "paper7-offline"
COMMIT = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                        cwd=Path(__file__).parent).stdout.strip() or None  # the code a row was measured with
CORPORA = {"ppl_wikipedia": "wikipedia", "ppl_lee_news": "lee-news"}


@torch.no_grad()
def calib_loss(model, windows: torch.Tensor) -> float:
    return model(input_ids=windows, labels=windows, use_cache=False).loss.item()


def fingerprint(method: str) -> dict | None:
    """What an AEF row was fused with: the resolved variant, the settings ``fusion.fuse`` uses by default, and a hash
    of the variant function's source.

    A row whose stored fingerprint differs (another default normalisation or temperature, an edited variant) is
    recomputed. None for the baselines.
    """
    if method not in fusion.FUSIONS:
        return None
    skip = {"scores", "method", "model", "adapter", "calibration", "pruning_ratio", "weights", "name", "params"}
    if method != "aef-learned":
        skip |= {"steps", "lr"}
    params = inspect.signature(fusion.fuse).parameters
    defaults = {k: p.default for k, p in params.items() if k not in skip and p.default is not inspect.Parameter.empty
                and isinstance(p.default, str | int | float | bool | None)}
    code = hashlib.sha256(inspect.getsource(type(fusion.FUSIONS[method])).encode()).hexdigest()[:12]
    return {"variant": method, **defaults, "code": code}


def setting_key(setting: tuple[str, float]) -> str:
    """``("target", 0.2)`` → ``"20 %"``; ``("ratio", 0.64)`` → ``"ratio 0.64"`` (the label rows are grouped by)."""
    kind, value = setting
    return f"{100 * value:.0f} %" if kind == "target" else f"ratio {value:.2f}"


def parse_settings(text: str) -> list[tuple[str, float]]:
    out = []
    for part in text.split(","):
        part = part.strip()
        try:
            out.append(("ratio", float(part[1:])) if part.startswith("r") else ("target", float(part)))
        except ValueError:
            raise SystemExit(f"--settings: {part!r} is neither a parameter target (0.2) nor a ratio (r0.64)") from None
    return out


def work_order(seeds: list[int], settings: list[tuple[str, float]]) -> list[tuple[int, tuple[str, float], str]]:
    """(seed, setting, method) in the order they are run: what separates the estimators first."""
    first, rest = settings[:2], settings[2:]
    others = [v for v in VARIANTS if v != fusion.DEFAULT_METHOD]
    phases = [(first, ESTIMATORS), (first, [fusion.DEFAULT_METHOD]), (first, [ORACLE]), (first, others),
              (first, [b for b in BASELINES if b not in ESTIMATORS]), (rest, BASELINES + VARIANTS)]
    return [(seed, st, m) for sts, methods in phases for seed in seeds for st in sts for m in methods]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--seeds", default="42,43,44")
    ap.add_argument("--settings", default="0.2,r0.64,0.5",
                    help="parameter targets (0.2) and per-structure ratios (r0.64), comma-separated "
                    "(default: %(default)s)")
    ap.add_argument("--max-windows", type=int, default=300, help="Wikipedia 128-token windows (first ones); Lee news "
                    "is scored whole (default: %(default)s)")
    ap.add_argument("--out", default="benchmarks/results/quality_paired_smollm2_s{seed}.json",
                    help="result file per seed ({seed} is replaced); items go to <stem>.items.json")
    ap.add_argument("--local-limit", type=int, default=0, help="items per local zero-shot task (0 = all)")
    ap.add_argument("--no-zeroshot", action="store_true", help="perplexity and calibration loss only")
    ap.add_argument("--paper7-limit", type=int, default=0, help=f"items per {PAPER7} task, a seeded subset "
                    "(0 = not measured; lm-eval is the slow part)")
    ap.add_argument("--methods", default=None, help="only these methods, comma-separated (default: all, in the work "
                    "order); e.g. a second process on the AEF rows with its own --out")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    ap.add_argument("--summarize", nargs="+", metavar="JSON", help="only print the tables of these result files")
    ap.add_argument("--markdown", action="store_true",
                    help="with --summarize: Markdown tables (docs/results.md, between its sweep-means and sweep-paper "
                         "markers)")
    ap.add_argument("--smoke", action="store_true", help="tiny model, 1 seed, 2 windows, 2 items: checks it runs")
    args = ap.parse_args()
    args.news_windows = None  # Lee news: every window
    if args.summarize:
        merged = merge([load_result(f) for f in args.summarize])
        if args.markdown:
            markdown(merged)
        else:
            summarize(merged)
            paired_summary(merged)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.smoke:
        args.model, args.seeds, args.settings, args.max_windows = "tiny-llama", "42", "r0.5", 2
        args.local_limit, args.paper7_limit, args.news_windows = 2, 0, 2
        # every estimator, the default fusion, one gate-measuring variant and the oracle: each code path of the sweep
        # (the other variants' fusion is tested in tests/test_fusion.py); lm-eval per method is the smoke's cost
        args.methods = args.methods or ",".join([*BASELINES, fusion.DEFAULT_METHOD, "aef-layer", ORACLE])
        args.out = str(Path(tempfile.mkdtemp()) / "quality_s{seed}.json")
    if args.paper7_limit and PAPER7 not in TASK_SETS:
        raise SystemExit(f"--paper7-limit: this aeflib has no {PAPER7!r} task set (task sets: {sorted(TASK_SETS)})")
    unknown = sorted(set(args.methods.split(",") if args.methods else []) - set(BASELINES + VARIANTS + [ORACLE]))
    if unknown:
        raise SystemExit(f"--methods: unknown {unknown}; choose from {BASELINES + VARIANTS + [ORACLE]}")
    run(args)


def run(args) -> None:
    from aeflib.models import load

    seeds = [int(s) for s in args.seeds.split(",")]
    settings = parse_settings(args.settings)
    dense, tokenizer, adapter = load(args.model)
    n_cal, len_cal = (4, 16) if args.smoke else (10, 64)
    holdout = data.calibration(tokenizer, n=8 if args.smoke else 32, seq_len=32 if args.smoke else 128, seed=1042)
    metrics = ["calib_loss", *CORPORA] + ([] if args.no_zeroshot else ["zeroshot_avg"])
    metrics += ["paper7_avg"] if args.paper7_limit else []
    protocol = {"model": args.model, "max_windows": args.max_windows, "local_limit": args.local_limit or None,
                "paper7_limit": args.paper7_limit or None}

    files = {}
    for seed in seeds:
        path = Path(args.out.format(seed=seed))
        previous = load_result(path) if path.is_file() else {}
        if previous and any(previous.get(k) != v for k, v in protocol.items() if k in previous and
                            k != "paper7_limit"):
            raise SystemExit(f"{path} holds another sweep ({ {k: previous.get(k) for k in protocol} }); pass another "
                             "--out")
        files[seed] = {"path": path, "items_path": items_path(path), "items": previous.pop("items", {}),
                       "result": {**previous, **protocol, "rows": previous.get("rows", []),
                                  "seconds_total": previous.get("seconds_total", 0.0),
                                  "invocations": previous.get("invocations", 0) + 1, "command": " ".join(sys.argv),
                                  "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                              "torch": torch.__version__, "aeflib": aeflib.__version__,
                                              "threads": torch.get_num_threads()}}}

    def measure(model, known: dict | None, items: dict) -> tuple[dict, dict]:
        out = dict(known or {})  # a pass that measures less keeps what earlier passes measured
        items = dict(items)
        if "calib_loss" not in out:
            out["calib_loss"] = calib_loss(model, holdout)
        for key, corpus in CORPORA.items():
            if key not in out or corpus not in items.get("nll", {}):
                p = perplexity(model, tokenizer, corpus, "test", progress=False, per_window=True,
                               max_windows=args.max_windows if corpus == "wikipedia" else args.news_windows)
                out[key], out[f"{key}_windows"] = p.value, p.n_windows
                items["nll"] = {**items.get("nll", {}), corpus: [round(x, 5) for x in p.window_nll]}
        for key, tasks, limit in (("zeroshot", "local", args.local_limit or None),
                                  ("paper7", PAPER7, args.paper7_limit or None)):
            if f"{key}_avg" not in metrics or (f"{key}_avg" in out and key in items):
                continue
            zs = zeroshot(model, tokenizer, tasks=tasks, limit=limit, bootstrap_iters=0, log_samples=True)
            out[f"{key}_avg"] = zs.average
            out[key] = {t: {"metric": s.metric, "value": s.value, "n": s.n_items,
                            "split": getattr(s, "split", None)} for t, s in zs.scores.items()}
            out[f"{key}_seconds"] = zs.wall_s
            items[key] = zs.item_table()
        return out, items

    def save(seed: int) -> None:
        f = files[seed]
        write_json(f["items"], f["items_path"])  # items first: a row on disk always has its items
        write_json(f["result"], f["path"])

    def current(seed: int, key: str, method: str) -> dict | None:
        for r in files[seed]["result"]["rows"]:
            if (_amount(r), r["method"]) == (key, method):
                return r
        return None

    def complete(seed: int, key: str, method: str) -> bool:
        r = current(seed, key, method)
        row_key = f"{key}|{method}"
        return (r is not None and all(k in r for k in metrics) and r.get("fusion") == fingerprint(method)
                and row_key in files[seed]["items"])

    t0 = time.perf_counter()
    dense_known = next((f["result"]["dense"] for f in files.values() if "dense" in f["result"]), None)
    dense_items = next((f["items"]["dense"] for f in files.values() if "dense" in f["items"]), {})
    dense_row, dense_items = measure(dense, dense_known, dense_items)
    for seed, f in files.items():
        f["result"]["dense"], f["items"]["dense"] = dense_row, dense_items
        save(seed)
    print(f"dense: {json.dumps(dense_row)}", flush=True)

    cache: dict = {}  # seed -> (calibration, scores, estimate seconds); (seed, setting, variant) -> fused scores

    def scores_for(seed: int):
        if seed not in cache:
            calib = data.calibration(tokenizer, n=n_cal, seq_len=len_cal, seed=seed)
            t = time.perf_counter()
            scores = importance.estimate(dense, adapter, calib, criteria=BASELINES, seed=seed)
            cache.clear()  # one seed's scores at a time (the work is seed-major within each phase)
            cache[seed] = (calib, scores, time.perf_counter() - t)
        return cache[seed]

    wanted = None if not args.methods else args.methods.split(",")
    order = [w for w in work_order(seeds, settings) if wanted is None or w[2] in wanted]
    for seed, setting, method in order:
        key = setting_key(setting)
        if complete(seed, key, method):
            continue
        calib, scores, est_s = scores_for(seed)
        if setting[0] == "target":
            ratio = pruning.solve_ratio(dense, adapter, setting[1])
        else:
            ratio = setting[1]
        started = time.perf_counter()
        fusion_s = None
        if method in fusion.FUSIONS:
            fused = fusion.fuse(scores, method, model=dense, adapter=adapter, calibration=calib, pruning_ratio=ratio)
            per_set, fusion_s = fused.fused, time.perf_counter() - started
        elif method == ORACLE:
            fused = fusion.oracle_choice(scores, evaluation_windows(tokenizer, 2 if args.smoke else ORACLE_WINDOWS),
                                         model=dense, adapter=adapter, pruning_ratio=ratio)
            per_set, fusion_s = fused.fused, time.perf_counter() - started
        else:
            per_set = scores[method]
        model = copy.deepcopy(dense)
        plan = pruning.plan(model, adapter, per_set, pruning_ratio=ratio, criterion=method)
        pruning.apply(model, adapter, plan)
        old = current(seed, key, method)
        fp = fingerprint(method)
        if old is not None and old.get("fusion") != fp:
            old = None  # fused with other settings: measure again
        row_key = f"{key}|{method}"
        measured, items = measure(model, old, files[seed]["items"].get(row_key, {}) if old else {})
        row = {"seed": seed, "target_params": setting[1] if setting[0] == "target" else None,
               "pruning_ratio": ratio, "method": method, "param_reduction": plan.param_reduction,
               **measured, "fusion": fp, "fusion_settings": fused.settings if fusion_s is not None else None,
               "estimate_seconds": est_s, "fusion_seconds": fusion_s, "commit": COMMIT,
               "row_seconds": time.perf_counter() - started}
        rows = files[seed]["result"]["rows"]
        if current(seed, key, method) is not None:
            rows.remove(current(seed, key, method))
        rows.append(row)
        files[seed]["items"][row_key] = items
        files[seed]["result"]["seconds_total"] += time.perf_counter() - started
        save(seed)
        print(json.dumps({k: v for k, v in row.items() if k not in ("zeroshot", "paper7", "fusion_settings")}),
              flush=True)
        del model
    left = [w for w in order if not complete(w[0], setting_key(w[1]), w[2])]
    for seed, f in files.items():
        f["result"]["seconds_last_invocation"] = time.perf_counter() - t0
        f["result"]["complete"] = not left
        save(seed)
    n_rows = sum(len(f["result"]["rows"]) for f in files.values())
    measured = sum(f["result"]["seconds_total"] for f in files.values())
    state = "sweep complete" if not left else f"sweep stopped with {len(left)} rows to go"
    print(f"{state}: {n_rows} rows; measuring the rows took {measured:.0f} s over all invocations; this invocation "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    merged = merge([{**f["result"], "items": f["items"]} for f in files.values()])
    summarize(merged)
    paired_summary(merged)


def evaluation_windows(tokenizer, n: int) -> torch.Tensor:
    """LongTensor [n, 128]: the first ``n`` windows of the Wikipedia *test* split as perplexity cuts them
    (llm-pruner-128: documents joined by a blank line, one BOS, non-overlapping windows). Only the oracle reads them."""
    text = data.load_corpus("wikipedia", "test").text(join="\n\n")
    ids = tokenizer(text, add_special_tokens=True, return_attention_mask=False, verbose=False)["input_ids"]
    return torch.as_tensor(ids[: n * 128], dtype=torch.long).reshape(n, 128)


def items_path(path: Path) -> Path:
    return path.with_name(path.name.removesuffix(".json") + ".items.json")


def load_result(path) -> dict:
    """A result file with its per-item file (``items``: {} when there is none, as in the 64-window sweeps)."""
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"{path}: no such result file (a sweep writes benchmarks/results/quality_*_s<seed>.json)")
    try:
        result = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SystemExit(f"{path}: not JSON ({e})") from None
    missing = [k for k in ("model", "max_windows", "dense", "rows") if k not in result]
    if missing:
        raise SystemExit(f"{path}: not a quality sweep result (missing {missing}); pass the files quality.py wrote, "
                         "not their .items.json")
    ipath = items_path(path)
    result["items"] = json.loads(ipath.read_text()) if ipath.is_file() else {}
    return result


def merge(files: list[dict]) -> dict:
    """One result dict from several sweeps of the same model and protocol (later files win on duplicate rows).

    ``items`` of the merged dict maps ``(seed, setting label, method)`` (and ``"dense"``) to that row's per-item
    results.
    """
    first = files[0]
    for f in files[1:]:
        if (f["model"], f["max_windows"]) != (first["model"], first["max_windows"]):
            raise SystemExit("cannot merge sweeps of different models or perplexity windows")
    rows, items = {}, {}
    for f in files:
        for r in f["rows"]:
            key = (r["seed"], _amount(r), r["method"])
            rows[key] = r
            if f"{key[1]}|{key[2]}" in f.get("items", {}):
                items[key] = f["items"][f"{key[1]}|{key[2]}"]
        if "dense" in f.get("items", {}):
            items["dense"] = f["items"]["dense"]
    dense = {}
    for f in files:
        dense.update(f["dense"])
    return {**first, "dense": dense, "rows": list(rows.values()), "items": items}


def _protocol_line(results: dict) -> str:
    dense, nll = results["dense"], results.get("items", {}).get("dense", {}).get("nll", {})
    wiki = dense.get("ppl_wikipedia_windows") or len(nll.get("wikipedia", [])) or results["max_windows"]
    news = dense.get("ppl_lee_news_windows") or len(nll.get("lee-news", []))
    line = (f"{results['model']}, no recovery; perplexity llm-pruner-128 on the first {wiki} windows of the Wikipedia "
            f"test split and {'all ' + str(news) if news else 'the first ' + str(results['max_windows'])} windows of "
            "the Lee news test split")
    if "zeroshot" in dense:
        tasks = ", ".join(f"{t} {v['metric']} n={v['n']}" for t, v in dense["zeroshot"].items())
        line += f"; zero-shot local average ({tasks})"
        line += "" if any("zeroshot_avg" in r for r in results["rows"]) else " — measured on dense only so far"
    if "paper7" in dense:
        n = sorted({v["n"] for v in dense["paper7"].values()})
        line += f"; {PAPER7} average ({len(dense['paper7'])} tasks, {'/'.join(map(str, n))} items each, seeded subset)"
        line += "" if any("paper7_avg" in r for r in results["rows"]) else " — measured on dense only so far"
    return line


def summarize(results: dict) -> None:
    dense = results["dense"]
    rows = results["rows"]
    zs, p7 = "zeroshot_avg" in dense, "paper7_avg" in dense
    print("\n" + _protocol_line(results) + "; mean [min..max] over the n calibration seeds; ratio = pruned / dense")
    head = (f"{'setting':>11} {'method':<12} {'n':>2} {'params -%':>9} {'calib loss':>20} {'PPL wiki':>22} "
            f"{'ratio':>6} {'PPL news':>22} {'ratio':>6}")
    print(head + (f" {'zero-shot avg %':>20}" if zs else "") + (f" {PAPER7 + ' %':>20}" if p7 else ""))
    line = (f"{'':>11} {'dense':<12} {'':>2} {'':>9} {dense['calib_loss']:20.3f} {dense['ppl_wikipedia']:22.2f} "
            f"{1:6.2f} {dense['ppl_lee_news']:22.2f} {1:6.2f}")
    print(line + (f" {100 * dense['zeroshot_avg']:20.2f}" if zs else "")
          + (f" {100 * dense['paper7_avg']:20.2f}" if p7 else ""))
    keys = sorted({(_amount(r), r["method"]) for r in rows}, key=lambda k: (_setting_order(k[0]), _order(k[1])))
    for target, method in keys:
        sel = [r for r in rows if _amount(r) == target and r["method"] == method]

        def cell(metric: str, fmt: str, sel=sel, scale=1.0) -> str:
            vals = [scale * r[metric] for r in sel if metric in r]
            if not vals:
                return "n/a"
            n = "" if len(vals) == len(sel) else f" n={len(vals)}"
            return f"{statistics.mean(vals):{fmt}} [{min(vals):{fmt}}..{max(vals):{fmt}}]{n}"

        def ratio(metric: str, sel=sel) -> str:
            vals = [r[metric] for r in sel if metric in r]
            return f"{statistics.mean(vals) / dense[metric]:6.2f}" if vals else f"{'n/a':>6}"

        line = (f"{target:>11} {method:<12} {len(sel):2d} "
                f"{100 * statistics.mean(r['param_reduction'] for r in sel):9.2f} {cell('calib_loss', '.3f'):>20} "
                f"{cell('ppl_wikipedia', '.2f'):>22} {ratio('ppl_wikipedia')} {cell('ppl_lee_news', '.2f'):>22} "
                f"{ratio('ppl_lee_news')}")
        line += f" {cell('zeroshot_avg', '.2f', scale=100):>20}" if zs else ""
        line += f" {cell('paper7_avg', '.2f', scale=100):>20}" if p7 else ""
        print(line)
    for target in sorted({_amount(r) for r in rows}, key=_setting_order):
        variants = [(statistics.mean(r["calib_loss"] for r in rows if r["method"] == v and
                                     _amount(r) == target), v)
                    for v in VARIANTS if any(r["method"] == v and _amount(r) == target for r in rows)]
        if variants:
            print(f"{target}: fusion variant with the lowest held-out calibration loss: {min(variants)[1]} "
                  "(how aeflib.fusion.DEFAULT_METHOD is chosen; evaluation data not consulted)")
    print(f"aef = {fusion.DEFAULT_METHOD} (aeflib.fusion.DEFAULT_METHOD)")
    m = results.get("machine", {})
    print(f"machine: {m.get('platform')}, {m.get('cpus')} CPUs, torch {m.get('torch')}, threads {m.get('threads')}")


#: measure -> (label, per-item key in the items file, sub-key, scale, unit, higher is better)
PAIRED = {
    "zeroshot": ("zero-shot local avg", "zeroshot", None, 100.0, "points", True),
    "paper7": (f"{PAPER7} avg", "paper7", None, 100.0, "points", True),
    "nll_wikipedia": ("NLL Wikipedia", "nll", "wikipedia", 1.0, "nats", False),
    "nll_lee_news": ("NLL Lee news", "nll", "lee-news", 1.0, "nats", False),
}


def _item_map(items: dict, measure: str) -> dict | None:
    """{item id: value} of one row for one measure, or None if the row has no such per-item results."""
    from aeflib.evaluation.zeroshot_results import item_values

    _, key, sub, *_ = PAIRED[measure]
    if key not in items:
        return None
    if sub is None:
        return item_values(items[key])
    return dict(enumerate(items[key][sub])) if sub in items[key] else None


def comparisons(results: dict, draws: int = 10_000) -> list[dict]:
    """Paired intervals per setting: each method against the best baseline estimator, and AEF variants pairwise.

    The best baseline estimator of a setting is the one of vector/element1/element2 with the highest mean zero-shot
    average (lowest Wikipedia NLL without zero-shot) over its seeds. Items are paired by id, seeds by calibration seed
    (only seeds both methods have), the bootstrap runs over seeds and items (zero-shot items within their task).
    """
    from aeflib.evaluation.paired import paired_bootstrap
    from aeflib.evaluation.zeroshot_results import task_of

    rows, items = results["rows"], results.get("items", {})
    out = []
    for setting in sorted({_amount(r) for r in rows}, key=_setting_order):
        by_method: dict[str, dict[int, dict]] = {}
        for key, it in items.items():
            if isinstance(key, tuple) and key[1] == setting:
                seed, _, method = key
                by_method.setdefault(method, {})[seed] = it
        if not by_method:
            continue

        def score(method: str, setting=setting) -> float:
            sel = [r for r in rows if _amount(r) == setting and r["method"] == method]
            if all("zeroshot_avg" in r for r in sel):
                return statistics.mean(r["zeroshot_avg"] for r in sel)
            return -statistics.mean(r["ppl_wikipedia"] for r in sel)

        estimators = [m for m in ESTIMATORS if m in by_method]
        pairs = []
        if estimators:
            best = max(estimators, key=score)
            pairs += [(best, m, "best estimator") for m in by_method if m != best]
        aefs = [v for v in VARIANTS if v in by_method]
        pairs += [(a, b, "AEF variants") for i, a in enumerate(aefs) for b in aefs[i + 1:]]
        for a, b, kind in pairs:
            seeds = sorted(set(by_method[a]) & set(by_method[b]))
            entry = {"setting": setting, "a": a, "b": b, "kind": kind, "seeds": seeds, "measures": {}}
            for measure, (_label, _key, sub, scale, unit, higher) in PAIRED.items():
                ia = {s: _item_map(by_method[a][s], measure) for s in seeds}
                ib = {s: _item_map(by_method[b][s], measure) for s in seeds}
                if not seeds or any(v is None for v in (*ia.values(), *ib.values())):
                    continue
                r = paired_bootstrap(ia, ib, strata=task_of if sub is None else None, draws=draws,
                                     scale=scale, unit=unit, higher_is_better=higher, labels=(a, b))
                entry["measures"][measure] = r
            if seeds and all("paper7" in by_method[m][s] for m in (a, b) for s in seeds):
                entry["tasks"] = task_readings({s: by_method[a][s]["paper7"] for s in seeds},
                                               {s: by_method[b][s]["paper7"] for s in seeds},
                                               items.get("dense", {}).get("paper7"), (a, b), draws=draws)
            out.append(entry)
    return out


def task_readings(a: dict, b: dict, dense: dict | None, labels: tuple[str, str], draws: int = 10_000) -> list[dict]:
    """Per-task paired differences ``B − A`` over seeds and items, Holm-adjusted across the tasks; chance marked.

    Args:
        a: ``{seed: item table}`` of method A (``{task: {"doc_ids", "correct"}}``, a ``ZeroShotResult.item_table``).
        b: The same for method B.
        dense: The dense model's item table (decides *at chance*: its Wilson lower bound at or below the task's
            chance level), or None.
        labels: Names of A and B.
        draws: Bootstrap replicates.

    Returns:
        One dict per task: ``task, diff, lo, hi`` (points, bootstrap over seeds and items), ``p`` (exact McNemar
        sign test on the pooled item pairs), ``p_holm``, ``at_chance``, ``reading``.
    """
    from aeflib.evaluation.paired import binomial_interval, holm, paired_bootstrap, sign_test
    from aeflib.evaluation.zeroshot import CHANCE

    rows = []
    for task in next(iter(a.values())):
        ga = {s: dict(zip(t[task]["doc_ids"], t[task]["correct"], strict=True)) for s, t in a.items()}
        gb = {s: dict(zip(t[task]["doc_ids"], t[task]["correct"], strict=True)) for s, t in b.items()}
        r = paired_bootstrap(ga, gb, draws=draws, scale=100, unit="points", labels=labels)
        pooled = [{f"{s}/{i}": v for s, g in group.items() for i, v in g.items()} for group in (ga, gb)]
        at_chance = False
        if dense is not None and task in dense and CHANCE.get(task) is not None:
            correct = dense[task]["correct"]
            at_chance = binomial_interval(int(round(sum(correct))), len(correct))[0] <= CHANCE[task]
        rows.append({"task": task, "diff": r.diff, "lo": r.lo, "hi": r.hi, "p": sign_test(*pooled),
                     "at_chance": at_chance})
    for row, adjusted in zip(rows, holm([row["p"] for row in rows]), strict=True):
        row["p_holm"] = adjusted
        if row["at_chance"]:
            row["reading"] = "dense at chance: not read"
        elif adjusted < 0.05:
            row["reading"] = f"{labels[1] if row['diff'] > 0 else labels[0]} better"
        else:
            row["reading"] = "within noise"
    return rows


def paired_summary(results: dict) -> None:
    comps = comparisons(results)
    if not comps:
        print("no per-item results: no paired intervals (sweeps before the .items.json files kept only means)")
        return
    print("\npaired 95 % intervals of B − A (items paired by id, seeds by calibration seed; bootstrap over seeds "
          "and items, 10,000 draws; zero-shot: mean of the task means; NLL: mean token NLL per window, lower is "
          "better). 'within noise' = the interval holds 0: no claim.")
    for c in comps:
        print(f"{c['setting']:>11}  {c['b']} vs {c['a']} ({c['kind']}), seeds {','.join(map(str, c['seeds']))}:")
        for measure, r in c["measures"].items():
            digits = 2 if r.unit == "points" else 4
            print(f"{'':>13}{PAIRED[measure][0]:<22} {r.reading(digits)}")
        for t in c.get("tasks", []):
            print(f"{'':>15}{t['task']:<20} {t['diff']:+6.2f} [{t['lo']:+.2f}, {t['hi']:+.2f}]  "
                  f"Holm p {t['p_holm']:.3f}: {t['reading']}")
    if any(c.get("tasks") for c in comps):
        print(f"\nper task ({PAPER7}): {_TASK_METHOD}")


def markdown(results: dict) -> None:
    """The summary as Markdown tables: means over seeds (± half the min..max spread), then the paired intervals."""
    dense, rows = results["dense"], results["rows"]
    cols = [("calib_loss", "held-out calib. loss", ".3f", 1), ("ppl_wikipedia", "PPL Wikipedia", ".2f", 1),
            ("ppl_lee_news", "PPL Lee news", ".2f", 1)]
    cols += [("zeroshot_avg", "zero-shot local avg %", ".2f", 100)] if "zeroshot_avg" in dense else []
    cols += [("paper7_avg", f"{PAPER7} avg %", ".2f", 100)] if "paper7_avg" in dense else []
    print(_protocol_line(results) + ".\n")
    print("| setting | method | seeds | params removed | " + " | ".join(name for _, name, _, _ in cols) + " |")
    print("|---" * (4 + len(cols)) + "|")
    print("| – | dense | – | – | " + " | ".join(f"{s * dense[k]:{f}}" for k, _, f, s in cols) + " |")
    keys = sorted({(_amount(r), r["method"]) for r in rows}, key=lambda k: (_setting_order(k[0]), _order(k[1])))
    for target, method in keys:
        sel = [r for r in rows if _amount(r) == target and r["method"] == method]
        cells = []
        for key, _, fmt, scale in cols:
            vals = [scale * r[key] for r in sel if key in r]
            if not vals:
                cells.append("–")
                continue
            mean, half = statistics.mean(vals), (max(vals) - min(vals)) / 2
            cells.append(f"{mean:{fmt}} ± {half:{fmt}}" + ("" if len(vals) == len(sel) else f" (n={len(vals)})"))
        name = f"{method} (= `aef`)" if method == fusion.DEFAULT_METHOD else method
        name = "oracle (upper bound: chosen on evaluation text)" if method == ORACLE else name
        seeds = ",".join(str(r["seed"]) for r in sorted(sel, key=lambda r: r["seed"]))
        print(f"| {target} | {name} | {seeds} | "
              f"{100 * statistics.mean(r['param_reduction'] for r in sel):.2f} % | " + " | ".join(cells) + " |")
    comps = comparisons(results)
    if comps:
        _markdown_paired(comps)
        _markdown_tasks(comps)
    if "paper7" in dense and any("paper7" in r for r in rows):
        paper_drops(results)


#: How the sweep reads per-task differences (printed with the tables).
_TASK_METHOD = ("each task's difference is tested with the exact McNemar test on the item pairs (pooled over seeds) "
                "and Holm–Bonferroni adjusted across the seven tasks of each comparison (family-wise 5 %); a task "
                "where the dense model's Wilson interval reaches its chance level is not read")


def _markdown_tasks(comps: list[dict]) -> None:
    """Markdown: per-task paired differences of every comparison that has per-item paper7 results."""
    with_tasks = [c for c in comps if c.get("tasks")]
    if not with_tasks:
        return
    print(f"\nPer-task differences B − A on {PAPER7} (points, 95 % interval over seeds and items, unadjusted); "
          f"the reading: {_TASK_METHOD}. **Bold** = read as a difference.\n")
    print("| setting | A | B | task | Δ points [interval] | Holm p | reading |")
    print("|---" * 7 + "|")
    for c in with_tasks:
        for t in c["tasks"]:
            text = f"{t['diff']:+.2f} [{t['lo']:+.2f}, {t['hi']:+.2f}]"
            read = t["reading"] not in ("within noise", "dense at chance: not read")
            print(f"| {c['setting']} | {c['a']} | {c['b']} | {t['task']} | {f'**{text}**' if read else text} | "
                  f"{t['p_holm']:.3f} | {t['reading']} |")


def _markdown_paired(comps: list[dict]) -> None:
    measures = [m for m in PAIRED if any(m in c["measures"] for c in comps)]
    print("\nPaired differences B − A, 95 % interval (bootstrap over calibration seeds and paired items); **bold** = "
          "the interval excludes 0, otherwise within noise. Where one seed is listed, the interval covers the items "
          "only, not the variation between calibration seeds.\n")
    print("| setting | A | B | seeds | " + " | ".join(f"Δ {PAIRED[m][0]} ({PAIRED[m][4]})" for m in measures)
          + " | reading |")
    print("|---" * (5 + len(measures)) + "|")
    for c in comps:
        cells, verdicts = [], []
        for m in measures:
            r = c["measures"].get(m)
            if r is None:
                cells.append("–")
                continue
            d = 2 if r.unit == "points" else 3
            text = f"{r.diff:+.{d}f} [{r.lo:+.{d}f}, {r.hi:+.{d}f}]"
            cells.append(f"**{text}**" if r.excludes_zero else text)
            if r.excludes_zero:
                verdicts.append(f"{r.better} better on {PAIRED[m][0]}")
        reading = "; ".join(verdicts) if verdicts else "within noise on every measure"
        print(f"| {c['setting']} | {c['a']} | {c['b']} | {','.join(map(str, c['seeds']))} | " + " | ".join(cells)
              + f" | {reading} |")


def paper_drops(results: dict, model: str = "llama-7b") -> None:
    """Markdown: each method's relative change of the seven task scores beside the paper's at 20 % of parameters.

    Relative change = 100 · (pruned / dense − 1), this sweep's mean over its calibration seeds (each seed's pruned
    score over the same dense score), beside the same change in LLM-Pruner's LLaMA-7B table (no recovery, 20 % of
    parameters removed; ``data/paper_results.csv``), task by task with the paper's metric. The paper has no
    per-task table at pruning ratio 0.64 (its 50 % setting gives only a claimed gain), so that setting shows this
    sweep's changes alone.
    """
    from aeflib.paper import PAPER_TASKS, load_paper_results, relative_to_dense

    dense, rows = results["dense"], results["rows"]
    paper = relative_to_dense(load_paper_results(model=model))
    paper = paper[paper["setting"] == "no-tune"]
    published = {(r.method, r.task): r.change_percent for r in paper.itertuples()}
    tasks = [t for t in PAPER_TASKS if t in dense["paper7"]]
    print(f"\nRelative change of the seven tasks, 100 · (pruned / dense − 1) in %, this sweep ({PAPER7}, "
          f"{'/'.join(sorted({str(v['n']) for v in dense['paper7'].values()}))} items per task, mean over seeds) "
          f"beside {model} in LLM-Pruner's table "
          "(no recovery, 20 % of parameters; paper in brackets, – where it has no such row).\n")
    print("| setting | method | seeds | " + " | ".join(f"{t} ({dense['paper7'][t]['metric']})" for t in tasks)
          + " | average |")
    print("|---" * (4 + len(tasks)) + "|")
    print("| – | dense (points) | – | " + " | ".join(f"{100 * dense['paper7'][t]['value']:.1f}" for t in tasks)
          + f" | {100 * dense['paper7_avg']:.1f} |")
    chance = [100 * CHANCE[t] for t in tasks]  # every paper task has a chance level
    print("| – | chance (points) | – | " + " | ".join(f"{c:.0f}" for c in chance)
          + f" | {statistics.mean(chance):.1f} |")
    theirs_dense = {r.task: r.dense for r in paper.itertuples()}
    print(f"| – | {model} dense, paper (points) | – | " + " | ".join(f"{theirs_dense.get(t, float('nan')):.1f}"
                                                               for t in tasks)
          + f" | {theirs_dense.get('average', float('nan')):.1f} |")
    keys = sorted({(_amount(r), r["method"]) for r in rows if "paper7" in r},
                  key=lambda k: (_setting_order(k[0]), _order(k[1])))
    for target, method in keys:
        sel = [r for r in rows if _amount(r) == target and r["method"] == method and "paper7" in r]
        cells = []
        for task, mine, base in [(t, lambda r, t=t: r["paper7"][t]["value"], dense["paper7"][t]["value"])
                                 for t in tasks] + [("average", lambda r: r["paper7_avg"], dense["paper7_avg"])]:
            change = statistics.mean(100 * (mine(r) / base - 1) for r in sel) if base else float("nan")
            theirs = published.get((method, task)) if target == "20 %" else None
            cells.append(f"{change:+.0f}" + (f" ({theirs:+.0f})" if theirs is not None else " (–)"))
        name = f"{method} (= `aef`)" if method == fusion.DEFAULT_METHOD else method
        seeds = ",".join(str(r["seed"]) for r in sorted(sel, key=lambda r: r["seed"]))
        print(f"| {target} | {name} | {seeds} | " + " | ".join(cells) + " |")


def _amount(row: dict) -> str:
    """How much a row prunes: its parameter target (``20 %``) or, in ratio mode, its per-structure ratio."""
    t = row["target_params"]
    return f"{100 * t:.0f} %" if t is not None else f"ratio {row['pruning_ratio']:.2f}"


def _setting_order(label: str) -> tuple[int, float]:
    """Parameter targets first (ascending), then ratios (ascending)."""
    if label.startswith("ratio"):
        return (1, float(label.split()[1]))
    return (0, float(label.split()[0]))


def _order(method: str) -> int:
    order = BASELINES + VARIANTS + [ORACLE]
    return order.index(method) if method in order else len(order)


if __name__ == "__main__":
    main()
