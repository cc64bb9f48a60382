"""What a host is doing right now, for whoever shows it: the phases of a rotation.

`core.reconcile` calls a `Progress` callback as each step begins, with the HostRelease phase
that step belongs to and a sentence for people; a venv build also reports its stages
(resolving, downloading, installing) as uv prints them. The in-cluster agent passes a
throttled writer of the HostRelease status (agent/phases.py); the standalone CLI and tests
pass nothing. Injected, like `Recorder`, so the data plane never imports the agent.

The mapping from steps to phases is pure and lives here, next to the step names it reads.
"""

from __future__ import annotations

from collections.abc import Callable

from . import plan

# (phase, message) -> None. Must not raise and must not block: it runs inside the step.
Progress = Callable[[str, str], None]

BUILDING, STARTING, HEALTH_CHECKING, SWITCHING, DRAINING = (
    "Building", "Starting", "HealthChecking", "Switching", "Draining")

# Steps without a phase (ensure-user, swap-current, collect-release, ...) take milliseconds and
# belong to whatever phase came before them. ensure-release is Building only when a venv is
# really built: the builder announces it, so reusing a release on disk (a rollback) never
# shows Building.
PHASE_OF_STEP: dict[str, str] = {
    plan.ENSURE_RELEASE: BUILDING,
    plan.RUN_RELEASE: STARTING,  # the message says it is the release command
    plan.START: STARTING,
    plan.HEALTH: HEALTH_CHECKING,
    plan.START_PROCESSES: STARTING,
    plan.WRITE_SITE: SWITCHING,
    plan.SWITCH: SWITCHING,
    plan.SETTLE: DRAINING,
    plan.STOP: DRAINING,
}


def no_progress(phase: str, message: str) -> None:
    """The default: nobody is listening."""
