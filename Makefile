# `make test` builds .venv from nothing (CPU torch wheel) and runs the test suite; `make demo` trains ASGAN offline
# on the built-in spoken-digits corpus and writes outputs/demo/report.html (DEMO_STEPS=N changes the length);
# `make demo-vocoder` trains the small mel vocoders on the same corpus and adds their rows to that report.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test demo demo-vocoder bench clean

install: $(STAMP)

$(STAMP): requirements.txt Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH)" setuptools wheel
	$(BIN)/pip install -q --no-build-isolation -r requirements.txt
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

demo: $(STAMP)
	$(BIN)/python demo.py --out outputs/demo

demo-vocoder: $(STAMP)
	$(BIN)/python demo.py --out outputs/demo --vocoders

bench: $(STAMP)
	$(BIN)/python bench/bench_generator.py

clean:
	rm -rf $(VENV)
