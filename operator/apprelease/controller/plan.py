"""Rollout decisions across hosts: desired specs + observed HostReleases -> the next step. Pure.

Called by `controller.reconcile` on every reconcile of an AppRelease; unit-tested as a matrix
in tests/unit/test_rollout_plan.py. Nothing here does I/O or keeps state between calls: the
whole rollout state is derivable from the AppRelease spec, its HostReleases and the Nodes,
so an operator restarted at any moment computes the same step from what the API holds.

The rules are a DaemonSet's rolling update (DESIGN.md "Rollout across hosts"):
- a selected node without a HostRelease gets one with the desired spec (it serves nothing
  yet, so creating it costs no availability);
- a HostRelease of a node no longer selected (or deleted) is deleted;
- hosts that have not settled (Ready or Failed on their current generation) count against
  `maxUnavailable`; outdated hosts (spec != desired) are updated in node-name order while the
  budget allows, so the next batch starts when the previous one settled;
- a host failed on the desired spec halts the rollout; a host failed on an older spec is
  just outdated and may be updated (that is how reverting the manifest recovers);
- `paused` stops creates and updates (deletes of deselected hosts still happen);
- a release command run on the first host only (`release.runOn: firstHost`, e.g. migrations
  of a shared database) gates the rollout: until that host is Ready on the desired spec, no
  other host is created or moved, so no host serves new code against an unmigrated database.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

AGENT_FINALIZER = "apprelease.dev/agent-cleanup"

WireSpec = Mapping[str, Any]


@dataclass(frozen=True)
class HostView:
    """What the operator needs to know of one HostRelease (built from the API object in `kube`).

    `spec` is the stored spec normalized through the pydantic model (None when it does not
    validate, which makes the host outdated so it gets rewritten).
    """

    name: str
    node: str
    spec: WireSpec | None
    generation: int = 1
    observed_generation: int | None = None
    phase: str | None = None
    serving_revision: str | None = None
    message: str | None = None
    reason: str | None = None  # the agent's status.reason, e.g. Conflict
    processes: str | None = None  # the serving revision's process types, e.g. "worker 2/2"
    liveness_failure: str | None = None  # while the agent's liveness probes fail: what they saw
    lock_digest: str | None = None  # the lock of the spec's buildId the host installed (status.lastBuild)
    deleting: bool = False
    finalizers: tuple[str, ...] = ()

    @property
    def revision(self) -> str | None:
        return None if self.spec is None else self.spec.get("revision")

    @property
    def observed(self) -> bool:
        """The agent's status describes the current spec (generation)."""
        return self.observed_generation == self.generation

    @property
    def settled(self) -> bool:
        return self.observed and self.phase in ("Ready", "Failed")

    @property
    def failed(self) -> bool:
        return self.observed and self.phase == "Failed"

    def updated(self, desired: WireSpec | None) -> bool:
        return desired is not None and self.spec == desired

    def ready(self, desired: WireSpec | None) -> bool:
        return (
            self.updated(desired)
            and self.observed
            and self.phase == "Ready"
            and self.serving_revision is not None
            and self.serving_revision == self.revision
        )

    def serving(self) -> bool:
        """The host serves a healthy revision (possibly an old one, during a rotation)."""
        if self.serving_revision is None or self.deleting or self.phase == "Terminating":
            return False
        # A failure of the revision it serves means the serving workers themselves broke.
        return not (self.failed and self.serving_revision == self.revision)


@dataclass(frozen=True)
class Step:
    """What to change now. `updates` carries the node names whose spec is rewritten."""

    creates: tuple[str, ...] = ()
    updates: tuple[str, ...] = ()
    deletes: tuple[str, ...] = ()  # HostRelease names
    halted_by: tuple[str, ...] = ()  # nodes failed on the desired spec: the rollout waits for a fix

    @property
    def empty(self) -> bool:
        return not (self.creates or self.updates or self.deletes)


def max_unavailable_count(max_unavailable: int | str, desired_hosts: int) -> int:
    """`maxUnavailable` as a host count: an int as is, a percentage of the desired hosts rounded
    down; never less than 1, or a rollout over few hosts could never start."""
    if isinstance(max_unavailable, int):
        return max(1, max_unavailable)
    percent = int(max_unavailable.rstrip("%"))
    return max(1, desired_hosts * percent // 100)


def next_step(
    desired: Mapping[str, WireSpec],
    existing: Sequence[HostView],
    max_unavailable: int | str,
    paused: bool,
) -> Step:
    """The creates, updates and deletes that move the hosts towards `desired` (node -> spec)."""
    by_node = {h.node: h for h in existing if not h.deleting}
    deletes = tuple(sorted(h.name for h in existing if not h.deleting and h.node not in desired))
    # A node whose old HostRelease is still being deleted waits: the new one would have its name.
    present = {h.node for h in existing}
    creates = () if paused else tuple(sorted(n for n in desired if n not in present))

    selected = [by_node[n] for n in sorted(by_node) if n in desired]
    halted_by = tuple(h.node for h in selected if h.failed and h.updated(desired[h.node]))
    if paused or halted_by:
        return Step(creates=creates, deletes=deletes, halted_by=halted_by)

    gate = release_gate(desired, by_node)
    if gate is not None:
        return Step(creates=tuple(n for n in creates if n == gate),
                    updates=_first_host_update(by_node.get(gate), desired[gate], max_unavailable, desired, selected),
                    deletes=deletes)

    outdated = [h for h in selected if not h.updated(desired[h.node])]
    # A host already unsettled already counts against the budget: moving it on to the newest
    # spec (a superseded rollout) costs nothing more, as a DaemonSet replaces unavailable pods.
    moving = [h.node for h in outdated if not h.settled]
    unavailable = sum(1 for h in selected if not h.settled)
    budget = max_unavailable_count(max_unavailable, len(desired)) - unavailable
    settled_outdated = [h.node for h in outdated if h.settled]
    updates = moving + settled_outdated[: max(0, budget)]
    return Step(creates=creates, updates=tuple(sorted(updates)), deletes=deletes)


def release_gate(desired: Mapping[str, WireSpec], by_node: Mapping[str, HostView]) -> str | None:
    """The node whose release command must succeed before any other host moves, or None.

    That is the node the operator asked to run a firstHost release command, as long as it is
    not Ready on its desired spec (a rollback the agent skips the command for passes quickly).
    """
    for node, spec in desired.items():
        release = spec.get("release") or {}
        if spec.get("runReleaseCommand") and release.get("runOn", "firstHost") == "firstHost":
            host = by_node.get(node)
            return None if host is not None and host.ready(spec) else node
    return None


def _first_host_update(host: HostView | None, spec: WireSpec, max_unavailable: int | str,
                       desired: Mapping[str, WireSpec], selected: Sequence[HostView]) -> tuple[str, ...]:
    """The gate host's own update, within the unavailability budget like any other."""
    if host is None or host.updated(spec):
        return ()
    unavailable = sum(1 for h in selected if not h.settled and h.node != host.node)
    if host.settled and max_unavailable_count(max_unavailable, len(desired)) - unavailable < 1:
        return ()
    return (host.node,)


def finalizers_to_release(existing: Sequence[HostView], live_nodes: frozenset[str]) -> tuple[str, ...]:
    """HostReleases being deleted whose Node is gone: no agent will ever clean up after them, so
    the operator drops the agent's finalizer (otherwise the deletion would hang forever)."""
    return tuple(
        sorted(h.name for h in existing if h.deleting and AGENT_FINALIZER in h.finalizers and h.node not in live_nodes)
    )

