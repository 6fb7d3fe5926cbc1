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
# the shipped question/answer pairs for a *step budget* **[ours]** — enough to see the loss fall, not a full
# recovery. The LoRA updates are merged into the pruned weights afterwards, so the model keeps its pruned shapes.

# %% [markdown]
# ## Parameters
# The same values as before, plus the recovery budget.

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
recovery_dataset = "qa"        # shipped QA pairs; the paper: "alpaca-cleaned" (hub)
recovery_steps = 20            # optimizer steps (None: 2 epochs, as the paper)
recovery_batch_size = 4        # sequences per step (paper: 64)
recovery_micro_batch_size = 4  # sequences per forward/backward pass
recovery_lr = 3e-4             # peak learning rate (paper: 1e-4 over ~1.5 k steps)
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
# ## Train
# `lora` wraps the projections with rank-8 adapters, trains them for the step budget (AdamW, warmup and decay,
# gradient clipping), merges them and returns the per-step loss and the validation loss before and after.

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
# ## Save
# The recovered model (LoRA merged) goes to `recovered/`; its shapes are the pruned ones.

# %% tags=["nbval-ignore-output"]
provenance = {"base_model": model, "method": method, "seed": seed}
aeflib.io.save(result.model, tokenizer, run / "recovered", adapter=adapter,
               plan=pruning_plan, overwrite=True, provenance=provenance)
run.merge_metrics("recovery", result.to_dict())
run.listing()
