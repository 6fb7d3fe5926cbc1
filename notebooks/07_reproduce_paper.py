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
# # 07 · This run beside the published numbers
#
# The AEF paper reports gains over LLM-Pruner's estimators (+1.1 average points on LLaMA-7B, +1.02 Vicuna-7B, +2.0
# Baichuan-7B, +1.2 Bloom-7b1) but not its tables; LLM-Pruner's tables give the baselines it compares with **[paper]**.
# `data/paper_results.csv` holds every one of those numbers with its source (docs/paper.md §5).
#
# A run on SmolLM2-135M with shipped text is **not** a reproduction: another model (135 M vs 7 B parameters), another
# perplexity corpus (Wikipedia sample vs WikiText-2), the seven zero-shot tasks on a seeded subset of each (the full
# splits on a GPU) and a short recovery. The table below puts the numbers side by side with the same metric names so that the *kind* of
# result can be compared — how much perplexity rises at ~20 % parameter reduction, how much recovery wins back — and
# so that `aef reproduce` runs on the paper's models fill the same columns. The stand-ins (Wikipedia perplexity,
# zero-shot subsets, step-budgeted recovery) and the fusion formula itself are aeflib's **[ours]**; the published numbers
# are **[paper]**.
#
# *How to read the labels:* **[paper]** = stated by the AEF paper (arXiv 2403.10799) or LLM-Pruner;
# **[LLM-Pruner code]** = read in LLM-Pruner's code; **[ours]** = aeflib's reconstruction where the paper is silent
# (the AEF fusion formula is not public — see `aeflib/fusion.py` and docs/paper.md §1/§3).

# %% [markdown]
# ## Parameters
# The same values as before, plus which published model to show.

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
paper_model = "llama-7b"       # llama-7b, vicuna-7b or bloom-7b1 (published rows)

# %% [markdown]
# ## Setup
# `setup_notebook` makes figures display inline and keeps the output readable (no loading bars; no progress bars
# when `progress=False`, as in `aef run`). `RunDir` is the run folder: it names the artifacts, refuses to mix models,
# and says which notebook to run first when an input is missing.

# %%
from aeflib import artifacts

artifacts.setup_notebook(progress)
import aeflib.models

run = artifacts.RunDir(run_dir)
run.check_model(model)
import aeflib.paper

# %% [markdown]
# ## The published table
# LLM-Pruner's table for the chosen model, as the paper prints it: perplexity (llm-pruner-128) on WikiText-2 and PTB,
# accuracy (%) on seven tasks, their plain mean.

# %% tags=["nbval-check-output"]
published = aeflib.paper.load_paper_results(model=paper_model)
aeflib.paper.paper_table(published)

# %% [markdown]
# ## This run, same columns
# From the evaluation section of this run's `metrics.json` (notebook 06).

# %% tags=["nbval-ignore-output"]
ours = aeflib.paper.run_results(run.metrics(), source=f"this run ({run.root.name})")
aeflib.paper.paper_table(ours)

# %% [markdown]
# ## Side by side, every number with its source
# The headline numbers — perplexity and the mean zero-shot accuracy — sorted by setting and metric, this run's rows
# first in each block. Compare within a setting (dense, no-tune, LoRA), never across models as if they were the same
# experiment. Every metric (each task's accuracy too) goes to `paper_comparison.csv`.

# %% tags=["nbval-ignore-output"]
every_metric = aeflib.paper.side_by_side(ours, published)
every_metric.to_csv(run / "paper_comparison.csv", index=False)
headline = aeflib.paper.side_by_side(ours, published, metrics=("perplexity", "mean"))
headline.set_index(["setting", "metric", "task", "model", "method"])

# %% [markdown]
# ## The seven zero-shot tasks
# Each task's accuracy under the paper's metric, this run's first in each setting, then every published method of the
# same setting; the last column says how this run measured it (split, items, subset seed). With a few dozen items per
# task a difference of several points is within noise (a binomial standard error at 30 items and 50 % is 9 points).

# %% tags=["nbval-ignore-output"]
aeflib.paper.seven_tasks(ours, published)

# %% [markdown]
# ## What the AEF paper claims
# The only AEF-specific numbers public: average zero-shot gains over the best baseline, in points.

# %% tags=["nbval-check-output"]
claims = aeflib.paper.load_paper_results(setting="claim")
claims.set_index("model")[["method", "metric", "value", "source"]]

# %% [markdown]
# ## Relative change, the comparable quantity
# Perplexity and accuracy of the pruned and recovered models relative to the dense one, for this run and for the
# published rows of the same methods — the shape of the result rather than its absolute level.

# %% tags=["nbval-ignore-output"]
relative = aeflib.paper.relative_to_dense(headline)
relative.set_index(["setting", "metric", "task", "model", "method"])
