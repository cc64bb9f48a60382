"""What the in-cluster agent decides about HostRelease objects, pure and side-effect free.

Called by `agent/cluster.py`, which does the API calls and host work these answers ask
for: which status to write (and whether it is worth a write at all), the merge patch that
turns the stored status into the new one, the finalizer list, the Event to emit, and which
apps on the host no HostRelease names any more. Objects are the apiserver's JSON dicts;
statuses are `HostReleaseStatus` models. Unit-tested in tests/unit/test_agent_cluster.py.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import ValidationError

from ..api.models import APP_LABEL, CONFLICT_REASON, IN_PROGRESS_PHASES, Condition, HostReleaseStatus
from ..host import state
from ..host.layout import app_key

Obj = dict[str, Any]
READY = "Ready"
# Status fields that change on every reconcile without saying anything new.
VOLATILE = frozenset({"updated_at"})


def app_of(obj: Obj) -> str | None:
    """The app a HostRelease deploys: spec.app, or its app label when the spec is unusable."""
    spec = obj.get("spec")
    app = spec.get("app") if isinstance(spec, dict) else None
    if isinstance(app, str) and app:
        return app
    return (obj.get("metadata", {}).get("labels") or {}).get(APP_LABEL)


def wanted_app_keys(objs: Iterable[Obj]) -> set[str]:
    """App keys (`<ns>_<app>`) named by these HostReleases, including ones being deleted
    (their finalizer handles them)."""
    keys = set()
    for obj in objs:
        app = app_of(obj)
        if app:
            keys.add(app_key(obj["metadata"]["namespace"], app))
    return keys


def orphan_app_keys(on_host: Iterable[str], objs: Iterable[Obj]) -> list[str]:
    """Apps present on the host that no HostRelease of this node names: removed while the
    agent was away, or moved to another node."""
    return sorted(set(on_host) - wanted_app_keys(objs))


def split_app_key(key: str) -> tuple[str, str]:
    """(namespace, app) of an app key; '_' occurs in neither (both are DNS labels)."""
    namespace, app = key.split("_", 1)
    return namespace, app


def parse_status(obj: Obj) -> HostReleaseStatus | None:
    """The stored status, or None if there is none or it does not parse."""
    raw = obj.get("status")
    if not raw:
        return None
    try:
        return HostReleaseStatus.model_validate(raw)
    except ValidationError:
        return None  # written by something else: replaced by the next status write


def same_status(old: HostReleaseStatus | None, new: HostReleaseStatus) -> bool:
    """Whether writing `new` over `old` would say nothing new (timestamps of the write aside)."""
    if old is None:
        return False
    return old.model_dump(exclude=VOLATILE) == new.model_dump(exclude=VOLATILE)


def merge_patch(old: Any, new: Any) -> Any:
    """The JSON merge patch (RFC 7386) that turns `old` into `new`: keys gone become null.

    A merge patch of the whole new status alone would leave stale fields in place (a
    `logTail` from an earlier failure next to phase Ready), because absent means unchanged.
    """
    if not isinstance(new, dict):
        return new
    if not isinstance(old, dict):
        return {k: merge_patch(None, v) for k, v in new.items()}
    patch: dict[str, Any] = {k: None for k in old if k not in new}
    for key, value in new.items():
        if key not in old or old[key] != value:
            patch[key] = merge_patch(old.get(key), value)
    return patch


def with_ready_condition(status: HostReleaseStatus, previous: HostReleaseStatus | None) -> HostReleaseStatus:
    """`status` with a Ready condition mirroring its phase; the transition time moves only
    when the condition's status does."""
    ready = status.phase == READY
    # Not known yet while the host works on the spec: the old revision may well still serve.
    value = "True" if ready else ("Unknown" if status.phase in ("Pending", *IN_PROGRESS_PHASES) else "False")
    reason = status.reason or {"Ready": "Serving", "Pending": "Reconciling"}.get(status.phase or "", status.phase or "Unknown")
    before = next((c for c in previous.conditions if c.type == READY), None) if previous else None
    since = before.last_transition_time if before and before.status == value else state.now()
    condition = Condition(type=READY, status=value, reason=reason, message=status.message or "",
                          last_transition_time=since, observed_generation=status.observed_generation)
    others = [c for c in status.conditions if c.type != READY]
    return status.model_copy(update={"conditions": [*others, condition]})


def failed_status(previous: HostReleaseStatus | None, generation: int | None, message: str,
                  log_tail: str | None = None) -> HostReleaseStatus:
    """Failed for this generation; what is known of the serving revision stays as it was."""
    base = previous or HostReleaseStatus()
    return base.model_copy(update={
        "observed_generation": generation, "phase": "Failed", "reason": None, "message": message,
        "log_tail": log_tail, "updated_at": state.now(),
    })


def pending_status(previous: HostReleaseStatus | None, generation: int | None, message: str) -> HostReleaseStatus:
    return progress_status(previous, generation, "Pending", message)


def progress_status(previous: HostReleaseStatus | None, generation: int | None, phase: str,
                    message: str) -> HostReleaseStatus:
    """Working on this generation (Pending, or a live phase such as HealthChecking); what is
    known of the serving revision stays as it was, since it still serves."""
    base = previous or HostReleaseStatus()
    return base.model_copy(update={
        "observed_generation": generation, "phase": phase, "reason": None, "message": message,
        "log_tail": None, "updated_at": state.now(),
    })


def shows_phases(stored: HostReleaseStatus | None, generation: int | None) -> bool:
    """Whether a reconcile writes its live phases: yes while the host moves to a spec (or
    after a failure), no when it repairs drift on a host already Ready on this spec — a
    resync restoring a deleted nginx site is not a rollout, and must not make the operator
    count the host as unsettled."""
    return stored is None or stored.observed_generation != generation or stored.phase != READY


def is_new_generation(stored: HostReleaseStatus | None, generation: int | None) -> bool:
    """Whether the stored status describes an older spec than the object's (or there is none)."""
    return stored is None or stored.observed_generation != generation


def finalizers_adding(obj: Obj, finalizer: str) -> list[str] | None:
    """The finalizer list with `finalizer` added, or None if it is there already."""
    current = list(obj["metadata"].get("finalizers") or [])
    return None if finalizer in current else [*current, finalizer]


def finalizers_removing(obj: Obj, finalizer: str) -> list[str] | None:
    """The finalizer list without `finalizer`, or None if it is not there."""
    current = list(obj["metadata"].get("finalizers") or [])
    return [f for f in current if f != finalizer] if finalizer in current else None


OOM_KILLED = "OOMKilled"  # Event reason: the kernel killed a process of the serving revision at memoryMax


def event_for(old: HostReleaseStatus | None, new: HostReleaseStatus) -> tuple[str, str, str] | None:
    """(type, reason, message) of the Event worth emitting for this status change, if any."""
    if new.phase == "Ready" and (old is None or old.phase != "Ready" or old.serving_revision != new.serving_revision):
        return "Normal", "Reconciled", new.message or "ready"
    if new.phase == "Failed" and (old is None or old.phase != "Failed" or old.message != new.message):
        return "Warning", new.reason or "Failed", new.message or "failed"
    if (new.oom_kills or 0) > ((old.oom_kills or 0) if old is not None and old.serving_revision == new.serving_revision
                               else 0):
        return "Warning", OOM_KILLED, new.message or "a process was killed for exceeding resources.memoryMax"
    return None


def conflicted_keys(statuses: Iterable[tuple[str, HostReleaseStatus | None]]) -> list[str]:
    """Keys whose last status is a host conflict: worth a reconcile as soon as another app leaves
    the host or changes its site, rather than at the next resync."""
    return sorted(key for key, status in statuses if status is not None and status.reason == CONFLICT_REASON)
