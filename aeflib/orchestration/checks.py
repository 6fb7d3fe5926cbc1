"""What each run setting may be, checked before any notebook kernel starts: ``RunSettings.validate`` runs them.

    check_settings(settings)     raises ValueError "<field>=<value>: <what is valid>" for the first bad setting

:data:`CHECKS` holds one check per field (the value alone: a range, a registry name); :data:`RELATIONS` holds the
checks between fields and against the model (the layer range and ``show_group`` against the model's depth and
widths, read from its configuration without loading weights). Each rule is what a stage notebook, or a library
function it calls, would otherwise reject minutes into a run — the notebook it protects is named beside it.

Imports nothing of :mod:`aeflib.orchestration` (it sits before :mod:`~aeflib.orchestration.settings`, which calls it).

Source: [ours].
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from aeflib.data import CORPORA, load_corpus
from aeflib.evaluation.perplexity import PROTOCOLS
from aeflib.evaluation.zeroshot import TASK_SETS, local_task_names
from aeflib.fusion import NORMALIZATIONS
from aeflib.importance import ESTIMATORS
from aeflib.models import MODELS
from aeflib.models.adapters import ADAPTERS
from aeflib.models.registry import DTYPES
from aeflib.models.tiny import tiny_config
from aeflib.recovery import DATASETS
from aeflib.stages import METHODS

__all__ = ["CHECKS", "PAPER_MODELS", "RELATIONS", "SEED_MAX", "ModelShape", "check_settings", "model_shape"]

#: the published models whose rows notebook 07 shows (any other model is shown beside llama-7b's)
PAPER_MODELS = ("llama-7b", "vicuna-7b", "bloom-7b1")

#: seeds every seeded library accepts (NumPy's range; torch refuses seeds beyond 2**64)
SEED_MAX = 2**32 - 1
#: aeflib's fusion variants that hold out part of the calibration set (``fusion.split_holdout``: N >= 2)
_HOLDOUT_METHODS = ("aef-layer-tuned", "aef-learned")


# ---- value checks: each returns None when the value is valid, else what is valid ----------------------------------
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _at_least(least: int, what: str, none: str | None = None) -> Callable[[Any], str | None]:
    """An integer >= ``least`` (or None, when ``none`` says what None means)."""
    def check(v: Any) -> str | None:
        if (v is None and none) or (_is_int(v) and v >= least):
            return None
        return f"give an integer >= {least} ({what})" + (f", or None ({none})" if none else "")
    return check


def _positive(what: str) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        return None if _is_number(v) and v > 0 else f"give a finite number > 0 ({what})"
    return check


def _share(v: Any) -> str | None:
    return None if v is None or (_is_number(v) and 0 < v < 1) else "give a number strictly between 0 and 1 (e.g. 0.2)"


def _one_of(choices: Callable[[], Any], what: str) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        known = list(choices())
        return None if isinstance(v, str) and v in known else f"choose {what} from {known}"
    return check


def _estimators() -> Any:
    return ESTIMATORS


def _model(v: Any) -> str | None:
    if isinstance(v, str) and v in MODELS:
        return None
    folder = Path(str(v)).expanduser()
    if not (isinstance(v, str) and v and folder.is_dir()):
        return f"not a registry name ({', '.join(MODELS)}) and not an existing folder"
    config = _read_config(folder / "config.json")       # what models.load reads first (no weights here)
    if config is None:
        return f"{folder / 'config.json'} is missing or not a JSON object; give a checkpoint folder"
    if config.get("model_type") not in ADAPTERS:
        return (f"{folder / 'config.json'} has model_type {config.get('model_type')!r}; supported: "
                f"{sorted(ADAPTERS)}")
    return None


def _layers(v: Any) -> str | None:
    if v is None or (isinstance(v, list | tuple) and len(v) == 2 and all(_is_int(x) for x in v)
                     and 0 <= v[0] < v[1]):
        return None
    return "give None (the model's default) or [start, stop] with 0 <= start < stop, e.g. [4, 30]"


def _criteria(v: Any) -> str | None:
    known = list(_estimators())
    if isinstance(v, list) and v and all(isinstance(c, str) and c in known for c in v) and len(set(v)) == len(v):
        return None
    return f"give a non-empty list of distinct names from {known}"


def _calib_corpus(v: Any) -> str | None:
    usable = [n for n, spec in CORPORA.items() if "train" in spec.splits]   # calibration draws from "train"
    return None if v in usable else f"choose a corpus with a train split from {usable}"


def _seed(v: Any) -> str | None:
    return None if _is_int(v) and 0 <= v <= SEED_MAX else f"give an integer in [0, {SEED_MAX}]"


def _device(v: Any) -> str | None:
    what = 'give "cpu", "cuda", "cuda:N" or "auto" (accelerate places the model)'
    if v in ("cpu", "auto"):
        return None
    if not isinstance(v, str) or not (v == "cuda" or (v.startswith("cuda:") and v[5:].isdigit())):
        return what
    if not torch.cuda.is_available():
        return 'CUDA is not available on this machine (torch.cuda.is_available() is False); give "cpu" or "auto"'
    index, count = int(v[5:] or 0), torch.cuda.device_count()
    return None if index < count else f"this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}"


def _dtype(v: Any) -> str | None:
    return None if v in DTYPES else f"choose one of {list(DTYPES)}"


def _methods() -> Any:
    return METHODS


def _normalizations() -> Any:
    return sorted(NORMALIZATIONS)


def _prompt(v: Any) -> str | None:
    return None if isinstance(v, str) and v else "give a non-empty prompt (notebook 04 generates from it)"


def _recovery_datasets() -> Any:
    return sorted(DATASETS)


def _ppl_datasets(v: Any) -> str | None:
    what = f"give a non-empty list of [corpus, split] pairs; corpora and their splits: " \
           f"{ {n: list(s.splits) for n, s in CORPORA.items()} }"
    ok = isinstance(v, list) and v and all(
        isinstance(p, list | tuple) and len(p) == 2 and p[0] in CORPORA and p[1] in CORPORA[p[0]].splits for p in v)
    return None if ok else what


def _protocols() -> Any:
    return PROTOCOLS


def _zeroshot_tasks(v: Any) -> str | None:
    known = {t for table in TASK_SETS.values() for t in table}
    local = set(TASK_SETS["local"])
    what = f"give a task set ({', '.join(TASK_SETS)}) or distinct task names from {sorted(known)}"
    if v is None:       # stages.evaluate skips zero-shot on None, notebook 06 does not
        return f"notebook 06 shows zero-shot intervals and needs tasks; {what}"
    if isinstance(v, str):
        return None if v in TASK_SETS else what
    if not (isinstance(v, list) and v and len(set(v)) == len(v) and all(isinstance(t, str) for t in v)):
        return what
    unknown = [t for t in v if t not in known]
    missing = sorted(set(v) & local - local_task_names())
    if unknown:
        return f"unknown tasks {unknown}; {what}"
    return f"local tasks {missing} have no data (run `python data/prepare_tasks.py`)" if missing else None


def _efficiency_seq_len(v: Any) -> str | None:
    # stages.evaluate skips efficiency on None; notebook 06 times every model with compare_latency (seq_len >= 1)
    return None if _is_int(v) and v >= 1 else "give an integer >= 1 (notebook 06 times the models at this length)"


def _paper_model(v: Any) -> str | None:
    return None if v in PAPER_MODELS else f"choose a model with published rows from {list(PAPER_MODELS)}"


#: field -> check(value) -> None (valid) or what is valid
CHECKS: dict[str, Callable[[Any], str | None]] = {
    "model": _model,
    "layers": _layers,
    "method": _one_of(_methods, "a method"),
    "target_params": _share,
    "pruning_ratio": _share,
    "calib_corpus": _calib_corpus,
    "calib_n": _at_least(1, "calibration windows"),
    "calib_seq_len": _at_least(2, "tokens per calibration window: a one-token window has no next-token target"),
    "seed": _seed,
    "device": _device,
    "dtype": _dtype,
    "show_group": _at_least(0, "a group index of the first pruned layer"),
    "criteria": _criteria,
    "fisher_memory_gib": lambda v: None if v is None else _positive("GiB of Fisher/gradient sums held at once; or "
                                                                    "None: no limit")(v),
    "fine": _one_of(_estimators, "a criterion"),
    "coarse": _one_of(_estimators, "a criterion"),
    "normalize_with": _one_of(_normalizations, "a normalisation"),
    "temperature": _positive("softmax temperature of the gates"),
    "fusion_steps": _at_least(1, "Adam steps"),
    "fusion_lr": _positive("Adam learning rate"),
    "fusion_patience": _at_least(1, "steps without a lower held-out loss"),
    "prompt": _prompt,
    "max_new_tokens": _at_least(1, "tokens of each greedy sample"),
    "recovery_dataset": _one_of(_recovery_datasets, "a recovery dataset"),
    "recovery_steps": _at_least(1, "LoRA optimizer steps", none="2 epochs"),
    "recovery_batch_size": _at_least(1, "sequences per step"),
    "recovery_micro_batch_size": _at_least(1, "sequences per forward/backward pass"),
    "recovery_lr": _positive("peak learning rate"),
    "recovery_cutoff": _at_least(2, "tokens per sequence"),
    "recovery_val_size": _at_least(0, "validation sequences; 0: no validation"),
    "ppl_datasets": _ppl_datasets,
    "ppl_protocol": _one_of(_protocols, "a perplexity protocol"),
    "ppl_max_windows": _at_least(1, "windows per corpus", none="the whole split"),
    "zeroshot_tasks": _zeroshot_tasks,
    "zeroshot_limit": _at_least(1, "items per task", none="all items"),
    "efficiency_seq_len": _efficiency_seq_len,
    "efficiency_decode_tokens": _at_least(0, "decode steps; 0: prefill only"),
    "efficiency_repeats": _at_least(1, "interleaved timing rounds of notebook 06"),
    "eval_batch_size": _at_least(1, "perplexity windows / zero-shot requests per batch"),
    "paper_model": _paper_model,
}


# ---- the model's shape, without its weights -----------------------------------------------------------------------
@dataclass(frozen=True)
class ModelShape:
    """A model's depth and widths as its configuration states them (no weights loaded).

    Attributes:
        n_layers: Decoder layers.
        n_heads: Query heads per layer (None: unknown, e.g. a pruned checkpoint whose layers differ).
        n_channels: MLP channels per layer (None: unknown).
        source: Where the numbers come from (shown in messages).
    """

    n_layers: int
    n_heads: int | None
    n_channels: int | None
    source: str


def _shape_of(config: dict[str, Any], source: str, per_layer_widths: bool = True) -> ModelShape | None:
    """The shape a ``config.json`` dict states (``num_hidden_layers`` or Bloom's ``n_layer``)."""
    depth = config.get("num_hidden_layers", config.get("n_layer"))
    if not _is_int(depth):
        return None
    heads = config.get("num_attention_heads", config.get("n_head"))
    hidden = config.get("hidden_size", config.get("n_embed"))
    channels = config.get("intermediate_size") or config.get("n_inner") or (4 * hidden if _is_int(hidden) else None)
    if not per_layer_widths:
        heads = channels = None
    return ModelShape(depth, heads if _is_int(heads) else None, channels if _is_int(channels) else None, source)


def _read_config(path: Path) -> dict[str, Any] | None:
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return raw if isinstance(raw, dict) else None


def model_shape(model: str) -> ModelShape | None:
    """Depth and widths of ``model`` from its configuration, without loading weights; None when unknowable.

    Tiny models: their config builder; cached hub models: their ``config.json``; the embedded model and hub models
    not in the cache: :attr:`aeflib.models.registry.ModelSpec.n_layers` (depth only); a folder: its ``config.json``
    (an aeflib pruned checkpoint's layers may differ in width, so only its depth is used).

    Args:
        model: A registry name or a checkpoint folder.

    Returns:
        :class:`ModelShape`, or None if no configuration can be read offline.
    """
    if model in MODELS:
        spec = MODELS[model]
        if spec.source == "tiny":
            config = tiny_config(model)
            return _shape_of({**config.to_dict(), "num_hidden_layers": config.num_hidden_layers},
                             f"{model}'s tiny config")
        config = None
        if spec.hub_id:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(spec.hub_id, "config.json")
            config = _read_config(Path(cached)) if isinstance(cached, str) else None
        if config is not None:
            return _shape_of(config, f"{model}'s config.json")
        depth = spec.n_layers
        return None if depth is None else ModelShape(depth, None, None, f"the registry entry of {model}")
    folder = Path(model)
    config = _read_config(folder / "config.json")
    return None if config is None else _shape_of(config, str(folder / "config.json"),
                                                 per_layer_widths=not (folder / "aeflib.json").is_file())


# ---- relations: each returns None or the whole message ------------------------------------------------------------
def _one_amount(s: Any) -> str | None:
    if (s.pruning_ratio is None) == (s.target_params is None):
        return ("give exactly one of pruning_ratio (share of heads/channels per pruned layer) or target_params "
                f"(share of all parameters); got pruning_ratio={s.pruning_ratio}, target_params={s.target_params}")
    return None


def _fused_are_estimated(s: Any) -> str | None:
    # notebook 02 compares fine and coarse (analysis.agreement); notebook 03 fuses them: both must be estimated
    estimated = list(s.criteria) + ([s.method] if s.method in _estimators() and s.method not in s.criteria else [])
    missing = [f"{name}={value!r}" for name, value in (("fine", s.fine), ("coarse", s.coarse))
               if value not in estimated]
    return None if not missing else (f"{', '.join(missing)}: not among the criteria estimated in 02 ({estimated}); "
                                     "add it to criteria")


def _holdout(s: Any) -> str | None:
    if s.method in _HOLDOUT_METHODS and s.calib_n < 2:
        return (f"calib_n={s.calib_n}: method {s.method!r} holds out calibration windows to judge its choice; give "
                "calib_n >= 2")
    return None


def _micro_batches(s: Any) -> str | None:
    if s.recovery_batch_size % s.recovery_micro_batch_size:
        return (f"recovery_batch_size={s.recovery_batch_size}: give a multiple of recovery_micro_batch_size="
                f"{s.recovery_micro_batch_size} (gradients accumulate over whole micro-batches)")
    return None


def _enough_documents(s: Any) -> str | None:
    # data.calibration draws calib_n windows from distinct train documents of at least calib_seq_len tokens; a
    # token covers at least one UTF-8 byte (byte-level BPE, byte fallback), so a document's bytes bound its tokens
    if not CORPORA[s.calib_corpus].shipped:
        return None                 # a hub corpus: its size is not known offline
    corpus = load_corpus(s.calib_corpus, "train")
    if s.calib_n > len(corpus):
        return (f"calib_n={s.calib_n}: calibration windows come from distinct documents and {s.calib_corpus!r} "
                f"train has {len(corpus)}; give calib_n <= {len(corpus)}")
    longest = sorted((len(doc.encode()) for doc in corpus.documents), reverse=True)
    bound = longest[s.calib_n - 1] + 2           # + BOS/EOS the tokenizer may add
    if s.calib_seq_len > bound:
        return (f"calib_seq_len={s.calib_seq_len}: {s.calib_corpus!r} train has fewer than calib_n={s.calib_n} "
                f"documents of {s.calib_seq_len} tokens (its {s.calib_n} longest have at most {bound} tokens); give "
                f"calib_seq_len <= {bound} or a smaller calib_n")
    return None


def _against_the_model(s: Any) -> str | None:
    shape = model_shape(s.model)
    if shape is None:
        return None
    if s.layers is not None and s.layers[1] > shape.n_layers:
        return (f"layers={s.layers!r}: {s.model} has {shape.n_layers} decoder layers ({shape.source}); give "
                f"[start, stop] with 0 <= start < stop <= {shape.n_layers}")
    widths = [w for w in (shape.n_heads, shape.n_channels) if w is not None]
    if len(widths) == 2 and s.show_group >= min(widths):
        return (f"show_group={s.show_group}: notebook 01 prints head and channel {s.show_group} of the first pruned "
                f"layer; {s.model} has {shape.n_heads} heads and {shape.n_channels} channels per layer "
                f"({shape.source}); give 0..{min(widths) - 1}")
    return None


#: checks between fields and against the model, run once every field is valid on its own
RELATIONS: tuple[Callable[[Any], str | None], ...] = (_one_amount, _fused_are_estimated, _holdout, _micro_batches,
                                                      _enough_documents, _against_the_model)


def check_settings(settings: Any) -> None:
    """Check every field of ``settings`` (:data:`CHECKS`), then the relations between them (:data:`RELATIONS`).

    Args:
        settings: A :class:`~aeflib.orchestration.settings.RunSettings`.

    Raises:
        ValueError: ``"<field>=<value>: <what is valid>"`` for the first bad field, or a relation's message.
        KeyError: A field without a check (every parameter needs one: add it to :data:`CHECKS`).
    """
    for name in settings.__dataclass_fields__:
        value = getattr(settings, name)
        problem = CHECKS[name](value)
        if problem:
            raise ValueError(f"{name}={value!r}: {problem}")
    for relation in RELATIONS:
        problem = relation(settings)
        if problem:
            raise ValueError(problem)
