"""Fixtures of the e2e level: the real control plane with apprelease's CRDs installed."""

from __future__ import annotations

import pytest

from apprelease.api import models
from support.argocd import argocd  # noqa: F401 - the session fixture (GitOps tests)
from support.cluster import wait_for_crd
from support.install import NAMESPACE, POLICY_CONFIGMAP
from support.manifests import ROOT


@pytest.fixture(scope="session")
def cluster(control_plane):
    """The session's control plane with crds/ applied, established and listable."""
    control_plane.kubectl("apply", "-f", str(ROOT / "crds"))
    for plural in ("appreleases", "hostreleases"):
        wait_for_crd(control_plane, f"{plural}.{models.GROUP}")
    return control_plane


@pytest.fixture(scope="module", autouse=True)
def tenant_policy_open_ports_after_the_module(control_plane):
    """Modules that install manifests/ bind the tenant policy for every namespace, and the
    session's other modules deploy on free high ports its default listenPorts refuse: after
    each module the session's policy allows any port. Its binding is never deleted: with a
    ConfigMap as paramKind, kube-apiserver stops seeing edits of the ConfigMap for good once no
    binding names that kind (kubernetes/kubernetes#130887, seen here with v1.36.3)."""
    yield
    control_plane.kubectl("patch", "configmap", POLICY_CONFIGMAP, "-n", NAMESPACE, "--type=merge",
                          "-p", '{"data": {"listenPorts": "*"}}', check=False)
