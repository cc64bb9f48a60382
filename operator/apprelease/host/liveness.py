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
"""

from __future__ import annotations

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
