"""Host conflicts refused, not raced: two apps on one host, real circusd, gunicorn and nginx.

Covers: a second app (another namespace, another user) asking for the (port, server name)
the first serves is Failed with reason Conflict naming the first (namespace/name), builds,
starts and writes nothing, and is refused again at each reconcile (resync) without doing
anything, while the first keeps serving under load with 0 failed requests; the first still
rotates while the second waits (its own site is not a conflict); once the first is removed,
the next reconcile of the second converges and serves; an app with another name on the
same port coexists; a plain app on a port another app serves with TLS is refused (nginx
would turn the port TLS for both).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from apprelease.host import core
from apprelease.host.layout import app_key
from support.hosts import SERVER_NAME, release_for, running_host
from support.load import LoadProcess
from support.nginx import free_port, http_get, self_signed_cert

pytestmark = pytest.mark.integration

FIRST = app_key("team-a", "first")
SECOND = app_key("team-b", "second")


@pytest.fixture
def host(short_tmp: Path):
    with running_host(short_tmp / "host-a") as host:
        yield host


def first(index, version: str, port: int, **options):
    return release_for(index.url, version, port=port, name="first", namespace="team-a", user="first", **options)


def second(index, version: str, port: int, **options):
    return release_for(index.url, version, port=port, name="second", namespace="team-b", user="second", **options)


def served(port: int, host_header: str = SERVER_NAME, tls: bool = False) -> str:
    resp = http_get(port, "/version", host_header, tls=tls)
    assert resp.status == 200, resp
    return resp.json()["version"]


def nothing_of(host: core.Host, key: str) -> bool:
    paths = host.layout.app(key)
    return (host.nginx.current_site(key) is None and not core.app_watchers(host.supervisor, key)
            and not (paths.releases.exists() and any(paths.releases.iterdir())))


def test_second_claim_is_refused_while_the_first_serves_under_load_then_converges(host, package_index):
    port = free_port()
    ready = core.reconcile(host, first(package_index, "1.0.0", port))
    assert ready.status.phase == "Ready", ready.status.message
    site_before = host.nginx.current_site(FIRST)

    load = LoadProcess(port, host_header=SERVER_NAME, expect=["1.0.0", "2.0.0"], max_seconds=120, slow=1)
    try:
        time.sleep(1)
        started = time.monotonic()
        refused = [core.reconcile(host, second(package_index, "3.0.0", port)) for _ in range(5)]  # 1st + resyncs
        refusing = time.monotonic() - started
        # The first rotates while the second waits: its own live site is not a conflict.
        rotated = core.reconcile(host, first(package_index, "2.0.0", port))
        time.sleep(1)
        tally = load.finish()
    finally:
        load.kill()

    for result in refused:
        status = result.status
        assert (status.phase, status.reason) == ("Failed", "Conflict"), status
        assert status.message == f"Conflict: team-a/first already serves {SERVER_NAME} on port {port}"
        assert not result.plan and status.serving_revision is None
    assert nothing_of(host, SECOND)
    assert rotated.status.phase == "Ready", rotated.status.message
    assert host.nginx.current_site(FIRST) == site_before  # a rotation: no nginx change at all
    print(f"\nwhile refused: {tally['ok']} requests, {tally['errors']} errors, {tally['badStatus']} bad statuses; "
          f"5 refusals in {refusing * 1000:.1f} ms")
    assert tally["errors"] == 0 and tally["badStatus"] == 0, tally["failures"]
    assert tally["ok"] > 200, tally

    core.remove(host, "team-a", "first")
    converged = core.reconcile(host, second(package_index, "3.0.0", port))
    assert (converged.status.phase, converged.status.reason) == ("Ready", None), converged.status.message
    assert served(port) == "3.0.0"


def test_another_name_on_the_same_port_coexists(host, package_index):
    port = free_port()
    assert core.reconcile(host, first(package_index, "1.0.0", port)).status.phase == "Ready"
    other = core.reconcile(host, second(package_index, "2.0.0", port, serverNames=["other.local"]))
    assert other.status.phase == "Ready", other.status.message
    assert served(port) == "1.0.0"
    assert served(port, "other.local") == "2.0.0"


def test_plain_http_on_a_port_served_with_tls_is_refused(host, package_index, tmp_path):
    port = free_port()
    cert, key = self_signed_cert(tmp_path, SERVER_NAME)

    def tls(namespace: str, name: str) -> tuple[str, str]:
        return cert.decode(), key.decode()

    secure = core.reconcile(host, first(package_index, "1.0.0", port, tls={"secretName": "web-tls"}), tls)
    assert secure.status.phase == "Ready", secure.status.message
    plain = core.reconcile(host, second(package_index, "2.0.0", port, serverNames=["other.local"]))
    assert (plain.status.phase, plain.status.reason) == ("Failed", "Conflict")
    assert f"team-a/first already serves port {port} with TLS" in plain.status.message
    assert served(port, tls=True) == "1.0.0"
    assert nothing_of(host, SECOND)
