"""manifests/ (the kustomize base for real clusters) against a real kube-apiserver.

Covers: `kubectl kustomize manifests/` renders the CRDs from crds/ (not a copy) and every
object the base names, all namespaced ones in apprelease-system; `kubectl apply -k
--dry-run=server` accepts every object; a real `kubectl apply -k` creates them all (the
Deployment and DaemonSet are accepted; no pods ever run here) and a second apply changes
nothing; the CRDs applied through the base are Established and the admission policies are bound.
"""

from __future__ import annotations

import json

import pytest
import yaml

from support.install import MANIFESTS, NAMESPACE, install, render
from support.manifests import ROOT

pytestmark = pytest.mark.e2e

EXPECTED = {
    ("CustomResourceDefinition", "appreleases.apprelease.dev"),
    ("CustomResourceDefinition", "hostreleases.apprelease.dev"),
    ("Namespace", NAMESPACE),
    ("ServiceAccount", "apprelease-operator"),
    ("ServiceAccount", "apprelease-agent"),
    ("ClusterRole", "apprelease-operator"),
    ("ClusterRole", "apprelease-agent"),
    ("ClusterRole", "apprelease-view"),
    ("ClusterRole", "apprelease-edit"),
    ("ClusterRoleBinding", "apprelease-operator"),
    ("ClusterRoleBinding", "apprelease-agent"),
    ("Role", "apprelease-operator-leader-election"),
    ("RoleBinding", "apprelease-operator-leader-election"),
    ("Role", "apprelease-operator-values-key"),  # the operator makes its values-digest key Secret
    ("RoleBinding", "apprelease-operator-values-key"),
    ("Deployment", "apprelease-operator"),
    ("DaemonSet", "apprelease-agent"),
    ("ValidatingAdmissionPolicy", "apprelease-agent-own-node"),
    ("ValidatingAdmissionPolicyBinding", "apprelease-agent-own-node"),
    ("ConfigMap", "apprelease-policy"),
    ("ValidatingAdmissionPolicy", "apprelease-tenant-policy"),
    ("ValidatingAdmissionPolicyBinding", "apprelease-tenant-policy"),
    ("ValidatingAdmissionPolicy", "apprelease-policy-params"),
    ("ValidatingAdmissionPolicyBinding", "apprelease-policy-params"),
}
CLUSTER_SCOPED = {"CustomResourceDefinition", "Namespace", "ClusterRole", "ClusterRoleBinding",
                  "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}


def test_base_renders_every_object_with_the_generated_crds(control_plane):
    objects = render(control_plane)
    assert {(o["kind"], o["metadata"]["name"]) for o in objects} == EXPECTED
    for obj in objects:
        namespace = obj["metadata"].get("namespace")
        assert namespace == (None if obj["kind"] in CLUSTER_SCOPED else NAMESPACE), obj["metadata"]
    generated = {yaml.safe_load(p.read_text())["metadata"]["name"]: yaml.safe_load(p.read_text())
                 for p in (ROOT / "crds").glob("*.yaml")}
    for crd in (o for o in objects if o["kind"] == "CustomResourceDefinition"):
        # The same CRD as crds/ (which a unit test keeps in step with the models), plus labels.
        assert crd["spec"] == generated[crd["metadata"]["name"]]["spec"]


def test_server_dry_run_accepts_every_object(control_plane):
    # A server-side dry run creates nothing, so the namespaced objects would find no
    # namespace on a fresh cluster: the Namespace alone is applied for real first.
    control_plane.kubectl("apply", "-f", str(MANIFESTS / "namespace.yaml"))
    result = control_plane.kubectl("apply", "-k", str(MANIFESTS), "--dry-run=server")
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == len(EXPECTED), result.stdout
    assert all(line.endswith("(server dry run)") for line in lines), result.stdout


def test_apply_creates_everything_and_is_idempotent(control_plane):
    install(control_plane)
    for kind, name in EXPECTED:
        scope = [] if kind in CLUSTER_SCOPED else ["-n", NAMESPACE]
        control_plane.kubectl("get", kind.lower(), name, *scope, "-o", "name")
    deployment = json.loads(control_plane.kubectl(
        "get", "deployment", "apprelease-operator", "-n", NAMESPACE, "-o", "json").stdout)
    assert deployment["spec"]["replicas"] == 2
    assert "--leader-elect" in deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    daemonset = json.loads(control_plane.kubectl(
        "get", "daemonset", "apprelease-agent", "-n", NAMESPACE, "-o", "json").stdout)
    pod = daemonset["spec"]["template"]["spec"]
    assert pod["hostPID"] is True
    assert pod["nodeSelector"] == {"apprelease.dev/host": "true"}
    again = control_plane.kubectl("apply", "-k", str(MANIFESTS)).stdout.splitlines()
    changed = [line for line in again if line.strip() and not line.endswith(" unchanged")]
    assert not changed, again
