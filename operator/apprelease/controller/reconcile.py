"""One reconcile of an AppRelease, and its finalization: read the API, decide, act, report.

Called by `controller.handlers` (the per-AppRelease daemon runs `reconcile_app_release` in a
worker thread; the deletion handler runs `finalize_app_release`). The decisions are the pure
functions of `plan` and `status`; this module only gathers their inputs from the API and
applies their outputs, so it is level-triggered: run twice, or after a crash at any point,
it converges to the same state.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from .. import metrics
from ..kubeclient import ApiError
from ..api import envrefs, identity, resolve
from ..api.claims import Claims
from ..api.manifests import explain
from ..api.models import GROUP, AppRelease, AppReleaseStatus
from . import conflicts, grants, plan, status
from .cache import FleetCache
from .kube import APP_PLURAL, KubeApi, host_release_manifest, host_view, status_patch
from .status import Event

log = logging.getLogger(__name__)

# Holds a deleted AppRelease until its HostReleases are gone (the agents removed their apps).
OPERATOR_FINALIZER = f"{GROUP}/operator-cleanup"
FINALIZE_RETRY_SECONDS = 2.0  # between checks while the agents clean up (their events wake us sooner)

# Posts one event on the AppRelease object given (Kopf's poster in the operator, a list in tests).
EventSink = Callable[[Mapping[str, Any], Event], None]


@dataclass(frozen=True)
class Outcome:
    """What the caller's loop needs: whether the object still wants reconciling, and when again."""

    gone: bool = False  # deleted (finalized), nothing more to do
    requeue_after: float | None = None  # seconds until a time-based change (progress deadline)
    status_written: bool = False
    held: bool = False  # held by a conflict with an older AppRelease: woken when another one changes or goes


@dataclass(frozen=True)
class SecretsConfig:
    """How the operator handles referenced values: the digest key, and whose Role it keeps.

    `values_key` returns the key (read, or made, on first use: an operator whose AppReleases
    reference nothing never touches it); None: references resolve (SecretNotFound is reported)
    but no digest is made, so a rotated value rolls out nothing (only tests without a key).
    `agent_service_account` None: no per-namespace Role is kept (e.g. a cluster whose agents
    get their reads some other way)."""

    values_key: Callable[[], bytes] | None = None
    agent_service_account: tuple[str, str] | None = None  # (namespace, name)


def utcnow() -> datetime:
    # Whole seconds, as metav1.Time: a value read back then compares equal to the one written.
    return datetime.now(UTC).replace(microsecond=0)


def previous_status(obj: Mapping[str, Any]) -> AppReleaseStatus | None:
    raw = obj.get("status")
    if not raw:
        return None
    try:
        return AppReleaseStatus.model_validate(raw)
    except ValidationError as exc:
        # Someone wrote a status the model cannot read: it is rebuilt from scratch.
        log.warning("ignoring unreadable status of %s: %s", obj["metadata"]["name"], explain(exc))
        return None


def reconcile_app_release(
    api: KubeApi, namespace: str, name: str, now: datetime, post: EventSink,
    secrets: SecretsConfig = SecretsConfig(), cache: FleetCache | None = None,
) -> Outcome:
    """One pass. With a synced `cache`, Nodes and other AppReleases' claims are read from it,
    except that a step which would update or delete a host is recomputed on Nodes listed fresh
    (controller/cache.py says why that keeps maxUnavailable and deletions exact)."""
    cached = cache if cache is not None and cache.synced else None
    obj = api.get_app_release(namespace, name)
    if obj is None:
        metrics.forget_app(namespace, name)
        return Outcome(gone=True)
    meta = obj["metadata"]
    finalizers = list(meta.get("finalizers") or [])
    if meta.get("deletionTimestamp"):
        metrics.forget_app(namespace, name)
        return _finalize(api, obj, finalizers, secrets, cached)
    if OPERATOR_FINALIZER not in finalizers:
        # Before any HostRelease exists: a deletion then always waits for the hosts' clean-up.
        api.set_finalizers(APP_PLURAL, namespace, name, finalizers, [*finalizers, OPERATOR_FINALIZER],
                           meta.get("resourceVersion") or "")
    generation = int(obj["metadata"].get("generation") or 1)
    previous = previous_status(obj)
    try:
        app = AppRelease.model_validate(obj)
    except ValidationError as exc:
        # Terminal for this generation: reported, not retried; the next spec edit brings a new try.
        new = status.invalid_spec_status(previous, generation, f"spec is invalid: {explain(exc)}", now)
        for event in status.invalid_spec_events(previous, new):
            post(obj, event)
        return Outcome(status_written=_write_status(api, obj, previous, new))

    spec = app.spec
    update_agent_grants(api, namespace, secrets, references=envrefs.referenced_objects(spec), cache=cached)
    try:
        digest = _values_digest(api, namespace, name, spec, secrets)
    except (envrefs.MissingReference, envrefs.UnusableValue) as exc:
        # Like an invalid spec: nothing moves on any host (they keep serving what they serve)
        # until the object exists; its creation wakes this loop (the Secret/ConfigMap watch).
        reason = status.SECRET_NOT_FOUND if isinstance(exc, envrefs.MissingReference) else status.SECRET_UNUSABLE
        new = status.invalid_spec_status(previous, generation, str(exc), now, reason)
        for event in status.invalid_spec_events(previous, new, reason):
            post(obj, event)
        return Outcome(status_written=_write_status(api, obj, previous, new))
    selector = spec.hosts.node_selector
    nodes = cached.select_nodes(selector) if cached else api.list_node_names(selector)
    desired = {node: s.wire()
               for node, s in resolve.host_release_specs(namespace, name, nodes, spec, digest).items()}
    before = [host_view(o) for o in api.list_host_releases(namespace, name)]
    step = plan.next_step(desired, before, spec.strategy.max_unavailable, spec.paused)
    if cached and (step.updates or step.deletes):
        # Moving or removing a host takes availability away: decided on fresh Nodes only.
        fresh = api.list_node_names(selector)
        if fresh != nodes:
            nodes = fresh
            desired = {node: s.wire()
                       for node, s in resolve.host_release_specs(namespace, name, nodes, spec, digest).items()}
            step = plan.next_step(desired, before, spec.strategy.max_unavailable, spec.paused)
    conflict = None
    if step.creates or step.updates:
        found = _cluster_conflicts(api, obj, app, cached, nodes)
        if found:
            # Held like a paused rollout: nothing created or updated (the hosts it already has
            # keep what they serve); HostReleases of deselected Nodes still go.
            conflict = conflicts.describe(found)
            step = plan.next_step(desired, before, spec.strategy.max_unavailable, paused=True)
    released = _release_orphans(api, namespace, before)
    written = _apply(api, obj, step, desired)
    if step.deletes or released:
        after = [host_view(o) for o in api.list_host_releases(namespace, name)]
    else:  # what the writes returned: no second list (at a cold start, one list less per app)
        after = [h for h in before if h.name not in written] + [host_view(o) for o in written.values()]

    rollout = status.Rollout(
        generation=generation,
        version=spec.version,
        revision=identity.revision(identity.with_user(spec, namespace, name), digest),
        build_id=identity.build_id(spec),
        desired=desired,
        hosts=after,
        paused=spec.paused,
        progress_deadline_seconds=spec.strategy.progress_deadline_seconds,
        revision_history_limit=spec.revision_history_limit,
        conflict=conflict,
        template=resolve.release_template(spec),
    )
    new = status.compute_status(rollout, previous, now)
    events = status.rollout_events(previous, new, rollout, step, before, spec.strategy.max_unavailable)
    for event in events:
        post(obj, event)
    written = _write_status(api, obj, previous, new)
    _record_metrics(namespace, name, previous, new, events)
    return Outcome(requeue_after=status.deadline_in(rollout, new, now), status_written=written,
                   held=conflict is not None)


def _values_digest(api: KubeApi, namespace: str, name: str, spec: Any, secrets: SecretsConfig) -> str | None:
    """The keyed digest of what env/envFrom reference (None without references). Raises
    envrefs.MissingReference / UnusableValue; the values go no further than this function."""
    def lookup(kind: str, ref_name: str) -> dict[str, str] | None:
        if kind == envrefs.SECRET:
            return api.read_secret_data(namespace, ref_name)
        return api.read_config_map_data(namespace, ref_name)

    creds = spec.source.index_credentials
    if creds is not None:  # checked, never digested: new credentials build the same venv
        envrefs.index_credentials(namespace, creds.secret_name, lookup(envrefs.SECRET, creds.secret_name))
    if not envrefs.has_references(spec):
        return None

    resolved = envrefs.resolve_env(spec, namespace, lookup)
    if secrets.values_key is None:
        return None
    return envrefs.values_digest(secrets.values_key(), namespace, name, resolved)


def update_agent_grants(api: KubeApi, namespace: str, secrets: SecretsConfig,
                        references: frozenset[envrefs.ObjectRef] | None = None,
                        cache: FleetCache | None = None) -> None:
    """Keep the namespace's agent Role to exactly what its AppReleases reference (grants.py).

    `references`: what the AppRelease being reconciled references (read fresh; None: not
    known, e.g. when it leaves). With a synced `cache` the namespace's references come from it and the Role as
    last read or written too: no request unless the Role must change (one GET per namespace
    after each full list of the cache). Without one, the Role is read, and the namespace's
    AppReleases listed unless neither a Role nor references exist. Written only on a change."""
    if secrets.agent_service_account is None:
        return
    if cache is None:
        current = api.read_role_rules(namespace, grants.ROLE_NAME)
        if current is None and references is not None and not references:
            return
        _write_grants(api, namespace, secrets, current, _listed_references(api, namespace))
        return
    refs = cache.references(namespace) | (references or frozenset())
    with cache.roles_lock:
        if namespace not in cache.roles:
            cache.roles[namespace] = api.read_role_rules(namespace, grants.ROLE_NAME)
        cache.roles[namespace] = _write_grants(api, namespace, secrets, cache.roles[namespace], refs)


def _listed_references(api: KubeApi, namespace: str) -> set[envrefs.ObjectRef]:
    refs: set[envrefs.ObjectRef] = set()
    for other in api.list_app_releases(namespace):
        if other["metadata"].get("deletionTimestamp"):
            continue  # leaving: its agents clean up without reading values
        try:
            refs |= envrefs.referenced_objects(AppRelease.model_validate(other).spec)
        except ValidationError:
            continue  # never rolled out: grants nothing
    return refs


def _write_grants(api: KubeApi, namespace: str, secrets: SecretsConfig, current: list[dict[str, Any]] | None,
                  refs: set[envrefs.ObjectRef]) -> list[dict[str, Any]] | None:
    """Make the Role grant exactly `refs`; returns its rules now (None: no Role)."""
    manifest = grants.role_manifest(namespace, refs)
    if manifest is None:
        if current is not None:
            log.info("removing Role %s/%s: no AppRelease of the namespace references a Secret or ConfigMap",
                     namespace, grants.ROLE_NAME)
            api.delete_role_and_binding(namespace, grants.ROLE_NAME)
        return None
    if current == manifest["rules"]:
        return current
    log.info("granting the agents get on %s in %s", ", ".join(f"{r.kind}/{r.name}" for r in sorted(refs)),
             namespace)
    api.apply_role(manifest, exists=current is not None)
    assert secrets.agent_service_account is not None
    sa_namespace, sa_name = secrets.agent_service_account
    api.ensure_role_binding(grants.role_binding_manifest(namespace, sa_namespace, sa_name))
    return manifest["rules"]


def _cluster_conflicts(api: KubeApi, obj: Mapping[str, Any], app: AppRelease, cache: FleetCache | None,
                       nodes: list[str]) -> list[conflicts.ClusterConflict]:
    """What older AppReleases claim of this one's claims on Nodes both select: from the cache
    (the apps sharing one of `nodes`), else two lists."""
    me = _contender(obj, app)
    if cache is not None:
        others, labels = cache.neighbours(nodes)
        return conflicts.cluster_conflicts(me, others, labels)
    others = []
    for other in api.list_all_app_releases():
        if other["metadata"].get("deletionTimestamp"):
            continue  # leaving: what it still serves, the agents see
        try:
            others.append(_contender(other, AppRelease.model_validate(other)))
        except ValidationError:
            continue  # an invalid spec is never rolled out, so it claims nothing
    return conflicts.cluster_conflicts(me, others, api.node_labels())


def _contender(obj: Mapping[str, Any], app: AppRelease) -> conflicts.Contender:
    meta = obj["metadata"]
    return conflicts.Contender(
        namespace=meta["namespace"], name=meta["name"], created=meta.get("creationTimestamp") or "",
        node_selector=app.spec.hosts.node_selector, claims=Claims.of(app.spec.proxy),
    )


def _finalize(api: KubeApi, obj: Mapping[str, Any], finalizers: list[str], secrets: SecretsConfig,
              cache: FleetCache | None) -> Outcome:
    """A deleted AppRelease: delete its HostReleases, and let it go once they are gone."""
    meta = obj["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    if OPERATOR_FINALIZER not in finalizers:
        return Outcome(gone=True)  # released already; another finalizer holds it
    remaining = finalize_app_release(api, namespace, name, secrets, cache)
    if remaining:
        log.info("%s/%s: waiting for the agents to clean up and release %s", namespace, name, ", ".join(remaining))
        return Outcome(requeue_after=FINALIZE_RETRY_SECONDS)
    api.remove_finalizer(namespace, name, finalizers, OPERATOR_FINALIZER, plural=APP_PLURAL)
    log.info("%s/%s: all HostReleases are gone; released the AppRelease", namespace, name)
    return Outcome(gone=True)


def finalize_app_release(api: KubeApi, namespace: str, name: str,
                         secrets: SecretsConfig = SecretsConfig(), cache: FleetCache | None = None) -> list[str]:
    """Delete the app's HostReleases; return the names still present (their agents are cleaning up).

    HostReleases of Nodes that no longer exist lose the agent's finalizer here: no agent
    will ever report on them. The agents' Role stops naming what only this app referenced.
    """
    update_agent_grants(api, namespace, secrets, cache=cache if cache is not None and cache.synced else None)
    hosts = [host_view(o) for o in api.list_host_releases(namespace, name)]
    for host in hosts:
        if not host.deleting:
            log.info("deleting HostRelease %s/%s", namespace, host.name)
            api.delete_host_release(namespace, host.name)
    hosts = [host_view(o) for o in api.list_host_releases(namespace, name)]
    if _release_orphans(api, namespace, hosts):
        hosts = [host_view(o) for o in api.list_host_releases(namespace, name)]
    return sorted(h.name for h in hosts)


def _apply(api: KubeApi, obj: Mapping[str, Any], step: plan.Step,
           desired: Mapping[str, plan.WireSpec]) -> dict[str, dict[str, Any]]:
    """Delete, update, create as `step` says; returns the HostReleases updated or created, by name."""
    meta = obj["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    written: dict[str, dict[str, Any]] = {}
    for host_name in step.deletes:
        log.info("deleting HostRelease %s/%s: its node is no longer selected", namespace, host_name)
        api.delete_host_release(namespace, host_name)
    for node in step.updates:
        host_name = resolve.host_release_name(name, node)
        log.info("updating HostRelease %s/%s to revision %s", namespace, host_name, desired[node]["revision"])
        written[host_name] = api.replace_host_release_spec(namespace, host_name, desired[node])
    for node in step.creates:
        host_name = resolve.host_release_name(name, node)
        log.info("creating HostRelease %s/%s at revision %s", namespace, host_name, desired[node]["revision"])
        manifest = host_release_manifest(name, namespace, meta["uid"], node, host_name, desired[node])
        try:
            written[host_name] = api.create_host_release(manifest)
        except ApiError as exc:
            if exc.status != 409:
                raise
            # A HostRelease of that name exists without our labels (not listed as ours): leave
            # it alone and say so; it is not ours to overwrite.
            log.warning("HostRelease %s/%s exists but is not labelled for %s; not touching it",
                        namespace, host_name, name)
    return written


def _release_orphans(api: KubeApi, namespace: str, hosts: list[plan.HostView]) -> tuple[str, ...]:
    candidates = [h.node for h in hosts if h.deleting and plan.AGENT_FINALIZER in h.finalizers]
    if not candidates:
        return ()
    names = plan.finalizers_to_release(hosts, api.existing_nodes(candidates))
    by_name = {h.name: h for h in hosts}
    for host_name in names:
        log.info("removing %s from HostRelease %s/%s: its node no longer exists",
                 plan.AGENT_FINALIZER, namespace, host_name)
        api.remove_finalizer(namespace, host_name, by_name[host_name].finalizers, plan.AGENT_FINALIZER)
    return names


def _write_status(
    api: KubeApi, obj: Mapping[str, Any], previous: AppReleaseStatus | None, new: AppReleaseStatus
) -> bool:
    """Patch the status subresource, only when it changed."""
    new_wire = new.wire()
    if previous is not None and previous.wire() == new_wire:
        return False
    meta = obj["metadata"]
    api.patch_app_release_status(meta["namespace"], meta["name"], status_patch(new_wire, obj.get("status")))
    return True


# ----- metrics (apprelease.metrics): recorded after the status write, from the same decisions


def _record_metrics(namespace: str, name: str, previous: AppReleaseStatus | None, new: AppReleaseStatus,
                    events: list[Event]) -> None:
    metrics.record_rollout(namespace, name, (e.reason for e in events), status.halted_reason(previous, new),
                           (h.phase for h in new.hosts))
