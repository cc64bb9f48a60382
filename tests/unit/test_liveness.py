"""Liveness decisions (host/liveness.py) and how liveness settings relate to a revision.

Covers: failures in a row up to failureThreshold restart once and reset the count; a pass
ends the failure; a new live revision starts afresh; which outcomes are worth a status write;
liveness settings are not part of the revision (changing them rotates nothing) and are left
out of a spec that does not set them.
"""

from __future__ import annotations

import pytest

from apprelease.api import identity
from apprelease.host.liveness import Tracker, record
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
