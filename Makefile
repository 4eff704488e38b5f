# kubectl-cedana: every entry point a developer or CI needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
LAB_KUBECONFIG := /var/lib/kubectl-cedana-lab/admin.kubeconfig
PYTEST_WORKERS ?= 2

.PHONY: help install venv deps lab-up lab-down lab-status lab-env test test-unit test-e2e demo dist bench lint clean

help:
	@echo "make demo        lab up (if no cluster given), counter pod, checkpoint -> restore"
	@echo "make test        unit + end-to-end tests (brings the lab up)"
	@echo "make lab-up | lab-down | lab-status | lab-env"

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[helper,test,lint]'
	touch $@

venv: $(VENV)/.installed

deps:
	hack/install-deps.sh

install: deps venv

lab-up: venv
	hack/lab-up.sh

lab-down:
	hack/lab-down.sh

lab-status:
	@hack/lab-status.sh

lab-env:
	@echo "export KUBECONFIG=$(LAB_KUBECONFIG)"

test-unit: venv
	$(PY) -m pytest tests/unit -q

test-e2e: venv lab-up
	$(PY) -m pytest tests/e2e -q -m e2e -n $(PYTEST_WORKERS) --dist loadfile

test: test-unit test-e2e

demo: venv
	hack/demo.sh

# The release archive krew installs, reproducibly: dist/kubectl-cedana (a zipapp that needs only
# python3 >= 3.9), dist/kubectl-cedana-vVERSION.tar.gz and dist/plugin-manifest.yaml with its sha256.
DIST_DIR ?= dist
dist: venv
	$(PY) hack/dist.py --out $(DIST_DIR)

# Benchmarks on the lab, never part of `make test`: writes docs/benchmarks.md and
# docs/benchmarks/*.png (bench/). BENCH_RUNS=5 and BENCH_SIZES=64,256,1024,4096 (MiB) by default.
$(VENV)/.bench-installed: $(VENV)/.installed setup.cfg
	$(PY) -m pip install -q -e '.[helper,test,lint,bench]'
	touch $@

bench: venv lab-up $(VENV)/.bench-installed
	KUBECONFIG=$${KUBECONFIG:-$(LAB_KUBECONFIG)} $(PY) -m bench

# ruff and mypy at the versions of setup.cfg's [lint] extra; any finding fails
lint: venv
	$(PY) -m ruff check kubectl_cedana sidecar tests hack bench
	$(PY) -m mypy

clean:
	rm -rf $(VENV) build dist *.egg-info
