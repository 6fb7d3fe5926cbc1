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
# # 01 · The model and its coupled structures
#
# AEF prunes an LLM in three stages **[paper]**: (1) *grouping* — find the weights that must be removed together;
# (2) *adaptive estimation* — score every group with a coarse and a fine importance estimate and fuse them;
# (3) *recovery* — a short LoRA fine-tune. These notebooks walk through it on a real small model (SmolLM2-135M,
# shipped with aeflib) one stage per notebook:
#
# | notebook | does | writes to the run folder |
# |---|---|---|
# | 01 model and structures | load, count parameters, show the groups of one layer | `metrics.json` (model) |
# | 02 importance | calibration set, coarse vs fine estimates, their disagreement | `scores.safetensors` |
# | 03 fusion | AEF fusion weights per layer, fused ranking | `fusion.json` |
# | 04 pruning | plan, explorer, cut the model, sample text | `plan.json`, `pruned/` |
# | 05 recovery | LoRA on the pruned model | `recovered/` |
# | 06 evaluation | perplexity, zero-shot, efficiency: dense vs pruned vs recovered | `metrics.json` (evaluation) |
# | 07 reproduce paper | this run beside the published numbers | `paper_comparison.csv` |
#
# Run them in order with the same parameters, or all at once with `aef run` (which also writes `report.md`).
#
# *How to read the labels:* **[paper]** = stated by the AEF paper (arXiv 2403.10799) or LLM-Pruner;
# **[LLM-Pruner code]** = read in LLM-Pruner's code; **[ours]** = aeflib's reconstruction where the paper is silent
# (the AEF fusion formula is not public — see `aeflib/fusion.py` and docs/paper.md §1/§3).

# %% [markdown]
# ## Parameters
# The next cell holds every setting as a plain value. `aef run` (papermill) replaces it with an injected cell; when
# you run the notebook yourself, edit it here — and use the same values in all seven notebooks.

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
show_group = 0                 # which head / channel of the first pruned layer to print

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
# ## Where the parameters are
# *Pruning ratio* and *parameter reduction* are different numbers **[paper]**: the ratio is the share of heads and
# channels removed inside the pruned layers; the reduction is the share of *all* parameters removed. Embeddings,
# norms, the first layers and the last two layers (LLM-Pruner's default range) are never pruned, so the same ratio
# removes a smaller share of the whole model — on SmolLM2 the tied embedding alone is a fifth of it.

# %% tags=["nbval-check-output"]
analysis.parameter_table(m, adapter, layer_range)

# %% [markdown]
# ## Groups per layer
# A **group** is the set of weight slices removed together. An attention *head* group is the head's rows of the
# query (and, without GQA, key and value) projection plus its columns of the output projection; an MLP *channel*
# group is one row of the gate and up projections and one column of the down projection **[LLM-Pruner code]**.
# Under GQA (SmolLM2: 9 query heads sharing 3 kv heads) aeflib's default groups are query heads, removed in equal
# numbers inside each kv group so that the layer stays legal **[ours]**.

# %% tags=["nbval-check-output"]
structure = analysis.structure_table(m, adapter)
structure

# %% [markdown]
# The same table as a figure: where each decoder layer's parameters sit.

# %%
fig = plots.structure(structure, model)
run.save_figure(fig, "01_structure")
fig

# %% [markdown]
# ## One head and one channel, slice by slice
# `GroupSet.group(i)` expands group *i* into the concrete rows and columns it owns. These are the slices that
# importance estimation scores together and that pruning cuts together.

# %% tags=["nbval-check-output"]
head_set, channel_set = adapter.group_sets(m, layer_range.start)
print(head_set.group(show_group))
print(channel_set.group(show_group))

# %% [markdown]
# The widths this layer runs with, read from its weights (not from module attributes, which go stale after
# pruning in other tools).

# %% tags=["nbval-check-output"]
adapter.widths(m, layer_range.start)

# %% [markdown]
# ## Record
# Stage 01 writes the model section of `metrics.json`: name, family, parameter count, checksum and the pruned layer
# range. Later stages check they run on the same model.

# %% tags=["nbval-ignore-output"]
run.merge_metrics("model", stages.model_section(model, m, adapter, layer_range))
run.listing()
