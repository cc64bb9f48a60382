"""Test hosts: an agent root with its own supervisor daemon and nginx, and HostReleases for it.

A "host" in the integration tests is a `core.Host` under a temporary root, with circusd or
supervisord and nginx of its own listening on a free loopback port. `stop_host` leaves no
process behind.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

from apprelease.host import core
from apprelease.host.executor import LocalExecutor
from apprelease.host.layout import HostLayout
from apprelease.host.proxy.nginx import Nginx
from apprelease.host.supervisors import make_supervisor
from apprelease.api.manifests import parse_resource
from apprelease.api.models import AppRelease, HostRelease
from apprelease.api.resolve import host_release
from support.manifests import EXAMPLE

SERVER_NAME = "webxample.local"


def uv_binary() -> str:
    return shutil.which("uv") or str(Path(sys.executable).with_name("uv"))


def make_host(root: Path, backend: str = "circus", *, uv: str | None = "auto") -> core.Host:
    layout = HostLayout(root)
    executor = LocalExecutor()
    return core.Host(
        layout=layout,
        executor=executor,
        supervisor=make_supervisor(backend, layout, executor),
        nginx=Nginx(layout, executor, listen_address="127.0.0.1"),
        uv=uv_binary() if uv == "auto" else uv,
    )


@contextlib.contextmanager
def running_host(root: Path, backend: str = "circus") -> Iterator[core.Host]:
    """A started test host under `root`, stopped (no process left) when the block ends."""
    host = make_host(root, backend)
    host.start()
    try:
        yield host
    finally:
        stop_host(host)


def stop_host(host: core.Host) -> None:
    try:
        host.nginx.stop()
    finally:
        host.supervisor.stop_daemon()


def app_release(index_url: str, version: str, *, port: int, name: str = "webxample", namespace: str = "default",
                fail_health: bool = False, health_timeout: int = 20, limit: int = 5,
                requirements: list[str] | None = None, graceful: int = 10, user: str | None = None,
                entrypoint: str | None = None, env: dict[str, str] | None = None,
                server: dict[str, object] | None = None, extra: dict[str, object] | None = None,
                **proxy: object) -> AppRelease:
    """webxample's AppRelease; `entrypoint`, extra `env` and `server` fields serve other apps too,
    `extra` adds spec fields (release, processes).
    Its user is derived from namespace and app unless `user` is given, so tests in different
    namespaces never ask for the same account."""
    spec = {
        **{k: v for k, v in EXAMPLE["spec"].items() if k != "user"},
        **({"user": user} if user else {}),
        "version": version,
        "source": {"requirements": requirements or [f"webxample=={version}"], "indexUrl": index_url},
        "env": [{"name": "WEBXAMPLE_GREETING", "value": "hi"}]
        + ([{"name": "WEBXAMPLE_FAIL_HEALTH", "value": "1"}] if fail_health else [])
        + [{"name": name, "value": value} for name, value in (env or {}).items()],
        "proxy": {**EXAMPLE["spec"]["proxy"], "listenPort": port, **proxy},
        "healthCheck": {"path": "/healthz", "timeoutSeconds": health_timeout},
        "server": {"workers": 2, "threads": 8, "gracefulTimeoutSeconds": graceful, **(server or {})},
        "revisionHistoryLimit": limit,
        **({"entrypoint": entrypoint} if entrypoint else {}),
        **(extra or {}),
    }
    doc = {"apiVersion": "apprelease.dev/v1alpha1", "kind": "AppRelease",
           "metadata": {"name": name, "namespace": namespace}, "spec": spec}
    resource = parse_resource(doc)
    assert isinstance(resource, AppRelease)
    return resource


def release_for(index_url: str, version: str, *, port: int, node: str = "host-a", **options: object) -> HostRelease:
    return host_release(app_release(index_url, version, port=port, **options), node)
