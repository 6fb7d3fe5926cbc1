"""Helpers of the browser test: a throw-away JupyterLab, headless system Chromium, process bookkeeping.

Everything a UI run starts lives under one temporary folder (notebook root, Jupyter runtime/config/settings, the
Chromium profile) and descends from the test process; :class:`UISession` records those PIDs while they run and
:meth:`UISession.stop` ends them (JupyterLab's process group, each kernel's session, the browser) and returns the
ones still alive, so the test can assert that nothing was left behind.
"""

from __future__ import annotations

import ast
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["CHROMIUM", "CHROMIUM_ARGS", "REPORT", "UISession", "expected_figure_cells", "free_port",
           "rewrite_parameters"]

REPORT: list[str] = []                  # lines printed at the end of the pytest run (see conftest.py)

CHROMIUM = "/usr/bin/chromium"
# headless, no sandbox (we run as root), nothing talking to the network on its own; the profile is a new empty dir
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-default-apps", "--disable-extensions", "--no-default-browser-check"]
VIEWPORT = {"width": 1440, "height": 900}

# JupyterLab user settings of the throw-away server: render every cell (no windowing, so the DOM holds all cells
# and screenshots show them), no news / update toast.
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                       "checkForUpdates": False},
}


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- notebooks ----------------------------------------------------------------------------------------------------
def _parameters_cell(nb: dict) -> dict:
    for cell in nb["cells"]:
        if cell["cell_type"] == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            return cell
    raise ValueError("notebook has no cell tagged 'parameters'")


def _literal(value) -> str:
    """Python source of a parameter value, strings in double quotes like the notebooks write them."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    return repr(value)


def rewrite_parameters(source: Path, target: Path, values: dict) -> dict:
    """Copy a notebook, replacing the values of its ``parameters`` cell in place (comments and layout stay).

    Only names the cell assigns are replaced; the notebook keeps looking like the one a learner edits.

    Returns:
        The values actually written (``values`` restricted to the declared names).

    Raises:
        ValueError: If an assignment to replace spans several lines.
    """
    nb = json.loads(source.read_text())
    cell = _parameters_cell(nb)
    lines = "".join(cell["source"]).split("\n")
    written = {}
    for node in ast.parse("\n".join(lines)).body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            continue
        name = node.targets[0].id
        if name not in values:
            continue
        if node.value.lineno != node.value.end_lineno:
            raise ValueError(f"parameter {name!r} spans lines {node.value.lineno}-{node.value.end_lineno}; "
                             "only one-line assignments can be rewritten")
        i = node.value.lineno - 1
        line = lines[i].encode()              # ast offsets are in UTF-8 bytes
        new, old = _literal(values[name]).encode(), line[node.value.col_offset:node.value.end_col_offset]
        rest = line[node.value.end_col_offset:]
        if rest.strip().startswith(b"#"):     # keep the comments aligned
            pad = len(rest) - len(rest.lstrip())
            rest = b" " * max(1, pad + len(old) - len(new)) + rest.lstrip()
        lines[i] = (line[:node.value.col_offset] + new + rest).decode()
        written[name] = values[name]
    text = "\n".join(lines)
    cell["source"] = [ln + "\n" for ln in text.split("\n")[:-1]] + [text.split("\n")[-1]]
    for c in nb["cells"]:                     # start clean, as a learner opening a fresh notebook
        if c["cell_type"] == "code":
            c["outputs"], c["execution_count"] = [], None
    target.write_text(json.dumps(nb, indent=1, ensure_ascii=False))
    return written


def expected_figure_cells(path: Path) -> dict[int, str]:
    """Code cells that must show an image: index (among all cells) → why.

    A cell whose last line is ``fig`` returns a matplotlib figure; the plan explorer draws one in its Output widget.
    """
    nb = json.loads(path.read_text())
    expected = {}
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        src = "".join(cell["source"]).strip()
        if src.splitlines() and src.splitlines()[-1].strip() == "fig":
            expected[i] = "returns a figure"
        elif "plan_explorer(" in src:
            expected[i] = "plan explorer"
    return expected


# ---- processes ----------------------------------------------------------------------------------------------------
def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, start time) of a live process, None when gone (zombies count as gone)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()
    if fields[0] in ("Z", "X"):
        return None
    return fields[0], int(fields[1]), int(fields[19])


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def descendants(root: int) -> dict[int, int]:
    """Live descendants of ``root``: pid → start time (to tell a reused PID apart)."""
    children: dict[int, list[int]] = {}
    starts = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st:
                children.setdefault(st[1], []).append(int(entry))
                starts[int(entry)] = st[2]
    found, todo = {}, [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found[child] = starts[child]
                todo.append(child)
    return found


def alive(pid: int, start: int) -> bool:
    """Is this very process (same PID and start time) still running?"""
    st = _stat(pid)
    return st is not None and st[2] == start


@dataclass
class UISession:
    """A JupyterLab server on 127.0.0.1 (random port and token) and a headless Chromium page logged in to it."""

    python: Path
    keep_dir: Path                     # screenshots and the server log land here
    env: dict = field(default_factory=dict)
    tmp: Path = field(init=False)
    root: Path = field(init=False)
    port: int = field(init=False)
    token: str = field(init=False)
    lab: subprocess.Popen | None = None
    helpers: list[subprocess.Popen] = field(default_factory=list)      # spawn(): e.g. the headless stages
    seen: dict[int, tuple[int, str]] = field(default_factory=dict)   # pid → (start, cmdline) of all we started
    _pw = None
    context = None
    page = None
    log_file = None

    def __post_init__(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="aeflib-ui-"))
        self.root = self.tmp / "root"
        self.root.mkdir()
        self.port, self.token = free_port(), secrets.token_hex(24)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def record_processes(self) -> None:
        """Remember every live descendant of this process (JupyterLab, kernels, driver, browser)."""
        for pid, start in descendants(os.getpid()).items():
            self.seen.setdefault(pid, (start, _cmdline(pid)[:160]))

    def spawn(self, name: str, cmd: list[str]) -> subprocess.Popen:
        """Start a helper command in its own session (output in ``keep_dir/<name>.log``); stop() ends it."""
        self.keep_dir.mkdir(parents=True, exist_ok=True)
        with open(self.keep_dir / f"{name}.log", "w") as log:
            proc = subprocess.Popen(cmd, cwd=self.root, env={**os.environ, **self.env}, stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.helpers.append(proc)
        self.record_processes()
        return proc

    # ---- JupyterLab -----------------------------------------------------------------------------------------------
    def start_lab(self, timeout: float = 120) -> None:
        """Start ``jupyter lab`` in its own process group and wait until its API answers."""
        settings = self.tmp / "lab-settings"
        for name, value in LAB_SETTINGS.items():
            path = settings / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(value))
        env = {**os.environ, **self.env,
               "JUPYTER_CONFIG_DIR": str(self.tmp / "jupyter-config"),
               "JUPYTER_RUNTIME_DIR": str(self.tmp / "jupyter-runtime"),
               "IPYTHONDIR": str(self.tmp / "ipython"),
               "JUPYTER_PLATFORM_DIRS": "1"}
        cmd = [str(self.python.parent / "jupyter"), "lab", "--no-browser", "--ip=127.0.0.1", f"--port={self.port}",
               "--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}",
               f"--ServerApp.root_dir={self.root}", f"--LabApp.user_settings_dir={settings}",
               f"--LabApp.workspaces_dir={self.tmp / 'lab-workspaces'}",
               "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
               "--LabApp.extension_manager=readonly", "--ServerApp.terminals_enabled=False"]
        if os.geteuid() == 0:                  # containers and CI run as root
            cmd.append("--allow-root")
        self.keep_dir.mkdir(parents=True, exist_ok=True)
        self.log_file = open(self.keep_dir / "jupyterlab.log", "w")   # noqa: SIM115 - closed in stop()
        self.lab = subprocess.Popen(cmd, cwd=self.root, env=env, stdout=self.log_file, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.lab.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with {self.lab.returncode}; see {self.keep_dir}/jupyterlab.log")
            try:
                with urllib.request.urlopen(f"{self.base_url}/api/status?token={self.token}", timeout=2) as r:
                    if r.status == 200:
                        self.record_processes()
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"jupyter lab did not answer on {self.base_url} within {timeout} s")

    # ---- browser --------------------------------------------------------------------------------------------------
    def start_browser(self):
        """Launch the system Chromium headless with a new empty profile; returns the page."""
        from playwright.sync_api import sync_playwright

        self._pw = sync_playwright().start()
        self.context = self._pw.chromium.launch_persistent_context(
            str(self.tmp / "chromium-profile"), executable_path=CHROMIUM, headless=True, chromium_sandbox=False,
            args=CHROMIUM_ARGS, viewport=VIEWPORT, device_scale_factor=1)
        self.page = self.context.pages[0] if self.context.pages else self.context.new_page()
        self.record_processes()
        return self.page

    # ---- teardown -------------------------------------------------------------------------------------------------
    def stop(self, grace: float = 10) -> dict[int, str]:
        """End the browser, the driver, JupyterLab and its kernels; returns {pid: cmdline} of those still alive.

        Never raises: every step runs even when an earlier one failed.
        """
        self.record_processes()
        if self.context is not None:
            try:
                self.context.close()
            except Exception:  # noqa: BLE001 - the browser may be gone already
                pass
        if self._pw is not None:
            try:
                self._pw.stop()
            except Exception:  # noqa: BLE001
                pass
        for proc in self.helpers:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(5)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    pass
        if self.lab is not None and self.lab.poll() is None:
            # SIGTERM: the server shuts its kernels down; then the whole group is killed in case it hangs
            try:
                os.killpg(self.lab.pid, signal.SIGTERM)
                self.lab.wait(grace)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
            try:
                os.killpg(self.lab.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                self.lab.wait(5)
            except subprocess.TimeoutExpired:
                pass
        # whatever we started and is still there (kernels run in their own sessions, browser in its own group)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and self.leftovers():
            time.sleep(0.2)
        own_group = os.getpgid(0)
        for pid, (start, _) in self.seen.items():
            if not alive(pid, start):
                continue
            try:
                group = os.getpgid(pid)
                if group != own_group:       # a kernel's session or the browser's group: end all of it
                    os.killpg(group, signal.SIGKILL)
                else:                        # e.g. the playwright driver, in the test's own group: only that PID
                    os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and self.leftovers():
            time.sleep(0.2)
        if self.log_file is not None:
            self.log_file.close()
        shutil.rmtree(self.tmp, ignore_errors=True)
        return self.leftovers()

    def leftovers(self) -> dict[int, str]:
        return {pid: cmd for pid, (start, cmd) in self.seen.items() if alive(pid, start)}


def which_chromium() -> str | None:
    """The system Chromium, when installed."""
    return CHROMIUM if os.access(CHROMIUM, os.X_OK) else shutil.which("chromium")


def prompt_number(text: str) -> int | None:
    """``[12]:`` → 12; ``[ ]:`` / ``[*]:`` → None."""
    m = re.search(r"\[(\d+)\]", text)
    return int(m.group(1)) if m else None

