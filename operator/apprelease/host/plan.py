"""Deciding what a host must do: desired spec + observed host state -> ordered actions.

Pure and side-effect free: `core` observes the host, calls `plan_release` or `plan_removal`,
and applies the actions one by one. Because the plan is computed from what is on the host
(symlinks, supervisor watchers, nginx config) and not from memory, it converges after a
crash at any step, and a second reconcile of a converged host plans nothing.

The rotation order is DESIGN.md's: build/reuse venv -> release command (once per revision,
never on a return to a revision that served here) -> start new watcher -> health gate ->
start its process types -> point the static links -> switch the live socket link -> settle,
stop old watchers (web and process types) -> swap `current` -> compile the serving build's
bytecode if it has none yet (host/bytecode.py: off the critical path, after the switch) -> GC.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Observed:
    """What is on one host for one app."""

    releases: frozenset[str] = frozenset()  # complete buildIds on disk
    temp_builds: tuple[str, ...] = ()  # leftovers of interrupted builds
    current_build: str | None = None  # target of the `current` link
    static_live: str | None = None  # target of the `static-live` link (None on hosts from before it)
    static_previous: str | None = None  # target of the `static-previous` link
    live_revision: str | None = None  # target of run/live.sock
    running: frozenset[str] = frozenset()  # revisions with a watcher in the supervisor
    inactive: frozenset[str] = frozenset()  # of those, the ones stopped or given up on (need a restart)
    site: str | None = None  # the live nginx site config text
    failed_revision: str | None = None  # a revision whose boot failed (terminal until the spec changes)
    gc_candidates: tuple[str, ...] = ()  # buildIds GC would remove (computed from release records)
    released: frozenset[str] = frozenset()  # revisions whose release command ran here, or that served here
    processes: frozenset[tuple[str, str]] = frozenset()  # (revision, instance) of process watchers running
    process_revisions: frozenset[str] = frozenset()  # revisions with any process watcher, running or not
    needs_bytecode: frozenset[str] = frozenset()  # buildIds (on disk or about to be built) without compiled bytecode


@dataclass(frozen=True)
class Desired:
    build_id: str
    revision: str
    user: str
    site: str
    release_command: bool = False  # this host runs the spec's release command
    processes: frozenset[str] = frozenset()  # process-type instances the revision runs, e.g. worker-0


@dataclass(frozen=True)
class Action:
    """One step; `kind` names what the executor does, `target` what it does it to."""

    kind: str
    target: str = ""

    def __str__(self) -> str:
        return f"{self.kind}({self.target})" if self.target else self.kind


CLEAN_TEMP = "clean-temp-builds"
ENSURE_USER = "ensure-user"
ENSURE_RELEASE = "ensure-release"
RUN_RELEASE = "run-release-command"
START = "start-watcher"
HEALTH = "health-check"
START_PROCESSES = "start-processes"
WRITE_SITE = "write-site"
REMOVE_SITE = "remove-site"
SWITCH = "switch-live"
POINT_STATIC_PREVIOUS = "point-static-previous"
POINT_STATIC = "point-static"
SETTLE = "settle"
STOP = "stop-watcher"
SWAP_CURRENT = "swap-current"
COMPILE_BYTECODE = "compile-bytecode"
COLLECT = "collect-release"
REMOVE_APP_DIR = "remove-app-dir"
REPORT_FAILED = "report-failed"


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...] = field(default_factory=tuple)

    def kinds(self) -> list[str]:
        return [a.kind for a in self.actions]

    def __bool__(self) -> bool:
        return bool(self.actions)

    def __str__(self) -> str:
        return " -> ".join(map(str, self.actions)) or "nothing to do"


def plan_release(desired: Desired, observed: Observed) -> Plan:
    started = observed.running | observed.process_revisions
    if observed.failed_revision == desired.revision and observed.live_revision != desired.revision:
        # A boot failure is terminal for that revision: no restart loop, the old one keeps serving.
        actions = [Action(STOP, desired.revision)] if desired.revision in started else []
        return Plan((*actions, Action(REPORT_FAILED, desired.revision)))

    actions: list[Action] = []
    if observed.temp_builds:
        actions.append(Action(CLEAN_TEMP))
    is_live = observed.live_revision == desired.revision
    needs_workers = desired.revision not in observed.running or desired.revision in observed.inactive
    if needs_workers or not is_live:
        actions.append(Action(ENSURE_USER, desired.user))
        actions.append(Action(ENSURE_RELEASE, desired.build_id))
        if desired.release_command and not is_live and desired.revision not in observed.released:
            actions.append(Action(RUN_RELEASE, desired.revision))
    if needs_workers:
        actions.append(Action(START, desired.revision))
    if needs_workers or not is_live:
        actions.append(Action(HEALTH, desired.revision))
    if desired.processes - {i for r, i in observed.processes if r == desired.revision}:
        actions.append(Action(START_PROCESSES, desired.revision))
    static, previous = _point_static(desired, observed)
    # Before a site that names the links when they are missing (first deploy, a host from
    # before them) or nothing switches; else right before the switch, so a site nginx refuses
    # leaves them naming the serving build.
    static_first = observed.static_live is None or is_live
    if static_first:
        actions.extend(static)
    if observed.site != desired.site:
        actions.append(Action(WRITE_SITE))
    if not is_live:
        if not static_first:
            actions.extend(static)
        actions.append(Action(SWITCH, desired.revision))
    old = sorted(started - {desired.revision})
    if old:
        if not is_live:
            actions.append(Action(SETTLE))
        actions.extend(Action(STOP, r) for r in old)
    if observed.current_build != desired.build_id:
        actions.append(Action(SWAP_CURRENT, desired.build_id))
    if desired.build_id in observed.needs_bytecode:
        actions.append(Action(COMPILE_BYTECODE, desired.build_id))
    # nginx serves assets from static-previous: its build stays, whatever the history limit says.
    actions.extend(Action(COLLECT, b) for b in observed.gc_candidates if b not in (desired.build_id, previous))
    return Plan(tuple(actions))


def _point_static(desired: Desired, observed: Observed) -> tuple[list[Action], str | None]:
    """Actions that make nginx's static links name the new build first, the one before second.

    Returns them and the build static-previous names once they ran (never to be collected).
    `static-live` names the serving build on a converged host; where it is missing, `current`
    does (a host from before the links, whose nginx served static files from `current`).
    static-previous is pointed first: a crash between the two renames leaves both reachable.
    """
    if observed.static_live == desired.build_id:
        return [], observed.static_previous
    keep = observed.static_live or observed.current_build
    if keep is None or keep == desired.build_id:
        return [Action(POINT_STATIC, desired.build_id)], observed.static_previous
    return [Action(POINT_STATIC_PREVIOUS, keep), Action(POINT_STATIC, desired.build_id)], keep


def plan_removal(observed: Observed) -> Plan:
    """Stop the app on this host: nginx first (no new requests), then its watchers, then files."""
    actions: list[Action] = []
    if observed.site is not None:
        actions.append(Action(REMOVE_SITE))
    actions.extend(Action(STOP, r) for r in sorted(observed.running | observed.process_revisions))
    if observed.releases or observed.temp_builds or observed.current_build or observed.live_revision:
        actions.append(Action(REMOVE_APP_DIR))
    return Plan(tuple(actions))


def collectable(releases_by_recency: list[str], *, serving: str, limit: int) -> list[str]:
    """buildIds to remove: all but the serving one and the `limit` most recently used others.

    `releases_by_recency` is ordered most recently served (or built) first, so the previous
    release is always kept: `limit` is at least 1.
    """
    others = [b for b in releases_by_recency if b != serving]
    return others[max(limit, 1):]
