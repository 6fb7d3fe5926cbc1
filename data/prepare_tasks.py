"""Build the offline zero-shot task set ``local`` under ``data/tasks`` from the shipped corpora's **test** splits.

The seven zero-shot tasks of the paper (BoolQ, PIQA, HellaSwag, WinoGrande, ARC-e, ARC-c, OBQA) live on the Hugging
Face hub, which is not reachable offline. This script cuts three tasks of the same kinds out of the real text that
ships with aeflib (``data/corpora``, read through ``aeflib.data``) — no answer is written by hand::

    data/tasks/aef_continuation.jsonl  HellaSwag-style: 2-3 sentences of a passage; its true next sentence vs 3
                                       sentences of similar length drawn from other documents (acc, acc_norm)
    data/tasks/aef_cloze.jsonl         LAMBADA-style: a passage whose last word is predicted; the word (or one with
                                       its first five letters) occurs earlier, so the context can recover it
                                       (acc = greedy match, perplexity)
    data/tasks/aef_qa.jsonl            QA matching: a shipped question; its answer vs 3 answers of other questions,
                                       from other categories where possible, similar in length (acc, acc_norm)
    data/tasks/SHA256SUMS              sha256 of the three files

The lm-eval task configs ``data/tasks/aef_*.yaml`` are committed next to them (their ``data_files`` are relative to
that folder; ``aeflib.evaluation.zeroshot`` makes them absolute at load time). Only test splits are read: they hold
documents that calibration (train) and recovery (train/valid) never see. Every draw comes from
``random.Random(seed)``, so the output depends only on the corpora and the seed.

Usage::

    .venv/bin/python data/prepare_tasks.py            # rebuild data/tasks/*.jsonl and SHA256SUMS
    .venv/bin/python data/prepare_tasks.py --check    # verify the files against SHA256SUMS
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import random
import re
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

from aeflib.data import data_dir, load_corpus, load_instructions

__all__ = ["build", "build_cloze", "build_continuation", "build_qa", "check", "main", "paragraphs", "sentences"]

log = logging.getLogger("prepare_tasks")

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
SUMS_NAME = "SHA256SUMS"
SEED = 1234
N_CONTINUATION = 300
N_CLOZE = 300
N_DISTRACTORS = 3

# a sentence ends at . ! ? (optionally closed by a quote or bracket) followed by space and an upper-case start
_SENT_END = re.compile(r"(?<=[.!?])([\"”’)]?)\s+(?=[\"“(]?[A-Z0-9])")
# pieces that end in an abbreviation or an initial are joined to the next piece ("U.S. Army", "J. R. R. Tolkien")
_ABBREV = re.compile(r"(\b[A-Z]\.|\b(?:Mr|Mrs|Ms|Dr|St|Mt|No|vs|Jr|Sr|Inc|Co|Ltd|Gen|Gov|Sen|Rep|Prof|ca|c)\.)$")
_WORD = re.compile(r"^[A-Za-z]{3,}$")


# ------------------------------------------------------------------------------------------------------- text
def paragraphs(document: str) -> list[str]:
    """Split a document into paragraphs: non-empty lines that are not WikiText ``= Title =`` / section lines."""
    return [line.strip() for line in document.splitlines() if line.strip() and not line.strip().startswith("=")]


def sentences(paragraph: str) -> list[str]:
    """Split a paragraph into sentences at ``.!?`` followed by an upper-case start, keeping abbreviations whole."""
    pieces, start = [], 0
    for m in _SENT_END.finditer(paragraph):
        pieces.append(paragraph[start : m.start() + len(m.group(1))])
        start = m.end()
    pieces.append(paragraph[start:])
    merged: list[str] = []
    for piece in (p.strip() for p in pieces if p.strip()):
        if merged and _ABBREV.search(merged[-1]):
            merged[-1] = f"{merged[-1]} {piece}"
        else:
            merged.append(piece)
    return merged


def _clean(sentence: str) -> bool:
    """A usable sentence: 6..60 words, starts upper-case, ends with ``.!?``, no empty-bracket clean-up artifacts."""
    n_words = len(sentence.split())
    return (
        6 <= n_words <= 60
        and sentence[0].isupper()
        and sentence.rstrip("\"”’)")[-1:] in ".!?"
        and "()" not in sentence
        and "( " not in sentence
    )


def _documents() -> list[tuple[str, list[list[str]]]]:
    """``(document id, paragraphs as sentence lists)`` for every test document of wikipedia and lee-news."""
    docs = []
    for corpus in ("wikipedia", "lee-news"):
        for i, doc in enumerate(load_corpus(corpus, "test").documents):
            docs.append((f"{corpus}/{i}", [sentences(p) for p in paragraphs(doc)]))
    return docs


def _closest_in_length(pool: list[str], length: int, k: int, rng: random.Random) -> list[str]:
    """``k`` entries of ``pool`` drawn at random from the ``3k`` closest to ``length`` characters."""
    ranked = sorted(pool, key=lambda s: (abs(len(s) - length), s))[: 3 * k]
    return rng.sample(ranked, k)


# ------------------------------------------------------------------------------------------------------ tasks
def build_continuation(n: int = N_CONTINUATION, seed: int = SEED) -> list[dict]:
    """HellaSwag-style items: ``{"context", "choices" (4), "label", "source"}``; at most one item per paragraph."""
    rng = random.Random(seed)
    docs = _documents()
    sentence_pool = [(doc_id, s) for doc_id, paras in docs for para in paras for s in para if _clean(s)]
    candidates = []
    for doc_id, paras in docs:
        for p, para in enumerate(paras):
            ends = [i for i in range(2, len(para)) if all(_clean(s) for s in para[max(0, i - 3) : i + 1])]
            if ends:
                candidates.append((doc_id, p, ends))
    rng.shuffle(candidates)
    by_id = dict(docs)
    items = []
    for doc_id, p, ends in candidates[:n]:
        para = by_id[doc_id][p]
        i = rng.choice(ends)
        k = 2 if i == 2 else rng.choice((2, 3))
        context, ending = " ".join(para[i - k : i]), para[i]
        pool = [s for other, s in rng.sample(sentence_pool, 200) if other != doc_id and s != ending]
        choices = _closest_in_length(pool, len(ending), N_DISTRACTORS, rng)
        label = rng.randrange(N_DISTRACTORS + 1)
        choices.insert(label, ending)
        items.append({"context": context, "choices": choices, "label": label, "source": f"{doc_id}/p{p}/s{i}"})
    if len(items) < n:
        log.warning("continuation: only %d of %d items available", len(items), n)
    return items


def build_cloze(n: int = N_CLOZE, seed: int = SEED) -> list[dict]:
    """LAMBADA-style items ``{"context", "target", "source"}``: the passage's last word, recoverable from it.

    A passage is 3-5 consecutive sentences of one paragraph (at least 40 words before the target); the target is
    the last word of the last sentence (alphabetic, 3+ letters, final period dropped) and it, or a word sharing its
    first five letters ("circle" for "circles"), occurs earlier in the passage — LAMBADA's condition that the
    context determines the word. Items are spread over paragraphs: one per paragraph first, then seconds, ...
    """
    rng = random.Random(seed)
    by_paragraph: dict[str, list[dict]] = {}
    for doc_id, paras in _documents():
        for p, para in enumerate(paras):
            for i in range(2, len(para)):
                last = para[i]
                if not _clean(last) or not last.endswith("."):
                    continue
                word = last[:-1].split()[-1]
                context = " ".join(para[max(0, i - 4) : i + 1])[: -len(word) - 1].rstrip()  # text before " word."
                earlier = {w.strip(".,;:!?\"'()“”’").lower() for w in context.split()}
                stem = word.lower()[:5]
                if _WORD.match(word) and len(context.split()) >= 40 and any(w.startswith(stem) for w in earlier):
                    item = {"context": context, "target": word, "source": f"{doc_id}/p{p}/s{i}"}
                    by_paragraph.setdefault(f"{doc_id}/p{p}", []).append(item)
    groups = [by_paragraph[key] for key in sorted(by_paragraph)]
    for group in groups:
        rng.shuffle(group)
    rng.shuffle(groups)
    picked = [g[r] for r in range(max(map(len, groups), default=0)) for g in groups if r < len(g)]
    if len(picked) < n:
        log.warning("cloze: only %d of %d items available", len(picked), n)
    return picked[:n]


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def build_qa(seed: int = SEED) -> list[dict]:
    """QA-matching items from every test pair: ``{"question", "choices" (4), "label", "category"}``.

    Distractors are answers of *other* questions (never an answer the same question has anywhere in the split),
    drawn from other categories when at least three such answers exist, preferring similar lengths.
    """
    rng = random.Random(seed)
    records = load_instructions("qa", "test")
    # load_instructions keeps source order but not the category; read it from the same file, row by row
    raw = [json.loads(line) for line in (data_dir() / "corpora/qa/test.jsonl").read_text("utf-8").splitlines() if line]
    if [r["instruction"] for r in raw] != [r["instruction"] for r in records]:
        raise RuntimeError("corpora/qa/test.jsonl rows do not match aeflib.data.load_instructions('qa', 'test')")
    answers_of: dict[str, set[str]] = {}
    for r in records:
        answers_of.setdefault(_norm(r["instruction"]), set()).add(_norm(r["output"]))
    items = []
    for r, row in zip(records, raw, strict=True):
        q, a, cat = r["instruction"], r["output"], row.get("category", "")
        banned = answers_of[_norm(q)]
        pool = sorted({o["output"] for o in records if _norm(o["output"]) not in banned})
        other_cat = sorted({o["output"] for o, w in zip(records, raw, strict=True)
                            if w.get("category") != cat and _norm(o["output"]) not in banned})
        distractors = _closest_in_length(other_cat if len(other_cat) >= N_DISTRACTORS else pool, len(a),
                                         N_DISTRACTORS, rng)
        label = rng.randrange(N_DISTRACTORS + 1)
        distractors.insert(label, a)
        items.append({"question": q, "choices": distractors, "label": label, "category": cat})
    return items


# ------------------------------------------------------------------------------------------------------ files
def _write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    text = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build(out: Path = TASKS_DIR, seed: int = SEED) -> dict[str, int]:
    """Write the three task files and ``SHA256SUMS`` to ``out``; return ``{file name: items}``."""
    out.mkdir(parents=True, exist_ok=True)
    tasks = {
        "aef_continuation.jsonl": build_continuation(seed=seed),
        "aef_cloze.jsonl": build_cloze(seed=seed),
        "aef_qa.jsonl": build_qa(seed=seed),
    }
    for name, rows in tasks.items():
        _write_jsonl(out / name, rows)
        log.info("wrote %s: %d items", out / name, len(rows))
    sums = "".join(f"{_sha256(out / name)}  {name}\n" for name in sorted(tasks))
    (out / SUMS_NAME).write_text(sums, encoding="utf-8")
    return {name: len(rows) for name, rows in tasks.items()}


def check(out: Path = TASKS_DIR) -> list[str]:
    """Return the files under ``out`` whose sha256 differs from ``SHA256SUMS`` (empty when all match)."""
    bad = []
    for line in (out / SUMS_NAME).read_text(encoding="utf-8").splitlines():
        digest, name = line.split(maxsplit=1)
        if not (out / name).is_file() or _sha256(out / name) != digest:
            bad.append(name)
    return bad


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="verify data/tasks against SHA256SUMS and exit")
    parser.add_argument("--seed", type=int, default=SEED, help=f"seed of every draw (default {SEED})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.check:
        bad = check()
        log.info("data/tasks: %s", f"MISMATCH {bad}" if bad else "all files match SHA256SUMS")
        return 1 if bad else 0
    counts = build(seed=args.seed)
    log.info("items: %s", counts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
