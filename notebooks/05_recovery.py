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
# # 05 · Recovery with LoRA
#
# Pruning without retraining loses quality; AEF's third stage is a short LoRA fine-tune **[paper]**. The paper's
# settings (LLM-Pruner's): rank 8, α 16, dropout 0.05 on every attention and MLP projection, Alpaca-cleaned
# instructions for 2 epochs, lr 1e-4, batch 64, prompts masked **[paper]**. Offline and on a CPU, aeflib trains on
# the shipped question/answer pairs for a *step budget* **[ours]** — enough to see the *validation* loss fall (the
# training loss of single batches is noisy), not a full recovery. The LoRA updates are merged into the pruned weights afterwards, so the model keeps its pruned shapes.

# %% [markdown]
# ## What you will learn
# * what LoRA trains — a low-rank update (α/r)·BA beside each frozen projection — and why merging it costs nothing;
# * how to read a short loss curve honestly: batch noise versus trend;
# * where to look for how much of the quality lost to pruning the recovery wins back.
#
# **What it needs from the previous stage:** the pruned model folder `pruned/` and `plan.json` from notebook 04. It
# writes the recovered model folder `recovered/` (LoRA merged) and the recovery section of `metrics.json`.
#
# **Run time:** 47 s on an idle 2-core CPU with the default settings (SmolLM2-135M pruned, 20 steps of 4 sequences;
# `python benchmarks/pipeline.py`).
#
# **Peak memory:** 1,506 MiB resident in this notebook's kernel with the default settings (SmolLM2-135M;
# `make binder-check` under a 2 GiB limit, docs/binder-check.md); the last cell records it for your run.
#
# **Read alongside:** the AEF paper ([arXiv 2403.10799](https://arxiv.org/abs/2403.10799)), stage (3) *recovery*;
# LLM-Pruner ([arXiv 2305.11627](https://arxiv.org/abs/2305.11627)) §3.3 "Fast recovery with low-rank
# approximation", run in its code as `post_training.py --data_path yahma/alpaca-cleaned --lora_r 8 --num_epochs 2
# --learning_rate 1e-4 --batch_size 64`. Terms: [glossary](../docs/glossary.md).
#
# ## The math of LoRA **[paper]**
# Each wrapped projection keeps its pruned weight $W \in \mathbb R^{d_\text{out}\times d_\text{in}}$ frozen and learns
# two thin matrices $A \in \mathbb R^{r\times d_\text{in}}$ and $B \in \mathbb R^{d_\text{out}\times r}$:
#
# $$h = W x + \frac{\alpha}{r}\, B A\, x .$$
#
# With r = 8 and α = 16 the scale α/r is 2. B starts at zero, so training starts exactly from the pruned model. A
# projection trains r·(d_in + d_out) numbers instead of d_in·d_out — a few percent. After training the update is
# **merged**:
#
# $$W' = W + \frac{\alpha}{r}\, B A ,$$
#
# a matrix of the same shape as W, so the recovered model has the pruned shapes and runs at the pruned model's speed.

# %% [markdown]
# ## Parameters
# The same values as before, plus the recovery budget.

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
recovery_dataset = "qa"        # shipped QA pairs; the paper: "alpaca-cleaned" (hub)
recovery_steps = 20            # optimizer steps (None: 2 epochs, as the paper)
recovery_batch_size = 4        # sequences per step (paper: 64)
recovery_micro_batch_size = 1  # sequences per forward/backward pass (1: least memory)
recovery_lr = 0.0003           # peak learning rate (paper: 1e-4 over ~1.5 k steps)
recovery_cutoff = 128          # tokens per sequence (paper: 256)
recovery_val_size = 16         # validation sequences scored before and after

# %% [markdown]
# ## Setup
# `setup_notebook` makes figures display inline and keeps the output readable (no loading bars; no progress bars
# when `progress=False`, as in `aef run`). `RunDir` is the run folder: it names the artifacts, refuses to mix models,
# and says which notebook to run first when an input is missing.

# %%
from aeflib import artifacts

artifacts.setup_notebook(progress)
import aeflib.models
from aeflib import analysis, plots

run = artifacts.RunDir(run_dir)
run.check_model(model)
import aeflib.io
import aeflib.pruning
import aeflib.recovery
from aeflib.pruning import PruningPlan

# %% [markdown]
# ## The pruned model
# Loaded from the folder notebook 04 wrote — the folder alone is enough.

# %% tags=["nbval-check-output"]
m, tokenizer, adapter = aeflib.io.load(run.require("pruned"), dtype=dtype, device=device)
pruning_plan = PruningPlan.load(run.require("plan.json"))
aeflib.pruning.count_parameters(m)

# %% [markdown]
# The merge is plain linear algebra: applying W and the update separately equals applying the merged matrix. A check
# on small random matrices (shapes as above: d_out = 6, d_in = 8, r = 2, α = 4), and the pruned model's size, to
# compare with the recovered one's below:

# %%
import torch

gen = torch.Generator().manual_seed(0)
shapes = ((6, 8), (2, 8), (6, 2), (8,))                       # W, A, B, x
W, A, B, x = (torch.randn(*shape, generator=gen) for shape in shapes)
scale = 4 / 2                                                    # α / r
assert torch.allclose(W @ x + scale * (B @ (A @ x)), (W + scale * B @ A) @ x, atol=1e-5)
params_pruned = aeflib.pruning.count_parameters(m)
f"separate = merged; the pruned model has {params_pruned:,} parameters"

# %% [markdown]
# ## Train
# `lora` wraps the projections with rank-8 adapters, trains them for the step budget (AdamW, warmup and decay,
# gradient clipping), merges them and returns the per-step loss and the validation loss before and after.
# Each step's `recovery_batch_size` sequences pass `recovery_micro_batch_size` at a time (default 1), their
# gradients summed weighted by tokens — the same step as one pass of the whole batch, with one sequence's
# activations in memory instead of four (on SmolLM2 this kernel peaked at 2,753 MiB with 4 at once, 1,506 MiB with
# 1; docs/binder-check.md).

# %% tags=["nbval-ignore-output"]
result = aeflib.recovery.lora(
    m, tokenizer, adapter, dataset=recovery_dataset, steps=recovery_steps,
    batch_size=recovery_batch_size, micro_batch_size=recovery_micro_batch_size,
    lr=recovery_lr, cutoff=recovery_cutoff, val_size=recovery_val_size, seed=seed,
    progress=progress,
)
analysis.as_table({
    "validation loss before (nats/token)": result.val_loss_before,
    "validation loss after (nats/token)": result.val_loss_after,
    "training time (s)": round(result.seconds, 1),
})

# %% [markdown]
# ## The loss curve

# %%
protocol = (f"{recovery_dataset}, {len(result.train_loss)} steps of "
            f"{recovery_batch_size} sequences, lr {recovery_lr}")
fig = plots.loss_curve(result.train_loss, result.val_loss_before, result.val_loss_after,
                       protocol)
run.save_figure(fig, "05_loss_curve")
fig

# %% [markdown]
# ## Reading the curve honestly
# Each step's training loss is measured on a *different* batch of a few sequences, so it jumps from step to step:
# that is **batch noise**, not progress. The **trend** is the difference between the mean of the last third of the
# steps and the mean of the first third; the noise is the typical step-to-step jump (the standard deviation of the
# differences / √2). Only a trend well beyond the noise (here: more than twice it) is a fall you can read off the
# curve. The validation loss is measured before and after on the *same* held-out examples, so its change is the
# cleaner number. The cell computes all three and says which case this run is in.

# %%
losses = torch.tensor(result.train_loss)
third = max(1, len(losses) // 3)
trend = (losses[-third:].mean() - losses[:third].mean()).item()
noise = (losses.diff().std() / 2**0.5).item() if len(losses) > 2 else float("nan")
reading = ("too few steps to tell trend from noise" if len(losses) < 6 else
           "a fall beyond batch noise" if -trend > 2 * noise else "within batch noise")
val_change = None if result.val_loss_before is None else round(
    result.val_loss_after - result.val_loss_before, 4)
analysis.as_table({
    "steps": len(losses),
    "trend, last third − first third (nats/token)": round(trend, 4),
    "step-to-step noise (nats/token)": round(noise, 4), "reading": reading,
    "validation loss after − before (nats/token)": val_change,
})

# %% [markdown]
# **How much of the gap does recovery close?** That needs the *dense* model's number too, which this notebook does
# not measure. Notebook 06 evaluates all three models on the same text and computes the share of the dense → pruned
# perplexity gap (in nats per token) that recovery wins back — look there, and compare with the published LLaMA-7B
# rows in notebook 07. Expect a modest share here: a few dozen CPU steps, not the paper's two epochs.

# %% [markdown]
# ## Save
# The recovered model (LoRA merged) goes to `recovered/`; its shapes are the pruned ones.

# %% tags=["nbval-ignore-output"]
provenance = {"base_model": model, "method": method, "seed": seed}
aeflib.io.save(result.model, tokenizer, run / "recovered", adapter=adapter,
               plan=pruning_plan, overwrite=True, provenance=provenance)
run.merge_metrics("recovery", result.to_dict())
run.listing()

# %% [markdown]
# ## Exercises
# **Exercise 1 — count LoRA's parameters.** Each wrapped projection trains r·(d_in + d_out) numbers. Using the
# recovered model's shapes (the pruned ones) and the settings recorded in `result.settings` (`r`, `targets`), predict
# the number of trainable parameters, and compare with the count recovery recorded (`trainable_params`). What share
# of the model is it?

# %% tags=["solution", "hide-input"] jupyter={"source_hidden": true, "outputs_hidden": true}
targets = set(result.settings["targets"])
r = result.settings["r"]
modules = dict(result.model.named_modules())
wrapped = [mod for name, mod in modules.items() if name.split(".")[-1] in targets]
predicted = sum(r * (mod.in_features + mod.out_features) for mod in wrapped)
assert predicted == result.settings["trainable_params"]
assert aeflib.pruning.count_parameters(result.model) == params_pruned  # merged
print(f"LoRA trains {predicted:,} numbers = {predicted / params_pruned:.2%} of the model")

# %% [markdown]
# **Exercise 2 — how long before the trend shows?** If the step-to-step noise stays as measured and the loss kept
# falling at this run's average rate per step, after how many steps would the fall exceed twice the noise?

# %% tags=["solution", "hide-input"] jupyter={"source_hidden": true, "outputs_hidden": true}
per_step = trend / max(len(losses) - third, 1)   # nats/token per step (< 0: falling)
import math

needed = 2 * noise / -per_step if per_step < 0 and not math.isnan(noise) else float("inf")
print(f"rate {per_step:+.4f} nats/token per step; noise {noise:.4f}")
print(f"about {needed:.0f} steps for the fall to exceed twice the noise"
      if needed < float("inf")
      else "no fall measured (or too few steps): the trend would not show at this rate")

# %% [markdown]
# ## Takeaways
# * LoRA trains a low-rank update (α/r)·BA beside each frozen projection — r·(d_in + d_out) numbers instead of
#   d_in·d_out — and merging it back gives a model of the pruned shapes.
# * A short training curve is mostly batch noise; read the trend against the noise, and trust the validation loss
#   (same examples before and after) more than single steps.
# * How much of the lost quality recovery wins back is measured against the dense model, in notebook 06.

# %% [markdown]
# ## Memory
# This kernel's peak resident memory (its high-water mark, every cell above included) goes into `metrics.json`;
# `report.md` shows it beside the stage's run time.

# %% tags=["nbval-ignore-output"]
run.record_peak_memory("05_recovery")

# %% [markdown]
# **Before you open the next notebook:** shut this kernel down (*Kernel → Shut Down Kernel*), then open
# notebook 06_evaluation. A kernel holds its model in memory until it ends; with one kernel at a time, a JupyterLab session
# stays inside the 2 GiB of a free Binder session.
