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
# # 02 · Importance: coarse and fine estimates
#
# Every group gets a score from the *calibration set* — a handful of token windows — through backward passes of
# the language-model loss (one for the gradient, one more per window for the Fisher term of element2). With weights W and gradient g = ∂L/∂W, the *salience* of a weight is s = W ⊙ g (the
# first-order Taylor term of the loss change when that weight is removed):
#
# | criterion | score of a group | granularity | source |
# |---|---|---|---|
# | `vector` | Σ over vectors of \|Σ_k s_k\| | coarse | **[paper]** vector-wise |
# | `element1` | Σ_k \|s_k\| | fine | **[LLM-Pruner code]** `param_first` |
# | `element2` | Σ_k \|s_k − ½ W_k² F_kk\| with diagonal Fisher F | fine, 2nd order | **[paper]** Taylor + Fisher, **[LLM-Pruner code]** `param_mix` |
# | `l1`, `l2`, `random` | weight magnitude / uniform draw | baselines | **[LLM-Pruner code]** |
#
# AEF fuses a fine and a coarse estimate **[paper]**. Before fusing, it is worth seeing *how much they disagree*:
# where they rank the groups alike, fusion changes little; where they differ, the choice matters. aeflib computes
# all criteria in one set of backward passes with gradients turned into scores inside backward hooks and freed at once, so memory
# stays near the model's size **[ours]** (the naive path is kept as the test oracle).

# %% [markdown]
# ## What you will learn
# * where the importance estimators come from: a Taylor expansion of the loss, with the Fisher standing in for the
#   Hessian;
# * what a *vector* is, and why the vector-wise estimate lets saliences cancel while the element-wise one cannot;
# * how to compute one head's and one channel's `vector`, `element1` and `element2` scores **by hand** from `.grad`
#   — and check that they equal aeflib's;
# * how far the coarse and the fine estimate agree on this model.
#
# **What it needs from the previous stage:** the run folder of notebook 01 (its model section of `metrics.json`),
# so that the scores belong to the same model. It writes `scores.safetensors`, which notebooks 03 and 04 read.
#
# **Run time:** 21 s on an idle 2-core CPU with the default settings (SmolLM2-135M, 10 × 64 calibration tokens;
# `python benchmarks/pipeline.py`), plus a few seconds for the by-hand check below.
#
# **Peak memory:** 1,566–1,735 MiB resident in this notebook's kernel over three runs with the default settings
# (SmolLM2-135M; `make binder-check` under a 2 GiB limit and `aef run`, docs/binder-check.md); the last cell records
# it for your run.
#
# **Read alongside:** the AEF paper ([arXiv 2403.10799](https://arxiv.org/abs/2403.10799)), stage (2) *adaptive
# estimation* (the fine- and coarse-grained estimates); LLM-Pruner ([arXiv 2305.11627](https://arxiv.org/abs/2305.11627))
# §3.2 "Grouped importance estimation", whose code names the criteria `--pruner_type taylor` with
# `--taylor vectorize` (vector), `param_first` (element1) and `param_mix` (element2), and `--pruner_type l1 / l2 /
# random` for the baselines. Terms: [glossary](../docs/glossary.md).

# %% [markdown]
# ## Parameters
# The same values as in notebook 01, plus the criteria to compute and which two to compare.

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
criteria = ["random", "l2", "vector", "element1", "element2"]
fine = "element2"              # fine estimate fused in 03 [paper]: Taylor + Fisher
coarse = "vector"              # the coarse-grained estimate [paper]
fisher_memory_gib = 0.2        # GiB of fp32 Fisher/gradient sums held at once

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
import aeflib.importance

# %% [markdown]
# ## The model
# `aeflib.models.load` returns the model, its tokenizer and its *structure adapter* — the one object that knows how
# this family couples its weights (LLaMA, Baichuan's fused `W_pack`, Bloom's interleaved `query_key_value`).
# Nothing downstream asks which model it is on.

# %% tags=["nbval-check-output"]
m, tokenizer, adapter = aeflib.models.load(model, dtype=dtype, device=device)
layer_range = artifacts.pruned_layers(adapter, m, layers)
adapter.family, adapter.n_layers(m), layer_range

# %% [markdown]
# ## The calibration set
# LLM-Pruner draws 10 random windows of 64 tokens from distinct BookCorpus documents with seed 42 **[LLM-Pruner
# code]**. Offline, aeflib draws them from the shipped Wikipedia text the same way **[ours]**. The shape is
# [N windows, L tokens].

# %% tags=["nbval-check-output"]
calib = aeflib.data.calibration(
    tokenizer, corpus=calib_corpus, n=calib_n, seq_len=calib_seq_len, seed=seed
)
calib.shape

# %% [markdown]
# The first window, decoded — real text, not random tokens:

# %%
tokenizer.decode(calib[0])

# %% [markdown]
# ## Estimate every criterion at once
# One `estimate` call scores every head and channel group of the pruned layers under each criterion. `element2`
# needs the diagonal Fisher, accumulated from one backward pass per window, in fp32 whatever the model's dtype.
# `fisher_memory_gib` caps the memory those fp32 accumulators may take at once (see below).

# %% tags=["nbval-check-output"]
scores = aeflib.importance.estimate(
    m, adapter, calib, criteria=criteria, layers=layer_range,
    fisher_memory_gib=fisher_memory_gib,
)
scores.save(run / "scores.safetensors")
scores.criteria, len(scores.group_keys)

# %% [markdown]
# The scores of the first pruned layer's heads: larger = more important. The criteria live on very different
# scales — orders of magnitude apart — which is why fusion normalises them first **[LLM-Pruner issue #23]**.

# %%
analysis.score_table(scores, f"{layer_range.start}.head")

# %% [markdown]
# ## The math behind the estimators
# Removing a block of weights $W$ (setting it to zero) changes the loss by $\Delta L = L(0) - L(W)$. Expand $L$
# around the current weights to second order, with $g = \partial L/\partial W$ and Hessian $H$:
#
# $$L(W + \delta) \approx L(W) + g^\top \delta + \tfrac12\, \delta^\top H \delta, \qquad
#   \delta = -W \;\Rightarrow\; \Delta L \approx -g^\top W + \tfrac12\, W^\top H W .$$
#
# **[paper]** (LLM-Pruner §3.2). Computing $H$ is out of reach for an LLM, so it is replaced by the **diagonal
# empirical Fisher**, the mean squared gradient over the N calibration windows $x_j$, each with its own backward pass:
#
# $$H_{kk} \approx F_{kk} = \frac1N \sum_{j=1}^{N} \Big(\frac{\partial L(x_j)}{\partial W_k}\Big)^2 .$$
#
# With the per-weight **salience** $s_k = W_k g_k$, the loss change of removing weight $k$ alone is about
# $-s_k + \tfrac12 W_k^2 F_{kk}$, and its size is the importance. A group's slices are cut into **vectors** — a
# vector is one row of a weight whose *rows* belong to the group (`q_proj`, `gate_proj`: length = hidden size), or one
# column of a weight whose *columns* belong to it (`o_proj`, `down_proj`). A group is scored by summing over its
# vectors $v$ and their elements $k$:
#
# $$I_\text{vector} = \sum_v \Big|\sum_{k\in v} s_k\Big|, \qquad
#   I_\text{element1} = \sum_v \sum_{k\in v} |s_k|, \qquad
#   I_\text{element2} = \sum_v \sum_{k\in v} \big|s_k - \tfrac12 W_k^2 F_{kk}\big| .$$
#
# *Vector-wise* treats a whole vector as one unit: it takes the first-order loss change of removing the vector at
# once, $-\sum_k s_k$, and signed saliences **cancel** inside the sum — a row whose weights push the loss up and down
# in equal measure scores near 0. *Element-wise* takes the absolute value of each weight first, so nothing cancels.
# By the triangle inequality $|\sum_k s_k| \le \sum_k |s_k|$ for every vector, hence
# **element1 ≥ vector for every group, always** — a fact the cell after the by-hand check verifies on every group of
# this run. The Fisher term is small next to the first-order one (a squared weight times a squared gradient), so
# element2 stays close to element1 — close, not equal; it is accumulated in fp32 because in low precision it can
# vanish altogether (LLM-Pruner issue #23).
#
# How aeflib computes $g$ **[LLM-Pruner code]**: one backward pass of the *mean* loss over all N windows at once (the
# gradient of the calibration loss); $F$ from N more backward passes, one window each, squared and divided by N.
# When the fp32 accumulators would exceed `fisher_memory_gib` (this run's default on SmolLM2: 0.2 GiB), aeflib
# instead scores a slice of layers at a time from the N single-window passes alone, with $g$ their mean: the windows
# have equal length, so the mean of the per-window gradients *is* the gradient of the mean loss **[ours]**. The
# group's score is the *sum* over its slices (LLM-Pruner's `--grouping_strategy sum`). No further normalisation:
# the scores are raw, and fusion (03) normalises them.

# %% [markdown]
# ## From scratch: one head and one channel by hand
# Now compute all three for group 0 of each kind in the first pruned layer, with nothing but PyTorch. First the
# slices: each region is `(parameter, dim, indices)` — dim 0 = rows, dim 1 = columns (the same listing as in 01).

# %%
import torch

layer = layer_range.start
block = adapter.decoder_layers(m)[layer]
head_set, channel_set = adapter.group_sets(m, layer)
by_kind = {"head": head_set.group(0), "channel": channel_set.group(0)}
names = [name for group in by_kind.values() for name, _, _ in group.regions]
params = [block.get_parameter(name) for name in names]
print(by_kind["head"])
print(by_kind["channel"])

# %% [markdown]
# One backward pass per window; the losses come from a generator, so each window's graph is built only when its
# gradient is taken and freed before the next (a list of all N losses would hold N graphs at once). The gradient $g$ of the mean loss over all calibration windows is the
# mean of the N per-window gradients (equal-length windows); the Fisher is the mean of their squares.
# `torch.autograd.grad` returns the gradients without storing them in `.grad`.

# %%
ids = calib.to(m.device)
windows = ids.split(1)                                           # N windows [1, L]
window_losses = (m(input_ids=x, labels=x, use_cache=False).loss for x in windows)  # lazy
per_window = [torch.autograd.grad(loss_j, params) for loss_j in window_losses]
stacked = [torch.stack(g).float() for g in zip(*per_window, strict=True)]  # [N, *shape]
grad = dict(zip(names, [g.mean(0) for g in stacked], strict=True))  # dL/dW, mean loss
fisher = dict(zip(names, [g.pow(2).mean(0) for g in stacked], strict=True))
with torch.no_grad():                                   # the mean loss over the N windows
    losses = [m(input_ids=x, labels=x, use_cache=False).loss for x in windows]
    loss = torch.stack(losses).mean()
weight = {name: p.detach().float() for name, p in zip(names, params, strict=True)}
f"calibration loss {loss.item():.3f} nats/token over {ids.shape[0]} windows"

# %% [markdown]
# Each region's W, g and F, cut to the group's indices and laid out as `[vectors, vector length]` (a column slice is
# turned so that its columns become rows), then the three formulas above, region by region — the rows of the
# table are the group's slices (query rows, output columns, …), each a sum over its vectors:

# %%
import pandas as pd

regions = [(kind, *r) for kind, group in by_kind.items() for r in group.regions]
trio = {n: torch.stack([weight[n], grad[n].float(), fisher[n]]) for n in names}
# W, g, F of each slice, its vectors as rows: [3, vectors, vector length]
picked = {(k, n): trio[n].movedim(d + 1, 1)[:, list(i)] for k, n, d, i in regions}
views = {key: t.reshape(3, t.shape[1], -1) for key, t in picked.items()}
s = {key: w * g for key, (w, g, f) in views.items()}                # salience W ⊙ g
fisher_term = {key: 0.5 * w**2 * f for key, (w, g, f) in views.items()}  # ½ W² F
per_region = pd.DataFrame([
    {"kind": key[0], "slice": key[1], "vectors": s[key].shape[0],
     "vector": s[key].sum(1).abs().sum().item(),                     # Σ_v |Σ_k s_k|
     "element1": s[key].abs().sum().item(),                          # Σ_v Σ_k |s_k|
     "element2": (s[key] - fisher_term[key]).abs().sum().item()} for key in s
])
per_region

# %% [markdown]
# Look at the `vector` column: where a group holds both, the `v_proj` rows and the `o_proj` columns of a head (no
# GQA), and the `up_proj` row and the `down_proj` column of a channel (LLaMA's MLP), score alike. Scaling a value row
# by c or the matching output column by c changes the model identically — attention is linear in the values, the
# MLP output is linear in `up` — so the summed salience, the loss's derivative with respect to that scale, is the
# same. The element-wise columns differ: they look inside the sums. The cell checks the pairs present here.

# %%
import math

vec = per_region.set_index("slice")["vector"]
candidates = [("self_attn.v_proj.weight", "self_attn.o_proj.weight"),
              ("mlp.up_proj.weight", "mlp.down_proj.weight")]
pairs = [(a, b) for a, b in candidates if a in vec and b in vec]
assert all(math.isclose(vec[a], vec[b], rel_tol=1e-2) for a, b in pairs)
[(a, b, round(vec[a], 8), round(vec[b], 8)) for a, b in pairs]

# %% [markdown]
# Summed over the slices, the group's scores, beside aeflib's:

# %%
check = per_region.groupby("kind")[["vector", "element1", "element2"]].sum().stack()
check = check.rename("by hand").to_frame()
check["aeflib"] = [scores[c][f"{layer}.{kind}"][0].item() for kind, c in check.index]
same = torch.allclose(torch.tensor(check["by hand"].to_numpy()),
                      torch.tensor(check["aeflib"].to_numpy()), rtol=1e-4, atol=1e-12)
assert same, check
check

# %% [markdown]
# The same numbers, within a relative 1e-4 (float rounding; summation order differs): aeflib's hooks compute
# exactly these formulas. How far can element2 be from element1? By the triangle inequality, by at most Σ|½W²F|;
# the cell measures that against the first-order term Σ|W·g| for this head:

# %%
head_keys = [key for key in s if key[0] == "head"]
first_order = sum(s[key].abs().sum() for key in head_keys)
fisher_share = sum(fisher_term[key].abs().sum() for key in head_keys) / first_order
assert fisher_share < 0.1, "the prose calls the Fisher term small"
f"Σ|½W²F| / Σ|W·g| = {fisher_share.item():.2e} for head 0 of layer {layer}"

# %% [markdown]
# And the triangle inequality on *every* group of this run: element1 ≥ vector (up to float rounding), so the
# ratio vector / element1 lies in [0, 1] — near 1 when a group's saliences share a sign, near 0 when they cancel.

# %%
ratio_ve = torch.cat(
    [scores["vector"][k] / scores["element1"][k] for k in scores.group_keys])
assert (ratio_ve <= 1 + 1e-5).all()
f"vector / element1 over {ratio_ve.numel()} groups: min {ratio_ve.min():.3f}, " \
    f"median {ratio_ve.median():.3f}, max {ratio_ve.max():.3f}"

# %% [markdown]
# ## Importance per layer
# The summed importance of each layer's groups, per criterion (log scale).

# %%
calibration = f"{calib_n} x {calib_seq_len} tokens of {calib_corpus}, seed {seed}"
fig = plots.importance_per_layer(scores, criteria[1:], calibration)
run.save_figure(fig, "02_importance_per_layer")
fig

# %% [markdown]
# ## Do the coarse and the fine estimate agree?
# Per layer and kind: Spearman's ρ and Kendall's τ-b between the two rankings, and the *overlap* — the share of the
# groups the fine estimate would remove that the coarse one removes too, at the pruning ratio this run will use
# (solved from `target_params` when that is given). Overlap 1 means the same pruning decision.

# %%
ratio = stages.solve_ratio(
    m, adapter, scores, pruning_ratio=pruning_ratio, target_params=target_params,
    layers=layer_range,
)
agree = analysis.agreement(m, adapter, scores, fine, coarse, ratio)
agree.set_index(["layer", "kind"])

# %% [markdown]
# Averaged over the pruned layers, per kind:

# %%
analysis.agreement_summary({f"{fine} vs {coarse}": agree})

# %% [markdown]
# The same per layer, as a figure:

# %%
fig = plots.agreement(agree, fine, coarse, ratio)
run.save_figure(fig, "02_agreement")
fig

# %% [markdown]
# And one group set up close: each dot is a channel of the first pruned layer, placed by its rank under the
# two estimates. Dots off the diagonal are the groups the estimates disagree on.

# %%
fig = plots.importance_scatter(scores, coarse, fine, f"{layer_range.start}.channel")
run.save_figure(fig, "02_scatter")
fig

# %% [markdown]
# ## Record
# The importance section of `metrics.json`: criteria, calibration, timing, mean agreement.

# %% tags=["nbval-ignore-output"]
run.merge_metrics("importance", stages.importance_section(scores, agree, fine, coarse))
run.listing()

# %% [markdown]
# ## Exercises
# **Exercise 1 — where does cancellation bite?** Which kind, heads or channels, has the lower mean ratio
# vector / element1 in this run, i.e. where do the saliences cancel more? Write down your guess, then compute it
# from `scores` (no new gradients needed).

# %% tags=["solution", "hide-input"] jupyter={"source_hidden": true, "outputs_hidden": true}
ratio_of = {k: scores["vector"][k] / scores["element1"][k] for k in scores.group_keys}
heads = torch.cat([v for k, v in ratio_of.items() if k.endswith(".head")])
channels = torch.cat([v for k, v in ratio_of.items() if k.endswith(".channel")])
print(f"mean vector / element1: heads {heads.mean():.3f}, channels {channels.mean():.3f}")
# The lower mean cancels more. The formula does not predict which: it depends on how
# mixed in sign the saliences of each vector are, which only the measurement shows.

# %% [markdown]
# **Exercise 2 — chance level of the overlap.** If the coarse estimate's removal set were drawn at random, what
# overlap with the fine estimate's set would you expect at this run's pruning ratio? Compare with the measured
# overlap above: is the agreement better than chance?

# %% tags=["solution", "hide-input"] jupyter={"source_hidden": true, "outputs_hidden": true}
# A random set of k = r·n of the n groups holds each of the fine estimate's k removed
# groups with probability k/n ≈ r: the expected overlap (share of the fine set that is
# also removed) is about r.
chance = ratio
measured = agree.groupby("kind")["overlap"].mean()
print(f"chance overlap ≈ pruning ratio = {chance:.3f}")
print(measured.round(3).to_dict())

# %% [markdown]
# ## Takeaways
# * All the gradient criteria come from one Taylor expansion, ΔL ≈ −gᵀW + ½WᵀHW, with the diagonal Fisher for H.
# * *Vector-wise* sums signed saliences per row/column before the absolute value, so they cancel; *element-wise*
#   does not — hence element1 ≥ vector for every group, as checked above on this run.
# * The Fisher term is small next to the first-order one (the share measured above), so element2 stays close to
#   element1 — but a small difference can still reorder groups whose scores are close.
# * aeflib's scores equal a by-hand computation from `.grad`; the estimates' agreement is measured against chance,
#   not assumed. Next: notebook 03 fuses the fine and the coarse estimate.

# %% [markdown]
# ## Memory
# This kernel's peak resident memory (its high-water mark, every cell above included) goes into `metrics.json`;
# `report.md` shows it beside the stage's run time.

# %% tags=["nbval-ignore-output"]
run.record_peak_memory("02_importance")

# %% [markdown]
# **Before you open the next notebook:** shut this kernel down (*Kernel → Shut Down Kernel*), then open
# notebook 03_fusion. A kernel holds its model in memory until it ends; with one kernel at a time, a JupyterLab session
# stays inside the 2 GiB of a free Binder session.
