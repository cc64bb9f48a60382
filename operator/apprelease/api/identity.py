"""Identity of a release: `buildId` names a venv, `revision` names a set of running workers.

buildId  = hash of what goes into the venv (python, requirements, index, wheel digest).
revision = hash of buildId and the runtime config (entrypoint, server, env, user, health check).
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


def build_inputs(spec: ReleaseTemplate) -> dict[str, Any]:
    return {"python": spec.python, "source": spec.source.wire()}


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


def revision(spec: ReleaseTemplate) -> str:
    runtime = {
        "buildId": build_id(spec),
        "entrypoint": spec.entrypoint,
        "server": server_identity(spec),
        "env": [e.wire() for e in spec.env],
        "user": spec.user,
        "healthCheck": spec.health_check.wire(),
    }
    return "r" + _digest(runtime, 11)
