"""Installing manifests/ (the kustomize base a real cluster gets) into the test control plane.

Who uses it: tests/e2e/test_manifests.py, test_rbac.py, test_leader.py and test_tenant_policy.py,
which all need the real ServiceAccounts, ClusterRoles and admission policies rather than test
copies of them. After each e2e module the tenant policy allows any port (conftest.py): its
default would refuse the free high ports other modules deploy on.
`kubectl apply` is idempotent, so each module may call `install` whatever ran before.
"""

from __future__ import annotations

import json

import yaml

from controlplane import ControlPlane
from support.cluster import wait_for_crd
from support.manifests import ROOT

MANIFESTS = ROOT / "manifests"
NAMESPACE = "apprelease-system"
OPERATOR_SA = "apprelease-operator"
AGENT_SA = "apprelease-agent"
AGENT_POLICY = "apprelease-agent-own-node"
TENANT_POLICY = "apprelease-tenant-policy"
POLICY_CONFIGMAP = "apprelease-policy"


def render(cp: ControlPlane) -> list[dict]:
    """The objects of `kubectl kustomize manifests/`."""
    out = cp.kubectl("kustomize", str(MANIFESTS)).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def install(cp: ControlPlane) -> None:
    cp.kubectl("apply", "-k", str(MANIFESTS))
    for plural in ("appreleases", "hostreleases"):
        wait_for_crd(cp, f"{plural}.apprelease.dev")


def namespace_exists(cp: ControlPlane, name: str) -> bool:
    out = cp.kubectl("get", "namespace", name, "-o", "json", "--ignore-not-found").stdout
    return bool(out.strip()) and json.loads(out)["status"].get("phase") == "Active"
