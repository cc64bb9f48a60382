"""The in-cluster agent's pure parts and its worker against a fake API (no apiserver, no host).

Covers: the work queue (a key queued once however often added, re-processed when added
while processing, delayed adds, shutdown wakes the worker); the status merge patch nulls
fields that are gone; a status differing only in updatedAt is not worth a write; the Ready
condition keeps its transition time while unchanged; a conflict is the Ready condition's
reason, is dropped by the next status, and marks the keys woken when the host's claims
change; orphan apps are those no HostRelease
names (the app label stands in for an unusable spec); finalizer lists; which status
changes emit an Event; the worker: an invalid HostRelease gets Failed with the validation
message (after the finalizer, without a crash), one whose spec.node is not this node is
refused, a deletion it has no finalizer on is left alone, and transient API errors are
retried with backoff.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from kubernetes.client.exceptions import ApiException

from apprelease.agent import cluster, sync
from apprelease.agent.kube import FINALIZER, Listed
from apprelease.agent.workqueue import WorkQueue
from apprelease.api.models import HostReleaseStatus

pytestmark = pytest.mark.unit

NODE = "node-a"


# -- work queue ------------------------------------------------------------------------


def test_queue_holds_a_key_once():
    queue = WorkQueue()
    for _ in range(3):
        queue.add("ns/a")
    queue.add("ns/b")
    assert [queue.get(0), queue.get(0), queue.get(0)] == ["ns/a", "ns/b", None]


def test_key_added_while_processing_comes_back_after_done():
    queue = WorkQueue()
    queue.add("ns/a")
    key = queue.get(0)
    queue.add("ns/a")
    assert queue.get(0) is None, "never handed out twice at the same time"
    queue.done(key)
    assert queue.get(0) == "ns/a"


def test_add_after_waits():
    now = [100.0]
    queue = WorkQueue(clock=lambda: now[0])
    queue.add_after("ns/a", 5)
    assert queue.get(0) is None
    now[0] += 5
    assert queue.get(0) == "ns/a"


def test_shut_down_wakes_a_waiting_worker():
    queue = WorkQueue()
    got: list[str | None] = []
    worker = threading.Thread(target=lambda: got.append(queue.get()))
    worker.start()
    time.sleep(0.05)
    queue.shut_down()
    worker.join(2)
    assert got == [None]


# -- decisions -------------------------------------------------------------------------


def status(**fields) -> HostReleaseStatus:
    return HostReleaseStatus(**{"phase": "Ready", "observed_generation": 1, "message": "serving", **fields})


def test_merge_patch_nulls_what_is_gone():
    old = {"phase": "Failed", "logTail": "boom", "lastBuild": {"buildId": "b1", "reused": False}}
    new = {"phase": "Ready", "lastBuild": {"buildId": "b1", "reused": True}}
    assert sync.merge_patch(old, new) == {"logTail": None, "phase": "Ready", "lastBuild": {"reused": True}}


def test_only_updated_at_changed_is_the_same_status():
    a = status(updated_at=datetime(2025, 1, 1, tzinfo=UTC))
    b = status(updated_at=datetime(2025, 1, 2, tzinfo=UTC))
    assert sync.same_status(a, b)
    assert not sync.same_status(a, status(message="other"))
    assert not sync.same_status(None, a)


def test_ready_condition_keeps_its_transition_time_while_unchanged():
    first = sync.with_ready_condition(status(), None)
    (cond,) = first.conditions
    assert (cond.type, cond.status, cond.reason) == ("Ready", "True", "Serving")
    later = sync.with_ready_condition(status(), first.model_copy(update={"conditions": [
        cond.model_copy(update={"last_transition_time": datetime(2020, 1, 1, tzinfo=UTC)})]}))
    assert later.conditions[0].last_transition_time == datetime(2020, 1, 1, tzinfo=UTC)
    failed = sync.with_ready_condition(status(phase="Failed"), later)
    assert failed.conditions[0].status == "False" and failed.conditions[0].last_transition_time.year > 2020


def test_conflict_shows_as_the_ready_conditions_reason_and_is_dropped_by_the_next_status():
    conflict = status(phase="Failed", reason="Conflict", message="Conflict: a/b already serves x on port 80")
    (cond,) = sync.with_ready_condition(conflict, None).conditions
    assert (cond.status, cond.reason, cond.message) == ("False", "Conflict", conflict.message)
    assert sync.pending_status(conflict, 2, "moving on").reason is None
    assert sync.failed_status(conflict, 2, "health check failed").reason is None


def test_conflicted_keys_are_the_ones_to_wake_when_the_host_changes():
    conflict = status(phase="Failed", reason="Conflict", message="Conflict: ...")
    statuses = [("ns/b", conflict), ("ns/a", status()), ("ns/c", None), ("ns/d", status(phase="Failed")),
                ("other/a", conflict)]
    assert sync.conflicted_keys(statuses) == ["ns/b", "other/a"]


def hr(name: str, namespace: str = "ns", app: str | None = "web", labels: dict | None = None, **meta) -> dict:
    spec = {"app": app} if app else {"bogus": 1}
    return {"metadata": {"name": name, "namespace": namespace, "labels": labels or {}, **meta}, "spec": spec}


def test_orphans_are_apps_no_host_release_names():
    objs = [hr("web-node-a"), hr("api-node-a", app=None, labels={"apprelease.dev/app": "api"})]
    assert sync.orphan_app_keys({"ns_web", "ns_api", "ns_old", "other_web"}, objs) == ["ns_old", "other_web"]


def test_finalizer_lists():
    obj = hr("a", finalizers=["x"])
    assert sync.finalizers_adding(obj, FINALIZER) == ["x", FINALIZER]
    assert sync.finalizers_removing(obj, FINALIZER) is None
    with_ours = hr("a", finalizers=["x", FINALIZER])
    assert sync.finalizers_adding(with_ours, FINALIZER) is None
    assert sync.finalizers_removing(with_ours, FINALIZER) == ["x"]


@pytest.mark.parametrize(("old", "new", "reason"), [
    (None, status(), "Reconciled"),
    (status(serving_revision="r1"), status(serving_revision="r2"), "Reconciled"),
    (status(serving_revision="r1"), status(serving_revision="r1"), None),
    (status(), status(phase="Failed", message="boom"), "Failed"),
    (status(phase="Failed", message="boom"), status(phase="Failed", message="boom"), None),
    (status(), status(phase="Failed", reason="Conflict", message="Conflict: a/b already serves x on port 80"),
     "Conflict"),
], ids=["first-ready", "new-revision", "resync", "fails", "still-failing", "conflict"])
def test_events_only_on_news(old, new, reason):
    event = sync.event_for(old, new)
    assert (event[1] if event else None) == reason


# -- the worker against a fake API -----------------------------------------------------


class FakeAPI:
    def __init__(self) -> None:
        self.objects: dict[str, dict] = {}
        self.calls: list[tuple[str, str, dict]] = []
        self.fail_next: list[Exception] = []

    def _maybe_fail(self) -> None:
        if self.fail_next:
            raise self.fail_next.pop(0)

    def list(self, selector: str) -> Listed:
        return Listed(items=list(self.objects.values()), resource_version="1")

    def patch_metadata(self, namespace: str, name: str, metadata: dict) -> dict:
        self._maybe_fail()
        self.calls.append(("metadata", name, metadata))
        obj = self.objects[f"{namespace}/{name}"]
        obj["metadata"]["finalizers"] = metadata["finalizers"]
        return obj

    def patch_status(self, namespace: str, name: str, patch: dict) -> dict:
        self._maybe_fail()
        self.calls.append(("status", name, patch))
        obj = self.objects[f"{namespace}/{name}"]
        obj["status"] = {**(obj.get("status") or {}), **{k: v for k, v in patch.items() if v is not None}}
        return obj

    def create_event(self, obj: dict, **event: str) -> None:
        self.calls.append(("event", obj["metadata"]["name"], event))


class NoHost:
    """Reaching the host in these tests is a bug: every attribute access fails."""

    layout = type("L", (), {"apps": Path("/nonexistent"), "nginx_sites": Path("/nonexistent")})()

    def __getattr__(self, name: str):
        raise AssertionError(f"host.{name} used")


def agent_with(*objs: dict) -> tuple[cluster.ClusterAgent, FakeAPI]:
    api = FakeAPI()
    for obj in objs:
        api.objects[f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"] = obj
    agent = cluster.ClusterAgent(NoHost(), cluster.Settings(node=NODE, backoff_initial=0.01), lambda: api)  # type: ignore[arg-type]
    agent.cache.replace(list(api.objects.values()))
    agent.health.synced.set()
    return agent, api


def full_hr(name: str = "web-node-a", **spec_changes) -> dict:
    spec = {"version": "1", "source": {"requirements": ["web==1"]}, "entrypoint": "web:app", "user": "web",
            "proxy": {"serverNames": ["web.local"]}, "app": "web", "node": NODE, "buildId": "b1", "revision": "r1",
            **spec_changes}
    return {"apiVersion": "apprelease.dev/v1alpha1", "kind": "HostRelease",
            "metadata": {"name": name, "namespace": "ns", "generation": 3, "resourceVersion": "7",
                         "labels": {"apprelease.dev/node": NODE, "apprelease.dev/app": "web"}},
            "spec": spec}


def test_invalid_host_release_is_failed_with_the_validation_message():
    agent, api = agent_with(full_hr(user="root"))
    agent.sync("ns/web-node-a")
    kinds = [c[0] for c in api.calls]
    assert kinds[0] == "metadata" and FINALIZER in api.calls[0][2]["finalizers"]
    (patch,) = [c[2] for c in api.calls if c[0] == "status"]
    assert patch["phase"] == "Failed" and patch["observedGeneration"] == 3
    assert "spec.user" in patch["message"] and "root" in patch["message"]
    assert ("event", "web-node-a") in [(c[0], c[1]) for c in api.calls]
    # a resync finds nothing new to say
    api.calls.clear()
    agent.sync("ns/web-node-a")
    assert api.calls == []


def test_spec_for_another_node_is_refused():
    agent, api = agent_with(full_hr(node="node-b"))
    agent.sync("ns/web-node-a")
    (patch,) = [c[2] for c in api.calls if c[0] == "status"]
    assert patch["phase"] == "Failed" and "node-b" in patch["message"]


def test_deletion_without_our_finalizer_is_left_alone():
    obj = full_hr()
    obj["metadata"]["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    agent, api = agent_with(obj)
    agent.sync("ns/web-node-a")  # NoHost: core.remove would fail the test
    assert api.calls == []


def test_transient_errors_are_retried_with_backoff():
    agent, api = agent_with(full_hr(user="root"))
    api.fail_next = [ApiException(status=409, reason="Conflict")]
    agent._process("ns/web-node-a")
    assert api.calls == [] and len(agent.queue) == 1
    assert agent.queue.get(1) == "ns/web-node-a"  # after the backoff delay
