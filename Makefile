# Two commands matter: `make demo` (set up + main job) and `make test` (set up + tests).
# Both are idempotent; set-up steps are skipped when already done.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch is preferred when the env has no torch; an existing torch (e.g. a CUDA build) is kept.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: setup venv vulkan demo demo-poly test test-fast lint clean

setup: venv vulkan

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@if $(PY) -c "import torch" 2>/dev/null; then \
	  echo "[setup] keeping installed torch $$($(PY) -c 'import torch; print(torch.__version__)')"; \
	else \
	  echo "[setup] installing $(TORCH_SPEC)"; $(PY) -m pip install -q "$(TORCH_SPEC)"; \
	fi
	$(PY) -m pip install -q -e ".[dev]"
	@touch $@

vulkan: $(VENV)/.vulkan-ok

$(VENV)/.vulkan-ok: $(VENV)/.installed scripts/ensure-vulkan.sh
	bash scripts/ensure-vulkan.sh $(PY)
	@touch $@

demo: setup
	$(VENV)/bin/mepoly-il demo il

# The polynomial-core job: density fits of the lemniscate and two moons (orders 2-14, Legendre vs monomial).
demo-poly: venv
	$(VENV)/bin/mepoly-il demo poly

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

# Unit tests only (no simulator), for quick iteration.
test-fast: venv
	$(PY) -m pytest -m "not sim and not slow" $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
