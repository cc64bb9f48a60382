# apprelease: `make demo` and `make test` do all set-up on a fresh machine (Debian, root, Go, Python 3.11).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: all deps venv controlplane crds check-crds test test-unit test-integration test-e2e demo demo-down bench clean

all: test

# Debian packages the data plane and the tests need (installed only when missing).
deps:
	@hack/install-deps

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q uv
	$(VENV)/bin/uv pip install -q --python $(PY) -e '.[test]'
	touch $@

venv: $(VENV)/.installed

# kube-apiserver, etcd, kubectl, kube-controller-manager built from Go modules, cached in ~/.cache/apprelease.
controlplane:
	@hack/build-controlplane >/dev/null

crds: venv
	$(VENV)/bin/apprelease crds --out crds

check-crds: venv
	$(VENV)/bin/apprelease crds --out crds --check

test: deps venv controlplane
	$(VENV)/bin/pytest -ra $(PYTEST_ARGS)

test-unit: venv
	$(VENV)/bin/pytest -m unit $(PYTEST_ARGS)

test-integration: deps venv
	$(VENV)/bin/pytest -m integration $(PYTEST_ARGS)

test-e2e: deps venv controlplane
	$(VENV)/bin/pytest -m e2e $(PYTEST_ARGS)

demo: deps venv controlplane
	hack/demo up

demo-down:
	hack/demo down

bench: deps venv
	for b in bench/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
