"""The kernel a stage notebook runs in: exactly this interpreter, its stderr in a log, why it died, clean outputs.

    kernel_manager(stderr_log, launched)  -> a jupyter_client KernelManager class for papermill
    death_cause(returncode, oom_before)   -> "killed by signal 9 (SIGKILL): often the out-of-memory killer"
    oom_kills()                           -> the cgroup's out-of-memory kill count (None where not readable)
    clean_outputs(notebook, stderr_log)   -> stderr streams moved to the log, progress widgets dropped

The kernel is not looked up by name: a ``python3`` kernel spec on ``JUPYTER_PATH`` (or in the user's data folder)
would start another Python, without aeflib or with another version of it. The stage kernel is
``sys.executable -m ipykernel_launcher``, the interpreter running ``aef``.

Imports only :mod:`aeflib.files` (the runner builds on it).

Source: [ours] (issue 28: a dead kernel, a decoy kernel spec and a frozen progress widget).
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
from pathlib import Path

from aeflib.files import write_text

__all__ = ["WIDGET_MIME", "clean_outputs", "death_cause", "kernel_manager", "oom_kills"]

log = logging.getLogger(__name__)

#: the output of a Jupyter widget (a tqdm.notebook bar): a reference to live state that an executed notebook lacks
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"

_CGROUP_EVENTS = Path("/sys/fs/cgroup/memory.events")     # cgroup v2: "oom_kill N" counts the OOM killer's kills


def kernel_manager(stderr_log: Path, launched: list[subprocess.Popen]) -> type:
    """A papermill ``kernel_manager_class``: the kernel is this interpreter, its own stderr goes to ``stderr_log``.

    Cell output (Python-level stderr included) still goes into the executed notebook; only what the kernel process
    prints outside any cell (the TCP warning, a fatal error's trace) lands in the log, not in the terminal.

    Args:
        stderr_log: File the kernel process's stderr is appended to (its folder is created).
        launched: Each kernel process started is appended here (to read its exit status, or kill it).

    Returns:
        A subclass of jupyter_client's ``AsyncKernelManager`` whose kernel spec is
        ``[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]``, whatever the kernel name.
    """
    from jupyter_client.kernelspec import KernelSpec
    from jupyter_client.manager import AsyncKernelManager

    spec = KernelSpec(argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                      display_name=f"Python ({sys.executable})", language="python")

    class StageKernelManager(AsyncKernelManager):
        @property
        def kernel_spec(self) -> KernelSpec:   # not looked up by name: never another interpreter
            return spec

        async def _async_launch_kernel(self, kernel_cmd, **kw):
            stderr_log.parent.mkdir(parents=True, exist_ok=True)
            with open(stderr_log, "ab") as f:
                kw["stderr"] = f
                result = await super()._async_launch_kernel(kernel_cmd, **kw)
            process = getattr(self.provisioner, "process", None)
            if process is not None:
                launched.append(process)
            return result

    return StageKernelManager


def oom_kills() -> int | None:
    """How many processes the out-of-memory killer has killed in this cgroup (v2 ``memory.events``), or None."""
    try:
        for line in _CGROUP_EVENTS.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
    except (OSError, ValueError):
        pass
    return None


def death_cause(returncode: int | None, oom_before: int | None = None) -> str:
    """Why a kernel process ended, in words, from its exit status (negative: the signal that killed it).

    Args:
        returncode: ``Popen.returncode`` of the kernel (None: unknown, e.g. it is still shutting down).
        oom_before: :func:`oom_kills` before the stage started; a rise since then names the OOM killer for sure.

    Returns:
        E.g. "killed by signal 9 (SIGKILL): often the out-of-memory killer (the stage needed more memory than this
        machine or container allows)".
    """
    if returncode is None:
        return "the kernel process stopped answering (exit status unknown)"
    if returncode >= 0:
        return f"exited with status {returncode} (a cell or library ended the process)"
    number = -returncode
    try:
        name = signal.Signals(number).name
    except ValueError:
        name = "unknown signal"
    text = f"killed by signal {number} ({name})"
    if number == signal.SIGKILL:
        after = oom_kills()
        if oom_before is not None and after is not None and after > oom_before:
            return text + ": by the out-of-memory killer (the cgroup's oom_kill count rose); the stage needs more " \
                          "memory than this machine or container allows"
        return text + ": often the out-of-memory killer (the stage needed more memory than this machine or " \
                      "container allows)"
    if number == signal.SIGSEGV:
        return text + ": a crash in native code (torch, a tokenizer, a BLAS library)"
    if number == signal.SIGABRT:
        return text + ": a native library aborted"
    return text


def clean_outputs(notebook: Path, stderr_log: Path) -> int:
    """Move the executed notebook's stderr streams to ``stderr_log`` and drop its widget outputs; rewrite it.

    A progress widget (``tqdm.auto`` picks tqdm's notebook class in a kernel, which ignores ``TQDM_DISABLE``) is a
    reference to live widget state: the saved notebook shows it frozen (``0%| 0/272``). Stderr streams (warnings,
    text progress bars) go to the stage's log with their cell's index, so nothing is lost; error outputs stay.

    Args:
        notebook: An executed notebook (rewritten atomically when it changes).
        stderr_log: The stage's kernel log (appended to).

    Returns:
        The number of outputs removed.
    """
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    removed, moved = 0, []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        kept = []
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and out.get("name") == "stderr":
                moved.append(f"--- cell {index} stderr ---\n{''.join(out.get('text', ''))}")
            elif WIDGET_MIME in out.get("data", {}):
                pass
            else:
                kept.append(out)
                continue
            removed += 1
        cell["outputs"] = kept
    if removed:
        if moved:
            stderr_log.parent.mkdir(parents=True, exist_ok=True)
            with open(stderr_log, "a", encoding="utf-8") as f:
                f.write("\n".join(moved).rstrip("\n") + "\n")
        nb.metadata.pop("widgets", None)       # the widget state those outputs referred to
        write_text(notebook, nbformat.writes(nb))
    return removed
