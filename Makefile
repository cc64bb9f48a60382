# apprelease: `make demo` and `make test` do all set-up on a fresh machine (Debian, root, Go, Python 3.11).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: all deps venv controlplane argocd crds check-crds test test-unit test-integration test-e2e demo demo-down kind-demo bench clean

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

# Argo CD's application-controller and repo-server built from Go modules (the GitOps e2e tests).
argocd:
	@hack/build-argocd >/dev/null

crds: venv
	$(VENV)/bin/apprelease crds --out crds

check-crds: venv
	$(VENV)/bin/apprelease crds --out crds --check

test: deps venv controlplane argocd
	$(VENV)/bin/pytest -ra $(PYTEST_ARGS)

test-unit: venv
	$(VENV)/bin/pytest -m unit $(PYTEST_ARGS)

test-integration: deps venv
	$(VENV)/bin/pytest -m integration $(PYTEST_ARGS)

test-e2e: deps venv controlplane argocd
	$(VENV)/bin/pytest -m e2e $(PYTEST_ARGS)

# `make demo GITOPS=1` adds an act where a real Argo CD drives the same story from git commits.
demo: deps venv controlplane
	hack/demo up $(if $(GITOPS),--gitops)

demo-down:
	hack/demo down

# apprelease on a kind cluster, for users with Docker (not run by `make test`; needs docker,
# kind and kubectl on PATH): kind-config.yaml's control plane + two workers labelled as hosts,
# the image built from Containerfile and loaded into the nodes, the CRDs, operator and agents
# (manifests/, through an overlay under .demo/ that swaps in the local image), then the
# example AppRelease. Its indexUrl (the `make demo` index on 127.0.0.1:8765) is not reachable
# from kind's nodes: set KIND_INDEX_URL to an index holding webxample's wheels that they can
# reach. `kind delete cluster --name apprelease` removes it all.
KIND ?= kind
KIND_IMAGE ?= apprelease:kind-demo
KIND_INDEX_URL ?=
kind-demo:
	@for tool in docker $(KIND) kubectl; do command -v $$tool >/dev/null || { echo "kind-demo: $$tool is required" >&2; exit 1; }; done
	mkdir -p /tmp/apprelease-kind/worker /tmp/apprelease-kind/worker2 .demo/kind
	$(KIND) get clusters | grep -qx apprelease || $(KIND) create cluster --config kind-config.yaml
	docker build -t $(KIND_IMAGE) -f Containerfile .
	$(KIND) load docker-image $(KIND_IMAGE) --name apprelease
	printf 'apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n- ../../manifests\nimages:\n- name: ghcr.io/apprelease/apprelease\n  newName: %s\n  newTag: %s\n' \
	  "$(firstword $(subst :, ,$(KIND_IMAGE)))" "$(lastword $(subst :, ,$(KIND_IMAGE)))" > .demo/kind/kustomization.yaml
	kubectl --context kind-apprelease apply --server-side -k .demo/kind
	kubectl --context kind-apprelease wait --for=condition=Established crd/appreleases.apprelease.dev --timeout=60s
	kubectl --context kind-apprelease apply -f manifests/examples/webxample.yaml
	$(if $(KIND_INDEX_URL),kubectl --context kind-apprelease patch appreleases webxample --type=merge -p '{"spec":{"source":{"indexUrl":"$(KIND_INDEX_URL)"}}}')
	kubectl --context kind-apprelease get nodes -L apprelease.dev/host
	kubectl --context kind-apprelease get appreleases,hostreleases -A

bench: deps venv controlplane
	for b in bench/[!_]*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
