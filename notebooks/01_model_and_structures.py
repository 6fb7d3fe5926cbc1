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
# ## What you will learn
# * where a model's parameters sit, and why the *pruning ratio* is not the *parameter reduction*;
# * what a **group** is — the weight slices that must go together — and how many weights one group holds;
# * what breaks when you cut one layer alone (the *coupling* that makes groups necessary).
#
# **What it needs from the previous stage:** nothing — this is the first stage. It writes the model section of
# `metrics.json`, which every later notebook checks so that the stages never mix two models.
#
# **Run time:** 13 s on an idle 2-core CPU with the default settings (SmolLM2-135M; `python
# benchmarks/pipeline.py`).
#
# **Peak memory:** 1,210 MiB resident in this notebook's kernel with the default settings (SmolLM2-135M;
# `make binder-check` under a 2 GiB limit, docs/binder-check.md); the last cell records it for your run.
#
# **Read alongside:** the AEF paper ([arXiv 2403.10799](https://arxiv.org/abs/2403.10799)), stage (1) *grouping*,
# which reuses LLM-Pruner ([arXiv 2305.11627](https://arxiv.org/abs/2305.11627)) §3.1 "Discover all coupled
# structure in LLMs" (LLM-Pruner's options `--block_wise`, `--block_attention_layer_start 4`,
# `--block_attention_layer_end 30`). Words in *italics* are defined in the [glossary](../docs/glossary.md).

# %% [markdown]
# ## Parameters
# The next cell holds every setting as a plain value. `aef run` (papermill) replaces it with an injected cell; when
# you run the notebook yourself, edit it here — and use the same values in all seven notebooks.

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
# ## Why groups: cut one layer alone and the model breaks
# Suppose we remove head 0's rows from the query projection and touch nothing else. The projection itself still
# runs — it just outputs `head_dim` fewer numbers — but the next step reshapes those numbers into heads and pairs
# each query head with a key head (and the output projection expects every head's columns). The shapes no longer
# agree, and the forward pass stops with an error. The cell cuts the rows in place, runs one forward pass, prints
# the error and puts the original weight back.

# %% tags=["nbval-ignore-output"]
import torch

block = adapter.decoder_layers(m)[layer_range.start]
q_param, _, q_rows = head_set.group(0).regions[0]          # the first slice: query rows
q_linear = block.get_submodule(q_param.removesuffix(".weight"))
full_weight = q_linear.weight
kept_rows = torch.tensor([i for i in range(full_weight.shape[0]) if i not in q_rows])
ids = tokenizer("The history of the city", return_tensors="pt").input_ids.to(m.device)
try:
    q_linear.weight = torch.nn.Parameter(full_weight[kept_rows])
    m(input_ids=ids)
    error = None
except RuntimeError as err:
    error = err
finally:
    q_linear.weight = full_weight                           # the model is whole again
cut_shape = (len(kept_rows), full_weight.shape[1])
print(f"{q_param}: {tuple(full_weight.shape)} -> {cut_shape}")
print(f"forward pass: {type(error).__name__}: {str(error)[:160]}")

# %% [markdown]
# The error is the point: the query rows of a head, its key/value rows (without GQA) and its columns of the output
# projection are **coupled**. A structured pruner must remove them together — a group — and that is what the
# adapter's slices list. The cell below checks that the forward pass failed, and that it runs again now that the
# weight is back.

# %%
assert error is not None, "cutting q_proj alone should break the forward pass"
m(input_ids=ids).logits.shape

# %% [markdown]
# ## How many weights is one group?
# Work it out from the model's configuration (`hidden_size` = h, `head_dim` = d). For a LLaMA-layout model without
# biases:
#
# * one **query head under GQA** owns d rows of `q_proj` (each of length h) and d columns of `o_proj` (each of
#   length h): 2 · d · h weights. On SmolLM2-135M (d = 64, h = 576): 2 × 64 × 576 = **73,728** weights;
# * one **head without GQA** also owns d rows of `k_proj` and of `v_proj`: 4 · d · h;
# * one **MLP channel** owns a row of `gate_proj` and of `up_proj` and a column of `down_proj`: 3 · h
#   (SmolLM2: 1,728).
#
# The cell computes these from `model.config` and asserts that they equal the adapter's own count
# (`GroupSet.params_per_group`), so the numbers are right for whatever model this notebook runs on.

# %% tags=["nbval-check-output"]
cfg = m.config
head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
n_kv = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
gqa = n_kv < cfg.num_attention_heads
per_head = (2 if gqa else 4) * head_dim * cfg.hidden_size
per_channel = 3 * cfg.hidden_size
assert adapter.family != "llama" or (per_head, per_channel) == (
    head_set.params_per_group, channel_set.params_per_group)
print(f"hidden {cfg.hidden_size}, head_dim {head_dim}, GQA {gqa}")
print(f"one {head_set.unit}: {head_set.params_per_group:,} weights; "
      f"one channel: {channel_set.params_per_group:,} weights")

# %% [markdown]
# ## Record
# Stage 01 writes the model section of `metrics.json`: name, family, parameter count, checksum and the pruned layer
# range. Later stages check they run on the same model.

# %% tags=["nbval-ignore-output"]
run.merge_metrics("model", stages.model_section(model, m, adapter, layer_range))
run.listing()

# %% [markdown]
# ## Exercises
# Try each one before opening its solution: the solution cells are collapsed (in JupyterLab, click the blue bar at
# their left to expand them; tags `solution`, `hide-input` for a rendered book). They run with the notebook.
#
# **Exercise 1 — predict the group count.** How many head groups and how many channel groups do the pruned layers
# hold in total? Work it out from `model.config` and the layer range printed above, then check against the adapter.

# %% tags=["solution", "hide-input"] jupyter={"source_hidden": true, "outputs_hidden": true}
n_layers_pruned = len(layer_range)
groups_per_layer = {"head": head_set.n, "channel": channel_set.n}
predicted = {kind: n * n_layers_pruned for kind, n in groups_per_layer.items()}
all_sets = adapter.all_group_sets(m, layer_range)
counted = {kind: sum(gs.n for gs in all_sets if gs.kind == kind) for kind in predicted}
assert predicted == counted
print(f"{n_layers_pruned} pruned layers x {groups_per_layer} = {counted}")

# %% [markdown]
# **Exercise 2 — ratio vs reduction.** If every pruned layer loses a quarter of its heads and of its channels
# (pruning ratio 0.25), what share of *all* parameters goes? Use the group sizes above. Why is it below 0.25?

# %% tags=["solution", "hide-input"] jupyter={"source_hidden": true, "outputs_hidden": true}
import aeflib.pruning

total = aeflib.pruning.count_parameters(m)
in_groups = sum(gs.n * gs.params_per_group for gs in all_sets)
share = 0.25 * in_groups / total
assert share < 0.25
print(f"grouped weights: {in_groups:,} of {total:,} ({in_groups / total:.1%})")
print(f"ratio 0.25 removes about {share:.1%} of all parameters")
# Below 0.25: embeddings, norms, k/v under GQA and the unpruned layers are never cut.
# (The plan in 04 rounds to whole groups per layer, so its exact count differs a little.)

# %% [markdown]
# ## Takeaways
# * A structured pruner removes **groups** — coupled slices of several weights — never a slice of one layer alone:
#   that breaks the forward pass, as the error above showed.
# * One group's size follows from the configuration: 2 · head_dim · hidden weights for a query head under GQA,
#   4 · head_dim · hidden for a head without GQA, 3 · hidden for an MLP channel.
# * The *pruning ratio* acts on the grouped weights of the pruned layers only, so the share of all parameters
#   removed is smaller. Next: notebook 02 scores every group.

# %% [markdown]
# ## Memory
# This kernel's peak resident memory (its high-water mark, every cell above included) goes into `metrics.json`;
# `report.md` shows it beside the stage's run time.

# %% tags=["nbval-ignore-output"]
run.record_peak_memory("01_model_and_structures")

# %% [markdown]
# **Before you open the next notebook:** shut this kernel down (*Kernel → Shut Down Kernel*), then open
# notebook 02_importance. A kernel holds its model in memory until it ends; with one kernel at a time, a JupyterLab session
# stays inside the 2 GiB of a free Binder session.
