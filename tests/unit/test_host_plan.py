"""The agent's pure planning step: desired release + observed host -> ordered actions.

Covers: first deploy; no-op when converged (reconcile twice does nothing the second time);
a new revision rotates in DESIGN.md's order; proxy-only and runtime-only changes; rollback to
a release still on disk; convergence after a crash between any two rotation steps; a failed
revision is terminal (no restart loop); removal; which releases GC collects; the live phase
each step begins (host/progress.py) follows the HostRelease phases' order through any plan.
"""

from __future__ import annotations

from typing import get_args

import pytest

from apprelease.api.models import HostPhase
from apprelease.host.progress import PHASE_OF_STEP

from apprelease.host.plan import (
    Desired,
    Observed,
    collectable,
    plan_release,
    plan_removal,
)

pytestmark = pytest.mark.unit

V2 = Desired(build_id="b2", revision="r2", user="web", site="site-v2")
SERVING_V1 = Observed(
    releases=frozenset({"b1"}), current_build="b1", live_revision="r1", running=frozenset({"r1"}), site="site-v2"
)

CASES = [
    (
        "first-deploy",
        Observed(),
        ["ensure-user", "ensure-release", "start-watcher", "health-check", "write-site", "switch-live", "swap-current"],
    ),
    (
        "converged-does-nothing",
        Observed(releases=frozenset({"b2"}), current_build="b2", live_revision="r2", running=frozenset({"r2"}), site="site-v2"),
        [],
    ),
    (
        "new-revision-rotates",
        SERVING_V1,
        ["ensure-user", "ensure-release", "start-watcher", "health-check", "switch-live", "settle",
         "stop-watcher", "swap-current"],
    ),
    (
        "proxy-only-change-rewrites-site-only",
        Observed(releases=frozenset({"b2"}), current_build="b2", live_revision="r2", running=frozenset({"r2"}), site="old-site"),
        ["write-site"],
    ),
    (
        "crash-after-start-before-health",
        Observed(releases=frozenset({"b1", "b2"}), current_build="b1", live_revision="r1",
                 running=frozenset({"r1", "r2"}), site="site-v2"),
        ["ensure-user", "ensure-release", "health-check", "switch-live", "settle", "stop-watcher", "swap-current"],
    ),
    (
        "crash-after-switch-before-stop",
        Observed(releases=frozenset({"b1", "b2"}), current_build="b1", live_revision="r2",
                 running=frozenset({"r1", "r2"}), site="site-v2"),
        ["stop-watcher", "swap-current"],
    ),
    (
        "crash-after-stop-before-swap",
        Observed(releases=frozenset({"b1", "b2"}), current_build="b1", live_revision="r2",
                 running=frozenset({"r2"}), site="site-v2"),
        ["swap-current"],
    ),
    (
        "crash-mid-build-cleans-temp",
        Observed(temp_builds=(".tmp-b2-x",), releases=frozenset({"b1"}), current_build="b1", live_revision="r1",
                 running=frozenset({"r1"}), site="site-v2"),
        ["clean-temp-builds", "ensure-user", "ensure-release", "start-watcher", "health-check", "switch-live",
         "settle", "stop-watcher", "swap-current"],
    ),
    (
        "watcher-died-while-live-is-restarted",
        Observed(releases=frozenset({"b2"}), current_build="b2", live_revision="r2", running=frozenset(), site="site-v2"),
        ["ensure-user", "ensure-release", "start-watcher", "health-check"],
    ),
    (
        "stopped-watcher-is-restarted",
        Observed(releases=frozenset({"b2"}), current_build="b2", live_revision="r2", running=frozenset({"r2"}),
                 inactive=frozenset({"r2"}), site="site-v2"),
        ["ensure-user", "ensure-release", "start-watcher", "health-check"],
    ),
    (
        "failed-revision-is-terminal",
        Observed(**{**SERVING_V1.__dict__, "failed_revision": "r2"}),
        ["report-failed"],
    ),
    (
        "failed-revision-still-running-is-stopped",
        Observed(**{**SERVING_V1.__dict__, "failed_revision": "r2", "running": frozenset({"r1", "r2"})}),
        ["stop-watcher", "report-failed"],
    ),
    (
        "gc-collects-candidates",
        Observed(**{**SERVING_V1.__dict__, "live_revision": "r2", "running": frozenset({"r2"}),
                    "current_build": "b2", "gc_candidates": ("b0",)}),
        ["collect-release"],
    ),
]


@pytest.mark.parametrize(("observed", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_plan_release(observed, expected):
    assert plan_release(V2, observed).kinds() == expected


def test_rotation_targets_the_right_revisions():
    plan = plan_release(V2, SERVING_V1)
    targets = {a.kind: a.target for a in plan.actions}
    assert targets["start-watcher"] == "r2" and targets["switch-live"] == "r2"
    assert targets["stop-watcher"] == "r1" and targets["swap-current"] == "b2"
    assert str(plan).startswith("ensure-user(web) -> ensure-release(b2)")


def test_rollback_to_release_on_disk_still_goes_through_the_health_gate():
    on_disk = Observed(**{**SERVING_V1.__dict__, "releases": frozenset({"b1", "b2"})})
    assert "health-check" in plan_release(V2, on_disk).kinds()


def test_never_collects_the_desired_release():
    observed = Observed(**{**SERVING_V1.__dict__, "gc_candidates": ("b2", "b0")})
    assert [a.target for a in plan_release(V2, observed).actions if a.kind == "collect-release"] == ["b0"]


@pytest.mark.parametrize(
    ("observed", "expected"),
    [
        (SERVING_V1, ["remove-site", "stop-watcher", "remove-app-dir"]),
        (Observed(), []),
    ],
    ids=["serving-app", "nothing-there"],
)
def test_plan_removal(observed, expected):
    assert plan_removal(observed).kinds() == expected


@pytest.mark.parametrize(
    ("recency", "serving", "limit", "expected"),
    [
        (["b5", "b4", "b3", "b2", "b1"], "b5", 2, ["b2", "b1"]),
        (["b5", "b4", "b3"], "b5", 5, []),
        (["b1", "b5", "b4", "b3"], "b3", 1, ["b5", "b4"]),  # rolled back to b3: previous b1 is kept
        (["b2", "b1"], "b1", 0, []),  # a limit below 1 still keeps the previous release
    ],
    ids=["beyond-limit", "under-limit", "previous-kept-after-rollback", "limit-floor"],
)
def test_collectable(recency, serving, limit, expected):
    assert collectable(recency, serving=serving, limit=limit) == expected


@pytest.mark.parametrize(("observed", "expected"), [(o, e) for _, o, e in CASES], ids=[c[0] for c in CASES])
def test_phases_of_a_plan_follow_the_phase_order(observed, expected):
    """Whatever the plan, the phases its steps announce never go back (e.g. Draining, then Starting)."""
    order = get_args(HostPhase)
    announced = [PHASE_OF_STEP[kind] for kind in plan_release(V2, observed).kinds() if kind in PHASE_OF_STEP]
    assert announced == sorted(announced, key=order.index)


def test_a_rotation_announces_every_in_progress_phase():
    kinds = plan_release(V2, SERVING_V1).kinds()
    phases = list(dict.fromkeys(PHASE_OF_STEP[k] for k in kinds if k in PHASE_OF_STEP))
    assert phases == ["Building", "Starting", "HealthChecking", "Switching", "Draining"]


# -- release commands and process types ----------------------------------------------------

MIGRATING = Desired(build_id="b2", revision="r2", user="web", site="site-v2", release_command=True,
                    processes=frozenset({"worker-0", "worker-1"}))


def test_release_command_runs_before_the_new_workers_and_processes_start_before_the_switch():
    kinds = plan_release(MIGRATING, SERVING_V1).kinds()
    assert kinds == ["ensure-user", "ensure-release", "run-release-command", "start-watcher", "health-check",
                     "start-processes", "switch-live", "settle", "stop-watcher", "swap-current"]


def test_release_command_is_not_run_again_for_a_revision_that_ran_it_or_served_here():
    observed = Observed(releases=frozenset({"b1", "b2"}), current_build="b1", live_revision="r1",
                        running=frozenset({"r1"}), site="site-v2", released=frozenset({"r2"}))
    assert "run-release-command" not in plan_release(MIGRATING, observed).kinds()


def test_release_command_only_on_hosts_asked_to_run_it():
    other_host = Desired(**{**MIGRATING.__dict__, "release_command": False})
    assert "run-release-command" not in plan_release(other_host, SERVING_V1).kinds()


def test_old_revision_process_types_stop_with_it_even_without_a_web_watcher():
    # A crash left r1's worker running although its web watcher is gone.
    observed = Observed(releases=frozenset({"b2"}), current_build="b2", live_revision="r2",
                        running=frozenset({"r2"}), site="site-v2", released=frozenset({"r2"}),
                        processes=frozenset({("r2", "worker-0"), ("r2", "worker-1"), ("r1", "worker-0")}),
                        process_revisions=frozenset({"r1", "r2"}))
    assert plan_release(MIGRATING, observed).kinds() == ["stop-watcher"]
    assert str(plan_release(MIGRATING, observed).actions[0]) == "stop-watcher(r1)"


def test_a_process_type_given_up_on_is_started_again_on_the_live_revision():
    observed = Observed(releases=frozenset({"b2"}), current_build="b2", live_revision="r2",
                        running=frozenset({"r2"}), site="site-v2", released=frozenset({"r2"}),
                        processes=frozenset({("r2", "worker-0")}), process_revisions=frozenset({"r2"}))
    assert plan_release(MIGRATING, observed).kinds() == ["start-processes"]


def test_removal_stops_process_types_too():
    observed = Observed(live_revision="r2", running=frozenset(), process_revisions=frozenset({"r2"}))
    assert [str(a) for a in plan_removal(observed).actions] == ["stop-watcher(r2)", "remove-app-dir"]


def test_failed_revision_stops_its_process_types():
    observed = Observed(live_revision="r1", running=frozenset({"r1"}), process_revisions=frozenset({"r2"}),
                        failed_revision="r2")
    assert [str(a) for a in plan_release(MIGRATING, observed).actions] == ["stop-watcher(r2)", "report-failed(r2)"]
