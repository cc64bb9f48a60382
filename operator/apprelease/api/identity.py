"""Identity of a release: `buildId` names a venv, `revision` names a set of running workers.

buildId  = hash of what goes into the venv (python, requirements, index, wheel digest).
revision = hash of buildId and the runtime config (entrypoint, server, env, user, health check;
           release command, process types, envFrom, the keyed digest of referenced values and
           restartedAt when set: `kubectl apprelease
           restart` asks for new workers of the same build that way; each is left out when
           empty, so revisions recorded before it existed keep their hash and no host
           restarts on an operator upgrade).
Same inputs give the same ids on every host, which is what makes reverting a manifest a
rollback without a rebuild. Proxy settings are in neither: they only re-render nginx.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from .models import ReleaseTemplate


def _digest(payload: dict[str, Any], length: int) -> str:
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:length]


def default_user(namespace: str, app: str) -> str:
    """The app user when spec.user is empty: readable, and distinct for every (namespace, app).

    `ar-` + the app name cut to 19 characters + `-` + 8 hex digits of sha256("<ns>/<app>"):
    at most 31 characters, a valid POSIX name even when the app name starts with a digit.
    """
    digest = hashlib.sha256(f"{namespace}/{app}".encode()).hexdigest()[:8]
    return f"ar-{app[:19]}-{digest}"


def with_user(spec: ReleaseTemplate, namespace: str, app: str) -> ReleaseTemplate:
    """`spec` with its user resolved: what every host runs and what the revision hashes."""
    return spec if spec.user else spec.model_copy(update={"user": default_user(namespace, app)})


def build_inputs(spec: ReleaseTemplate) -> dict[str, Any]:
    # indexCredentials names a Secret, not what goes into the venv: new credentials for the
    # same index build the same venv (the index URL, without credentials, is in).
    source = spec.source.wire()
    source.pop("indexCredentials", None)
    return {"python": spec.python, "source": source}


def build_id(spec: ReleaseTemplate) -> str:
    return "b" + _digest(build_inputs(spec), 15)


def server_identity(spec: ReleaseTemplate) -> dict[str, Any]:
    """The server config as hashed into the revision.

    The default worker class is left out: gthread is what every revision ran before the field
    existed, so their revisions stay the same and an upgrade of apprelease rotates nothing.
    """
    server = spec.server.wire()
    if server.get("workerClass") == "gthread":
        del server["workerClass"]
    return server


LIVENESS_FIELDS = ("periodSeconds", "failureThreshold", "probeTimeoutSeconds")


def health_identity(spec: ReleaseTemplate) -> dict[str, Any]:
    """The readiness gate as hashed into the revision: liveness settings change how the live
    revision is watched, not what runs, so revisions from before them keep their hash."""
    return {k: v for k, v in spec.health_check.wire().items() if k not in LIVENESS_FIELDS}


def revision(spec: ReleaseTemplate, values_digest: str | None = None) -> str:
    """`values_digest` is the operator's keyed digest of the values env/envFrom reference
    (api/envrefs.py): a rotated Secret value makes a new revision, without the values."""
    runtime = {
        "buildId": build_id(spec),
        "entrypoint": spec.entrypoint,
        "server": server_identity(spec),
        "env": [e.wire() for e in spec.env],
        "user": spec.user,
        "healthCheck": health_identity(spec),
    }
    if spec.restarted_at:
        runtime["restartedAt"] = spec.restarted_at
    # Left out when unset, like restartedAt: revisions from before these fields keep their hash.
    if spec.release is not None:
        runtime["release"] = spec.release.wire()
    if spec.resources is not None:
        runtime["resources"] = spec.resources.wire()
    if spec.processes:
        runtime["processes"] = {name: p.wire() for name, p in spec.processes.items()}
    if spec.env_from:
        runtime["envFrom"] = [e.wire() for e in spec.env_from]
    if values_digest:
        runtime["valuesDigest"] = values_digest
    return "r" + _digest(runtime, 11)
