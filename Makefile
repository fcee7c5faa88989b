# Two commands: `make demo` (set up, then run the main job) and `make test` (set up, then run the tests).
# Each creates .venv from pyproject.toml (pinned by constraints.txt) the first time.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench setup clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/infodisent demo --out runs/demo
	$(BIN)/infodisent evaluate runs/demo --explanations --quiet > runs/demo/evaluation.json
	$(BIN)/infodisent report runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_training.py
	$(BIN)/python benchmarks/bench_mining.py
	@if [ -f runs/demo/config.json ]; then $(BIN)/python benchmarks/bench_api.py runs/demo; \
	else echo "bench_api.py needs the demo run: make demo first"; fi

clean:
	rm -rf $(VENV) runs
