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
# # 04 · Pruning: plan, explore, cut
#
# Inside each pruned layer, the lowest-scored heads and channels go — LLM-Pruner's *local* ranking **[LLM-Pruner
# code]**. A plan removes whole groups: `round(ratio × n)` per group set, the same number inside every kv group under
# GQA, never all of them **[ours]**. Asked for a *parameter* target, aeflib solves for the ratio; the plan records
# what was asked and what it achieves, because the two differ **[paper: LLaMA-7B "20 %" = ratio 0.25 on layers 4-29
# = 19.5 % of the parameters]**. `apply` then cuts the weights physically: the model gets smaller matrices and runs
# the same forward code.

# %% [markdown]
# ## What you will learn
# * how scores become a **plan**: local ranking inside each group set, whole groups, equal numbers per kv group;
# * why the ratio you ask for and the parameter reduction you get differ, and how aeflib solves one from the other;
# * what a physical cut does to the model (smaller matrices, same forward code), and how to predict its size.
#
# **What it needs from the previous stages:** `scores.safetensors` with the run's criterion — from notebook 02, plus
# the fused criterion from notebook 03 when `method` is an `aef` variant. It writes `plan.json` and the pruned model
# folder `pruned/`, which notebooks 05 and 06 load.
#
# **Run time:** 13 s on an idle 2-core CPU with the default settings (SmolLM2-135M; `python
# benchmarks/pipeline.py`).
#
# **Peak memory:** 1,410 MiB resident in this notebook's kernel with the default settings (SmolLM2-135M;
# `make binder-check` under a 2 GiB limit, docs/binder-check.md); the last cell records it for your run.
#
# **Read alongside:** the AEF paper ([arXiv 2403.10799](https://arxiv.org/abs/2403.10799)): "the groups are sorted
# and the least important pruned"; LLM-Pruner ([arXiv 2305.11627](https://arxiv.org/abs/2305.11627)), whose code
# prunes with `--pruning_ratio 0.25` in layers `--block_attention_layer_start 4 … _end 30` and
# `--block_mlp_layer_start 4 … _end 30`, ranking locally (without `--global_pruning`). Terms:
# [glossary](../docs/glossary.md).

# %% [markdown]
# ## Parameters
# The same values as before, plus a prompt for the before/after text sample.

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
prompt = "The history of the city"
max_new_tokens = 24

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
import aeflib.io
import aeflib.pruning
from aeflib import widgets
from aeflib.scores import Scores

# %% [markdown]
# ## The model
# `aeflib.models.load` returns the model, its tokenizer and its *structure adapter* — the one object that knows how
# this family couples its weights (LLaMA, Baichuan's fused `W_pack`, Bloom's interleaved `query_key_value`).
# Nothing downstream asks which model it is on.
#
# The scores (with the fused criterion) come from notebooks 02 and 03.

# %% tags=["nbval-check-output"]
m, tokenizer, adapter = aeflib.models.load(model, dtype=dtype, device=device)
layer_range = artifacts.pruned_layers(adapter, m, layers)
adapter.family, adapter.n_layers(m), layer_range
scores = Scores.load(run.require("scores.safetensors"))
criterion = method  # 02/03 store each method's scores under its name
criterion, scores.criteria

# %% [markdown]
# ## Explore before cutting
# Move the slider and switch the criterion: the per-layer plan and the parameter count are recomputed from the saved
# scores in milliseconds — no gradients, the model is not touched. (Run by `aef run`, this shows the static figure of
# this run's ratio instead.)

# %%
ratio = stages.solve_ratio(
    m, adapter, scores, pruning_ratio=pruning_ratio, target_params=target_params,
    layers=layer_range,
)
widgets.plan_explorer(
    m, adapter, scores, criterion=criterion, pruning_ratio=ratio, interactive=interactive
)

# %% [markdown]
# ## The plan
# Heads and channels kept per layer, from the run's criterion and target.

# %% tags=["nbval-check-output"]
pruning_plan = aeflib.pruning.plan(
    m, adapter, scores[criterion], pruning_ratio=pruning_ratio,
    target_params=target_params, layers=layer_range, criterion=criterion,
)
pruning_plan.save(run / "plan.json")
analysis.plan_table(pruning_plan)

# %% [markdown]
# A text sample from the dense model (greedy decoding, so it is repeatable):

# %% tags=["nbval-ignore-output"]
before = analysis.generate(m, tokenizer, prompt, max_new_tokens)
before

# %% [markdown]
# Before cutting, note the dense group sets and parameter count (the exercises at the end compare them with the
# pruned model). A `GroupSet` is a snapshot of shapes, so it stays valid after the cut.

# %%
dense_sets = adapter.all_group_sets(m, layer_range)
params_dense = aeflib.pruning.count_parameters(m)
f"{len(dense_sets)} group sets, {params_dense:,} parameters before the cut"

# %% [markdown]
# ## Cut
# `apply` removes every group the plan does not keep, updates the widths the forward pass reads, checks every width
# attribute against the weights, and measures the parameters left. Requested and achieved, side by side:

# %% tags=["nbval-check-output"]
aeflib.pruning.apply(m, adapter, pruning_plan)
pruning_plan.save(run / "plan.json")
analysis.plan_summary(pruning_plan)

# %% [markdown]
# Heads and channels kept per layer — the same plan as a figure:

# %%
fig = plots.plan_widths(pruning_plan)
run.save_figure(fig, "04_plan")
fig

# %% [markdown]
# The same prompt after pruning, before any recovery. A real model usually still writes text, if worse; the
# tiny test models write noise either way.

# %% tags=["nbval-ignore-output"]
after = analysis.generate(m, tokenizer, prompt, max_new_tokens)
print(f"prompt:         {prompt!r}")
print(f"before pruning: {before!r}")
print(f"after pruning:  {after!r}")

# %% [markdown]
# ## Save
# `aeflib.io.save` writes a self-describing folder (safetensors + JSON with the plans that shaped every layer): it
# reloads in a fresh process without this notebook or pickle.

# %% tags=["nbval-ignore-output"]
provenance = {"base_model": model, "method": method, "seed": seed}
aeflib.io.save(m, tokenizer, run / "pruned", adapter=adapter, plan=pruning_plan,
               overwrite=True, provenance=provenance)
samples = {"sample_before": before, "sample_after": after}
run.merge_metrics("pruning", {**pruning_plan.summary(), **samples})
run.listing()

# %% [markdown]
# ## Exercises
# **Exercise 1 — predict the plan.** A group set of n groups in b kv blocks loses
# $b \cdot \min(\lfloor r\,n/b + \tfrac12 \rfloor,\ n/b - 1)$ groups at ratio r (rounded half up per block, at least
# one group kept per block). Predict how many heads and channels each pruned layer keeps at this run's ratio, then
# check against the pruned model.

# %% tags=["solution", "hide-input"] jupyter={"source_hidden": true, "outputs_hidden": true}
import math

n_of = {gs.key: (gs.n, gs.blocks) for gs in dense_sets}      # groups, kv blocks
cut = {k: min(math.floor(ratio * n / b + 0.5), n // b - 1) for k, (n, b) in n_of.items()}
predicted = {k: n - b * cut[k] for k, (n, b) in n_of.items()}
kept = {gs.key: gs.n for gs in adapter.all_group_sets(m, layer_range)}
assert predicted == kept
print(f"ratio {ratio:.4f}: kept per group set {kept}")

# %% [markdown]
# **Exercise 2 — predict the parameter count.** Every removed group takes `params_per_group` weights with it
# (notebook 01). Predict the number of parameters the cut removed, and compare with the counts before and after.

# %% tags=["solution", "hide-input"] jupyter={"source_hidden": true, "outputs_hidden": true}
removed = sum((gs.n - kept[gs.key]) * gs.params_per_group for gs in dense_sets)
params_now = aeflib.pruning.count_parameters(m)
assert removed == params_dense - params_now
share = removed / params_dense
print(f"removed {removed:,} of {params_dense:,} parameters ({share:.2%})")

# %% [markdown]
# ## Takeaways
# * A plan ranks groups *within* each group set and removes the same share from every pruned layer (local ranking);
#   whole groups only, equal numbers per kv group under GQA.
# * The parameter reduction follows from the plan exactly: removed groups × weights per group — you can predict it
#   before cutting, as the exercises did.
# * The cut is physical: smaller matrices, the same forward code, a folder that reloads without this notebook.
#   Next: notebook 05 recovers part of the lost quality with LoRA.

# %% [markdown]
# ## Memory
# This kernel's peak resident memory (its high-water mark, every cell above included) goes into `metrics.json`;
# `report.md` shows it beside the stage's run time.

# %% tags=["nbval-ignore-output"]
run.record_peak_memory("04_pruning")

# %% [markdown]
# **Before you open the next notebook:** shut this kernel down (*Kernel → Shut Down Kernel*), then open
# notebook 05_recovery. A kernel holds its model in memory until it ends; with one kernel at a time, a JupyterLab session
# stays inside the 2 GiB of a free Binder session.
