"""Recovery: LoRA fine-tuning of a pruned model on instruction (or plain) text, merged back into its weights.

Entry point::

    lora(model, tokenizer, adapter, dataset="qa", steps=..., ...) -> RecoveryResult (merged model + loss curve)

The paper's third stage (docs/paper.md §4): LoRA with r=8, alpha=16, dropout 0.05 on every attention and MLP
projection (``adapter.lora_targets``), yahma/alpaca-cleaned in the Alpaca prompt template with prompt tokens masked,
lr 1e-4, batch 64, cutoff 256, bf16. LLM-Pruner runs this with ``transformers.Trainer``; here it is a plain PyTorch
loop (AdamW, linear warmup and decay, gradient clipping 1.0 and gradient accumulation over micro-batches, as the
Trainer defaults do) with a *step budget*, so that CPU runs are possible and the loss of every step is returned.
LoRA wraps ``nn.Linear`` modules of any shape, so physically pruned layers with per-layer widths need nothing
special; after training the adapters are merged (``merge_and_unload``) and the model keeps its pruned shapes.

Datasets (``DATASETS``): ``"alpaca-cleaned"`` (the paper's; needs the hub, or ``data_files=``), ``"qa"`` (shipped
question/answer pairs, offline default), ``"wikipedia"`` / ``"lee-news"`` (shipped plain text cut into
``cutoff``-token windows, every token trained), or a list of ``{"instruction", "input", "output"}`` records.

Precision: fp16 *training* is refused — it gave NaN losses in LLM-Pruner issues #13 and #81 — and an fp16 model is
trained with bf16 autocast over fp32 master weights, then cast back (known failure 11).

Source: [LLM-Pruner code] ``post_training.py`` (after tloen/alpaca-lora ``finetune.py``) and
``LLMPruner/utils/prompter.py`` (the Alpaca template, prompt masking, EOS rule); [paper] §4 hyperparameters;
[ours] the step-budgeted loop, token-weighted accumulation, dtype policy and offline datasets.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from torch import nn
from tqdm.auto import tqdm

from aeflib import data
from aeflib.models.adapters import StructureAdapter
from aeflib.models.registry import resolve_dtype

__all__ = [
    "ALPACA_TEMPLATE",
    "DATASETS",
    "RecoveryResult",
    "alpaca_prompt",
    "lora",
    "text_windows",
    "tokenize_instruction",
]

log = logging.getLogger(__name__)

#: The Alpaca prompt template exactly as LLM-Pruner's ``Prompter`` (alpaca-lora ``templates/alpaca.json``) has it.
ALPACA_TEMPLATE = {
    "prompt_input": (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
    ),
    "prompt_no_input": (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\n{instruction}\n\n### Response:\n"
    ),
}

#: Named datasets: name -> how its records become training examples.
DATASETS = {
    "alpaca-cleaned": "instructions: hub yahma/alpaca-cleaned (the paper's); validation held out from train",
    "qa": "instructions: shipped question/answer pairs (offline default); validation from the 'valid' split",
    "wikipedia": "plain text: shipped Wikipedia sample, cutoff-token windows; validation from 'valid'",
    "lee-news": "plain text: shipped ABC news, cutoff-token windows; validation from 'valid'",
}

_FP16_REFUSED = (
    "dtype='float16' training is refused: fp16 LoRA training of pruned LLaMA models gave NaN losses "
    "(LLM-Pruner issues #13 and #81). Use dtype='bfloat16' (autocast, the paper's setting) or 'float32'; an fp16 "
    "model is trained in bf16 over fp32 master weights and cast back to fp16 after merging."
)
_IGNORE = -100  # label of tokens without loss (prompt, padding), as torch's cross_entropy ignore_index

Example = tuple[list[int], list[int]]  # (input_ids [L], labels [L]) of one sequence, L <= cutoff


@dataclass
class RecoveryResult:
    """What :func:`lora` returns.

    Attributes:
        model: The recovered model with the LoRA updates merged in (the same object that was passed in).
        train_loss: Mean token NLL (nats) of each optimizer step, in order; ``len == steps``.
        val_loss_before: Mean token NLL on the validation examples before training (None when ``val_size=0``).
        val_loss_after: The same after merging.
        settings: Every hyperparameter and data count of the run (JSON-able).
        seconds: Wall time of the whole call.
    """

    model: nn.Module = field(repr=False)
    train_loss: list[float]
    val_loss_before: float | None
    val_loss_after: float | None
    settings: dict[str, Any]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """Return everything but the model, JSON-serialisable."""
        return {"train_loss": list(self.train_loss), "val_loss_before": self.val_loss_before,
                "val_loss_after": self.val_loss_after, "settings": dict(self.settings), "seconds": self.seconds}


# ---------------------------------------------------------------------------------------------------------- data
def alpaca_prompt(instruction: str, input: str = "", output: str = "") -> str:
    r"""Fill the Alpaca template; the response ``output`` (if any) follows ``### Response:\n`` directly.

    Source: [LLM-Pruner code] ``Prompter.generate_prompt`` (the input section only when ``input`` is non-empty).
    """
    if input:
        prompt = ALPACA_TEMPLATE["prompt_input"].format(instruction=instruction, input=input)
    else:
        prompt = ALPACA_TEMPLATE["prompt_no_input"].format(instruction=instruction)
    return prompt + output


def _tokenize_records(records: Sequence[dict], tokenizer: Any, cutoff: int, train_on_inputs: bool) -> list[Example]:
    """Tokenize instruction records in two batched calls (full texts, prompts); see :func:`tokenize_instruction`."""
    if not records:
        return []
    full = [alpaca_prompt(r["instruction"], r.get("input") or "", r["output"]) for r in records]
    prompts = [alpaca_prompt(r["instruction"], r.get("input") or "") for r in records]
    kwargs = {"truncation": True, "max_length": cutoff, "padding": False, "return_attention_mask": False}
    full_ids = tokenizer(full, **kwargs)["input_ids"]
    prompt_ids = tokenizer(prompts, **kwargs)["input_ids"] if not train_on_inputs else [[]] * len(records)
    eos = tokenizer.eos_token_id
    examples = []
    for ids, prompt in zip(full_ids, prompt_ids, strict=True):
        ids = list(ids)
        if eos is not None and ids and ids[-1] != eos and len(ids) < cutoff:
            ids.append(eos)  # LLM-Pruner's rule: the response ends with EOS unless truncated
        labels = [_IGNORE] * len(prompt) + ids[len(prompt):]  # [L]: no loss on the prompt
        examples.append((ids, labels[: len(ids)]))
    return examples


def tokenize_instruction(record: dict, tokenizer: Any, cutoff: int = 256, train_on_inputs: bool = False) -> Example:
    """Turn one instruction record into a training sequence with its labels.

    The full Alpaca text (prompt + output) is tokenized with the tokenizer's default special tokens, truncated to
    ``cutoff`` tokens, and EOS is appended when it fits. Unless ``train_on_inputs``, the labels of the first
    ``len(tokenize(prompt))`` tokens are -100, so only the response (and EOS) is trained.

    Args:
        record: ``{"instruction": str, "input": str (may be ""), "output": str}``.
        tokenizer: A Hugging Face tokenizer.
        cutoff: Maximum tokens per sequence.
        train_on_inputs: Train on the prompt tokens too.

    Returns:
        ``(input_ids, labels)``, two lists of the same length L <= ``cutoff``.

    Source: [LLM-Pruner code] ``post_training.py`` ``tokenize`` / ``generate_and_tokenize_prompt``.
    """
    return _tokenize_records([record], tokenizer, cutoff, train_on_inputs)[0]


def text_windows(text: str, tokenizer: Any, cutoff: int = 256) -> list[Example]:
    """Cut plain text into non-overlapping ``cutoff``-token windows (the last partial one dropped), all trained.

    Returns:
        ``[(input_ids, labels)]`` with ``labels == input_ids``, each of length ``cutoff``.

    Source: [ours]; the tokenization (default special tokens, one pass) follows ``aeflib.evaluation.perplexity``.
    """
    ids = tokenizer(text, return_attention_mask=False, verbose=False)["input_ids"]
    return [(ids[s : s + cutoff], ids[s : s + cutoff]) for s in range(0, len(ids) - cutoff + 1, cutoff)]


def _n_val(val_size: int | float, pool: int) -> int:
    """Validation examples asked for: a count (int >= 0) or a share of ``pool`` (float in [0, 1))."""
    if isinstance(val_size, float):
        if not 0 <= val_size < 1:
            raise ValueError(f"val_size={val_size} as a share must be in [0, 1); or give a count (int)")
        return round(val_size * pool)
    if val_size < 0:
        raise ValueError(f"val_size={val_size} must be >= 0")
    return int(val_size)


def _check_records(records: Sequence[Any]) -> list[dict[str, str]]:
    out = []
    for i, r in enumerate(records):
        if not isinstance(r, dict) or not r.get("instruction") or not r.get("output"):
            raise ValueError(f"instruction record {i} needs non-empty 'instruction' and 'output' keys; got {r!r}")
        out.append({"instruction": str(r["instruction"]), "input": str(r.get("input") or ""),
                    "output": str(r["output"])})
    if not out:
        raise ValueError("dataset is an empty list; give at least two instruction records")
    return out


def _examples(
    dataset: str | Sequence[dict], tokenizer: Any, cutoff: int, train_on_inputs: bool, val_size: int | float,
    seed: int, data_files: Any,
) -> tuple[list[Example], list[Example], str]:
    """Return (train examples, validation examples, description of the source)."""
    rng = random.Random(seed)
    if isinstance(dataset, str):
        if dataset not in DATASETS:
            raise ValueError(f"unknown recovery dataset {dataset!r}; choose one of {sorted(DATASETS)} "
                             "or pass a list of instruction records")
        if dataset in ("wikipedia", "lee-news"):
            train = text_windows(data.load_corpus(dataset, "train").text(), tokenizer, cutoff)
            val = text_windows(data.load_corpus(dataset, "valid").text(), tokenizer, cutoff)
            rng.shuffle(val)
            return train, val[: _n_val(val_size, len(val))], f"{dataset}: train/valid windows"
        if dataset == "qa":
            train_records, val_records = data.load_instructions("qa", "train"), data.load_instructions("qa", "valid")
            rng.shuffle(val_records)
            val_records = val_records[: _n_val(val_size, len(val_records))]
            source = "qa: train/valid splits"
        else:  # alpaca-cleaned: one hub split; hold out val_size records as LLM-Pruner does (val_set_size=2000)
            records = data.load_instructions(dataset, "train", data_files=data_files)
            train_records, val_records, source = *_hold_out(records, val_size, rng), f"{dataset}: held-out split"
    else:
        records = _check_records(dataset)
        train_records, val_records = _hold_out(records, val_size, rng)
        source = f"list of {len(records)} records: held-out split"
    train = _tokenize_records(train_records, tokenizer, cutoff, train_on_inputs)
    val = _tokenize_records(val_records, tokenizer, cutoff, train_on_inputs)
    return train, val, source


def _hold_out(records: list[dict], val_size: int | float, rng: random.Random) -> tuple[list[dict], list[dict]]:
    n_val = _n_val(val_size, len(records))
    if n_val >= len(records):
        raise ValueError(f"val_size={val_size} holds out {n_val} of {len(records)} records, leaving none to train on")
    shuffled = list(records)
    rng.shuffle(shuffled)
    return shuffled[n_val:], shuffled[:n_val]


def _targets(example: Example) -> int:
    """Tokens with a loss: labels at positions 1..L-1 that are not -100 (position 0 predicts nothing)."""
    return sum(label != _IGNORE for label in example[1][1:])


def _collate(examples: list[Example], pad_id: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Right-pad a micro-batch: input_ids / attention_mask / labels, each LongTensor [B, L_max]."""
    length = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), length), pad_id, dtype=torch.long)          # [B, L]
    mask = torch.zeros((len(examples), length), dtype=torch.long)               # [B, L]
    labels = torch.full((len(examples), length), _IGNORE, dtype=torch.long)     # [B, L]
    for row, (x, y) in enumerate(examples):
        ids[row, : len(x)], mask[row, : len(x)], labels[row, : len(y)] = torch.tensor(x), 1, torch.tensor(y)
    return ids.to(device), mask.to(device), labels.to(device)


# -------------------------------------------------------------------------------------------------------- training
def _nll_sum(model: nn.Module, batch: tuple[torch.Tensor, ...], autocast: contextlib.AbstractContextManager) -> Any:
    """Summed token NLL of one micro-batch (shifted labels, -100 ignored), computed on fp32 logits."""
    ids, mask, labels = batch
    with autocast:
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits   # [B, L, vocab]
    pred = logits[:, :-1].float()                                                    # [B, L-1, vocab]
    return F.cross_entropy(pred.reshape(-1, pred.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=_IGNORE,
                           reduction="sum")


@torch.no_grad()
def _val_loss(model: nn.Module, val: list[Example], micro: int, pad_id: int, device: torch.device,
              autocast_fn: Any) -> float | None:
    if not val:
        return None
    model.eval()
    total, n = 0.0, sum(map(_targets, val))
    for b in range(0, len(val), micro):
        total += _nll_sum(model, _collate(val[b : b + micro], pad_id, device), autocast_fn()).item()
    return total / n


def _precision(dtype: torch.dtype | str | None, weights: torch.dtype) -> tuple[torch.dtype, torch.dtype]:
    """Return (compute dtype, master weight dtype) for a model whose floating weights are ``weights``."""
    if dtype is None:
        compute = torch.float32 if weights == torch.float32 else torch.bfloat16
    else:
        compute = resolve_dtype(dtype)
        if compute == torch.float16:
            raise ValueError(_FP16_REFUSED)
    master = torch.bfloat16 if (weights == torch.bfloat16 and compute == torch.bfloat16) else torch.float32
    if weights == torch.float16:
        log.warning("model weights are float16: training in %s over float32 master weights instead (fp16 training "
                    "gave NaN, LLM-Pruner #13/#81); weights are cast back to float16 after merging",
                    _name(compute))
    return compute, master


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _schedule(step: int, steps: int, warmup: int) -> float:
    """Linear warmup over ``warmup`` steps, then linear decay; no step has learning rate 0 (Trainer-like)."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    return (steps - step) / (steps - warmup)


def _index_stream(n: int, gen: torch.Generator) -> Iterator[int]:
    while True:  # epochs of seeded permutations
        yield from torch.randperm(n, generator=gen).tolist()


def lora(
    model: nn.Module,
    tokenizer: Any,
    adapter: StructureAdapter,
    dataset: str | Sequence[dict] = "qa",
    *,
    steps: int | None = None,
    batch_size: int = 64,
    micro_batch_size: int = 4,
    lr: float = 1e-4,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.05,
    cutoff: int = 256,
    train_on_inputs: bool = False,
    dtype: torch.dtype | str | None = None,
    val_size: int | float = 64,
    seed: int = 42,
    progress: bool = True,
    warmup_steps: int | None = None,
    max_grad_norm: float = 1.0,
    targets: Sequence[str] | None = None,
    data_files: Any = None,
) -> RecoveryResult:
    """Recover a (pruned) model with LoRA, then merge the adapters into its weights.

    The model is changed in place and returned in eval mode with its shapes, dtypes and ``requires_grad`` flags as
    before; only the weights of the LoRA target modules change. On an error (including a non-finite loss) the
    adapters are removed unmerged and the model is left as it was.

    Args:
        model: A causal LM of a supported family, dense or pruned (any per-layer widths), on any device.
        tokenizer: Its tokenizer; padding uses ``pad_token_id``, else ``eos_token_id``.
        adapter: Its structure adapter; ``adapter.lora_targets`` names the LoRA modules.
        dataset: A key of :data:`DATASETS` or a list of ``{"instruction", "input", "output"}`` records.
        steps: Optimizer steps (the budget). None = 2 epochs over the training examples, as the paper.
        batch_size: Sequences per optimizer step (paper: 64); a multiple of ``micro_batch_size``.
        micro_batch_size: Sequences per forward/backward pass; gradients accumulate over ``batch_size /
            micro_batch_size`` of them, weighted by their loss-bearing tokens.
        lr: Peak AdamW learning rate (paper: 1e-4; weight decay 0).
        r: LoRA rank (paper: 8).
        alpha: LoRA alpha (paper: 16; the update is scaled by ``alpha / r``).
        dropout: LoRA dropout (paper: 0.05).
        cutoff: Maximum tokens per sequence (paper: 256); also the window length of plain-text datasets.
        train_on_inputs: Also train on the prompt tokens of instruction records (paper: False, prompts masked).
        dtype: Training compute dtype: ``"float32"``, ``"bfloat16"`` (autocast over fp32 weights, or pure bf16 for a
            bf16 model), or None = the model's (fp16 models: bf16). ``"float16"`` is refused.
        val_size: Validation examples: a count, or a share in [0, 1) — drawn from the "valid" split of shipped
            datasets, held out of the training records for ``"alpaca-cleaned"`` and lists. 0 = no validation.
        seed: Seed of the data order, hold-out split, LoRA initialisation and dropout (global RNG state is kept).
        progress: Show a tqdm bar with the loss of each step.
        warmup_steps: Linear warmup steps; None = ``min(100, steps // 10)`` (LLM-Pruner: 100 with ~1.5 k steps).
        max_grad_norm: Gradient clipping norm (Trainer default 1.0).
        targets: LoRA module names instead of ``adapter.lora_targets``.
        data_files: ``"alpaca-cleaned"`` only: local files read instead of the hub (see ``aeflib.data``).

    Returns:
        :class:`RecoveryResult` with the merged model, per-step training loss, validation loss before/after.

    Raises:
        ValueError: Unknown dataset, ``dtype="float16"``, batch sizes that do not divide, ``steps`` < 1, bad
            ``val_size``, no pad/eos token, or no example with a trainable token.
        aeflib.data.CorpusUnavailableError: ``"alpaca-cleaned"`` when the hub cannot be reached (offline).
        FloatingPointError: If a training loss is NaN or inf (the model is restored, not merged).

    Source: [LLM-Pruner code] ``post_training.py``: LoraConfig(r, alpha, dropout, bias="none", CAUSAL_LM),
    masked prompts, AdamW; [paper] §4 hyperparameters; [ours] the loop and dtype policy.
    """
    t0 = time.perf_counter()
    if micro_batch_size < 1 or batch_size < micro_batch_size or batch_size % micro_batch_size:
        raise ValueError(f"batch_size={batch_size} must be a positive multiple of micro_batch_size={micro_batch_size}")
    if steps is not None and steps < 1:
        raise ValueError(f"steps={steps} must be >= 1 (or None for 2 epochs)")
    if cutoff < 2:
        raise ValueError(f"cutoff={cutoff} must be >= 2 tokens")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise ValueError("the tokenizer has neither pad_token_id nor eos_token_id; set tokenizer.pad_token")
    weights = next(p.dtype for p in model.parameters() if p.is_floating_point())
    compute, master = _precision(dtype, weights)
    device = next(model.parameters()).device
    use_autocast = compute == torch.bfloat16 and master == torch.float32

    def autocast_fn() -> contextlib.AbstractContextManager:
        return torch.autocast(device.type, dtype=torch.bfloat16) if use_autocast else contextlib.nullcontext()

    train, val, source = _examples(dataset, tokenizer, cutoff, train_on_inputs, val_size, seed, data_files)
    dropped = sum(_targets(e) == 0 for e in train)
    train, val = [e for e in train if _targets(e)], [e for e in val if _targets(e)]
    if not train:
        raise ValueError(f"no training example from {source} has a token to train on (prompts longer than "
                         f"cutoff={cutoff}?)")
    if dropped:
        log.warning("dropped %d training examples whose prompt fills cutoff=%d tokens (nothing to train)", dropped,
                    cutoff)
    steps = steps or math.ceil(2 * len(train) / batch_size)
    warmup = min(100, steps // 10) if warmup_steps is None else warmup_steps
    if not 0 <= warmup < steps:
        raise ValueError(f"warmup_steps={warmup} must be in [0, steps={steps})")
    names = tuple(targets) if targets is not None else tuple(adapter.lora_targets)
    log.info("LoRA recovery on %s: %d train / %d val examples, %d steps of %d (micro %d), %s compute, %s weights",
             source, len(train), len(val), steps, batch_size, micro_batch_size, _name(compute), _name(master))

    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    cast = {n: p.dtype for n, p in model.named_parameters() if p.is_floating_point() and p.dtype != master}
    devices = [device] if device.type == "cuda" else []
    peft_model, merged, losses = None, False, []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            for n, p in model.named_parameters():
                if n in cast:
                    p.data = p.data.to(master)  # exact upcast of fp16/bf16 weights to fp32 masters
            val_before = _val_loss(model, val, micro_batch_size, pad_id, device, autocast_fn)
            config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(names), bias="none",
                                task_type="CAUSAL_LM")
            peft_model = get_peft_model(model, config)
            trainable = [p for p in peft_model.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _schedule(s, steps, warmup))
            stream = _index_stream(len(train), torch.Generator().manual_seed(seed))
            peft_model.train()
            bar = tqdm(range(steps), desc="LoRA recovery", disable=not progress)
            for step in bar:
                batch = [train[next(stream)] for _ in range(batch_size)]
                n_tokens = sum(map(_targets, batch))
                total = 0.0
                for b in range(0, batch_size, micro_batch_size):
                    nll = _nll_sum(peft_model, _collate(batch[b : b + micro_batch_size], pad_id, device),
                                   autocast_fn())
                    (nll / n_tokens).backward()  # token-weighted mean over the whole batch
                    total += nll.item()
                loss = total / n_tokens
                if not math.isfinite(loss):
                    hint = "a lower lr" + ("" if compute == torch.float32 else " or dtype='float32'")
                    raise FloatingPointError(f"training loss is {loss} at step {step} with lr={lr} in "
                                             f"{_name(compute)}; the model is restored unmerged; try {hint}")
                torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(loss)
                bar.set_postfix(loss=f"{loss:.4f}")
            n_trainable = sum(p.numel() for p in trainable)
            peft_model.merge_and_unload()
            merged = True
            val_after = _val_loss(model, val, micro_batch_size, pad_id, device, autocast_fn)
    finally:
        if peft_model is not None and not merged:
            peft_model.unload()  # remove the adapters without merging them
        for n, p in model.named_parameters():
            if n in cast:
                p.data = p.data.to(cast[n])
            p.requires_grad_(flags[n])
            p.grad = None
        model.eval()
    settings = {
        "dataset": dataset if isinstance(dataset, str) else f"list[{len(dataset)}]", "source": source,
        "n_train": len(train), "n_val": len(val), "steps": steps, "epochs": steps * batch_size / len(train),
        "batch_size": batch_size, "micro_batch_size": micro_batch_size, "lr": lr, "warmup_steps": warmup,
        "schedule": "linear warmup + linear decay", "optimizer": "AdamW(weight_decay=0)",
        "max_grad_norm": max_grad_norm, "r": r, "alpha": alpha, "dropout": dropout, "targets": list(names),
        "cutoff": cutoff, "train_on_inputs": train_on_inputs, "compute_dtype": _name(compute),
        "master_dtype": _name(master), "model_dtype": _name(weights),
        "autocast": use_autocast, "trainable_params": n_trainable, "seed": seed, "device": str(device),
        "prompt_template": None if dataset in ("wikipedia", "lee-news") else "alpaca",
    }
    seconds = time.perf_counter() - t0
    log.info("LoRA recovery done in %.1f s: train loss %.4f -> %.4f, val loss %s -> %s", seconds, losses[0],
             losses[-1], val_before, val_after)
    return RecoveryResult(model, losses, val_before, val_after, settings, seconds)
