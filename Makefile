# prn-lightning. `make train` and `make test` each set everything up on first use (a .venv in the repo).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FAISS ?= cpu            # cpu | gpu  (gpu: faiss-gpu with its CUDA 12 runtime wheels)
CATEGORY ?=
DATASET ?=
SWEEP ?= prototype_ratio
ARGS ?=
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: install train test lint bench bench-quality sweep table clean-venv

$(STAMP): setup.cfg pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24" setuptools wheel
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev,deploy,$(strip $(FAISS))]"
	@touch $(STAMP)

install: $(STAMP)

train: $(STAMP)
	$(BIN)/prn make-train "$(DATASET)" "$(CATEGORY)" $(ARGS)

test: lint
	$(BIN)/python tests/run_each_file.py $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench examples

# The benchmarks compare with anomalib: the optional `bench` extra (anomalib, pinned in constraints.txt).
$(VENV)/.installed-bench: $(STAMP)
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[bench]"
	@touch $@

bench: $(VENV)/.installed-bench
	$(BIN)/python bench/run_all.py $(ARGS)

# PRN's CPU recipe vs anomalib PatchCore on the shared sets + the default run, 3 seeds (about 2 h 50 min on 2 cores);
# --fast-coreset: anomalib's greedy coreset with one matrix-vector product per step (see bench/quality.py)
bench-quality: $(VENV)/.installed-bench
	$(BIN)/python bench/quality.py --fast-coreset $(ARGS)

sweep: $(STAMP)
	$(BIN)/prn make-train --sweep "$(SWEEP)" "$(DATASET)" "$(CATEGORY)" $(ARGS)

clean-venv:
	rm -rf $(VENV)
