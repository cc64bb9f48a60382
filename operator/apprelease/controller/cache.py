"""The operator's shared read cache of Nodes and AppReleases (informer-style), and what it may decide.

Who uses it: `controller.handlers` fills it (a full list at start-up, before Kopf starts watching,
then Kopf's watch events on Nodes and AppReleases, and a full re-list every RELIST_SECONDS);
`controller.reconcile` reads it. No I/O here: the lists come from `controller.kube`.

Why: measured with bench/fleet.py, a reconcile pass that creates or moves hosts read *every*
AppRelease and *every* Node to check host claims (and validated every AppRelease's spec), so a
cold start of M apps cost O(M²) objects read and validated: 200.7 s for 500 apps on 100 Nodes.
The cache keeps each AppRelease's claims as a `Contender`, computed once per watch event.

What it may decide, and what it may not (the correctness argument; the README says it too):
- The cache answers the *advisory* questions only: which Nodes an app selects when the pass
  creates HostReleases or does nothing, and which older AppReleases' claims collide with this
  one's. A stale answer costs one extra pass, never an outage:
  - a Node missing from the cache (not seen yet) means a HostRelease created one pass later;
  - a Node the cache still has (deleted or relabelled, event not seen yet) means at worst a
    HostRelease created for it, which the next fresh pass deletes; it serves nothing, so it
    costs no availability;
  - a conflict the cache misses is still refused on the host: each agent grants a (port,
    server name) pair, static location or TLS name to the first app that claims it there, and
    reports `Conflict` on the second; the operator holds the rollout on its next pass.
- The decisions that can take availability away — updating a host (the `maxUnavailable`
  budget) and deleting a host (deselected Node) — are never made on cached Nodes:
  `reconcile` re-lists the app's Nodes from the apiserver and recomputes the step whenever the
  cached step would update or delete. HostReleases are always read fresh (one list per pass,
  by the app's label: O(hosts of the app)), and only one loop per AppRelease decides, so
  the budget is computed from what the API holds, exactly as without a cache.
- After a restart (kill -9 included) the cache is rebuilt from a fresh list before the first
  reconcile pass runs (Kopf runs start-up handlers before it watches, and the per-app loops
  start from the watch), and the rollout state itself lives only in the API, so a restarted
  operator computes the same steps as before the cache existed.
- Under watch lag or a lost watch (Kopf re-lists on reconnect but synthesizes no DELETED
  events), the periodic re-list bounds how long a deleted object lingers (RELIST_SECONDS), and
  every decision above stays safe in between.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import ValidationError

from ..api.claims import Claims
from ..api.envrefs import ObjectRef, referenced_objects
from ..api.models import AppRelease
from .conflicts import Contender, selects

RELIST_SECONDS = 300.0

Key = tuple[str, str]


def contender_of(obj: Mapping[str, Any]) -> Contender | None:
    """An AppRelease's claims on hosts; None when it claims nothing (invalid spec, or leaving)."""
    return _read(obj)[0]


def _read(obj: Mapping[str, Any]) -> tuple[Contender | None, frozenset[ObjectRef]]:
    """An AppRelease's claims on hosts and the Secrets/ConfigMaps its agents read; neither when
    it is leaving (what it still serves, the agents see; they clean up without reading values)
    or invalid (never rolled out)."""
    meta = obj.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return None, frozenset()
    try:
        app = AppRelease.model_validate(obj)
    except ValidationError:
        return None, frozenset()
    contender = Contender(namespace=meta["namespace"], name=meta["name"], created=meta.get("creationTimestamp") or "",
                          node_selector=app.spec.hosts.node_selector, claims=Claims.of(app.spec.proxy))
    return contender, referenced_objects(app.spec)


def _signature(obj: Mapping[str, Any]) -> tuple[Any, bool]:
    meta = obj.get("metadata") or {}
    return meta.get("generation"), bool(meta.get("deletionTimestamp"))


class FleetCache:
    """Node labels by name and AppRelease claims by (namespace, name). Thread-safe: Kopf's event
    loop writes, the reconcile worker threads read."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._nodes: dict[str, dict[str, str]] = {}
        self._apps: dict[Key, Contender | None] = {}
        # Node -> the AppReleases (with claims) selecting it: a conflict check reads the few
        # apps sharing a Node with this one, not all M (an O(M x N) label scan per pass).
        self._on_node: dict[str, set[Key]] = {}
        self._refs: dict[Key, frozenset[ObjectRef]] = {}  # what each AppRelease's agents read
        # (generation, leaving) of what was read: most events of an AppRelease are its status
        # writes, which change neither claims nor references (no validation, no re-index).
        self._seen: dict[Key, tuple[Any, bool]] = {}
        # The agents' Role per namespace as last read or written (None: none); forgotten at
        # each full list, so a Role edited behind the operator's back is mended within
        # RELIST_SECONDS. `roles_lock` serializes the Role writes of concurrent passes.
        self.roles: dict[str, list[dict[str, Any]] | None] = {}
        self.roles_lock = threading.Lock()
        self.synced = False  # a full list of both has been loaded

    def _index_app(self, key: Key, contender: Contender | None) -> None:
        old = self._apps.get(key)
        if old is not None:
            for node, labels in self._nodes.items():
                if selects(old.node_selector, labels):
                    self._on_node.get(node, set()).discard(key)
        if contender is not None:
            for node, labels in self._nodes.items():
                if selects(contender.node_selector, labels):
                    self._on_node.setdefault(node, set()).add(key)

    def _index_node(self, node: str) -> None:
        labels = self._nodes.get(node)
        if labels is None:
            self._on_node.pop(node, None)
            return
        self._on_node[node] = {key for key, c in self._apps.items() if c is not None and selects(c.node_selector, labels)}

    # -- writers ----------------------------------------------------------------------

    def replace(self, nodes: Mapping[str, Mapping[str, str]], app_releases: Iterable[Mapping[str, Any]]) -> None:
        """Load a full list (start-up and every re-list): what is not in it is gone."""
        read = {(o["metadata"]["namespace"], o["metadata"]["name"]): _read(o) for o in app_releases}
        with self._lock:
            self._nodes = {name: dict(labels) for name, labels in nodes.items()}
            self._apps = {key: contender for key, (contender, _) in read.items()}
            self._refs = {key: refs for key, (_, refs) in read.items() if refs}
            self._seen = {(o["metadata"]["namespace"], o["metadata"]["name"]): _signature(o) for o in app_releases}
            self._on_node = {}
            for node in self._nodes:
                self._index_node(node)
            self.synced = True
        with self.roles_lock:
            self.roles.clear()

    def node_event(self, event_type: str | None, name: str, labels: Mapping[str, str]) -> bool:
        """Apply a watch event; True when the Node's labels changed (came, went or were edited)."""
        with self._lock:
            if event_type == "DELETED":
                changed = self._nodes.pop(name, None) is not None
            elif self._nodes.get(name) == dict(labels):
                return False
            else:
                self._nodes[name] = dict(labels)
                changed = True
            self._index_node(name)
            return changed

    def app_event(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        meta = body.get("metadata") or {}
        key = (meta.get("namespace", ""), meta.get("name", ""))
        if event_type != "DELETED":
            with self._lock:
                if self._seen.get(key) == _signature(body):
                    return
        contender, refs = (None, frozenset()) if event_type == "DELETED" else _read(body)
        with self._lock:
            if event_type == "DELETED":
                self._seen.pop(key, None)
            else:
                self._seen[key] = _signature(body)
            self._index_app(key, contender)
            if event_type == "DELETED":
                self._apps.pop(key, None)
            else:
                self._apps[key] = contender
            if refs:
                self._refs[key] = refs
            else:
                self._refs.pop(key, None)

    # -- readers ----------------------------------------------------------------------

    def references(self, namespace: str) -> set[ObjectRef]:
        """What the agents of the namespace's AppReleases (not leaving, valid) read."""
        with self._lock:
            return set().union(*(refs for (ns, _), refs in self._refs.items() if ns == namespace))

    def node_labels(self) -> dict[str, dict[str, str]]:
        with self._lock:
            return dict(self._nodes)

    def select_nodes(self, selector: Mapping[str, str]) -> list[str]:
        with self._lock:
            return sorted(name for name, labels in self._nodes.items() if selects(selector, labels))

    def neighbours(self, nodes: Iterable[str]) -> tuple[list[Contender], dict[str, dict[str, str]]]:
        """The AppReleases with claims that select any of `nodes`, and those Nodes' labels: all a
        conflict check of an app on `nodes` needs (conflicts only exist on Nodes both select)."""
        nodes = list(nodes)
        with self._lock:
            keys = set().union(*(self._on_node.get(n, set()) for n in nodes)) if nodes else set()
            labels = {n: dict(self._nodes[n]) for n in nodes if n in self._nodes}
            return [c for k in sorted(keys) if (c := self._apps.get(k)) is not None], labels
