"""The operator's pure status computation: `controller.status`.

Covers: host counts and the READY string; Available (all serving, a host not serving yet,
no hosts selected); Progressing (in progress, complete, paused, ProgressDeadlineExceeded
once no host settled for progressDeadlineSeconds, back to in progress on progress);
Degraded naming the failed host, its revision and the agent's message; a condition keeps
its lastTransitionTime while its status does not change; currentRevision/previousRevision;
history appended when a rollout completes, not duplicated, a revert keeps firstDeployed,
trimmed to revisionHistoryLimit+1; InvalidSpec status and its event posted once; the
rollout events (RolloutStarted, HostUpdated, HostFailed, RolloutComplete) each once;
the time left until the progress deadline; host conflicts (Degraded/HostConflict named before
a health failure, the operator's hold, their events once, the halted reason). One reconcile pass against an in-memory API:
creates, then writes nothing when nothing changed; an invalid spec is reported once and
touches no host; the younger of two AppReleases claiming the same name on shared Nodes creates
nothing until the older one goes, and an older one is never held by a younger one. The API
edge: owner lookup, status merge patch, stored-spec normalization. A host in any live phase
(Building .. Draining) gives the same conditions and counts as one Pending, so Argo CD's
health check (which reads only those) maps it the same: Progressing. Hosts of the rollout's
buildId that report different lock digests are named in one LockDiffers warning, once; a
host's digest of an older build is not shown.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta

import pytest

from apprelease.api.models import IN_PROGRESS_PHASES, AppReleaseStatus, RetainedRelease
from apprelease.controller.plan import HostView, Step
from apprelease.controller.handlers import owner_of
from apprelease.controller.kube import host_view, status_patch
from apprelease.controller.reconcile import reconcile_app_release
from apprelease.controller.status import (
    Rollout,
    compute_status,
    condition,
    deadline_in,
    differing_locks,
    halted_reason,
    invalid_spec_events,
    invalid_spec_status,
    rollout_events,
    set_condition,
)

from support.manifests import EXAMPLE
from support.operator_api import InMemoryOperatorApi

pytestmark = pytest.mark.unit

T0 = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)


def spec(rev: str) -> dict:
    return {"revision": rev, "version": f"v-{rev}"}


def host(node: str, rev: str, phase: str | None = "Ready", *, observed: bool = True, serving: str | None = "same",
         message: str | None = None, deleting: bool = False, reason: str | None = None) -> HostView:
    return HostView(
        name=f"app-{node}", node=node, spec=spec(rev), generation=2, observed_generation=2 if observed else 1,
        phase=phase, serving_revision=rev if serving == "same" else serving, message=message, deleting=deleting,
        reason=reason,
    )


def rollout(rev: str, hosts: list[HostView], nodes: tuple[str, ...] = ("a", "b"), **kw) -> Rollout:
    return Rollout(generation=kw.pop("generation", 4), version=f"v-{rev}", revision=rev, build_id=f"b-{rev}",
                   desired={n: spec(rev) for n in nodes}, hosts=hosts, **kw)


def reasons(status: AppReleaseStatus) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status, c.reason) for c in status.conditions}


def test_counts_and_ready_string():
    r = rollout("r2", [host("a", "r2"), host("b", "r2", "Building", serving="r1"), host("c", "r1")],
                nodes=("a", "b", "c"))
    s = compute_status(r, None, T0)
    assert (s.desired_hosts, s.updated_hosts, s.ready_hosts, s.failed_hosts, s.ready) == (3, 2, 1, 0, "1/3")
    assert s.observed_generation == 4
    assert [(h.node, h.phase, h.revision) for h in s.hosts] == [
        ("a", "Ready", "r2"), ("b", "Building", "r1"), ("c", "Ready", "r1")]


CONDITION_CASES = [
    ("all-ready", rollout("r1", [host("a", "r1"), host("b", "r1")]), {
        "Available": ("True", "MinimumHostsAvailable"), "Progressing": ("True", "RolloutComplete"),
        "Degraded": ("False", "NoHostFailed")}),
    ("rolling-old-revision-still-serves", rollout("r2", [host("a", "r2", "Building", serving="r1"), host("b", "r1")]), {
        "Available": ("True", "MinimumHostsAvailable"), "Progressing": ("True", "RolloutInProgress"),
        "Degraded": ("False", "NoHostFailed")}),
    ("new-host-not-serving-yet", rollout("r1", [host("a", "r1"), host("b", "r1", None, observed=False, serving=None)]), {
        "Available": ("False", "HostsUnavailable"), "Progressing": ("True", "RolloutInProgress"),
        "Degraded": ("False", "NoHostFailed")}),
    ("host-not-created-yet", rollout("r1", [host("a", "r1")]), {
        "Available": ("False", "HostsUnavailable"), "Progressing": ("True", "RolloutInProgress"),
        "Degraded": ("False", "NoHostFailed")}),
    ("failed-host", rollout("r2", [host("a", "r2", "Failed", serving="r1", message="boom"), host("b", "r1")]), {
        "Available": ("True", "MinimumHostsAvailable"), "Progressing": ("True", "RolloutInProgress"),
        "Degraded": ("True", "HostFailed")}),
    ("host-conflict", rollout("r1", [host("a", "r1", "Failed", serving=None, reason="Conflict",
                                          message="Conflict: x/y already serves n on port 80"), host("b", "r1")]), {
        "Available": ("False", "HostsUnavailable"), "Progressing": ("True", "RolloutInProgress"),
        "Degraded": ("True", "HostConflict")}),
    ("conflict-named-before-a-health-failure", rollout("r2", [
        host("a", "r2", "Failed", serving="r1", message="boom"),
        host("b", "r2", "Failed", serving="r1", reason="Conflict", message="Conflict: ...")]), {
        "Available": ("True", "MinimumHostsAvailable"), "Progressing": ("True", "RolloutInProgress"),
        "Degraded": ("True", "HostConflict")}),
    ("held-by-the-operator", rollout("r1", [], conflict="Conflict: AppRelease x/y (older) claims ..."), {
        "Available": ("False", "HostsUnavailable"), "Progressing": ("True", "RolloutInProgress"),
        "Degraded": ("True", "HostConflict")}),
    ("paused", rollout("r2", [host("a", "r1"), host("b", "r1")], paused=True), {
        "Available": ("True", "MinimumHostsAvailable"), "Progressing": ("Unknown", "RolloutPaused"),
        "Degraded": ("False", "NoHostFailed")}),
    ("paused-but-complete", rollout("r1", [host("a", "r1"), host("b", "r1")], paused=True), {
        "Available": ("True", "MinimumHostsAvailable"), "Progressing": ("True", "RolloutComplete"),
        "Degraded": ("False", "NoHostFailed")}),
    ("no-hosts-selected", rollout("r1", [], nodes=()), {
        "Available": ("False", "NoHostsSelected"), "Progressing": ("True", "RolloutComplete"),
        "Degraded": ("False", "NoHostFailed")}),
]


@pytest.mark.parametrize(("r", "expected"), [c[1:] for c in CONDITION_CASES], ids=[c[0] for c in CONDITION_CASES])
def test_conditions(r, expected):
    assert reasons(compute_status(r, None, T0)) == expected


def test_degraded_names_host_revision_and_agent_message():
    r = rollout("r2", [host("a", "r2", "Failed", serving="r1", message="health check got 500"), host("b", "r1")])
    degraded = condition(compute_status(r, None, T0), "Degraded")
    assert degraded.message == "host a failed on revision r2 (version v-r2): health check got 500"


def test_condition_keeps_transition_time_while_status_unchanged():
    first = compute_status(rollout("r2", [host("a", "r2", "Building", serving="r1"), host("b", "r1")]), None, T0)
    later = T0 + timedelta(seconds=30)
    second = compute_status(rollout("r2", [host("a", "r2"), host("b", "r2", "Building", serving="r1")]), first, later)
    assert condition(second, "Progressing").last_transition_time == T0  # still True, message changed
    assert condition(second, "Progressing").message != condition(first, "Progressing").message
    done = T0 + timedelta(seconds=60)
    third = compute_status(rollout("r2", [host("a", "r2"), host("b", "r2")]), second, done)
    assert condition(third, "Progressing").last_transition_time == T0  # True -> True (reason changed only)
    failed = compute_status(rollout("r3", [host("a", "r3", "Failed", serving="r2"), host("b", "r2")]), third, done)
    assert condition(failed, "Degraded").last_transition_time == done  # False -> True


def test_set_condition_adds_and_replaces_in_place():
    conds = set_condition([], "A", "True", "R", "m", T0, 1)
    conds = set_condition(conds, "B", "False", "R", "m", T0, 1)
    conds = set_condition(conds, "A", "False", "R2", "m2", T0 + timedelta(seconds=5), 2)
    assert [(c.type, c.status, c.last_transition_time, c.observed_generation) for c in conds] == [
        ("A", "False", T0 + timedelta(seconds=5), 2), ("B", "False", T0, 1)]


def test_progress_deadline_exceeded_when_no_host_settles():
    r = rollout("r2", [host("a", "r2", "Building", serving="r1"), host("b", "r1")], progress_deadline_seconds=60)
    start = compute_status(r, None, T0)
    assert start.last_progress_time == T0
    assert deadline_in(r, start, T0 + timedelta(seconds=20)) == 40
    almost = compute_status(r, start, T0 + timedelta(seconds=59))
    assert reasons(almost)["Progressing"] == ("True", "RolloutInProgress")
    assert almost.last_progress_time == T0  # nothing moved
    stuck = compute_status(r, almost, T0 + timedelta(seconds=60))
    assert reasons(stuck)["Progressing"] == ("False", "ProgressDeadlineExceeded")
    assert deadline_in(r, stuck, T0 + timedelta(seconds=60)) is None
    events = rollout_events(almost, stuck, r, Step(), r.hosts, 1)
    assert [e.reason for e in events] == ["ProgressDeadlineExceeded"]
    # the host settles: progress again, the deadline counts anew
    moved = rollout("r2", [host("a", "r2"), host("b", "r1")], progress_deadline_seconds=60)
    later = T0 + timedelta(seconds=90)
    again = compute_status(moved, stuck, later)
    assert reasons(again)["Progressing"] == ("True", "RolloutInProgress")
    assert again.last_progress_time == later
    assert condition(again, "Progressing").last_transition_time == later


def test_no_deadline_when_complete_or_paused():
    done = rollout("r1", [host("a", "r1"), host("b", "r1")])
    assert deadline_in(done, compute_status(done, None, T0), T0) is None
    paused = rollout("r2", [host("a", "r1"), host("b", "r1")], paused=True)
    assert deadline_in(paused, compute_status(paused, None, T0), T0) is None


def test_current_previous_revision_and_history_on_completion():
    s1 = compute_status(rollout("r1", [host("a", "r1"), host("b", "r1")]), None, T0)
    assert (s1.current_revision, s1.previous_revision) == ("r1", None)
    assert [(h.revision, h.version, h.build_id, h.first_deployed) for h in s1.history] == [("r1", "v-r1", "b-r1", T0)]

    t1 = T0 + timedelta(minutes=5)
    mid = compute_status(rollout("r2", [host("a", "r2"), host("b", "r1")]), s1, t1)
    assert (mid.current_revision, mid.previous_revision, len(mid.history)) == ("r1", None, 1)

    t2 = T0 + timedelta(minutes=6)
    s2 = compute_status(rollout("r2", [host("a", "r2"), host("b", "r2")]), mid, t2)
    assert (s2.current_revision, s2.previous_revision) == ("r2", "r1")
    assert [h.revision for h in s2.history] == ["r1", "r2"]
    assert compute_status(rollout("r2", [host("a", "r2"), host("b", "r2")]), s2, t2 + timedelta(1)).history == s2.history

    # reverting to r1 moves it last and keeps when it was first deployed
    s3 = compute_status(rollout("r1", [host("a", "r1"), host("b", "r1")]), s2, T0 + timedelta(minutes=9))
    assert (s3.current_revision, s3.previous_revision) == ("r1", "r2")
    assert [(h.revision, h.first_deployed) for h in s3.history] == [("r2", t2), ("r1", T0)]


def test_history_is_trimmed_to_limit_plus_one():
    old = [RetainedRelease(version=f"v{i}", revision=f"r{i}", build_id=f"b{i}", first_deployed=T0) for i in range(5)]
    prev = AppReleaseStatus(history=old, current_revision="r4")
    s = compute_status(rollout("r9", [host("a", "r9"), host("b", "r9")], revision_history_limit=2), prev, T0)
    assert [h.revision for h in s.history] == ["r3", "r4", "r9"]


def test_same_inputs_same_status():
    """What makes "don't write status when nothing changed" work: a second pass is identical."""
    r = rollout("r2", [host("a", "r2"), host("b", "r1", "Failed", message="x")])
    first = compute_status(r, None, T0)
    assert compute_status(r, first, T0 + timedelta(seconds=10)).wire() == first.wire()


def test_invalid_spec_status_and_event_once():
    good = compute_status(rollout("r1", [host("a", "r1"), host("b", "r1")]), None, T0)
    bad = invalid_spec_status(good, 5, "spec is invalid: spec.source.requirements[0]: not PEP 508", T0)
    assert bad.observed_generation == 5
    assert reasons(bad)["Degraded"] == ("True", "InvalidSpec")
    assert bad.ready == good.ready  # hosts untouched, counts kept
    assert [e.reason for e in invalid_spec_events(good, bad)] == ["InvalidSpec"]
    assert invalid_spec_events(bad, invalid_spec_status(bad, 5, condition(bad, "Degraded").message, T0)) == []


def test_events_of_a_rollout():
    nodes = ("a", "b")
    v1 = [host("a", "r1"), host("b", "r1")]
    s1 = compute_status(rollout("r1", v1), None, T0)

    # v2: the operator updates a (first batch)
    before = v1
    after = [host("a", "r2", "Ready", observed=False, serving="r1"), host("b", "r1")]
    r = rollout("r2", after)
    s2 = compute_status(r, s1, T0)
    events = rollout_events(s1, s2, r, Step(updates=("a",)), before, 1)
    assert [(e.type, e.reason) for e in events] == [("Normal", "RolloutStarted")]
    assert "revision r2 (version v-r2) to 2 host(s)" in events[0].message and "first: a" in events[0].message

    # a reports Ready on r2 -> HostUpdated; b is updated next: no second RolloutStarted
    r = rollout("r2", [host("a", "r2"), host("b", "r2", "Pending", observed=False, serving="r1")])
    s3 = compute_status(r, s2, T0)
    events = rollout_events(s2, s3, r, Step(updates=("b",)), [host("a", "r2"), host("b", "r1")], 1)
    assert [(e.reason, e.message) for e in events] == [("HostUpdated", "a serves revision r2 (version v-r2)")]

    # b fails -> HostFailed (warning) once
    r = rollout("r2", [host("a", "r2"), host("b", "r2", "Failed", serving="r1", message="boom")])
    s4 = compute_status(r, s3, T0)
    events = rollout_events(s3, s4, r, Step(), r.hosts, 1)
    assert [(e.type, e.reason) for e in events] == [("Warning", "HostFailed")]
    assert "host b failed on revision r2" in events[0].message and "boom" in events[0].message
    assert rollout_events(s4, compute_status(r, s4, T0), r, Step(), r.hosts, 1) == []

    # b fixed (say, by the agent's retry) -> HostUpdated + RolloutComplete, once
    r = rollout("r2", [host("a", "r2"), host("b", "r2")])
    s5 = compute_status(r, s4, T0)
    events = rollout_events(s4, s5, r, Step(), r.hosts, 1)
    assert [e.reason for e in events] == ["HostUpdated", "RolloutComplete"]
    assert rollout_events(s5, compute_status(r, s5, T0), r, Step(), r.hosts, 1) == []
    assert nodes == tuple(h.node for h in s5.hosts)


def test_hosts_ready_together_make_one_event():
    r = rollout("r1", [host("a", "r1"), host("b", "r1"), host("c", "r1", "Pending", observed=False, serving=None)])
    s = compute_status(r, None, T0)
    events = rollout_events(None, s, r, Step(), r.hosts, 1)
    assert [(e.reason, e.message) for e in events if e.reason == "HostUpdated"] == [
        ("HostUpdated", "a, b serve revision r1 (version v-r1)")]


def test_conflict_events_once():
    r = rollout("r1", [host("a", "r1", "Failed", serving=None, reason="Conflict", message="Conflict: x/y ..."),
                       host("b", "r1")])
    s = compute_status(r, None, T0)
    events = rollout_events(None, s, r, Step(), r.hosts, 1)
    assert [(e.type, e.reason) for e in events] == [("Warning", "HostConflict"), ("Normal", "HostUpdated")]
    assert events[0].message == "host a failed on revision r1 (version v-r1): Conflict: x/y ..."
    assert rollout_events(s, compute_status(r, s, T0), r, Step(), r.hosts, 1) == []

    held = rollout("r1", [], conflict="Conflict: AppRelease x/y (older) claims n on port 80 on node(s) a")
    s = compute_status(held, None, T0)
    events = rollout_events(None, s, held, Step(), [], 1)
    assert [(e.type, e.reason, e.message) for e in events] == [("Warning", "HostConflict", held.conflict)]
    assert rollout_events(s, compute_status(held, s, T0), held, Step(), [], 1) == []
    assert halted_reason(None, s) == "HostConflict" and halted_reason(s, s) is None


def test_first_deploy_events():
    r = rollout("r1", [HostView(name="app-a", node="a", spec=spec("r1")), HostView(name="app-b", node="b",
                                                                                   spec=spec("r1"))])
    s = compute_status(r, None, T0)
    events = rollout_events(None, s, r, Step(creates=("a", "b")), [], 1)
    assert [e.reason for e in events] == ["RolloutStarted"]
    assert "first: a, b" in events[0].message


# ----- one reconcile pass against an in-memory API (the wiring between plan, status and writes)


class FakeApi(InMemoryOperatorApi):
    """The in-memory API, recording writes."""

    def __init__(self, app: dict, nodes: list[str], others: list[dict] | None = None) -> None:
        super().__init__(app, nodes)
        self.others = others or []  # other AppReleases of the cluster
        self.writes: list[str] = []

    def note(self, entry: str, write: bool) -> None:
        if write:
            self.writes.append(entry)

    def list_all_app_releases(self):
        return [copy.deepcopy(self.app), *copy.deepcopy(self.others)]

    def node_labels(self):
        return {n: {"apprelease.dev/host": "true"} for n in self.nodes}

    def list_node_names(self, selector):
        return list(self.nodes)


def _app_object(name: str = "webxample", created: str = "2025-01-01T12:00:00Z", **spec_changes) -> dict:
    spec = {**copy.deepcopy(EXAMPLE["spec"]), **spec_changes}
    return {"apiVersion": "apprelease.dev/v1alpha1", "kind": "AppRelease",
            "metadata": {"name": name, "namespace": "ns", "uid": "u1", "generation": 1, "creationTimestamp": created},
            "spec": spec}


def test_reconcile_creates_reports_and_writes_status_only_on_change():
    api = FakeApi(_app_object(), ["n1", "n2"])
    events = []
    reconcile_app_release(api, "ns", "webxample", T0, lambda obj, e: events.append(e.reason))
    # The finalizer first: a deletion from now on waits for the hosts' clean-up.
    assert api.writes == ["finalizer", "create webxample-n1", "create webxample-n2", "status"]
    assert api.app["status"]["ready"] == "0/2" and events == ["RolloutStarted"]
    api.writes.clear()
    reconcile_app_release(api, "ns", "webxample", T0 + timedelta(seconds=5), lambda obj, e: events.append(e.reason))
    assert api.writes == []  # nothing changed: nothing written, no event
    assert events == ["RolloutStarted"]


def test_reconcile_invalid_spec_reports_once_and_touches_no_host():
    app = _app_object(source={"requirements": ["webxample==1.0.0; os_name"]})
    api = FakeApi(app, ["n1"])
    events = []
    outcome = reconcile_app_release(api, "ns", "webxample", T0, lambda obj, e: events.append(e.reason))
    assert api.writes == ["finalizer", "status"] and events == ["InvalidSpec"] and outcome.requeue_after is None
    degraded = next(c for c in api.app["status"]["conditions"] if c["type"] == "Degraded")
    assert degraded["reason"] == "InvalidSpec" and "spec.source.requirements[0]" in degraded["message"]
    api.writes.clear()
    reconcile_app_release(api, "ns", "webxample", T0 + timedelta(seconds=30), lambda obj, e: events.append(e.reason))
    assert api.writes == [] and events == ["InvalidSpec"]  # no retry storm, no repeated event


def test_reconcile_holds_the_younger_of_two_conflicting_apps_until_the_older_goes():
    older = _app_object(name="first", created="2025-01-01T11:00:00Z")
    api = FakeApi(_app_object(), ["n1", "n2"], others=[older])
    events = []
    reconcile_app_release(api, "ns", "webxample", T0, lambda obj, e: events.append(e.reason))
    assert api.writes == ["finalizer", "status"] and events == ["HostConflict"]  # no HostRelease created
    degraded = next(c for c in api.app["status"]["conditions"] if c["type"] == "Degraded")
    assert degraded["reason"] == "HostConflict"
    assert degraded["message"].startswith(
        "Conflict: AppRelease ns/first (older) claims webxample.local on port 8080 on node(s) n1, n2")
    api.writes.clear()
    reconcile_app_release(api, "ns", "webxample", T0 + timedelta(seconds=30), lambda obj, e: events.append(e.reason))
    assert api.writes == [] and events == ["HostConflict"]  # still held: nothing new written or posted

    api.others = []  # the older one is deleted
    reconcile_app_release(api, "ns", "webxample", T0 + timedelta(seconds=60), lambda obj, e: events.append(e.reason))
    assert api.writes == ["create webxample-n1", "create webxample-n2", "status"]
    degraded = next(c for c in api.app["status"]["conditions"] if c["type"] == "Degraded")
    assert degraded["reason"] == "NoHostFailed"


def test_reconcile_ignores_a_younger_conflicting_app():
    younger = _app_object(name="second", created="2025-01-01T13:00:00Z")
    api = FakeApi(_app_object(), ["n1"], others=[younger])
    reconcile_app_release(api, "ns", "webxample", T0, lambda obj, e: None)
    assert api.writes == ["finalizer", "create webxample-n1", "status"]


@pytest.mark.parametrize(("body", "owner"), [
    ({"metadata": {"ownerReferences": [{"kind": "AppRelease", "name": "web", "controller": True}]}}, "web"),
    ({"metadata": {"labels": {"apprelease.dev/app": "web2"}}}, "web2"),
    ({"metadata": {}}, None),
], ids=["owner-reference", "app-label", "neither"])
def test_owner_of_host_release(body, owner):
    assert owner_of(body) == owner


def test_status_patch_nulls_removed_keys():
    assert status_patch({"ready": "1/1"}, {"ready": "0/1", "currentRevision": "r1"}) == {
        "status": {"currentRevision": None, "ready": "1/1"}}


def test_host_view_normalizes_stored_spec():
    from apprelease.api.models import AppRelease
    from apprelease.api.resolve import host_release

    hr = host_release(AppRelease.model_validate(_app_object()), "n1")
    stored = {"metadata": {"name": "webxample-n1", "generation": 2, "labels": hr.metadata.model_extra["labels"]},
              # defaults left out and keys in another order: still the same spec
              "spec": dict(reversed([(k, v) for k, v in hr.spec.wire().items()
                                     if k not in ("python", "revisionHistoryLimit")])),
              "status": {"observedGeneration": 2, "phase": "Ready", "servingRevision": hr.spec.revision}}
    view = host_view(stored)
    assert view.node == "n1" and view.updated(hr.spec.wire()) and view.ready(hr.spec.wire())
    assert host_view({**stored, "spec": {"bogus": 1}}).spec is None


@pytest.mark.parametrize("phase", IN_PROGRESS_PHASES)
def test_a_live_phase_counts_like_pending(phase):
    def status_with(host_phase: str) -> AppReleaseStatus:
        return compute_status(rollout("r2", [host("a", "r2", host_phase, serving="r1"), host("b", "r1")]), None, T0)

    live, pending = status_with(phase), status_with("Pending")
    assert reasons(live) == reasons(pending) == {
        "Available": ("True", "MinimumHostsAvailable"), "Progressing": ("True", "RolloutInProgress"),
        "Degraded": ("False", "NoHostFailed")}
    assert [c.message for c in live.conditions] == [c.message for c in pending.conditions]
    assert (live.ready, live.updated_hosts, live.ready_hosts) == (pending.ready, 1, 0)
    assert [(h.node, h.phase) for h in live.hosts] == [("a", phase), ("b", "Ready")]  # the phase is passed on


def test_hosts_show_the_process_types_their_agents_report():
    from apprelease.controller.kube import host_view, processes_summary

    assert processes_summary([{"name": "worker", "replicas": 2, "running": 1}, {"name": "beat", "replicas": 1,
                                                                                  "running": 1}]) == "worker 1/2, beat 1/1"
    assert processes_summary([]) is None
    view = host_view({"metadata": {"name": "app-a", "labels": {}}, "spec": {"node": "a"},
                      "status": {"processes": [{"name": "worker", "replicas": 2, "running": 2}]}})
    assert view.processes == "worker 2/2"
    a = HostView(name="app-a", node="a", spec=spec("r1"), generation=2, observed_generation=2, phase="Ready",
                 serving_revision="r1", processes="worker 2/2")
    s = compute_status(rollout("r1", [a, host("b", "r1")]), None, T0)
    assert [(h.node, h.processes) for h in s.hosts] == [("a", "worker 2/2"), ("b", None)]


def test_degraded_while_a_live_revision_fails_its_liveness_probe():
    """Liveness (agent/cluster.py's prober): the host stays Ready and serving, the app is Degraded."""
    import dataclasses

    failing = dataclasses.replace(host("b", "r1"), liveness_failure="/healthz: TimeoutError (workers restarted 1 time)")
    s = compute_status(rollout("r1", [host("a", "r1"), failing]), None, T0)
    assert reasons(s)["Degraded"] == ("True", "LivenessFailed")
    assert reasons(s)["Available"] == ("True", "MinimumHostsAvailable")
    assert condition(s, "Degraded").message == (
        "host b: live revision r1 fails its liveness probe: /healthz: TimeoutError (workers restarted 1 time)")
    # a failed rollout is named first
    s = compute_status(rollout("r2", [host("a", "r2", "Failed", serving="r1", message="boom"), failing]), None, T0)
    assert reasons(s)["Degraded"] == ("True", "HostFailed")


def test_host_view_reads_liveness_only_while_failing():
    def obj(liveness):
        return {"metadata": {"name": "app-a", "generation": 1}, "spec": {"node": "a"},
                "status": {"liveness": liveness} if liveness else {}}

    assert host_view(obj(None)).liveness_failure is None
    assert host_view(obj({"failing": False, "restarts": 2})).liveness_failure is None
    assert host_view(obj({"failing": True, "restarts": 1, "lastFailure": "x"})).liveness_failure == (
        "x (workers restarted 1 time)")


def test_liveness_failure_posts_one_warning_on_the_app_release():
    import dataclasses

    healthy = rollout("r1", [host("a", "r1"), host("b", "r1")])
    failing = rollout("r1", [host("a", "r1"), dataclasses.replace(host("b", "r1"), liveness_failure="timed out")])
    before = compute_status(healthy, None, T0)
    during = compute_status(failing, before, T0)
    events = rollout_events(before, during, failing, Step(), failing.hosts, 1)
    assert [(e.type, e.reason) for e in events] == [("Warning", "LivenessFailed")]
    assert "host b: live revision r1 fails its liveness probe: timed out" in events[0].message
    still = compute_status(failing, during, T0)
    assert rollout_events(during, still, failing, Step(), failing.hosts, 1) == []


# -- hosts that installed different sets for one buildId (host/locks.py) --------------------

def locked(node: str, rev: str, digest: str | None, build: str | None = None) -> HostView:
    view = host(node, rev)
    return HostView(**{**view.__dict__, "spec": {**spec(rev), "buildId": build or f"b-{rev}"}, "lock_digest": digest})


def test_hosts_show_the_lock_digest_of_the_rollouts_build_only():
    r = rollout("r2", [locked("a", "r2", "sha256:" + "a" * 64), locked("b", "r2", "sha256:" + "b" * 64, build="b-old")])
    states = {h.node: h.lock_digest for h in compute_status(r, None, T0).hosts}
    assert states == {"a": "sha256:" + "a" * 64, "b": None}


def test_differing_locks_are_named_once_with_their_hosts():
    same = rollout("r2", [locked("a", "r2", "sha256:" + "a" * 64), locked("b", "r2", "sha256:" + "a" * 64)])
    s1 = compute_status(same, None, T0)
    assert differing_locks("b-r2", s1.hosts) is None
    assert not [e for e in rollout_events(None, s1, same, Step(), same.hosts, 1) if e.reason == "LockDiffers"]

    odd = rollout("r2", [locked("a", "r2", "sha256:" + "a" * 64), locked("b", "r2", "sha256:" + "f" * 64),
                         locked("c", "r2", "sha256:" + "a" * 64)], nodes=("a", "b", "c"))
    s2 = compute_status(odd, s1, T0)
    message = differing_locks("b-r2", s2.hosts)
    assert message == f"hosts installed different sets for buildId b-r2 (lock digests: {'a' * 12} on a, c; {'f' * 12} on b)"
    events = [e for e in rollout_events(s1, s2, odd, Step(), odd.hosts, 1) if e.reason == "LockDiffers"]
    assert [(e.type, e.message) for e in events] == [("Warning", message)]
    s3 = compute_status(odd, s2, T0)
    assert not [e for e in rollout_events(s2, s3, odd, Step(), odd.hosts, 1) if e.reason == "LockDiffers"]


def test_the_api_edge_reads_the_lock_digest_of_the_specs_build():
    obj = {"metadata": {"name": "app-a", "labels": {"apprelease.dev/node": "a"}}, "spec": {"buildId": "b1"},
           "status": {"lastBuild": {"buildId": "b1", "reused": False, "seconds": 0.1, "lockDigest": "sha256:x"}}}
    assert host_view(obj).lock_digest == "sha256:x"
    older = {**obj, "status": {"lastBuild": {**obj["status"]["lastBuild"], "buildId": "b0"}}}
    assert host_view(older).lock_digest is None
