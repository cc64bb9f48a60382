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
Live phases: a progress status keeps what is known of the serving revision and clears an old
log tail; the Ready condition is Unknown while a phase is in progress; phases are written
for a new spec or after a failure, not for drift repair of a Ready host; the throttle
(`PhaseThrottle`) writes at most once per interval, drops a phase whose step ended before
its window opened, and writes one whose step still runs when it opens; the `PhaseWriter`
thread does that in real time and `close()` waits for a write in flight; the worker writes
Pending, the phases that lasted, then Ready, in that order.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from apprelease.agent import cluster, phases, sync
from apprelease.agent.kube import FINALIZER, ApiError, Listed
from apprelease.api.models import HostReleaseStatus
from apprelease.host import core, plan

pytestmark = pytest.mark.unit

NODE = "node-a"


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
    (status(serving_revision="r1", oom_kills=0), status(serving_revision="r1", oom_kills=1), "OOMKilled"),
    (status(serving_revision="r1", oom_kills=1), status(serving_revision="r1", oom_kills=1), None),
    (status(serving_revision="r1", oom_kills=3), status(serving_revision="r2", oom_kills=None), "Reconciled"),
], ids=["first-ready", "new-revision", "resync", "fails", "still-failing", "conflict", "oom-kill", "oom-already-told",
        "new-revision-counts-afresh"])
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
    api.fail_next = [ApiError(409, "Conflict")]
    agent._process("ns/web-node-a")
    assert api.calls == [] and len(agent.queue) == 1
    assert agent.queue.get(1) == "ns/web-node-a"  # after the backoff delay


# -- live phases -----------------------------------------------------------------------


def test_progress_status_keeps_the_serving_revision():
    before = status(phase="Failed", serving_revision="r1", serving_version="1.0.0", log_tail="boom")
    now = sync.progress_status(before, 4, "HealthChecking", "checking /healthz")
    assert (now.phase, now.observed_generation, now.message) == ("HealthChecking", 4, "checking /healthz")
    assert (now.serving_revision, now.serving_version, now.log_tail) == ("r1", "1.0.0", None)
    assert sync.pending_status(before, 4, "moving").phase == "Pending"


@pytest.mark.parametrize("phase", ["Pending", "Building", "Starting", "HealthChecking", "Switching", "Draining"])
def test_ready_condition_is_unknown_while_in_progress(phase):
    (cond,) = sync.with_ready_condition(status(phase=phase, message="working"), None).conditions
    assert cond.status == "Unknown" and cond.message == "working"
    assert cond.reason == ("Reconciling" if phase == "Pending" else phase)


@pytest.mark.parametrize(("stored", "generation", "shows"), [
    (None, 1, True),
    (status(phase="Ready", observed_generation=1), 2, True),
    (status(phase="Pending", observed_generation=2), 2, True),
    (status(phase="Failed", observed_generation=2), 2, True),
    (status(phase="Ready", observed_generation=2), 2, False),
], ids=["first", "new-spec", "new-spec-pending", "after-failure", "drift-repair-of-ready"])
def test_which_reconciles_show_phases(stored, generation, shows):
    assert sync.shows_phases(stored, generation) is shows


def test_throttle_writes_at_most_once_per_interval():
    t = phases.PhaseThrottle(interval=0.5, min_age=0.1, last_write=10.0)  # Pending written at 10.0
    t.report("Building", "resolving", 10.01)
    assert t.due() == 10.5 and t.take(10.2) is None
    assert t.take(10.5) == ("Building", "resolving")
    t.report("Building", "installing 2 packages", 10.7)
    assert t.take(10.9) is None and t.take(11.0) == ("Building", "installing 2 packages")
    assert t.due() is None and t.take(99.0) is None


def test_throttle_drops_a_phase_whose_step_ended_before_its_window():
    t = phases.PhaseThrottle(interval=0.5, min_age=0.1, last_write=10.0)
    t.report("Starting", "starting r2", 10.1)  # takes 20 ms ...
    t.report("HealthChecking", "checking /healthz", 10.12)  # ... and is superseded before 10.5
    assert t.take(10.5) == ("HealthChecking", "checking /healthz")
    t.report("Switching", "switching", 11.5)
    t.finish()  # the reconcile ended: the final status follows, not Switching
    assert t.take(12.0) is None


def test_throttle_a_phase_churning_messages_is_still_written():
    t = phases.PhaseThrottle(interval=0.5, min_age=0.1, last_write=10.0)
    for i in range(10):  # a build whose stage changes every 50 ms
        t.report("Building", f"stage {i}", 10.0 + i * 0.05)
    assert t.take(10.5) == ("Building", "stage 9")


def test_throttle_waits_for_min_age_even_when_the_window_is_open():
    t = phases.PhaseThrottle(interval=0.5, min_age=0.1)  # nothing written yet by this agent
    t.report("Starting", "starting r2", 5.0)
    assert t.due() == 5.1 and t.take(5.05) is None
    t.report("HealthChecking", "checking", 5.02)  # Starting lasted 20 ms: never written
    assert t.take(5.1) is None and t.take(5.12) == ("HealthChecking", "checking")
    t.report("HealthChecking", "checking", 6.0)  # said already: nothing to write
    assert t.due() is None


def test_writer_thread_writes_the_phase_still_running_and_close_drops_the_rest():
    written: list[tuple[str, str, float]] = []
    start = time.monotonic()
    writer = phases.PhaseWriter(lambda p, m: written.append((p, m, time.monotonic() - start)), interval=0.2,
                                min_age=0.05, last_write=start)
    writer.report("Starting", "s")
    writer.report("HealthChecking", "h")  # Starting ended before the window opened
    time.sleep(0.6)
    writer.report("Switching", "w")  # the window is open: written after min_age, from the thread
    time.sleep(0.3)
    writer.report("Draining", "d")  # within the interval of Switching's write
    writer.close()
    assert [(p, m) for p, m, _ in written] == [("HealthChecking", "h"), ("Switching", "w")]
    assert written[0][2] >= 0.2 and written[1][2] - written[0][2] >= 0.2


def test_writer_close_waits_for_a_write_in_flight():
    done = threading.Event()

    def slow_write(phase: str, message: str) -> None:
        time.sleep(0.3)
        done.set()

    writer = phases.PhaseWriter(slow_write, interval=0.5, min_age=0.0)
    writer.report("Building", "resolving")
    time.sleep(0.1)  # the write has begun
    writer.close()
    assert done.is_set(), "close() returned before the write in flight finished"
    writer.report("Starting", "late")  # after close: ignored, no thread, no raise


def test_worker_writes_pending_the_phases_that_lasted_then_ready(monkeypatch):
    def fake_reconcile(host, release, tls, progress, values=None):
        progress("Building", "resolving")
        time.sleep(0.5)
        progress("Starting", "starting r1")  # milliseconds: superseded before its window
        progress("HealthChecking", "checking /healthz")
        time.sleep(0.5)
        progress("Switching", "switching")  # superseded by the end of the reconcile
        return core.Result(status=HostReleaseStatus(observed_generation=3, phase="Ready", serving_revision="r1",
                                                    message="serving 1 (r1)"), plan=plan.Plan())

    monkeypatch.setattr(cluster.core, "reconcile", fake_reconcile)
    agent, api = agent_with(full_hr())
    agent.settings.phase_interval = 0.1
    agent.sync("ns/web-node-a")
    written = [c[2]["phase"] for c in api.calls if c[0] == "status" and "phase" in c[2]]
    assert written == ["Pending", "Building", "HealthChecking", "Ready"]
    (ready,) = [c for c in api.objects["ns/web-node-a"]["status"]["conditions"] if c["type"] == "Ready"]
    assert ready["status"] == "True"
