"""The Kopf wiring of the operator: settings, login, watch handlers, and the reconcile workers.

Called by `controller.cli` (`apprelease operator`), which builds a registry with
`build_registry(ctx)` and runs Kopf with it; tests start that command as a subprocess
(tests/support/operator.py). Kopf watches; the reconciling is ours: handlers are thin and
only say which AppRelease to look at again.

How a change reaches an AppRelease's reconcile (the triggers):
- a work queue of AppRelease keys (apprelease/workqueue.py) and a pool of worker threads
  (`--workers`, default 8) that take keys and run `controller.reconcile` on them. A key is
  never passed by two workers at once, so two reconciles of the same AppRelease never race on
  the maxUnavailable budget (what one Kopf daemon per AppRelease used to guarantee), and a key
  woken during its pass is passed again right after;
- watch events wake keys: a HostRelease event wakes its owner (the controller
  ownerReference, else the app label), a Node whose labels changed (or that came or went)
  wakes every AppRelease, an AppRelease seen for the first time or whose generation is not yet
  observed (or that is being deleted) wakes itself, and one that changed or is deleted also
  wakes the ones held by a host conflict;
- after each pass the key is resynced after a period (or at the progress deadline, whichever
  is first): level-triggered; it is also what notices a rotated Secret value (a new revision)
  or a Secret that appears (ending SecretNotFound): the operator may `get` Secrets by name
  but not list or watch them (manifests/operator-rbac.yaml): a missed event costs at most one
  period. Due resyncs wait in a lane of their own behind woken keys, so a rollout's next batch
  never queues behind thousands of idle resyncs (bench/fleet.py measured 8 s of such lag at
  2,000 apps with one daemon per AppRelease).
Each pass reads the AppRelease and its HostReleases from the API (no in-memory rollout state),
so a restarted operator resumes exactly where the API says the rollout is. Nodes and the other
AppReleases' claims come from a shared cache (controller/cache.py: filled by a list at start-up,
before Kopf watches, then by the same watch events that wake keys, and re-listed every few
minutes); moves and deletions of hosts are still decided on Nodes listed fresh.

Deletion: the pass itself holds an AppRelease with the finalizer `apprelease.dev/operator-cleanup`
(added on its first pass, before any HostRelease exists); once the object is being deleted a
pass deletes its HostReleases and removes the finalizer when the agents have released them.
Kopf keeps no state on the objects: with watch handlers only, it writes no annotations and
no finalizer (its own finalizer name is set apart, or it would remove ours as unneeded).
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf
import urllib3

from .. import metrics
from ..kubeclient import ApiError as ApiException
from ..kubeclient import Config as Configuration
from ..kubeclient import event_manifest
from ..api.models import API_VERSION, APP_LABEL, GROUP, VERSION
from ..workqueue import WorkQueue
from .cache import RELIST_SECONDS, FleetCache
from .kube import APP_PLURAL, HOST_PLURAL, KubeApi, connection_info
from .reconcile import SecretsConfig, reconcile_app_release, utcnow
from .status import Event

ANNOTATION_PREFIX = f"operator.{GROUP}"
# Kopf's own finalizer: never put on our objects (Kopf has no handler that needs one), and not
# ours (reconcile.OPERATOR_FINALIZER), which Kopf would otherwise remove as nobody's.
KOPF_FINALIZER = f"{ANNOTATION_PREFIX}/kopf"
RESYNC_SECONDS = 30.0  # level-triggered safety net between event-driven reconciles
ERROR_BACKOFF = (1.0, 2.0, 5.0, 10.0, 30.0)  # seconds between failed reconciles (e.g. apiserver down)
WORKERS = 8  # concurrent passes (distinct AppReleases); the API client's pool has as many connections
EVENT_BACKLOG = 10_000  # Events waiting to be posted; beyond it they are dropped (and logged)
COMPONENT = "apprelease-operator"

Key = tuple[str, str]
log = logging.getLogger(__name__)


@dataclass
class OperatorContext:
    """What the handlers and workers share: the API client, the queue, the cache."""

    config: Configuration
    api: KubeApi
    queue: WorkQueue = field(default_factory=WorkQueue)
    cache: FleetCache = field(default_factory=FleetCache)
    known: set[Key] = field(default_factory=set)  # AppReleases seen (list or watch) and not deleted
    held: set[Key] = field(default_factory=set)  # rollouts held by a conflict with an older AppRelease
    failures: dict[Key, int] = field(default_factory=dict)  # failed passes in a row
    backoff_until: dict[Key, float] = field(default_factory=dict)  # monotonic; events do not wake before
    resync_seconds: float = RESYNC_SECONDS
    workers: int = WORKERS
    secrets: SecretsConfig = field(default_factory=SecretsConfig)

    def wake(self, key: Key) -> None:
        # A failing key is not woken early by events: a failing apiserver is not hammered.
        if self.backoff_until.get(key, 0.0) <= time.monotonic():
            self.queue.add(key)


def configure_settings(settings: kopf.OperatorSettings) -> None:
    """Kopf settings the operator relies on (see TOOLING.md, Kopf notes)."""
    # Standalone: one replica for now (leader election comes later); no peering objects needed.
    settings.peering.standalone = True
    settings.peering.mandatory = False
    settings.persistence.finalizer = KOPF_FINALIZER
    # Kopf's state in annotations under our own prefix (none is written with watch handlers
    # only; kept so that nothing lands in a `status.kopf` the structural schema would prune).
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    # Watches that end and reconnect soon: an apiserver restart is noticed within seconds.
    settings.watching.server_timeout = 60
    settings.watching.client_timeout = 75
    settings.watching.connect_timeout = 5
    settings.watching.reconnect_backoff = 1.0
    settings.networking.connect_timeout = 5
    settings.networking.request_timeout = 30
    # Our Events are posted by EventPoster; Kopf's would be its per-object log lines.
    settings.posting.enabled = False


def owner_of(body: Mapping[str, Any]) -> str | None:
    """The AppRelease a HostRelease belongs to: its controller ownerReference, else its app label."""
    meta = body.get("metadata") or {}
    for ref in meta.get("ownerReferences") or ():
        if ref.get("kind") == "AppRelease" and ref.get("controller"):
            return ref.get("name")
    return (meta.get("labels") or {}).get(APP_LABEL)


class EventPoster:
    """Posts the passes' Events from a thread of its own: a pass never waits for them, so at a
    cold start the HostReleases are created first and the Events follow. Best effort, as
    Kubernetes Events are: a failed post is logged and dropped."""

    def __init__(self, api: KubeApi, instance: str) -> None:
        self.api, self.instance = api, instance
        self._queue: queue.Queue[tuple[Mapping[str, Any], Event] | None] = queue.Queue(EVENT_BACKLOG)
        self._thread = threading.Thread(target=self._run, name="event-poster", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass

    def __call__(self, obj: Mapping[str, Any], event: Event) -> None:
        meta = obj["metadata"]
        log.info("%s/%s %s: %s", meta["namespace"], meta["name"], event.reason, event.message)
        try:
            self._queue.put_nowait((obj, event))
        except queue.Full:
            log.warning("dropping Event %s on %s/%s: %d Events wait to be posted", event.reason, meta["namespace"],
                        meta["name"], EVENT_BACKLOG)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            obj, event = item
            manifest = event_manifest(obj, api_version=API_VERSION, kind="AppRelease", event_type=event.type,
                                      reason=event.reason, message=event.message, component=COMPONENT,
                                      instance=self.instance)
            try:
                self.api.post_event(obj, manifest)
            except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
                log.warning("cannot post Event %s on %s/%s: %s", event.reason, obj["metadata"]["namespace"],
                            obj["metadata"]["name"], _brief(exc))


# ----- handler bodies (on Kopf's event loop: they only touch the cache and the queue)


def handle_event_host_release(ctx: OperatorContext, body: Mapping[str, Any], namespace: str) -> None:
    owner = owner_of(body)
    if owner and (namespace, owner) in ctx.known:
        ctx.wake((namespace, owner))


def handle_event_node(ctx: OperatorContext, event_type: str | None, name: str, labels: Mapping[str, str]) -> None:
    # Kopf's first listing repeats what the start-up list loaded: no change, no wake-up storm.
    if ctx.cache.node_event(event_type, name, labels):
        for key in list(ctx.known):
            ctx.wake(key)


def handle_event_app_release(ctx: OperatorContext, body: Mapping[str, Any], namespace: str, name: str,
                             event_type: str | None = None) -> None:
    meta = body.get("metadata") or {}
    key = (namespace, name)
    ctx.cache.app_event(event_type, body)  # before any wake-up: a woken pass reads the new claims
    # Our own status writes leave these unchanged: they wake nothing.
    changed = meta.get("generation") != (body.get("status") or {}).get("observedGeneration")
    leaving = event_type == "DELETED" or bool(meta.get("deletionTimestamp"))
    if event_type == "DELETED":
        # Gone from the API (our finalizer was released, or never added): no more passes.
        ctx.known.discard(key)
        ctx.queue.forget(key)
    else:
        new = key not in ctx.known
        ctx.known.add(key)
        if new or changed or leaving:
            ctx.wake(key)
    if changed or leaving:
        # Another AppRelease changed its claims or leaves: a rollout held by it may go on now.
        for held in list(ctx.held - {key}):
            ctx.wake(held)


# ----- the workers (threads: a pass is synchronous API calls and pure decisions)


def run_pass(ctx: OperatorContext, key: Key, post: EventPoster) -> None:
    """One reconcile of `key`, then its next pass scheduled: a resync, or a retry after a failure."""
    namespace, name = key
    try:
        with metrics.OPERATOR_RECONCILE_SECONDS.time():
            outcome = reconcile_app_release(ctx.api, namespace, name, utcnow(), post, ctx.secrets, ctx.cache)
    except Exception as exc:  # noqa: BLE001 - a worker lives on; the key is retried with backoff
        metrics.operator_reconcile_failed(exc)
        failures = ctx.failures.get(key, 0)
        delay = ERROR_BACKOFF[min(failures, len(ERROR_BACKOFF) - 1)]
        ctx.failures[key] = failures + 1
        ctx.backoff_until[key] = time.monotonic() + delay
        if isinstance(exc, (ApiException, urllib3.exceptions.HTTPError, OSError)):
            log.warning("%s/%s: reconcile failed (%s); retrying in %gs", namespace, name, _brief(exc), delay)
        else:
            log.exception("%s/%s: reconcile failed; retrying in %gs", namespace, name, delay)
        ctx.queue.add_after(key, delay)
        return
    ctx.failures.pop(key, None)
    ctx.backoff_until.pop(key, None)
    if outcome.held:
        ctx.held.add(key)
    else:
        ctx.held.discard(key)
    if outcome.gone:
        ctx.queue.forget(key)
        return
    delay = ctx.resync_seconds
    if outcome.requeue_after is not None:
        delay = min(delay, outcome.requeue_after + 0.5)
    ctx.queue.resync_after(key, delay)


def work(ctx: OperatorContext, post: EventPoster) -> None:
    while (key := ctx.queue.get()) is not None:
        try:
            run_pass(ctx, key, post)  # type: ignore[arg-type]  # keys are (namespace, name)
        finally:
            ctx.queue.done(key)


class Workers:
    """The worker threads and the Event poster, started once the cache is loaded."""

    def __init__(self, ctx: OperatorContext) -> None:
        self.ctx = ctx
        self.poster = EventPoster(ctx.api, os.uname().nodename)
        self.threads = [threading.Thread(target=work, args=(ctx, self.poster), name=f"reconcile-{i}", daemon=True)
                        for i in range(ctx.workers)]

    def start(self) -> None:
        self.poster.start()
        for thread in self.threads:
            thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Passes under way finish (each is a handful of requests with timeouts); queued keys are dropped."""
        self.ctx.queue.shut_down()
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self.poster.stop()


def load_cache(ctx: OperatorContext, logger: logging.Logger) -> None:
    """A full list of Nodes and AppReleases into the cache (start-up and every re-list). On
    failure the cache keeps what it had (or stays unsynced: passes then read the API)."""
    try:
        apps = ctx.api.list_all_app_releases()
        ctx.cache.replace(ctx.api.node_labels(), apps)
    except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
        logger.warning(f"cannot list Nodes and AppReleases for the cache ({_brief(exc)}); retrying later")
        return
    # Every AppRelease gets a first pass (and from then on its resyncs): the ones listed for
    # the first time are woken, in list order; the ones gone while a watch was down are dropped.
    listed = {(obj["metadata"]["namespace"], obj["metadata"]["name"]) for obj in apps}
    for key in sorted(listed - ctx.known):
        ctx.known.add(key)
        ctx.wake(key)
    for key in ctx.known - listed:
        ctx.known.discard(key)
        ctx.queue.forget(key)


async def relist_cache(ctx: OperatorContext, logger: logging.Logger, every: float = RELIST_SECONDS) -> None:
    """Re-list now and then: bounds how long an object deleted while a watch was down (Kopf
    re-lists on reconnect but reports no DELETED) stays in the cache. Sooner while unsynced."""
    while True:
        await asyncio.sleep(every if ctx.cache.synced else 5.0)
        await asyncio.to_thread(load_cache, ctx, logger)


def _brief(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        return f"HTTP {exc.status} {exc.reason}"
    return f"{type(exc).__name__}: {exc}"


# ----- registration


def build_registry(ctx: OperatorContext) -> kopf.OperatorRegistry:
    """A Kopf registry with the operator's handlers bound to `ctx` (no global registration)."""
    registry = kopf.OperatorRegistry()

    relisting: list[asyncio.Task[None]] = []
    workers = Workers(ctx)

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, logger: logging.Logger, **_: Any) -> None:
        configure_settings(settings)
        # Kopf runs start-up handlers before it watches: the cache is full, and every AppRelease
        # queued, before the workers start.
        await asyncio.to_thread(load_cache, ctx, logger)
        workers.start()
        relisting.append(asyncio.create_task(relist_cache(ctx, logger)))
        metrics.operator_started()  # /readyz of --metrics-port

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        for task in relisting:
            task.cancel()
        await asyncio.to_thread(workers.stop)

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return connection_info(ctx.config)

    @kopf.on.event(GROUP, VERSION, HOST_PLURAL, id="wake-owner", registry=registry)
    async def host_release_event(body: kopf.Body, namespace: str, **_: Any) -> None:
        handle_event_host_release(ctx, body, namespace)

    @kopf.on.event("", "v1", "nodes", id="wake-on-node-labels", registry=registry)
    async def node_event(type: str | None, name: str, labels: kopf.Labels, **_: Any) -> None:
        handle_event_node(ctx, type, name, labels)

    @kopf.on.event(GROUP, VERSION, APP_PLURAL, id="wake-on-spec", registry=registry)
    async def app_release_event(body: kopf.Body, namespace: str, name: str, type: str | None, **_: Any) -> None:
        handle_event_app_release(ctx, body, namespace, name, type)

    return registry
