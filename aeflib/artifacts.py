"""The run folder: where each notebook stage reads its inputs and writes its outputs.

One run folder (``runs/<name>/`` from ``aef run``, or any ``run_dir`` a notebook is given) holds::

    metrics.json            one section per stage ("model", "importance", "fusion", "pruning", "recovery",
                            "evaluation"), each merged in by its stage
    scores.safetensors      importance per criterion and group set (02), plus the fused criterion (03)
    fusion.json             fusion weights per (layer, kind) and the method's evidence (03)
    plan.json               the pruning plan (04)
    pruned/  recovered/     model folders written by aeflib.io.save (04, 05)
    figures/*.png           every figure a stage shows
    notebooks/*.ipynb       executed notebooks (``aef run`` only)
    report.md               the readable summary (``aef run`` only)

``metrics.json``'s ``memory`` section holds each stage's peak resident memory, measured in its own kernel
(:meth:`RunDir.record_peak_memory`, the notebooks' last code cell).

``RunDir`` is a thin helper over that layout: named paths, atomic JSON writes, metrics merged per section, figures
saved as PNG, and clear errors when a stage's input is missing ("run notebook 02_importance first").

Source: [ours] (every stage's output is a plain, serialisable value in the run folder).
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

from aeflib.files import jsonable, write_text
from aeflib.orchestration.settings import STAGE_NAMES, producers

__all__ = ["PRODUCERS", "RunDir", "peak_rss_mib", "pruned_layers", "setup_notebook"]

log = logging.getLogger(__name__)

#: artifact -> the notebook that writes it (named in "missing input" errors), from the stage records
PRODUCERS = producers()


def peak_rss_mib() -> float:
    """This process's peak resident memory so far (its high-water mark), in MiB.

    Linux reports ``ru_maxrss`` in KiB, macOS in bytes; the value is the process's own peak (a notebook kernel's,
    when called in a notebook), not its children's.

    Returns:
        Peak resident set size in MiB (2**20 bytes), rounded to 0.1.

    Source: [ours] (``resource.getrusage(RUSAGE_SELF)``, the same figure as ``VmHWM`` in ``/proc/self/status``).
    """
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)


class RunDir:
    """A run folder; created on first use.

    Args:
        path: The folder (relative paths resolve against the current directory, which is the notebook's folder
            when a learner runs a notebook in Jupyter).
    """

    def __init__(self, path: str | os.PathLike):
        self.root = Path(path).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    def __truediv__(self, name: str) -> Path:
        return self.root / name

    # ---- reading inputs --------------------------------------------------------------------------------------
    def require(self, name: str) -> Path:
        """Path of an input artifact that an earlier stage must have written.

        Raises:
            FileNotFoundError: Naming the artifact, the folder and the notebook that writes it.
        """
        path = self.root / name
        if not path.exists():
            producer = PRODUCERS.get(name, "an earlier stage")
            raise FileNotFoundError(f"{path} does not exist: run notebook {producer} with run_dir={str(self.root)!r} "
                                    "first (or `aef run`, which runs the stages in order)")
        return path

    def load_json(self, name: str) -> Any:
        """Parse a JSON artifact (see :meth:`require`)."""
        return json.loads(self.require(name).read_text())

    def metrics(self) -> dict[str, Any]:
        """``metrics.json`` as a dict (empty before stage 01 ran)."""
        path = self.root / "metrics.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def check_model(self, model: str) -> None:
        """Refuse to mix stages of different models in one folder.

        Raises:
            ValueError: If ``metrics.json`` records another model than ``model``.
        """
        recorded = self.metrics().get("model", {}).get("name")
        if recorded is not None and recorded != str(model):
            raise ValueError(f"run folder {self.root} was made with model {recorded!r}, this notebook was given "
                             f"model={model!r}; use another run_dir or the same model")

    # ---- writing outputs -------------------------------------------------------------------------------------
    def save_json(self, name: str, value: Any) -> Path:
        """Write ``value`` as indented JSON, atomically; returns the path."""
        path = self.root / name
        write_text(path, json.dumps(jsonable(value), indent=1) + "\n")
        return path

    def merge_metrics(self, section: str, values: dict[str, Any]) -> Path:
        """Replace one section of ``metrics.json`` (the other sections stay); returns the path."""
        metrics = self.metrics()
        metrics[section] = jsonable(values, section)
        return self.save_json("metrics.json", metrics)

    def record_peak_memory(self, stage: str) -> float:
        """Write this kernel's peak resident memory into ``metrics.json``'s ``memory`` section under ``stage``.

        Call it in a notebook's last code cell, so that the peak covers every cell before it; the other stages'
        entries stay. ``report.md`` shows the peak beside the stage's run time.

        Args:
            stage: The stage notebook's name, e.g. ``"02_importance"``.

        Returns:
            The peak in MiB (see :func:`peak_rss_mib`).

        Raises:
            ValueError: If ``stage`` is not a stage notebook's name.

        Source: [ours].
        """
        if stage not in STAGE_NAMES:
            raise ValueError(f"record_peak_memory: unknown stage {stage!r}; stages: {', '.join(STAGE_NAMES)}")
        peak = peak_rss_mib()
        memory = dict(self.metrics().get("memory", {}))
        memory[stage] = {"peak_rss_mib": peak}
        self.merge_metrics("memory", {s: memory[s] for s in STAGE_NAMES if s in memory})
        log.info("stage %s: peak resident memory %.0f MiB", stage, peak)
        return peak

    def save_figure(self, figure, name: str) -> Path:
        """Save a matplotlib Figure as ``figures/<name>.png`` (100 dpi); returns the path."""
        path = self.root / "figures" / f"{Path(name).stem}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=100, bbox_inches="tight")
        return path

    def listing(self) -> list[str]:
        """Files and folders in the run folder, relative, sorted (folders end in ``/``)."""
        items = []
        for p in sorted(self.root.iterdir()):
            if p.name.startswith("."):
                continue
            items.append(p.name + "/" if p.is_dir() else p.name)
        return items


def pruned_layers(adapter, model, layers: list[int] | tuple[int, int] | None) -> range:
    """The decoder layers a stage prunes: ``[start, stop)`` from the notebook parameter, or the adapter default.

    Args:
        adapter: The model's structure adapter.
        model: The model.
        layers: ``None`` (LLM-Pruner's 4..n-2, tiny models 1..n-1) or ``[start, stop]``.

    Raises:
        ValueError: If ``layers`` is not ``None`` or two integers ``0 <= start < stop <= n_layers``.
    """
    n = adapter.n_layers(model)
    if layers is None:
        return range(*adapter.default_layer_range(model))
    if len(layers) != 2 or not 0 <= layers[0] < layers[1] <= n:
        raise ValueError(f"layers={layers!r}: give None or [start, stop] with 0 <= start < stop <= {n}")
    return range(int(layers[0]), int(layers[1]))


def _silence_tqdm_auto() -> None:
    """Make ``tqdm.auto.tqdm`` / ``tqdm.autonotebook.tqdm`` a plain tqdm that is always disabled.

    Modules that import ``from tqdm.auto import tqdm`` afterwards (transformers' GGUF loader is imported on first
    use) get it; its notebook class would draw a widget even under ``TQDM_DISABLE=1``.
    """
    import tqdm.std

    with warnings.catch_warnings():              # autonotebook warns "in notebook mode" on stderr
        warnings.simplefilter("ignore")
        import tqdm.auto
        import tqdm.autonotebook

    class SilentTqdm(tqdm.std.tqdm):
        def __init__(self, *args: Any, **kwargs: Any):
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    def silent_trange(*args: Any, **kwargs: Any) -> SilentTqdm:
        return SilentTqdm(range(*args), **kwargs)

    for module in (tqdm.auto, tqdm.autonotebook):
        module.tqdm, module.trange = SilentTqdm, silent_trange


def setup_notebook(progress: bool = True, level: int = logging.WARNING) -> None:
    """Prepare a notebook kernel: figures display inline, output stays readable.

    Figures from :mod:`aeflib.plots` are pyplot-free ``Figure`` objects; this registers the inline PNG formatter
    so that a returned figure displays once. aeflib logs at ``level``; without ``progress`` no progress bars.

    Turns off transformers' and datasets' loading bars always, and every tqdm bar when ``progress`` is False
    (how papermill runs call it). tqdm reads ``TQDM_DISABLE`` when it is first imported, so call this before
    importing the rest of aeflib (``aef run`` also sets the variable for its kernels). In a kernel ``tqdm.auto``
    is tqdm's notebook class, which ignores ``TQDM_DISABLE`` (a frozen widget in the saved notebook, e.g.
    transformers' GGUF conversion): without ``progress`` it becomes a tqdm that is always disabled.
    """
    if not progress:
        os.environ["TQDM_DISABLE"] = "1"
        _silence_tqdm_auto()
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    try:
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
    except ImportError:  # pragma: no cover - datasets is a dependency
        pass
    warnings.filterwarnings("ignore", category=FutureWarning)     # deprecation notes of the pinned libraries
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("aeflib").setLevel(level)
    for noisy in ("lm-eval", "lm_eval", "peft", "accelerate"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        from IPython import get_ipython
        from matplotlib_inline.backend_inline import set_matplotlib_formats

        if get_ipython() is not None:
            set_matplotlib_formats("png")
    except ImportError:  # pragma: no cover - outside Jupyter
        pass
