# Two commands: `make demo` (set up, then run the main job) and `make test` (set up, then run the tests).
# Each creates .venv from pyproject.toml (pinned by constraints.txt) the first time.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast bench setup clean chromium lab

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test,lite,interop]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/infodisent demo --out runs/demo
	$(BIN)/infodisent evaluate runs/demo --explanations --quiet > runs/demo/evaluation.json
	$(BIN)/infodisent report runs/demo

# the browser test drives Debian's chromium through Playwright (Playwright's own download cannot work offline)
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium is missing and cannot be installed here (apt-get as root): tests/test_browser.py will skip"; fi; }

test: $(STAMP) chromium
	$(BIN)/python -m pytest

# the inner loop: the unit tests, without the tutorials, the browser, several processes or real-data training
test-fast: $(STAMP)
	$(BIN)/python -m pytest tests -m "not slow" --deselect tests/test_browser.py --deselect tests/test_distributed.py \
	    --deselect tests/test_notebooks.py::test_reproduction_smoke_profile_runs_with_papermill

# JupyterLab at the repository root (the venv's kernel): a new notebook here opens runs/demo as the README says;
# the tutorials (notebooks/tutorials/) and reproduction notebooks keep their paths relative to their own folder
lab: $(STAMP)
	$(BIN)/jupyter lab --notebook-dir=.

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_training.py
	$(BIN)/python benchmarks/bench_mining.py
	$(BIN)/python benchmarks/bench_distributed.py
	@if [ -f runs/demo/config.json ]; then $(BIN)/python benchmarks/bench_api.py runs/demo; \
	$(BIN)/python benchmarks/bench_widgets.py runs/demo; \
	else echo "bench_api.py and bench_widgets.py need the demo run: make demo first"; fi

clean:
	rm -rf $(VENV) runs
