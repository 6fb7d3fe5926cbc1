"""Tests of aeflib.data and of the shipped corpora (data/prepare_corpora.py --check), all offline."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import time
from pathlib import Path

import pytest
import torch

from aeflib import data
from aeflib.data import CORPORA, Corpus, CorpusUnavailableError, calibration, load_corpus, load_instructions

REPO = Path(__file__).resolve().parent.parent
TITLE = re.compile(r"^ = ([^=].*[^=]|[^=]) = $")


def _prepare_module():
    spec = importlib.util.spec_from_file_location("prepare_corpora", REPO / "data" / "prepare_corpora.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _title(article: str) -> str:
    match = TITLE.match(article.split("\n", 1)[0])
    assert match, f"article does not open with a ' = Title = ' line: {article[:80]!r}"
    return match.group(1)


# --------------------------------------------------------------------------------------------- shipped files
def test_shipped_files_match_sha256sums():
    assert _prepare_module().check(REPO / "data") == []


def test_check_reports_a_modified_and_an_unlisted_file(tmp_path):
    prep = _prepare_module()
    copy = tmp_path / "data"
    shutil.copytree(REPO / "data" / "corpora", copy / "corpora")
    shutil.copy(REPO / "data" / "SHA256SUMS", copy / "SHA256SUMS")
    shutil.copy(REPO / "data" / "SOURCES.md", copy / "SOURCES.md")
    with open(copy / "corpora" / "lee_news" / "test.txt", "a", encoding="utf-8") as fh:
        fh.write("one more line\n")
    (copy / "corpora" / "stray.txt").write_text("x")
    problems = prep.check(copy)
    assert any(p.startswith("corpora/lee_news/test.txt: sha256") for p in problems), problems
    assert any(p.startswith("corpora/stray.txt: not listed") for p in problems), problems
    assert len(problems) == 2


def test_split_by_hash_is_deterministic_and_80_10_10():
    prep = _prepare_module()
    keys = [f"doc {i}" for i in range(200)]
    first, again = prep.split_by_hash(keys), prep.split_by_hash(reversed(keys))
    assert first == again
    counts = {s: sum(v == s for v in first.values()) for s in ("train", "valid", "test")}
    assert counts == {"train": 160, "valid": 20, "test": 20}


def test_wikipedia_splits_are_disjoint_by_article_title():
    titles = {
        split: [_title(a) for a in load_corpus("wikipedia", split).documents] for split in CORPORA["wikipedia"].splits
    }
    for split, names in titles.items():
        assert len(names) == len(set(names)), f"duplicate titles in {split}"
    train, valid, test = (set(titles[s]) for s in ("train", "valid", "test"))
    assert not (train & valid) and not (train & test) and not (valid & test)
    assert len(train) > 4 * len(test) > 0


def test_wikipedia_articles_are_whole_wikitext_style_documents():
    corpus = load_corpus("wikipedia", "test")
    for article in corpus.documents:
        _title(article)
        assert not any(TITLE.match(line) for line in article.split("\n")[1:]), "a second title inside an article"
    assert " = = " in corpus.text()  # section headings kept WikiText-style
    assert corpus.licence.startswith("CC BY-SA")


def test_lee_news_and_qa_splits_are_disjoint():
    lee = {s: set(load_corpus("lee-news", s).documents) for s in ("train", "valid", "test")}
    assert not (lee["train"] & lee["test"]) and not (lee["train"] & lee["valid"]) and not (lee["valid"] & lee["test"])
    questions = {s: {r["instruction"].lower() for r in load_instructions("qa", s)} for s in ("train", "valid", "test")}
    assert not (questions["train"] & questions["test"]) and not (questions["train"] & questions["valid"])


def test_load_instructions_qa_records_have_the_three_keys():
    records = load_instructions("qa", "train")
    assert len(records) > 500
    assert all(set(r) == {"instruction", "input", "output"} and r["instruction"] and r["output"] for r in records)


# ----------------------------------------------------------------------------------------------------- errors
def test_load_corpus_rejects_unknown_name_listing_choices():
    with pytest.raises(ValueError, match=r"unknown corpus 'wikitext-103'; registered: \[.*'wikipedia'.*\]"):
        load_corpus("wikitext-103", "test")


def test_load_corpus_rejects_unknown_split_listing_choices():
    with pytest.raises(ValueError, match=r"unknown split 'validation' for corpus 'wikipedia'; .*'valid'"):
        load_corpus("wikipedia", "validation")


def test_load_instructions_rejects_plain_text_corpus():
    with pytest.raises(ValueError, match=r"'lee-news' holds plain text.*'alpaca-cleaned', 'qa'"):
        load_instructions("lee-news", "train")


def test_missing_data_dir_names_the_env_var(monkeypatch, tmp_path):
    monkeypatch.setenv("AEFLIB_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"nowhere.*AEFLIB_DATA_DIR"):
        load_corpus("wikipedia", "test")


def test_data_dir_env_override_and_empty_corpus_error(monkeypatch, tmp_path):
    folder = tmp_path / "corpora" / "lee_news"
    folder.mkdir(parents=True)
    (folder / "valid.txt").write_text("first document\nsecond document\n", encoding="utf-8")
    (folder / "test.txt").write_text("\n  \n", encoding="utf-8")
    monkeypatch.setenv("AEFLIB_DATA_DIR", str(tmp_path))
    assert load_corpus("lee-news", "valid").documents == ["first document", "second document"]
    with pytest.raises(ValueError, match=r"'lee-news' split 'test' .* is empty"):
        load_corpus("lee-news", "test")


def test_hub_corpus_offline_fails_fast_naming_hub_id_and_data_files(monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    start = time.perf_counter()
    with pytest.raises(CorpusUnavailableError, match=r"'wikitext2'.*'Salesforce/wikitext'.*data_files="):
        load_corpus("wikitext2", "test")
    assert time.perf_counter() - start < 15


def test_hub_corpus_unreachable_hub_fails_before_load_dataset(monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", False)
    monkeypatch.setattr(data, "_hub_unreachable_reason", lambda endpoint: "cannot connect to test.invalid")
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("load_dataset must not be called"))
    with pytest.raises(CorpusUnavailableError, match=r"'ptb'.*ptb_text_only.*cannot connect to test\.invalid"):
        load_corpus("ptb", "validation")


# ------------------------------------------------------------------------------- hub loaders on local files
def test_wikitext2_loader_reads_local_parquet_rows_like_the_hub(tmp_path):
    import pandas as pd

    rows = ["", " = Valkyria Chronicles III = ", "", " Senjō no Valkyria 3 is a game . ", ""]
    path = tmp_path / "test.parquet"
    pd.DataFrame({"text": rows}).to_parquet(path)
    corpus = load_corpus("wikitext2", "test", data_files=path)
    assert corpus.documents == rows  # empty rows kept: LLM-Pruner joins every row with "\n\n"
    assert corpus.text() == "\n\n".join(rows)
    assert "Salesforce/wikitext" in corpus.source


def test_wikitext2_loader_reads_local_text_file_one_row_per_line(tmp_path):
    path = tmp_path / "wiki.test.raw.txt"
    path.write_text(" = A = \n\n Body line . \n", encoding="utf-8")
    corpus = load_corpus("wikitext2", "test", data_files={"test": str(path)})
    assert corpus.documents == [" = A = ", "", " Body line . "]


def test_ptb_loader_reads_the_sentence_field_from_local_jsonl(tmp_path):
    path = tmp_path / "ptb.valid.jsonl"
    path.write_text("".join(json.dumps({"sentence": s}) + "\n" for s in ["a b c", "d e <unk>"]), encoding="utf-8")
    assert load_corpus("ptb", "validation", data_files=path).documents == ["a b c", "d e <unk>"]


def test_local_file_without_the_text_column_names_the_columns(tmp_path):
    path = tmp_path / "c4.jsonl"
    path.write_text(json.dumps({"body": "x"}) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"no column 'text'; has \['body'\]"):
        load_corpus("c4", "validation", data_files=path)


def test_bookcorpus_and_c4_loaders_read_local_files(tmp_path):
    (tmp_path / "books.txt").write_text("first sentence .\nsecond sentence .\n", encoding="utf-8")
    assert len(load_corpus("bookcorpus", "train", data_files=tmp_path / "books.txt")) == 2
    (tmp_path / "c4.json").write_text(json.dumps({"text": "web page", "url": "u"}) + "\n", encoding="utf-8")
    assert load_corpus("c4", "validation", data_files=[tmp_path / "c4.json"]).documents == ["web page"]


def test_alpaca_loader_reads_local_json_records(tmp_path):
    path = tmp_path / "alpaca.json"
    records = [
        {"instruction": "Add.", "input": "1 2", "output": "3"},
        {"instruction": "Hi", "input": "", "output": "Hello"},
    ]
    path.write_text(json.dumps(records), encoding="utf-8")
    assert load_instructions("alpaca-cleaned", "train", data_files=path) == records
    assert load_corpus("alpaca-cleaned", "train", data_files=path).documents == ["Add.\n1 2\n3", "Hi\nHello"]


def test_shipped_corpus_rejects_data_files(tmp_path):
    with pytest.raises(ValueError, match="ships with aeflib"):
        load_corpus("wikipedia", "test", data_files=tmp_path / "x.txt")


# ------------------------------------------------------------------------------------------------ calibration
def test_calibration_shape_dtype_and_windows_come_from_documents(smollm2_tokenizer):
    corpus = load_corpus("lee-news", "valid")
    x = calibration(smollm2_tokenizer, corpus, n=5, seq_len=32, seed=42)
    assert x.shape == (5, 32) and x.dtype == torch.long
    docs = [smollm2_tokenizer(d)["input_ids"] for d in corpus.documents]
    for row in x.tolist():  # each row is a contiguous window of one document's tokens
        assert any(any(ids[s : s + 32] == row for s in range(len(ids) - 31)) for ids in docs)


def test_calibration_is_deterministic_per_seed(smollm2_tokenizer):
    corpus = load_corpus("lee-news", "valid")
    a = calibration(smollm2_tokenizer, corpus, n=4, seq_len=16, seed=42)
    b = calibration(smollm2_tokenizer, corpus, n=4, seq_len=16, seed=42)
    c = calibration(smollm2_tokenizer, corpus, n=4, seq_len=16, seed=7)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_calibration_default_reads_shipped_wikipedia_train(smollm2_tokenizer):
    x = calibration(smollm2_tokenizer, n=2, seq_len=64)
    assert x.shape == (2, 64)


def test_calibration_too_short_corpus_names_the_numbers(smollm2_tokenizer):
    corpus = Corpus("tiny", "test", ["short text", "a much longer document " * 10], "test", "none")
    with pytest.raises(ValueError, match=r"has 1 documents with at least seq_len=20 tokens \(of 2\).*needs n=2"):
        calibration(smollm2_tokenizer, corpus, n=2, seq_len=20)


@pytest.mark.parametrize("n, seq_len", [(0, 64), (10, 0)])
def test_calibration_rejects_non_positive_sizes(n, seq_len):
    with pytest.raises(ValueError, match=rf"n >= 1 and seq_len >= 1; got n={n}, seq_len={seq_len}"):
        calibration(None, "wikipedia", n=n, seq_len=seq_len)


def test_calibration_reproduces_llm_pruner_get_examples(smollm2_tokenizer):
    """LLM-Pruner's loop (example_samples.py), with random.Random(seed) in place of the seeded global random."""
    import random

    corpus = load_corpus("lee-news", "valid")
    rng, history, expected = random.Random(3), [], []
    for _ in range(4):
        while True:
            i = rng.randint(0, len(corpus.documents) - 1)
            ids = smollm2_tokenizer(corpus.documents[i], return_tensors="pt").input_ids
            if ids.shape[1] >= 48 and i not in history:
                history.append(i)
                break
        start = rng.randint(0, ids.shape[1] - 48)
        expected.append(ids[:, start : start + 48])
    assert torch.equal(calibration(smollm2_tokenizer, corpus, n=4, seq_len=48, seed=3), torch.cat(expected, dim=0))


def test_huge_hub_split_stays_lazy_and_still_calibrates(monkeypatch, tmp_path, smollm2_tokenizer):
    monkeypatch.setattr(data, "_MATERIALISE_MAX_ROWS", 2)
    lines = [f"sentence number {i} " + "word " * (5 + i) for i in range(6)]
    (tmp_path / "books.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    corpus = load_corpus("bookcorpus", "train", data_files=tmp_path / "books.txt")
    assert not isinstance(corpus.documents, list) and "lazy" in repr(corpus)
    assert len(corpus) == 6 and corpus.documents[3] == lines[3] and corpus.documents[-1] == lines[-1]
    assert corpus.documents[1:3] == lines[1:3] and corpus.text("\n") == "\n".join(lines)
    assert calibration(smollm2_tokenizer, corpus, n=2, seq_len=8).shape == (2, 8)
