"""The operator (`apprelease operator`, a real subprocess) against a real kube-apiserver, no agents.

The test plays every agent: it patches HostRelease status (observedGeneration, phase,
servingRevision, message) and, where an agent would, adds and removes the agent's
finalizer. Each test has its own namespace, its own Nodes (selected by a label unique to
the test) and its own operator scoped to that namespace.

Covers: fan-out to one HostRelease per selected Node (owner reference, labels, spec);
agents reporting Ready give READY 2/2, Available=True, observedGeneration and the printer
columns; a rolling update with maxUnavailable 1 moves one host at a time, the next only
after the first reports Ready; a host failing on the new spec halts the rollout and
Degraded names it; reverting the spec moves the failed host back; a spec the CRD accepts
but pydantic refuses gives Degraded/InvalidSpec and no HostReleases, then recovers; a Node
relabelled off the selector loses its HostRelease and a new Node gets one; deleting the
AppRelease deletes its HostReleases, waits for the agents' finalizers, then goes; a
HostRelease whose Node was deleted gets the agent finalizer removed by the operator; a
`kill -9` of the operator mid-rollout and a restart completes the rollout; events are
visible with `kubectl get events`.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from apprelease.api import models
from apprelease.api.resolve import host_release_name
from support.cluster import wait_for
from support.manifests import EXAMPLE
from support.operator import OperatorProcess

pytestmark = pytest.mark.e2e

AGENT_FINALIZER = "apprelease.dev/agent-cleanup"
APP = "webxample"
TIMEOUT = 30.0


class Env:
    """One test's namespace, Nodes and operator, with the agent's side played by the test."""

    def __init__(self, cluster, namespace: str, log_dir: Path) -> None:
        self.cluster = cluster
        self.ns = namespace
        self.selector = {"e2e.apprelease.dev/run": namespace}
        self.operator = OperatorProcess(cluster, log_dir / "operator.log", namespaces=[namespace])
        self.nodes: list[str] = []

    # ----- kubectl helpers

    def kubectl(self, *args: str, **kw: Any):
        return self.cluster.kubectl(*args, **kw)

    def get(self, kind: str, name: str, namespaced: bool = True) -> dict | None:
        ns = ["-n", self.ns] if namespaced else []
        out = self.kubectl("get", kind, name, *ns, "-o", "json", "--ignore-not-found").stdout
        return json.loads(out) if out.strip() else None

    def app(self) -> dict:
        obj = self.get("apprelease", APP)
        assert obj is not None
        return obj

    def host_releases(self) -> dict[str, dict]:
        out = self.kubectl("get", "hostreleases", "-n", self.ns, "-o", "json").stdout
        return {o["spec"]["node"]: o for o in json.loads(out)["items"]}

    # ----- nodes

    def node_name(self, suffix: str) -> str:
        return f"{self.ns}-{suffix}"

    def add_node(self, suffix: str, selected: bool = True) -> str:
        name = self.node_name(suffix)
        labels = dict(self.selector) if selected else {}
        doc = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}}
        self.kubectl("create", "-f", "-", input=yaml.safe_dump(doc))
        self.nodes.append(name)
        return name

    def unlabel_node(self, name: str) -> None:
        key = next(iter(self.selector))
        self.kubectl("label", "node", name, f"{key}-")

    # ----- the AppRelease

    def manifest(self, version: str = "1.0.0", max_unavailable: int | str = 1, requirement: str | None = None,
                 **spec: Any) -> str:
        doc = copy.deepcopy(EXAMPLE)
        doc["metadata"] = {"name": APP, "namespace": self.ns}
        doc["spec"].update(
            version=version,
            source={"requirements": [requirement or f"webxample=={version}"],
                    "indexUrl": "http://127.0.0.1:8765/simple/"},
            hosts={"nodeSelector": self.selector},
            strategy={"maxUnavailable": max_unavailable, "progressDeadlineSeconds": 600},
            **spec,
        )
        return yaml.safe_dump(doc)

    def apply(self, version: str = "1.0.0", **kw: Any) -> None:
        self.kubectl("apply", "-f", "-", input=self.manifest(version, **kw))

    def status(self) -> dict:
        return self.app().get("status") or {}

    def condition(self, type_: str) -> dict:
        return next((c for c in self.status().get("conditions", []) if c["type"] == type_), {})

    def wait_status(self, predicate, what: str, timeout: float = TIMEOUT) -> dict:
        last: dict = {}

        def check() -> bool:
            last.clear()
            last.update(self.status())
            return bool(predicate(last))

        wait_for(check, timeout, lambda: f"{what}; last status: {json.dumps(last, indent=1)}\n"
                                         f"operator log:\n{self.operator.logs()[-3000:]}")
        return last

    def wait_settled(self) -> dict:
        """The operator observed the current generation (it has acted on the latest spec)."""
        generation = self.app()["metadata"]["generation"]
        return self.wait_status(lambda s: s.get("observedGeneration") == generation,
                                f"observedGeneration never reached {generation}")

    # ----- playing the agent

    def report(self, node: str, phase: str, serving: str | None = None, message: str | None = None) -> None:
        """Write the status the node's agent would: about the HostRelease's current generation."""
        hr = self.host_releases()[node]
        status = {
            "observedGeneration": hr["metadata"]["generation"],
            "phase": phase,
            "servingRevision": serving if serving is not None else (
                hr["spec"]["revision"] if phase == "Ready" else (hr.get("status") or {}).get("servingRevision")),
            "message": message,
        }
        self.kubectl("patch", "hostrelease", hr["metadata"]["name"], "-n", self.ns, "--subresource=status",
                     "--type=merge", "-p", json.dumps({"status": status}))

    def hold_finalizer(self, node: str) -> None:
        name = self.host_releases()[node]["metadata"]["name"]
        self.kubectl("patch", "hostrelease", name, "-n", self.ns, "--type=merge",
                     "-p", json.dumps({"metadata": {"finalizers": [AGENT_FINALIZER]}}))

    def release_finalizer(self, name: str) -> None:
        self.kubectl("patch", "hostrelease", name, "-n", self.ns, "--type=json",
                     "-p", json.dumps([{"op": "remove", "path": "/metadata/finalizers"}]))

    def wait_hosts(self, predicate, what: str, timeout: float = TIMEOUT) -> dict[str, dict]:
        seen: dict[str, dict] = {}

        def check() -> bool:
            seen.clear()
            seen.update(self.host_releases())
            return bool(predicate(seen))

        wait_for(check, timeout, lambda: f"{what}; HostReleases: "
                                         f"{ {n: (h['spec']['version'], h.get('status')) for n, h in seen.items()} }\n"
                                         f"operator log:\n{self.operator.logs()[-3000:]}")
        return seen

    def deploy_ready(self, version: str = "1.0.0", nodes: int = 2, **kw: Any) -> tuple[str, ...]:
        """Nodes a, b..., the AppRelease at `version`, every host reported Ready: the starting point."""
        names = tuple(self.add_node(s) for s in "ab"[:nodes])
        self.apply(version, **kw)
        self.wait_hosts(lambda h: set(h) == set(names), f"HostReleases for {names}")
        for n in names:
            self.report(n, "Ready")
        self.wait_status(lambda s: s.get("ready") == f"{nodes}/{nodes}", f"READY {nodes}/{nodes}")
        return names

    def events(self) -> list[dict]:
        out = self.kubectl("get", "events", "-n", self.ns, "-o", "json").stdout
        return [e for e in json.loads(out)["items"] if e["involvedObject"].get("kind") == "AppRelease"]

    def cleanup(self) -> None:
        self.operator.stop()
        for node in self.nodes:
            self.kubectl("delete", "node", node, "--ignore-not-found", "--wait=false")
        # Leftover HostReleases would keep the namespace terminating: drop the test's finalizers.
        for hr in self.host_releases().values():
            if hr["metadata"].get("finalizers"):
                self.release_finalizer(hr["metadata"]["name"])
        self.kubectl("delete", "namespace", self.ns, "--wait=false")


@pytest.fixture
def env(cluster, tmp_path) -> Iterator[Env]:
    namespace = f"op-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", namespace)
    e = Env(cluster, namespace, tmp_path)
    e.operator.start()
    try:
        yield e
    finally:
        e.cleanup()


def spec_versions(hosts: dict[str, dict]) -> dict[str, str]:
    return {node: hr["spec"]["version"] for node, hr in sorted(hosts.items())}


# ----- tests


def test_fan_out_ready_status_printer_columns_and_events(env):
    a, b = env.add_node("a"), env.add_node("b")
    env.add_node("c", selected=False)
    env.apply("1.0.0")
    hosts = env.wait_hosts(lambda h: set(h) == {a, b}, "one HostRelease per selected Node")
    owner = env.app()
    for node, hr in hosts.items():
        meta = hr["metadata"]
        assert meta["name"] == host_release_name(APP, node)
        assert meta["labels"] == {models.NODE_LABEL: node, models.APP_LABEL: APP}
        assert meta["ownerReferences"] == [{
            "apiVersion": models.API_VERSION, "kind": "AppRelease", "name": APP, "uid": owner["metadata"]["uid"],
            "controller": True, "blockOwnerDeletion": True,
        }]
        assert models.HostRelease.model_validate(hr).spec.node == node
    status = env.wait_status(lambda s: s.get("desiredHosts") == 2, "desiredHosts 2")
    assert status["ready"] == "0/2"

    env.report(a, "Ready")
    env.report(b, "Ready")
    status = env.wait_status(lambda s: s.get("ready") == "2/2", "READY 2/2")
    assert status["observedGeneration"] == env.app()["metadata"]["generation"]
    assert env.condition("Available")["status"] == "True"
    assert env.condition("Progressing")["reason"] == "RolloutComplete"
    assert env.condition("Degraded")["status"] == "False"
    revision = hosts[a]["spec"]["revision"]
    assert status["currentRevision"] == revision
    assert [h["revision"] for h in status["history"]] == [revision]
    assert [(h["node"], h["phase"], h["revision"]) for h in status["hosts"]] == [(a, "Ready", revision),
                                                                                (b, "Ready", revision)]

    table = env.kubectl("get", "ar", "-n", env.ns).stdout.splitlines()
    assert table[1].split()[:4] == ["webxample", "1.0.0", "2/2", "2"]

    def reasons() -> list[str]:
        return [e["reason"] for e in env.events()]

    wait_for(lambda: {"RolloutStarted", "HostUpdated", "RolloutComplete"} <= set(reasons()), TIMEOUT,
             lambda: f"events: {reasons()}")
    assert "RolloutComplete" in env.kubectl("get", "events", "-n", env.ns).stdout


def test_rolling_update_moves_one_host_at_a_time(env):
    a, b = env.deploy_ready("1.0.0")
    env.apply("2.0.0", max_unavailable=1)
    env.wait_hosts(lambda h: spec_versions(h) == {a: "2.0.0", b: "1.0.0"}, "the first host gets v2")
    status = env.wait_settled()
    # The operator has acted on the new generation and still holds b back: a has not settled.
    assert spec_versions(env.host_releases()) == {a: "2.0.0", b: "1.0.0"}
    assert (status["updatedHosts"], status["readyHosts"]) == (1, 0)  # ready counts the desired revision only
    assert env.condition("Progressing")["reason"] == "RolloutInProgress"

    env.report(a, "Building", serving=env.host_releases()[a]["status"]["servingRevision"])
    env.wait_status(lambda s: any(h["node"] == a and h["phase"] == "Building" for h in s.get("hosts", [])),
                    "host a reported Building")
    assert spec_versions(env.host_releases())[b] == "1.0.0"

    env.report(a, "Ready")
    env.wait_hosts(lambda h: spec_versions(h) == {a: "2.0.0", b: "2.0.0"}, "b gets v2 once a is Ready")
    env.report(b, "Ready")
    status = env.wait_status(lambda s: s.get("ready") == "2/2" and s.get("updatedHosts") == 2, "v2 on 2/2")
    assert status["previousRevision"] != status["currentRevision"]
    assert len(status["history"]) == 2
    assert env.condition("Progressing")["reason"] == "RolloutComplete"


def test_failure_halts_rollout_and_revert_recovers(env):
    a, b = env.deploy_ready("1.0.0")
    env.apply("2.0.0")
    env.wait_hosts(lambda h: spec_versions(h) == {a: "2.0.0", b: "1.0.0"}, "a gets v2")
    env.report(a, "Failed", message="health check: GET /healthz answered 500")
    status = env.wait_status(lambda s: s.get("failedHosts") == 1, "failedHosts 1")
    degraded = env.condition("Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "HostFailed")
    v2_revision = env.host_releases()[a]["spec"]["revision"]
    assert a in degraded["message"] and v2_revision in degraded["message"] and "500" in degraded["message"]
    # halted: b keeps v1 (the status above was computed after the operator saw the failure)
    assert status["observedGeneration"] == env.app()["metadata"]["generation"]
    assert spec_versions(env.host_releases()) == {a: "2.0.0", b: "1.0.0"}
    assert env.condition("Available")["status"] == "True"  # a still serves v1

    env.apply("1.0.0")
    env.wait_hosts(lambda h: spec_versions(h) == {a: "1.0.0", b: "1.0.0"}, "the revert moves a back to v1")
    env.report(a, "Ready")
    env.wait_status(lambda s: s.get("ready") == "2/2" and s.get("failedHosts") == 0, "v1 on 2/2 again")
    assert env.condition("Degraded")["status"] == "False"
    assert "HostFailed" in [e["reason"] for e in env.events()]


def test_invalid_spec_is_reported_not_retried(env):
    a = env.add_node("a")
    # The CRD's pattern accepts this marker-only requirement; packaging (pydantic) refuses it.
    env.apply("1.0.0", requirement="webxample==1.0.0; os_name")
    env.wait_status(lambda s: any(c["reason"] == "InvalidSpec" for c in s.get("conditions", [])),
                    "Degraded/InvalidSpec")
    degraded = env.condition("Degraded")
    assert degraded["status"] == "True" and "spec.source.requirements[0]" in degraded["message"]
    assert env.host_releases() == {}
    wait_for(lambda: "InvalidSpec" in [e["reason"] for e in env.events()], TIMEOUT, "no InvalidSpec event")

    env.apply("1.0.0")
    env.wait_hosts(lambda h: set(h) == {a}, "the fixed spec is rolled out")
    env.wait_status(lambda s: not any(c["reason"] == "InvalidSpec" for c in s.get("conditions", [])),
                    "InvalidSpec cleared")


def test_node_relabelled_off_selector_and_node_added(env):
    a, b = env.deploy_ready("1.0.0")
    env.hold_finalizer(b)
    env.unlabel_node(b)
    hosts = env.wait_hosts(lambda h: h.get(b, {}).get("metadata", {}).get("deletionTimestamp"),
                           "b's HostRelease is being deleted")
    env.release_finalizer(hosts[b]["metadata"]["name"])  # b's agent cleaned up
    env.wait_hosts(lambda h: set(h) == {a}, "b's HostRelease is gone")
    env.wait_status(lambda s: s.get("ready") == "1/1", "READY 1/1")

    c = env.add_node("c")
    env.wait_hosts(lambda h: set(h) == {a, c}, "a new Node gets a HostRelease")
    env.wait_status(lambda s: s.get("ready") == "1/2", "READY 1/2")
    env.report(c, "Ready")
    env.wait_status(lambda s: s.get("ready") == "2/2", "READY 2/2")


def test_delete_waits_for_agents_then_goes(env):
    a, b = env.deploy_ready("1.0.0")
    for node in (a, b):
        env.hold_finalizer(node)
    env.kubectl("delete", "apprelease", APP, "-n", env.ns, "--wait=false")
    hosts = env.wait_hosts(lambda h: all(hr["metadata"].get("deletionTimestamp") for hr in h.values()) and len(h) == 2,
                           "both HostReleases are being deleted")
    assert env.get("apprelease", APP) is not None  # held until the agents are done
    for hr in hosts.values():
        env.release_finalizer(hr["metadata"]["name"])
    env.wait_hosts(lambda h: not h, "HostReleases gone")
    wait_for(lambda: env.get("apprelease", APP) is None, TIMEOUT, "the AppRelease is not deleted")


def test_host_release_of_deleted_node_loses_agent_finalizer(env):
    a, b = env.deploy_ready("1.0.0")
    env.hold_finalizer(b)
    env.kubectl("delete", "node", b)
    env.wait_hosts(lambda h: set(h) == {a}, "the HostRelease of the deleted Node is gone")
    env.wait_status(lambda s: s.get("ready") == "1/1", "READY 1/1")


def test_kill_9_mid_rollout_then_restart_completes(env):
    a, b = env.deploy_ready("1.0.0")
    env.apply("2.0.0")
    env.wait_hosts(lambda h: spec_versions(h) == {a: "2.0.0", b: "1.0.0"}, "a gets v2")
    env.operator.kill()
    env.report(a, "Ready")  # reported while no operator runs
    env.operator.start()
    env.wait_hosts(lambda h: spec_versions(h) == {a: "2.0.0", b: "2.0.0"}, "the restarted operator moves b")
    env.report(b, "Ready")
    env.wait_status(lambda s: s.get("ready") == "2/2" and s.get("updatedHosts") == 2, "v2 on 2/2")
    assert env.condition("Progressing")["reason"] == "RolloutComplete"
