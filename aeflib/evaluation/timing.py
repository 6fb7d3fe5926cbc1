"""Timing and peak-memory helpers of ``aeflib.evaluation.efficiency``: one batch size, warm-up then medians.

Prefill = one forward over ``[batch, seq_len]`` tokens; decode = greedy steps with the KV cache after an untimed
prefill. Each is run once to warm up, then ``repeats`` times, and the median is kept (``torch.cuda.synchronize``
around every run on CUDA). Peak memory: CUDA ``torch.cuda.max_memory_allocated``; CPU the process's peak resident set
size (Linux ``VmHWM`` reset through ``/proc/self/clear_refs``; elsewhere psutil sampled every millisecond).

Source: [ours].
"""

from __future__ import annotations

import gc
import re
import statistics
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["BatchTiming", "PeakMemory", "input_ids", "measure_batch"]


@dataclass(frozen=True)
class BatchTiming:
    """Speed and memory at one batch size (medians over ``repeats`` runs after one warm-up)."""

    batch_size: int
    prefill_s: float  # seconds for one forward over [batch, seq_len]
    prefill_tokens_per_s: float  # batch * seq_len / prefill_s
    decode_tokens_per_s: float  # batch * decode_tokens / decode seconds (KV cache, greedy)
    decode_ms_per_step: float  # one decode step for the whole batch
    peak_mem_bytes: int  # CUDA: max allocated; CPU: peak RSS of the process
    peak_mem_delta_bytes: int  # the peak above what was held before the runs



# ----------------------------------------------------------------------------------------------------- memory
class PeakMemory:
    """Peak memory of a block of runs: CUDA allocator statistics, Linux VmHWM, or psutil sampling."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        if device.type == "cuda":
            self.method = "torch.cuda.max_memory_allocated"
        elif self._reset_hwm():
            self.method = "VmHWM (/proc/self/status, reset via /proc/self/clear_refs)"
        else:
            self.method = "psutil RSS sampled every 1 ms"

    @staticmethod
    def _reset_hwm() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return PeakMemory._hwm() is not None
        except OSError:
            return False

    @staticmethod
    def _hwm() -> int | None:
        try:
            with open("/proc/self/status") as f:
                m = re.search(r"VmHWM:\s+(\d+) kB", f.read())
        except OSError:
            return None
        return int(m.group(1)) * 1024 if m else None

    @staticmethod
    def _rss() -> int:
        import psutil

        return psutil.Process().memory_info().rss

    @contextmanager
    def measure(self):
        """Yield a dict that holds ``peak`` and ``delta`` (bytes) once the block exits."""
        out: dict[str, int] = {}
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            before = torch.cuda.memory_allocated(self.device)
            yield out
            torch.cuda.synchronize(self.device)
            out["peak"] = torch.cuda.max_memory_allocated(self.device)
        elif self.method.startswith("VmHWM"):
            before = self._rss()
            self._reset_hwm()
            yield out
            out["peak"] = max(self._hwm() or 0, before)
        else:
            before = peak = self._rss()
            stop = threading.Event()

            def sample() -> None:
                nonlocal peak
                while not stop.is_set():
                    peak = max(peak, self._rss())
                    stop.wait(0.001)

            thread = threading.Thread(target=sample, daemon=True)
            thread.start()
            try:
                yield out
            finally:
                stop.set()
                thread.join()
            out["peak"] = peak
        out["delta"] = max(out["peak"] - before, 0)


# ------------------------------------------------------------------------------------------------------ timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def input_ids(model: nn.Module, tokenizer: Any, batch: int, seq_len: int, device: torch.device) -> torch.Tensor:
    """[batch, seq_len] token ids: shipped Wikipedia test text when a tokenizer is given, else seeded random ids."""
    if tokenizer is not None:
        from aeflib.data import load_corpus

        text = load_corpus("wikipedia", "test").text(join="\n\n")[: 40 * seq_len * batch]
        ids = torch.as_tensor(tokenizer(text, verbose=False)["input_ids"], dtype=torch.long)
        if ids.numel() >= batch * seq_len:
            return ids[: batch * seq_len].view(batch, seq_len).to(device)  # [B, L]
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, model.config.vocab_size, (batch, seq_len), generator=gen).to(device)  # [B, L]


def _time(fn, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _decode(model: nn.Module, ids: torch.Tensor, steps: int, device: torch.device) -> float:
    """Prefill ``ids`` (untimed), then time ``steps`` greedy decode steps with the KV cache; return seconds."""
    out = model(input_ids=ids, use_cache=True)
    cache, token = out.cache, out.logits[:, -1].argmax(-1, keepdim=True)  # [B, 1]

    def loop() -> None:
        nonlocal cache, token
        for _ in range(steps):
            step = model(input_ids=token, cache=cache, use_cache=True)  # transformers 5: `cache`, not past_key_values
            cache, token = step.cache, step.logits[:, -1].argmax(-1, keepdim=True)  # [B, 1]

    return _time(loop, device)


def measure_batch(
    model: nn.Module, ids: torch.Tensor, decode_tokens: int, repeats: int, memory: PeakMemory
) -> BatchTiming:
    """Time prefill and decode of ``ids`` [B, L] (warm-up, then medians of ``repeats``) and their peak memory."""
    device, (batch, seq_len) = ids.device, ids.shape
    with memory.measure() as mem:
        model(input_ids=ids, use_cache=True)  # warm-up
        prefill = statistics.median(_time(lambda: model(input_ids=ids, use_cache=True), device) for _ in range(repeats))
        decode = 0.0
        if decode_tokens > 0:
            _decode(model, ids, min(decode_tokens, 4), device)  # warm-up
            decode = statistics.median(_decode(model, ids, decode_tokens, device) for _ in range(repeats))
    return BatchTiming(
        batch_size=batch,
        prefill_s=prefill,
        prefill_tokens_per_s=batch * seq_len / prefill,
        decode_tokens_per_s=batch * decode_tokens / decode if decode > 0 else 0.0,
        decode_ms_per_step=1e3 * decode / decode_tokens if decode_tokens > 0 else 0.0,
        peak_mem_bytes=int(mem["peak"]),
        peak_mem_delta_bytes=int(mem["delta"]),
    )
