"""Zero-shot log-likelihoods that compute the vocabulary only where a continuation is scored.

lm-eval's ``HFLM`` asks the model for logits at every position of every request, ``[batch, length, vocab]``,
applies ``log_softmax`` to all of it, and keeps only the continuation's few positions. For a small model with a large
vocabulary (SmolLM2-135M: 49,152 entries beside a 576-wide hidden state) the output layer and that softmax are a
large share of the work and most of the memory: eight BoolQ passages of ~600 tokens make 0.9 GB of logits and as much
again of log-probabilities. :class:`ContinuationLM` is ``HFLM`` with one method replaced — the scoring of
``(context tokens, continuation tokens)`` pairs — which

* runs the decoder (``model.base_model``) once per distinct input row (choices that share every input token, like
  BoolQ's one-token "yes"/"no", share one row, as lm-eval's own grouping does),
* applies the output layer (``model.get_output_embeddings()``) and ``log_softmax`` only at the positions that predict
  a continuation token,
* batches ``batch_size`` rows at a time, longest first (as lm-eval does: little padding).

Measured on SmolLM2-135M, 10 items of each of the seven ``paper7-offline`` tasks, one thread: 28.6 CPU s against
HFLM's 34.6, peak resident memory 1,448 MiB against 1,847 (a token budget that packed more short rows per batch
was slower, 39.6 s, and is not used).

Everything else — the task definitions, prompts, request construction, tokenisation, truncation from the left at the
model's maximum length, metrics — stays lm-eval's. The first batch checks the shortcut against the model's own
``forward`` logits; a model whose output is not ``output_embeddings(base_model(...))`` (a logit scale, soft-capping)
falls back to lm-eval's method with a logged note. ``tests/test_zeroshot.py`` checks that the log-likelihoods equal
``HFLM``'s on the tiny models.

Source: [ours], scoring lm-eval 0.4 requests (``HFLM._loglikelihood_tokens``'s contract: a sum of continuation
log-probabilities and whether greedy decoding reproduces the continuation).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from lm_eval.models.huggingface import HFLM

__all__ = ["ContinuationLM"]

log = logging.getLogger(__name__)


class ContinuationLM(HFLM):
    """``HFLM`` whose log-likelihoods compute the output layer only at the continuation positions.

    Args:
        *args: As ``HFLM`` (``pretrained=model, tokenizer=..., batch_size=...``); ``batch_size`` rows (distinct
            inputs) per forward pass.
        **kwargs: As ``HFLM``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._checked = False  # the shortcut was compared with the model's own logits
        self._shortcut = True

    def _loglikelihood_tokens(self, requests: list, disable_tqdm: bool = False, override_bs: int | None = None,
                              **kwargs: Any) -> list[tuple[float, bool]]:
        """``(sum of continuation log-probabilities, greedy match)`` per request, in the order given."""
        if not self._shortcut or self.backend != "causal":
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        rows: dict[tuple[int, ...], list[int]] = {}  # input tokens -> requests scored on that row
        for i, (_, ctx, cont) in enumerate(requests):
            if not ctx or not cont or len(cont) > self.max_length:
                return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
            rows.setdefault(tuple((ctx + cont)[-(self.max_length + 1):][:-1]), []).append(i)
        order = sorted(rows, key=lambda r: (-len(r), r))
        out: list[tuple[float, bool] | None] = [None] * len(requests)
        size = int(override_bs or (self.batch_size if isinstance(self.batch_size, int) else 1))
        for start in range(0, len(order), size):
            batch = order[start:start + size]  # longest first: the first row sets the padded length
            answers = self._score_rows(batch, [[requests[i][2] for i in rows[r]] for r in batch])
            if answers is None:  # the shortcut does not reproduce this model's logits
                return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
            for r, per_row in zip(batch, answers, strict=True):
                for i, answer in zip(rows[r], per_row, strict=True):
                    out[i] = answer
                    self.cache_hook.add_partial("loglikelihood", requests[i][0], answer)
        return out  # type: ignore[return-value]

    def _score_rows(self, batch: list[tuple[int, ...]], conts: list[list[list[int]]]
                    ) -> list[list[tuple[float, bool]]] | None:
        """Score the continuations of each row of one batch; None when the shortcut disagrees with ``forward``."""
        model = self.model
        width = len(batch[0])
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        inps = torch.full((len(batch), width), pad, dtype=torch.long)  # [B, L], right-padded
        for b, r in enumerate(batch):
            inps[b, :len(r)] = torch.tensor(r)
        inps = inps.to(self.device)
        # positions predicting a continuation token: the last len(cont) of each row (longest cont of the row)
        spans = [max(len(c) for c in row) for row in conts]
        rows_idx = torch.cat([torch.full((k,), b) for b, k in enumerate(spans)])
        pos_idx = torch.cat([torch.arange(len(r) - k, len(r)) for r, k in zip(batch, spans, strict=True)])
        with torch.no_grad(), torch.autocast(device_type=self.device.type, dtype=self.mixed_precision_dtype,
                                             enabled=self.mixed_precision_dtype is not None):
            hidden = model.base_model(input_ids=inps).last_hidden_state  # [B, L, hidden]
            picked = hidden[rows_idx.to(self.device), pos_idx.to(self.device)]  # [sum of spans, hidden]
            logits = model.get_output_embeddings()(picked)  # [sum of spans, vocab]
            if not self._checked:
                self._checked = True
                full = model(inps[:1, :len(batch[0])]).logits[0, -spans[0]:]  # [span, vocab]
                if not torch.allclose(full.float(), logits[:spans[0]].float(), rtol=1e-4, atol=1e-4):
                    log.info("ContinuationLM: the model's logits are not output_embeddings(base_model(x)); "
                             "scoring with lm-eval's HFLM method instead")
                    self._shortcut = False
                    return None
        logprobs = F.log_softmax(logits, dim=-1, dtype=self.softmax_dtype)  # [sum of spans, vocab]
        greedy = logprobs.argmax(dim=-1)  # [sum of spans]
        answers, at = [], 0
        for row, k in zip(conts, spans, strict=True):
            per_row = []
            for cont in row:
                lp, gr = logprobs[at + k - len(cont):at + k], greedy[at + k - len(cont):at + k]
                target = torch.tensor(cont, device=lp.device)
                per_row.append((float(lp.gather(1, target[:, None]).sum()), bool((gr == target).all())))
            answers.append(per_row)
            at += k
        return answers
