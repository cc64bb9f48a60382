"""The Kopf wiring of the operator: settings, login, watch handlers, the per-AppRelease loop.

Called by `controller.cli` (`apprelease operator`), which builds a registry with
`build_registry(ctx)` and runs Kopf with it; tests start that command as a subprocess
(tests/support/operator.py). Handlers are thin: bodies are the `handle_*` functions here,
which call `controller.reconcile`.

How a change reaches an AppRelease's reconcile (the triggers):
- each AppRelease has a Kopf daemon, `rollout loop`, the only place its rollout is reconciled:
  one loop per object, so two reconciles of the same AppRelease never race on the
  maxUnavailable budget. It reconciles, then waits until woken or until a resync period
  (or the progress deadline, whichever is first) passes, and reconciles again;
- watch events wake loops: a HostRelease event wakes its owner's loop (the controller
  ownerReference, else the app label), a Node whose labels changed (or that came or went)
  wakes every loop, an AppRelease whose generation is not yet observed wakes its own loop, and
  one that changed or is deleted also wakes the loops held by a host conflict;
- the periodic resync makes it level-triggered; it is also what notices a rotated Secret value
  (a new revision) or a Secret that appears (ending SecretNotFound): the operator may `get`
  Secrets by name but not list or watch them (manifests/operator-rbac.yaml): a missed event
  costs at most one period.
Each pass reads the AppRelease and its HostReleases from the API (no in-memory rollout state),
so a restarted operator resumes exactly where the API says the rollout is. Nodes and the other
AppReleases' claims come from a shared cache (controller/cache.py: filled by a list at start-up,
before Kopf watches, then by the same watch events that wake loops, and re-listed every few
minutes); moves and deletions of hosts are still decided on Nodes listed fresh.

Deletion: Kopf's finalizer (named `apprelease.dev/operator-cleanup`) holds the AppRelease; the
delete handler deletes its HostReleases and retries with a delay (TemporaryError) until the
agents have removed their finalizers; the daemon is stopped by Kopf as soon as the object
is marked for deletion.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf
import urllib3

from .. import metrics
from ..kubeclient import ApiError as ApiException
from ..kubeclient import Config as Configuration
from ..api.models import APP_LABEL, GROUP, VERSION
from .cache import RELIST_SECONDS, FleetCache
from .kube import APP_PLURAL, HOST_PLURAL, KubeApi, connection_info
from .reconcile import SecretsConfig, finalize_app_release, reconcile_app_release, utcnow
from .status import Event
from .triggers import Wakeups

OPERATOR_FINALIZER = f"{GROUP}/operator-cleanup"
ANNOTATION_PREFIX = f"operator.{GROUP}"
RESYNC_SECONDS = 30.0  # level-triggered safety net between event-driven reconciles
ERROR_BACKOFF = (1.0, 2.0, 5.0, 10.0, 30.0)  # seconds between failed reconciles (e.g. apiserver down)
FINALIZE_RETRY_SECONDS = 2.0


@dataclass
class OperatorContext:
    """What the handlers share: the API client, the wake-ups, and the cache of Nodes and AppReleases."""

    config: Configuration
    api: KubeApi
    wakeups: Wakeups = field(default_factory=Wakeups)
    cache: FleetCache = field(default_factory=FleetCache)
    held: set[tuple[str, str]] = field(default_factory=set)  # rollouts held by a conflict with an older AppRelease
    resync_seconds: float = RESYNC_SECONDS
    secrets: SecretsConfig = field(default_factory=SecretsConfig)


def configure_settings(settings: kopf.OperatorSettings) -> None:
    """Kopf settings the operator relies on (see TOOLING.md, Kopf notes)."""
    # Standalone: one replica for now (leader election comes later); no peering objects needed.
    settings.peering.standalone = True
    settings.peering.mandatory = False
    # Kopf's state in annotations under our own prefix: the structural CRD schema would prune a
    # `status.kopf` field, and Kopf would then never see its own progress.
    settings.persistence.finalizer = OPERATOR_FINALIZER
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
    settings.posting.enabled = True
    settings.posting.level = logging.INFO
    settings.posting.reporting_component = "apprelease-operator"


def owner_of(body: Mapping[str, Any]) -> str | None:
    """The AppRelease a HostRelease belongs to: its controller ownerReference, else its app label."""
    meta = body.get("metadata") or {}
    for ref in meta.get("ownerReferences") or ():
        if ref.get("kind") == "AppRelease" and ref.get("controller"):
            return ref.get("name")
    return (meta.get("labels") or {}).get(APP_LABEL)


def kopf_event_sink(obj: Mapping[str, Any], event: Event) -> None:
    """Post through Kopf's event poster (thread-safe; it batches and retries)."""
    logging.getLogger(__name__).info("%s/%s %s: %s", obj["metadata"]["namespace"], obj["metadata"]["name"],
                                     event.reason, event.message)
    kopf.event(dict(obj), type=event.type, reason=event.reason, message=event.message)


# ----- handler bodies


def handle_event_host_release(ctx: OperatorContext, body: Mapping[str, Any], namespace: str) -> None:
    owner = owner_of(body)
    if owner:
        ctx.wakeups.wake((namespace, owner))


def handle_event_node(ctx: OperatorContext, event_type: str | None, name: str, labels: Mapping[str, str]) -> None:
    # Kopf's first listing repeats what the start-up list loaded: no change, no wake-up storm.
    if ctx.cache.node_event(event_type, name, labels):
        ctx.wakeups.wake_all()


def handle_event_app_release(ctx: OperatorContext, body: Mapping[str, Any], namespace: str, name: str,
                             event_type: str | None = None) -> None:
    meta = body.get("metadata") or {}
    ctx.cache.app_event(event_type, body)  # before any wake-up: a woken loop reads the new claims
    generation = meta.get("generation")
    observed = (body.get("status") or {}).get("observedGeneration")
    if generation != observed:  # our own status writes do not wake the loop again
        ctx.wakeups.wake((namespace, name))
    if generation != observed or event_type == "DELETED" or meta.get("deletionTimestamp"):
        # Another AppRelease changed its claims or leaves: a rollout held by it may go on now.
        for key in ctx.held - {(namespace, name)}:
            ctx.wakeups.wake(key)


async def handle_daemon_app_release(
    ctx: OperatorContext, namespace: str, name: str, stopped: kopf.DaemonStopped, logger: logging.Logger
) -> None:
    """Reconcile one AppRelease until Kopf stops the daemon (deletion or operator exit)."""
    key = (namespace, name)
    failures = 0
    try:
        while not stopped:
            ctx.wakeups.clear(key)
            try:
                # The kubernetes client is synchronous: run the whole pass off the event loop.
                with metrics.OPERATOR_RECONCILE_SECONDS.time():
                    outcome = await asyncio.to_thread(
                        reconcile_app_release, ctx.api, namespace, name, utcnow(), kopf_event_sink, ctx.secrets,
                        ctx.cache,
                    )
            except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
                metrics.operator_reconcile_failed(exc)
                delay = ERROR_BACKOFF[min(failures, len(ERROR_BACKOFF) - 1)]
                failures += 1
                logger.warning(f"reconcile failed ({_brief(exc)}); retrying in {delay:g}s")
                # Not woken early by events: a failing apiserver is not hammered.
                await stopped.wait(delay)
                continue
            failures = 0
            if outcome.held:
                ctx.held.add(key)
            else:
                ctx.held.discard(key)
            # When `outcome.gone`, the object is being deleted: Kopf stops this loop shortly.
            timeout = ctx.resync_seconds
            if outcome.requeue_after is not None:
                timeout = min(timeout, outcome.requeue_after + 0.5)
            await _pause(ctx, key, timeout, stopped)
    finally:
        ctx.wakeups.forget(key)
        ctx.held.discard(key)


async def _pause(ctx: OperatorContext, key: tuple[str, str], timeout: float, stopped: kopf.DaemonStopped) -> None:
    """Wait until woken, stopped, or `timeout` passes (stopping promptly spares Kopf a cancel)."""
    waits = {asyncio.ensure_future(ctx.wakeups.wait(key, timeout)), asyncio.ensure_future(stopped.wait(timeout))}
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waits:
            task.cancel()


def handle_delete_app_release(ctx: OperatorContext, namespace: str, name: str, logger: logging.Logger) -> None:
    remaining = finalize_app_release(ctx.api, namespace, name, ctx.secrets)
    if remaining:
        raise kopf.TemporaryError(
            f"waiting for the agents to clean up and release {', '.join(remaining)}",
            delay=FINALIZE_RETRY_SECONDS,
        )
    logger.info("all HostReleases are gone")


def load_cache(ctx: OperatorContext, logger: logging.Logger) -> None:
    """A full list of Nodes and AppReleases into the cache (start-up and every re-list). On
    failure the cache keeps what it had (or stays unsynced: passes then read the API)."""
    try:
        ctx.cache.replace(ctx.api.node_labels(), ctx.api.list_all_app_releases())
    except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
        logger.warning(f"cannot list Nodes and AppReleases for the cache ({_brief(exc)}); retrying later")


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

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, logger: logging.Logger, **_: Any) -> None:
        configure_settings(settings)
        # Kopf runs start-up handlers before it watches: the cache is full before any loop runs.
        await asyncio.to_thread(load_cache, ctx, logger)
        relisting.append(asyncio.create_task(relist_cache(ctx, logger)))
        metrics.operator_started()  # /readyz of --metrics-port

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        for task in relisting:
            task.cancel()

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

    # Stopping: the loop is asked first (it returns from its pause at once), cancelled after 2 s
    # (e.g. while a reconcile pass is still running in its thread); it holds no state to save.
    @kopf.daemon(GROUP, VERSION, APP_PLURAL, id="rollout", cancellation_backoff=2.0, cancellation_timeout=10.0,
                 backoff=5.0, registry=registry)
    async def rollout(namespace: str, name: str, stopped: kopf.DaemonStopped, logger: logging.Logger,
                      **_: Any) -> None:
        await handle_daemon_app_release(ctx, namespace, name, stopped, logger)

    @kopf.on.delete(GROUP, VERSION, APP_PLURAL, id="delete-host-releases", registry=registry)
    def delete(namespace: str, name: str, logger: logging.Logger, **_: Any) -> None:
        handle_delete_app_release(ctx, namespace, name, logger)

    return registry
