"""Where aeflib meets lm-evaluation-harness's ``HFLM``: the caller's objects kept as given, its failures named.

Entry points::

    harness_tokenizer(tokenizer) -> the tokenizer HFLM may write to
    name_overlong_items(lm, tasks, ids)   # an unscorable request becomes one error naming task, item and lengths

Used by :func:`aeflib.evaluation.zeroshot.zeroshot`.

Source: [ours]; lm-eval 0.4.13 ``lm_eval.models.huggingface.HFLM``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

__all__ = ["harness_tokenizer", "name_overlong_items"]


def harness_tokenizer(tokenizer: Any) -> Any:
    """The tokenizer HFLM may write to: ``tokenizer`` itself when it has a pad token, else a copy.

    HFLM (``lm_eval.models.utils.configure_pad_token``) sets ``pad_token`` on a tokenizer without one, or adds a
    ``<|pad|>`` token; the caller's tokenizer must stay as it was loaded (a later LoRA run or generation reads it).
    A copy costs about 0.5 s for the SmolLM2 tokenizer, so one is made only when needed.

    Args:
        tokenizer: The caller's transformers tokenizer.

    Returns:
        ``tokenizer`` or a deep copy of it.

    Source: [ours] (issue 28.3).
    """
    if getattr(tokenizer, "pad_token_id", None) is not None or getattr(tokenizer, "pad_token", None):
        return tokenizer
    return copy.deepcopy(tokenizer)


def name_overlong_items(lm: Any, tasks: Mapping[str, str], ids: Mapping[str, list[int]]) -> None:
    """Make HFLM's bare ``AssertionError`` on an unscorable request one error naming the task, item and lengths.

    lm-eval truncates a too-long context from the left, but asserts that every continuation is non-empty and fits
    the model's context (``HFLM._loglikelihood_tokens``); on failure the requests are re-encoded to find which.

    Args:
        lm: The ``HFLM`` about to be evaluated (its ``loglikelihood`` is wrapped on the instance).
        tasks: lm-eval task name -> the name aeflib reports.
        ids: lm-eval task name -> ids in the split of the items selected (lm-eval numbers them 0..k-1).

    Raises:
        ValueError: From the wrapped ``loglikelihood``, for the first request whose continuation is empty or longer
            than ``lm.max_length`` tokens (naming the task, item id, continuation and both lengths); any other
            ``AssertionError`` of lm-eval passes through unchanged.

    Source: [ours] (issue 28.6); lm-eval 0.4.13 ``HFLM._loglikelihood_tokens`` asserts.
    """
    harness_loglikelihood = lm.loglikelihood

    def loglikelihood(requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        try:
            return harness_loglikelihood(requests, disable_tqdm=disable_tqdm)
        except AssertionError as err:
            for req in requests:
                context, continuation = req.args[:2]
                if context == "":  # as TemplateLM.loglikelihood: the prefix token is the context
                    ctx, cont = [lm.prefix_token_id], lm.tok_encode(continuation)
                else:
                    ctx, cont = lm._encode_pair(context, continuation)
                if cont and ctx and len(cont) <= lm.max_length:
                    continue
                name = getattr(req, "task_name", None)
                doc = req.doc_id if name not in ids else ids[name][req.doc_id]
                raise ValueError(
                    f"zero-shot task {tasks.get(name, name)!r}, item {doc}: the continuation {continuation[:40]!r} is "
                    f"{len(cont)} tokens (context {len(ctx)}), but lm-eval scores only continuations of 1.."
                    f"{lm.max_length} tokens (the model's context, config max_position_embeddings); it truncates "
                    "only the context. Score a model with a longer context, or leave the item out (limit=...)"
                ) from err
            raise

    lm.loglikelihood = loglikelihood
