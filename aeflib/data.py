"""Corpora and calibration windows: the text every stage reads.

Entry points::

    load_corpus(name, split)           -> Corpus (documents + provenance)
    load_instructions(name, split)     -> list of {"instruction", "input", "output"} records (LoRA recovery)
    calibration(tokenizer, corpus=...) -> LongTensor [N, L] random token windows (LLM-Pruner style)

``CORPORA`` maps a name to a ``CorpusSpec``; adding a corpus is one entry. Three corpora ship with the repository
under ``data/corpora`` (real text cut from PyPI artifacts by ``data/prepare_corpora.py``; see ``data/SOURCES.md``)
and work offline: ``wikipedia`` (the WikiText stand-in), ``lee-news``, ``qa``. The paper's corpora (WikiText-2, PTB,
BookCorpus, C4, Alpaca-cleaned) are loaded from the Hugging Face hub with ``datasets.load_dataset``; each also reads
local files (``data_files=``) through the same code, which is how the tests exercise them offline.

Source: [LLM-Pruner code] ``LLMPruner/datasets/example_samples.py`` (calibration windows) and
``LLMPruner/datasets/ppl_dataset.py`` (hub ids, fields, the C4 validation shard); [ours] the shipped corpora.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import torch

from aeflib.files import hub_unreachable_reason

__all__ = [
    "CORPORA",
    "Corpus",
    "CorpusSpec",
    "CorpusUnavailableError",
    "DATA_DIR_ENV",
    "calibration",
    "data_dir",
    "load_corpus",
    "load_instructions",
]

log = logging.getLogger(__name__)

DATA_DIR_ENV = "AEFLIB_DATA_DIR"
_TITLE_LINE = re.compile(r"^ = ([^=].*[^=]|[^=]) = $", re.M)  # " = Title = " opens an article; " = = S = = " does not
_LOCAL_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv", ".txt": "text"}
DataFiles = str | os.PathLike | Sequence[str | os.PathLike] | Mapping[str, Any]


class CorpusUnavailableError(RuntimeError):
    """A hub corpus could not be reached (offline, or the hub refused); pass ``data_files=`` to read local files."""


@dataclass(frozen=True)
class CorpusSpec:
    """Where a corpus lives and how its rows become documents.

    Shipped corpora set ``folder`` and ``fmt``; hub corpora set ``hub_id`` (and ``hub_config``, ``hub_revision``,
    ``hub_data_files`` where the hub needs them). ``instructions`` marks corpora whose rows are
    ``{"instruction", "input", "output"}`` records.
    """

    name: str
    splits: tuple[str, ...]  # valid split names, as the caller passes them
    source: str  # human-readable origin, recorded with every metric
    licence: str
    folder: str | None = None  # shipped: folder under the data dir holding "<split>.<ext>"
    fmt: Literal["wikitext", "lines", "jsonl"] | None = None  # shipped file format
    hub_id: str | None = None  # online: datasets.load_dataset path
    hub_config: str | None = None
    hub_revision: str | None = None
    hub_data_files: Mapping[str, str] | None = None  # split -> file inside the hub repository
    field: str = "text"  # text column of hub rows
    instructions: bool = False

    @property
    def shipped(self) -> bool:
        """True when the corpus is read from the repository's ``data/`` folder (works offline)."""
        return self.folder is not None


_WIKI_LICENCE = "CC BY-SA 3.0 (Wikipedia contributors)"
# PTB and BookCorpus are script datasets on the hub; datasets >= 4 no longer runs scripts, so they are read from the
# hub's automatic parquet export (branch refs/convert/parquet, one config each). Not checkable offline.
CORPORA: dict[str, CorpusSpec] = {
    spec.name: spec
    for spec in (
        CorpusSpec(
            "wikipedia", ("train", "valid", "test"), "shipped: gensim 4.4.0 enwiki sample, cleaned WikiText-style",
            _WIKI_LICENCE, folder="corpora/wikipedia", fmt="wikitext",
        ),
        CorpusSpec(
            "lee-news", ("train", "valid", "test"), "shipped: gensim 4.4.0 lee_background.cor (ABC news)",
            "distributed with gensim (LGPL-2.1)", folder="corpora/lee_news", fmt="lines",
        ),
        CorpusSpec(
            "qa", ("train", "valid", "test"), "shipped: chatterbot-corpus 1.3.3 english/*.yml question/answer pairs",
            "BSD-3-Clause", folder="corpora/qa", fmt="jsonl", instructions=True,
        ),
        CorpusSpec(
            "wikitext2", ("train", "validation", "test"), "hub: Salesforce/wikitext wikitext-2-raw-v1",
            _WIKI_LICENCE, hub_id="Salesforce/wikitext", hub_config="wikitext-2-raw-v1",
        ),
        CorpusSpec(
            "ptb", ("train", "validation", "test"), "hub: ptb-text-only/ptb_text_only (parquet export)",
            "LDC Penn Treebank (research use)", hub_id="ptb-text-only/ptb_text_only",
            hub_revision="refs/convert/parquet", field="sentence",
        ),
        CorpusSpec(
            "bookcorpus", ("train",), "hub: bookcorpus/bookcorpus (parquet export)", "research use (BookCorpus)",
            hub_id="bookcorpus/bookcorpus", hub_revision="refs/convert/parquet",
        ),
        CorpusSpec(
            "c4", ("validation",), "hub: allenai/c4 en validation shard 00000-of-00008", "ODC-BY 1.0",
            hub_id="allenai/c4", hub_data_files={"validation": "en/c4-validation.00000-of-00008.json.gz"},
        ),
        CorpusSpec(
            "alpaca-cleaned", ("train",), "hub: yahma/alpaca-cleaned", "CC BY-NC 4.0",
            hub_id="yahma/alpaca-cleaned", instructions=True,
        ),
    )
}  # fmt: skip


@dataclass(frozen=True)
class Corpus:
    """One split of one corpus: its documents and where they came from."""

    name: str
    split: str
    documents: Sequence[str] = field(repr=False)  # articles / lines / rows, in source order; a list, or a
    # read-only lazy view for hub splits over ``_MATERIALISE_MAX_ROWS`` rows (BookCorpus: 74 M rows)
    source: str
    licence: str

    def text(self, join: str = "\n\n") -> str:
        """Return the documents joined by ``join`` (LLM-Pruner and WikiText perplexity join with a blank line)."""
        return join.join(self.documents)

    def __len__(self) -> int:
        return len(self.documents)

    def __repr__(self) -> str:
        chars = f", chars={sum(map(len, self.documents))}" if isinstance(self.documents, list) else ", lazy"
        return f"Corpus(name={self.name!r}, split={self.split!r}, documents={len(self)}{chars})"


# ----------------------------------------------------------------------------------------------------- locations
def data_dir() -> Path:
    """Return the folder that holds the shipped corpora (``corpora/``, ``SHA256SUMS``).

    ``$AEFLIB_DATA_DIR`` when set, else the repository's ``data/`` next to the ``aeflib`` package (an editable or
    source install).

    Returns:
        Path of an existing folder.

    Raises:
        FileNotFoundError: If the folder does not exist (e.g. aeflib installed from a wheel without the data).

    Source: [ours].
    """
    env = os.environ.get(DATA_DIR_ENV)
    path = Path(env).expanduser() if env else Path(__file__).resolve().parent.parent / "data"
    if not (path / "corpora").is_dir():
        origin = f"${DATA_DIR_ENV}={env}" if env else f"the repository's data/ folder ({DATA_DIR_ENV} is not set)"
        raise FileNotFoundError(
            f"shipped corpora not found: {path / 'corpora'} does not exist (from {origin}). Use a source checkout "
            f"(pip install -e .), or set {DATA_DIR_ENV} to a folder holding corpora/, or regenerate it with "
            "`python data/prepare_corpora.py`."
        )
    return path


def _spec(name: str, split: str) -> CorpusSpec:
    if name not in CORPORA:
        raise ValueError(f"unknown corpus {name!r}; registered: {sorted(CORPORA)}")
    spec = CORPORA[name]
    if split not in spec.splits:
        raise ValueError(f"unknown split {split!r} for corpus {name!r}; choose one of {list(spec.splits)}")
    return spec


# ----------------------------------------------------------------------------------------------- shipped corpora
def _split_articles(text: str) -> list[str]:
    """Cut WikiText-style text into articles at each `` = Title = `` line (the line stays with its article)."""
    starts = [m.start() for m in _TITLE_LINE.finditer(text)]
    if not starts:
        return [text.strip()] if text.strip() else []
    bounds = zip(starts, starts[1:] + [len(text)], strict=True)
    return [text[a:b].rstrip() for a, b in bounds]


def _read_shipped(spec: CorpusSpec, split: str) -> tuple[list[dict[str, str]], str]:
    ext = "jsonl" if spec.fmt == "jsonl" else "txt"
    path = data_dir() / spec.folder / f"{split}.{ext}"
    if not path.is_file():
        raise FileNotFoundError(f"corpus {spec.name!r} split {split!r}: {path} is missing; see data/SOURCES.md")
    text = path.read_text(encoding="utf-8")
    if spec.fmt == "wikitext":
        rows = [{"text": article} for article in _split_articles(text)]
    elif spec.fmt == "lines":
        rows = [{"text": line} for line in text.splitlines() if line.strip()]
    else:
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return rows, f"{spec.source} ({path.name})"


# --------------------------------------------------------------------------------------------------- hub corpora
@lru_cache(maxsize=4)
def _hub_unreachable_reason(endpoint: str) -> str | None:
    """Why the hub at ``endpoint`` cannot be reached, or None; probed once per process.

    No offline variable is checked here: ``datasets`` reads ``HF_DATASETS_OFFLINE`` itself.
    """
    return hub_unreachable_reason(offline_vars=(), endpoint=endpoint)


def _unavailable(spec: CorpusSpec, split: str, reason: str) -> CorpusUnavailableError:
    example = f"data_files='path/to/{split}.parquet'"
    column = "instruction/input/output columns" if spec.instructions else f"a {spec.field!r} column (or a .txt file)"
    return CorpusUnavailableError(
        f"corpus {spec.name!r} needs the Hugging Face hub dataset {spec.hub_id!r}"
        f"{f' (config {spec.hub_config!r})' if spec.hub_config else ''}, which could not be loaded: {reason}. "
        f"Pass local files instead, e.g. load_corpus({spec.name!r}, {split!r}, {example}); accepted: "
        f"{sorted(_LOCAL_BUILDERS)} with {column}."
    )


def _local_files(spec: CorpusSpec, split: str, data_files: DataFiles) -> tuple[str, list[str]]:
    """Normalise ``data_files`` for one split into (datasets builder name, list of paths)."""
    if isinstance(data_files, Mapping):
        if split not in data_files:
            raise ValueError(f"data_files for corpus {spec.name!r} has no split {split!r}; got {sorted(data_files)}")
        data_files = data_files[split]
    files = [data_files] if isinstance(data_files, str | os.PathLike) else list(data_files)
    paths = [str(Path(f).expanduser()) for f in files]
    exts = {Path(p.removesuffix(".gz")).suffix.lower() for p in paths}
    if len(exts) != 1 or (ext := exts.pop()) not in _LOCAL_BUILDERS:
        raise ValueError(f"data_files {paths} must share one extension out of {sorted(_LOCAL_BUILDERS)}")
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"data_files for corpus {spec.name!r} split {split!r} not found: {missing}")
    return _LOCAL_BUILDERS[ext], paths


def _read_hub(spec: CorpusSpec, split: str, data_files: DataFiles | None) -> tuple[Any, str, str]:
    """Load one split with ``datasets.load_dataset``; return (Dataset, text column, source description)."""
    import datasets

    if data_files is not None:
        builder, paths = _local_files(spec, split, data_files)
        kwargs = {"sample_by": "line"} if builder == "text" else {}
        ds = datasets.load_dataset(builder, data_files={split: paths}, split=split, **kwargs)
        column = "text" if builder == "text" else spec.field
        return ds, column, f"local files {paths} (standing in for {spec.hub_id})"

    offline = datasets.config.HF_DATASETS_OFFLINE
    if not offline:
        from huggingface_hub import constants

        reason = _hub_unreachable_reason(constants.ENDPOINT)
        if reason:
            raise _unavailable(spec, split, reason)
    hub_files = {split: spec.hub_data_files[split]} if spec.hub_data_files else None
    try:
        ds = datasets.load_dataset(
            spec.hub_id, spec.hub_config, split=split, data_files=hub_files, revision=spec.hub_revision
        )
    # offline, refused, not found, or a script dataset that datasets >= 4 no longer runs (RuntimeError)
    except (OSError, ConnectionError, RuntimeError, datasets.exceptions.DatasetsError) as err:
        hint = " (HF_DATASETS_OFFLINE is set and the dataset is not in the local cache)" if offline else ""
        raise _unavailable(spec, split, f"{type(err).__name__}: {err}{hint}") from err
    return ds, spec.field, spec.source


def _rows(spec: CorpusSpec, split: str, data_files: DataFiles | None) -> tuple[Any, str, str]:
    """Return (rows, text column, source): a list of dicts for shipped corpora, a Dataset for hub corpora."""
    if spec.shipped:
        if data_files is not None:
            raise ValueError(f"corpus {spec.name!r} ships with aeflib; data_files is only for hub corpora")
        rows, source = _read_shipped(spec, split)
        return rows, "text", source
    return _read_hub(spec, split, data_files)


def _instruction_document(row: Mapping[str, Any]) -> str:
    return "\n".join(str(row[k]) for k in ("instruction", "input", "output") if row.get(k))


_MATERIALISE_MAX_ROWS = 2_000_000  # larger hub splits stay in the Arrow table (BookCorpus would take ~10 GB as str)


class _LazyColumn(Sequence[str]):
    """Read-only view of one text column of a ``datasets.Dataset``: random access without loading every row."""

    def __init__(self, dataset: Any, column: str) -> None:
        self._dataset, self._column = dataset, column

    def __len__(self) -> int:
        return len(self._dataset)

    def __getitem__(self, index):  # int -> str, slice -> list[str]
        if isinstance(index, slice):
            return [str(t) for t in self._dataset[index][self._column]]
        n = len(self)
        if not -n <= index < n:  # IndexError ends Sequence iteration
            raise IndexError(f"document index {index} out of range for {n} documents")
        return str(self._dataset[index % n][self._column])

    def __iter__(self):
        for batch in self._dataset.iter(batch_size=10_000):
            yield from (str(t) for t in batch[self._column])


# ------------------------------------------------------------------------------------------------ public loaders
def load_corpus(name: str, split: str, *, data_files: DataFiles | None = None) -> Corpus:
    r"""Load one split of a registered corpus as a list of documents.

    Args:
        name: A key of ``CORPORA``: shipped ``"wikipedia"``, ``"lee-news"``, ``"qa"``; hub ``"wikitext2"``,
            ``"ptb"``, ``"bookcorpus"``, ``"c4"``, ``"alpaca-cleaned"``.
        split: One of ``CORPORA[name].splits`` (shipped: train/valid/test; hub: the hub's names, e.g.
            ``"validation"``).
        data_files: Hub corpora only: local file(s) read instead of the hub, through the same code — a path, a list
            of paths or ``{split: path(s)}``; ``.parquet``, ``.json``/``.jsonl``, ``.csv`` (column
            ``CORPORA[name].field``) or ``.txt`` (one row per line, like the hub's WikiText rows).

    Returns:
        ``Corpus``: shipped Wikipedia gives one document per article (opening with its `` = Title = `` line),
        Lee news one per news document, QA and Alpaca one per record ("instruction\ninput\noutput"), hub text
        corpora one per dataset row (WikiText-2 rows are lines, empty ones kept, as LLM-Pruner joins them).

    Raises:
        ValueError: If ``name`` or ``split`` is unknown (the message lists the choices), or the corpus is empty.
        FileNotFoundError: If the shipped data folder or a local data file is missing.
        CorpusUnavailableError: If a hub corpus cannot be reached and no ``data_files`` were given.

    Source: [LLM-Pruner code] hub ids, configs and fields of ``ppl_dataset.py``; [ours] shipped corpora.
    """
    spec = _spec(name, split)
    rows, column, source = _rows(spec, split, data_files)
    if spec.instructions:
        documents = [_instruction_document(row) for row in rows]
    else:
        columns = list(rows.column_names) if hasattr(rows, "column_names") else ["text"]
        if column not in columns:
            raise ValueError(f"corpus {name!r} split {split!r} from {source} has no column {column!r}; has {columns}")
        if not hasattr(rows, "column_names"):
            documents = [r["text"] for r in rows]
        elif len(rows) > _MATERIALISE_MAX_ROWS:
            documents = _LazyColumn(rows, column)
        else:
            documents = [str(t) for t in rows[column]]
    if not any(doc.strip() for doc in documents):
        raise ValueError(f"corpus {name!r} split {split!r} from {source} is empty ({len(documents)} blank documents)")
    log.info("loaded corpus %s/%s: %d documents from %s", name, split, len(documents), source)
    return Corpus(name=name, split=split, documents=documents, source=source, licence=spec.licence)


def load_instructions(
    name: str = "qa", split: str = "train", *, data_files: DataFiles | None = None
) -> list[dict[str, str]]:
    """Load instruction-tuning records for LoRA recovery.

    Args:
        name: An instruction corpus of ``CORPORA``: shipped ``"qa"`` or hub ``"alpaca-cleaned"`` (the paper's).
        split: One of ``CORPORA[name].splits``.
        data_files: Hub corpora only: local ``.json``/``.jsonl``/``.parquet``/``.csv`` with instruction, input and
            output columns, read instead of the hub.

    Returns:
        Records ``{"instruction": str, "input": str, "output": str}`` in source order (``input`` may be "").

    Raises:
        ValueError: If ``name``/``split`` is unknown, ``name`` is not an instruction corpus, a record lacks
            ``instruction`` or ``output``, or there are no records.
        CorpusUnavailableError: If a hub corpus cannot be reached and no ``data_files`` were given.

    Source: [LLM-Pruner code] ``post_training.py`` reads yahma/alpaca-cleaned; [ours] shipped ``qa``.
    """
    spec = _spec(name, split)
    if not spec.instructions:
        choices = sorted(n for n, s in CORPORA.items() if s.instructions)
        raise ValueError(f"corpus {name!r} holds plain text, not instructions; choose one of {choices}")
    rows, _column, source = _rows(spec, split, data_files)
    records = []
    for i, row in enumerate(rows):
        if not row.get("instruction") or not row.get("output"):
            raise ValueError(f"record {i} of {name!r}/{split!r} from {source} lacks instruction or output: {row}")
        records.append({k: str(row.get(k) or "") for k in ("instruction", "input", "output")})
    if not records:
        raise ValueError(f"corpus {name!r} split {split!r} from {source} has no records")
    return records


# --------------------------------------------------------------------------------------------------- calibration
def calibration(
    tokenizer: Any,
    corpus: str | Corpus = "wikipedia",
    n: int = 10,
    seq_len: int = 64,
    seed: int = 42,
    split: str = "train",
) -> torch.Tensor:
    """Draw the calibration set: ``n`` random ``seq_len``-token windows from distinct documents.

    The paper's default is 10 BookCorpus samples of 64 tokens with seed 42 (``calibration(tok, "bookcorpus")``,
    online); the offline default is the shipped Wikipedia train split. LLM-Pruner's procedure: draw a random
    document, tokenize it with the tokenizer's default special tokens, redraw if it has fewer than ``seq_len``
    tokens or was drawn before, then take a window at a random start. All randomness comes from
    ``random.Random(seed)``, so the result depends only on the corpus, the tokenizer and ``seed``.

    Args:
        tokenizer: A Hugging Face tokenizer (callable returning ``input_ids``).
        corpus: A ``CORPORA`` name (loaded with ``split``) or a ``Corpus``.
        n: Number of windows (``N``), >= 1.
        seq_len: Tokens per window (``L``), >= 1.
        seed: Seed of the document and window draws.
        split: Split to load when ``corpus`` is a name.

    Returns:
        LongTensor [N, L] of token ids, on the CPU.

    Raises:
        ValueError: If ``n`` or ``seq_len`` < 1, or the corpus has fewer than ``n`` documents of at least
            ``seq_len`` tokens (the message gives both numbers).

    Source: [LLM-Pruner code] ``LLMPruner/datasets/example_samples.py`` ``get_examples``; [paper] §4 settings.
    """
    if n < 1 or seq_len < 1:
        raise ValueError(f"calibration needs n >= 1 and seq_len >= 1; got n={n}, seq_len={seq_len}")
    corp = corpus if isinstance(corpus, Corpus) else load_corpus(corpus, split)
    docs = corp.documents
    if not docs:
        raise ValueError(f"corpus {corp.name!r} split {corp.split!r} has no documents to draw calibration windows from")
    rng = random.Random(seed)
    token_ids: dict[int, list[int]] = {}  # document index -> token ids (tokenized once, on first draw)
    chosen: list[int] = []
    windows = []
    while len(windows) < n:
        i = rng.randint(0, len(docs) - 1)
        if i not in token_ids:
            token_ids[i] = list(tokenizer(docs[i])["input_ids"])
        ids = token_ids[i]
        if len(ids) < seq_len or i in chosen:
            if len(token_ids) == len(docs):  # every document seen: can the rest still be filled?
                eligible = sum(len(t) >= seq_len for t in token_ids.values())
                if eligible < n:
                    raise ValueError(
                        f"corpus {corp.name!r} split {corp.split!r} has {eligible} documents with at least "
                        f"seq_len={seq_len} tokens (of {len(docs)}); calibration needs n={n} distinct ones"
                    )
            continue
        chosen.append(i)
        start = rng.randint(0, len(ids) - seq_len)
        windows.append(torch.tensor(ids[start : start + seq_len], dtype=torch.long))  # [L]
    log.info("calibration: %d windows of %d tokens from %s/%s, seed %d", n, seq_len, corp.name, corp.split, seed)
    return torch.stack(windows)  # [N, L]
