# `make test` builds .venv from nothing (CPU torch wheel) and runs the test suite.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test bench clean

install: $(STAMP)

$(STAMP): requirements.txt Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH)" setuptools wheel
	$(BIN)/pip install -q --no-build-isolation -r requirements.txt
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

bench: $(STAMP)
	$(BIN)/python bench/bench_generator.py

clean:
	rm -rf $(VENV)
