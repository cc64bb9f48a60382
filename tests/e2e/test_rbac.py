"""Least privilege, checked with real identities: the ServiceAccounts of manifests/, their
tokens minted by the apiserver (TokenRequest), the agents' tokens bound to Pods on Nodes.

Covers: an agent's token bound to its Pod carries its Node's name; every request the
operator and the agent make is allowed to them (`kubectl auth can-i` as each identity) and a
table of things each must not do is denied (listing Secrets, the agent reading any Secret it
was not granted, Nodes, Pods, CRDs, escalate/bind and cluster RBAC, the other component's
writes); the operator's code with its own token keeps the agents' per-namespace Role, and the
agents' tokens read exactly the referenced Secrets and ConfigMaps, nothing unreferenced, no list; real requests agree with can-i; the admission policy lets an
agent write (status, metadata, labels) only the HostReleases of its own Node, and refuses
the agent ServiceAccount's tokens that are not bound to a Node; the real operator, running
with nothing but its ServiceAccount's token (all namespaces, leader election as deployed),
fans an AppRelease out to HostReleases and cleans up on deletion without a single 403; the
real agent with its bound token lists, watches, adds its finalizer, writes status and
records events without a 403.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from apprelease.api import models
from support.agents import running_agent
from support.cluster import wait_for
from support.identities import Identity, service_account_identity
from support.install import AGENT_SA, NAMESPACE, OPERATOR_SA, install
from support.manifests import EXAMPLE
from support.operator import OperatorProcess

pytestmark = pytest.mark.e2e

NODE_EXTRA = "authentication.kubernetes.io/node-name"
HR = "hostreleases.apprelease.dev"
AR = "appreleases.apprelease.dev"
TIMEOUT = 30.0


class World:
    """The installed manifests, two Nodes with an agent Pod each, a test namespace, identities."""

    def __init__(self, cp, directory: Path) -> None:
        self.cp = cp
        self.tag = "t" + uuid.uuid4().hex[:6]  # a letter first: "1e5432" would be a number in YAML
        self.ns = f"rbac-{self.tag}"
        self.nodes = [f"rbac-{self.tag}-a", f"rbac-{self.tag}-b"]
        self.directory = directory

    def pod_name(self, node: str) -> str:
        return f"apprelease-agent-{node}"

    def setup(self) -> None:
        install(self.cp)
        self.cp.kubectl("create", "namespace", self.ns)
        for node in self.nodes:
            self.cp.kubectl("create", "-f", "-", input=yaml.safe_dump({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": node, "labels": {"apprelease.dev/host": "true", "rbac-test": self.tag}},
            }))
            # What the DaemonSet controller and scheduler would make: a Pod of the agent
            # ServiceAccount on that Node (it never runs: there is no kubelet).
            self.cp.kubectl("create", "-f", "-", input=yaml.safe_dump({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": self.pod_name(node), "namespace": NAMESPACE},
                "spec": {"serviceAccountName": AGENT_SA, "nodeName": node,
                         "containers": [{"name": "agent", "image": "apprelease"}]},
            }))
        self.operator = service_account_identity(self.cp, self.directory, NAMESPACE, OPERATOR_SA)
        self.agents = {node: service_account_identity(self.cp, self.directory, NAMESPACE, AGENT_SA,
                                                      bound_pod=self.pod_name(node)) for node in self.nodes}
        self.unbound_agent = service_account_identity(self.cp, self.directory, NAMESPACE, AGENT_SA)

    def teardown(self) -> None:
        for node in self.nodes:
            # No kubelet confirms a graceful deletion: force it.
            self.cp.kubectl("delete", "pod", self.pod_name(node), "-n", NAMESPACE, "--force", "--grace-period=0",
                            "--ignore-not-found", check=False)
            self.cp.kubectl("delete", "node", node, "--ignore-not-found", check=False)
        self.cp.kubectl("delete", "namespace", self.ns, "--wait=false", "--ignore-not-found", check=False)

    def host_release(self, node: str, spec_node: str | None = None) -> str:
        """A HostRelease for `node` (created as admin, as the operator would); its name."""
        spec = {**copy.deepcopy(EXAMPLE["spec"]), "app": "webxample", "node": spec_node or node,
                "buildId": "b1", "revision": "r1"}
        for key in ("hosts", "strategy", "paused"):
            spec.pop(key, None)
        name = f"webxample-{node}"
        self.cp.kubectl("create", "-f", "-", input=yaml.safe_dump({
            "apiVersion": models.API_VERSION, "kind": "HostRelease",
            "metadata": {"name": name, "namespace": self.ns,
                         "labels": {models.NODE_LABEL: node, models.APP_LABEL: "webxample"}},
            "spec": spec,
        }))
        return name


@pytest.fixture(scope="module")
def world(control_plane, tmp_path_factory) -> Iterator[World]:
    w = World(control_plane, tmp_path_factory.mktemp("identities"))
    try:
        w.setup()
        yield w
    finally:
        w.teardown()


# ----- identities


def test_agent_token_bound_to_its_pod_carries_its_node(world):
    for node, agent in world.agents.items():
        user = world_user(agent)
        assert user["username"] == f"system:serviceaccount:{NAMESPACE}:{AGENT_SA}"
        assert user["extra"][NODE_EXTRA] == [node]
    assert NODE_EXTRA not in (world_user(world.unbound_agent).get("extra") or {})


def world_user(identity: Identity) -> dict:
    return identity.whoami()["status"]["userInfo"]


# ----- RBAC tables (can-i is a SelfSubjectAccessReview: RBAC alone)

# (verb, resource, subresource, namespace): None namespace means all namespaces.
OPERATOR_ALLOWED = [
    *[(v, AR, None, None) for v in ("get", "list", "watch", "patch", "update")],
    *[(v, AR, "status", None) for v in ("patch", "update")],
    ("update", AR, "finalizers", None),
    *[(v, HR, None, None) for v in ("create", "get", "list", "watch", "patch", "update", "delete")],
    ("get", HR, "status", None),
    *[(v, "nodes", None, None) for v in ("get", "list", "watch")],
    ("create", "events", None, None),
    ("patch", "events", None, None),
    ("list", "customresourcedefinitions.apiextensions.k8s.io", None, None),
    ("watch", "customresourcedefinitions.apiextensions.k8s.io", None, None),
    ("create", "leases.coordination.k8s.io", None, NAMESPACE),
    # Secrets (issue 12): the operator reads referenced Secrets and ConfigMaps by name (the
    # keyed digest, SecretNotFound with the key) and keeps the agents' Role per namespace; RBAC
    # lets it grant `get` because it holds `get` (no escalate/bind). Was denied before env
    # could come from Secrets; list/watch stay denied (below).
    ("get", "secrets", None, None),
    ("get", "secrets", None, NAMESPACE),
    ("get", "configmaps", None, None),
    ("create", "secrets", None, NAMESPACE),  # its values-digest key, made once
    *[(v, "roles.rbac.authorization.k8s.io", None, None) for v in ("get", "create", "update", "delete")],
    *[(v, "rolebindings.rbac.authorization.k8s.io", None, None) for v in ("get", "create", "update", "delete")],
]
OPERATOR_DENIED = [
    ("list", "secrets", None, None),
    ("watch", "secrets", None, None),
    ("list", "secrets", None, NAMESPACE),
    ("create", "secrets", None, None),
    ("update", "secrets", None, None),
    ("delete", "secrets", None, NAMESPACE),
    ("escalate", "roles.rbac.authorization.k8s.io", None, None),
    ("bind", "roles.rbac.authorization.k8s.io", None, None),
    ("bind", "clusterroles.rbac.authorization.k8s.io", None, None),
    ("create", "clusterroles.rbac.authorization.k8s.io", None, None),
    ("delete", "nodes", None, None),
    ("patch", "nodes", None, None),
    ("create", "pods", None, None),
    ("create", "pods", "exec", None),
    ("update", "customresourcedefinitions.apiextensions.k8s.io", None, None),
    ("delete", "customresourcedefinitions.apiextensions.k8s.io", None, None),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io", None, None),
    ("delete", AR, None, None),
    ("create", AR, None, None),
    ("patch", HR, "status", None),  # status is the agents' to write
    ("create", "leases.coordination.k8s.io", None, "kube-system"),
    ("create", "serviceaccounts/token", None, NAMESPACE),
]
AGENT_ALLOWED = [
    *[(v, HR, None, None) for v in ("get", "list", "watch", "patch")],
    *[(v, HR, "status", None) for v in ("get", "patch", "update")],
    ("create", "events", None, None),
    # the log endpoint reviews its callers (agent/logserver.py)
    ("create", "tokenreviews.authentication.k8s.io", None, None),
    ("create", "subjectaccessreviews.authorization.k8s.io", None, None),
]
AGENT_DENIED = [
    ("get", "secrets", None, None),
    ("list", "secrets", None, None),
    ("get", "secrets", None, NAMESPACE),
    *[(v, HR, None, None) for v in ("create", "update", "delete", "deletecollection")],
    *[(v, AR, None, None) for v in ("get", "list", "patch", "update", "delete")],
    ("patch", AR, "status", None),
    ("list", "nodes", None, None),
    ("delete", "nodes", None, None),
    ("create", "pods", None, None),
    ("update", "customresourcedefinitions.apiextensions.k8s.io", None, None),
    ("create", "leases.coordination.k8s.io", None, NAMESPACE),
    ("create", "serviceaccounts/token", None, NAMESPACE),
    ("get", HR, "log", None),  # the agent serves logs; it does not read them through anyone
]


def _id(case: tuple) -> str:
    verb, resource, sub, ns = case
    return f"{verb} {resource.split('.')[0]}{'/' + sub if sub else ''}{' in ' + ns if ns else ''}"


@pytest.mark.parametrize("case", OPERATOR_ALLOWED, ids=_id)
def test_operator_may(world, case):
    verb, resource, sub, ns = case
    assert world.operator.can_i(verb, resource, namespace=ns, subresource=sub)


@pytest.mark.parametrize("case", OPERATOR_DENIED, ids=_id)
def test_operator_may_not(world, case):
    verb, resource, sub, ns = case
    assert not world.operator.can_i(verb, resource, namespace=ns, subresource=sub)


def test_operator_lease_rights_are_for_its_lease_only(world):
    lease = "leases.coordination.k8s.io"
    for verb in ("get", "update"):
        assert world.operator.can_i(verb, lease, namespace=NAMESPACE, name="apprelease-operator")
        assert not world.operator.can_i(verb, lease, namespace=NAMESPACE, name="someone-else")


@pytest.mark.parametrize("case", AGENT_ALLOWED, ids=_id)
def test_agent_may(world, case):
    verb, resource, sub, ns = case
    for agent in world.agents.values():
        assert agent.can_i(verb, resource, namespace=ns, subresource=sub)


@pytest.mark.parametrize("case", AGENT_DENIED, ids=_id)
def test_agent_may_not(world, case):
    verb, resource, sub, ns = case
    for agent in world.agents.values():
        assert not agent.can_i(verb, resource, namespace=ns, subresource=sub)


def test_real_requests_agree_with_can_i(world):
    node = world.nodes[0]
    name = world.host_release(node)
    agent, operator = world.agents[node], world.operator
    assert name in operator.kubectl("get", "hr", "-A", "-o", "name").stdout
    assert name in agent.kubectl("get", "hr", "-A", "-l", f"{models.NODE_LABEL}={node}", "-o", "name").stdout
    operator.kubectl("get", "nodes", "-o", "name")
    for who in (operator, agent):  # neither may list Secrets (the operator gets them by name only)
        denied = who.kubectl("get", "secrets", "-A", check=False)
        assert denied.returncode != 0 and "Forbidden" in denied.stderr, denied.stderr
    denied = agent.kubectl("delete", "hr", name, "-n", world.ns, check=False)
    assert "Forbidden" in denied.stderr
    denied = agent.kubectl("get", "ar", "-A", check=False)
    assert "Forbidden" in denied.stderr
    operator.kubectl("delete", "hr", name, "-n", world.ns)


# ----- Secrets: the agents read exactly what the namespace's AppReleases reference


def test_agent_reads_exactly_the_referenced_secrets_granted_by_the_operator_token(world):
    """The operator's own code and token keep the Role (RBAC's escalation check is real here);
    the agents' tokens then read a referenced Secret and ConfigMap, not an unreferenced Secret
    of the same namespace, never a list; the Role follows the references and goes with the last."""
    from apprelease.controller.kube import KubeApi, client_configuration
    from apprelease.controller.reconcile import SecretsConfig, update_agent_grants

    ns = world.ns
    for name in ("db", "unreferenced"):
        world.cp.kubectl("create", "secret", "generic", name, "-n", ns, "--from-literal=url=postgres://x")
    world.cp.kubectl("create", "configmap", "settings", "-n", ns, "--from-literal=LOG_LEVEL=debug")
    doc = copy.deepcopy(EXAMPLE)
    doc["metadata"] = {"name": "secretive", "namespace": ns}
    doc["spec"]["hosts"] = {"nodeSelector": {"rbac-test": "nobody"}}
    doc["spec"]["env"] = [
        {"name": "DATABASE_URL", "valueFrom": {"secretKeyRef": {"name": "db", "key": "url"}}},
        {"name": "LOG_LEVEL", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "LOG_LEVEL"}}}]
    world.cp.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc))
    operator_api = KubeApi.from_configuration(client_configuration(str(world.operator.kubeconfig)))
    config = SecretsConfig(agent_service_account=(NAMESPACE, AGENT_SA))
    update_agent_grants(operator_api, ns, config)

    for agent in world.agents.values():
        def reads_db() -> bool:
            return agent.kubectl("get", "secret", "db", "-n", ns, check=False).returncode == 0

        wait_for(reads_db, TIMEOUT, lambda: "the agent cannot read the referenced Secret")
        assert agent.kubectl("get", "configmap", "settings", "-n", ns, check=False).returncode == 0
        for denied in (("get", "secret", "unreferenced", "-n", ns), ("get", "secrets", "-n", ns),
                       ("get", "secrets", "-A"), ("get", "configmaps", "-n", ns)):
            result = agent.kubectl(*denied, check=False)
            assert result.returncode != 0 and "Forbidden" in result.stderr, (denied, result.stderr)
        assert agent.can_i("get", "secrets", namespace=ns, name="db")
        assert not agent.can_i("get", "secrets", namespace=ns, name="unreferenced")
        assert not agent.can_i("list", "secrets", namespace=ns)
        assert not agent.can_i("watch", "secrets", namespace=ns)

    # The reference moves to the other Secret: the grant follows.
    doc["spec"]["env"] = [{"name": "DATABASE_URL", "valueFrom": {"secretKeyRef": {"name": "unreferenced", "key": "url"}}}]
    world.cp.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc))
    update_agent_grants(operator_api, ns, config)
    agent = world.agents[world.nodes[0]]
    wait_for(lambda: not agent.can_i("get", "secrets", namespace=ns, name="db"), TIMEOUT, lambda: "db still granted")
    assert agent.can_i("get", "secrets", namespace=ns, name="unreferenced")
    assert not agent.can_i("get", "configmaps", namespace=ns, name="settings")

    # No reference left: no Role, no RoleBinding (never an empty resourceNames: that grants all).
    world.cp.kubectl("delete", "ar", "secretive", "-n", ns, "--wait=false")
    world.cp.kubectl("patch", "ar", "secretive", "-n", ns, "--type=merge", "-p", '{"metadata":{"finalizers":null}}',
                     check=False)
    update_agent_grants(operator_api, ns, config)
    for kind in ("role", "rolebinding"):
        assert world.cp.kubectl("get", kind, "-n", ns, "-o", "name").stdout.strip() == ""
    assert not agent.can_i("get", "secrets", namespace=ns, name="unreferenced")
    world.cp.kubectl("delete", "secret", "db", "unreferenced", "-n", ns)
    world.cp.kubectl("delete", "configmap", "settings", "-n", ns)


# ----- the admission policy: an agent writes only its own Node's HostReleases


def _patch_status(agent: Identity, ns: str, name: str, phase: str = "Pending"):
    return agent.kubectl("patch", "hr", name, "-n", ns, "--subresource=status", "--type=merge",
                         "-p", json.dumps({"status": {"phase": phase, "message": f"from {agent.name}"}}), check=False)


def test_agent_writes_only_its_own_nodes_host_releases(world):
    a, b = world.nodes
    hr_a, hr_b = world.host_release(a), world.host_release(b)
    agent_a, agent_b = world.agents[a], world.agents[b]
    last: dict = {}

    def denied_by_policy() -> bool:
        # Policies take a moment to become effective after they are created.
        last["result"] = _patch_status(agent_a, world.ns, hr_b)
        return last["result"].returncode != 0

    wait_for(denied_by_policy, TIMEOUT, lambda: f"policy not effective: {last['result'].stdout}")
    stderr = last["result"].stderr
    assert "apprelease-agent-own-node" in stderr, stderr
    assert f"the apprelease agent of node {a} may only write HostReleases labelled apprelease.dev/node={a}" in stderr

    assert _patch_status(agent_a, world.ns, hr_a).returncode == 0
    assert _patch_status(agent_b, world.ns, hr_b).returncode == 0
    assert "apprelease-agent-own-node" in _patch_status(agent_b, world.ns, hr_a).stderr

    # The main resource too: the finalizer patch, and moving a HostRelease onto one's Node.
    finalizer = {"metadata": {"finalizers": ["apprelease.dev/agent-cleanup"]}}
    assert agent_a.kubectl("patch", "hr", hr_a, "-n", world.ns, "--type=merge", "-p", json.dumps(finalizer),
                           check=False).returncode == 0
    other = agent_a.kubectl("patch", "hr", hr_b, "-n", world.ns, "--type=merge", "-p", json.dumps(finalizer),
                            check=False)
    assert "apprelease-agent-own-node" in other.stderr, other.stderr
    relabel = {"metadata": {"labels": {models.NODE_LABEL: b}}}
    moved = agent_a.kubectl("patch", "hr", hr_a, "-n", world.ns, "--type=merge", "-p", json.dumps(relabel),
                            check=False)
    assert "apprelease-agent-own-node" in moved.stderr, moved.stderr

    # The agent's ServiceAccount with a token bound to no Node writes nothing at all.
    unbound = _patch_status(world.unbound_agent, world.ns, hr_a)
    assert "must be bound to a pod on a Node" in unbound.stderr, unbound.stderr

    statuses = {n: json.loads(world.cp.kubectl("get", "hr", n, "-n", world.ns, "-o", "json").stdout)["status"]
                for n in (hr_a, hr_b)}
    assert statuses[hr_a]["message"] == f"from {agent_a.name}"
    assert statuses[hr_b]["message"] == f"from {agent_b.name}"
    world.cp.kubectl("patch", "hr", hr_a, "-n", world.ns, "--type=merge", "-p", '{"metadata":{"finalizers":null}}')
    world.cp.kubectl("delete", "hr", hr_a, hr_b, "-n", world.ns)


# ----- the real processes with nothing but their own tokens


def test_operator_runs_with_its_service_account_only(world, tmp_path):
    selector = {"rbac-test": world.tag}
    doc = copy.deepcopy(EXAMPLE)
    doc["metadata"] = {"name": "webxample", "namespace": world.ns}
    doc["spec"]["hosts"] = {"nodeSelector": selector}
    operator = OperatorProcess(world.cp, tmp_path / "operator.log", extra_args=[
        # The Deployment's flags; the later --kubeconfig wins over the admin one.
        "--kubeconfig", str(world.operator.kubeconfig),
        "--leader-elect", "--leader-elect-namespace", NAMESPACE,
    ])
    with operator:
        world.cp.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc))

        def fanned_out() -> bool:
            out = world.cp.kubectl("get", "hr", "-n", world.ns, "-o", "json").stdout
            return sorted(i["spec"]["node"] for i in json.loads(out)["items"]) == sorted(world.nodes)

        wait_for(fanned_out, TIMEOUT, lambda: f"no HostReleases; operator log:\n{operator.logs()[-3000:]}")
        world.cp.kubectl("delete", "ar", "webxample", "-n", world.ns, "--timeout=60s")
        assert world.cp.kubectl("get", "hr", "-n", world.ns, "-o", "name").stdout.strip() == ""
    logs = operator.logs()
    assert "acquired Lease" in logs
    for word in ("403", "Forbidden", "forbidden"):
        assert word not in logs, logs[-4000:]


def test_agent_runs_with_its_bound_token_only(world, short_tmp, tmp_path):
    node = world.nodes[0]
    # spec.node disagrees with the label: the agent reports Failed without building anything,
    # which still takes every call it makes (list, watch, finalizer, status, event).
    name = world.host_release(node, spec_node="elsewhere")
    agent = world.agents[node]
    with running_agent(node, short_tmp / "root", agent.kubeconfig, tmp_path / "agent.log") as process:
        def failed() -> bool:
            obj = json.loads(world.cp.kubectl("get", "hr", name, "-n", world.ns, "-o", "json").stdout)
            return (obj.get("status") or {}).get("phase") == "Failed" and bool(obj["metadata"].get("finalizers"))

        wait_for(failed, TIMEOUT, lambda: f"no Failed status; agent log:\n{process.log_tail()}")
        events = world.cp.kubectl("get", "events", "-n", world.ns, "-o", "json").stdout
        assert any(e["involvedObject"]["name"] == name for e in json.loads(events)["items"])
        logs = process.log_text()
    for word in ("403", "Forbidden", "forbidden"):
        assert word not in logs, logs[-4000:]
    world.cp.kubectl("patch", "hr", name, "-n", world.ns, "--type=merge", "-p", '{"metadata":{"finalizers":null}}')
    world.cp.kubectl("delete", "hr", name, "-n", world.ns)
