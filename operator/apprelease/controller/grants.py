"""Which Secrets and ConfigMaps the agents may read in one namespace: the Role the operator keeps. Pure.

Called by `controller.reconcile` after each pass over an AppRelease of the namespace. Agents
never hold cluster-wide Secret read: the Role `apprelease-agent-reads` in each namespace grants
`get` on exactly the Secrets and ConfigMaps that the namespace's AppReleases reference (env,
envFrom, proxy.tls, source.indexCredentials), by `resourceNames`, bound to the agent
ServiceAccount. It follows the references and is removed when none are left.

A Role rule with an empty `resourceNames` grants *every* object of the resource, so a kind
with no references gets no rule at all, and no references at all means no Role: `role_manifest`
returns None then, never a Role with an empty list.

Why the operator holds `get` on Secrets (cluster-wide) rather than `escalate`/`bind`: it must
read the referenced values anyway, to report SecretNotFound naming the missing key and to put
the keyed digest of the values into the revision (rotation); holding `get` is then exactly
what RBAC's escalation check asks of whoever grants `get`, whereas `escalate` + `bind` would
let the operator grant any right in the cluster, a strictly larger power.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..api.envrefs import CONFIG_MAP, SECRET, ObjectRef

ROLE_NAME = "apprelease-agent-reads"
MANAGED_BY = {"app.kubernetes.io/managed-by": "apprelease-operator"}
_RESOURCES = {SECRET: "secrets", CONFIG_MAP: "configmaps"}


def role_rules(refs: Iterable[ObjectRef]) -> list[dict[str, Any]]:
    """One `get` rule per kind that has references, with exactly their names (sorted)."""
    by_kind: dict[str, set[str]] = {}
    for ref in refs:
        by_kind.setdefault(ref.kind, set()).add(ref.name)
    return [
        {"apiGroups": [""], "resources": [_RESOURCES[kind]], "resourceNames": sorted(names), "verbs": ["get"]}
        for kind, names in sorted(by_kind.items(), key=lambda kv: _RESOURCES[kv[0]])
        if names
    ]


def role_manifest(namespace: str, refs: Iterable[ObjectRef]) -> dict[str, Any] | None:
    rules = role_rules(refs)
    if not rules:
        return None
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": ROLE_NAME, "namespace": namespace, "labels": dict(MANAGED_BY)},
        "rules": rules,
    }


def role_binding_manifest(namespace: str, agent_namespace: str, agent_service_account: str) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": ROLE_NAME, "namespace": namespace, "labels": dict(MANAGED_BY)},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": ROLE_NAME},
        "subjects": [{"kind": "ServiceAccount", "name": agent_service_account, "namespace": agent_namespace}],
    }
