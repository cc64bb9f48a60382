"""The operator's view of host conflicts: `controller.conflicts.cluster_conflicts`. Pure.

Covers: equality node selectors (every label, an empty selector selects all); a matrix of
two AppReleases — same claims on a shared Node (held, naming the older one and the Nodes),
disjoint Nodes (no conflict), different names or ports, a wildcard, TLS mode on one port,
the younger never holds the older, a creationTimestamp tie broken by namespace/name, the
AppRelease itself ignored; the message.
"""

from __future__ import annotations

import pytest

from apprelease.api.claims import Claims
from apprelease.controller.conflicts import ClusterConflict, Contender, cluster_conflicts, describe, selects

pytestmark = pytest.mark.unit

NODES = {
    "a": {"apprelease.dev/host": "true", "zone": "x"},
    "b": {"apprelease.dev/host": "true", "zone": "y"},
    "c": {"zone": "y"},
}
HOSTS = {"apprelease.dev/host": "true"}


def app(name: str, created: str = "2025-01-01T10:00:00Z", *, namespace: str = "ns", selector=None, port: int = 80,
        names: tuple[str, ...] = ("shop.example.com",), tls: bool = False) -> Contender:
    return Contender(namespace=namespace, name=name, created=created,
                     node_selector=HOSTS if selector is None else selector,
                     claims=Claims(port=port, names=frozenset(names), tls=tls))


@pytest.mark.parametrize(("selector", "labels", "expected"), [
    ({}, {}, True),
    (HOSTS, NODES["a"], True),
    (HOSTS, NODES["c"], False),
    ({**HOSTS, "zone": "y"}, NODES["a"], False),
    ({**HOSTS, "zone": "y"}, NODES["b"], True),
], ids=["empty-selects-all", "label-present", "label-absent", "one-label-differs", "all-labels-match"])
def test_selects(selector, labels, expected):
    assert selects(selector, labels) is expected


NEW = "2025-01-01T11:00:00Z"
CASES = [
    # (id, me, others, expected)
    ("alone", app("me", NEW), [], []),
    ("same-claims-shared-nodes", app("me", NEW), [app("first")],
     [ClusterConflict("ns/first", "shop.example.com on port 80", ("a", "b"))]),
    ("other-namespace-too", app("me", NEW), [app("first", namespace="other")],
     [ClusterConflict("other/first", "shop.example.com on port 80", ("a", "b"))]),
    ("one-shared-node", app("me", NEW, selector={"zone": "y"}), [app("first")],
     [ClusterConflict("ns/first", "shop.example.com on port 80", ("b",))]),
    ("disjoint-nodes", app("me", NEW, selector={"zone": "x"}), [app("first", selector={"zone": "y"})], []),
    ("selector-matching-no-node", app("me", NEW, selector={"zone": "z"}), [app("first")], []),
    ("different-names", app("me", NEW, names=("blog.example.com",)), [app("first")], []),
    ("different-ports", app("me", NEW, port=8080), [app("first")], []),
    ("older-wildcard", app("me", NEW), [app("first", names=("*.example.com",))],
     [ClusterConflict("ns/first", "shop.example.com (as *.example.com) on port 80", ("a", "b"))]),
    ("tls-mode-on-one-port", app("me", NEW, port=443, names=("a.example.com",)),
     [app("first", port=443, tls=True)],
     [ClusterConflict("ns/first", "port 443 with TLS (nginx sets TLS per port, not per server name)", ("a", "b"))]),
    ("younger-never-holds-the-older", app("me"), [app("second", NEW)], []),
    ("same-second-older-name-wins", app("zeta"), [app("alpha")],
     [ClusterConflict("ns/alpha", "shop.example.com on port 80", ("a", "b"))]),
    ("same-second-younger-name-loses", app("alpha"), [app("zeta")], []),
    ("itself-ignored", app("me", NEW), [app("me", NEW)], []),
    ("two-older-in-age-order", app("me", NEW),
     [app("b-second", "2025-01-01T10:30:00Z"), app("z-first", "2025-01-01T09:00:00Z")],
     [ClusterConflict("ns/z-first", "shop.example.com on port 80", ("a", "b")),
      ClusterConflict("ns/b-second", "shop.example.com on port 80", ("a", "b"))]),
]


@pytest.mark.parametrize(("me", "others", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_cluster_conflicts(me, others, expected):
    assert cluster_conflicts(me, others, NODES) == expected


def test_message_names_the_older_app_and_the_nodes():
    many = {f"n{i}": HOSTS for i in range(8)}
    found = cluster_conflicts(app("me", NEW), [app("first", namespace="shop")], many)
    assert describe(found) == (
        "Conflict: AppRelease shop/first (older) claims shop.example.com on port 80 on node(s) n0, n1, n2, n3, n4 "
        "and 3 more: no host of this AppRelease is created or updated until one of them changes")
