"""Leader election's pure parts (controller/leader.py); the Lease against a real apiserver is
tests/e2e/test_leader.py.

Covers: what a candidate does with the Lease it read (create, renew, take a released or
expired one, wait); the timing parameters must be ordered; MicroTime formatting.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from apprelease.controller.leader import Decision, LeaseConfig, Observed, decide, micro_time

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("observed", "unchanged_for", "expected"), [
    (None, 0.0, Decision.CREATE),
    (Observed("me", "t1", 0), 0.0, Decision.RENEW),
    (Observed("me", "t1", 0), 99.0, Decision.RENEW),
    (Observed("", "t1", 3), 0.0, Decision.TAKE),
    (Observed("other", "t1", 0), 14.9, Decision.WAIT),
    (Observed("other", "t1", 0), 15.0, Decision.TAKE),
], ids=["no-lease", "ours", "ours-stale", "released", "held", "expired"])
def test_decide(observed, unchanged_for, expected):
    assert decide(observed, unchanged_for, "me", 15.0) is expected


def test_timings_must_be_ordered():
    LeaseConfig(namespace="ns", identity="me")
    with pytest.raises(ValueError):
        LeaseConfig(namespace="ns", identity="me", lease_duration=10, renew_deadline=10)


def test_micro_time_has_six_fraction_digits():
    assert micro_time(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2026-01-02T03:04:05.000000Z"
