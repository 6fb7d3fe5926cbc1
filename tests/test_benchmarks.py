"""Benchmark scripts: each ``benchmarks/<x>.py --smoke`` exits 0 and prints (and writes) the numbers it promises.

The smoke runs are subprocesses (the scripts are run as files, as their docstrings say), started together by a
module fixture so that their start-up (importing torch and transformers, loading the tiny model) overlaps: the file
takes about as long as its slowest script instead of their sum. Each gets ``OMP_NUM_THREADS=1``, the offline hub
variables and its own ``TMPDIR`` (where its ``--smoke`` output lands). ``pipeline.py`` runs only stage 01 here: the
whole tiny notebook sequence already runs once in test_pipeline.py (``tiny_llama_run``).
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import aeflib.fusion

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
TIMEOUT = 600  # seconds per script, generous: the 2-core machine may be busy

SMOKES = {  # script -> extra arguments after --smoke
    "quality.py": [],
    "estimation_cost.py": [],
    "speed.py": [],
    "pipeline.py": ["--stages", "01"],
    "io_roundtrip.py": [],
    "recovery_smollm2.py": [],
    "full7b.py": [],
    "zeroshot_speed.py": [],
    "fusion_choices.py": [],
}


class _Smoke:
    """One script's finished smoke run: exit code, output (stdout + stderr) and its TMPDIR."""

    def __init__(self, proc: subprocess.Popen, log: Path, tmp: Path):
        self.proc, self.log, self.tmp, self._done = proc, log, tmp, False

    def wait(self) -> _Smoke:
        if not self._done:
            try:
                self.proc.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self._done = True
        return self

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def json(self, name: str) -> dict:
        found = sorted(self.tmp.rglob(name))
        assert found, f"no {name} under {self.tmp}; output:\n{self.output[-3000:]}"
        return json.loads(found[0].read_text())


@pytest.fixture(scope="module")
def smoke(request, tmp_path_factory):
    """Start every selected script's ``--smoke`` run at once; ``smoke(script)`` waits for that one."""
    selected = []
    for item in request.session.items:
        spec = getattr(item, "callspec", None)
        if item.module is request.module and spec is not None and "script" in spec.params:
            selected.append(spec.params["script"])
    runs: dict[str, _Smoke] = {}
    for script in dict.fromkeys(selected):
        tmp = tmp_path_factory.mktemp(script.removesuffix(".py"))
        log = tmp / "output.txt"
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",
            "TMPDIR": str(tmp),
            "PYTHONUNBUFFERED": "1",
        }
        with open(log, "w") as out:
            proc = subprocess.Popen(
                [sys.executable, str(BENCH / script), "--smoke", *SMOKES[script]],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        runs[script] = _Smoke(proc, log, tmp)
    yield lambda script: runs[script].wait()
    for run in runs.values():
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()


def _ok(run: _Smoke) -> str:
    assert run.proc.returncode == 0, f"exit {run.proc.returncode}:\n{run.output[-4000:]}"
    return run.output


@pytest.mark.parametrize("script", ["quality.py"])
def test_quality_smoke_prints_each_kind_of_method_against_dense(smoke, script):
    run = smoke(script)
    out = _ok(run)
    assert "ratio = pruned / dense" in out
    for method in ["random", "l2", "vector", "element1", "element2", "aef-layer", aeflib.fusion.DEFAULT_METHOD,
                   "oracle"]:
        assert re.search(rf"^\s+ratio 0\.50 {re.escape(method)}\s+1\s", out, re.M), f"no table row for {method}"
    assert re.search(r"^aef = aef-\w+ \(aeflib\.fusion\.DEFAULT_METHOD\)", out, re.M)
    # per-item results beside the rows, and paired intervals computed from them
    items = run.json("quality_s42.items.json")
    assert set(items["dense"]) == {"nll", "zeroshot"} and len(items["dense"]["nll"]["wikipedia"]) == 2
    ids = items["ratio 0.50|element1"]["zeroshot"]["aef_qa"]["doc_ids"]
    assert len(ids) == 2 and ids == items["dense"]["zeroshot"]["aef_qa"]["doc_ids"]  # same items for every model
    assert "paired 95 % intervals of B − A" in out
    assert re.search(r"^\s+zero-shot local avg\s+aef-layer − (vector|element\d) = [+-]\d+\.\d\d points \[", out, re.M)


@pytest.mark.parametrize("script", ["estimation_cost.py"])
def test_estimation_cost_smoke_prints_naive_over_bounded(smoke, script):
    out = _ok(smoke(script))
    assert "naive / bounded, same run:" in out
    assert re.search(r"memory above weights \d+\.\d+x, time \d+\.\d+x", out)
    assert "Fisher slices [[1], [2]]" in out          # the layer-slice path ran too


@pytest.mark.parametrize("script", ["full7b.py"])
def test_full7b_smoke_runs_every_layout_through_estimate_plan_apply_save_reload(smoke, script):
    run = smoke(script)
    out = _ok(run)
    result = run.json("full7b.json")
    assert [m["model"] for m in result["models"]] == ["smoke-llama-7b", "smoke-baichuan-7b", "smoke-bloom-7b1"]
    for m in result["models"]:
        assert [s["stage"] for s in m["stages"]] == ["build (mmap)", "estimate", "plan", "fusion forward", "apply",
                                                   "save"]
        assert m["reload"]["logits_equal"] and m["reload"]["params"] == m["params_after"] < m["params"]
        assert m["fisher_layer_slices"] == [[4], [5]] and m["peak_rss_gib"] > 0
    # the default's coordinate search: 5 grid values x 2 kinds, the shared start judged once; aef-layer: 1 + 2 x 4 sets
    assert re.search(r"at most aef-agree 9 passes \(<= \d+ s\); aef-layer 9 passes \(<= \d+ s\) \(4 group sets", out)
    assert result["models"][0]["fusion_forward_passes_at_most"] == {"aef-agree": 9, "aef-layer": 9}


@pytest.mark.parametrize("script", ["zeroshot_speed.py"])
def test_zeroshot_speed_smoke_prints_requests_per_second_per_model_and_set(smoke, script):
    run = smoke(script)
    out = _ok(run)
    assert "paper7-offline / local = " in out
    result = run.json("zeroshot_speed.json")
    records = {(r["model"], r["task_set"]): r for r in result["records"]}
    assert set(records) == {(m, s) for m in ("dense", "pruned ratio 0.25") for s in ("paper7-offline", "local")}
    for r in records.values():
        assert r["requests"] >= 2 * r["items"] > 0 and r["wall_s"] > 0 and r["requests_per_s"] > 0
    offline = records[("dense", "paper7-offline")]["tasks"]
    assert [t["items"] for t in offline.values()] == [2] * 7
    assert offline["arc_easy"]["split"] == "test" and offline["boolq"]["split"] == "validation"
    same = records[("pruned ratio 0.25", "paper7-offline")]["tasks"]
    assert all(same[t]["items_hash"] == v["items_hash"] for t, v in offline.items())  # same items for every model
    assert records[("pruned ratio 0.25", "local")]["params"] < records[("dense", "local")]["params"]


@pytest.mark.parametrize("script", ["speed.py"])
def test_speed_smoke_prints_and_writes_pruned_over_dense(smoke, script):
    run = smoke(script)
    out = _ok(run)
    assert "pruned / dense, measured in the same run" in out and "machine:" in out
    assert re.search(r"^model\s+target\s+ratio\s+params\s+MACs/tok\s+prefill@bs1\s+prefill@bs2\s+decode@bs1", out, re.M)
    result = run.json("speed.json")
    assert [m["model"] for m in result["models"]] == ["tiny-llama", "llama-wide-smoke-L1"]
    for model in result["models"]:
        pruned = model["pruned"]
        assert [p["pruning_ratio"] for p in pruned] == [0.2, 0.5]
        for p in pruned:
            r = p["ratios"]
            assert 0 < r["params_total"] < 1 and 0 < r["macs_per_token"] < 1
            for key in ("prefill_s@bs1", "prefill_s@bs2", "decode_s_per_token@bs1"):
                assert math.isfinite(r[key]) and r[key] > 0, key
        assert pruned[1]["ratios"]["macs_per_token"] < pruned[0]["ratios"]["macs_per_token"]
        assert model["dense"]["params_total"] > pruned[0]["efficiency"]["params_total"]
    assert result["machine"]["cpus"] == os.cpu_count()


@pytest.mark.notebooks
@pytest.mark.parametrize("script", ["pipeline.py"])
def test_pipeline_smoke_tabulates_stage_times_and_budget_share(smoke, script):
    run = smoke(script)
    out = _ok(run)
    assert re.search(r"^stage\s+status\s+wall s\s+CPU s\s+CPU/wall\s+share$", out, re.M)
    assert re.search(r"^01_model_and_structures\s+ran\s+\d+\.\d", out, re.M)
    assert re.search(r"^budget: total wall \d+ s / 900 s = \d+\.\d%", out, re.M)
    assert re.search(r"^memory: 01_model_and_structures peak \d+ MiB resident \(limit 1800 MiB\)$", out, re.M)
    result = run.json("pipeline.json")
    assert result["stages"][0]["peak_rss_mib"] > 0 and result["over_memory"] == {}
    assert [s["stage"] for s in result["stages"]] == ["01_model_and_structures"]
    assert result["stages"][0]["status"] == "ran" and result["stages"][0]["cpu_seconds"] > 0
    assert result["total_wall_s"] >= result["stages_wall_s"] > 0 and result["failed"] is None
    assert result["budget_share_wall"] == pytest.approx(result["total_wall_s"] / 900)


@pytest.mark.notebooks
def test_pipeline_fails_naming_the_stage_whose_peak_exceeds_max_peak_mib(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "TMPDIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, str(BENCH / "pipeline.py"), "--smoke", "--stages", "01",
                           "--max-peak-mib", "1"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert re.search(r"^FAILED: stage 01_model_and_structures peaked at \d+ MiB resident, above --max-peak-mib 1$",
                     proc.stdout, re.M)


@pytest.mark.parametrize("script", ["io_roundtrip.py"])
def test_io_roundtrip_smoke_reloads_equal_logits(smoke, script):
    run = smoke(script)
    _ok(run)
    report = run.json("io_roundtrip.json")["report"]
    saved = next(v for k, v in report.items() if k.startswith("aeflib.save"))
    exported = next(v for k, v in report.items() if k.startswith("export_hf"))
    assert saved["logits equal (same process)"] and saved["logits equal (fresh process)"]
    assert exported["logits equal"] and exported["stock reload"] == "ok"


@pytest.mark.parametrize("script", ["recovery_smollm2.py"])
def test_recovery_smoke_prints_recovered_over_pruned(smoke, script):
    run = smoke(script)
    out = _ok(run)
    assert re.search(r"recovered / pruned = \d+\.\d{3}; pruned / dense = \d+\.\d{3}", out)
    result = run.json("recovery.json")
    assert result["model"] == "tiny-llama" and result["recovery"]["settings"]["steps"] == 2
    assert result["pruning"]["params_after"] < result["pruning"]["params_before"]
    assert all(math.isfinite(v) and v > 0 for v in result["ratios"].values())


# ---- the shared helpers ---------------------------------------------------------------------------------------------
@pytest.fixture
def common(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import _common

    return _common


def test_write_json_replaces_atomically_and_leaves_no_temp_file(common, tmp_path):
    path = tmp_path / "new" / "r.json"
    common.write_json({"a": 1, "p": Path("x")}, path)
    common.write_json({"a": 2}, path)
    assert json.loads(path.read_text()) == {"a": 2}
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]

    class Boom:
        def __str__(self):
            raise RuntimeError("cannot encode")

    with pytest.raises(RuntimeError):
        common.write_json({"a": Boom()}, path)
    assert json.loads(path.read_text()) == {"a": 2}, "a failed write must leave the old file intact"
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]


def test_median_seconds_warms_up_then_takes_the_median(common, monkeypatch):
    calls = []
    clock = iter([0.0, 1.0, 10.0, 10.5, 20.0, 29.0])  # durations 1.0, 0.5, 9.0 -> median 1.0
    monkeypatch.setattr(common.time, "perf_counter", lambda: next(clock))
    assert common.median_seconds(lambda: calls.append(1), repeats=3, warmup=2) == 1.0
    assert len(calls) == 5
    with pytest.raises(ValueError, match="repeats=0"):
        common.median_seconds(lambda: None, repeats=0)


def test_machine_describes_cores_versions_and_load(common):
    import torch

    info = common.machine()
    assert info["cpus"] == os.cpu_count() and info["torch"] == torch.__version__
    assert info["torch_threads"] == torch.get_num_threads() and len(info["load_average"]) == 3
    assert "aeflib" in info and "gpu" in info


def test_quality_runs_estimators_first_and_refits_rows_whose_fusion_changed(monkeypatch):
    """Work order of the sweep, and the fingerprint that makes an AEF row be measured again."""
    monkeypatch.syspath_prepend(str(BENCH))
    import quality

    from aeflib import fusion

    order = quality.work_order([42, 43], quality.parse_settings("0.2,r0.64,0.5"))
    # every method at every setting, plus the oracle (an upper bound) at the first two settings only
    assert len(order) == 2 * 3 * len(quality.BASELINES + quality.VARIANTS) + 2 * 2
    assert [s for _, s, m in order if m == quality.ORACLE] == [("target", 0.2), ("ratio", 0.64)] * 2
    first = order[: 2 * 2 * len(quality.ESTIMATORS)]
    assert {m for _, _, m in first} == set(quality.ESTIMATORS) and {s for _, s, _ in first} == {("target", 0.2),
                                                                                             ("ratio", 0.64)}
    assert order[len(first)][2] == fusion.DEFAULT_METHOD
    assert order[len(first) + 2 * 2][2] == quality.ORACLE  # right after the default's rows
    assert all(s == ("target", 0.5) for _, s, _ in order[-len(quality.BASELINES + quality.VARIANTS) * 2:])
    assert quality.fingerprint("vector") is None
    before = quality.fingerprint("aef-element")
    assert before["variant"] == "aef-element" and "normalize_with" in before

    def fuse(scores, method="aef", *, normalize_with="zscore", temperature=1.0):  # another default normalisation
        raise AssertionError("not called")

    monkeypatch.setattr(quality.fusion, "fuse", fuse)
    assert quality.fingerprint("aef-element")["normalize_with"] == "zscore"
    with pytest.raises(SystemExit, match=r"'x1' is neither a parameter target \(0.2\) nor a ratio \(r0.64\)"):
        quality.parse_settings("0.2,x1")


def test_quality_paper_table_gives_each_tasks_relative_change_beside_the_papers(monkeypatch, capsys):
    """Known answer: a method scoring half of dense on every task shows −50 %, beside LLM-Pruner's own change."""
    monkeypatch.syspath_prepend(str(BENCH))
    import quality

    from aeflib.paper import PAPER_TASKS

    dense = {"paper7": {t: {"metric": "acc", "value": 0.6, "n": 30} for t in PAPER_TASKS}, "paper7_avg": 0.6}
    row = {"seed": 42, "target_params": 0.2, "pruning_ratio": 0.34, "method": "vector", "paper7_avg": 0.3,
           "paper7": {t: {"metric": "acc", "value": 0.3, "n": 30} for t in PAPER_TASKS}}
    ratio_row = {**row, "target_params": None, "pruning_ratio": 0.64}
    quality.paper_drops({"dense": dense, "rows": [row, ratio_row]})
    lines = capsys.readouterr().out.splitlines()
    # LLM-Pruner's LLaMA-7B: BoolQ 73.18 dense, 61.44 vector-wise at 20 % -> -16 %; it has no table at ratio 0.64
    assert any(line.startswith("| 20 % | vector | 42 | -50 (-16) | -50 (-8) |") for line in lines)
    assert any(line.startswith("| ratio 0.64 | vector | 42 | -50 (–) |") for line in lines)
    chance = "| – | chance (points) | – | 50 | 50 | 25 | 50 | 25 | 25 | 25 | 35.7 |"
    assert chance in lines


def test_quality_summarize_names_a_missing_or_foreign_file(monkeypatch, tmp_path):
    """`--summarize` on a wrong path, on an .items.json or on broken JSON says which file and why, not a KeyError."""
    monkeypatch.syspath_prepend(str(BENCH))
    import quality

    with pytest.raises(SystemExit, match="no such result file"):
        quality.load_result(tmp_path / "nope.json")
    items = tmp_path / "q_s42.items.json"
    items.write_text(json.dumps({"dense": {}}))
    with pytest.raises(SystemExit, match=r"not a quality sweep result \(missing \['model', 'max_windows', 'rows'\]\)"):
        quality.load_result(items)
    broken = tmp_path / "q_s43.json"
    broken.write_text("{")
    with pytest.raises(SystemExit, match="q_s43.json: not JSON"):
        quality.load_result(broken)


@pytest.mark.parametrize("script", ["fusion_choices.py"])
def test_fusion_choices_smoke_prints_alpha_agreement_and_held_out_losses(smoke, script):
    out = _ok(smoke(script))
    line = next(x for x in out.splitlines() if x.startswith("seed 42"))
    assert "α_fine: channel" in line and "agreed: channel" in line and "fine alone" in line
    row = smoke(script).json("fusion_choices.json")["rows"][0]
    assert set(row["alpha_fine"]) == {"head", "channel"} and all(0 <= a <= 1 for a in row["alpha_fine"].values())
    assert all(0 <= s <= 1 for s in row["agreed_share"].values())
    # the search starts at the element-wise estimate alone and keeps a blend only if it lowers the held-out loss
    assert row["holdout_loss"]["chosen"] <= row["holdout_loss"]["fine alone"]


def test_quality_markdown_tables_sit_between_their_markers_in_docs_results():
    # `quality.py --summarize ... --markdown` prints the sweep's tables; they live in docs/results.md (the book), the
    # README links there
    text = (ROOT / "docs" / "results.md").read_text()
    for marker, header in (("sweep-means", "| setting | method | seeds | params removed |"),
                           ("sweep-paper", "| setting | method | seeds | boolq (acc) |")):
        start, end = text.find(f"<!-- {marker}:start -->"), text.find(f"<!-- {marker}:end -->")
        assert 0 <= start < end, f"docs/results.md lacks the {marker} markers"
        assert header in text[start:end], f"docs/results.md: no {header!r} table between the {marker} markers"
    assert "(docs/results.md)" in (ROOT / "README.md").read_text()
