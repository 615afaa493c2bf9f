# vcdflow: two commands.
#   make demo   set up .venv and run the whole pipeline on the embedded demo world
#   make test   set up .venv and run the test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.vcdflow-installed
CORES ?= all
# For torch's CPU wheel from PyTorch's own index (machines without a local wheel folder):
#   make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
LOCK := requirements.lock
UV ?= uv
# where `make lock` finds the pinned CPU torch wheel (requirements-pins.txt)
LOCK_FIND_LINKS ?= $(if $(TORCH_INDEX),,/opt/wheels)

.PHONY: demo demo-paper demo-full test setup extra lock lint dry-run clean-results

# The locked environment (docs/environment.md): requirements.lock pins every package with its
# hashes; pyproject.toml keeps the ranges a library user installs against. The venv is
# (re)installed when the lock or pyproject.toml is newer than the stamp; a venv that already
# holds exactly the locked versions is only re-stamped (envlock.py check), not reinstalled.
$(STAMP): $(LOCK) pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@if $(PY) src/vcdflow/envlock.py check $(LOCK) >/dev/null 2>&1; then \
	  echo "$(VENV) already holds the versions in $(LOCK)"; \
	else \
	  echo "installing $(LOCK) into $(VENV)"; \
	  $(PY) -m pip install -q --require-hashes --no-deps -r $(LOCK) $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)); \
	fi
	@# the project itself, editable and without dependencies (the lock brought them); a venv
	@# shared with another checkout keeps pointing there (said, not switched)
	@where=$$($(PY) -m pip show vcdflow 2>/dev/null | sed -n 's/^Editable project location: //p'); \
	if [ -z "$$where" ]; then $(PY) -m pip install -q --no-deps -e .; \
	elif [ "$$where" != "$(CURDIR)" ]; then echo "note: vcdflow in $(VENV) is the editable install of $$where (pip install --no-deps -e . to switch)"; fi
	@$(PY) src/vcdflow/envlock.py check $(LOCK)
	@touch $(STAMP)

setup: $(STAMP)

# An optional extra on top of the lock (make extra EXTRA=amber): its own packages are added, no
# locked version moves (the lock's pins, without hashes, as pip constraints).
extra: $(STAMP)
	@test -n "$(EXTRA)" || { echo "name the extra: make extra EXTRA=amber (or lmms, workflow)"; exit 2; }
	sed -n 's/^\([A-Za-z0-9._-]*==[^ ]*\).*/\1/p' $(LOCK) > $(VENV)/lock-constraints.txt
	$(PY) -m pip install -q -c $(VENV)/lock-constraints.txt -e '.[$(EXTRA)]'
	$(PY) src/vcdflow/envlock.py check $(LOCK)

# Rewrite requirements.lock from pyproject.toml (demo + tests + lint: the `test` and `lint` extras) and
# requirements-pins.txt, keeping the locked versions that still fit (uv reads the old lock as
# preferences). Upgrade one package: make lock UV_ARGS="--upgrade-package transformers";
# all: make lock UV_ARGS=--upgrade. Needs uv (pip install uv).
lock:
	$(UV) pip compile pyproject.toml --extra test --extra lint -c requirements-pins.txt --generate-hashes \
	  --python-version 3.11 --python-platform x86_64-manylinux_2_28 --index-strategy unsafe-best-match \
	  $(if $(LOCK_FIND_LINKS),--find-links $(LOCK_FIND_LINKS)) $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) \
	  --custom-compile-command "make lock" --no-emit-index-url --no-emit-find-links $(UV_ARGS) -o $(LOCK)

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

# Python: ruff's lint rules and formatter (pyproject.toml [tool.ruff]); the workflow: snakefmt
# (pyproject.toml [tool.snakefmt]) and Snakemake's own linter; and no planning shorthand
# (capability numbers, survey sections, issue numbers) in code, tests or docs
LINT_PY := src tests workflow benchmarks tools
lint: $(STAMP)
	$(VENV)/bin/ruff check $(wildcard $(LINT_PY))
	$(VENV)/bin/ruff format --check $(wildcard $(LINT_PY))
	$(VENV)/bin/snakefmt --check Snakefile workflow/rules
	$(VENV)/bin/snakemake --lint
	$(PY) tools/no_shorthand.py

dry-run: $(STAMP)
	$(VENV)/bin/snakemake -n --configfile config/paper.yaml --config offline=true

clean-results:
	rm -rf results logs reports/index.html .snakemake/incomplete
