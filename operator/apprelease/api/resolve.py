"""From an AppRelease to the HostRelease one host runs: the operator's fan-out, pure.

Also used by tests and the demo to produce HostRelease manifests for `apprelease agent
reconcile -f` without a cluster.
"""

from __future__ import annotations

from collections.abc import Iterable

from . import identity
from .models import APP_LABEL, NODE_LABEL, AppRelease, AppReleaseSpec, HostRelease, HostReleaseSpec, ObjectMeta, ReleaseTemplate

_TEMPLATE_FIELDS = tuple(ReleaseTemplate.model_fields)
_TEMPLATE_WIRE_FIELDS = frozenset(f.alias or name for name, f in ReleaseTemplate.model_fields.items())


def release_template(spec: AppReleaseSpec) -> dict:
    """The release part of an AppRelease spec (no hosts, strategy or paused), camelCase, as
    the user wrote it (an empty user stays empty): what identifies a revision, and what
    `kubectl apprelease undo` applies again."""
    wire = spec.wire()
    return {k: v for k, v in wire.items() if k in _TEMPLATE_WIRE_FIELDS}


def host_release_name(app: str, node: str) -> str:
    return f"{app}-{node}"


def release_command_nodes(spec: ReleaseTemplate, nodes: Iterable[str]) -> frozenset[str]:
    """The nodes that run `spec.release`: all of them, or the first by name (firstHost)."""
    nodes = sorted(nodes)
    if spec.release is None or not nodes:
        return frozenset()
    return frozenset(nodes if spec.release.run_on == "everyHost" else nodes[:1])


def host_release_spec(namespace: str, app: str, node: str, spec: AppReleaseSpec,
                      runs_release: bool = False, values_digest: str | None = None) -> HostReleaseSpec:
    resolved = identity.with_user(spec, namespace, app)
    template = {name: getattr(resolved, name) for name in _TEMPLATE_FIELDS}
    return HostReleaseSpec(
        **template, app=app, node=node, build_id=identity.build_id(resolved),
        revision=identity.revision(resolved, values_digest),
        run_release_command=True if runs_release else None, values_digest=values_digest,
    )


def host_release_specs(namespace: str, app: str, nodes: Iterable[str], spec: AppReleaseSpec,
                       values_digest: str | None = None) -> dict[str, HostReleaseSpec]:
    """node -> the HostRelease spec it runs; the same revision everywhere, and the release
    command on the nodes `release_command_nodes` picks."""
    nodes = sorted(nodes)
    runs = release_command_nodes(spec, nodes)
    return {node: host_release_spec(namespace, app, node, spec, node in runs, values_digest) for node in nodes}


def host_release(app: AppRelease, node: str) -> HostRelease:
    meta = app.metadata
    return HostRelease(
        metadata=ObjectMeta(
            name=host_release_name(meta.name, node),
            namespace=meta.namespace,
            labels={NODE_LABEL: node, APP_LABEL: meta.name},
        ),
        spec=host_release_spec(meta.namespace, meta.name, node, app.spec, runs_release=app.spec.release is not None),
    )
