"""The agent's pure planning step: desired release + observed host -> ordered actions.

Covers: first deploy; no-op when converged (reconcile twice does nothing the second time);
a new revision rotates in DESIGN.md's order; proxy-only and runtime-only changes; rollback to
a release still on disk; convergence after a crash between any two rotation steps; a failed
revision is terminal (no restart loop); removal; which releases GC collects; the live phase
each step begins (host/progress.py) follows the HostRelease phases' order through any plan;
nginx's static links (static-live, static-previous) name the new and the previous build before
the switch, before a site that names them, after a site nginx may refuse, on hosts from before
them too, and GC never takes the build static-previous names; the serving build's bytecode is
compiled after the switch (before GC), once, and never for a failed revision.
"""

from __future__ import annotations

from typing import get_args

import pytest

from apprelease.api.models import HostPhase
from apprelease.host.progress import PHASE_OF_STEP

from apprelease.host.plan import (
    COLLECT,
    POINT_STATIC,
    POINT_STATIC_PREVIOUS,
    Desired,
    Observed,
    collectable,
    plan_release,
    plan_removal,
)

pytestmark = pytest.mark.unit

V2 = Desired(build_id="b2", revision="r2", user="web", site="site-v2")
SERVING_V1 = Observed(
    releases=frozenset({"b1"}), current_build="b1", static_live="b1", static_previous="b0", live_revision="r1",
    running=frozenset({"r1"}), site="site-v2",
)
SERVING_V2 = dict(releases=frozenset({"b2"}), current_build="b2", static_live="b2", live_revision="r2",
                  running=frozenset({"r2"}), site="site-v2")
ROTATE = ["ensure-user", "ensure-release", "start-watcher", "health-check", "point-static-previous", "point-static",
          "switch-live", "settle", "stop-watcher", "swap-current"]

CASES = [
    (
        "first-deploy",
        Observed(),
        ["ensure-user", "ensure-release", "start-watcher", "health-check", "point-static", "write-site",
         "switch-live", "swap-current"],
    ),
    (
        "converged-does-nothing",
        Observed(**SERVING_V2),
        [],
    ),
    (
        "new-revision-rotates",
        SERVING_V1,
        ROTATE,
    ),
    (
        "proxy-only-change-rewrites-site-only",
        Observed(**{**SERVING_V2, "site": "old-site"}),
        ["write-site"],
    ),
    (
        # The links move only once nginx took the new site: a refused site leaves them naming the serving build.
        "rotation-with-a-new-site-points-static-after-the-site",
        Observed(**{**SERVING_V1.__dict__, "site": "old-site"}),
        [*ROTATE[:4], "write-site", *ROTATE[4:]],
    ),
    (
        "crash-after-start-before-health",
        Observed(**{**SERVING_V1.__dict__, "releases": frozenset({"b1", "b2"}), "running": frozenset({"r1", "r2"})}),
        [k for k in ROTATE if k != "start-watcher"],
    ),
    (
        "crash-between-the-static-links",
        Observed(**{**SERVING_V1.__dict__, "releases": frozenset({"b1", "b2"}), "running": frozenset({"r1", "r2"}),
                    "static_previous": "b1"}),
        [k for k in ROTATE if k != "start-watcher"],
    ),
    (
        "crash-after-static-before-switch",
        Observed(**{**SERVING_V1.__dict__, "releases": frozenset({"b1", "b2"}), "running": frozenset({"r1", "r2"}),
                    "static_live": "b2", "static_previous": "b1"}),
        ["ensure-user", "ensure-release", "health-check", "switch-live", "settle", "stop-watcher", "swap-current"],
    ),
    (
        "crash-after-switch-before-stop",
        Observed(releases=frozenset({"b1", "b2"}), current_build="b1", static_live="b2", static_previous="b1",
                 live_revision="r2", running=frozenset({"r1", "r2"}), site="site-v2"),
        ["stop-watcher", "swap-current"],
    ),
    (
        "crash-after-stop-before-swap",
        Observed(releases=frozenset({"b1", "b2"}), current_build="b1", static_live="b2", static_previous="b1",
                 live_revision="r2", running=frozenset({"r2"}), site="site-v2"),
        ["swap-current"],
    ),
    (
        "crash-mid-build-cleans-temp",
        Observed(**{**SERVING_V1.__dict__, "temp_builds": (".tmp-b2-x",)}),
        ["clean-temp-builds", *ROTATE],
    ),
    (
        "watcher-died-while-live-is-restarted",
        Observed(**{**SERVING_V2, "running": frozenset()}),
        ["ensure-user", "ensure-release", "start-watcher", "health-check"],
    ),
    (
        "stopped-watcher-is-restarted",
        Observed(**{**SERVING_V2, "inactive": frozenset({"r2"})}),
        ["ensure-user", "ensure-release", "start-watcher", "health-check"],
    ),
    (
        # A host from before the links serves static files from `current`: the links come
        # first, then the site that names them, so no asset of the serving build goes missing.
        "host-from-before-the-links-points-them-before-the-new-site",
        Observed(**{**SERVING_V2, "static_live": None, "site": "old-site"}),
        ["point-static", "write-site"],
    ),
    (
        "host-from-before-the-links-rotating",
        Observed(**{**SERVING_V1.__dict__, "static_live": None, "static_previous": None, "site": "old-site"}),
        [*ROTATE[:4], "point-static-previous", "point-static", "write-site", *ROTATE[6:]],
    ),
    (
        "static-live-moved-off-the-serving-build-is-pointed-back",
        Observed(**{**SERVING_V2, "static_live": "b1"}),
        ["point-static-previous", "point-static"],
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
        Observed(**{**SERVING_V2, "static_previous": "b1", "gc_candidates": ("b0",)}),
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
    assert targets["point-static-previous"] == "b1" and targets["point-static"] == "b2"
    assert str(plan).startswith("ensure-user(web) -> ensure-release(b2)")


def test_rollback_to_release_on_disk_still_goes_through_the_health_gate():
    on_disk = Observed(**{**SERVING_V1.__dict__, "releases": frozenset({"b1", "b2"})})
    assert "health-check" in plan_release(V2, on_disk).kinds()


def test_never_collects_the_desired_release():
    observed = Observed(**{**SERVING_V1.__dict__, "gc_candidates": ("b2", "b0")})
    assert [a.target for a in plan_release(V2, observed).actions if a.kind == "collect-release"] == ["b0"]


def collected(observed: Observed) -> list[str]:
    return [a.target for a in plan_release(V2, observed).actions if a.kind == COLLECT]


def test_never_collects_the_build_static_previous_names():
    # Converged: static-previous names b1 (pages rendered by the old revision still ask for its assets).
    assert collected(Observed(**{**SERVING_V2, "static_previous": "b1", "gc_candidates": ("b1", "b0")})) == ["b0"]
    # Rotating from b1: b1 becomes static-previous and stays; b0, which it named before, may go.
    assert collected(Observed(**{**SERVING_V1.__dict__, "gc_candidates": ("b1", "b0")})) == ["b0"]


@pytest.mark.parametrize("limit", [1, 2])
def test_static_links_name_builds_on_disk_through_rotations_and_rollbacks(limit):
    """Apply plans to a model host as core would (served order kept as state.py keeps it):
    the builds both links name are on disk after every rotation, whatever the history limit."""
    on_disk: set[str] = set()
    served: list[str] = []  # most recently served first
    links: dict[str, str | None] = {"live": None, "previous": None, "current": None}
    for build in ["b1", "b2", "b3", "b2", "b4", "b5", "b1", "b5"]:
        on_disk.add(build)
        recency = [build, *[b for b in served if b != build and b in on_disk]]
        recency += sorted(on_disk - set(recency))
        observed = Observed(
            releases=frozenset(on_disk), current_build=links["current"], static_live=links["live"],
            static_previous=links["previous"], live_revision=f"r{links['current']}" if links["current"] else None,
            running=frozenset({f"r{links['current']}"}) if links["current"] else frozenset(), site="site",
            gc_candidates=tuple(collectable(recency, serving=build, limit=limit)),
        )
        for action in plan_release(Desired(build, f"r{build}", "web", "site"), observed).actions:
            if action.kind == POINT_STATIC_PREVIOUS:
                links["previous"] = action.target
            elif action.kind == POINT_STATIC:
                links["live"] = action.target
            elif action.kind == "swap-current":
                links["current"] = action.target
            elif action.kind == COLLECT:
                on_disk.discard(action.target)
        served = [build, *[b for b in served if b != build]]
        assert links["live"] == build and links["current"] == build
        if len(served) > 1:  # static-previous names the build served just before, and it is on disk
            assert links["previous"] == served[1] and links["previous"] in on_disk, (build, links, on_disk)


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
                     "start-processes", "point-static-previous", "point-static", "switch-live", "settle",
                     "stop-watcher", "swap-current"]


def test_release_command_is_not_run_again_for_a_revision_that_ran_it_or_served_here():
    observed = Observed(releases=frozenset({"b1", "b2"}), current_build="b1", live_revision="r1",
                        running=frozenset({"r1"}), site="site-v2", released=frozenset({"r2"}))
    assert "run-release-command" not in plan_release(MIGRATING, observed).kinds()


def test_release_command_only_on_hosts_asked_to_run_it():
    other_host = Desired(**{**MIGRATING.__dict__, "release_command": False})
    assert "run-release-command" not in plan_release(other_host, SERVING_V1).kinds()


def test_old_revision_process_types_stop_with_it_even_without_a_web_watcher():
    # A crash left r1's worker running although its web watcher is gone.
    observed = Observed(releases=frozenset({"b2"}), current_build="b2", static_live="b2", live_revision="r2",
                        running=frozenset({"r2"}), site="site-v2", released=frozenset({"r2"}),
                        processes=frozenset({("r2", "worker-0"), ("r2", "worker-1"), ("r1", "worker-0")}),
                        process_revisions=frozenset({"r1", "r2"}))
    assert plan_release(MIGRATING, observed).kinds() == ["stop-watcher"]
    assert str(plan_release(MIGRATING, observed).actions[0]) == "stop-watcher(r1)"


def test_a_process_type_given_up_on_is_started_again_on_the_live_revision():
    observed = Observed(releases=frozenset({"b2"}), current_build="b2", static_live="b2", live_revision="r2",
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


# -- bytecode after the switch ---------------------------------------------------------------

def test_bytecode_is_compiled_after_the_switch_and_before_gc():
    observed = Observed(**{**SERVING_V1.__dict__, "needs_bytecode": frozenset({"b2"}), "gc_candidates": ("b0",)})
    kinds = plan_release(V2, observed).kinds()
    assert kinds == [*ROTATE, "compile-bytecode", "collect-release"]


def test_a_converged_host_only_compiles_what_it_lacks_then_nothing():
    assert plan_release(V2, Observed(**SERVING_V2, needs_bytecode=frozenset({"b2"}))).kinds() == ["compile-bytecode"]
    assert not plan_release(V2, Observed(**SERVING_V2, needs_bytecode=frozenset({"b1"})))  # not the serving build


def test_a_failed_revision_compiles_nothing():
    observed = Observed(**{**SERVING_V1.__dict__, "failed_revision": "r2", "needs_bytecode": frozenset({"b2"})})
    assert "compile-bytecode" not in plan_release(V2, observed).kinds()
