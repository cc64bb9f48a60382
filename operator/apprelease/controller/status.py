"""AppRelease status, conditions and events, computed from what the API holds. Pure.

Called by `controller.reconcile` after each rollout step; unit-tested in
tests/unit/test_rollout_status.py. Inputs are the desired specs, the HostReleases as they are
after the step, the previous status and the time; nothing is remembered between calls, so
a restarted operator reports the same status. Conditions follow metav1.Condition: a
condition's lastTransitionTime moves only when its status does. The events a reconcile
posts are derived from the difference between the previous status and the new one (plus
the step taken), which keeps them restart-safe too: at worst one is posted twice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ..api.models import (
    CONFLICT_REASON,
    AppReleaseStatus,
    Condition,
    ConditionStatus,
    HostState,
    RetainedRelease,
)
from .plan import HostView, Step, WireSpec

AVAILABLE = "Available"
PROGRESSING = "Progressing"
DEGRADED = "Degraded"

# Condition reasons (CamelCase, as Kubernetes writes them).
MINIMUM_HOSTS_AVAILABLE = "MinimumHostsAvailable"
HOSTS_UNAVAILABLE = "HostsUnavailable"
NO_HOSTS_SELECTED = "NoHostsSelected"
ROLLOUT_IN_PROGRESS = "RolloutInProgress"
ROLLOUT_COMPLETE = "RolloutComplete"
ROLLOUT_PAUSED = "RolloutPaused"
PROGRESS_DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"
HOST_FAILED = "HostFailed"
HOST_CONFLICT = "HostConflict"  # an agent refused a host (Conflict), or the operator held the rollout
INVALID_SPEC = "InvalidSpec"
SECRET_NOT_FOUND = "SecretNotFound"  # a referenced Secret/ConfigMap or key is missing: nothing moves
SECRET_UNUSABLE = "SecretValueUnusable"  # a referenced value cannot be an environment value
NO_FAILURES = "NoHostFailed"
LIVENESS_FAILED = "LivenessFailed"  # a host's live revision fails its liveness probes (agent/cluster.py)
LOCK_DIFFERS = "LockDiffers"  # hosts of one buildId installed different sets (host/locks.py)

# Event reasons.
ROLLOUT_STARTED = "RolloutStarted"
HOST_UPDATED = "HostUpdated"


@dataclass(frozen=True)
class Rollout:
    """The facts of one reconcile: the desired release and the hosts after this pass's step."""

    generation: int
    version: str
    revision: str
    build_id: str
    desired: Mapping[str, WireSpec]  # node -> desired HostRelease spec
    hosts: Sequence[HostView]
    paused: bool = False
    progress_deadline_seconds: int = 600
    revision_history_limit: int = 5
    conflict: str | None = None  # the operator held this rollout: an older AppRelease claims the same (controller/conflicts.py)
    # The AppRelease's release template (camelCase) of this revision: kept in `history` so that
    # `kubectl apprelease undo` can apply it again, as a DaemonSet keeps ControllerRevisions.
    template: Mapping[str, Any] | None = None

    def selected(self) -> dict[str, HostView]:
        """Live (not deleting) HostReleases of selected nodes, by node."""
        return {h.node: h for h in self.hosts if not h.deleting and h.node in self.desired}

    def counts(self) -> tuple[int, int, int, int]:
        """(desired, updated, ready, failed) hosts."""
        live = self.selected()
        updated = sum(1 for n, h in live.items() if h.updated(self.desired[n]))
        ready = sum(1 for n, h in live.items() if h.ready(self.desired[n]))
        failed = sum(1 for h in live.values() if h.failed)
        return len(self.desired), updated, ready, failed

    @property
    def complete(self) -> bool:
        desired, _, ready, _ = self.counts()
        return ready == desired


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to post on the AppRelease."""

    type: str  # Normal | Warning
    reason: str
    message: str


def set_condition(
    conditions: Sequence[Condition],
    type: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    now: datetime,
    generation: int | None,
) -> list[Condition]:
    """`conditions` with `type` set; its lastTransitionTime is kept unless the status changes."""
    previous = next((c for c in conditions if c.type == type), None)
    since = previous.last_transition_time if previous is not None and previous.status == status else now
    new = Condition(
        type=type, status=status, reason=reason, message=message, last_transition_time=since,
        observed_generation=generation,
    )
    if previous is None:
        return [*conditions, new]
    return [new if c.type == type else c for c in conditions]


def condition(status: AppReleaseStatus | None, type: str) -> Condition | None:
    if status is None:
        return None
    return next((c for c in status.conditions if c.type == type), None)


def compute_status(rollout: Rollout, previous: AppReleaseStatus | None, now: datetime) -> AppReleaseStatus:
    """The AppRelease status for `rollout`, carrying over what only history can know."""
    prev = previous or AppReleaseStatus()
    desired, updated, ready, failed = rollout.counts()
    complete = rollout.complete
    deployed = complete and desired > 0

    current = rollout.revision if deployed else prev.current_revision
    previous_revision = prev.current_revision if current != prev.current_revision else prev.previous_revision
    history = _history(prev.history, rollout, now) if deployed else list(prev.history)

    progress = (rollout.generation, desired, updated, ready, failed)
    before = (prev.observed_generation, prev.desired_hosts, prev.updated_hosts, prev.ready_hosts, prev.failed_hosts)
    last_progress = now if previous is None or progress != before or prev.last_progress_time is None else prev.last_progress_time

    conditions = list(prev.conditions)
    gen = rollout.generation
    conditions = set_condition(conditions, AVAILABLE, *_available(rollout), now, gen)
    conditions = set_condition(conditions, PROGRESSING, *_progressing(rollout, last_progress, now), now, gen)
    conditions = set_condition(conditions, DEGRADED, *_degraded(rollout), now, gen)

    return AppReleaseStatus(
        observed_generation=rollout.generation,
        conditions=conditions,
        desired_hosts=desired,
        updated_hosts=updated,
        ready_hosts=ready,
        failed_hosts=failed,
        ready=f"{ready}/{desired}",
        current_revision=current,
        previous_revision=previous_revision,
        history=history,
        hosts=_host_states(rollout),
        last_progress_time=last_progress,
    )


def invalid_spec_status(
    previous: AppReleaseStatus | None, generation: int, message: str, now: datetime, reason: str = INVALID_SPEC
) -> AppReleaseStatus:
    """The previous status, marked Degraded/`reason` (InvalidSpec, SecretNotFound) for
    `generation`; hosts are left alone, so they keep serving what they serve."""
    prev = previous or AppReleaseStatus()
    conditions = set_condition(prev.conditions, DEGRADED, "True", reason, message, now, generation)
    return prev.model_copy(update={"observed_generation": generation, "conditions": conditions})


def deadline_in(rollout: Rollout, status: AppReleaseStatus, now: datetime) -> float | None:
    """Seconds until the progress deadline of an ongoing rollout passes (None: nothing to wait for)."""
    if rollout.complete or rollout.paused or status.last_progress_time is None:
        return None
    due = status.last_progress_time + timedelta(seconds=rollout.progress_deadline_seconds)
    left = (due - now).total_seconds()
    return left if left > 0 else None


def rollout_events(
    previous: AppReleaseStatus | None,
    new: AppReleaseStatus,
    rollout: Rollout,
    step: Step,
    before: Sequence[HostView],
    max_unavailable: int | str,
) -> list[Event]:
    """The events this reconcile posts: what changed between `previous` and `new`, and `step`."""
    events: list[Event] = []
    release = f"revision {rollout.revision} (version {rollout.version})"
    already_started = any(
        not h.deleting and h.node in rollout.desired and h.updated(rollout.desired[h.node]) for h in before
    )
    if (step.creates or step.updates) and not already_started:
        first = ", ".join(sorted(step.creates + step.updates))
        events.append(Event("Normal", ROLLOUT_STARTED,
                            f"rolling out {release} to {len(rollout.desired)} host(s), maxUnavailable "
                            f"{max_unavailable}; first: {first}"))

    old_hosts = {h.node: h for h in (previous.hosts if previous else [])}
    live = rollout.selected()
    updated = []  # one Event for the hosts that became Ready together: at fleet scale an Event
    # per host was most of the operator's writes (bench/fleet.py)
    for node, host in sorted(live.items()):
        was = old_hosts.get(node)
        if host.ready(rollout.desired[node]) and not (
            was is not None and was.phase == "Ready" and was.revision == rollout.revision
        ):
            updated.append(node)
        if host.failed and not (was is not None and was.phase == "Failed" and was.message == host.message):
            events.append(Event("Warning", HOST_CONFLICT if host.reason == CONFLICT_REASON else HOST_FAILED,
                                _failure(host)))
    if updated:
        events.append(Event("Normal", HOST_UPDATED,
                            f"{', '.join(updated)} serve{'s' if len(updated) == 1 else ''} {release}"))

    degraded_before, degraded_now = condition(previous, DEGRADED), condition(new, DEGRADED)
    if rollout.conflict is not None and degraded_now is not None and not (
        degraded_before is not None and degraded_before.reason == HOST_CONFLICT
        and degraded_before.message == degraded_now.message
    ):
        events.append(Event("Warning", HOST_CONFLICT, degraded_now.message))
    # Once per episode on the AppRelease (the agent's Events, with the log tail, are on the HostRelease).
    if (degraded_now is not None and degraded_now.status == "True" and degraded_now.reason == LIVENESS_FAILED
            and not (degraded_before is not None and degraded_before.status == "True"
                     and degraded_before.reason == LIVENESS_FAILED)):
        events.append(Event("Warning", LIVENESS_FAILED, degraded_now.message))

    progressing_before, progressing_now = condition(previous, PROGRESSING), condition(new, PROGRESSING)
    if progressing_now is not None and progressing_now.reason != (progressing_before.reason if progressing_before else None):
        if progressing_now.reason == ROLLOUT_COMPLETE and rollout.desired:
            events.append(Event("Normal", ROLLOUT_COMPLETE, progressing_now.message))
        elif progressing_now.reason == PROGRESS_DEADLINE_EXCEEDED:
            events.append(Event("Warning", PROGRESS_DEADLINE_EXCEEDED, progressing_now.message))

    differs = differing_locks(rollout.build_id, new.hosts)
    if differs is not None and differs != differing_locks(rollout.build_id, previous.hosts if previous else []):
        events.append(Event("Warning", LOCK_DIFFERS, differs))
    return events


def differing_locks(build_id: str, hosts: Sequence[HostState]) -> str | None:
    """What to say when hosts report different lock digests for `build_id`; None when they agree.

    `hosts` carry a digest only for the rollout's buildId (`_host_states`). Each host resolves a
    buildId once and keeps the lock (host/locks.py): two hosts whose first builds saw different
    index contents (a release uploaded in between) install different bytes under one buildId.
    Named here so a human can pin the requirement or remove the odd host's lock.
    """
    nodes: dict[str, list[str]] = {}
    for host in hosts:
        if host.lock_digest:
            nodes.setdefault(host.lock_digest, []).append(host.node)
    if len(nodes) < 2:
        return None
    groups = "; ".join(f"{digest.removeprefix('sha256:')[:12]} on {', '.join(sorted(names))}"
                       for digest, names in sorted(nodes.items()))
    return f"hosts installed different sets for buildId {build_id} (lock digests: {groups})"


def invalid_spec_events(previous: AppReleaseStatus | None, new: AppReleaseStatus,
                        reason: str = INVALID_SPEC) -> list[Event]:
    before, now = condition(previous, DEGRADED), condition(new, DEGRADED)
    if now is None or now.reason != reason:
        return []
    if before is not None and before.reason == reason and before.message == now.message:
        return []
    return [Event("Warning", reason, now.message)]


def halted_reason(previous: AppReleaseStatus | None, new: AppReleaseStatus) -> str | None:
    """HostFailed, HostConflict or ProgressDeadlineExceeded when this status newly halts the rollout, else None.

    For the rollouts-halted metric: a halt is counted when it begins, not at every reconcile
    that still sees it.
    """
    degraded_before, degraded_now = condition(previous, DEGRADED), condition(new, DEGRADED)
    for reason in (HOST_FAILED, HOST_CONFLICT):
        if degraded_now is not None and degraded_now.status == "True" and degraded_now.reason == reason and not (
            degraded_before is not None and degraded_before.status == "True" and degraded_before.reason == reason
        ):
            return reason
    progressing_before, progressing_now = condition(previous, PROGRESSING), condition(new, PROGRESSING)
    if progressing_now is not None and progressing_now.reason == PROGRESS_DEADLINE_EXCEEDED and (
        progressing_before is None or progressing_before.reason != PROGRESS_DEADLINE_EXCEEDED
    ):
        return PROGRESS_DEADLINE_EXCEEDED
    return None


# ----- pieces


def _available(rollout: Rollout) -> tuple[ConditionStatus, str, str]:
    desired = len(rollout.desired)
    if desired == 0:
        return "False", NO_HOSTS_SELECTED, "no Node matches spec.hosts.nodeSelector"
    live = rollout.selected()
    down = sorted(n for n in rollout.desired if n not in live or not live[n].serving())
    if not down:
        return "True", MINIMUM_HOSTS_AVAILABLE, f"{desired} of {desired} hosts serve a healthy revision"
    return ("False", HOSTS_UNAVAILABLE,
            f"{desired - len(down)} of {desired} hosts serve a healthy revision; not serving: {', '.join(down)}")


def _progressing(rollout: Rollout, last_progress: datetime, now: datetime) -> tuple[ConditionStatus, str, str]:
    desired, updated, ready, _ = rollout.counts()
    release = f"revision {rollout.revision} (version {rollout.version})"
    if rollout.complete:
        return "True", ROLLOUT_COMPLETE, f"{release} is ready on {ready}/{desired} hosts"
    if rollout.paused:
        return "Unknown", ROLLOUT_PAUSED, f"rollout of {release} paused with {updated}/{desired} hosts updated"
    if now - last_progress >= timedelta(seconds=rollout.progress_deadline_seconds):
        stuck = (f"no host settled on {release} for {rollout.progress_deadline_seconds}s "
                 f"({updated}/{desired} updated, {ready} ready)")
        return "False", PROGRESS_DEADLINE_EXCEEDED, stuck
    return "True", ROLLOUT_IN_PROGRESS, f"rolling out {release}: {updated}/{desired} updated, {ready} ready"


def _degraded(rollout: Rollout) -> tuple[ConditionStatus, str, str]:
    if rollout.conflict is not None:
        return "True", HOST_CONFLICT, rollout.conflict
    failed = [h for _, h in sorted(rollout.selected().items()) if h.failed]
    if not failed:
        failing = [h for _, h in sorted(rollout.selected().items()) if h.liveness_failure]
        if failing:
            return "True", LIVENESS_FAILED, "; ".join(
                f"host {h.node}: live revision {h.serving_revision} fails its liveness probe: {h.liveness_failure}"
                for h in failing)
        return "False", NO_FAILURES, "no host reports a failure"
    # A conflict needs another app to change, not a fix of this one: it is named first.
    reason = HOST_CONFLICT if any(h.reason == CONFLICT_REASON for h in failed) else HOST_FAILED
    return "True", reason, "; ".join(_failure(h) for h in failed)


def _failure(host: HostView) -> str:
    version = host.spec.get("version") if host.spec else None
    what = f"revision {host.revision}" + (f" (version {version})" if version else "")
    return f"host {host.node} failed on {what}: {host.message or 'no message from the agent'}"


def _history(previous: Sequence[RetainedRelease], rollout: Rollout, now: datetime) -> list[RetainedRelease]:
    """History with the completed release last; a re-deployed revision keeps its firstDeployed.

    Each entry carries its release template (for undo); an entry recorded before templates
    were kept gets the template when its revision completes again."""
    history = list(previous)
    template = dict(rollout.template) if rollout.template is not None else None
    if history and history[-1].revision == rollout.revision:
        last = history[-1]
        if last.template is None and template is not None:
            history[-1] = last.model_copy(update={"template": template})
        return history
    earlier = next((r for r in history if r.revision == rollout.revision), None)
    history = [r for r in history if r.revision != rollout.revision]
    history.append(RetainedRelease(
        version=rollout.version, revision=rollout.revision, build_id=rollout.build_id,
        first_deployed=earlier.first_deployed if earlier is not None else now,
        template=template if template is not None else (earlier.template if earlier is not None else None),
    ))
    return history[-(rollout.revision_history_limit + 1):]


def _host_states(rollout: Rollout) -> list[HostState]:
    by_node: dict[str, HostView] = {}
    for host in rollout.hosts:  # a live HostRelease wins over one being deleted for the same node
        if host.node not in by_node or by_node[host.node].deleting:
            by_node[host.node] = host
    states = []
    for node in sorted(set(rollout.desired) | set(by_node)):
        host = by_node.get(node)
        if host is None:
            states.append(HostState(node=node, phase="Pending"))
        elif host.deleting:
            states.append(HostState(node=node, phase="Terminating", revision=host.serving_revision))
        elif not host.observed or host.phase is None:
            # The agent has not reported on the current spec yet.
            states.append(HostState(node=node, phase="Pending", revision=host.serving_revision))
        else:
            on_build = host.spec is not None and host.spec.get("buildId") == rollout.build_id
            states.append(HostState(node=node, phase=host.phase, revision=host.serving_revision,
                                    message=host.message, processes=host.processes,
                                    lock_digest=host.lock_digest if on_build else None))
    return states


__all__ = [
    "Event", "Rollout", "compute_status", "condition", "deadline_in", "halted_reason", "invalid_spec_events",
    "differing_locks", "invalid_spec_status", "rollout_events", "set_condition",
]
