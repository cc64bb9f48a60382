"""An in-memory stand-in for `controller.kube.KubeApi`: just enough for `reconcile_app_release`.

Used by the unit tests of the operator's pass (tests/unit/test_rollout_status.py,
tests/unit/test_fleet_cache.py): the AppRelease, Nodes and HostReleases live in dicts, and
every call is reported to `note(entry, write)`, which each test's subclass records as it needs.
"""

from __future__ import annotations

import copy
from typing import Any


class InMemoryOperatorApi:
    def __init__(self, app: dict, nodes: list[str]) -> None:
        self.app, self.nodes = app, nodes
        self.hosts: dict[str, dict[str, Any]] = {}

    def note(self, entry: str, write: bool) -> None:
        """Called for every request; a subclass records what its tests assert on."""

    def get_app_release(self, namespace, name):
        self.note("get app", False)
        return copy.deepcopy(self.app)

    def existing_nodes(self, names):
        return frozenset(n for n in names if n in self.nodes)

    def list_host_releases(self, namespace, app):
        self.note("list hosts", False)
        return [copy.deepcopy(h) for h in self.hosts.values()]

    def create_host_release(self, manifest):
        name = manifest["metadata"]["name"]
        self.note(f"create {name}", True)
        self.hosts[name] = {**manifest, "metadata": {**manifest["metadata"], "generation": 1}}
        return copy.deepcopy(self.hosts[name])

    def replace_host_release_spec(self, namespace, name, spec):
        self.note(f"update {name}", True)
        self.hosts[name]["spec"] = spec
        self.hosts[name]["metadata"]["generation"] += 1
        return copy.deepcopy(self.hosts[name])

    def delete_host_release(self, namespace, name):
        self.note(f"delete {name}", True)
        del self.hosts[name]

    def set_finalizers(self, plural, namespace, name, seen, wanted, resource_version):
        self.note("finalizer", True)
        self.app["metadata"]["finalizers"] = list(wanted)

    def patch_app_release_status(self, namespace, name, patch):
        self.note("status", True)
        merged = {**(self.app.get("status") or {}), **patch["status"]}
        self.app["status"] = {k: v for k, v in merged.items() if v is not None}
