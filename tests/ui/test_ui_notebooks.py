"""Notebooks 01 and 04 run in a real JupyterLab, driven by headless Chromium like a learner would.

What it does: copies notebooks 01 and 04 into a temporary root with tiny parameters written into their
``parameters`` cell; runs stages 02/03 headless (papermill, tiny-llama) into 04's run folder in a subprocess while
``jupyter lab`` starts (127.0.0.1, random port and token, temporary root/runtime/settings) and 01 runs; opens each
notebook, runs *Run → Run All Cells* from the menu, waits for the kernel to go idle, saves it (*File → Save
Notebook*) and checks: every cell ran (its prompt shows a number; a collapsed solution cell, whose prompt JupyterLab
hides, by the execution count JupyterLab saved for it), no traceback or error output, an image in every figure
cell, no error in the log console, and (04) that moving the explorer's slider with the keyboard and switching its
criterion redraw the plan and change the count shown.
Screenshots of each notebook go to ``runs/ui-screenshots/`` (or ``$AEFLIB_UI_SCREENSHOTS``), with
``ui-report.json`` (per-cell outputs, stderr, image sizes, phase times).

Skipped unless ``AEFLIB_UI_TESTS=1`` (``make test-ui`` sets it, installs Debian's chromium and playwright).
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ui,
              pytest.mark.skipif(os.environ.get("AEFLIB_UI_TESTS") != "1",
                                 reason="browser test: run `make test-ui` (sets AEFLIB_UI_TESTS=1)")]

from ui_harness import (  # noqa: E402
    REPORT,
    UISession,
    expected_figure_cells,
    prompt_number,
    rewrite_parameters,
    which_chromium,
)

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = Path(os.environ.get("AEFLIB_NOTEBOOKS", REPO / "notebooks"))   # as orchestration.runner.notebooks_dir()
SHOTS = Path(os.environ.get("AEFLIB_UI_SCREENSHOTS", REPO / "runs" / "ui-screenshots")).resolve()
# A finished tiny-llama run folder holding scores.safetensors and fusion.json: skips the headless 02/03 (~1 min)
PREPARED = os.environ.get("AEFLIB_UI_PREPARED_RUN")
STRUCTURES, PRUNING = "01_model_and_structures", "04_pruning"
PREPARE = ("import sys; from aeflib.orchestration.runner import run; "
           "from aeflib.orchestration.settings import RunSettings; "
           "run(RunSettings.tiny(), name='run', runs_root=sys.argv[1], stages=['02', '03'])")
PREPARE_TIMEOUT_S = 600
RUN_TIMEOUT_S = 420            # one notebook's Run All; tiny models take seconds, a loaded 2-core box minutes

PANEL = ".jp-NotebookPanel:not(.lm-mod-hidden)"

# Per cell of the visible notebook: type, prompt, output texts, stderr texts, images (natural and shown size).
CELLS_JS = """() => {
  const nb = document.querySelector('PANEL .jp-Notebook');
  return [...nb.querySelectorAll('.jp-Cell')].map((c, i) => ({
    index: i,
    type: c.classList.contains('jp-CodeCell') ? 'code' : (c.classList.contains('jp-MarkdownCell') ? 'markdown' : 'raw'),
    prompt: (c.querySelector('.jp-InputArea-prompt') || {}).textContent || '',
    outputs: [...c.querySelectorAll('.jp-OutputArea-output')].map(o => ({
      mime: o.dataset.mimeType || '', text: (o.innerText || '').slice(0, 2000)})),
    stderr: [...c.querySelectorAll('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')]
      .map(o => (o.innerText || '').slice(0, 2000)),
    images: [...c.querySelectorAll('.jp-RenderedImage img')].map(im => ({
      natural: [im.naturalWidth, im.naturalHeight], shown: [im.clientWidth, im.clientHeight],
      complete: im.complete})),
    widgets: c.querySelectorAll('.jupyter-widgets').length,
  }));
}""".replace("PANEL", PANEL)

STATE_JS = """() => {
  const panel = document.querySelector('PANEL');
  if (!panel) return null;
  const ind = panel.querySelector('.jp-Notebook-ExecutionIndicator');
  const prompts = [...panel.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')].map(p => p.textContent.trim());
  const bar = document.querySelector('#jp-main-statusbar');
  return {status: ind ? ind.dataset.status : null, bar: bar ? bar.innerText : '', prompts};
}""".replace("PANEL", PANEL)


def _finish_notebook(page, notebook: str, label: str, timings: dict, problems: dict) -> None:
    """Screenshot a run notebook page by page and report errors shown in JupyterLab's log console."""
    started = time.perf_counter()
    _shot_pages(page, SHOTS, notebook)
    timings[f"screenshots {label}"] = round(time.perf_counter() - started, 1)
    log = _log_console(page)
    if "Traceback" in log or "Error" in log:
        problems[notebook].append(f"log console shows an error: {log[-3000:]}")


def _shot_pages(page, folder: Path, stem: str) -> list[Path]:
    """Screenshots of the whole notebook: one tall image, and viewport-sized pages scrolled through the panel."""
    paths = []
    scroller = f"{PANEL} .jp-WindowedPanel-outer"
    # the bottom of the last cell, not scrollHeight: JupyterLab pads the notebook so it can scroll past its end
    height = page.evaluate(f"""() => {{
      const s = document.querySelector('{scroller}'), cells = s.querySelectorAll('.jp-Cell');
      const last = cells[cells.length - 1];
      return Math.ceil(last.getBoundingClientRect().bottom - s.getBoundingClientRect().top + s.scrollTop) + 24;
    }}""")
    client = page.evaluate(f"() => document.querySelector('{scroller}').clientHeight")
    top, n = 0, 1
    while True:
        page.evaluate(f"(y) => document.querySelector('{scroller}').scrollTop = y", top)
        page.wait_for_timeout(300)
        path = folder / f"{stem}-page{n:02d}.png"
        page.screenshot(path=str(path))
        paths.append(path)
        if top + client >= height:
            break
        top, n = top + int(client * 0.9), n + 1
    page.evaluate(f"() => document.querySelector('{scroller}').scrollTop = 0")
    viewport = page.viewport_size
    full_height = min(16000, viewport["height"] + height - client + 40)
    page.set_viewport_size({"width": viewport["width"], "height": full_height})
    page.wait_for_timeout(800)
    path = folder / f"{stem}-full.png"
    page.screenshot(path=str(path), full_page=True)
    paths.append(path)
    page.set_viewport_size(viewport)
    page.wait_for_timeout(300)
    return paths


KERNEL_JS = """() => {
  const bar = document.querySelector('#jp-main-statusbar');
  const dialog = document.querySelector('.jp-Dialog');
  return {status: bar ? bar.innerText : '', dialog: dialog ? dialog.innerText : null};
}"""


def _open(session: UISession, context, name: str, notes: list[str], timeout: float = 180):
    """Open a notebook in a new tab and wait until its kernel is connected and idle.

    A "Select Kernel" dialog (JupyterLab shows it when the kernel specs load late) is answered with its default,
    Python 3, as a learner would; the test notes it.
    """
    page = context.new_page()
    page.goto(f"{session.base_url}/lab/tree/{name}.ipynb?reset&token={session.token}")
    page.wait_for_selector(f"{PANEL} .jp-Notebook .jp-Cell", timeout=120_000)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = page.evaluate(KERNEL_JS)
        if state["dialog"] is not None:
            notes.append(f"{name}: dialog on opening: {' '.join(state['dialog'].split())[:200]}")
            page.locator(".jp-Dialog .jp-mod-accept").click()
        elif re.search(r"\| Idle\b", state["status"]):
            return page
        page.wait_for_timeout(500)
    raise TimeoutError(f"{name}: kernel not idle after {timeout} s; status bar: {state}")


def _run_all(page) -> None:
    """Run → Run All Cells, from the menu bar."""
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    label = page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$"))
    page.locator(".lm-Menu-item", has=label).click()


def _wait_idle(page, timeout: float = RUN_TIMEOUT_S) -> dict:
    """Until no cell is queued or running and the kernel is idle, twice in a row (1 s apart)."""
    deadline, stable, state = time.monotonic() + timeout, 0, None
    page.wait_for_timeout(1500)     # let the first cell get queued
    while time.monotonic() < deadline:
        state = page.evaluate(STATE_JS)
        busy = (state is None or state["status"] != "idle" or not re.search(r"\| Idle\b", state["bar"])
                or any("*" in p for p in state["prompts"]))
        stable = 0 if busy else stable + 1
        if stable >= 2:
            return state
        page.wait_for_timeout(1000)
    raise TimeoutError(f"the notebook was still running after {timeout} s: {state}")


def _save(page, path: Path, timeout: float = 60) -> dict:
    """File → Save Notebook, then the notebook as JupyterLab wrote it (its model: execution counts, metadata).

    A collapsed cell (``jupyter.source_hidden``, the exercises' solutions) shows no prompt, so whether it ran can
    only be read from the notebook model; the saved file is that model.
    """
    before = path.stat().st_mtime_ns
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^File$")).click()
    label = page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Save( Notebook)?$"))
    page.locator(".lm-Menu-item", has=label).first.click()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.stat().st_mtime_ns != before:
            try:
                return json.loads(path.read_text())
            except json.JSONDecodeError:        # caught while being written
                pass
        page.wait_for_timeout(250)
    raise TimeoutError(f"{path.name}: JupyterLab did not save the notebook within {timeout} s")


def _log_console(page) -> str:
    """Text of JupyterLab's log console for the current notebook (View → Show Log Console).

    Errors raised in widget callbacks (a slider's ``observe``) show only here, not under the cell.
    """
    if not page.locator("#jp-main-statusbar .jp-LogConsoleStatusItem:not(.lm-mod-hidden)").count():
        return ""                           # the status bar shows the log item only when something was logged
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^View$")).click()
    page.locator(".lm-Menu-item", has=page.locator(".lm-Menu-itemLabel",
                                                   has_text=re.compile(r"^Show Log Console$"))).click()
    panel = page.locator(".jp-LogConsolePanel").first
    panel.wait_for(timeout=10_000)
    page.wait_for_timeout(500)
    return panel.inner_text()


def _problems(cells: list[dict], expected_images: dict[int, str], saved: dict) -> list[str]:
    """What a learner would call broken: a cell that did not run, an error shown, a figure cell without an image.

    ``cells`` are the rendered cells (:data:`CELLS_JS`), ``saved`` the notebook JupyterLab saved after the run.
    """
    problems = []
    if len(saved["cells"]) != len(cells):
        return [f"the page shows {len(cells)} cells, the saved notebook holds {len(saved['cells'])}"]
    for c, model in zip(cells, saved["cells"], strict=True):
        if c["type"] != "code":
            continue
        count = model.get("execution_count")
        if model.get("metadata", {}).get("jupyter", {}).get("source_hidden"):
            if count is None:       # collapsed: JupyterLab hides the prompt, the model still has the count
                problems.append(f"cell {c['index']} (collapsed) did not run (no execution count in the saved notebook)")
        elif prompt_number(c["prompt"]) is None or count is None:
            problems.append(f"cell {c['index']} did not run (prompt {c['prompt']!r}, execution count {count})")
        for text in c["stderr"]:
            if "Traceback" in text or "Error" in text:
                problems.append(f"cell {c['index']} shows an error: {text[:600]}")
        for o in c["outputs"]:
            if "Traceback" in o["text"] and not any("Traceback" in t for t in c["stderr"]):
                problems.append(f"cell {c['index']} shows a traceback: {o['text'][:600]}")
    for i, why in expected_images.items():
        images = [im for im in cells[i]["images"] if im["natural"][0] > 0]
        if not images:
            problems.append(f"cell {i} ({why}) shows no image")
    return problems


def _check_notebook(session, context, name: str, timings: dict, details: dict, notes: list[str]) -> tuple:
    expected = expected_figure_cells(session.root / f"{name}.ipynb")
    started = time.perf_counter()
    page = _open(session, context, name, notes)
    timings[f"{name}: open + kernel idle"] = round(time.perf_counter() - started, 1)
    started = time.perf_counter()
    _run_all(page)
    _wait_idle(page)
    timings[f"{name}: Run All Cells"] = round(time.perf_counter() - started, 1)
    session.record_processes()
    cells = page.evaluate(CELLS_JS)
    saved = _save(page, session.root / f"{name}.ipynb")
    details[name] = {"expected_images": expected, "cells": cells,
                     "execution_counts": [c.get("execution_count") for c in saved["cells"] if c["cell_type"] == "code"]}
    return page, cells, _problems(cells, expected, saved)


def _explorer_state(cell) -> dict:
    img = cell.locator(".widget-output .jp-RenderedImage img")
    return {"label": cell.locator(".widget-html-content").first.inner_text(),
            "readout": cell.locator(".widget-readout").first.inner_text(),
            "criterion": cell.locator(".widget-dropdown select").first.input_value(),
            "image": img.first.get_attribute("src")[-64:] if img.count() else None}


def _params_after(label: str) -> int:
    m = re.search(r"→\s*([\d,]+)\s*parameters", label)
    assert m, f"explorer label has no parameter count: {label!r}"
    return int(m.group(1).replace(",", ""))


def _wait_for(cell, done, what: str, timeout: float = 60) -> dict:
    """Poll the explorer until ``done(state)``; the kernel redraws after each change it receives."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = _explorer_state(cell)
        if done(now):
            return now
        cell.page.wait_for_timeout(250)
    raise AssertionError(f"explorer did not show {what} within {timeout} s: it shows {_explorer_state(cell)} "
                         "(an error in the widget callback shows only in the log console: see below)")


def _exercise_explorer(page, folder: Path, steps: int = 4) -> dict:
    """Move the slider right with the keyboard, one step (0.05) at a time, then switch the criterion.

    After each change the label must show the new ratio / criterion and the figure must be redrawn (its PNG
    differs from the previous one), as a learner watching the explorer expects.
    """
    cell = page.locator(f"{PANEL} .jp-CodeCell", has=page.locator(".widget-slider")).first
    cell.scroll_into_view_if_needed()
    before = state = _explorer_state(cell)
    cell.screenshot(path=str(folder / "04-explorer-before.png"))
    handle = cell.locator(".noUi-handle").first
    handle.focus()
    for _ in range(steps):
        previous = state
        target = f"{min(0.9, float(previous['readout']) + 0.05):.2f}"
        handle.press("ArrowRight")
        state = _wait_for(cell, lambda s, t=target, p=previous: s["readout"] == t
                          and f"pruning ratio {t} " in s["label"] and s["image"] != p["image"],
                          f"the plan and its figure at ratio {target}")
    moved = state
    cell.screenshot(path=str(folder / "04-explorer-slider-moved.png"))
    options = cell.locator(".widget-dropdown select option").all_inner_texts()
    other = next(o for o in options if o != moved["criterion"])
    cell.locator(".widget-dropdown select").first.select_option(other)
    switched = _wait_for(cell, lambda s: s["label"].startswith(f"{other}: pruning ratio {target} ")
                         and s["image"] != moved["image"], f"the plan and its figure for criterion {other!r}")
    cell.screenshot(path=str(folder / "04-explorer-criterion-switched.png"))
    return {"before": before, "slider_moved": moved, "criterion_switched": switched, "other": other}


def test_notebooks_01_and_04_in_jupyterlab():
    assert which_chromium(), "Debian's chromium is not installed (make test-ui installs it)"
    from aeflib.orchestration.settings import RunSettings

    t0, load0, cpu0 = time.perf_counter(), os.getloadavg()[0], resource.getrusage(resource.RUSAGE_CHILDREN)
    shutil.rmtree(SHOTS, ignore_errors=True)
    SHOTS.mkdir(parents=True)
    REPORT.append(f"screenshots and ui-report.json: {SHOTS}")
    timings, details, problems, notes, explorer = {}, {}, {}, [], None
    session = UISession(python=Path(sys.executable), keep_dir=SHOTS,
                        env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    try:
        values = {**RunSettings.tiny().parameters(), "interactive": True, "progress": True}
        # 01 gets a run folder of its own: it runs while the headless 02/03 write metrics.json in "run"
        for name, run_dir in ((STRUCTURES, "run-01"), (PRUNING, "run")):
            rewrite_parameters(NOTEBOOKS / f"{name}.ipynb", session.root / f"{name}.ipynb",
                               {**values, "run_dir": run_dir})
        # 04 reads the scores of 02 and 03: run them headless (papermill) while JupyterLab starts and 01 runs
        prep_started = started = time.perf_counter()
        if PREPARED:     # a run folder of an earlier run with these settings (iterating on the UI part)
            shutil.copytree(PREPARED, session.root / "run")
            prep = None
        else:
            prep = session.spawn("stages-02-03", [sys.executable, "-c", PREPARE, str(session.root)])
        session.start_lab()
        context = session.start_browser().context
        timings["JupyterLab + Chromium start"] = round(time.perf_counter() - started, 1)

        page, _, problems[STRUCTURES] = _check_notebook(session, context, STRUCTURES, timings, details, notes)
        _finish_notebook(page, STRUCTURES, "01", timings, problems)
        page.close()

        if prep is not None:
            if prep.wait(timeout=PREPARE_TIMEOUT_S) != 0:
                log = (SHOTS / "stages-02-03.log").read_text()[-3000:]
                raise AssertionError(f"stages 02/03 failed headless (exit {prep.returncode}):\n{log}")
            timings["stages 02+03 headless, alongside the above"] = round(time.perf_counter() - prep_started, 1)
        page, _, problems[PRUNING] = _check_notebook(session, context, PRUNING, timings, details, notes)
        started = time.perf_counter()
        try:
            explorer = _exercise_explorer(page, SHOTS)
        except AssertionError as err:
            problems[PRUNING].append(f"explorer: {err}")
        timings["explorer slider + dropdown"] = round(time.perf_counter() - started, 1)
        details["explorer"] = explorer
        _finish_notebook(page, PRUNING, "04", timings, problems)
        session.record_processes()
    finally:
        leftovers = session.stop()
        timings["total"] = round(time.perf_counter() - t0, 1)
        cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
        timings["CPU time of the processes it started (user+sys)"] = round(
            cpu.ru_utime - cpu0.ru_utime + cpu.ru_stime - cpu0.ru_stime, 1)
        REPORT.append(f"load average at start / end: {load0:.1f} / {os.getloadavg()[0]:.1f} "
                      f"on {os.cpu_count()} CPUs (other work on the machine slows every phase)")
        report = {"timings": timings, "problems": problems, "notes": notes, "details": details}
        (SHOTS / "ui-report.json").write_text(json.dumps(report, indent=1, ensure_ascii=False))
        REPORT.extend(f"{k}: {v} s" for k, v in timings.items())
        REPORT.extend(f"note: {n}" for n in notes)
        REPORT.append(f"processes started: {len(session.seen)}; left behind: {len(leftovers)}")

    assert not leftovers, f"processes left behind: {leftovers}"
    if any(problems.values()):
        pytest.fail("\n\n".join(f"{nb}: {p}" for nb, found in problems.items() for p in found), pytrace=False)
    assert explorer is not None
    ratio_before = float(explorer["before"]["readout"])
    assert float(explorer["slider_moved"]["readout"]) == pytest.approx(min(0.9, ratio_before + 0.2)), explorer
    # the label's parameter count follows the slider (the figure was checked to change at every step)
    assert _params_after(explorer["slider_moved"]["label"]) < _params_after(explorer["before"]["label"]), explorer
    assert explorer["criterion_switched"]["label"].startswith(explorer["other"] + ":"), explorer
