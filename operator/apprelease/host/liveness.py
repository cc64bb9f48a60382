"""Liveness of the live revision: what one probe's outcome means. Pure.

The in-cluster agent probes each app whose `healthCheck.periodSeconds` is set, through the
live revision's own socket (core.probe_live), and feeds each outcome to `record`, which says
whether to restart that revision's workers now. Like the kubelet's liveness probe:
`failureThreshold` failures in a row restart; a restart resets the count, so the new workers
get as many probes before the next restart; a probe that passes ends the failure.

A probe never takes an app down by itself: a slow answer is a pass unless it has no answer
after `probeTimeoutSeconds`, and the restart is gunicorn's graceful one (HUP: new workers
start on the same listening socket, old ones finish their requests within the graceful
timeout), so the socket nginx connects to never goes away.

Apps belong to untrusted tenants, so one app's probe must not delay another's: the agent
runs probes side by side, and `start_now` says which due probes start when (each app at most
one probe in flight, a tenant at most a few, the most overdue first), `next_due` when an app
is due again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Tracker:
    """What the agent remembers of one app's live revision between probes."""

    revision: str
    failures: int = 0  # in a row, since the last pass or restart
    restarts: int = 0
    failing: bool = False  # since the first failure, until a probe passes
    last_failure: str | None = None


@dataclass(frozen=True)
class Outcome:
    tracker: Tracker
    restart: bool  # restart the revision's workers now
    changed: bool  # failing or restarts changed: worth a status write


def record(tracker: Tracker, revision: str, passed: bool, detail: str, threshold: int) -> Outcome:
    """The tracker after one probe of `revision` (a new revision starts afresh)."""
    if tracker.revision != revision:
        tracker = Tracker(revision)
    if passed:
        after = replace(tracker, failures=0, failing=False)
        return Outcome(after, False, tracker.failing)
    failures = tracker.failures + 1
    if failures >= max(threshold, 1):
        after = replace(tracker, failures=0, restarts=tracker.restarts + 1, failing=True, last_failure=detail)
        return Outcome(after, True, True)
    after = replace(tracker, failures=failures, failing=True, last_failure=detail)
    return Outcome(after, False, not tracker.failing)


# -- scheduling: which probes run when -------------------------------------------------


@dataclass(frozen=True)
class Due:
    """One app the prober may probe: `key` (its HostRelease), `tenant` (its namespace), and
    `at`, the time.monotonic() its next probe is due (0: never probed, due at once)."""

    key: str
    tenant: str
    at: float


def start_now(due: Iterable[Due], running: Mapping[str, str], now: float, slots: int,
              per_tenant: int) -> list[Due]:
    """The probes to start at `now`, in order: those due, most overdue first, none of an app
    whose probe still runs, at most `per_tenant` running per tenant, at most `slots` in all.

    `running` is key -> tenant of the probes in flight. A probe that has to wait for a slot
    stays due and, being the most overdue, starts first when one frees: a hanging app holds
    one slot for at most its probeTimeoutSeconds, and a tenant with many hanging apps holds
    at most `per_tenant` slots, never the whole pool.
    """
    in_flight: dict[str, int] = {}
    for tenant in running.values():
        in_flight[tenant] = in_flight.get(tenant, 0) + 1
    started: list[Due] = []
    for item in sorted((d for d in due if d.at <= now and d.key not in running), key=lambda d: (d.at, d.key)):
        if len(started) >= slots:
            break
        if in_flight.get(item.tenant, 0) >= per_tenant:
            continue
        in_flight[item.tenant] = in_flight.get(item.tenant, 0) + 1
        started.append(item)
    return started


def next_due(due_at: float, now: float, period: float) -> float:
    """When an app whose probe was due at `due_at` and starts at `now` is due again.

    One period after it was due, so that a start delayed by the prober's tick or a busy pool
    does not stretch the period; a full period from now when it is more than a period late
    (a probe that outlasted its period, a first probe): no burst of catch-up probes.
    """
    again = due_at + period
    return again if again > now else now + period
