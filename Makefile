# `make demo` and `make test` each set up .venv themselves. The venv sees system site-packages,
# so an existing (e.g. CUDA) torch is used; CPU torch 2.13.0 is installed only when none imports.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install demo test test-slow bench report clean

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv --system-site-packages $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[all,dev]"
	@touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/svdd demo

test: install
	$(PY) -m pytest -q -m "not slow and not gpu" tests

test-slow: install
	$(PY) -m pip install -q -e ".[all,dev,distributed]"
	$(PY) -m pytest -q -m "slow and not gpu" tests

bench: install
	$(VENV)/bin/svdd bench benchmarks/toys-quick.yaml --out runs/bench-toys-quick

clean:
	rm -rf $(VENV) build src/*.egg-info
