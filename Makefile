# vcdflow: two commands.
#   make demo   set up .venv and run the whole pipeline on the embedded demo world
#   make test   set up .venv and run the test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.vcdflow-installed
CORES ?= all
TORCH_INDEX ?=

.PHONY: demo demo-paper demo-full test setup lint dry-run clean-results

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# torch pinned (an unpinned torch may pull a multi-GB CUDA build). For a CPU-only build
	@# from PyTorch's own index: make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu
	$(PY) -m pip install -q torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/snakemake --cores $(CORES)
	@echo ""
	@echo "Report: $$(pwd)/reports/index.html"

# the demo world under each method's paper protocol (config/demo-paper.yaml)
demo-paper: $(STAMP)
	$(VENV)/bin/snakemake --cores $(CORES) --configfile config/demo-paper.yaml
	@echo ""
	@echo "Report: $$(pwd)/reports/index.html"

# every method, greedy and sampling, on POPE, CHAIR, demo MME and demo AMBER (config/demo-full.yaml)
demo-full: $(STAMP)
	$(VENV)/bin/snakemake --cores $(CORES) --configfile config/demo-full.yaml
	@echo ""
	@echo "Report: $$(pwd)/reports/index.html"

test: $(STAMP)
	$(PY) -m pytest -q -ra

lint: $(STAMP)
	$(VENV)/bin/snakemake --lint

dry-run: $(STAMP)
	$(VENV)/bin/snakemake -n --configfile config/paper.yaml --config offline=true

clean-results:
	rm -rf results logs reports/index.html .snakemake/incomplete
