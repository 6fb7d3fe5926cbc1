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
# Every group gets a score from the *calibration set* — a handful of token windows — through one backward pass of
# the language-model loss. With weights W and gradient g = ∂L/∂W, the *salience* of a weight is s = W ⊙ g (the
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
# all criteria in one pass with gradients turned into scores inside backward hooks and freed at once, so memory
# stays near the model's size **[ours]** (the naive path is kept as the test oracle).

# %% [markdown]
# ## Parameters
# The same values as in notebook 01, plus the criteria to compute and which two to compare.

# %% tags=["parameters"]
# --- what to prune ---------------------------------------------------------------------
model = "smollm2-135m"         # name from `aef models` (tiny-*: test models) or a folder
run_dir = "../runs/notebooks"  # the stages read earlier artifacts here, write their own
layers = None                  # layers to prune, [start, stop); None: default (4..n-2)
# method: random, l1, l2, vector, element1, element2, aef, aef-layer/-element/-learned
method = "aef"
target_params = 0.2            # share of ALL parameters to remove (a ratio is solved for)
pruning_ratio = None           # share of heads/channels removed per layer (if no target)
# --- calibration set (paper: 10 BookCorpus windows of 64 tokens, seed 42) --------------
calib_corpus = "wikipedia"     # shipped Wikipedia text; "bookcorpus" needs the hub
calib_n = 10
calib_seq_len = 64
seed = 42
# --- runtime ---------------------------------------------------------------------------
device = "cpu"                 # "cpu", "cuda", or "auto" (shard a big model, accelerate)
dtype = "float32"              # "float32", "bfloat16" or "float16"
progress = True                # progress bars (aef run sets False)
interactive = True             # live widgets (aef run sets False: static figures)
# --- this stage ------------------------------------------------------------------------
criteria = ["random", "l2", "vector", "element1", "element2"]
fine = "element2"              # fine estimate fused in 03 [paper]: Taylor + Fisher
coarse = "vector"              # the coarse-grained estimate [paper]

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

# %% tags=["nbval-check-output"]
scores = aeflib.importance.estimate(
    m, adapter, calib, criteria=criteria, layers=layer_range
)
scores.save(run / "scores.safetensors")
scores.criteria, len(scores.group_keys)

# %% [markdown]
# The scores of the first pruned layer's heads: larger = more important. The criteria live on very different
# scales — orders of magnitude apart — which is why fusion normalises them first **[paper: LLM-Pruner issue #23]**.

# %%
analysis.score_table(scores, f"{layer_range.start}.head")

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
