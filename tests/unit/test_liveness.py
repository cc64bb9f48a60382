"""Liveness decisions (host/liveness.py) and how liveness settings relate to a revision.

Covers: failures in a row up to failureThreshold restart once and reset the count; a pass
ends the failure; a new live revision starts afresh; which outcomes are worth a status write;
liveness settings are not part of the revision (changing them rotates nothing) and are left
out of a spec that does not set them; which due probes start (never two of one app, a
namespace at most its share of the pool, the most overdue first) and when an app is due again
(the period kept from when it was due, no catch-up burst).
"""

from __future__ import annotations

import pytest

from apprelease.api import identity
from apprelease.host.liveness import Due, Tracker, next_due, record, start_now
from support.hosts import app_release

pytestmark = pytest.mark.unit


def run(outcomes: list[bool], threshold: int = 3) -> list[tuple[bool, bool, int, bool]]:
    """(restart, failing, restarts, changed) after each probe outcome."""
    tracker, seen = Tracker("r1"), []
    for passed in outcomes:
        out = record(tracker, "r1", passed, "detail", threshold)
        tracker = out.tracker
        seen.append((out.restart, tracker.failing, tracker.restarts, out.changed))
    return seen


@pytest.mark.parametrize(
    ("outcomes", "expected"),
    [
        pytest.param([True, True], [(False, False, 0, False), (False, False, 0, False)], id="healthy"),
        pytest.param([False, True], [(False, True, 0, True), (False, False, 0, True)], id="one-blip"),
        pytest.param([False, False, False], [(False, True, 0, True), (False, True, 0, False), (True, True, 1, True)],
                     id="threshold-restarts"),
        pytest.param([False] * 6, [(False, True, 0, True), (False, True, 0, False), (True, True, 1, True),
                                   (False, True, 1, False), (False, True, 1, False), (True, True, 2, True)],
                     id="count-resets-after-a-restart"),
        pytest.param([False, False, False, True], [(False, True, 0, True), (False, True, 0, False),
                                                   (True, True, 1, True), (False, False, 1, True)],
                     id="restart-heals"),
    ],
)
def test_record(outcomes, expected):
    assert run(outcomes) == expected


def test_threshold_one_restarts_at_the_first_failure():
    assert run([False], threshold=1) == [(True, True, 1, True)]


def test_a_new_live_revision_starts_afresh():
    tracker = record(Tracker("r1"), "r1", False, "x", 3).tracker
    out = record(tracker, "r2", False, "y", 3)
    assert (out.tracker.revision, out.tracker.failures, out.tracker.restarts) == ("r2", 1, 0)


def test_liveness_settings_are_not_part_of_the_revision():
    plain = app_release("http://index.invalid/simple", "1.0.0", port=8080)
    check = plain.spec.health_check.model_copy(update={"period_seconds": 5, "failure_threshold": 2,
                                                       "probe_timeout_seconds": 3})
    spec = plain.spec.model_copy(update={"health_check": check})
    assert identity.revision(spec) == identity.revision(plain.spec)
    assert "periodSeconds" not in plain.spec.health_check.wire()
    assert "failureThreshold" not in plain.spec.health_check.wire()


def started(due: list[Due], running: dict[str, str], slots: int = 8, per_tenant: int = 2, now: float = 10.0) -> list[str]:
    return [d.key for d in start_now(due, running, now, slots, per_tenant)]


@pytest.mark.parametrize(
    ("due", "running", "slots", "per_tenant", "expected"),
    [
        pytest.param([Due("a/x", "a", 9.0), Due("b/y", "b", 11.0)], {}, 8, 2, ["a/x"], id="only-those-due"),
        pytest.param([Due("a/x", "a", 0.0)], {}, 8, 2, ["a/x"], id="never-probed-is-due"),
        pytest.param([Due("a/x", "a", 5.0)], {"a/x": "a"}, 8, 2, [], id="never-two-of-one-app"),
        pytest.param([Due("a/x", "a", 9.0), Due("b/y", "b", 3.0), Due("c/z", "c", 6.0)], {}, 8, 2,
                     ["b/y", "c/z", "a/x"], id="most-overdue-first"),
        pytest.param([Due("a/x", "a", 9.0), Due("b/y", "b", 3.0), Due("c/z", "c", 6.0)], {}, 2, 2,
                     ["b/y", "c/z"], id="at-most-the-free-slots"),
        pytest.param([Due("a/x", "a", 9.0)], {}, 0, 2, [], id="no-free-slot"),
        # a tenant's hanging apps hold its share; another tenant's due probe still starts
        pytest.param([Due("evil/3", "evil", 1.0), Due("evil/4", "evil", 1.5), Due("good/web", "good", 9.0)],
                     {"evil/1": "evil", "evil/2": "evil"}, 6, 2, ["good/web"], id="tenant-at-its-share"),
        pytest.param([Due("evil/1", "evil", 1.0), Due("evil/2", "evil", 1.5), Due("evil/3", "evil", 2.0),
                      Due("good/web", "good", 9.0)], {}, 8, 2, ["evil/1", "evil/2", "good/web"],
                     id="tenant-share-within-one-tick"),
    ],
)
def test_start_now(due, running, slots, per_tenant, expected):
    assert started(due, running, slots, per_tenant) == expected


@pytest.mark.parametrize(
    ("due_at", "now", "period", "expected"),
    [
        pytest.param(100.0, 100.0, 10, 110.0, id="on-time"),
        pytest.param(100.0, 100.4, 10, 110.0, id="a-tick-late-keeps-the-period"),
        pytest.param(100.0, 107.0, 10, 110.0, id="waited-for-a-slot-keeps-the-period"),
        pytest.param(100.0, 112.0, 10, 122.0, id="more-than-a-period-late-no-burst"),
        pytest.param(0.0, 5000.0, 1, 5001.0, id="first-probe"),
    ],
)
def test_next_due(due_at, now, period, expected):
    assert next_due(due_at, now, period) == expected
