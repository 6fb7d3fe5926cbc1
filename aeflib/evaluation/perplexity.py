"""Perplexity under a named protocol: every number carries how it was measured.

Entry points::

    perplexity(model, tokenizer, corpus="wikipedia", split="test", protocol="llm-pruner-128") -> PerplexityResult
    PROTOCOLS  # name -> PerplexityProtocol

A protocol fixes how text becomes scored windows: the documents are joined with ``join``, tokenized once (with the
tokenizer's default special tokens when ``bos``, so a LLaMA tokenizer prepends a single BOS to the whole text), cut
into ``seq_len``-token windows every ``stride`` tokens with the trailing partial window dropped; each window is one
forward pass and the loss covers its positions 1..L-1. PPL = exp(mean token NLL) over all scored tokens. PPL at 128
and at 2048 tokens differ greatly, so results are only comparable under the same protocol.

Source: [LLM-Pruner code] ``LLMPruner/evaluator/ppl.py`` ``PPLMetric`` and ``LLMPruner/datasets/ppl_dataset.py``
``process_data`` (``llm-pruner-128``); SparseGPT/Wanda ``eval_ppl`` (``full-2048``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from aeflib.data import Corpus, load_corpus
from aeflib.models.checksum import checksum
from aeflib.models.registry import require_resident

__all__ = ["PROTOCOLS", "PerplexityProtocol", "PerplexityResult", "perplexity"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PerplexityProtocol:
    """How text becomes scored windows.

    ``stride == seq_len`` gives non-overlapping windows (both presets). With ``stride < seq_len`` windows overlap
    and every window after the first scores only its last ``stride`` tokens, so each token is scored once.
    """

    name: str
    seq_len: int  # tokens per window (L)
    stride: int  # tokens between window starts; 1 <= stride <= seq_len
    join: str  # separator between documents before tokenizing
    bos: bool  # tokenize with the tokenizer's default special tokens (add_special_tokens)

    def __post_init__(self) -> None:
        if self.seq_len < 2:
            raise ValueError(f"protocol {self.name!r}: seq_len={self.seq_len} must be >= 2 (one token is context)")
        if not 1 <= self.stride <= self.seq_len:
            raise ValueError(f"protocol {self.name!r}: stride={self.stride} is outside 1..seq_len={self.seq_len}")


PROTOCOLS: dict[str, PerplexityProtocol] = {
    # LLM-Pruner PPLMetric(max_seq_len=128): the paper's WikiText-2 / PTB numbers
    "llm-pruner-128": PerplexityProtocol("llm-pruner-128", seq_len=128, stride=128, join="\n\n", bos=True),
    # SparseGPT / Wanda: 2048-token windows
    "full-2048": PerplexityProtocol("full-2048", seq_len=2048, stride=2048, join="\n\n", bos=True),
}


@dataclass(frozen=True)
class PerplexityResult:
    """A perplexity with its protocol, data and model fingerprint."""

    value: float  # exp(nll)
    nll: float  # mean negative log-likelihood, nats per scored token
    protocol: str
    seq_len: int
    stride: int
    join: str
    bos: bool
    dataset: str
    split: str
    n_windows: int  # windows scored
    n_windows_available: int  # windows the text provides under this protocol
    n_tokens: int  # tokens scored (targets of the loss)
    max_windows: int | None  # the cap requested, None for the full text
    checksum: str  # aeflib.models.checksum.checksum(model)
    dtype: str  # parameter dtype of the model, e.g. "float32"
    # per_window=True only: mean token NLL of each scored window (nats), in window order, for paired intervals
    window_nll: tuple[float, ...] | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as a JSON-serialisable dict (``window_nll`` only when it was measured)."""
        d = dataclasses.asdict(self)
        if self.window_nll is None:
            del d["window_nll"]
        return d

    def __str__(self) -> str:
        part = "" if self.n_windows == self.n_windows_available else f" of {self.n_windows_available}"
        return (
            f"PPL {self.value:.3f} on {self.dataset}/{self.split} ({self.protocol}: {self.seq_len}-token windows, "
            f"{self.n_windows}{part} windows, {self.n_tokens} tokens, {self.dtype}, model {self.checksum})"
        )


def _protocol(protocol: str | PerplexityProtocol) -> PerplexityProtocol:
    if isinstance(protocol, PerplexityProtocol):
        return protocol
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown perplexity protocol {protocol!r}; choose one of {sorted(PROTOCOLS)}")
    return PROTOCOLS[protocol]


def perplexity(
    model: torch.nn.Module,
    tokenizer: Any,
    corpus: str | Corpus = "wikipedia",
    split: str = "test",
    protocol: str | PerplexityProtocol = "llm-pruner-128",
    batch_size: int = 4,
    max_windows: int | None = None,
    progress: bool = True,
    per_window: bool = False,
) -> PerplexityResult:
    r"""Measure the perplexity of a causal LM on a corpus split under a named protocol.

    Args:
        model: A causal LM whose forward takes ``input_ids`` [B, L] and returns ``.logits`` [B, L, vocab]; run on
            the device of its first parameter, in eval mode (its training flag is restored afterwards).
        tokenizer: The model's tokenizer (callable returning ``input_ids``).
        corpus: A ``aeflib.data.CORPORA`` name (loaded with ``split``) or a ``Corpus``.
        split: Split to load when ``corpus`` is a name (shipped corpora: train/valid/test).
        protocol: A key of ``PROTOCOLS`` (``"llm-pruner-128"``, ``"full-2048"``) or a ``PerplexityProtocol``.
        batch_size: Windows per forward pass, >= 1; does not change the result beyond float rounding.
        max_windows: Score only the first this many windows (fast runs); recorded in the result. None = all.
        progress: Show a tqdm bar over batches.
        per_window: Also return each window's mean token NLL (``window_nll``, nats) so that two models can be
            compared window by window (``aeflib.evaluation.paired``); the perplexity itself is unchanged.

    Returns:
        ``PerplexityResult``; ``value`` = exp(mean NLL over scored tokens), logits upcast to fp32 before the loss.

    Raises:
        ValueError: If ``protocol`` is unknown (the message lists the choices), ``batch_size`` or ``max_windows``
            is < 1, the tokenized text is shorter than one window (the message gives both lengths), or the model is
            offloaded by accelerate (``aeflib.models.registry.require_resident``; checked before any forward).

    Source: [LLM-Pruner code] ``PPLMetric``/``process_data``: "\n\n".join, one tokenization, non-overlapping
    windows, trailing partial window dropped, loss on shifted logits, exp of the mean token NLL.
    """
    proto = _protocol(protocol)
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    if max_windows is not None and max_windows < 1:
        raise ValueError(f"max_windows={max_windows} must be >= 1 or None")
    require_resident(model, "perplexity")
    corp = corpus if isinstance(corpus, Corpus) else load_corpus(corpus, split)
    L = proto.seq_len
    text = corp.text(join=proto.join)
    # verbose=False: the whole text is longer than model_max_length on purpose; windows are cut below
    encoded = tokenizer(text, add_special_tokens=proto.bos, return_attention_mask=False, verbose=False)
    ids = torch.as_tensor(encoded["input_ids"], dtype=torch.long).reshape(-1)  # [T]
    if ids.numel() < L:
        raise ValueError(
            f"{corp.name}/{corp.split} tokenizes to {ids.numel()} tokens, fewer than one {L}-token window of "
            f"protocol {proto.name!r}"
        )
    starts = list(range(0, ids.numel() - L + 1, proto.stride))
    n_available = len(starts)
    if max_windows is not None:
        starts = starts[:max_windows]
    windows = torch.stack([ids[s : s + L] for s in starts])  # [W, L]
    # with overlapping windows, window w > 0 scores only targets at positions >= L - stride (label index >= that - 1)
    first_target = L - proto.stride - 1 if proto.stride < L else 0

    param = next(model.parameters())
    device, dtype = param.device, str(param.dtype).removeprefix("torch.")
    was_training = model.training
    model.eval()
    nll_sum = torch.zeros((), dtype=torch.float64)
    n_tokens = 0
    window_nll: list[float] = []
    try:
        with torch.no_grad():
            bar = tqdm(range(0, len(starts), batch_size), desc=f"PPL {corp.name}/{corp.split}", disable=not progress)
            for b in bar:
                batch = windows[b : b + batch_size].to(device)  # [B, L]
                logits = model(input_ids=batch).logits  # [B, L, vocab]
                for row in range(batch.shape[0]):
                    targets = batch[row, 1:]  # [L-1]
                    pred = logits[row, :-1].float()  # [L-1, vocab], fp32 before log-softmax
                    if b + row > 0 and first_target > 0:
                        targets, pred = targets[first_target:], pred[first_target:]
                    window_sum = F.cross_entropy(pred, targets, reduction="sum").double().cpu()
                    nll_sum += window_sum
                    n_tokens += targets.numel()
                    if per_window:
                        window_nll.append(window_sum.item() / targets.numel())
    finally:
        model.train(was_training)

    nll = (nll_sum / n_tokens).item()
    result = PerplexityResult(
        value=math.exp(nll),
        nll=nll,
        protocol=proto.name,
        seq_len=L,
        stride=proto.stride,
        join=proto.join,
        bos=proto.bos,
        dataset=corp.name,
        split=corp.split,
        n_windows=len(starts),
        n_windows_available=n_available,
        n_tokens=n_tokens,
        max_windows=max_windows,
        checksum=checksum(model),
        dtype=dtype,
        window_nll=tuple(window_nll) if per_window else None,
    )
    log.info("%s", result)
    return result
