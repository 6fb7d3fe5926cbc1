"""Regenerate data/paper_results.csv from the tables of docs/paper.md §5 (the published numbers aeflib compares with).

Usage: python data/prepare_paper_results.py [PATH_TO_paper.md]   (default: docs/paper.md)

Every number of §5 (and the AEF claims of §1) becomes one long-format row:
model, setting, method, metric, task, value, source. Method and task names are aeflib's (criterion names,
lm-eval-harness task names); ``aeflib.paper.load_paper_results`` reads the file.
"""

import csv
import sys
from pathlib import Path

COLUMNS = ["model", "setting", "method", "metric", "task", "value", "source"]
# the ten columns of the §5 tables after "setting | method": (metric, task)
TASKS = [("perplexity", "wikitext2"), ("perplexity", "ptb"), ("acc", "boolq"), ("acc", "piqa"),
         ("acc_norm", "hellaswag"), ("acc", "winogrande"), ("acc", "arc_easy"), ("acc_norm", "arc_challenge"),
         ("acc_norm", "openbookqa"), ("mean", "average")]
METHODS = {"L2": "l2", "Random": "random", "Vector": "vector", "Element²": "element2", "Element¹": "element1"}
SETTINGS = {"dense": ("dense", "dense row"), "no tune": ("no-tune", "no tuning, 20 % of parameters removed"),
            "LoRA": ("lora", "LoRA-recovered, 20 % of parameters removed")}
LLM_PRUNER = "LLM-Pruner (Ma et al., NeurIPS 2023), {model} table, {what}"
FLAP = "FLAP repository (CASIA-IVA-Lab/FLAP) figures, LLaMA-7B 20 %, no retraining"
BLOOM = "BigScience lm-eval-harness run of bloom-7b1 (dense; no published pruning baseline)"
CLAIM = "AEF (arXiv 2403.10799 v1-v3) abstract: average zero-shot accuracy gain over the state of the art, points"
CLAIM_V5 = "HyWIA (arXiv 2403.10799 v5, AAAI 2025) abstract: gain over LLM-Pruner at 50 % pruning, seven tasks, points"


def table_rows(block: str, model: str, title: str) -> list[dict]:
    rows = []
    for line in block.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 12 or cells[0] not in SETTINGS:
            continue
        setting, what = SETTINGS[cells[0]]
        method = "dense" if setting == "dense" else METHODS[cells[1]]
        source = LLM_PRUNER.format(model=title, what=what)
        for (metric, task), value in zip(TASKS, cells[2:], strict=True):
            rows.append(dict(model=model, setting=setting, method=method, metric=metric, task=task, value=value,
                             source=source))
    return rows


def main(notes: Path) -> list[dict]:
    section = notes.read_text().split("## 5.")[1]
    llama, rest = section.split("Vicuna-7B, 20 %:")
    rows = table_rows(llama, "llama-7b", "LLaMA-7B") + table_rows(rest.split("Other anchors")[0], "vicuna-7b",
                                                                   "Vicuna-7B")
    for method, avg, wt2 in (("flap", "62.08", "14.62"), ("wanda-sp", "63.35", "22.12")):
        rows.append(dict(model="llama-7b", setting="no-tune", method=method, metric="mean", task="average",
                         value=avg, source=FLAP))
        rows.append(dict(model="llama-7b", setting="no-tune", method=method, metric="perplexity", task="wikitext2",
                         value=wt2, source=FLAP))
    for metric, task, value in (("acc_norm", "arc_challenge", "33.45"), ("acc", "arc_easy", "64.98"),
                                ("acc", "boolq", "62.78"), ("acc_norm", "hellaswag", "59.66")):
        rows.append(dict(model="bloom-7b1", setting="dense", method="dense", metric=metric, task=task, value=value,
                         source=BLOOM))
    for model, gain in (("llama-7b", "1.1"), ("vicuna-7b", "1.02"), ("baichuan-7b", "2.0"), ("bloom-7b1", "1.2")):
        rows.append(dict(model=model, setting="claim", method="aef", metric="mean_gain", task="average", value=gain,
                         source=CLAIM))
    rows.append(dict(model="llama-7b", setting="claim-50%", method="aef", metric="mean_gain", task="average",
                     value="2.82", source=CLAIM_V5))
    return rows


if __name__ == "__main__":
    default = Path(__file__).resolve().parents[1] / "docs" / "paper.md"
    rows = main(Path(sys.argv[1]) if len(sys.argv) > 1 else default)
    with open(Path(__file__).with_name("paper_results.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {len(rows)} rows")
