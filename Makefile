# `make test` builds .venv from nothing (CPU torch wheel, then this project editable with its dev extras) and runs
# the whole test suite; `make test-fast` leaves out the tests marked slow (the edit loop); `make lint` is ruff.
# `make demo` trains ASGAN offline on the built-in spoken-digits corpus and writes outputs/demo/report.html
# (DEMO_STEPS=N changes the length); `make demo-vocoder` trains the small mel vocoders on the same corpus.
# `make studio [CHECKPOINT=ckpt.pt] [PORT=7860]` serves the local web studio (default: the demo's model).
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

CHECKPOINT ?=
PORT ?= 7860

.PHONY: install test test-fast lint format demo demo-vocoder studio bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH)" setuptools wheel
	$(BIN)/pip install -q --no-build-isolation -e ".[dev,studio]"
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" tests

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

demo: $(STAMP)
	$(BIN)/python demo.py --out outputs/demo

demo-vocoder: $(STAMP)
	$(BIN)/python demo.py --out outputs/demo --vocoders

studio: $(STAMP)
	$(BIN)/python -m density.studio $(if $(CHECKPOINT),--checkpoint "$(CHECKPOINT)") --port $(PORT)

bench: $(STAMP)
	$(BIN)/python bench/bench_generator.py

clean:
	rm -rf $(VENV)
