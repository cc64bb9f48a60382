"""Reconciling one host towards one HostRelease: observe, plan, apply, report.

Called by `apprelease agent reconcile` and by the in-cluster agent loop. `observe` reads the
host (release store, symlinks, supervisor, nginx, the small state file); `plan.plan_release`
decides; `_Apply` performs the actions through the executors and stops at the first failure,
leaving the serving revision untouched. The returned status is what the HostRelease shows.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import shutil
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..api import claims, envrefs
from ..api.models import (
    CONFLICT_REASON,
    BuildRecord,
    HostRelease,
    HostReleaseSpec,
    HostReleaseStatus,
    ProcessStatus,
    Proxy,
    ReleaseCommandRecord,
)
from . import builder, bytecode, drain, health, plan, release_command, state, units, users
from .progress import BUILDING, PHASE_OF_STEP, Progress, no_progress
from .executor import LocalExecutor
from .layout import (
    TMP_PREFIX,
    AppPaths,
    HostLayout,
    app_key,
    parse_process_watcher_name,
    parse_watcher_name,
    process_instances,
    process_watcher_name,
    watcher_name,
)
from .proxy.nginx import Nginx, ProxyConfigRejected
from .proxy.render import site_claims
from .recorder import Recorder, SilentRecorder
from .servers import UnsupportedServer
from .supervisors.base import Supervisor
from .systemd import Systemd
from .watchers import ProgramNotFound, app_environment, process_watchers, program_argv, watcher_for

log = logging.getLogger(__name__)

LOG_TAIL_LINES = 30
PROCESS_START_WAIT_SECONDS = 5
# gunicorn's own progress lines ("Starting gunicorn", "Booting worker"): never the reason a
# process ended, and the first thing a supervisor's restart of it writes.
GUNICORN_PROGRESS = re.compile(r"^\[[^]]+\] \[\d+\] \[(INFO|DEBUG)\] ")
# gunicorn's last line when it cannot bind says only "Can't connect to <addr>"; the reason
# (permission denied, address in use…) is on its "connection to <addr> failed: …" lines before.
GUNICORN_BIND_GAVE_UP = re.compile(r"\[ERROR\] Can't connect to ")
GUNICORN_BIND_FAILED = re.compile(r"\[ERROR\] (connection to .* failed: .*)$")

# (namespace, secret name) -> (certificate PEM, key PEM); raises KeyError when absent.
TLSSource = Callable[[str, str], tuple[str, str]]
# (kind Secret|ConfigMap, namespace, name) -> the object's data as text, None when absent: what
# env/envFrom/indexCredentials read (the agent: through its Role; standalone: the given files).
# Read only when a step needs the values (start, release command, build with credentials), so
# a converged host reads nothing at a resync. The values reach the app's processes and the
# supervisor's watcher files (root-owned 0600 in a 0700 directory) only.
ValueSource = Callable[[str, str, str], Mapping[str, str] | None]
SECRET_NOT_FOUND = "SecretNotFound"


@dataclass
class Host:
    """The executors of one host, wired once by the CLI or the in-cluster agent."""

    layout: HostLayout
    supervisor: Supervisor
    nginx: Nginx
    executor: LocalExecutor = field(default_factory=LocalExecutor)
    uv: str | None = None
    proxy_group: str = "www-data"
    settle_seconds: float = 0.5  # connections already queued on the old socket get accepted
    recorder: Recorder = field(default_factory=SilentRecorder)
    # namespace -> accounts apprelease did not create that the host's admin lets its apps use
    allowed_users: Mapping[str, frozenset[str]] = field(default_factory=dict)
    # The host's systemd (the DaemonSet on a systemd host): spec.resources become a scope per revision.
    services: Systemd | None = None

    def start(self) -> None:
        self.layout.root.mkdir(parents=True, exist_ok=True)
        self.layout.root.chmod(0o755)
        check_traversable(self.layout.root)
        self.ensure_daemons()

    def ensure_daemons(self) -> None:
        """The supervisor daemon and nginx run; on a systemd host also their units' drift repair.

        Idempotent and cheap on a converged host: the in-cluster agent calls it at each resync.
        """
        self.supervisor.ensure_running()
        self.nginx.ensure_running()


@dataclass(frozen=True)
class Step:
    action: str
    started: float  # time.monotonic() when it began: benchmarks line steps up with client traffic
    seconds: float


@dataclass
class Result:
    status: HostReleaseStatus
    plan: plan.Plan
    steps: list[Step] = field(default_factory=list)


def check_traversable(path: Path) -> None:
    """App users reach their venv and socket through the agent root: every ancestor needs o+x."""
    for directory in [path, *path.parents]:
        if not directory.stat().st_mode & 0o001:
            raise StepFailed(
                f"{directory} is not traversable by other users, so apps under {path} could not run "
                f"as their own user: use another --root or `chmod o+x {directory}`"
            )


class StepFailed(Exception):
    def __init__(self, message: str, log_tail: str = "", reason: str | None = None):
        super().__init__(message)
        self.log_tail = log_tail
        self.reason = reason  # HostReleaseStatus.reason: set where the phase alone does not say why


def host_conflicts(host: Host, key: str, proxy: Proxy) -> list[claims.Conflict]:
    """What other apps' live nginx sites on this host already hold of what `proxy` asks for.

    Claims come from the live sites, not from other apps' specs: a site is live only after its
    app passed this very check, so the app that serves first keeps its names, and an app
    refused here claims nothing (its spec never blocks the app it lost to).
    """
    others = {}
    for other, text in host.nginx.live_sites().items():
        held = site_claims(text) if other != key else None
        if held is not None:
            others[other.replace("_", "/", 1)] = held  # '<ns>_<app>' -> 'ns/app', as kubectl names it
    return claims.conflicts(claims.Claims.of(proxy), others)


def _refuse_conflicts(host: Host, key: str, proxy: Proxy) -> None:
    found = host_conflicts(host, key, proxy)
    if found:
        raise StepFailed(claims.describe(found), reason=CONFLICT_REASON)


def _link_target(path: Path) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def _link_build(link: Path) -> str | None:
    """The buildId a `releases/<buildId>` link names, or None when there is no link."""
    target = _link_target(link)
    return Path(target).name if target else None


def _replace_symlink(link: Path, target: str) -> None:
    """Point `link` at `target` atomically: a new symlink renamed over the old one."""
    tmp = link.with_name(f".{link.name}.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, link)


ACTIVE = frozenset({"running", "starting", "stopping", "backoff"})


def app_watchers(supervisor: Supervisor, key: str) -> dict[str, str]:
    """revision -> watcher status, for this app's watchers."""
    out = {}
    for name, watcher in supervisor.watchers().items():
        parsed = parse_watcher_name(name)
        if parsed and parsed[0] == key:
            out[parsed[1]] = watcher.status
    return out


def app_process_watchers(supervisor: Supervisor, key: str) -> dict[tuple[str, str], str]:
    """(revision, instance) -> watcher status, for this app's process-type watchers."""
    out = {}
    for name, watcher in supervisor.watchers().items():
        parsed = parse_process_watcher_name(name)
        if parsed and parsed[0] == key:
            out[(parsed[1], parsed[2])] = watcher.status
    return out


def process_statuses(supervisor: Supervisor, key: str, spec: HostReleaseSpec, serving: str | None) -> list[ProcessStatus]:
    """The serving revision's process types: replicas asked for (when it is the spec's) and running."""
    running: dict[str, int] = {}
    for (revision, instance), status in app_process_watchers(supervisor, key).items():
        if revision == serving:
            name = instance.rsplit("-", 1)[0]
            running[name] = running.get(name, 0) + (status == "running")
    wanted = {n: p.replicas for n, p in spec.processes.items()} if serving == spec.revision else {}
    return [ProcessStatus(name=n, replicas=wanted.get(n, running.get(n, 0)), running=running.get(n, 0))
            for n in sorted(set(wanted) | set(running))]


def desired_instances(spec: HostReleaseSpec) -> frozenset[str]:
    return process_instances({name: p.replicas for name, p in spec.processes.items()})


def health_failure_message(revision: str, version: str, result: health.HealthResult, output: str) -> str:
    """The Failed message: an ended process says how it ended and its last words, not a socket error."""
    if result.exited is None:
        return f"revision {revision} ({version}) failed its health check: {result.detail}"
    last = next((line.strip() for line in reversed(output.splitlines()) if line.strip()), "(no output)")
    return f"revision {revision} ({version}) {result.exited.describe()} before it became healthy: {last}"


def last_words(text: str) -> str:
    """The last non-empty line of a process's output that is not one of gunicorn's progress lines.

    Supervisors restart an exited process (circusd at once, supervisord after a backoff), so
    by the time the exit is seen its successor may have logged its start-up already.
    """
    lines = [line for line in text.splitlines() if line.strip() and not GUNICORN_PROGRESS.match(line)]
    if not lines:
        return ""
    if GUNICORN_BIND_GAVE_UP.search(lines[-1]):
        reason = next(filter(None, map(GUNICORN_BIND_FAILED.search, reversed(lines))), None)
        if reason is not None:
            return f"{lines[-1]} ({reason.group(1)})"
    return lines[-1]


def last_log_line(paths: AppPaths, revision: str) -> str:
    """The revision's last words on stderr (where gunicorn logs), else on stdout."""
    for stream in ("stderr", "stdout"):
        words = last_words(_tail_text(paths.log_file(revision, stream), 8 * 1024))
        if words:
            return words
    return ""


def live_revision(paths: AppPaths) -> str | None:
    target = _link_target(paths.live_socket)
    return target.removesuffix(".sock") if target else None


def log_tail(paths: AppPaths, revision: str, lines: int = LOG_TAIL_LINES, daemon_logs: tuple[Path, ...] = ()) -> str:
    """The end of the revision's stderr and stdout, or, when it never ran, what its supervisor said of it."""
    chunks = []
    for stream in ("stderr", "stdout"):
        text = _tail_text(paths.log_file(revision, stream))
        chunks.append("\n".join(text.splitlines()[-lines:]))
    if not any(chunks):
        for log_path in daemon_logs:
            said = [line for line in _tail_text(log_path).splitlines() if revision in line]
            chunks.append("\n".join(said[-lines:]))
    return "\n".join(c for c in chunks if c)


def _tail_text(path: Path, size: int = 64 * 1024) -> str:
    if not path.exists():
        return ""
    with path.open("rb") as f:
        f.seek(max(0, path.stat().st_size - size))
        return f.read().decode(errors="replace")


def observe(host: Host, key: str, app_state: state.AppState, *, serving_next: str | None, limit: int) -> plan.Observed:
    paths = host.layout.app(key)
    records = builder.list_releases(paths)
    on_disk = [r.build_id for r in sorted(records, key=lambda r: r.created, reverse=True)]
    temp = tuple(sorted(p.name for p in paths.releases.glob(f"{TMP_PREFIX}*"))) if paths.releases.exists() else ()
    current = _link_target(paths.current)
    watchers = app_watchers(host.supervisor, key)
    processes = app_process_watchers(host.supervisor, key)
    recency = [b for b in app_state.served_builds if b in on_disk]
    recency += [b for b in on_disk if b not in recency]
    if serving_next:
        recency = [serving_next, *[b for b in recency if b != serving_next]]
    gc = tuple(plan.collectable(recency, serving=serving_next, limit=limit)) if serving_next else ()
    needs_bytecode = {b for b in on_disk if not bytecode.compiled(paths.release(b))}
    if serving_next and serving_next not in on_disk:
        needs_bytecode.add(serving_next)  # built by this plan, without bytecode
    return plan.Observed(
        releases=frozenset(on_disk),
        temp_builds=temp,
        current_build=Path(current).name if current else None,
        static_live=_link_build(paths.static_live),
        static_previous=_link_build(paths.static_previous),
        live_revision=live_revision(paths),
        running=frozenset(watchers),
        inactive=frozenset(r for r, status in watchers.items() if status not in ACTIVE),
        site=host.nginx.current_site(key),
        failed_revision=app_state.failed.revision if app_state.failed else None,
        gc_candidates=gc,
        # A revision that served here before is a rollback: its release command is not run again.
        released=frozenset(app_state.released) | {e.revision for e in app_state.history},
        processes=frozenset(p for p, status in processes.items() if status in ACTIVE),
        process_revisions=frozenset(r for r, _ in processes),
        needs_bytecode=frozenset(needs_bytecode),
    )


class _Apply:
    """Performs one plan's actions for one app, in order; the first failure stops it."""

    def __init__(self, host: Host, key: str, spec: HostReleaseSpec | None = None, site: str = "",
                 app_state: state.AppState | None = None, namespace: str | None = None,
                 progress: Progress = no_progress, values: ValueSource | None = None):
        self.host, self.key, self.spec, self.site, self.namespace = host, key, spec, site, namespace
        self.state = app_state or state.AppState()
        self.paths = host.layout.app(key)
        self.progress = progress
        self.values = values
        self._resolved: dict[str, str] | None = None

    def resolved_env(self) -> dict[str, str] | None:
        """The spec's environment with referenced values (None when it references nothing);
        read once per reconcile. Raises StepFailed (reason SecretNotFound) naming what is missing."""
        spec = self.spec
        if spec is None or not envrefs.has_references(spec):
            return None
        if self._resolved is None:
            if self.values is None:
                raise StepFailed("env references Secrets or ConfigMaps but no source of them is configured")
            namespace = self.namespace or "default"
            try:
                resolved = envrefs.resolve_env(spec, namespace, lambda kind, name: self.values(kind, namespace, name))
            except envrefs.MissingReference as exc:
                raise StepFailed(f"{exc}; the serving revision keeps serving", reason=SECRET_NOT_FOUND) from None
            except envrefs.UnusableValue as exc:
                raise StepFailed(str(exc)) from None
            if resolved.skipped:  # names only, never values
                log.warning("%s: envFrom keys that are not variable names were skipped: %s", self.key,
                            ", ".join(resolved.skipped))
            self._resolved = resolved.env
        return self._resolved

    def _index_credentials(self) -> tuple[str, str] | None:
        """(user, password) for source.indexUrl from source.indexCredentials, read for a build only."""
        creds = self.spec.source.index_credentials if self.spec is not None else None
        if creds is None:
            return None
        if self.values is None:
            raise StepFailed("source.indexCredentials names a Secret but no source of Secrets is configured")
        namespace = self.namespace or "default"
        try:
            return envrefs.index_credentials(namespace, creds.secret_name,
                                             self.values(envrefs.SECRET, namespace, creds.secret_name))
        except envrefs.MissingReference as exc:
            raise StepFailed(f"source.indexCredentials: {exc}", reason=SECRET_NOT_FOUND) from None

    def run(self, actions: tuple[plan.Action, ...], steps: list[Step]) -> None:
        if any(a.kind in (plan.START, plan.RUN_RELEASE, plan.START_PROCESSES) for a in actions):
            self.resolved_env()  # before anything moves: a missing Secret costs the host nothing
        for action in actions:
            started = time.monotonic()
            log.info("%s: %s", self.key, action)
            self._announce(action)
            getattr(self, "do_" + action.kind.replace("-", "_"))(action.target)
            steps.append(Step(str(action), started, time.monotonic() - started))
            self.host.recorder.step_done(action.kind, steps[-1].seconds)  # completed steps only: a failure raised above

    def _announce(self, action: plan.Action) -> None:
        """Tell `progress` which phase begins with this step (ensure-release: the builder does)."""
        phase = PHASE_OF_STEP.get(action.kind)
        if phase is None or action.kind == plan.ENSURE_RELEASE or self.spec is None:
            return
        spec, target = self.spec, action.target
        messages = {
            plan.RUN_RELEASE: f"running the release command of revision {target} ({spec.version}) "
                              f"(up to {spec.release.timeout_seconds if spec.release else 0}s)",
            plan.START: f"starting revision {target} ({spec.version})",
            plan.START_PROCESSES: f"starting the process types of revision {target}: "
                                  f"{', '.join(sorted(spec.processes))}",
            plan.HEALTH: f"checking {spec.health_check.path} through revision {target}'s own socket "
                         f"(up to {spec.health_check.timeout_seconds}s)",
            plan.WRITE_SITE: "applying the nginx site (nginx -t, then reload)",
            plan.SWITCH: f"switching traffic to revision {target} ({spec.version})",
            plan.SETTLE: f"letting requests already queued on the old revision land (at least "
                         f"{self.host.settle_seconds:g}s, until its accept queue is empty)",
            plan.STOP: f"stopping revision {target} gracefully (up to {spec.server.graceful_timeout_seconds}s)",
        }
        self.progress(phase, messages[action.kind])

    def do_clean_temp_builds(self, _: str) -> None:
        builder.remove_temp_builds(self.paths)

    def do_ensure_user(self, user: str) -> None:
        assert self.namespace is not None and self.spec is not None
        try:
            users.ensure_user(user, self.host.executor, namespace=self.namespace, app=self.spec.app,
                              allowed_existing=self.host.allowed_users.get(self.namespace, frozenset()),
                              reserved=frozenset({self.host.proxy_group}), app_dirs=self.paths)
        except users.UnsafeUser as exc:
            raise StepFailed(f"refused: {exc}") from None
        users.prepare_app_dirs(self.paths, user, self.host.proxy_group, self.host.executor)

    def do_ensure_release(self, build_id: str) -> None:
        try:
            identity = None
            index_auth = None
            if not self.paths.release(build_id).is_dir():  # a reuse runs nothing: no build user needed
                assert self.namespace is not None, "a build needs the app's namespace (its build user)"
                identity = users.ensure_build_user(self.namespace, self.spec.app, self.host.executor)
                index_auth = self._index_credentials()
            result = builder.ensure_release(
                self.host.layout, self.key, self.spec, self.host.executor, uv=self.host.uv, identity=identity,
                on_stage=lambda stage: self.progress(
                    BUILDING, f"building the venv of {self.spec.version} (buildId {build_id}): {stage}"),
                index_auth=index_auth,
            )
        except builder.BuildFailed as exc:
            raise StepFailed(f"venv build {build_id} failed: {exc}", exc.log_tail) from None
        except users.UnsafeUser as exc:
            raise StepFailed(f"venv build {build_id} refused: {exc}") from None
        self.state.last_build = BuildRecord(build_id=result.build_id, reused=result.reused, seconds=round(result.seconds, 3),
                                            lock_digest=builder.recorded_lock_digest(result.path))
        self.host.recorder.venv_ensured(result.seconds, result.reused)

    def do_start_watcher(self, revision: str) -> None:
        name = watcher_name(self.key, revision)
        if name in self.host.supervisor.watchers():  # present but stopped or given up on
            self.host.supervisor.remove(name)
        self.paths.socket(revision).unlink(missing_ok=True)  # a stale socket from a crash
        software = builder.server_software(self.paths.release(self.spec.build_id))
        try:
            watcher = watcher_for(self.host.layout, self.key, self.spec, software, self.resolved_env(),
                                  scoped=self.host.services is not None)
        except UnsupportedServer as exc:
            # As final as a failed health check: this venv will never run this spec.
            message = f"revision {revision} ({self.spec.version}) cannot start: {exc}"
            self.state.failed = state.FailedRevision(revision=revision, message=message, log_tail="", at=state.now())
            raise StepFailed(message) from None
        self.host.supervisor.add(watcher)

    def _fail_revision(self, revision: str, message: str, tail: str = "") -> StepFailed:
        """Remember `revision` as failed (terminal until the spec changes) and say why."""
        self.state.failed = state.FailedRevision(revision=revision, message=message, log_tail=tail, at=state.now())
        return StepFailed(message, tail)

    def do_run_release_command(self, revision: str) -> None:
        spec, release = self.spec, self.spec.release
        venv = self.paths.venv(spec.build_id)
        try:
            argv = program_argv(venv, release.command, "release.command")
        except ProgramNotFound as exc:
            raise self._fail_revision(revision, f"revision {revision} ({spec.version}): {exc}") from None
        ids = users.lookup_user(spec.user, self.host.executor)
        if ids is None:
            raise StepFailed(f"app user {spec.user} does not exist on this host")
        outcome = release_command.run(
            self.host.executor, argv, uid=ids[0], gid=ids[1], cwd=self.paths.release(spec.build_id),
            env=app_environment(venv, spec, self.resolved_env()), timeout=release.timeout_seconds,
            log_path=self.paths.release_command_log(revision),
        )
        self.state.release_command = ReleaseCommandRecord(
            revision=revision, exit_code=outcome.code, seconds=round(outcome.seconds, 3), at=state.now())
        if not outcome.ok:
            raise self._fail_revision(
                revision, f"release command of revision {revision} ({spec.version}) "
                          f"{outcome.describe(release.timeout_seconds)}; the previous revision keeps serving",
                outcome.tail)
        self.state.ran_release_command(revision)

    def do_start_processes(self, revision: str) -> None:
        try:
            wanted = process_watchers(self.host.layout, self.key, self.spec, self.resolved_env())
        except ProgramNotFound as exc:
            self.do_stop_watcher(revision)  # never half a revision: its web server goes too
            raise self._fail_revision(revision, f"revision {revision} ({self.spec.version}): {exc}") from None
        present = self.host.supervisor.watchers()
        for watcher in wanted:
            status = present.get(watcher.name)
            if status is not None and status.status in ACTIVE:
                continue
            if status is not None:  # stopped or given up on: start it afresh
                self.host.supervisor.remove(watcher.name)
            self.host.supervisor.add(watcher)
        # Not a gate (a worker has no health check): a short wait so the status that follows
        # says running rather than starting (supervisord calls a process running after 1 s).
        names = {w.name for w in wanted}
        deadline = time.monotonic() + PROCESS_START_WAIT_SECONDS
        while time.monotonic() < deadline:
            states = self.host.supervisor.watchers()
            if all(states.get(n) is not None and states[n].status == "running" for n in names):
                break
            time.sleep(0.2)

    def do_health_check(self, revision: str) -> None:
        check = self.spec.health_check
        name = watcher_name(self.key, revision)
        result = health.wait_healthy(
            self.paths.socket(revision), check.path, expected=check.expected_status,
            deadline_seconds=check.timeout_seconds, host=self.spec.proxy.server_names[0],
            exited=lambda: self.host.supervisor.exit_status(name),
        )
        if result.healthy:
            return
        self.host.recorder.health_check_failed(self.key)
        tail = log_tail(self.paths, revision, daemon_logs=tuple(self.host.layout.supervisor.glob("*.log")))
        self.host.supervisor.remove(name)
        message = health_failure_message(revision, self.spec.version, result, last_log_line(self.paths, revision) or tail)
        self.state.failed = state.FailedRevision(revision=revision, message=message, log_tail=tail, at=state.now())
        raise StepFailed(message, tail)

    def do_write_site(self, _: str) -> None:
        # Checked again right before the write: reconcile checked first thing, but only a
        # check next to the write holds against anything else that writes sites meanwhile.
        _refuse_conflicts(self.host, self.key, self.spec.proxy)
        try:
            self.host.nginx.apply_site(self.key, self.site)
        except ProxyConfigRejected as exc:
            raise StepFailed(f"nginx rejected the site config, the previous one still serves: {exc}") from None

    def do_switch_live(self, revision: str) -> None:
        _replace_symlink(self.paths.live_socket, f"{revision}.sock")
        self.state.served(self.spec.build_id, revision, self.spec.version)

    def do_point_static_previous(self, build_id: str) -> None:
        _replace_symlink(self.paths.static_previous, f"releases/{build_id}")

    def do_point_static(self, build_id: str) -> None:
        _replace_symlink(self.paths.static_live, f"releases/{build_id}")

    def do_settle(self, _: str) -> None:
        time.sleep(self.host.settle_seconds)
        old = [self.paths.socket(r) for r in app_watchers(self.host.supervisor, self.key) if r != self.spec.revision]
        waiting = drain.wait_accepted(self.host.executor, old, self.spec.server.graceful_timeout_seconds)
        if waiting:
            log.warning("%s: connections still queued on the old revision after %ss: %s", self.key,
                        self.spec.server.graceful_timeout_seconds, waiting)

    def do_stop_watcher(self, revision: str) -> None:
        """Stop every process of `revision`: its web server and its process types."""
        self.host.supervisor.remove(watcher_name(self.key, revision))
        for rev, instance in app_process_watchers(self.host.supervisor, self.key):
            if rev == revision:
                self.host.supervisor.remove(process_watcher_name(self.key, revision, instance))
        self.paths.socket(revision).unlink(missing_ok=True)

    def do_swap_current(self, build_id: str) -> None:
        _replace_symlink(self.paths.current, f"releases/{build_id}")

    def do_compile_bytecode(self, build_id: str) -> None:
        """After the switch: never fails the revision (the app runs without .pyc files)."""
        assert self.namespace is not None and self.spec is not None
        try:
            identity = users.ensure_build_user(self.namespace, self.spec.app, self.host.executor)
        except users.UnsafeUser as exc:
            log.warning("%s: no bytecode for %s: %s", self.key, build_id, exc)
            return
        record = bytecode.compile_release(self.paths, build_id, self.host.executor, identity)
        if not record["ok"]:
            log.warning("%s: compiling the bytecode of %s failed: %s", self.key, build_id, record)

    def do_collect_release(self, build_id: str) -> None:
        builder.remove_release(self.paths, build_id)

    def do_report_failed(self, _: str) -> None:
        failed = self.state.failed
        raise StepFailed(failed.message if failed else "failed", failed.log_tail if failed else "")

    def do_remove_site(self, _: str) -> None:
        self.host.nginx.remove_site(self.key)

    def do_remove_app_dir(self, _: str) -> None:
        shutil.rmtree(self.paths.base, ignore_errors=False)


def reconcile(host: Host, release: HostRelease, tls: TLSSource | None = None,
              progress: Progress = no_progress, values: ValueSource | None = None) -> Result:
    """Move this host to `release.spec`; never leaves it without the previously serving revision.

    `progress` hears the phase of each step as it begins (host/progress.py); the returned
    status is the final word (Ready or Failed)."""
    spec, namespace = release.spec, release.metadata.namespace
    key = app_key(namespace, spec.app)
    paths = host.layout.app(key)
    app_state = state.load(paths.state_file)
    if app_state.failed and app_state.failed.revision != spec.revision:
        app_state.failed = None  # a new spec gets a fresh chance

    try:
        # Before anything is built, started or written: a conflicting spec costs the host
        # nothing, and the app that already serves (this one's older revision too) keeps serving.
        # Not remembered as failed: the next reconcile (resync, or a wake-up when another app
        # leaves) checks again, and converges once the other app is gone.
        _refuse_conflicts(host, key, spec.proxy)
    except StepFailed as exc:
        log.debug("%s: %s", key, exc)  # at every resync while it lasts: the status says it once
        return Result(status=_status(release, paths, app_state, exc), plan=plan.Plan())

    tls_files = None
    if spec.proxy.tls:
        if tls is None:
            raise StepFailed(f"proxy.tls names Secret {spec.proxy.tls.secret_name!r} but no Secret source is configured")
        try:
            cert, key_pem = tls(namespace, spec.proxy.tls.secret_name)
        except KeyError:
            raise StepFailed(f"TLS Secret {namespace}/{spec.proxy.tls.secret_name} not found") from None
        tls_files = host.nginx.write_tls(key, cert, key_pem)
    site = host.nginx.render_site(key, spec.proxy, tls_files)

    desired = plan.Desired(build_id=spec.build_id, revision=spec.revision, user=spec.user, site=site,
                           release_command=spec.release is not None and bool(spec.run_release_command),
                           processes=desired_instances(spec))
    observed = observe(host, key, app_state, serving_next=spec.build_id, limit=spec.revision_history_limit)
    the_plan = plan.plan_release(desired, observed)
    result = Result(status=HostReleaseStatus(), plan=the_plan)
    error: StepFailed | None = None
    paths.base.mkdir(parents=True, exist_ok=True)
    try:
        _Apply(host, key, spec, site, app_state, namespace, progress, values).run(the_plan.actions, result.steps)
    except StepFailed as exc:
        error = exc
        log.warning("%s: %s", key, exc)
    finally:
        state.save(paths.state_file, app_state)
        paths.spec_file.write_text(json.dumps(release.wire(), indent=2))
    result.status = _status(release, paths, app_state, error)
    result.status.processes = process_statuses(host.supervisor, key, spec, result.status.serving_revision)
    serving = result.status.serving_revision
    if host.services is not None and spec.resources is not None and serving is not None:
        killed = oom_kills(host, key, serving)
        result.status.oom_kills = killed
        if killed and result.status.phase == "Ready":
            result.status.message = (f"{result.status.message}; the kernel killed {killed} of its processes for "
                                     f"exceeding resources.memoryMax {spec.resources.memory_max}")
    return result


def oom_kills(host: Host, key: str, revision: str) -> int | None:
    """Processes of the revision's scope the kernel killed at its memory limit (None: no scope).

    Read from the scope's cgroup on the host: memory.events (cgroup v2) or memory.oom_control
    (v1, as on this project's test machines); both count `oom_kill`.
    """
    assert host.services is not None
    scope = units.revision_scope(watcher_name(key, revision))
    group = host.services.systemctl("show", "--property=ControlGroup", "--value", scope, check=False)
    if not group.startswith("/"):
        return None
    cgroups = host.executor.host_root / "sys/fs/cgroup"
    for path in (cgroups / group.lstrip("/") / "memory.events",
                 cgroups / "memory" / group.lstrip("/") / "memory.oom_control"):
        try:
            lines = path.read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            name, _, value = line.partition(" ")
            if name == "oom_kill" and value.strip().isdigit():
                return int(value)
    return None


def _status(release: HostRelease, paths: AppPaths, app_state: state.AppState, error: StepFailed | None) -> HostReleaseStatus:
    serving = live_revision(paths)
    current = _link_target(paths.current)
    last = next((e for e in reversed(app_state.history) if e.revision == serving), None)
    ready = error is None and serving == release.spec.revision
    last_build = app_state.last_build
    if (last_build is None or last_build.build_id != release.spec.build_id) and paths.release(release.spec.build_id).exists():
        # Nothing was built for this spec: its venv was already on disk (e.g. a revert to the serving release).
        last_build = BuildRecord(build_id=release.spec.build_id, reused=True, seconds=0.0,
                                 lock_digest=builder.recorded_lock_digest(paths.release(release.spec.build_id)))
    return HostReleaseStatus(
        observed_generation=release.metadata.generation,
        phase="Ready" if ready else "Failed",
        serving_revision=serving,
        serving_build_id=Path(current).name if current else None,
        serving_version=last.version if last else None,
        reason=error.reason if error else None,
        message=str(error) if error else f"serving {release.spec.version} ({release.spec.revision})",
        log_tail=error.log_tail if error and error.log_tail else None,
        last_build=last_build,
        release_command=app_state.release_command,
        history=app_state.history,
        # What a rollback can reuse without a build (`kubectl apprelease history` shows it).
        retained_build_ids=sorted(r.build_id for r in builder.list_releases(paths)),
        updated_at=state.now(),
    )


def remove(host: Host, namespace: str, app: str) -> plan.Plan:
    """Stop an app on this host and delete its files: nginx config first, then its watchers."""
    key = app_key(namespace, app)
    observed = observe(host, key, state.AppState(), serving_next=None, limit=1)
    the_plan = plan.plan_removal(observed)
    _Apply(host, key).run(the_plan.actions, [])
    removed = users.remove_accounts(namespace, app, host.executor)
    if removed:
        log.info("%s: removed accounts %s", key, ", ".join(removed))
    return the_plan


# -- liveness (after the switch): called by the in-cluster agent's prober, decisions in liveness.py --


@dataclass(frozen=True)
class Probe:
    revision: str | None  # the live revision probed; None: nothing serves (nothing to probe)
    passed: bool
    detail: str


def probe_live(host: Host, namespace: str, app: str, spec: HostReleaseSpec) -> Probe:
    """One liveness probe of the app's live revision, through its own socket (not nginx).

    Only "no answer within probeTimeoutSeconds" or a wrong status fails it: a slow answer
    under load is an answer.
    """
    check = spec.health_check
    paths = host.layout.app(app_key(namespace, app))
    revision = live_revision(paths)
    if revision is None:
        return Probe(None, True, "nothing serves")
    try:
        status, _ = health.get(paths.socket(revision), check.path, spec.proxy.server_names[0],
                               timeout=check.probe_timeout)
    except (OSError, http.client.HTTPException) as exc:
        return Probe(revision, False, f"{check.path}: {type(exc).__name__}: {exc or 'no answer'} "
                                      f"(timeout {check.probe_timeout}s)")
    if status != check.expected_status:
        return Probe(revision, False, f"{check.path} answered {status}, expected {check.expected_status}")
    return Probe(revision, True, f"{check.path} answered {status}")


def restart_workers(host: Host, namespace: str, app: str, revision: str) -> str:
    """Restart the revision's gunicorn workers gracefully; returns the app's log tail from before.

    SIGHUP to the gunicorn master: it starts new workers on the same listening socket and
    stops the old ones gracefully (killed after the graceful timeout if they hang), so the
    socket nginx connects to never closes, unlike a restart of the watcher.
    """
    key = app_key(namespace, app)
    tail = log_tail(host.layout.app(key), revision)
    host.supervisor.signal(watcher_name(key, revision), signal.SIGHUP)
    return tail
