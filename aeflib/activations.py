"""Input-activation statistics of Linear layers over the calibration set: the inputs of Wanda-sp and FLAP.

``capture_inputs(model, modules, calibration)`` → ``{module: InputMoments}`` from one no-grad forward pass with a
forward pre-hook on each Linear; :class:`InputMoments` holds, per input feature j of a Linear over all T = N·L
calibration tokens, the token count, the mean x̄_j, the sum of squares Σ_t x_tj² (so ‖X_j‖₂) and the unbiased
sample variance Var(X_j) = Σ_t (x_tj − x̄_j)² / (T − 1). :func:`output_slice` is the slice of a group set that cuts
the *input columns* of its output projection (``o_proj`` / ``down_proj``; Bloom ``self_attention.dense`` /
``mlp.dense_4h_to_h``; Baichuan ``o_proj``): the columns that Wanda-sp and FLAP score.

The activation criteria of :data:`aeflib.importance.ESTIMATORS` (``wanda``, ``wanda-sp``, ``fluctuation``) read
these statistics, and :mod:`aeflib.flap` reads the means for its bias compensation:

| criterion   | score of a group (head / channel)                                   | source                      |
|-------------|---------------------------------------------------------------------|-----------------------------|
| wanda-sp    | Σ over its output-projection columns j, rows i: |W_ij| · ‖X_j‖₂      | [field] FLAP's Wanda-sp     |
| fluctuation | Σ over its output-projection columns j: Var(X_j) · ‖W_:,j‖₂²        | [field] FLAP (WIFV metric)  |
| wanda       | Σ |W| · ‖X‖₂ over *every* slice of the group (q/k/v or gate/up rows too) | [ours, Wanda-style]    |

Numerics [ours]: each forward chunk's moments are computed in fp32 (two-pass, from the chunk's own mean), then
merged into fp64 running moments with Chan et al.'s parallel formula, so the variance equals the variance of all
tokens at once (no Σx² − T·x̄² cancellation) and does not depend on ``chunk_size``.

How FLAP's released code accumulates the fluctuation (``lib/layerwrapper.py`` ``BiasGPT.add_batch``, read, not
copied): window by window, with the running mean updated *in place* before the deviations are taken (the "old" mean
aliases the new one), the first window's deviations dropped, and the sum scaled by the number of windows rather than
tokens. That approximates L × the sample variance. aeflib computes the exact sample variance over all tokens, as the
paper defines it (arXiv 2312.11983); a constant factor does not change rankings and disappears in FLAP's
standardisation (:mod:`aeflib.flap`). Its Wanda-sp (``prune_wanda_sp``) averages |W|·‖X‖ over the output rows
(a constant factor: aeflib sums) and prunes layer by layer, each layer's inputs taken from the already pruned
layers before it, with a uniform ratio; aeflib's ``wanda-sp`` criterion scores every layer on the dense model in
one forward pass, like every other criterion of :func:`aeflib.importance.estimate`, so that the methods differ in
their scores only (the ratio stays uniform: :func:`aeflib.pruning.plan`).

Source: [field] Wanda (Sun et al., arXiv 2306.11695), FLAP (An et al., AAAI 2024, arXiv 2312.11983); hooks [ours].
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from aeflib.models.adapters import GroupSet, Slice

__all__ = ["InputMoments", "capture_inputs", "output_slice"]

Tensor = torch.Tensor


@dataclass
class InputMoments:
    """Running moments of one Linear's input features over calibration tokens (fp64 accumulators).

    Attributes:
        tokens: T, tokens seen.
        mean: x̄_j, fp64 [in_features].
        m2: Σ_t (x_tj − x̄_j)², fp64 [in_features].
        sumsq: Σ_t x_tj², fp64 [in_features].

    Source: [ours] (Chan, Golub and LeVeque's pairwise update of mean and M2).
    """

    tokens: int
    mean: Tensor
    m2: Tensor
    sumsq: Tensor

    @classmethod
    def of(cls, x: Tensor) -> InputMoments:
        """Moments of ``x`` [tokens, in_features], any float dtype (computed in fp32, stored in fp64)."""
        x = x.detach().float()
        mean = x.mean(0)                                                         # [in_features]
        return cls(x.shape[0], mean.double(), (x - mean).pow(2).sum(0).double(), x.pow(2).sum(0).double())

    def merge(self, other: InputMoments) -> None:
        """Add ``other``'s tokens to these moments, in place (Chan's parallel formula)."""
        n = self.tokens + other.tokens
        delta = other.mean.to(self.mean.device) - self.mean
        self.m2 += other.m2.to(self.m2.device) + delta.pow(2) * (self.tokens * other.tokens / n)
        self.mean += delta * (other.tokens / n)
        self.sumsq += other.sumsq.to(self.sumsq.device)
        self.tokens = n

    @property
    def norm(self) -> Tensor:
        """‖X_j‖₂ over all tokens, fp32 [in_features]."""
        return self.sumsq.sqrt().float()

    @property
    def variance(self) -> Tensor:
        """Unbiased sample variance Σ_t (x_tj − x̄_j)² / (T − 1), fp32 [in_features] (zero for T = 1)."""
        return (self.m2 / max(self.tokens - 1, 1)).float()


@torch.no_grad()
def capture_inputs(model: nn.Module, modules: Iterable[nn.Module], calibration: Tensor,
                   chunk_size: int | None = None, *, keep_inputs: bool = False) -> dict[nn.Module, InputMoments]:
    """Moments of each module's input features over every calibration token, from one no-grad forward pass.

    Args:
        model: A causal LM taking ``input_ids``; unchanged.
        modules: ``nn.Linear`` modules inside ``model`` to observe.
        calibration: LongTensor [N, L] of token windows, on the model's device.
        chunk_size: Windows per forward (default all N); moments are merged across chunks.
        keep_inputs: Keep every fp32 input and compute the moments at the end (the oracle of the running merge;
            memory T × in_features per module).

    Returns:
        ``{module: InputMoments}`` with T = N·L tokens each.

    Raises:
        ValueError: A module that is not an ``nn.Linear`` (its input features would be unknown), naming its type.

    Source: [ours].
    """
    modules = list(dict.fromkeys(modules))
    for m in modules:
        if not isinstance(m, nn.Linear):
            raise ValueError(f"activation statistics need nn.Linear modules; got {type(m).__name__}")
    moments: dict[nn.Module, InputMoments] = {}
    kept: dict[nn.Module, list[Tensor]] = {m: [] for m in modules}

    def hook(module: nn.Module, args: tuple) -> None:
        x = args[0].detach().float().reshape(-1, args[0].shape[-1])              # [tokens, in_features]
        if keep_inputs:
            kept[module].append(x)
        elif module in moments:
            moments[module].merge(InputMoments.of(x))
        else:
            moments[module] = InputMoments.of(x)

    handles = [m.register_forward_pre_hook(hook) for m in modules]
    try:
        for chunk in calibration.split(chunk_size or calibration.shape[0]):
            model(input_ids=chunk, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    if keep_inputs:
        moments = {m: InputMoments.of(torch.cat(kept[m])) for m in modules}
    return moments


def output_slice(gs: GroupSet) -> Slice:
    """The slice of ``gs`` that cuts input columns (``dim=1``): its output projection (o_proj, down_proj ...).

    Every :class:`~aeflib.models.adapters.GroupSet` has exactly one (enforced when it is built).
    """
    return next(s for s in gs.slices if s.dim == 1)
