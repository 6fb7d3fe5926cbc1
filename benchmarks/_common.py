"""Helpers shared by the benchmark scripts: atomic JSON output, a description of the machine, median timing.

The scripts are run as ``python benchmarks/<name>.py``, so this folder is on ``sys.path`` and they import these with
``from _common import write_json`` (no package, no install).

    write_json(obj, path)                     -> None    temp file in the same folder, then os.replace (atomic)
    machine()                                 -> dict    platform, cores, torch/aeflib versions, threads, load, GPU
    median_seconds(fn, repeats=5, warmup=1)   -> float   median wall seconds of fn() after warm-up calls
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

from aeflib.files import atomic_file

__all__ = ["machine", "median_seconds", "write_json"]


def write_json(obj: Any, path: str | os.PathLike) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically (a reader never sees a half-written file).

    The text goes to a temporary file in the same folder first, which then replaces ``path`` (``os.replace`` is
    atomic within one file system); the folder is created if missing. Values JSON cannot encode are written with
    ``str`` (paths, dtypes).
    """
    with atomic_file(path) as tmp, open(tmp, "w") as f:
        json.dump(obj, f, indent=1, default=str)


def machine() -> dict[str, Any]:
    """Where a benchmark ran: platform, CPU count, Python/torch/aeflib versions, torch threads, load, GPU name.

    ``load_average`` (1, 5, 15 minutes) tells how busy the machine was: on a shared 2-core machine a load above ~2
    means other processes competed for the cores and absolute times are inflated (ratios measured in the same run
    much less so).
    """
    import torch

    import aeflib

    out: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "aeflib": aeflib.__version__,
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return out


def median_seconds(
    fn: Callable[[], Any], repeats: int = 5, warmup: int = 1, sync: Callable[[], Any] | None = None
) -> float:
    """Median wall-clock seconds of ``fn()`` over ``repeats`` calls, after ``warmup`` untimed calls.

    Args:
        fn: The work to time (its result is discarded).
        repeats: Timed calls, >= 1.
        warmup: Untimed calls first (caches, lazy initialisation, allocator), >= 0.
        sync: Called before starting and before stopping each clock (e.g. ``torch.cuda.synchronize`` on a GPU).

    Raises:
        ValueError: If ``repeats`` < 1 or ``warmup`` < 0.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0; got repeats={repeats}, warmup={warmup}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if sync:
            sync()
        start = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
