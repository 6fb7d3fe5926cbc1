# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 03 · Adaptive estimation fusion
#
# **What the paper states [paper]:** for each substructure, a fine-grained (element-wise Taylor with Fisher) and a
# coarse-grained (vector-wise) estimate are fused *adaptively* — an "attention mechanism" finds "the optimal blend of
# granularity" from "the results from complex and multilayer structures" — then the groups are sorted and the least
# important pruned.
#
# **What is aeflib's reconstruction [ours]:** the formula is not public. aeflib normalises both estimates within each
# (layer, kind) — by default to ranks scaled to [0, 1], so both have the same spread and *equal weights give equal
# influence* — and fuses I = α_fine · f̂ + α_coarse · ĉ, with the weights α from one of these named variants:
#
# | method | fusion weights α |
# |---|---|
# | `aef-layer` | one softmax gate per (layer, kind) over the *measured* calibration-loss increase ΔL of pruning that set by each estimate alone: softmax(−ΔL / (τ · mean absolute ΔL)) |
# | `aef-layer-tuned` | the same measurements on part of the calibration windows; τ, the hard choice or either estimate alone picked by the loss of the jointly pruned model on the held-out rest |
# | `aef-element` | per-group attention softmax([f̂_i, ĉ_i] / τ) on rank-scaled scores |
# | `aef-blend` | one α_fine per kind (heads, channels) from a grid, picked on calibration windows |
# | `aef-agree` | per group: removed if both estimates remove it, kept if both keep it; the disputed groups ordered by a blend picked on calibration windows |
# | `aef-learned` | gate logits trained with Adam through a soft mask of the groups to remove, early-stopped on held-out calibration windows |
#
# Every choice is made on calibration windows (train split), never on evaluation text.
#
# `aef` is an alias of the variant chosen by one rule on calibration data only (`aeflib.fusion.DEFAULT_METHOD`): the
# lowest mean paired difference to element1 in held-out calibration loss, averaged over 20 % of SmolLM2-135M's
# parameters and pruning ratio 0.64 (`python benchmarks/fusion_select.py`). That is `aef-agree`: −0.005 nats/token
# against element1, `aef-blend` −0.003, `aef-element` +0.43. **An honest negative result:** no variant beat the
# element-wise estimate outside noise — at 20 % `aef-agree` − element1 = −0.01 nats, 95 % interval [−0.03, +0.02]
# (seeds 42-43); at 0.64 only seed 42 was measured. On *evaluation* text too (docs/results.md: 300 Wikipedia and
# 54 Lee-news test windows, seeds 42-44) `aef-agree` is within noise of its better input: at 20 %, `aef-agree` −
# element1 = +0.006 nats/token [−0.001, +0.015] (Wikipedia), −0.012 [−0.040, +0.007] (news); at ratio 0.64,
# `aef-agree` − element2 = −0.023 [−0.066, +0.000] and +0.002 [−0.012, +0.019]. It beats the vector-wise estimate
# clearly, as element-wise does. On the paper's seven zero-shot tasks (30 items each, 3 seeds) it is within noise
# too: −0.63 points [−3.65, +1.90] against element1 at 20 %, +0.32 [−1.43, +2.54] against element2 at 0.64 — but at
# 210 items even vector-wise and element-wise, 0.28 nats/token apart, cannot be told apart there. How much could any
# per-layer choice between the two estimates gain? The sweep's **oracle** (an upper bound: per layer and kind the
# better estimate chosen with *evaluation* text) beats element1 by −0.040 nats [−0.093, +0.012] on Wikipedia (within
# noise) and −0.069 [−0.116, −0.027] on Lee news (seeds 42-43): little headroom, which is why no fusion of these two
# inputs measurably beats the better one on SmolLM2. `aef-agree` keeps the fine estimate's plan wherever the calibration loss gives no
# reason to leave it. With α = (1, 0) or (0, 1) the fusion reproduces the element-wise or the
# vector-wise ranking exactly (a test holds it).

# %% [markdown]
# ## What you will learn
# * the formula of each fusion variant, and which parts the paper states and which aeflib reconstructs;
# * why the scores are normalised to ranks before fusing;
# * the difference between a fusion *weight* α and its *effect* on the ranking — the **influence** — and how to
#   read the two side by side.
#
# **What it needs from the previous stage:** `scores.safetensors` from notebook 02, holding the fine and the coarse
# estimate; and the model itself, because the measuring variants prune it *temporarily* (masks, not cuts) on the
# calibration windows to compare losses. It adds the fused criterion to `scores.safetensors` and writes
# `fusion.json`, which notebook 04 uses.
#
# **Run time:** 22 s on an idle 2-core CPU with the default settings (SmolLM2-135M, `aef` = `aef-agree`;
# `python benchmarks/pipeline.py`).
#
# **Peak memory:** 1,352 MiB resident in this notebook's kernel with the default settings (SmolLM2-135M;
# `make binder-check` under a 2 GiB limit, docs/binder-check.md); the last cell records it for your run.
#
# **Read alongside:** the AEF paper ([arXiv 2403.10799](https://arxiv.org/abs/2403.10799)), stage (2) *adaptive
# estimation*: the "attention mechanism" that finds "the optimal blend of granularity" (docs/paper.md §1, §3).
# LLM-Pruner ([arXiv 2305.11627](https://arxiv.org/abs/2305.11627)) has no fusion: it picks one estimator
# (`--taylor param_mix`, `param_first` or `vectorize`), which here are the inputs. Terms:
# [glossary](../docs/glossary.md).

# %% [markdown]
# ## Parameters
# The same values as before, plus the two estimates to fuse, how they are normalised, the gate temperature and the training budget of `aef-learned`.

# %% tags=["parameters"]
# --- what to prune ---------------------------------------------------------------------
model = "smollm2-135m"         # name from `aef models` (tiny-*: test models) or a folder
run_dir = "../runs/notebooks"  # the stages read earlier artifacts here, write their own
layers = None                  # layers to prune, [start, stop); None: default (4..n-2)
# method: random, l1, l2, vector, element1, element2, wanda, aef (= aef-agree), aef-*
method = "aef"
target_params = 0.2            # share of ALL parameters to remove (a ratio is solved for)
pruning_ratio = None           # share of heads/channels removed per layer (if no target)
# --- calibration set (paper: 10 BookCorpus windows of 64 tokens, seed 42) --------------
calib_corpus = "wikipedia"     # shipped Wikipedia text; "bookcorpus" needs the hub
calib_n = 10
calib_seq_len = 64
seed = 42
# --- runtime ---------------------------------------------------------------------------
device = "cpu"                 # "cpu", "cuda", or "auto" (CUDA if available; no offload)
dtype = "float32"              # "float32", "bfloat16" or "float16"
progress = True                # progress bars (aef run sets False)
interactive = True             # live widgets (aef run sets False: static figures)
# --- this stage ------------------------------------------------------------------------
fine = "element2"              # fine estimate fused in 03 [paper]: Taylor + Fisher
coarse = "vector"              # the coarse-grained estimate [paper]
normalize_with = "rank"        # rank, zscore or sum; rank: equal weights, equal influence
temperature = 1.0              # softmax temperature of the gates
fusion_steps = 50              # aef-learned: most Adam steps
fusion_lr = 0.1                # aef-learned: Adam learning rate
fusion_patience = 8            # aef-learned: steps without a lower held-out loss

# %% [markdown]
# ## Setup
# `setup_notebook` makes figures display inline and keeps the output readable (no loading bars; no progress bars
# when `progress=False`, as in `aef run`). `RunDir` is the run folder: it names the artifacts, refuses to mix models,
# and says which notebook to run first when an input is missing.

# %%
from aeflib import artifacts

artifacts.setup_notebook(progress)
import aeflib.models
from aeflib import analysis, plots, stages

run = artifacts.RunDir(run_dir)
run.check_model(model)
import aeflib.data
import aeflib.fusion
from aeflib.scores import Scores

# %% [markdown]
# ## The model
# `aeflib.models.load` returns the model, its tokenizer and its *structure adapter* — the one object that knows how
# this family couples its weights (LLaMA, Baichuan's fused `W_pack`, Bloom's interleaved `query_key_value`).
# Nothing downstream asks which model it is on.
#
# The scores come from notebook 02.

# %% tags=["nbval-check-output"]
m, tokenizer, adapter = aeflib.models.load(model, dtype=dtype, device=device)
layer_range = artifacts.pruned_layers(adapter, m, layers)
adapter.family, adapter.n_layers(m), layer_range
scores = Scores.load(run.require("scores.safetensors"))
scores.criteria

# %% [markdown]
# ## The measurement the gates need
# `aef-layer` (and `aef-learned`) judge a removal by the calibration loss it causes, at the ratio this run prunes
# with. The calibration windows are drawn again with the same seed — the same windows as in 02.

# %% tags=["nbval-check-output"]
calib = aeflib.data.calibration(
    tokenizer, corpus=calib_corpus, n=calib_n, seq_len=calib_seq_len, seed=seed
)
ratio = stages.solve_ratio(
    m, adapter, scores, pruning_ratio=pruning_ratio, target_params=target_params,
    layers=layer_range,
)
stages.fusion_method(method), round(ratio, 4)

# %% [markdown]
# ## Fuse
# The fused criterion is added to the scores (named after the method) and saved back to `scores.safetensors`; the
# weights and the evidence behind them go to `fusion.json`. The model's weights are not changed.

# %%
result = aeflib.fusion.fuse(
    scores, stages.fusion_method(method), fine=fine, coarse=coarse,
    normalize_with=normalize_with, temperature=temperature,
    model=m, adapter=adapter, calibration=calib, pruning_ratio=ratio,
    steps=fusion_steps, lr=fusion_lr, patience=fusion_patience,
)
result.scores.save(run / "scores.safetensors")
run.save_json("fusion.json", result.to_dict())
analysis.as_table({"fused criterion": result.name, "method": result.method,
                   **result.settings})

# %% [markdown]
# ## Fusion weights and their influence per layer and kind
# α_fine is the weight of the fine estimate (α_coarse = 1 − α_fine). A weight is not yet an effect: `rho_fine` and
# `rho_coarse` are the Spearman rank correlations of the fused scores with each estimate — 1 means the fused
# ranking *is* that estimate's. With rank normalisation, equal weights give about equal correlations; with `sum`
# normalisation the estimate that spreads more would dominate at α = 0.5. For the measuring variants the table also
# shows the calibration-loss increase (nats per token) of pruning the set by each estimate alone: the estimate whose
# choice hurts less gets the larger weight.

# %%
weights = analysis.fusion_table(result)
weights.set_index(["layer", "kind"])

# %% [markdown]
# ## The formulas **[ours]**
# Within one group set (one layer ℓ, one kind m) with n groups, the fine scores $f_i$ and the coarse scores $c_i$
# are first turned into ranks scaled to [0, 1] (ties share their mean rank):
#
# $$\hat f_i = \frac{\operatorname{rank}(f_i)}{n-1}, \qquad \hat c_i = \frac{\operatorname{rank}(c_i)}{n-1}.$$
#
# Both then take the same n values, so neither dominates by its scale (raw element-wise and vector-wise scores
# differ by up to orders of magnitude). The fused score is a weighted sum, $\alpha_f + \alpha_c = 1$:
#
# $$I_i = \alpha_f\, \hat f_i + \alpha_c\, \hat c_i .$$
#
# The variants differ in where α comes from:
#
# * **`aef-layer`** — prune the set by each estimate alone (the rest of the model dense) and measure the increase of
#   the calibration loss, $\Delta L_f$ and $\Delta L_c$ (nats/token); the estimate that hurts less gets more weight:
#   $$(\alpha_f, \alpha_c) = \operatorname{softmax}\!\Big(-\frac{[\Delta L_f,\ \Delta L_c]}{\tau \cdot
#   \tfrac12(|\Delta L_f| + |\Delta L_c|)}\Big).$$
# * **`aef-layer-tuned`** — the same, with τ ∈ {0.25, 0.5, 1, 2, 4}, the hard choice (τ → 0) or either estimate
#   alone, picked by the loss of the jointly pruned model on held-out calibration windows.
# * **`aef-element`** — a per-group attention over the two estimates, no measurement:
#   $$[\alpha_{f,i},\ \alpha_{c,i}] = \operatorname{softmax}\big([\hat f_i,\ \hat c_i]/\tau\big), \qquad
#   I_i = \alpha_{f,i}\hat f_i + \alpha_{c,i}\hat c_i .$$
# * **`aef-blend`** — one $\alpha_f \in \{0, 0.25, 0.5, 0.75, 1\}$ per kind (heads, channels), chosen by a
#   coordinate search that minimises the held-out calibration loss of the model pruned by $I$.
# * **`aef-agree`** — with the blend $b_i = \alpha_f \hat f_i + (1-\alpha_f)\hat c_i$ (α_f per kind, searched as in
#   `aef-blend`) and $S = 2(\max_i b_i - \min_i b_i)$:
#   $$I_i = b_i + S\,[i\ \text{kept by both}] - S\,[i\ \text{removed by both}],$$
#   so the groups both estimates remove are removed, those both keep are kept, and $b$ orders only the disputed ones.
# * **`aef-learned`** — gate logits per (ℓ, m), α = softmax(logits), trained with Adam through a soft mask
#   $\sigma\big((I_i - \theta)/(0.1\,\tau\,\operatorname{std} I)\big)$ (θ between the k-th and (k+1)-th lowest score)
#   on the calibration loss, early-stopped on the held-out loss of the hard pruning.
#
# **Influence.** α is what the fusion *intends*; the influence is what it *did*: the Spearman correlation of the
# fused scores with each input,
#
# $$\rho_f = \operatorname{corr}\big(\operatorname{rank}(I), \operatorname{rank}(f)\big), \qquad
#   \rho_c = \operatorname{corr}\big(\operatorname{rank}(I), \operatorname{rank}(c)\big),$$
#
# the `rho_fine` and `rho_coarse` columns above. ρ = 1 means the fused ranking *is* that estimate's ranking. The
# two can disagree with α: if f and c already rank alike, both ρ are high whatever α is; under `aef-agree` a large
# part of the ranking is fixed by the agreement rule, not by α. The cell recomputes ρ for one group set from the
# scores in memory and checks it against the table.

# %%
key = f"{layer_range.start}.channel"
fused_scores = result.scores[result.name][key]
rho = (aeflib.fusion.spearman(fused_scores, result.scores[fine][key]),
       aeflib.fusion.spearman(fused_scores, result.scores[coarse][key]))
row = weights.set_index(["layer", "kind"]).loc[(layer_range.start, "channel")]
assert abs(rho[0] - row["rho_fine"]) < 1e-3 and abs(rho[1] - row["rho_coarse"]) < 1e-3
f"{key}: recomputed rho_fine {rho[0]:.4f}, rho_coarse {rho[1]:.4f}"

# %% [markdown]
# Per layer, the weights (left) and what they did to the ranking (right): heads and channels can lean to different estimates, and so can layers.

# %%
fig = plots.fusion_weights(weights, result.method)
run.save_figure(fig, "03_fusion_weights")
fig

# %% [markdown]
# ## The fused ranking against each estimate
# How close is the fused ranking to the fine and to the coarse one? Where a gate is near 1 or 0, the fused ranking
# follows one estimate; in between it mixes both.

# %%
versus_fine = analysis.agreement(m, adapter, result.scores, result.name, fine, ratio)
versus_coarse = analysis.agreement(m, adapter, result.scores, result.name, coarse, ratio)
analysis.agreement_summary({
    f"{result.name} vs {fine}": versus_fine,
    f"{result.name} vs {coarse}": versus_coarse,
})

# %% [markdown]
# Per layer, fused against the fine estimate:

# %%
fig = plots.agreement(versus_fine, result.name, fine, ratio)
run.save_figure(fig, "03_fused_vs_fine")
fig

# %% [markdown]
# And fused against the coarse estimate:

# %%
fig = plots.agreement(versus_coarse, result.name, coarse, ratio)
run.save_figure(fig, "03_fused_vs_coarse")
fig

# %% [markdown]
# ## Record
# The fusion section of `metrics.json`: method, settings, mean weights, agreement.

# %% tags=["nbval-ignore-output"]
agreements = {fine: versus_fine, coarse: versus_coarse}
run.merge_metrics("fusion", stages.fusion_section(result, agreements))
run.listing()

# %% [markdown]
# ## Exercises
# **Exercise 1 — sweep the temperature of `aef-element`.** Using only the scores already in memory (no model
# call), fuse the first pruned layer's channels with `aef-element` at τ = 0.05, 0.25, 1, 4 and 100, and compute
# the influence ρ_fine and ρ_coarse at each τ. What do the fused scores become as τ → 0 and as τ → ∞?

# %% tags=["solution", "hide-input"] jupyter={"source_hidden": true, "outputs_hidden": true}
import pandas as pd
import torch

f_hat = aeflib.fusion.normalize(result.scores[fine][key], "rank")
c_hat = aeflib.fusion.normalize(result.scores[coarse][key], "rank")
stacked = torch.stack([f_hat, c_hat])                       # [2, n]
taus = (0.05, 0.25, 1.0, 4.0, 100.0)
fused_at = {tau: (torch.softmax(stacked / tau, 0) * stacked).sum(0) for tau in taus}
sweep = pd.DataFrame({
    "tau": taus,
    "rho_fine": [aeflib.fusion.spearman(fused_at[tau], f_hat) for tau in taus],
    "rho_coarse": [aeflib.fusion.spearman(fused_at[tau], c_hat) for tau in taus],
}).round(4)
sweep
# τ → 0: the softmax puts all weight on the larger of f̂_i, ĉ_i, so I_i → max(f̂_i, ĉ_i).
# τ → ∞: both weights → ½, so I_i → (f̂_i + ĉ_i)/2, the plain mean of the ranks.

# %% [markdown]
# **Exercise 2 — fused vs random.** At this run's ratio, what share of the groups the fused criterion removes
# would a *random* criterion remove too? Derive the chance level first, then measure it with
# `analysis.agreement` (the `random` scores from 02 are in `result.scores`). Compare with the fused criterion's
# overlap with the fine estimate.

# %% tags=["solution", "hide-input"] jupyter={"source_hidden": true, "outputs_hidden": true}
# Chance: a random removal set of ratio·n groups holds each removed group with
# probability ≈ ratio.
have_random = "random" in result.scores.criteria
versus_random = analysis.agreement(
    m, adapter, result.scores, result.name, "random", ratio) if have_random else None
random_overlap = versus_random["overlap"].mean().round(3) if have_random else "not scored"
summary = {"chance (= ratio)": round(ratio, 3),
           f"{result.name} vs random": random_overlap,
           f"{result.name} vs {fine}": versus_fine["overlap"].mean().round(3)}
analysis.as_table(summary)

# %% [markdown]
# ## Takeaways
# * Every variant fuses rank-normalised scores, I = α_f·f̂ + α_c·ĉ; they differ only in where α comes from
#   (measured loss, per-group attention, a searched blend, agreement, training). The formula is aeflib's
#   reconstruction **[ours]** — the paper states the idea, not the equation.
# * Read α beside the influence ρ: the weight is an intention, the rank correlation is its effect.
# * On SmolLM2 no variant beat the element-wise estimate outside noise; `aef` = `aef-agree` keeps the fine plan
#   wherever the calibration loss gives no reason to leave it. Next: notebook 04 turns the fused scores into a plan.

# %% [markdown]
# ## Memory
# This kernel's peak resident memory (its high-water mark, every cell above included) goes into `metrics.json`;
# `report.md` shows it beside the stage's run time.

# %% tags=["nbval-ignore-output"]
run.record_peak_memory("03_fusion")

# %% [markdown]
# **Before you open the next notebook:** shut this kernel down (*Kernel → Shut Down Kernel*), then open
# notebook 04_pruning. A kernel holds its model in memory until it ends; with one kernel at a time, a JupyterLab session
# stays inside the 2 GiB of a free Binder session.
