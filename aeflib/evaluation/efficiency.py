"""Efficiency of a dense or pruned model: parameters, MACs per token, prefill latency, decode speed, peak memory.

Entry points::

    efficiency(model, tokenizer=None, seq_len=128, batch_sizes=(1,), decode_tokens=32, repeats=5) -> EfficiencyResult
    efficiency_ratios(dense, pruned) -> {quantity: pruned / dense}   sizes, MACs, memory (never times)
    analytic_macs(model, seq_len)    -> (per-layer MACs per token, lm_head MACs per token)
    counted_macs(model, seq_len)     -> MACs per token counted by torch.utils.flop_counter (the cross-check)

**MACs per token** are computed from the weights the model actually holds, layer by layer, so pruned layers of
any width count what they cost: every ``nn.Linear`` contributes ``in_features * out_features`` (q/k/v/o or fused
qkv, MLP, ``lm_head``), and each decoder layer's attention adds ``2 * seq_len * n_heads * head_dim`` (query-key
scores and the weighted sum of values, each ``seq_len * head_dim`` per query head, with the layer's own head count).
Convention: a prefill of ``seq_len`` tokens with the full score matrix (as ``FlopCounterMode`` and the usual
MAC counters count it; a causal kernel skips about half of the attention part); embedding lookups, norms,
activations, rotary/ALiBi biases and softmax are not counted. FLOPs = 2 * MACs.

**Timing** of one model: prefill = one forward over ``[batch, seq_len]`` tokens; decode = ``decode_tokens`` greedy
steps with the KV cache after a prefill. Each is run once to warm up, then ``repeats`` times; the median is reported
(``torch.cuda.synchronize`` around each run on CUDA), with the machine's load. Two models timed one after the other
are not compared: whatever the machine did in between passes for a difference. Models are compared by
:func:`aeflib.evaluation.compare_latency`, which times them interleaved and gives every ratio an interval. **Peak
memory**: CUDA ``torch.cuda.max_memory_allocated`` (absolute, and above the allocation before the runs); CPU the
peak resident set size of the process during the runs (Linux ``VmHWM`` after a reset through
``/proc/self/clear_refs``; elsewhere psutil sampled every millisecond), and its increase over the resident size
before the runs.

Source: the quantities LLM-Pruner's statistics table gives for dense vs pruned models (#params, #MACs, memory,
latency); [ours] the analytic per-layer count, its FlopCounterMode cross-check and the timing protocol.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from aeflib.evaluation.timing import BatchTiming, PeakMemory, input_ids, machine_now, measure_batch
from aeflib.models.checksum import checksum
from aeflib.models.registry import adapter_for

__all__ = ["BatchTiming", "EfficiencyResult", "analytic_macs", "counted_macs", "efficiency", "efficiency_ratios"]

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------------ results
@dataclass
class EfficiencyResult:
    """Parameters, MACs per token and measured speed/memory of one model at one sequence length."""

    model_type: str
    checksum: str
    dtype: str
    device: str
    params_total: int  # every parameter once (tied embeddings once)
    params_embeddings: int  # input token (and Bloom's position-free) embedding table
    params_lm_head: int  # 0 when tied to the embeddings
    params_layers: list[int]  # per decoder layer
    params_other: int  # final norm, embedding norm, ...
    seq_len: int
    macs_per_token: int  # analytic, whole model incl. lm_head
    macs_per_token_layers: list[int]  # per decoder layer: projections + attention scores/values
    macs_per_token_lm_head: int
    macs_per_token_attention: int  # the seq_len-dependent part, summed over layers
    decode_tokens: int
    repeats: int
    memory_method: str
    timings: dict[int, BatchTiming] = field(default_factory=dict)  # batch size -> timing
    machine: dict[str, Any] = field(default_factory=dict)  # CPUs, torch threads, load average before/after timing

    @property
    def flops_per_token(self) -> int:
        """2 * MACs (one multiply and one add)."""
        return 2 * self.macs_per_token

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (batch-size keys become strings)."""
        d = dataclasses.asdict(self)
        d["timings"] = {str(b): dataclasses.asdict(t) for b, t in self.timings.items()}
        d["flops_per_token"] = self.flops_per_token
        return d

    def __str__(self) -> str:
        parts = [
            f"{self.params_total / 1e6:.2f} M params ({self.params_embeddings / 1e6:.2f} M embeddings)",
            f"{self.macs_per_token / 1e6:.2f} M MACs/token at seq_len {self.seq_len}",
        ]
        for b, t in self.timings.items():
            decode = f"decode {t.decode_tokens_per_s:.1f} tok/s, " if t.decode_tokens_per_s else ""  # 0: not timed
            peak = f"peak +{t.peak_mem_delta_bytes / 2**20:.0f} MiB"
            parts.append(f"bs {b}: prefill {t.prefill_s * 1e3:.1f} ms, {decode}{peak}")
        return f"efficiency of {self.model_type} {self.checksum} ({self.dtype}, {self.device}): " + "; ".join(parts)


# ---------------------------------------------------------------------------------------------------- structure
def _adapter(model: nn.Module):

    return adapter_for(model)


def _linear_macs(module: nn.Module) -> int:
    """Sum of ``in * out`` over the ``nn.Linear`` modules inside ``module`` (itself included)."""
    return sum(m.weight.shape[0] * m.weight.shape[1] for m in module.modules() if isinstance(m, nn.Linear))


def analytic_macs(model: nn.Module, seq_len: int) -> tuple[list[int], int]:
    """MACs per token of each decoder layer and of the output head, from the weights the model holds.

    Args:
        model: A causal LM served by an aeflib adapter (LLaMA/GQA, Baichuan, Bloom), dense or pruned.
        seq_len: Tokens in the prefill (``L``); the attention part grows linearly with it.

    Returns:
        ``(layers, lm_head)``: ``layers[i]`` = projections of layer ``i`` (``in * out`` per ``nn.Linear``) +
        ``2 * seq_len * n_heads_i * head_dim`` (scores and values); ``lm_head`` = ``hidden * vocab``.

    Raises:
        ValueError: If ``seq_len`` < 1, or no adapter serves the model type.

    Source: [ours] per-layer count from weight shapes.
    """
    if seq_len < 1:
        raise ValueError(f"seq_len={seq_len} must be >= 1")
    adapter = _adapter(model)
    layers = []
    for i, block in enumerate(adapter.decoder_layers(model)):
        w = adapter.widths(model, i)
        layers.append(_linear_macs(block) + 2 * seq_len * w.n_heads * w.head_dim)
    head = model.get_output_embeddings()
    return layers, (_linear_macs(head) if head is not None else 0)


@contextmanager
def _eager_attention(model: nn.Module):
    """Temporarily run attention as plain matmuls (CPU SDPA kernels are invisible to FlopCounterMode)."""
    config = model.config
    before = getattr(config, "_attn_implementation", None)
    try:
        if before not in (None, "eager"):
            config._attn_implementation = "eager"
        yield
    finally:
        if before not in (None, "eager"):
            config._attn_implementation = before


def counted_macs(model: nn.Module, seq_len: int) -> float:
    """MACs per token counted by ``torch.utils.flop_counter.FlopCounterMode`` over one forward of ``seq_len`` tokens.

    The cross-check of :func:`analytic_macs`: FLOPs of every matmul (mm, addmm, bmm, baddbmm, SDPA) / 2 / seq_len,
    with attention switched to eager for the pass so that its matmuls are seen.

    Args:
        model: Any causal LM taking ``input_ids`` [1, L].
        seq_len: Tokens in the forward (``L``), >= 1.

    Returns:
        MACs per token (float: FlopCounterMode total / 2 / seq_len).

    Source: [ours]; ``torch.utils.flop_counter``.
    """
    from torch.utils.flop_counter import FlopCounterMode

    param = next(model.parameters())
    ids = torch.zeros(1, seq_len, dtype=torch.long, device=param.device)  # [1, L]
    with _eager_attention(model), torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(input_ids=ids, use_cache=False)
    return counter.get_total_flops() / 2 / seq_len


def _params(model: nn.Module) -> tuple[int, int, int, list[int], int]:
    """(total, embeddings, lm_head, per layer, other), parameters counted once however often they are shared."""
    adapter = _adapter(model)
    seen: set[int] = set()

    def count(module: nn.Module | None) -> int:
        n = 0
        for p in module.parameters() if module is not None else ():
            if id(p) not in seen:
                seen.add(id(p))
                n += p.numel()
        return n

    embeddings = count(model.get_input_embeddings())
    layers = [count(block) for block in adapter.decoder_layers(model)]
    lm_head = count(model.get_output_embeddings())  # 0 when tied: the weight was counted as embeddings
    other = count(model)  # whatever is left: final norm, Bloom's embedding LayerNorm
    return embeddings + lm_head + sum(layers) + other, embeddings, lm_head, layers, other


# ---------------------------------------------------------------------------------------------------- public API
def efficiency(
    model: nn.Module,
    tokenizer: Any = None,
    seq_len: int = 128,
    batch_sizes: Sequence[int] = (1,),
    decode_tokens: int = 32,
    repeats: int = 5,
    device: str | torch.device | None = None,
) -> EfficiencyResult:
    """Measure parameters, MACs per token, prefill latency, decode speed and peak memory of a model.

    Args:
        model: A causal LM of a layout aeflib serves (LLaMA/GQA, Baichuan, Bloom), dense or pruned with any
            per-layer widths. Run in eval mode under ``torch.inference_mode``; its training flag is restored.
        tokenizer: When given, the timed inputs are shipped Wikipedia test text; else seeded random token ids.
        seq_len: Prefill length ``L`` (also the length the MACs are computed for), >= 1.
        batch_sizes: Batch sizes to time, each >= 1, in the order given (peak memory of each is measured over its
            own runs).
        decode_tokens: Greedy decode steps after the prefill, >= 0 (0 skips decoding).
        repeats: Timed runs per quantity after one warm-up, >= 0; 0 skips timing and memory (parameters and MACs
            only, which is fast).
        device: Where to run (the model is moved there and back); None = where its parameters are.

    Returns:
        ``EfficiencyResult``; ``timings[batch]`` hold medians.

    Raises:
        ValueError: For ``seq_len`` < 1, a batch size < 1, negative ``decode_tokens``/``repeats``, or a model type
            no adapter serves.

    Source: [ours] the measurement protocol of the module docstring (quantities as LLM-Pruner's statistics table).
    """
    if seq_len < 1 or decode_tokens < 0 or repeats < 0 or any(b < 1 for b in batch_sizes):
        raise ValueError(
            f"need seq_len >= 1, batch sizes >= 1, decode_tokens >= 0 and repeats >= 0; got seq_len={seq_len}, "
            f"batch_sizes={list(batch_sizes)}, decode_tokens={decode_tokens}, repeats={repeats}"
        )
    param = next(model.parameters())
    home = param.device
    target = torch.device(device) if device is not None else home
    total, embeddings, lm_head, layer_params, other = _params(model)
    layer_macs, head_macs = analytic_macs(model, seq_len)
    adapter = _adapter(model)
    attention = sum(2 * seq_len * w.n_heads * w.head_dim for w in adapter.all_widths(model))
    memory = PeakMemory(target)
    timings: dict[int, BatchTiming] = {}
    machine: dict[str, Any] = {}
    if repeats > 0:
        machine = machine_now()
        was_training = model.training
        model.to(target).eval()
        try:
            with torch.inference_mode():
                for b in batch_sizes:
                    ids = input_ids(model, tokenizer, b, seq_len, target)  # [B, L]
                    timings[b] = measure_batch(model, ids, decode_tokens, repeats, memory)
                    log.info("batch %d: %s", b, timings[b])
        finally:
            model.to(home).train(was_training)
        machine["load_average_after"] = machine_now()["load_average_before"]
    result = EfficiencyResult(
        model_type=str(getattr(model.config, "model_type", type(model).__name__)),
        checksum=checksum(model),
        dtype=str(param.dtype).removeprefix("torch."),
        device=str(target),
        params_total=total,
        params_embeddings=embeddings,
        params_lm_head=lm_head,
        params_layers=layer_params,
        params_other=other,
        seq_len=seq_len,
        macs_per_token=sum(layer_macs) + head_macs,
        macs_per_token_layers=layer_macs,
        macs_per_token_lm_head=head_macs,
        macs_per_token_attention=attention,
        decode_tokens=decode_tokens,
        repeats=repeats,
        memory_method=memory.method,
        timings=timings,
        machine=machine,
    )
    log.info("%s", result)
    return result


def efficiency_ratios(dense: EfficiencyResult, pruned: EfficiencyResult) -> dict[str, float]:
    """Ratios pruned / dense of the sizes, MACs and memory both results hold — never of their times.

    Args:
        dense: The reference (unpruned) model's result.
        pruned: The pruned model's result, measured with the same ``seq_len`` (and batch sizes, for timings).

    Returns:
        ``{"params_total": r, "params_layers": r, "macs_per_token": r, "macs_per_token_attention": r,
        "peak_mem_delta_bytes@bs<B>": r}`` (``peak_mem_bytes@bs<B>`` too when both ran on CUDA; on CPU the
        absolute peak RSS reflects everything the process held before, so only the increase is compared). Batch
        sizes only one result measured are skipped. Times of two separately timed results are not a comparison
        (the machine's drift between them passes for a difference): time the models together with
        :func:`aeflib.evaluation.compare_latency`.

    Raises:
        ValueError: If the two results were computed for different ``seq_len`` (MACs would not be comparable).

    Source: [ours].
    """
    if dense.seq_len != pruned.seq_len:
        raise ValueError(
            f"cannot compare MACs at seq_len {pruned.seq_len} (pruned) with MACs at seq_len {dense.seq_len} (dense)"
        )

    def ratio(a: float, b: float) -> float:
        return b / a if a else float("nan")

    out = {
        "params_total": ratio(dense.params_total, pruned.params_total),
        "params_layers": ratio(sum(dense.params_layers), sum(pruned.params_layers)),
        "macs_per_token": ratio(dense.macs_per_token, pruned.macs_per_token),
        "macs_per_token_attention": ratio(dense.macs_per_token_attention, pruned.macs_per_token_attention),
    }
    names = ["peak_mem_delta_bytes"]
    if dense.device.startswith("cuda") and pruned.device.startswith("cuda"):
        names.append("peak_mem_bytes")  # CPU peak RSS is the whole process's history, not the model's
    for b in sorted(set(dense.timings) & set(pruned.timings)):
        d, p = dense.timings[b], pruned.timings[b]
        for name in names:
            out[f"{name}@bs{b}"] = ratio(getattr(d, name), getattr(p, name))
    return out
