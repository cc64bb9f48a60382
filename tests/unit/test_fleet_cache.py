"""The operator's cache of Nodes and AppRelease claims (controller/cache.py), and how a reconcile
pass uses it.

Covers: the cache as a store (a full list replaces what it had; a Node event reports whether
labels changed, so Kopf's first listing wakes nobody; AppRelease events keep the node index of
claims right across edits, relabels and deletions; an invalid or leaving AppRelease claims
nothing); a pass with a synced cache reads only the AppRelease and its HostReleases from the API
when it creates hosts or does nothing; a step that would update or delete a host is recomputed
on Nodes listed fresh (a Node missing from a stale cache never deletes its host nor widens the
maxUnavailable budget); a stale extra Node costs at most a HostRelease that the next pass
deletes once the cache learns; a conflict found in the cache holds the younger app; without a
synced cache a pass reads the API as before.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime

import pytest

from apprelease.controller.cache import FleetCache
from apprelease.controller.reconcile import SecretsConfig, reconcile_app_release
from apprelease.api.manifests import load_documents
from support.manifests import ROOT
from support.operator_api import InMemoryOperatorApi

pytestmark = pytest.mark.unit

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
EXAMPLE = load_documents((ROOT / "manifests" / "examples" / "webxample.yaml").read_text())[0]
HOST = {"apprelease.dev/host": "true"}


def app_object(name: str = "webxample", created: str = "2025-01-01T12:00:00Z", version: str = "1.0.0",
               **spec_changes) -> dict:
    spec = {**copy.deepcopy(EXAMPLE["spec"]), "version": version,
            "source": {**EXAMPLE["spec"]["source"], "requirements": [f"webxample=={version}"]}, **spec_changes}
    return {"apiVersion": "apprelease.dev/v1alpha1", "kind": "AppRelease",
            "metadata": {"name": name, "namespace": "ns", "uid": "u1", "generation": 1, "creationTimestamp": created},
            "spec": spec}


class CountingApi(InMemoryOperatorApi):
    """The in-memory API, recording reads and writes."""

    def __init__(self, app: dict, nodes: list[str]) -> None:
        super().__init__(app, nodes)
        self.calls: list[str] = []

    def note(self, entry: str, write: bool) -> None:
        self.calls.append(entry)

    def list_node_names(self, selector):
        self.calls.append("list nodes")
        return sorted(self.nodes)

    def node_labels(self):
        self.calls.append("list all nodes")
        return {n: dict(HOST) for n in self.nodes}

    def list_all_app_releases(self):
        self.calls.append("list all apps")
        return [copy.deepcopy(self.app)]

    # The agents' Role (controller/grants.py)
    role: list | None = None

    def read_role_rules(self, namespace, name):
        self.calls.append("get role")
        return copy.deepcopy(self.role)

    def apply_role(self, manifest, exists):
        self.calls.append("apply role")
        self.role = manifest["rules"]

    def ensure_role_binding(self, manifest):
        self.calls.append("bind role")

    def read_secret_data(self, namespace, name):
        self.calls.append(f"get secret {name}")
        return {"url": "postgres://x"}

    def all_ready(self) -> None:
        """What the agents report once each host serves its spec."""
        for host in self.hosts.values():
            host["status"] = {"phase": "Ready", "observedGeneration": host["metadata"]["generation"],
                              "servingRevision": host["spec"]["revision"]}

    def writes(self) -> list[str]:
        return [c for c in self.calls if c.split()[0] in ("create", "update", "delete")]


def synced(nodes: list[str], apps: list[dict]) -> FleetCache:
    cache = FleetCache()
    cache.replace({n: dict(HOST) for n in nodes}, apps)
    return cache


def run(api: CountingApi, cache: FleetCache | None) -> None:
    api.calls.clear()
    reconcile_app_release(api, "ns", "webxample", T0, lambda obj, e: None, cache=cache)


# -- the store -------------------------------------------------------------------------


def test_node_events_report_label_changes_only():
    cache = synced(["n1"], [])
    assert cache.node_event("ADDED", "n1", HOST) is False  # Kopf's first listing: nothing new
    assert cache.node_event("MODIFIED", "n1", {}) is True
    assert cache.select_nodes(HOST) == []
    assert cache.node_event("ADDED", "n2", HOST) is True and cache.select_nodes(HOST) == ["n2"]
    assert cache.node_event("DELETED", "n2", HOST) is True and cache.select_nodes(HOST) == []
    assert cache.node_event("DELETED", "n2", HOST) is False


def test_the_claims_index_follows_apps_and_nodes():
    cache = synced(["n1", "n2"], [app_object("a", hosts={"nodeSelector": {"pool": "x"}})])
    assert cache.neighbours(["n1", "n2"])[0] == []  # no Node carries pool=x yet
    cache.node_event("MODIFIED", "n1", {"pool": "x"})
    others, labels = cache.neighbours(["n1", "n2"])
    assert [o.name for o in others] == ["a"] and labels == {"n1": {"pool": "x"}, "n2": HOST}
    edited = app_object("a", hosts={"nodeSelector": HOST})
    cache.app_event("MODIFIED", edited)  # same generation: a status write, nothing re-read
    assert [o.name for o in cache.neighbours(["n1"])[0]] == ["a"]
    edited["metadata"]["generation"] = 2  # the apiserver bumps it on a spec change
    cache.app_event("MODIFIED", edited)
    assert [o.name for o in cache.neighbours(["n2"])[0]] == ["a"] and cache.neighbours(["n1"])[0] == []
    leaving = app_object("a")
    leaving["metadata"]["deletionTimestamp"] = "2025-01-01T13:00:00Z"
    cache.app_event("MODIFIED", leaving)
    assert cache.neighbours(["n1", "n2"])[0] == []  # leaving: claims nothing
    cache.app_event("ADDED", app_object("b"))
    cache.app_event("ADDED", app_object("c", source={"requirements": ["webxample==1.0.0; os_name"]}))
    assert [o.name for o in cache.neighbours(["n2"])[0]] == ["b"]  # an invalid spec claims nothing
    cache.app_event("DELETED", app_object("b"))
    assert cache.neighbours(["n1", "n2"])[0] == []


def test_a_full_list_replaces_what_the_cache_had():
    cache = synced(["n1", "n2"], [app_object("a")])
    cache.replace({"n2": HOST}, [])
    assert cache.select_nodes(HOST) == ["n2"] and cache.neighbours(["n2"])[0] == []


# -- passes with the cache ---------------------------------------------------------------


def test_a_pass_that_creates_or_does_nothing_reads_only_the_app_and_its_hosts():
    api = CountingApi(app_object(), ["n1", "n2"])
    cache = synced(["n1", "n2"], [api.app])
    run(api, cache)
    # The hosts after the writes are what the writes returned: no second list.
    assert api.calls == ["get app", "finalizer", "list hosts", "create webxample-n1", "create webxample-n2", "status"]
    api.all_ready()
    run(api, cache)
    assert api.calls == ["get app", "list hosts", "status"]
    run(api, cache)
    assert api.calls == ["get app", "list hosts"]  # steady: two reads, O(1) of the fleet


def test_the_agents_role_is_kept_from_the_cache():
    secrets = SecretsConfig(agent_service_account=("apprelease-system", "apprelease-agent"))
    api = CountingApi(app_object(), ["n1"])
    cache = synced(["n1"], [api.app])

    def grants_requests() -> list[str]:
        api.calls.clear()
        reconcile_app_release(api, "ns", "webxample", T0, lambda obj, e: None, secrets, cache)
        return [c for c in api.calls if "role" in c]

    assert grants_requests() == ["get role"]  # the namespace's Role, once
    assert grants_requests() == []  # then from the cache: no request per pass
    api.app = app_object(env=[{"name": "DB", "valueFrom": {"secretKeyRef": {"name": "db", "key": "url"}}}])
    api.app["metadata"]["generation"] = 2
    cache.app_event("MODIFIED", api.app)
    assert grants_requests() == ["apply role", "bind role"] and api.role[0]["resourceNames"] == ["db"]
    assert grants_requests() == []
    cache.replace({"n1": HOST}, [api.app])  # the periodic re-list: the Role is read again once
    assert grants_requests() == ["get role"]


def test_without_a_synced_cache_a_pass_reads_the_api():
    api = CountingApi(app_object(), ["n1"])
    run(api, FleetCache())
    assert api.calls[:5] == ["get app", "finalizer", "list nodes", "list hosts", "list all apps"]


def test_a_node_missing_from_a_stale_cache_neither_deletes_its_host_nor_widens_the_budget():
    api = CountingApi(app_object(), ["n1", "n2", "n3", "n4"])
    run(api, None)
    api.all_ready()
    api.app = app_object(version="2.0.0")
    stale = synced(["n1", "n2", "n3"], [api.app])  # n4's ADDED event not seen yet
    run(api, stale)
    assert "list nodes" in api.calls  # the move was decided on fresh Nodes
    assert api.writes() == ["update webxample-n1"]  # 25% of 4 hosts, and n4 keeps its host


def test_a_stale_extra_node_costs_a_host_that_goes_once_the_cache_learns():
    api = CountingApi(app_object(), ["n1"])
    cache = synced(["n1", "n9"], [api.app])  # n9 was deleted; its event is not seen yet
    run(api, cache)
    assert api.writes() == ["create webxample-n1", "create webxample-n9"]
    api.all_ready()
    cache.node_event("DELETED", "n9", HOST)
    run(api, cache)
    assert api.writes() == ["delete webxample-n9"] and "list nodes" in api.calls


def test_a_conflict_in_the_cache_holds_the_younger_app():
    api = CountingApi(app_object(), ["n1", "n2"])
    older = app_object(name="first", created="2025-01-01T11:00:00Z")
    cache = synced(["n1", "n2"], [api.app, older])
    run(api, cache)
    assert api.writes() == [] and api.app["status"]["conditions"]
    degraded = next(c for c in api.app["status"]["conditions"] if c["type"] == "Degraded")
    assert degraded["reason"] == "HostConflict" and "ns/first" in degraded["message"]
    cache.app_event("DELETED", older)
    run(api, cache)
    assert api.writes() == ["create webxample-n1", "create webxample-n2"]
