"""The operator's pure rollout decision: `controller.plan.next_step`.

Covers: first deploy creates every host (and costs no budget); batch sizes with
maxUnavailable 1, 2 and "50%" (rounded down, at least 1); the next batch waits while the
current one is unsettled (never-reported, Pending, and every live phase Building .. Draining); a host failed on the desired
spec halts the rollout; a host failed on an older spec is updated (revert); paused;
a newer spec supersedes a rollout in progress (unsettled hosts move on at no extra cost);
nodes added and removed (and deleted HostReleases not touched twice); which HostReleases
lose the agent finalizer because their Node is gone; the HostView predicates.
"""

from __future__ import annotations

import pytest

from apprelease.api.models import IN_PROGRESS_PHASES
from apprelease.controller.plan import (
    AGENT_FINALIZER,
    HostView,
    Step,
    finalizers_to_release,
    max_unavailable_count,
    next_step,
)

pytestmark = pytest.mark.unit


def spec(rev: str) -> dict:
    return {"revision": rev, "version": rev.upper()}


def host(node: str, rev: str, phase: str | None = "Ready", *, observed: bool = True, deleting: bool = False,
         serving: str | None = "same") -> HostView:
    """A HostRelease of `node` at spec `rev`; `observed` False means the agent has not caught up."""
    return HostView(
        name=f"app-{node}", node=node, spec=spec(rev), generation=3, observed_generation=3 if observed else 2,
        phase=phase, serving_revision=rev if serving == "same" else serving, deleting=deleting,
    )


def desired(rev: str, *nodes: str) -> dict[str, dict]:
    return {n: spec(rev) for n in nodes}


ABC = ("a", "b", "c")
ABCD = ("a", "b", "c", "d")

CASES = [
    # (id, desired, existing, maxUnavailable, paused, expected Step)
    ("first-deploy-creates-all", desired("r1", *ABC), [], 1, False, Step(creates=ABC)),
    ("converged-does-nothing", desired("r1", *ABC), [host(n, "r1") for n in ABC], 1, False, Step()),
    ("max-unavailable-1-one-at-a-time", desired("r2", *ABC), [host(n, "r1") for n in ABC], 1, False,
     Step(updates=("a",))),
    ("max-unavailable-2-two-at-a-time", desired("r2", *ABCD), [host(n, "r1") for n in ABCD], 2, False,
     Step(updates=("a", "b"))),
    ("max-unavailable-50%-of-4-is-2", desired("r2", *ABCD), [host(n, "r1") for n in ABCD], "50%", False,
     Step(updates=("a", "b"))),
    ("max-unavailable-50%-of-3-rounds-down-to-1", desired("r2", *ABC), [host(n, "r1") for n in ABC], "50%", False,
     Step(updates=("a",))),
    ("max-unavailable-10%-is-at-least-1", desired("r2", *ABC), [host(n, "r1") for n in ABC], "10%", False,
     Step(updates=("a",))),
    ("waits-while-batch-unobserved",
     desired("r2", *ABC), [host("a", "r2", "Ready", observed=False), host("b", "r1"), host("c", "r1")], 1, False,
     Step()),
    ("waits-while-batch-building",
     desired("r2", *ABC), [host("a", "r2", "Building", serving="r1"), host("b", "r1"), host("c", "r1")], 1, False,
     Step()),
    ("waits-while-agent-never-reported",
     desired("r2", *ABC), [host("a", "r2", None, observed=False, serving=None), host("b", "r1"), host("c", "r1")],
     1, False, Step()),
    ("next-batch-after-batch-ready",
     desired("r2", *ABC), [host("a", "r2"), host("b", "r1"), host("c", "r1")], 1, False, Step(updates=("b",))),
    ("budget-2-one-busy-leaves-one",
     desired("r2", *ABCD), [host("a", "r2", "Starting"), host("b", "r1"), host("c", "r1"), host("d", "r1")], 2, False,
     Step(updates=("b",))),
    ("halts-on-failure-of-desired-spec",
     desired("r2", *ABC), [host("a", "r2", "Failed", serving="r1"), host("b", "r1"), host("c", "r1")], 3, False,
     Step(halted_by=("a",))),
    ("updates-host-failed-on-older-spec",
     desired("r1", *ABC), [host("a", "r2", "Failed", serving="r1"), host("b", "r1"), host("c", "r1")], 1, False,
     Step(updates=("a",))),
    ("failure-of-older-spec-does-not-halt-others",
     desired("r3", *ABC), [host("a", "r2", "Failed", serving="r1"), host("b", "r1"), host("c", "r1")], 2, False,
     Step(updates=("a", "b"))),
    ("paused-no-updates", desired("r2", *ABC), [host(n, "r1") for n in ABC], 3, True, Step()),
    ("paused-no-creates", desired("r1", *ABC), [host("a", "r1")], 1, True, Step()),
    ("paused-still-deletes-deselected", desired("r2", "a"), [host("a", "r1"), host("b", "r1")], 1, True,
     Step(deletes=("app-b",))),
    ("superseded-spec-moves-unsettled-host-at-no-cost",
     desired("r3", *ABC), [host("a", "r2", "Building", serving="r1"), host("b", "r1"), host("c", "r1")], 1, False,
     Step(updates=("a",))),
    ("superseded-spec-continues-in-order",
     desired("r3", *ABC), [host("a", "r2"), host("b", "r2", "Starting", serving="r1"), host("c", "r1")], 1, False,
     Step(updates=("b",))),
    ("node-added-is-created-without-budget",
     desired("r2", *ABCD), [host("a", "r2", "Building", serving="r1"), host("b", "r1"), host("c", "r1")], 1, False,
     Step(creates=("d",))),
    ("node-removed-is-deleted", desired("r1", "a", "b"), [host(n, "r1") for n in ABC], 1, False,
     Step(deletes=("app-c",))),
    ("all-nodes-removed", {}, [host(n, "r1") for n in ABC], 1, False, Step(deletes=("app-a", "app-b", "app-c"))),
    ("deleting-host-not-deleted-again-nor-counted",
     desired("r2", "a", "b"), [host("a", "r1"), host("b", "r1"), host("c", "r1", "Terminating", deleting=True)], 1,
     False, Step(updates=("a",))),
    ("node-back-while-its-old-release-terminates-waits",
     desired("r1", "a"), [host("a", "r1", "Terminating", deleting=True)], 1, False, Step()),
    ("invalid-stored-spec-is-outdated",
     desired("r1", "a"), [HostView(name="app-a", node="a", spec=None, generation=1, observed_generation=1,
                                   phase="Ready", serving_revision="r1")], 1, False, Step(updates=("a",))),
]


@pytest.mark.parametrize(("want", "existing", "max_unavailable", "paused", "expected"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_next_step(want, existing, max_unavailable, paused, expected):
    assert next_step(want, existing, max_unavailable, paused) == expected


def test_a_whole_rollout_moves_in_batches_until_done():
    """Drive next_step like the operator and agents would: each batch settles, then the next goes."""
    nodes = ("a", "b", "c", "d", "e")
    hosts = {n: host(n, "r1") for n in nodes}
    want = desired("r2", *nodes)
    batches = []
    for _ in range(10):
        step = next_step(want, list(hosts.values()), 2, False)
        if step.empty:
            break
        batches.append(step.updates)
        for n in step.updates:  # the agents report Ready on the new spec
            hosts[n] = host(n, "r2")
    assert batches == [("a", "b"), ("c", "d"), ("e",)]


@pytest.mark.parametrize(("value", "hosts", "count"), [
    (1, 10, 1), (3, 2, 3), ("25%", 8, 2), ("25%", 3, 1), ("100%", 5, 5), ("50%", 0, 1),
], ids=["int-1", "int-above-hosts", "25%-of-8", "25%-of-3-min-1", "100%", "no-hosts"])
def test_max_unavailable_count(value, hosts, count):
    assert max_unavailable_count(value, hosts) == count


def test_finalizer_released_only_for_deleting_hosts_of_missing_nodes():
    gone = HostView(name="app-x", node="x", spec=spec("r1"), deleting=True, finalizers=(AGENT_FINALIZER,))
    alive = HostView(name="app-y", node="y", spec=spec("r1"), deleting=True, finalizers=(AGENT_FINALIZER,))
    not_deleting = HostView(name="app-z", node="z", spec=spec("r1"), finalizers=(AGENT_FINALIZER,))
    no_finalizer = HostView(name="app-w", node="w", spec=spec("r1"), deleting=True)
    assert finalizers_to_release([gone, alive, not_deleting, no_finalizer], frozenset({"y"})) == ("app-x",)


@pytest.mark.parametrize(("view", "settled", "failed", "ready", "serving"), [
    (host("a", "r2"), True, False, True, True),
    (host("a", "r2", "Ready", observed=False), False, False, False, True),
    (host("a", "r2", "Ready", serving="r1"), True, False, False, True),
    (host("a", "r2", "Failed", serving="r1"), True, True, False, True),
    (host("a", "r2", "Failed", serving=None), True, True, False, False),
    (host("a", "r2", "Failed"), True, True, False, False),
    (host("a", "r2", "Building", serving=None), False, False, False, False),
    (host("a", "r2", "Terminating", deleting=True), False, False, False, False),
], ids=["ready", "ready-for-older-generation", "ready-serving-other-revision", "failed-old-still-serving",
        "failed-first-deploy", "failed-serving-revision", "building-first", "terminating"])
def test_host_predicates(view, settled, failed, ready, serving):
    assert (view.settled, view.failed, view.ready(spec("r2")), view.serving()) == (settled, failed, ready, serving)


@pytest.mark.parametrize("phase", IN_PROGRESS_PHASES)
def test_live_phases_are_unsettled_and_the_old_revision_still_serves(phase):
    """The agent's live phases (Building .. Draining) count like Pending: the batch is still moving."""
    view = host("a", "r2", phase, serving="r1")
    assert (view.settled, view.failed, view.ready(spec("r2")), view.serving()) == (False, False, False, True)
    hosts = [view, host("b", "r1"), host("c", "r1")]
    assert next_step(desired("r2", *ABC), hosts, 1, False).updates == ()  # maxUnavailable 1: b waits for a


def migrating(rev: str, *nodes: str, run_on: str = "firstHost") -> dict[str, dict]:
    """Desired specs with a release command: on the first node only, or on every node."""
    first = sorted(nodes)[0]
    return {n: {**spec(rev), "release": {"command": ["python"], "runOn": run_on},
                **({"runReleaseCommand": True} if run_on == "everyHost" or n == first else {})} for n in nodes}


def gated_host(node: str, rev: str, want: dict, phase: str | None = "Ready", observed: bool = True) -> HostView:
    """A HostRelease of `node` holding spec `want[node]` when `rev` is the desired one."""
    return HostView(name=f"app-{node}", node=node, spec=want[node] if rev == want[node]["revision"] else spec(rev),
                    generation=3, observed_generation=3 if observed else 2, phase=phase, serving_revision=rev)


def test_first_host_release_command_gates_creates_until_it_is_ready():
    want = migrating("r1", *ABC)
    assert next_step(want, [], 3, False) == Step(creates=("a",))
    building = [gated_host("a", "r1", want, phase="Building")]
    assert next_step(want, building, 3, False) == Step()
    ready = [gated_host("a", "r1", want)]
    assert next_step(want, ready, 3, False) == Step(creates=("b", "c"))


def test_first_host_release_command_moves_that_host_alone_whatever_the_budget():
    want = migrating("r2", *ABCD)
    old = [host(n, "r1") for n in ABCD]
    assert next_step(want, old, "100%", False) == Step(updates=("a",))
    a_moving = [gated_host("a", "r2", want, phase="Starting"), *old[1:]]
    assert next_step(want, a_moving, "100%", False) == Step()
    a_ready = [gated_host("a", "r2", want), *old[1:]]
    assert next_step(want, a_ready, "100%", False) == Step(updates=("b", "c", "d"))


def test_a_failed_release_command_halts_like_any_failure():
    want = migrating("r2", *ABC)
    failed = [gated_host("a", "r2", want, phase="Failed"), host("b", "r1"), host("c", "r1")]
    assert next_step(want, failed, 2, False) == Step(halted_by=("a",))


def test_first_host_waits_for_budget_taken_by_others():
    want = migrating("r3", *ABC)
    # b is still moving to an older spec: a settled first host waits rather than exceed the budget,
    # and b is not moved on to new code before the release command ran.
    hosts = [host("a", "r2"), host("b", "r2", phase="Starting"), host("c", "r2")]
    assert next_step(want, hosts, 1, False) == Step()


def test_every_host_release_commands_roll_as_usual():
    want = migrating("r2", *ABC, run_on="everyHost")
    assert next_step(want, [host(n, "r1") for n in ABC], 2, False) == Step(updates=("a", "b"))
