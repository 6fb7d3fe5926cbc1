"""Timing and peak-memory helpers: one model at one batch size, and several models compared interleaved.

Prefill = one forward over ``[batch, seq_len]`` tokens; decode = greedy steps with the KV cache after an untimed
prefill. :func:`measure_batch` (used by ``aeflib.evaluation.efficiency``) runs each once to warm up, then
``repeats`` times, and keeps the median (``torch.cuda.synchronize`` around every run on CUDA). Peak memory: CUDA
``torch.cuda.max_memory_allocated``; CPU the process's peak resident set size (Linux ``VmHWM`` reset through
``/proc/self/clear_refs``; elsewhere psutil sampled every millisecond).

**Comparing models** (:func:`compare_latency`): timings of models measured one after the other differ by whatever
the machine did in between (other processes, frequency scaling, caches), which on a shared CPU easily exceeds the
difference between two same-shaped models. So the models are timed *interleaved*: after a warm-up of each, every
round times each model once (prefill, then decode), the order rotating from round to round (A B, B A, A B, ... so
that no model always runs first). Each latency is reported as the median with its interquartile range over rounds;
each ratio is the median of the per-round paired ratios with a distribution-free interval over rounds (order
statistics of the sign test, exact coverage for independent rounds; Bonferroni over all ratios of one comparison,
so that ``confidence`` holds for the whole table), and a ratio whose interval covers 1.0 is reported as "no
measurable difference". The machine's load (``os.getloadavg``
before and after), CPU count and torch threads are recorded with the result.

Source: [ours].
"""

from __future__ import annotations

import dataclasses
import gc
import math
import os
import re
import statistics
import threading
import time
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from aeflib.data import load_corpus

__all__ = ["BatchTiming", "LatencyComparison", "LatencyRatio", "LatencySpread", "PeakMemory",
           "compare_latency", "input_ids", "machine_now", "measure_batch",
           "rounds_needed"]


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


# ------------------------------------------------------------------------------------------ interleaved comparison
#: Quantities :func:`compare_latency` times: prefill seconds, and decode seconds per step (per generated token).
QUANTITIES = ("prefill_s", "decode_s_per_token")


@dataclass(frozen=True)
class LatencySpread:
    """One model's latency over the rounds of a comparison: the samples and their median and quartiles.

    Attributes:
        samples: Seconds, one per round, in the order taken.
        median: Median of ``samples`` (seconds).
        q1: First quartile (seconds; inclusive method, = median with one sample).
        q3: Third quartile (seconds).
    """

    samples: list[float]
    median: float
    q1: float
    q3: float

    @classmethod
    def of(cls, samples: list[float]) -> LatencySpread:
        """Median and quartiles of ``samples`` (seconds, at least one)."""
        med = statistics.median(samples)
        q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive") if len(samples) > 1 else (med, med, med)
        return cls(list(samples), med, q1, q3)

    @property
    def iqr(self) -> float:
        """Interquartile range ``q3 - q1`` (seconds)."""
        return self.q3 - self.q1


@dataclass(frozen=True)
class LatencyRatio:
    """Latency of one model relative to another, measured in the same interleaved rounds.

    Attributes:
        quantity: ``"prefill_s"`` or ``"decode_s_per_token"``.
        model: The model in the numerator.
        reference: The model in the denominator.
        ratio: Median over rounds of ``time(model) / time(reference)`` in the same round (< 1: ``model`` faster).
        low: Lower end of the interval of that median (an order statistic of the per-round ratios); None with
            fewer than ``rounds_needed`` rounds.
        high: Upper end; None likewise.
        confidence: Family-wise coverage: all intervals of the comparison hold together with this probability.
        rounds: Paired rounds behind the ratio.
        rounds_needed: Fewest rounds for which an interval at ``confidence`` exists (it grows with the number of
            ratios of the comparison).
    """

    quantity: str
    model: str
    reference: str
    ratio: float
    low: float | None
    high: float | None
    confidence: float
    rounds: int
    rounds_needed: int

    @property
    def measurable(self) -> bool:
        """True when the interval exists and excludes 1.0 (a difference this measurement can claim)."""
        return self.low is not None and self.high is not None and not self.low <= 1.0 <= self.high

    @property
    def verdict(self) -> str:
        """``"no measurable difference"``, ``"faster"``/``"slower"`` with the interval, or why there is no interval."""
        if self.low is None or self.high is None:
            return f"no finding: {self.rounds} rounds, an interval needs at least {self.rounds_needed}"
        if not self.measurable:
            return "no measurable difference"
        return "faster" if self.ratio < 1 else "slower"

    def __str__(self) -> str:
        interval = "" if self.low is None else f" [{self.low:.3f}, {self.high:.3f}]"
        return f"{self.quantity} {self.model} / {self.reference}: {self.ratio:.3f}{interval} ({self.verdict})"


@dataclass
class LatencyComparison:
    """Latencies of several models timed interleaved, their spreads, paired ratios and the machine's load.

    Attributes:
        models: Model names in the order given.
        spreads: ``{quantity: {model: LatencySpread}}`` (decode only when ``decode_tokens > 0``).
        ratios: One :class:`LatencyRatio` per quantity and pair (later model over earlier one, in ``models`` order).
        order: ``[[round, model], ...]`` in the order the runs happened; round -1 is the warm-up.
        settings: ``seq_len``, ``batch_size``, ``decode_tokens``, ``rounds``, ``warmup``, ``confidence``,
            ``interval`` (the method), ``seed``, ``device`` per model, ``input`` (shipped text or random ids).
        machine: ``cpus``, ``cpus_usable``, ``torch_threads``, ``load_average_before`` / ``_after`` (1, 5, 15 min).
    """

    models: list[str]
    spreads: dict[str, dict[str, LatencySpread]]
    ratios: list[LatencyRatio]
    order: list[list]
    settings: dict[str, Any]
    machine: dict[str, Any] = field(default_factory=dict)

    def ratio(self, quantity: str, model: str, reference: str) -> LatencyRatio:
        """The :class:`LatencyRatio` of ``model`` over ``reference`` for ``quantity``.

        Raises:
            KeyError: If that pair or quantity was not measured (the message lists what was).
        """
        for r in self.ratios:
            if (r.quantity, r.model, r.reference) == (quantity, model, reference):
                return r
        have = [(r.quantity, r.model, r.reference) for r in self.ratios]
        raise KeyError(f"no ratio {(quantity, model, reference)}; measured: {have}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (spreads with their samples; ratios with ``measurable`` and ``verdict``)."""
        return {
            "models": list(self.models),
            "spreads": {q: {m: dataclasses.asdict(s) for m, s in per.items()} for q, per in self.spreads.items()},
            "ratios": [{**dataclasses.asdict(r), "measurable": r.measurable, "verdict": r.verdict}
                       for r in self.ratios],
            "order": [list(o) for o in self.order],
            "settings": dict(self.settings),
            "machine": dict(self.machine),
        }

    def table(self):
        """Latency per model: ``pandas.DataFrame`` indexed by model, median and IQR in ms per quantity."""
        return latency_table(self.to_dict())

    def ratio_table(self):
        """Ratios: ``pandas.DataFrame`` with quantity, model, reference, ratio, interval and verdict."""
        return ratio_table(self.to_dict())

    def __str__(self) -> str:
        parts = []
        for q, per in self.spreads.items():
            unit = "prefill" if q == "prefill_s" else "decode/token"
            parts += [f"{m} {unit} {1e3 * s.median:.2f} ms (IQR {1e3 * s.q1:.2f}-{1e3 * s.q3:.2f})"
                      for m, s in per.items()]
        load = self.machine.get("load_average_before")
        return (f"latency, {self.settings.get('rounds')} interleaved rounds (load {load}): " + "; ".join(parts)
                + "; " + "; ".join(str(r) for r in self.ratios))


def latency_table(d: Mapping[str, Any]):
    """Median and IQR (ms) of every model and quantity of a :meth:`LatencyComparison.to_dict`, one row per model.

    Returns:
        ``pandas.DataFrame`` indexed by ``model`` with ``<quantity> median (ms)`` and ``<quantity> IQR (ms)``.
    """
    import pandas as pd

    rows: dict[str, dict[str, float]] = {m: {} for m in d["models"]}
    for q, per in d["spreads"].items():
        label = "prefill" if q == "prefill_s" else "decode per token"
        for m, s in per.items():
            rows[m][f"{label} median (ms)"] = round(1e3 * s["median"], 3)
            rows[m][f"{label} IQR (ms)"] = f"{1e3 * s['q1']:.3f}–{1e3 * s['q3']:.3f}"
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.index.name = "model"
    return frame


def ratio_table(d: Mapping[str, Any]):
    """The ratios of a :meth:`LatencyComparison.to_dict` with their interval and verdict, one row per pair.

    Returns:
        ``pandas.DataFrame`` with ``quantity, model, reference, ratio, interval, verdict`` (interval "–" when too few
        rounds).
    """
    import pandas as pd

    rows = []
    for r in d["ratios"]:
        interval = "–" if r["low"] is None else f"{r['low']:.3f}–{r['high']:.3f} ({100 * r['confidence']:.0f} %)"
        rows.append({"quantity": r["quantity"], "model": r["model"], "reference": r["reference"],
                     "ratio": round(r["ratio"], 3), "interval": interval, "verdict": r["verdict"]})
    return pd.DataFrame(rows)


def _order_statistic_rank(n: int, confidence: float) -> int:
    """Largest ``k`` with ``P(k-th smallest <= median <= k-th largest) >= confidence`` for ``n`` samples; 0: none.

    The sign test's interval for a median: it misses when at most ``k - 1`` of ``n`` independent samples fall on one
    side, probability ``2 * P(Binomial(n, 1/2) <= k - 1)``.
    """
    k, miss = 0, 2 * 0.5**n  # miss probability of [min, max] (k = 1)
    while k + 1 <= (n + 1) // 2 and miss <= 1 - confidence:
        k += 1
        miss += 2 * math.comb(n, k) * 0.5**n  # widen: k-th order statistics -> (k+1)-th
    return k


def _median_interval(values: list[float], confidence: float) -> tuple[float, float] | None:
    """Distribution-free interval of the median of ``values`` (sign test order statistics); None if too few."""
    k = _order_statistic_rank(len(values), confidence)
    if k == 0:
        return None
    ordered = sorted(values)
    return ordered[k - 1], ordered[len(values) - k]


def rounds_needed(confidence: float, n_ratios: int = 1) -> int:
    """Fewest rounds for which ``n_ratios`` intervals hold together with probability ``confidence`` (Bonferroni).

    Args:
        confidence: Family-wise coverage in (0, 1), e.g. 0.95.
        n_ratios: Ratios reported together (>= 1).

    Returns:
        The smallest ``n`` with ``2 / 2**n <= (1 - confidence) / n_ratios`` (the ``[min, max]`` interval's miss
        probability): 6 for one ratio at 95 %, 8 for six.

    Source: [ours]; the sign-test interval of a median.
    """
    return math.ceil(math.log2(2 * n_ratios / (1 - confidence)))


def machine_now() -> dict[str, Any]:
    """The machine now: CPUs (all, usable), torch threads, load average (1, 5, 15 min) as ``load_average_before``.

    Callers add ``load_average_after``. A load above the usable CPUs means other processes competed for them.
    """
    load = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpus": os.cpu_count(), "cpus_usable": usable, "torch_threads": torch.get_num_threads(),
            "load_average_before": load}


def compare_latency(
    models: Mapping[str, nn.Module],
    tokenizer: Any = None,
    *,
    seq_len: int = 64,
    batch_size: int = 1,
    decode_tokens: int = 16,
    rounds: int = 10,
    warmup: int = 1,
    confidence: float = 0.95,
    seed: int = 0,
) -> LatencyComparison:
    """Time several models interleaved (prefill and decode) and compare them with an interval on every ratio.

    After ``warmup`` untimed rounds, each of ``rounds`` rounds times every model once — one prefill of
    ``[batch_size, seq_len]`` tokens, then ``decode_tokens`` greedy KV-cache steps after an untimed prefill — in an
    order that rotates by one model per round. Each model runs in eval mode under ``torch.inference_mode`` on the
    device of its parameters; its training flag is restored, nothing else is changed.

    Args:
        models: ``{name: model}``, at least two causal LMs taking ``input_ids`` (dense, pruned, recovered, ...);
            ratios are formed for every pair, the later model over the earlier one.
        tokenizer: When given, the inputs are shipped Wikipedia test text; else seeded random ids below the
            smallest vocabulary.
        seq_len: Prefill length ``L``, >= 1.
        batch_size: Rows ``B`` of the prefill and of decoding, >= 1.
        decode_tokens: Greedy decode steps per round, >= 0 (0 = prefill only).
        rounds: Timed rounds, >= 1; intervals need :func:`rounds_needed` rounds (8 for three models at 95 %;
            fewer: ratios carry no interval and no verdict of a difference). A multiple of the number of models
            puts each model first equally often.
        warmup: Untimed rounds first, >= 0.
        confidence: Family-wise coverage of all ratio intervals together, in (0, 1) (each interval is built at
            ``1 - (1 - confidence) / n_ratios``).
        seed: Seed of the random input ids (without a tokenizer).

    Returns:
        :class:`LatencyComparison` — seconds throughout (``decode_s_per_token`` = decode seconds / steps).

    Raises:
        TypeError: If ``models`` is not a mapping.
        ValueError: For fewer than two models, a value that is not a transformers causal LM, a tokenizer that is not
            callable, or an argument outside the ranges above (each named with its value).

    Source: [ours].
    """
    if not isinstance(models, Mapping):
        raise TypeError(f"compare_latency: models must be a dict {{name: causal LM}}, got {type(models).__name__}")
    names = list(models)
    problems = []
    if len(names) < 2:
        problems.append(f"models needs at least two entries, got {names}")
    for name, m in models.items():
        if not isinstance(m, nn.Module) or not hasattr(getattr(m, "config", None), "vocab_size"):
            problems.append(f"models[{name!r}] is {type(m).__name__}, not a transformers causal LM")
    if tokenizer is not None and not callable(tokenizer):
        problems.append(f"tokenizer is {type(tokenizer).__name__}, not a callable tokenizer (or None for random ids)")

    def whole(v: Any, least: int) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= least

    for label, value, ok in (("seq_len", seq_len, whole(seq_len, 1)), ("batch_size", batch_size, whole(batch_size, 1)),
                             ("decode_tokens", decode_tokens, whole(decode_tokens, 0)),
                             ("rounds", rounds, whole(rounds, 1)), ("warmup", warmup, whole(warmup, 0)),
                             ("confidence", confidence, isinstance(confidence, float) and 0 < confidence < 1)):
        if not ok:
            problems.append(f"{label}={value!r}")
    if problems:
        raise ValueError("compare_latency: " + "; ".join(problems) + " (need >= 2 models, seq_len/batch_size/rounds "
                         ">= 1, decode_tokens/warmup >= 0, 0 < confidence < 1)")
    machine = machine_now()
    devices = {n: next(m.parameters()).device for n, m in models.items()}
    vocab = min(int(m.config.vocab_size) for m in models.values())
    first = models[names[0]]
    if tokenizer is None:
        gen = torch.Generator().manual_seed(seed)
        base = torch.randint(0, vocab, (batch_size, seq_len), generator=gen)  # [B, L]
    else:
        base = input_ids(first, tokenizer, batch_size, seq_len, torch.device("cpu"))  # [B, L]
    ids = {n: base.to(devices[n]) for n in names}
    samples: dict[str, dict[str, list[float]]] = {q: {n: [] for n in names} for q in QUANTITIES}
    order: list[list] = []
    training = {n: m.training for n, m in models.items()}

    def run(n: str, timed: bool, r: int) -> None:
        model, x, dev = models[n], ids[n], devices[n]
        prefill = _time(lambda: model(input_ids=x, use_cache=True), dev)
        decode = _decode(model, x, decode_tokens, dev) / decode_tokens if decode_tokens > 0 else None
        order.append([r, n])
        if timed:
            samples["prefill_s"][n].append(prefill)
            if decode is not None:
                samples["decode_s_per_token"][n].append(decode)

    try:
        for m in models.values():
            m.eval()
        with torch.inference_mode():
            for _ in range(warmup):
                for n in names:
                    run(n, False, -1)
            for r in range(rounds):
                k = r % len(names)
                for n in names[k:] + names[:k]:  # rotate: no model always first
                    run(n, True, r)
    finally:
        for n, m in models.items():
            m.train(training[n])
    machine["load_average_after"] = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None

    spreads = {q: {n: LatencySpread.of(v) for n, v in per.items()} for q, per in samples.items() if all(per.values())}
    pairs = [(n, ref) for i, ref in enumerate(names) for n in names[i + 1:]]
    n_ratios = len(pairs) * len(spreads)
    each = 1 - (1 - confidence) / n_ratios  # Bonferroni: the whole table holds with `confidence`
    ratios = []
    for q in spreads:
        for n, ref in pairs:
            paired = [a / b for a, b in zip(samples[q][n], samples[q][ref], strict=True)]
            low, high = _median_interval(paired, each) or (None, None)
            ratios.append(LatencyRatio(q, n, ref, statistics.median(paired), low, high, confidence, len(paired),
                                       rounds_needed(confidence, n_ratios)))
    settings = {"seq_len": seq_len, "batch_size": batch_size, "decode_tokens": decode_tokens, "rounds": rounds,
                "warmup": warmup, "confidence": confidence, "seed": seed,
                "interval": f"sign-test order statistics of the per-round ratios, Bonferroni over {n_ratios} ratios",
                "device": {n: str(d) for n, d in devices.items()},
                "input": "shipped Wikipedia test text" if tokenizer is not None else "seeded random ids"}
    return LatencyComparison(names, spreads, ratios, order, settings, machine)
