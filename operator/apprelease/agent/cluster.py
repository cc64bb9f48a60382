"""The agent in the cluster: keeps one host converged on the HostReleases of its node.

Started by `apprelease agent run` (agent/cli.py). Three threads:

- the watcher lists and watches this node's HostReleases only (server-side label selector
  `apprelease.dev/node=<node>`, all namespaces), keeps the latest object of each in a
  cache and enqueues its key; it re-lists on 410 Gone and reconnects with backoff on errors;
- one worker takes keys off the queue (apprelease/workqueue.py) one at a time and reconciles
  them: finalizer, `core.reconcile`, status (only when it changed; while a rotation runs,
  its live phases, throttled, from a short-lived thread: agent/phases.py), Events; on deletion
  `core.remove` and the finalizer goes; after each full list it also removes apps on disk
  that no HostRelease names any more ("sweep"); failures are retried with backoff;
- the prober (only for apps with `healthCheck.periodSeconds`) probes each app's live
  revision through its socket, restarts its workers gracefully after `failureThreshold`
  failures in a row (decisions: host/liveness.py), and reports it in `status.liveness` and a
  `Warning` Event `LivenessFailed` with the app's log tail. Apps are untrusted tenants, so
  one app's probe must not delay another's: the prober thread only schedules, and the probes
  run on a small pool (`Settings.probe_workers`), each app at most one probe in flight, a
  namespace at most `probes_per_namespace`, each probe bounded by its total deadline;
- the caller's thread (`run`) re-enqueues every known key each `resync_seconds`, which
  repairs drift on the host (core's plan restores what is missing without a build), and
  stops everything when `stop` is set (SIGTERM): the current reconcile finishes first.

Every status it writes carries the log endpoint (`status.logs`) when `agent run --logs-port`
serves one (agent/logserver.py), so `kubectl apprelease logs` finds each host's agent.

The host's apps, supervisor daemon and nginx do not depend on this process or on the
apiserver: while either is away, apps keep serving. Decisions live in agent/sync.py,
API calls in agent/kube.py.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from dataclasses import dataclass, field

from pydantic import ValidationError

from .. import __version__, metrics
from ..api.manifests import explain
from ..api.models import HostRelease, HostReleaseStatus, LivenessStatus, LogEndpoint
from ..host import core, liveness, plan
from ..host.layout import app_key, app_of_watcher
from ..host.progress import no_progress
from . import kube, phases, sync
from .kube import FINALIZER, Obj
from ..workqueue import WorkQueue

log = logging.getLogger(__name__)

SWEEP = "<sweep>"  # queue item: remove apps no HostRelease names (never a key: keys hold a '/')
LIVENESS_FAILED = "LivenessFailed"  # Event reason
EVENT_TAIL_CHARS = 600  # of the app's log in the Event (the full tail is in status.liveness.logTail)
PROBER_TICK = 0.5


@dataclass
class Settings:
    node: str
    resync_seconds: float = 30.0
    watch_timeout_seconds: int = 300  # server-side; the watch is simply renewed after it
    backoff_initial: float = 0.5
    backoff_max: float = 8.0  # short: after an apiserver outage the agent is back within seconds
    retry_max: float = 60.0  # a failing key is retried at most this far apart (and at each resync)
    phase_interval: float = phases.DEFAULT_INTERVAL  # at most one live-phase write this often per HostRelease
    phase_min_age: float = phases.DEFAULT_MIN_AGE  # a step shorter than this never shows as a phase
    log_endpoint: LogEndpoint | None = None  # published in every status this agent writes (agent/logserver.py)
    # Liveness probes running at once, and of one namespace (tenant): a hanging app holds one
    # slot for at most its probeTimeoutSeconds, a tenant's hanging apps never the whole pool.
    probe_workers: int = 8
    probes_per_namespace: int = 2


class Backoff:
    """Exponential backoff with jitter, for reconnects and per-key retries."""

    def __init__(self, initial: float, maximum: float):
        self.initial, self.maximum = initial, maximum
        self.attempts = 0

    def next(self) -> float:
        delay = min(self.maximum, self.initial * 2**self.attempts)
        self.attempts += 1
        return delay * random.uniform(0.8, 1.2)  # noqa: S311 - spreading retries, not security

    def reset(self) -> None:
        self.attempts = 0


class Cache:
    """key -> the latest HostRelease object seen; written by the watcher, read by the worker."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._objects: dict[str, Obj] = {}

    def replace(self, objects: list[Obj]) -> set[str]:
        """Swap in a full list; returns the keys that are gone (deleted while not watching)."""
        fresh = {kube.object_key(o): o for o in objects}
        with self._lock:
            gone = set(self._objects) - set(fresh)
            self._objects = fresh
        return gone

    def put(self, obj: Obj) -> None:
        with self._lock:
            self._objects[kube.object_key(obj)] = obj

    def pop(self, key: str) -> None:
        with self._lock:
            self._objects.pop(key, None)

    def get(self, key: str) -> Obj | None:
        with self._lock:
            return self._objects.get(key)

    def keys(self) -> list[str]:
        with self._lock:
            return sorted(self._objects)

    def values(self) -> list[Obj]:
        with self._lock:
            return list(self._objects.values())


class Retry(Exception):
    """The key could not be finished for a passing reason; it is queued again with backoff."""


@dataclass
class Health:
    """What /healthz and /readyz report: set by the threads, read by the probe server."""

    synced: threading.Event = field(default_factory=threading.Event)  # a first full list went through
    connected: bool = False  # the watch is open (or the last API call worked)
    worker_alive: bool = False
    last_error: str = ""

    def live(self) -> tuple[bool, str]:
        return (True, "ok") if self.worker_alive else (False, "worker thread is not running")

    def ready(self) -> tuple[bool, str]:
        if not self.worker_alive:
            return False, "worker thread is not running"
        if not self.synced.is_set():
            return False, f"HostReleases not listed yet {self.last_error}".strip()
        if not self.connected:
            return False, f"apiserver unreachable: {self.last_error}"
        return True, "ok"


class ClusterAgent:
    """One host's agent. `run(stop)` blocks until `stop` is set, then returns."""

    def __init__(self, host: core.Host, settings: Settings, api_factory: Callable[[], kube.HostReleaseAPI]):
        self.host, self.settings = host, settings
        self.selector = kube.node_selector(settings.node)
        self.cache = Cache()
        self.queue = WorkQueue()
        self.health = Health()
        self._watch_api = api_factory()  # each thread its own client: separate connection pools
        self._work_api = api_factory()
        self._phase_api = api_factory()  # the live-phase writer's thread (agent/phases.py)
        self._failures: dict[str, Backoff] = {}
        # key -> (uid, status wire) last written: the cache may not have seen our own write yet.
        self._written: dict[str, tuple[str | None, dict]] = {}
        self._written_at: dict[str, float] = {}  # key -> time.monotonic() of that write: phases are throttled from it
        self._api_factory = api_factory  # each probe worker thread makes its own client
        self._status_lock = threading.RLock()  # worker, phase writer and probe workers write statuses
        # Liveness memory, per key. A key's entries are written by its one probe in flight, or
        # by the prober thread while none is (it skips keys in `_probing`); single dict
        # operations are atomic, and every status write reads `_liveness` under _status_lock.
        self._trackers: dict[str, liveness.Tracker] = {}  # key -> liveness of its live revision
        self._liveness: dict[str, LivenessStatus | None] = {}  # key -> what status.liveness says
        self._next_probe: dict[str, float] = {}  # key -> time.monotonic() its next probe is due
        self._probe_lock = threading.Lock()
        self._probing: dict[str, str] = {}  # key -> namespace of the probes in flight (under _probe_lock)

    # -- lifecycle ---------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        self.host.start()
        log.info("apprelease %s agent for node %s: watching HostReleases with %s, resync every %gs",
                 __version__, self.settings.node, self.selector, self.settings.resync_seconds)
        worker = threading.Thread(target=self._work_loop, name="worker")
        # The watcher may sit in a blocking read: a daemon thread, not joined on shutdown.
        watcher = threading.Thread(target=self._watch_loop, args=(stop,), name="watcher", daemon=True)
        self.health.worker_alive = True
        prober = threading.Thread(target=self._probe_loop, args=(stop,), name="prober", daemon=True)
        worker.start()
        watcher.start()
        prober.start()
        try:
            while not stop.wait(self.settings.resync_seconds):
                self.resync()
        finally:
            log.info("stopping: finishing the current reconcile")
            self.queue.shut_down()
            worker.join()
        log.info("stopped")

    def resync(self) -> None:
        """Reconcile every known HostRelease again (drift repair), and sweep."""
        if not self.health.synced.is_set():
            return
        for key in self.cache.keys():
            self.queue.add(key)
        self.queue.add(SWEEP)

    # -- watcher -----------------------------------------------------------------------

    def _watch_loop(self, stop: threading.Event) -> None:
        backoff = Backoff(self.settings.backoff_initial, self.settings.backoff_max)
        while not stop.is_set():
            try:
                version = self._list()
                backoff.reset()
                while not stop.is_set():
                    version = self._watch(version)
            except kube.Gone as exc:
                log.info("watch expired (%s): listing again", exc)
            except Exception as exc:  # noqa: BLE001 - every failure means: reconnect later
                self.health.connected = False
                self.health.last_error = kube.describe(exc)
                delay = backoff.next()
                level = logging.WARNING if kube.is_transient(exc) else logging.ERROR
                log.log(level, "HostRelease list/watch failed (%s); retrying in %.1fs", self.health.last_error, delay,
                        exc_info=level == logging.ERROR)
                stop.wait(delay)

    def _list(self) -> str:
        listed = self._watch_api.list(self.selector)
        gone = self.cache.replace(listed.items)
        self.health.connected, self.health.last_error = True, ""
        first = not self.health.synced.is_set()
        self.health.synced.set()
        log.info("listed %d HostRelease(s) for node %s%s", len(listed.items), self.settings.node,
                 f", {len(gone)} gone since the last list" if gone else "")
        for key in sorted({kube.object_key(o) for o in listed.items} | gone):
            self.queue.add(key)
        if first or gone:
            self.queue.add(SWEEP)
        return listed.resource_version

    def _watch(self, version: str) -> str:
        """Follow one watch request until the server ends it; returns the last resourceVersion."""
        for kind, obj in self._watch_api.watch(self.selector, version, self.settings.watch_timeout_seconds):
            self.health.connected = True
            version = obj["metadata"].get("resourceVersion", version)
            if kind == "BOOKMARK":
                continue
            key = kube.object_key(obj)
            if kind == "DELETED":
                self.cache.pop(key)
                self.queue.add(SWEEP)  # normally a no-op: the finalizer already removed the app
            else:
                self.cache.put(obj)
            log.debug("%s %s", kind, key)
            self.queue.add(key)
        return version

    # -- worker ------------------------------------------------------------------------

    def _work_loop(self) -> None:
        try:
            while (key := self.queue.get()) is not None:
                try:
                    self._process(key)
                finally:
                    self.queue.done(key)
        finally:
            self.health.worker_alive = False  # /healthz fails: the pod gets restarted

    def _process(self, key: str) -> None:
        try:
            if key == SWEEP:
                self.sweep()
            else:
                self.sync(key)
        except Exception as exc:  # noqa: BLE001 - logged, and retried with backoff: the worker must live on
            if kube.is_not_found(exc):
                log.info("%s: deleted meanwhile (%s)", key, kube.describe(exc))
                self._failures.pop(key, None)
                return
            backoff = self._failures.setdefault(key, Backoff(self.settings.backoff_initial, self.settings.retry_max))
            delay = backoff.next()
            transient = isinstance(exc, Retry) or kube.is_transient(exc)
            metrics.agent_reconcile_failed(transient)
            if transient:
                self.health.last_error = kube.describe(exc.__cause__ or exc)
                log.warning("%s: %s; retrying in %.1fs", key, self.health.last_error, delay)
            else:
                log.exception("%s: reconcile failed unexpectedly; retrying in %.1fs", key, delay)
            self.queue.add_after(key, delay)
        else:
            self._failures.pop(key, None)

    def sync(self, key: str) -> None:
        """Converge the host on one HostRelease (or on its deletion)."""
        obj = self.cache.get(key)
        if obj is None:
            self._written.pop(key, None)
            self._written_at.pop(key, None)
            return  # gone: the sweep removes its app unless another HostRelease names it
        if obj["metadata"].get("deletionTimestamp"):
            self._finalize(key, obj)
            return
        obj = self._ensure_finalizer(obj)
        previous, _ = self._stored_status(key, obj)
        generation = obj["metadata"].get("generation")
        try:
            release = HostRelease.model_validate(obj)
        except ValidationError as exc:
            message = f"invalid HostRelease:\n{explain(exc)}"
            self._write_status(key, obj, sync.failed_status(previous, generation, message))
            return
        if release.spec.node != self.settings.node:
            message = f"spec.node is {release.spec.node!r} but the object is labelled for node {self.settings.node!r}"
            self._write_status(key, obj, sync.failed_status(previous, generation, message))
            return
        if sync.is_new_generation(previous, generation):
            pending = sync.pending_status(previous, generation, f"moving to {release.spec.version} ({release.spec.revision})")
            self._write_status(key, obj, pending)
            previous, _ = self._stored_status(key, obj)
        self._write_status(key, obj, self._reconcile(key, obj, release, previous))

    def _reconcile(self, key: str, obj: Obj, release: HostRelease, previous: HostReleaseStatus | None) -> HostReleaseStatus:
        generation = release.metadata.generation
        writer = None
        if sync.shows_phases(previous, generation):
            writer = phases.PhaseWriter(
                lambda phase, message: self._write_phase(key, obj, generation, phase, message),
                interval=self.settings.phase_interval, min_age=self.settings.phase_min_age,
                last_write=self._written_at.get(key, float("-inf")),
                name=f"phases {key}")
        try:
            result = core.reconcile(self.host, release, self._tls_source,
                                    progress=writer.report if writer else no_progress, values=self._values_source)
        except core.StepFailed as exc:  # before any action: the TLS Secret is missing or unusable
            return sync.failed_status(previous, generation, str(exc))
        finally:
            if writer is not None:
                writer.close()  # before the final status: no phase write may land after it
        if any(a.kind in (plan.WRITE_SITE, plan.REMOVE_SITE) for a in result.plan.actions):
            self._wake_conflicted()  # this app's claims changed: one refused earlier may fit now
        # A converged host plans nothing at every resync: only work is worth an INFO line.
        log.log(logging.INFO if result.plan else logging.DEBUG, "%s/%s: %s -> %s (%s)",
                release.metadata.namespace, release.metadata.name,
                result.plan, result.status.phase, "; ".join(f"{s.action} {s.seconds:.2f}s" for s in result.steps) or "no steps")
        return result.status

    def _wake_conflicted(self) -> None:
        """Queue the HostReleases refused for a host conflict: the host's claims just changed."""
        for key in sync.conflicted_keys((k, self._stored_status(k, o)[0]) for k in self.cache.keys()
                                        if (o := self.cache.get(k)) is not None):
            self.queue.add(key)

    def _tls_source(self, namespace: str, name: str) -> tuple[str, str]:
        try:
            return self._work_api.read_tls_secret(namespace, name)
        except kube.SecretUnusable as exc:
            raise core.StepFailed(str(exc)) from None
        except KeyError:
            raise  # core reports "TLS Secret ... not found"
        except Exception as exc:
            if kube.is_transient(exc):
                raise Retry(f"reading TLS Secret {namespace}/{name}") from exc
            raise core.StepFailed(f"cannot read TLS Secret {namespace}/{name}: {kube.describe(exc)}") from exc

    def _values_source(self, kind: str, namespace: str, name: str) -> dict[str, str] | None:
        try:
            return self._work_api.read_values(kind, namespace, name)
        except Exception as exc:
            if kube.is_transient(exc):
                raise Retry(f"reading {kind} {namespace}/{name}") from exc
            # 403 until the operator's Role names it (a new reference): the next resync retries.
            raise core.StepFailed(f"cannot read {kind} {namespace}/{name}: {kube.describe(exc)}") from exc

    def _ensure_finalizer(self, obj: Obj) -> Obj:
        finalizers = sync.finalizers_adding(obj, FINALIZER)
        if finalizers is None:
            return obj
        meta = obj["metadata"]
        # resourceVersion makes the patch conditional: a concurrent change of the list is a 409, retried.
        updated = self._work_api.patch_metadata(
            meta["namespace"], meta["name"], {"finalizers": finalizers, "resourceVersion": meta["resourceVersion"]})
        log.info("%s: finalizer %s added", kube.object_key(obj), FINALIZER)
        return updated

    def _finalize(self, key: str, obj: Obj) -> None:
        finalizers = sync.finalizers_removing(obj, FINALIZER)
        if finalizers is None:
            return  # not ours to clean (never reconciled here), or already done
        meta = obj["metadata"]
        app = sync.app_of(obj)
        others = [o for o in self.cache.values() if kube.object_key(o) != key and not o["metadata"].get("deletionTimestamp")]
        if app and app_key(meta["namespace"], app) not in sync.wanted_app_keys(others):
            removal = core.remove(self.host, meta["namespace"], app)
            log.info("%s: removed %s/%s from this host: %s", key, meta["namespace"], app, removal)
            self._event(obj, "Normal", "Removed", f"{app} stopped and removed from node {self.settings.node}")
            self._wake_conflicted()
        self._work_api.patch_metadata(
            meta["namespace"], meta["name"], {"finalizers": finalizers, "resourceVersion": meta["resourceVersion"]})
        self._written.pop(key, None)
        log.info("%s: finalizer %s removed", key, FINALIZER)

    def _stored_status(self, key: str, obj: Obj) -> tuple[HostReleaseStatus | None, dict]:
        """The status the server holds: what this agent last wrote for this very object (uid),
        else what the cache shows."""
        written = self._written.get(key)
        if written and written[0] == obj["metadata"].get("uid"):
            return HostReleaseStatus.model_validate(written[1]), written[1]
        return sync.parse_status(obj), obj.get("status") or {}

    def _write_phase(self, key: str, obj: Obj, generation: int | None, phase: str, message: str) -> None:
        """A live phase (the PhaseWriter's thread, while the worker runs the step)."""
        stored, _ = self._stored_status(key, obj)
        self._write_status(key, obj, sync.progress_status(stored, generation, phase, message), api=self._phase_api)

    def _write_status(self, key: str, obj: Obj, status: HostReleaseStatus,
                      api: kube.HostReleaseAPI | None = None) -> None:
        """Patch the status subresource, if `status` says something new."""
        with self._status_lock:
            self._write_status_locked(key, obj, status, api)

    def _write_status_locked(self, key: str, obj: Obj, status: HostReleaseStatus,
                             api: kube.HostReleaseAPI | None) -> None:
        stored, stored_wire = self._stored_status(key, obj)
        # The prober's view of liveness rides along with every status this agent writes; until
        # it has probed (a restarted agent), what the server holds stays.
        held = stored.liveness if stored is not None else None
        status = status.model_copy(update={"liveness": self._liveness.get(key, held)})
        status = sync.with_ready_condition(status.model_copy(update={"logs": self.settings.log_endpoint}), stored)
        if sync.same_status(stored, status):
            return
        meta = obj["metadata"]
        new_wire = status.wire()
        try:
            updated = (api or self._work_api).patch_status(
                meta["namespace"], meta["name"], sync.merge_patch(stored_wire, new_wire))
        except Exception as exc:
            if kube.is_transient(exc):
                raise Retry(f"writing status of {key}") from exc
            raise
        self._written[key] = (meta.get("uid"), new_wire)
        self._written_at[key] = time.monotonic()
        log.info("%s: status %s: %s", key, status.phase, status.message)
        event = sync.event_for(stored, status)
        if event:
            self._event(updated, *event)

    def _event(self, obj: Obj, event_type: str, reason: str, message: str,
               api: kube.HostReleaseAPI | None = None) -> None:
        """Events are best effort: a failure is logged and the reconcile goes on."""
        try:
            (api or self._work_api).create_event(obj, event_type=event_type, reason=reason, message=message,
                                        node=self.settings.node)
        except Exception as exc:  # noqa: BLE001 - best effort by design, but never silent
            log.warning("%s: could not record Event %s: %s", kube.object_key(obj), reason, kube.describe(exc))

    # -- prober (liveness) ------------------------------------------------------------

    def _probe_loop(self, stop: threading.Event) -> None:
        """Each tick, hand the due probes to the probe workers; never waits for a probe."""
        jobs: queue.SimpleQueue[tuple[str, Obj, HostRelease, HostReleaseStatus] | None] = queue.SimpleQueue()
        workers: list[threading.Thread] = []
        try:
            while not stop.wait(PROBER_TICK):
                try:
                    self._schedule_probes(jobs, workers)
                except Exception:  # noqa: BLE001 - the prober must live on; the next tick tries again
                    log.exception("scheduling liveness probes failed unexpectedly")
        finally:
            for _ in workers:
                jobs.put(None)  # each worker ends after its probe in flight, if any

    def _schedule_probes(self, jobs: queue.SimpleQueue, workers: list[threading.Thread]) -> None:
        with self._probe_lock:
            running = dict(self._probing)
        targets: dict[str, tuple[Obj, HostRelease, HostReleaseStatus]] = {}
        for key in self.cache.keys():
            if key in running:
                continue  # its memory belongs to the probe in flight
            try:
                target = self._probe_target(key)
            except Exception:  # noqa: BLE001 - one bad object must not stop the others' probes
                log.exception("%s: liveness probe failed unexpectedly", key)
                continue
            if target is not None:
                targets[key] = target
        now = time.monotonic()
        due = [liveness.Due(key, release.metadata.namespace, self._next_probe.get(key, 0.0))
               for key, (_, release, _) in targets.items()]
        for item in liveness.start_now(due, running, now, self.settings.probe_workers - len(running),
                                       self.settings.probes_per_namespace):
            obj, release, stored = targets[item.key]
            self._next_probe[item.key] = liveness.next_due(item.at, now, release.spec.health_check.period_seconds or 0)
            with self._probe_lock:
                self._probing[item.key] = item.tenant
                busy = len(self._probing)
            # Workers start as needed and stay: as many as probes in flight, so none waits in
            # the queue. Daemons: a probe in flight never holds up the agent's exit.
            while len(workers) < busy:
                workers.append(threading.Thread(target=self._probe_worker, args=(jobs,),
                                                name=f"probe-{len(workers)}", daemon=True))
                workers[-1].start()
            jobs.put((item.key, obj, release, stored))

    def _probe_worker(self, jobs: queue.SimpleQueue) -> None:
        """One probe worker thread: probes one app at a time, with its own API client."""
        api: kube.HostReleaseAPI | None = None
        while (job := jobs.get()) is not None:
            key, obj, release, stored = job
            try:
                api = api or self._api_factory()
                self._probe(key, obj, release, stored, api)
            except Exception:  # noqa: BLE001 - the next period tries again
                log.exception("%s: liveness probe failed unexpectedly", key)
            finally:
                with self._probe_lock:
                    self._probing.pop(key, None)

    def _probe_target(self, key: str) -> tuple[Obj, HostRelease, HostReleaseStatus] | None:
        """What to probe for `key`, if its app is probed at all now; forgets what is not."""
        obj = self.cache.get(key)
        if obj is None or obj["metadata"].get("deletionTimestamp"):
            for memory in (self._trackers, self._liveness, self._next_probe):
                memory.pop(key, None)
            return None
        try:
            release = HostRelease.model_validate(obj)
        except ValidationError:
            return None
        check = release.spec.health_check
        stored, _ = self._stored_status(key, obj)
        # Only a converged app: mid-rotation the live revision is about to change.
        if (check.period_seconds is None or stored is None or stored.phase != "Ready"
                or stored.serving_revision != release.spec.revision):
            if check.period_seconds is None:
                self._forget_liveness(key)
            return None
        return obj, release, stored

    def _probe(self, key: str, obj: Obj, release: HostRelease, stored: HostReleaseStatus,
               api: kube.HostReleaseAPI) -> None:
        check = release.spec.health_check
        namespace, app = release.metadata.namespace, release.spec.app
        probe = core.probe_live(self.host, namespace, app, release.spec)
        if probe.revision is None:
            return
        held = stored.liveness  # what an earlier agent process reported: counts go on from there
        known = self._trackers.get(key)
        new_revision = known is not None and known.revision != probe.revision
        if new_revision:  # a rotation happened: what was said of the old revision goes
            held = None
            self._liveness[key] = None
        tracker = (None if new_revision else known) or (
            liveness.Tracker(probe.revision, restarts=held.restarts, failing=held.failing,
                             last_failure=held.last_failure)
            if held is not None else liveness.Tracker(probe.revision))
        outcome = liveness.record(tracker, probe.revision, probe.passed, probe.detail, check.liveness_threshold)
        self._trackers[key] = outcome.tracker
        if not probe.passed:
            log.warning("%s: liveness probe of %s failed (%d/%d): %s", key, probe.revision,
                        outcome.tracker.failures or check.liveness_threshold, check.liveness_threshold, probe.detail)
        previous = self._liveness.get(key, held)
        current = LivenessStatus(
            failing=outcome.tracker.failing, consecutive_failures=outcome.tracker.failures,
            restarts=outcome.tracker.restarts, last_failure=outcome.tracker.last_failure,
            last_restart_at=previous.last_restart_at if previous else None,
            log_tail=previous.log_tail if previous else None,
        )
        if outcome.restart:
            tail = core.restart_workers(self.host, namespace, app, probe.revision)
            current = current.model_copy(update={"last_restart_at": datetime.now(UTC), "log_tail": tail})
            log.warning("%s: restarted the workers of %s after %d failed liveness probes", key, probe.revision,
                        check.liveness_threshold)
            self._event(obj, "Warning", LIVENESS_FAILED,
                        f"{probe.revision}: {check.liveness_threshold} liveness probes failed in a row "
                        f"({probe.detail}); its workers were restarted gracefully. Log tail:\n"
                        f"{tail[-EVENT_TAIL_CHARS:]}", api=api)
        self._liveness[key] = current
        if outcome.changed or outcome.restart or new_revision:
            # The status as it is now, not as it was when the probe started (a probe may take
            # probeTimeoutSeconds, and the worker may have written since).
            with self._status_lock:
                now_obj = self.cache.get(key)
                if now_obj is None:
                    return  # deleted meanwhile
                stored, _ = self._stored_status(key, now_obj)
                if stored is not None and stored.liveness != current:
                    self._write_status(key, now_obj, stored, api=api)

    def _forget_liveness(self, key: str) -> None:
        self._trackers.pop(key, None)
        self._liveness[key] = None  # not probed (any more): status.liveness goes
        self._next_probe.pop(key, None)

    def serves_app(self, namespace: str, app: str) -> bool:
        """Whether a live HostRelease of this node names `app` in `namespace` (the log endpoint
        serves only those: not leftovers of apps that are gone)."""
        return any(o["metadata"]["namespace"] == namespace and sync.app_of(o) == app
                   and not o["metadata"].get("deletionTimestamp") for o in self.cache.values())

    # -- sweep -------------------------------------------------------------------------

    def apps_on_host(self) -> set[str]:
        """App keys with anything on this host: a directory, an nginx site or a watcher."""
        layout = self.host.layout
        keys = {p.name for p in layout.apps.iterdir() if p.is_dir() and "_" in p.name} if layout.apps.exists() else set()
        if layout.nginx_sites.exists():
            keys |= {p.stem for p in layout.nginx_sites.glob("*.conf") if "_" in p.stem}
        keys |= {key for key in map(app_of_watcher, self.host.supervisor.watchers()) if key}
        return keys

    def sweep(self) -> None:
        """Repair the host's daemons, and remove apps no HostRelease of this node names (deleted
        or moved while the agent was away).

        Only after a full list (the cache is complete then), and only under this agent's root.
        """
        if not self.health.synced.is_set():
            return
        # A daemon (or, with systemd, its unit) someone stopped, edited or disabled. Its
        # failure must not keep orphans on the host: logged, tried again at the next sweep.
        try:
            self.host.ensure_daemons()
        except Exception:  # noqa: BLE001
            log.exception("repairing the host's daemons failed; trying again at the next resync")
        for orphan in sync.orphan_app_keys(self.apps_on_host(), self.cache.values()):
            namespace, app = sync.split_app_key(orphan)
            removal = core.remove(self.host, namespace, app)
            log.info("removed %s from this host, no HostRelease of node %s names it: %s",
                     orphan, self.settings.node, removal)
            self._wake_conflicted()

