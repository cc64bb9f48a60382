"""Conflicts the operator can see before any host is touched. Pure.

Called by `controller.reconcile` when a pass is about to create or update HostReleases
(never on an idle resync: the check lists every AppRelease and Node, which a fleet of
hundreds of apps must not pay at every pass). Unit-tested in tests/unit/test_cluster_conflicts.py.

Two AppReleases conflict when some Node is selected by both and their proxy claims conflict
(api/claims.py: the same (port, server name), wildcards included, or the port's TLS mode).
The older one wins, as the first to serve wins on a host: by creationTimestamp, then
namespace/name, so every operator replica and every pass picks the same winner. The younger
one is held: no HostRelease of it is created or updated until one of the two changes
(`Degraded/HostConflict` naming the older one). The agents check again on each host, from
what is live there; this check only spares the hosts a rollout that could never succeed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..api.claims import Claims, conflicts


@dataclass(frozen=True)
class Contender:
    """One AppRelease as the check sees it."""

    namespace: str
    name: str
    created: str  # metadata.creationTimestamp, RFC 3339 in UTC: compares as it sorts
    node_selector: Mapping[str, str]
    claims: Claims

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def seniority(self) -> tuple[str, str, str]:
        return (self.created, self.namespace, self.name)


@dataclass(frozen=True, order=True)
class ClusterConflict:
    other: str  # namespace/name of the older AppRelease
    what: str  # 'webxample.local on port 8080'
    nodes: tuple[str, ...]

    def __str__(self) -> str:
        shown = ", ".join(self.nodes[:5]) + (f" and {len(self.nodes) - 5} more" if len(self.nodes) > 5 else "")
        return f"AppRelease {self.other} (older) claims {self.what} on node(s) {shown}"


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """A Node matches an equality selector when it carries every label with that value."""
    return all(labels.get(key) == value for key, value in selector.items())


def selected_nodes(selector: Mapping[str, str], nodes: Mapping[str, Mapping[str, str]]) -> frozenset[str]:
    return frozenset(name for name, labels in nodes.items() if selects(selector, labels))


def cluster_conflicts(
    me: Contender, others: Sequence[Contender], nodes: Mapping[str, Mapping[str, str]]
) -> list[ClusterConflict]:
    """The older AppReleases that claim what `me` claims on a Node both select (nodes: name -> labels)."""
    mine = selected_nodes(me.node_selector, nodes)
    found = []
    for other in sorted(others, key=lambda o: o.seniority):
        if other.key == me.key or other.seniority >= me.seniority:
            continue  # a younger one never holds back an older one
        shared = mine & selected_nodes(other.node_selector, nodes)
        if not shared:
            continue
        for conflict in conflicts(me.claims, {other.key: other.claims}):
            found.append(ClusterConflict(other.key, conflict.what, tuple(sorted(shared))))
    return found


def describe(found: Sequence[ClusterConflict]) -> str:
    """The Degraded/HostConflict message."""
    return ("Conflict: " + "; ".join(map(str, found))
            + ": no host of this AppRelease is created or updated until one of them changes")
