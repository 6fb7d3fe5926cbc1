"""Sweeps over pruning criteria on one model (``aef compare``) and the paper's protocol per model (``aef reproduce``).

``compare`` estimates every needed criterion **once** (``scores.safetensors``, reused by later calls on the same
model and calibration set), fuses once per AEF variant, then for each method reloads the dense model, plans at the
same ratio or parameter target, prunes and measures perplexity (and, optionally, zero-shot accuracy). It writes
``comparison.csv``, ``comparison.md`` and ``figures/comparison.png``.

``missing_for_reproduce`` checks up front — in seconds, without loading weights — that every model, corpus and
zero-shot dataset of the paper's protocol is cached or downloadable; ``reproduce`` refuses to start otherwise and
then runs the notebook sequence per model with :meth:`RunSettings.paper`.

Imports :mod:`~aeflib.orchestration.settings`, :mod:`~aeflib.orchestration.report` and
:mod:`~aeflib.orchestration.runner`, never the command.

Source: [ours]; settings from docs/paper.md §4.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aeflib.data
import aeflib.fusion
import aeflib.importance
import aeflib.models
import aeflib.pruning
from aeflib import plots, stages
from aeflib.artifacts import RunDir, pruned_layers
from aeflib.data import CORPORA
from aeflib.evaluation import perplexity
from aeflib.evaluation.paired import paired_bootstrap
from aeflib.evaluation.zeroshot import HUB_DATASETS, TASK_SETS, _hub_dataset_cached
from aeflib.evaluation.zeroshot import zeroshot as zs
from aeflib.evaluation.zeroshot_results import item_values, task_of
from aeflib.files import hub_unreachable_reason
from aeflib.models import MODELS, checksum
from aeflib.orchestration import runner
from aeflib.orchestration.report import markdown_table
from aeflib.orchestration.settings import RunSettings
from aeflib.scores import Scores

__all__ = ["Comparison", "compare", "missing_for_reproduce", "reproduce"]

log = logging.getLogger(__name__)


@dataclass
class Comparison:
    """Result of :func:`compare`: the table (one row per method, dense first), the files written, paired intervals.

    ``paired`` holds one dict per (method, measure) against the reference method (the best baseline criterion):
    ``{"a", "b", "measure", "diff", "lo", "hi", "n", "excludes_zero", "reading"}`` — zero-shot average in points
    (items paired by id), mean token NLL per perplexity window in nats (windows paired).
    """

    table: Any              # pandas.DataFrame
    run_dir: Path
    csv: Path
    markdown: Path
    figure: Path
    seconds: float
    paired: list = field(default_factory=list)


def _scores_for(loaded, run, settings, criteria: list[str], force: bool):
    """Scores of ``criteria`` from the run folder when they match this model and calibration, else estimated."""
    model, tokenizer, adapter = loaded
    calib = aeflib.data.calibration(tokenizer, corpus=settings.calib_corpus, n=settings.calib_n,
                                    seq_len=settings.calib_seq_len, seed=settings.seed)
    layers = pruned_layers(adapter, model, settings.layers)
    path = run / "scores.safetensors"
    if path.is_file() and not force:
        cached = Scores.load(path)
        same = (cached.meta.get("model_checksum") == checksum(model)
                and cached.meta.get("calibration_shape") == list(calib.shape)
                and cached.meta.get("layers") == list(layers) and cached.meta.get("calib_seed") == settings.seed
                and cached.meta.get("calib_corpus") == settings.calib_corpus)
        if same and all(c in cached.criteria for c in criteria):
            log.info("reusing scores from %s", path)
            return cached, calib, layers
    scores = aeflib.importance.estimate(model, adapter, calib, criteria=criteria, layers=layers, seed=settings.seed)
    scores.meta.update(calib_seed=settings.seed, calib_corpus=settings.calib_corpus)
    scores.save(path)
    return scores, calib, layers


def compare(settings=None, methods: Sequence[str] | None = None, *,
            name: str | None = None, runs_root: str | os.PathLike = "runs", zeroshot: bool = False,
            force: bool = False, progress: bool = False) -> Comparison:
    """Prune one model once per method at the same target and compare perplexity (and zero-shot accuracy).

    Args:
        settings: :class:`~aeflib.orchestration.settings.RunSettings` (model, target or ratio, calibration,
            evaluation sizes).
        methods: Criteria (``random``, ``l1``, ``l2``, ``vector``, ``element1``, ``element2``) and AEF variants;
            default ``importance.DEFAULT_CRITERIA`` and ``aef``.
        name: Run folder name (default ``compare-<model>-<amount>``).
        runs_root: Parent folder of runs.
        zeroshot: Also measure zero-shot accuracy (``settings.zeroshot_tasks``) per method.
        force: Re-estimate scores even if the run folder has matching ones.
        progress: Progress bars.

    Returns:
        :class:`Comparison`, with paired 95 % intervals of every method against the best baseline criterion
        (zero-shot items and perplexity windows paired; also in ``comparison.md``).

    Raises:
        ValueError: An unknown method (lists the choices).
    """
    t0 = time.perf_counter()
    settings = (settings or RunSettings()).validate()  # before any folder is made
    methods = (*aeflib.importance.DEFAULT_CRITERIA, "aef") if methods is None else methods
    for m in methods:
        stages.fusion_method(m)  # ValueError naming the method and the choices
    fused = [m for m in methods if m == "aef" or m in aeflib.fusion.FUSIONS]
    criteria = list(dict.fromkeys([m for m in methods if m not in fused]
                                  + ([settings.fine, settings.coarse] if fused else [])))
    run = RunDir(Path(runs_root) / (name or f"compare-{settings.default_name().replace(f'-{settings.method}', '')}"))
    load = dict(dtype=settings.dtype, device=settings.device)
    dense = aeflib.models.load(settings.model, **load)
    scores, calib, layers = _scores_for(dense, run, settings, criteria, force)
    ratio = stages.solve_ratio(dense.model, dense.adapter, scores, pruning_ratio=settings.pruning_ratio,
                               target_params=settings.target_params, layers=layers)
    for m in fused:
        scores = aeflib.fusion.fuse(scores, m, fine=settings.fine, coarse=settings.coarse, model=dense.model,
                                    adapter=dense.adapter, calibration=calib, pruning_ratio=ratio,
                                    temperature=settings.temperature, normalize_with=settings.normalize_with,
                                    steps=settings.fusion_steps, lr=settings.fusion_lr,
                                    patience=settings.fusion_patience).scores

    items: dict[str, dict[str, dict]] = {}  # method -> measure -> {item id: value}, for paired intervals

    def measure(model, tokenizer, method: str) -> dict[str, Any]:

        out, mine = {}, items.setdefault(method, {})
        for corpus, split in settings.ppl_datasets:
            p = perplexity(model, tokenizer, corpus=corpus, split=split, protocol=settings.ppl_protocol,
                           max_windows=settings.ppl_max_windows, batch_size=settings.eval_batch_size,
                           progress=progress, per_window=True)
            out[f"perplexity_{corpus}" if len(settings.ppl_datasets) > 1 else "perplexity"] = round(p.value, 4)
            mine[f"NLL {corpus}"] = dict(enumerate(p.window_nll))
        if zeroshot:

            result = zs(model, tokenizer, tasks=settings.zeroshot_tasks, limit=settings.zeroshot_limit,
                        log_samples=True)
            out["zeroshot_mean"] = round(100 * result.average, 2)
            mine["zero-shot average"] = item_values(result.item_table())
        return out

    rows = [{"method": "dense", "criterion": None, "pruning_ratio": 0.0, "param_reduction": 0.0,
             "parameters": aeflib.pruning.count_parameters(dense.model), **measure(dense.model, dense.tokenizer,
                                                                                   "dense")}]
    plans = {}
    for m in methods:
        started = time.perf_counter()
        loaded = dense if m == methods[-1] else aeflib.models.load(settings.model, **load)
        model, tokenizer, adapter = loaded
        p = aeflib.pruning.plan(model, adapter, scores[m], pruning_ratio=ratio, layers=layers, criterion=m)
        aeflib.pruning.apply(model, adapter, p)
        plans[m] = p.to_dict()
        rows.append({"method": m, "criterion": m, "pruning_ratio": round(ratio, 4),
                     "param_reduction": round(p.param_reduction, 4), "parameters": p.params_after,
                     **measure(model, tokenizer, m), "seconds": round(time.perf_counter() - started, 1)})
        log.info("compare: %s done", m)
    return _write(run, rows, plans, settings, ratio, methods, t0, plots, _paired(rows, items))


#: Criteria a fused method is measured against: the best of these in the comparison is the reference.
BASELINES = ("random", "l1", "l2", "vector", "element1", "element2")


def _paired(rows: list[dict[str, Any]], items: dict[str, dict[str, dict]]) -> list[dict[str, Any]]:
    """Paired 95 % intervals of every method against the best baseline criterion of the comparison.

    The reference is the baseline with the highest zero-shot average when zero-shot was measured, else the lowest
    first perplexity; every other pruned method is compared with it on each measure, items (or windows) paired.
    """
    pruned = [r for r in rows if r["method"] != "dense"]
    base = [r for r in pruned if r["method"] in BASELINES]
    if not base or len(pruned) < 2:
        return []
    ppl_key = next(k for k in rows[0] if k.startswith("perplexity"))
    ref = (max(base, key=lambda r: r["zeroshot_mean"]) if "zeroshot_mean" in rows[0]
           else min(base, key=lambda r: r[ppl_key]))["method"]
    out = []
    for r in pruned:
        if r["method"] == ref:
            continue
        for measure, b in items[r["method"]].items():
            zs = measure == "zero-shot average"
            res = paired_bootstrap(items[ref][measure], b, strata=task_of if zs else None, scale=100 if zs else 1,
                                   unit="points" if zs else "nats", higher_is_better=zs, labels=(ref, r["method"]))
            out.append({"a": ref, "b": r["method"], "measure": measure, "diff": res.diff, "lo": res.lo,
                        "hi": res.hi, "n": res.n, "excludes_zero": res.excludes_zero,
                        "reading": res.reading(2 if zs else 4)})
    return out


def _write(run, rows, plans, settings, ratio, methods, t0, plots, paired=()) -> Comparison:
    import pandas as pd

    table = pd.DataFrame(rows)
    csv = run / "comparison.csv"
    table.to_csv(csv, index=False)
    window = f"first {settings.ppl_max_windows} windows" if settings.ppl_max_windows else "all windows"
    protocol = f"{settings.ppl_protocol}, {'+'.join(c for c, _ in settings.ppl_datasets)}, {window}"
    header = (f"# aef compare: {settings.model}\n\nSame calibration set ({settings.calib_n} x {settings.calib_seq_len} "
              f"tokens of {settings.calib_corpus}, seed {settings.seed}), same ratio {ratio:.4f} per pruned layer "
              f"for every method; perplexity: {protocol}.\n\n")
    md = run / "comparison.md"
    text = header + markdown_table(list(table.columns), table.values.tolist()) + "\n"
    if paired:
        text += (f"\nPaired differences against {paired[0]['a']} (the best baseline criterion here), 95 % "
                 "interval from a bootstrap over the paired items (zero-shot: points; perplexity windows: mean token "
                 "NLL, nats, lower is better). A difference whose interval holds 0 is within noise.\n\n"
                 + markdown_table(["method", "measure", "B − A [interval]", "reading"],
                                  [[p["b"], p["measure"], f"{p['diff']:+.4g} [{p['lo']:+.4g}, {p['hi']:+.4g}]",
                                    p["reading"].rsplit(": ", 1)[-1]] for p in paired]) + "\n")
    md.write_text(text)
    fig_path = run.save_figure(plots.comparison(table, protocol), "comparison")
    run.merge_metrics("comparison", {"rows": rows, "plans": plans, "pruning_ratio": ratio, "methods": list(methods),
                                     "settings": settings.parameters(), "paired": list(paired)})
    return Comparison(table, run.root, csv, md, fig_path, round(time.perf_counter() - t0, 1), list(paired))


# ---- the paper's protocol ------------------------------------------------------------------------------------------
def missing_for_reproduce(models: Sequence[str], settings=None) -> list[str]:
    """What the paper protocol needs that is neither cached nor downloadable now; empty = ready. Takes seconds.

    Args:
        models: Registry names or local checkpoint folders.
        settings: A :class:`~aeflib.orchestration.settings.RunSettings` (default: :meth:`RunSettings.paper` of
            the first model).

    Returns:
        One line per missing item (model weights, calibration/perplexity/recovery corpora, zero-shot datasets).
    """
    from huggingface_hub import try_to_load_from_cache


    settings = settings or RunSettings.paper(models[0] if models else "llama-7b")
    reason = hub_unreachable_reason(("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"))
    missing = []
    for name in models:
        if name in MODELS:
            spec = MODELS[name]
            if spec.source == "hub" and reason and not isinstance(try_to_load_from_cache(spec.hub_id, "config.json"),
                                                                   str):
                missing.append(f"model {name}: {spec.hub_id} is not in the Hugging Face cache and the hub is "
                               f"unreachable ({reason}); download it elsewhere and pass the folder instead")
        elif not Path(name).expanduser().is_dir():
            missing.append(f"model {name!r}: not a registered name ({', '.join(MODELS)}) and not a folder")
    corpora = [("calibration", settings.calib_corpus), ("recovery", settings.recovery_dataset),
               *[("perplexity", c) for c, _ in settings.ppl_datasets]]
    for use, corpus in corpora:
        spec = CORPORA.get(corpus)
        if spec is not None and not spec.shipped and reason and not _hub_dataset_cached(spec.hub_id):
            missing.append(f"{use} corpus {corpus}: {spec.hub_id} is not cached and the hub is unreachable")
    tasks = settings.zeroshot_tasks
    names = TASK_SETS.get(tasks, {}) if isinstance(tasks, str) else list(tasks or [])
    for task in names:
        if task in HUB_DATASETS and reason and not _hub_dataset_cached(HUB_DATASETS[task][0]):
            missing.append(f"zero-shot task {task}: {HUB_DATASETS[task][0]} is not cached and the hub is unreachable")
    return missing


def reproduce(models: Sequence[str], *, runs_root: str | os.PathLike = "runs", force: bool = False,
              progress: bool = False, on_stage=None, **overrides: Any) -> list[runner.RunOutcome]:
    """Run the paper's protocol (:meth:`RunSettings.paper`) per model into ``runs_root/reproduce-<model>``.

    Args:
        models: Registry names (``llama-7b``, ``vicuna-7b``, ``baichuan-7b``, ``bloom-7b1``) or local folders.
        runs_root: Parent folder of runs.
        force: Re-run finished stages.
        progress: Progress bars.
        on_stage: Callback per finished stage.
        **overrides: RunSettings fields to change (e.g. ``device="cuda"``, ``method="aef-element"``).

    Returns:
        One :class:`~aeflib.orchestration.runner.RunOutcome` per model.

    Raises:
        RuntimeError: Before any work, if :func:`missing_for_reproduce` lists anything (the message lists it all).
    """
    all_settings = [RunSettings.paper(m, **overrides) for m in models]
    missing = [line for s in all_settings for line in missing_for_reproduce([s.model], s)]
    missing = list(dict.fromkeys(missing))
    if missing:
        raise RuntimeError("cannot reproduce the paper's protocol on this machine; missing:\n  - "
                           + "\n  - ".join(missing))
    return [runner.run(s, name=f"reproduce-{Path(s.model).name}", runs_root=runs_root, force=force,
                       progress=progress, on_stage=on_stage) for s in all_settings]
