"""What `kubectl apprelease` shows and decides, computed from API objects. Pure.

Called by `plugin.cli` with the objects `plugin.kube` fetched; unit-tested as matrices in
tests/unit/test_plugin_views.py. Nothing here does I/O, so every answer the plugin gives
(a table, the verdict of `status -w`, the plan of `diff`, the template `undo` applies) is a
function of what the apiserver holds, as the operator's own decisions are.

- `status_view` / `rollout_verdict`: per-host rows and whether a rollout is over. The
  verdict reads the operator's conditions, never recomputes them, so the plugin, Argo CD's
  health check and the operator agree: complete (exit 0) when Progressing is
  RolloutComplete for the current generation; failed (exit 1) on Degraded (HostFailed,
  InvalidSpec), on ProgressDeadlineExceeded, and on a paused rollout (it cannot complete
  until someone resumes it: a CI gate must not wait for a person).
- `history_rows`: one row per revision in the AppRelease's history, with when it was first
  and last served (from the hosts' switch history) and on which hosts its venv is still on
  disk (HostRelease `status.retainedBuildIds`): there a rollback builds nothing.
- `diff_rows`: what applying a new AppRelease would do on each host. The desired
  HostRelease specs come from `api.resolve` (the operator's fan-out), the order from
  `controller.plan.next_step` (the operator's rollout planner), and the host's work from
  `host.plan.plan_release` (the agent's planner) run on what the HostRelease status says is
  on that host: build a venv, reuse one on disk, start new workers, re-render nginx only, or
  nothing. The nginx site is compared as the proxy settings it is rendered from.
- `undo_target` / `undo_patch`: the template of the revision to go back to (the AppRelease
  status keeps each completed revision's template, see `controller.status`), and the JSON
  patch that puts it into the spec without touching hosts, strategy or paused.
- `argocd_tracking` / `argocd_advice`: whether Argo CD manages the object, and the
  `git revert` to do instead of an undo it would sync away.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from ..api import envrefs, identity, resolve
from ..api.models import (
    APP_LABEL,
    NODE_LABEL,
    AppRelease,
    AppReleaseStatus,
    HostReleaseSpec,
    HostReleaseStatus,
    ReleaseTemplate,
    RetainedRelease,
)
from ..controller import plan as rollout_plan
from ..host import plan as host_plan
from ..host.layout import process_instances

Obj = Mapping[str, Any]

# ----- small readers


def parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if not value:
        return None
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def age(since: datetime | None, now: datetime) -> str:
    """kubectl's short age: 45s, 3m, 2h, 5d."""
    if since is None:
        return "-"
    seconds = max(0, int((now - since).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size * (2 if unit != "d" else 1):
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def app_status(app: Obj) -> AppReleaseStatus:
    try:
        return AppReleaseStatus.model_validate(app.get("status") or {})
    except ValidationError:
        return AppReleaseStatus()


def host_status(hr: Obj) -> HostReleaseStatus:
    try:
        return HostReleaseStatus.model_validate(hr.get("status") or {})
    except ValidationError:
        return HostReleaseStatus()


def host_spec(hr: Obj) -> HostReleaseSpec | None:
    try:
        return HostReleaseSpec.model_validate(hr.get("spec") or {})
    except ValidationError:
        return None


def node_of(hr: Obj) -> str:
    labels = (hr.get("metadata") or {}).get("labels") or {}
    return labels.get(NODE_LABEL) or (hr.get("spec") or {}).get("node") or "?"


def generation(obj: Obj) -> int:
    return int((obj.get("metadata") or {}).get("generation") or 1)


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """kubectl's plain table: columns padded to the widest cell, three spaces apart."""
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=True)]
    lines = ["   ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
             for line in (header, *rows)]
    return "\n".join(lines)


# ----- status


@dataclass(frozen=True)
class HostRow:
    node: str
    phase: str
    serving_version: str | None
    serving_revision: str | None
    desired_version: str | None
    desired_revision: str | None
    since: datetime | None
    message: str

    def wire(self) -> dict[str, Any]:
        return {"node": self.node, "phase": self.phase, "servingVersion": self.serving_version,
                "servingRevision": self.serving_revision, "desiredVersion": self.desired_version,
                "desiredRevision": self.desired_revision,
                "since": self.since.isoformat().replace("+00:00", "Z") if self.since else None,
                "message": self.message}


def host_rows(hrs: Sequence[Obj]) -> list[HostRow]:
    """One row per HostRelease, in node order. `since` is when its Ready condition last changed."""
    rows = []
    for hr in hrs:
        status, spec = host_status(hr), host_spec(hr)
        observed = status.observed_generation == generation(hr)
        phase = status.phase if observed and status.phase else "Pending"
        if (hr.get("metadata") or {}).get("deletionTimestamp"):
            phase = "Terminating"
        ready = next((c for c in status.conditions if c.type == "Ready"), None)
        rows.append(HostRow(
            node=node_of(hr), phase=phase, serving_version=status.serving_version,
            serving_revision=status.serving_revision,
            desired_version=spec.version if spec else None, desired_revision=spec.revision if spec else None,
            since=ready.last_transition_time if ready else status.updated_at,
            message=" ".join((status.message or "").split()),
        ))
    return sorted(rows, key=lambda r: r.node)


def status_table(rows: Sequence[HostRow], now: datetime, width: int = 100) -> str:
    header = ("NODE", "PHASE", "SERVING", "DESIRED", "SINCE", "MESSAGE")
    table = []
    for r in rows:
        serving = f"{r.serving_version} ({r.serving_revision})" if r.serving_revision else "-"
        desired = "=" if r.desired_revision == r.serving_revision and r.serving_revision else (
            f"{r.desired_version} ({r.desired_revision})" if r.desired_revision else "-")
        message = r.message if len(r.message) <= width else r.message[: width - 3] + "..."
        table.append((r.node, r.phase, serving, desired, age(r.since, now), message or "-"))
    return format_table(header, table)


def conditions_table(app: Obj, now: datetime) -> str:
    status = app_status(app)
    rows = [(c.type, c.status, c.reason, age(c.last_transition_time, now), " ".join(c.message.split()))
            for c in status.conditions]
    return format_table(("CONDITION", "STATUS", "REASON", "SINCE", "MESSAGE"), rows)


def status_document(app: Obj, hrs: Sequence[Obj]) -> dict[str, Any]:
    """`status -o json|yaml`: the summary, the host rows and the conditions."""
    meta = app.get("metadata") or {}
    status = app_status(app)
    return {
        "name": meta.get("name"), "namespace": meta.get("namespace"),
        "version": (app.get("spec") or {}).get("version"),
        "generation": generation(app), "observedGeneration": status.observed_generation,
        "ready": status.ready, "paused": bool((app.get("spec") or {}).get("paused")),
        "currentRevision": status.current_revision,
        "hosts": [r.wire() for r in host_rows(hrs)],
        "conditions": [c.wire() for c in status.conditions],
    }


def status_summary(app: Obj) -> str:
    meta, spec, status = app.get("metadata") or {}, app.get("spec") or {}, app_status(app)
    paused = ", paused" if spec.get("paused") else ""
    return (f"AppRelease {meta.get('namespace')}/{meta.get('name')}: version {spec.get('version')}, "
            f"ready {status.ready or '-'}, generation {generation(app)} "
            f"(observed {status.observed_generation if status.observed_generation is not None else '-'}){paused}")


@dataclass(frozen=True)
class Verdict:
    """Whether `status -w` may stop, its exit code, and the line it prints."""

    done: bool
    exit_code: int
    message: str


def rollout_verdict(app: Obj) -> Verdict:
    gen = generation(app)
    status = app_status(app)
    if status.observed_generation is None or status.observed_generation < gen:
        return Verdict(False, 0, f"waiting for the operator to observe generation {gen}")
    conditions = {c.type: c for c in status.conditions if c.observed_generation in (None, gen)}
    degraded, progressing = conditions.get("Degraded"), conditions.get("Progressing")
    if degraded is not None and degraded.status == "True":
        return Verdict(True, 1, f"rollout failed ({degraded.reason}): {degraded.message}")
    if progressing is None:
        return Verdict(False, 0, "waiting for the operator's Progressing condition")
    if progressing.reason == "ProgressDeadlineExceeded":
        return Verdict(True, 1, f"rollout failed (ProgressDeadlineExceeded): {progressing.message}")
    if progressing.reason == "RolloutPaused":
        name = (app.get("metadata") or {}).get("name")
        return Verdict(True, 1, f"rollout is paused, it cannot complete: {progressing.message} "
                                f"(kubectl apprelease resume {name})")
    if progressing.reason == "RolloutComplete" and progressing.status == "True":
        return Verdict(True, 0, f"rollout complete: {progressing.message}")
    return Verdict(False, 0, progressing.message)


def progress_line(app: Obj, hrs: Sequence[Obj]) -> str:
    """One line per change while `status -w` follows a rollout."""
    status = app_status(app)
    hosts = "  ".join(
        f"{r.node}: {r.phase}" + (f" {r.serving_version}" if r.serving_version else "")
        + (f" -> {r.desired_version}" if r.desired_revision != r.serving_revision and r.desired_version else "")
        for r in host_rows(hrs))
    return f"{(app.get('spec') or {}).get('version')}  ready {status.ready or '-'}  |  {hosts}"


# ----- history


@dataclass(frozen=True)
class HistoryRow:
    revision: str
    version: str
    build_id: str
    first_served: datetime | None
    last_served: datetime | None  # None with `serving`: still served
    serving_on: tuple[str, ...]
    retained_on: tuple[str, ...]
    current: bool
    has_template: bool

    def wire(self) -> dict[str, Any]:
        def t(d: datetime | None) -> str | None:
            return d.isoformat().replace("+00:00", "Z") if d else None
        return {"revision": self.revision, "version": self.version, "buildId": self.build_id,
                "firstServed": t(self.first_served), "lastServed": t(self.last_served),
                "servingOn": list(self.serving_on), "retainedOn": list(self.retained_on),
                "current": self.current, "undoable": self.has_template}


def history_rows(app: Obj, hrs: Sequence[Obj]) -> list[HistoryRow]:
    """The AppRelease's completed revisions, oldest first, seen through the hosts.

    A host's history is the list of revisions it switched to, in order: a revision served
    there from its switch until the next switch. First served is the earliest switch to it on
    any host (or the operator's firstDeployed), last served the latest switch away from it;
    a revision some host still serves has no end.
    """
    status = app_status(app)
    hosts = [(node_of(hr), host_status(hr)) for hr in hrs]
    rows = []
    for entry in status.history:
        starts, ends, serving, retained = [], [], [], []
        for node, hs in hosts:
            events = hs.history
            for i, event in enumerate(events):
                if event.revision != entry.revision:
                    continue
                starts.append(event.at)
                if i + 1 < len(events):
                    ends.append(events[i + 1].at)
            if hs.serving_revision == entry.revision:
                serving.append(node)
            if entry.build_id in hs.retained_build_ids:
                retained.append(node)
        first = min([t for t in [entry.first_deployed, *starts] if t is not None], default=None)
        rows.append(HistoryRow(
            revision=entry.revision, version=entry.version, build_id=entry.build_id, first_served=first,
            last_served=None if serving else max(ends, default=None), serving_on=tuple(sorted(serving)),
            retained_on=tuple(sorted(retained)), current=entry.revision == status.current_revision,
            has_template=entry.template is not None,
        ))
    return rows


def history_table(rows: Sequence[HistoryRow], now: datetime) -> str:
    def when(row: HistoryRow) -> str:
        if row.serving_on:
            return "now"
        return f"{age(row.last_served, now)} ago" if row.last_served else "-"

    table = [(r.revision + (" *" if r.current else ""), r.version, r.build_id,
              f"{age(r.first_served, now)} ago" if r.first_served else "-", when(r),
              ",".join(r.serving_on) or "-", ",".join(r.retained_on) or "-")
             for r in rows]
    return format_table(("REVISION", "VERSION", "BUILD", "FIRST SERVED", "LAST SERVED", "SERVING ON",
                         "ON DISK (instant rollback)"), table)


# ----- undo


class UndoError(ValueError):
    """No revision to go back to, or the one asked for cannot be applied; the message says why."""


def values_digest(hrs: Sequence[Obj]) -> str | None:
    """The keyed digest of referenced values the operator last wrote into the app's HostReleases.

    The plugin never reads Secrets and cannot compute it (the key is the operator's); the
    newest one written is what the spec's revision has while the values stay as they are."""
    found = [(generation(hr), spec.values_digest) for hr in hrs
             if (spec := host_spec(hr)) is not None and spec.values_digest]
    return max(found)[1] if found else None


def desired_revision(app: Obj, digest: str | None = None) -> str | None:
    """The revision the AppRelease's spec asks for now (None if the spec does not validate);
    `digest`: `values_digest` of its HostReleases, for a spec whose env references Secrets."""
    try:
        model = AppRelease.model_validate(app)
    except ValidationError:
        return None
    digest = digest if envrefs.has_references(model.spec) else None
    return identity.revision(identity.with_user(model.spec, model.metadata.namespace, model.metadata.name), digest)


def undo_target(app: Obj, to_revision: str | None = None, digest: str | None = None) -> RetainedRelease:
    """The history entry `undo` applies: the most recent one whose revision differs from the
    spec's (after v1 -> v2 that is v1; after a failed v3 it is v2, the last that completed),
    or the one named by `to_revision` (a revision hash, a unique prefix of one, or a version)."""
    history = app_status(app).history
    if to_revision:
        matches = [r for r in history if r.revision == to_revision or r.version == to_revision]
        if not matches:
            matches = [r for r in history if r.revision.startswith(to_revision)]
        if not matches:
            known = ", ".join(f"{r.revision} ({r.version})" for r in history) or "none"
            raise UndoError(f"no revision {to_revision!r} in the history; known: {known}")
        if len({r.revision for r in matches}) > 1:
            raise UndoError(f"{to_revision!r} names several revisions: "
                            + ", ".join(f"{r.revision} ({r.version})" for r in matches))
        target = matches[-1]
    else:
        current = desired_revision(app, digest)
        older = [r for r in history if r.revision != current]
        if not older:
            raise UndoError("no earlier revision in the history to go back to")
        target = older[-1]
    if target.template is None:
        raise UndoError(f"revision {target.revision} ({target.version}) was recorded before the operator kept "
                        f"templates: revert the manifest to {target.version} instead")
    return target


TEMPLATE_FIELDS = tuple(f.alias or n for n, f in ReleaseTemplate.model_fields.items())


def undo_patch(app: Obj, template: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A JSON patch setting the spec's release fields to `template` (fields it lacks are removed),
    guarded by the resourceVersion read: a concurrent edit fails it instead of being lost."""
    spec = app.get("spec") or {}
    ops: list[dict[str, Any]] = [{"op": "test", "path": "/metadata/resourceVersion",
                                  "value": (app.get("metadata") or {}).get("resourceVersion")}]
    for name in TEMPLATE_FIELDS:
        if name in template:
            ops.append({"op": "add", "path": f"/spec/{name}", "value": template[name]})
        elif name in spec:
            ops.append({"op": "remove", "path": f"/spec/{name}"})
    return ops


# ----- Argo CD

ARGOCD_INSTANCE_LABEL = "app.kubernetes.io/instance"
ARGOCD_TRACKING_ANNOTATION = "argocd.argoproj.io/tracking-id"


@dataclass(frozen=True)
class Tracking:
    application: str  # the Application's name (with "namespace_" when apps live in any namespace)
    by: str  # what said so


def argocd_tracking(app: Obj) -> Tracking | None:
    """Argo CD's mark on an object it manages: the tracking-id annotation
    (`<app>:<group>/<kind>:<namespace>/<name>`, Argo CD 3's default) or the instance label
    (its older default; Helm sets that label too, hence `--force`)."""
    meta = app.get("metadata") or {}
    annotation = (meta.get("annotations") or {}).get(ARGOCD_TRACKING_ANNOTATION)
    if annotation:
        return Tracking(annotation.split(":", 1)[0], f"annotation {ARGOCD_TRACKING_ANNOTATION}")
    label = (meta.get("labels") or {}).get(ARGOCD_INSTANCE_LABEL)
    if label:
        return Tracking(label, f"label {ARGOCD_INSTANCE_LABEL}")
    return None


def argocd_advice(app: Obj, tracking: Tracking, target: RetainedRelease, application: Obj | None) -> str:
    """Why undo refuses, and the git commands that do the same through Argo CD.

    With the Application readable, the commits to revert are those between its previously
    deployed revision and the synced one that touched its path; otherwise the generic recipe.
    """
    name = (app.get("metadata") or {}).get("name")
    lines = [f"AppRelease {name} is managed by Argo CD (Application {tracking.application}, {tracking.by}): "
             f"an undo here would be reverted by its next sync (or leave it OutOfSync).",
             f"Go back to {target.version} ({target.revision}) in git instead:"]
    source = ((application or {}).get("spec") or {}).get("source") or {}
    status = (application or {}).get("status") or {}
    synced = (status.get("sync") or {}).get("revision")
    deployed = [h.get("revision") for h in status.get("history") or [] if h.get("revision")]
    path = source.get("path") or "."
    repo = source.get("repoURL")
    if repo:
        lines.append(f"  # repository {repo}, path {path}")
    if synced and len(deployed) >= 2 and deployed[-1] == synced:
        lines.append(f"  git log --oneline {deployed[-2][:12]}..{synced[:12]} -- {path}")
        lines.append("  git revert --no-edit <each commit listed, newest first> && git push")
    elif synced:
        lines.append(f"  git log --oneline -- {path}        # Argo CD synced {synced[:12]}")
        lines.append("  git revert --no-edit <the commit that changed the AppRelease> && git push")
    else:
        lines.append(f"  git log --oneline -- <the file of AppRelease {name}>")
        lines.append("  git revert --no-edit <the commit that changed it> && git push")
    lines.append("(--force applies the old template here anyway)")
    return "\n".join(lines)


# ----- diff

# What a host does for a new spec, cheapest last.
BUILD = "build venv"
REUSE = "reuse venv"
NEW_WORKERS = "new workers"
NGINX_ONLY = "nginx only"
NOTHING = "nothing"
CREATE = "new host"
REMOVE = "remove"


@dataclass(frozen=True)
class DiffRow:
    node: str
    action: str  # one of the constants above
    current: str  # version (revision) now
    desired: str
    when: str  # "first batch", "after earlier hosts", "paused", "-"
    detail: str = ""
    plan: tuple[str, ...] = field(default=())  # the agent's plan, for -o json|yaml

    @property
    def changes(self) -> bool:
        """Whether applying changes anything for this host (its spec, if not its processes)."""
        return self.action != NOTHING or self.detail.startswith("spec only")

    def wire(self) -> dict[str, Any]:
        return {"node": self.node, "action": self.action, "current": self.current, "desired": self.desired,
                "when": self.when, "detail": self.detail, "agentPlan": list(self.plan)}


def _proxy_key(spec: ReleaseTemplate) -> str:
    """The nginx site as what it is rendered from: the proxy settings (and the app they route to)."""
    return json.dumps(spec.proxy.wire(), sort_keys=True)


def _changed_fields(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def host_work(desired: HostReleaseSpec, current: HostReleaseSpec | None, status: HostReleaseStatus,
              observed: bool) -> tuple[str, tuple[str, ...]]:
    """What the agent's planner does on a host moving to `desired`, and the plan itself.

    The host is seen through its HostRelease status: the venvs it keeps (retainedBuildIds),
    the revision it serves (its workers run), the nginx site of the spec it has applied, and
    a revision it failed on (terminal there until the spec changes).
    """
    serving = status.serving_revision
    applied_site = _proxy_key(current) if current is not None else None
    failed = current.revision if (current is not None and observed and status.phase == "Failed") else None
    instances = process_instances({name: p.replicas for name, p in desired.processes.items()})
    ran = status.release_command
    observed_host = host_plan.Observed(
        releases=frozenset(status.retained_build_ids) | ({status.serving_build_id} if status.serving_build_id else set()),
        # On a settled host static-live names the serving build, as `current` does.
        current_build=status.serving_build_id, static_live=status.serving_build_id, live_revision=serving,
        running=frozenset({serving}) if serving else frozenset(), site=applied_site, failed_revision=failed,
        # What status shows of the release command and process types: the agent knows more.
        released=frozenset(e.revision for e in status.history) | ({ran.revision} if ran and ran.exit_code == 0 else set()),
        processes=frozenset((serving, i) for i in instances) if serving == desired.revision else frozenset(),
        process_revisions=frozenset({serving}) if serving and status.processes else frozenset(),
    )
    wanted = host_plan.Desired(build_id=desired.build_id, revision=desired.revision, user=desired.user,
                               site=_proxy_key(desired),
                               release_command=desired.release is not None and bool(desired.run_release_command),
                               processes=instances)
    the_plan = host_plan.plan_release(wanted, observed_host)
    kinds = the_plan.kinds()
    steps = tuple(str(a) for a in the_plan.actions)
    if host_plan.START in kinds:
        if desired.build_id not in observed_host.releases:
            return BUILD, steps
        return (REUSE if desired.build_id != status.serving_build_id else NEW_WORKERS), steps
    if host_plan.WRITE_SITE in kinds:
        return NGINX_ONLY, steps
    return NOTHING, steps


def _label(spec: HostReleaseSpec | None) -> str:
    return f"{spec.version} ({spec.revision})" if spec is not None else "-"


def diff_rows(new: AppRelease, nodes: Sequence[str], hrs: Sequence[Obj]) -> list[DiffRow]:
    """Per host, what applying `new` does: the operator's fan-out and rollout order, the agent's plan."""
    namespace, name = new.metadata.namespace, new.metadata.name
    # The values digest as the operator last wrote it: right while the referenced values stay
    # as they are (a changed value shows as a new revision once the operator has seen it).
    digest = values_digest(hrs) if envrefs.has_references(new.spec) else None
    desired = resolve.host_release_specs(namespace, name, nodes, new.spec, digest)
    desired_wire = {n: s.wire() for n, s in desired.items()}
    views = [rollout_plan.HostView(
        name=(hr.get("metadata") or {}).get("name", ""), node=node_of(hr),
        spec=(host_spec(hr).wire() if host_spec(hr) is not None else None), generation=generation(hr),
        observed_generation=host_status(hr).observed_generation, phase=host_status(hr).phase,
        serving_revision=host_status(hr).serving_revision,
        deleting=bool((hr.get("metadata") or {}).get("deletionTimestamp")),
    ) for hr in hrs]
    step = rollout_plan.next_step(desired_wire, views, new.spec.strategy.max_unavailable, new.spec.paused)
    first = set(step.creates) | set(step.updates)
    by_node = {node_of(hr): hr for hr in hrs if not (hr.get("metadata") or {}).get("deletionTimestamp")}

    rows = []
    for node in sorted(set(desired) | set(by_node)):
        hr = by_node.get(node)
        current = host_spec(hr) if hr is not None else None
        if node not in desired:
            rows.append(DiffRow(node, REMOVE, _label(current), "-", "first batch",
                                "no longer selected by spec.hosts.nodeSelector"))
            continue
        want = desired[node]
        if current is not None and current.wire() == desired_wire[node]:
            rows.append(DiffRow(node, NOTHING, _label(current), _label(want), "-", "spec unchanged"))
            continue
        when = ("paused" if new.spec.paused else
                "first batch" if node in first else
                "halted: a host failed on the new spec" if step.halted_by else "after earlier hosts")
        if hr is None:
            action, steps = host_work(want, None, HostReleaseStatus(), False)
            rows.append(DiffRow(node, CREATE if action == BUILD else action, "-", _label(want), when,
                                "first release on this host", steps))
            continue
        status = host_status(hr)
        action, steps = host_work(want, current, status, status.observed_generation == generation(hr))
        changed = _changed_fields(current.wire() if current else {}, desired_wire[node])
        detail = "changes " + ", ".join(changed) if changed else ""
        if action == NOTHING and changed:
            detail = "spec only: " + ", ".join(changed)
        rows.append(DiffRow(node, action, _label(current), _label(want), when, detail, steps))
    return rows


def diff_table(rows: Sequence[DiffRow]) -> str:
    return format_table(("NODE", "ACTION", "FROM", "TO", "WHEN", "DETAIL"),
                        [(r.node, r.action, r.current, r.desired, r.when, r.detail or "-") for r in rows])


def app_hosts(hrs: Sequence[Obj], app: str) -> list[Obj]:
    """The HostReleases of `app` among `hrs` (a namespace's list), by label."""
    return [hr for hr in hrs if ((hr.get("metadata") or {}).get("labels") or {}).get(APP_LABEL) == app]
