"""The `Nginx` applier against a real nginx under a temp root, on free loopback ports.

Covers:
- requests reach the app through run/live.sock with X-Forwarded-* headers; unknown hosts 404;
- static files come from static-live/site-packages/..., else static-previous/..., without
  touching the app, and follow the links' renames without a reload; no request path
  ('..', %2e%2e, %2f, '/static/' itself) reaches a file outside the static directory; an
  asset static-previous holds is served while static-live is renamed back and forth;
- renaming live.sock to another revision's socket switches the next request, with the
  master and worker pids unchanged (no reload);
- a config `nginx -t` refuses changes nothing live; a config that passes `-t` but fails to
  reload (port in use) is rolled back and the previous one keeps serving;
- a reload has taken effect when apply_site returns; identical text is a no-op;
- TLS from a self-signed cert (files 0600 in a 0700 dir, renewed files replace old ones);
- remove_site drops the server block; stop() leaves no nginx process; ensure_running is
  idempotent and restarts a stopped nginx.
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import ssl
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from apprelease.host.executor import LocalExecutor
from apprelease.host.layout import HostLayout
from apprelease.host.proxy import Nginx, ProxyConfigRejected, ProxyReloadFailed, procfs
from apprelease.api import models
from support.nginx import NGINX, RunningUpstream, free_port, http_get, self_signed_cert, serve_unix

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not Path(NGINX).exists(), reason="nginx is not installed"),
]

KEY = "shop_web"
HOST = "app.test"


@dataclass
class Host:
    root: Path
    layout: HostLayout
    nginx: Nginx
    port: int
    tls_port: int
    upstreams: dict[str, RunningUpstream]

    def proxy(self, **spec: object) -> models.Proxy:
        base = {"serverNames": [HOST], "listenPort": self.port,
                "static": [{"urlPath": "/static/", "directory": "webxample/static"}]}
        return models.Proxy.model_validate({**base, **spec})

    def site(self, **spec: object) -> str:
        return self.nginx.render_site(KEY, self.proxy(**spec))

    def switch_live(self, revision: str) -> None:
        """What a rotation does: a new symlink renamed over run/live.sock."""
        run = self.layout.app(KEY).run
        tmp = run / f".live.{revision}.tmp"
        tmp.symlink_to(f"{revision}.sock")
        os.replace(tmp, run / "live.sock")

    def pids(self) -> tuple[int | None, set[int]]:
        return self.nginx.master_pid(), self.nginx.worker_pids()


@pytest.fixture
def host() -> Iterator[Host]:
    # Not under pytest's tmp_path: its parents are 0700 and nginx's workers (www-data) must
    # traverse to the app's socket and static files, as on a real host.
    root = Path(tempfile.mkdtemp(prefix="apprelease-nginx-", dir="/tmp"))
    os.chmod(root, 0o755)
    layout = HostLayout(root)
    app = layout.app(KEY)
    app.run.mkdir(parents=True)
    static = app.release("b1") / "site-packages" / "webxample" / "static"
    static.mkdir(parents=True)
    (static / "hello.txt").write_text("hello from b1\n")
    app.static_live.symlink_to("releases/b1")

    port, tls_port = free_port(), free_port()
    nginx = Nginx(layout, LocalExecutor(), listen_address="127.0.0.1", binary=NGINX,
                  default_http_ports=(port,), reload_timeout=10, stop_timeout=10)
    upstreams: dict[str, RunningUpstream] = {}
    try:
        for revision in ("rev1", "rev2"):
            upstreams[revision] = serve_unix(app.socket(revision), revision)
        (app.run / "live.sock").symlink_to("rev1.sock")
        nginx.ensure_running()
        yield Host(root, layout, nginx, port, tls_port, upstreams)
    finally:
        _stop_nginx(nginx)
        for upstream in upstreams.values():
            upstream.close()
        shutil.rmtree(root)


def _stop_nginx(nginx: Nginx) -> None:
    """Finalizer: graceful stop, and SIGKILL whatever survives so no test leaks a process."""
    master = nginx.master_pid()
    pids = {master, *procfs.children(master)} if master else set()
    try:
        nginx.stop()
    finally:
        for pid in pids:
            if procfs.alive(pid):
                os.kill(pid, signal.SIGKILL)


# -- traffic ---------------------------------------------------------------------------


def test_requests_reach_the_live_revision_with_forwarded_headers(host: Host) -> None:
    assert host.nginx.apply_site(KEY, host.site()) is True
    response = http_get(host.port, "/orders?id=1")
    assert response.status == 200
    seen = response.json()
    assert seen["upstream"] == "rev1" and seen["path"] == "/orders?id=1"
    headers = seen["headers"]
    assert headers["host"] == HOST
    assert headers["x-forwarded-host"] == HOST
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-real-ip"] == "127.0.0.1"
    assert headers["x-forwarded-port"] == str(host.port)
    assert headers["connection"] == "close"

    posted = http_get(host.port, "/orders", method="POST", body=b"x" * 1000)
    assert posted.json()["method"] == "POST" and posted.json()["body_length"] == 1000

    # A Host no app claims gets the catch-all's 404, not the first app.
    assert http_get(host.port, "/", host="other.test").status == 404


def _point(link: Path, build: str) -> None:
    """What point-static does: a new symlink renamed over the old one."""
    tmp = link.with_name(f".{link.name}.tmp")
    tmp.symlink_to(f"releases/{build}")
    os.replace(tmp, link)


def test_static_files_are_served_by_nginx_from_static_live_then_static_previous(host: Host) -> None:
    host.nginx.apply_site(KEY, host.site())
    pids = host.pids()
    response = http_get(host.port, "/static/hello.txt")
    assert response.status == 200 and response.body == b"hello from b1\n"
    assert response.headers["content-type"] == "text/plain"
    assert http_get(host.port, "/static/app.b1.css").status == 404  # not yet in any build

    # A rotation: b2 becomes static-live, b1 static-previous. Followed per request, no reload.
    app = host.layout.app(KEY)
    (app.release("b1") / "site-packages/webxample/static/app.b1.css").write_text("b1 {}\n")
    new = app.release("b2") / "site-packages" / "webxample" / "static"
    new.mkdir(parents=True)
    (new / "hello.txt").write_text("hello from b2\n")
    (new / "app.b2.css").write_text("b2 {}\n")
    _point(app.static_previous, "b1")
    _point(app.static_live, "b2")
    assert http_get(host.port, "/static/hello.txt").body == b"hello from b2\n"  # static-live first
    old_asset = http_get(host.port, "/static/app.b1.css")  # a page of the old revision still finds its asset
    assert old_asset.status == 200 and old_asset.body == b"b1 {}\n"
    assert old_asset.headers["content-type"] == "text/css"
    assert http_get(host.port, "/static/app.b2.css").body == b"b2 {}\n"
    assert http_get(host.port, "/static/missing.txt").status == 404
    assert host.upstreams["rev1"].hits == [] and host.pids() == pids

    # Only the two links count: once b1 is neither, its assets are gone.
    _point(app.static_previous, "b2")
    assert http_get(host.port, "/static/app.b1.css").status == 404
    assert host.upstreams["rev1"].hits == []


SECRET = "s3cret-not-for-clients"


@pytest.mark.parametrize("path", [
    "/static/",
    "/static/../state.json",
    "/static/%2e%2e/state.json",
    "/static/%2E%2E/state.json",
    "/static/.%2e/state.json",
    "/static/..%2fstate.json",
    "/static/%2e%2e%2fstate.json",
    "/static/./../../state.json",
    "/static//../state.json",
    "/static/../static-live/release.json",
    "/static/%2e%2e/%2e%2e/release.json",
    "/static/%2e%2e/%2e%2e/%2e%2e/%2e%2e/state.json",
    "/static/..%5c..%5cstate.json",
    "/static-live/release.json",
    "/static-live/site-packages/webxample/secret.py",
    "/static-previous/release.json",
    "/state.json",
])
def test_static_paths_never_reach_a_file_outside_the_static_directory(host: Host, path: str) -> None:
    """nginx matches locations on the normalized, decoded URI, and the capture comes from it:
    no form of '..' climbs out of the static directory. Whatever is not a static file goes to
    the app (which answers for itself) or is refused; a file outside is never sent."""
    app = host.layout.app(KEY)
    _point(app.static_previous, "b1")
    for secret in (app.state_file, app.spec_file, app.release_record("b1"),
                   app.release("b1") / "site-packages" / "webxample" / "secret.py"):
        secret.write_text(f"{SECRET}\n")
    host.nginx.apply_site(KEY, host.site())
    response = http_get(host.port, path)
    assert SECRET.encode() not in response.body, (path, response.status)
    if response.status == 200:
        assert response.json()["upstream"] == "rev1", path  # the app's answer, not a file
    else:
        assert response.status in (400, 403, 404), (path, response.status)


def test_an_asset_found_through_a_link_renamed_meanwhile_is_still_served(host: Host) -> None:
    """try_files finds the file through a link, then the static handler opens that path again:
    a rename of static-live in between (point-static during a rotation) must not turn an
    asset that static-previous holds into a 404. Without the site's retry: ~1 % of requests
    404 while static-live flips as fast as it can."""
    app = host.layout.app(KEY)
    for build in ("b1", "b2"):
        static = app.release(build) / "site-packages" / "webxample" / "static"
        static.mkdir(parents=True, exist_ok=True)
        (static / f"app.{build}.css").write_text(f"{build} {{}}\n")
    _point(app.static_previous, "b1")
    host.nginx.apply_site(KEY, host.site())
    stop = threading.Event()
    results: list[int] = []

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", host.port, timeout=10)
        while not stop.is_set():
            conn.request("GET", "/static/app.b1.css", headers={"Host": HOST})
            response = conn.getresponse()
            response.read()
            results.append(response.status)
        conn.close()

    clients = [threading.Thread(target=client) for _ in range(2)]
    for thread in clients:
        thread.start()
    flips = 0
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        _point(app.static_live, "b2" if flips % 2 == 0 else "b1")
        flips += 1
    stop.set()
    for thread in clients:
        thread.join()
    assert len(results) > 100 and all(s == 200 for s in results), sorted(set(results))


def test_renaming_live_sock_switches_the_next_request_without_reload(host: Host) -> None:
    host.nginx.apply_site(KEY, host.site())
    assert http_get(host.port).json()["upstream"] == "rev1"
    master, workers = host.pids()
    assert master is not None and workers

    host.switch_live("rev2")
    assert http_get(host.port).json()["upstream"] == "rev2"
    assert http_get(host.port, method="POST", body=b"{}").json()["upstream"] == "rev2"
    host.switch_live("rev1")
    assert http_get(host.port).json()["upstream"] == "rev1"
    assert host.pids() == (master, workers), "a rotation never reloads nginx"


# -- changes -----------------------------------------------------------------------------


def test_identical_site_is_a_no_op_and_ensure_running_is_idempotent(host: Host) -> None:
    assert host.nginx.apply_site(KEY, host.site()) is True
    pids = host.pids()
    assert host.nginx.apply_site(KEY, host.site()) is False
    assert host.nginx.ensure_running() is False
    assert host.pids() == pids


def test_a_reload_has_taken_effect_when_apply_site_returns(host: Host) -> None:
    host.nginx.apply_site(KEY, host.site())
    assert http_get(host.port, method="POST", body=b"x" * 4096).status == 200
    _, old_workers = host.pids()

    assert host.nginx.apply_site(KEY, host.site(clientMaxBodySize="1k")) is True
    _, new_workers = host.pids()
    assert new_workers and not new_workers & old_workers
    assert http_get(host.port, method="POST", body=b"x" * 4096).status == 413

    assert host.nginx.apply_site(KEY, host.site(serverNames=["new.test"])) is True
    assert http_get(host.port, host="new.test").json()["upstream"] == "rev1"
    assert http_get(host.port, host=HOST).status == 404


def test_a_config_nginx_t_refuses_changes_nothing(host: Host) -> None:
    good = host.site()
    host.nginx.apply_site(KEY, good)
    pids = host.pids()
    # Bypasses the models on purpose: rendering would never produce this.
    bad = f"server {{ listen 127.0.0.1:{host.port}; server_name {HOST}; bogus_directive on; }}\n"
    with pytest.raises(ProxyConfigRejected, match="unknown directive") as caught:
        host.nginx.apply_site(KEY, bad)
    assert not isinstance(caught.value, ProxyReloadFailed)
    assert str(host.layout.nginx_site(KEY)) in caught.value.output  # names the app's file
    assert host.nginx.current_site(KEY) == good
    assert list(host.nginx.staging.iterdir()) == []
    assert host.pids() == pids
    assert http_get(host.port).json()["upstream"] == "rev1"


def test_a_config_that_fails_to_reload_is_rolled_back(host: Host) -> None:
    good = host.site()
    host.nginx.apply_site(KEY, good)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        busy_port = busy.getsockname()[1]
        # Passes `nginx -t` (which binds nothing) but the reload cannot bind the port.
        with pytest.raises(ProxyReloadFailed, match="bind"):
            host.nginx.apply_site(KEY, host.site(listenPort=busy_port))
    assert host.nginx.current_site(KEY) == good
    assert http_get(host.port).json()["upstream"] == "rev1"
    assert host.nginx.worker_pids()


def test_tls_with_a_self_signed_certificate(host: Host, tmp_path: Path) -> None:
    cert, key = self_signed_cert(tmp_path, HOST)
    cert_path, key_path = host.nginx.write_tls(KEY, cert, key)
    for path in (cert_path, key_path):
        info = path.stat()
        assert stat.S_IMODE(info.st_mode) == 0o600 and info.st_uid == 0
    for directory in (host.layout.secrets, cert_path.parent):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert host.nginx.write_tls(KEY, cert, key) == (cert_path, key_path)

    text = host.nginx.render_site(KEY, host.proxy(listenPort=host.tls_port, tls={"secretName": "t"}),
                                  (cert_path, key_path))
    host.nginx.apply_site(KEY, text)
    response = http_get(host.tls_port, "/x", tls=True)
    assert response.json()["headers"]["x-forwarded-proto"] == "https"
    assert _served_certificate(host.tls_port) == ssl.DER_cert_to_PEM_cert(
        ssl.PEM_cert_to_DER_cert(cert.decode())
    )

    # A renewed certificate gets new file names, so the site changes and is reloaded; the
    # old files go once no site names them.
    (tmp_path / "renewed").mkdir()
    cert2, key2 = self_signed_cert(tmp_path / "renewed", HOST)
    renewed = host.nginx.write_tls(KEY, cert2, key2)
    assert renewed != (cert_path, key_path)
    text2 = host.nginx.render_site(KEY, host.proxy(listenPort=host.tls_port, tls={"secretName": "t"}), renewed)
    assert host.nginx.apply_site(KEY, text2) is True
    assert not cert_path.exists() and not key_path.exists()
    assert _served_certificate(host.tls_port) == ssl.DER_cert_to_PEM_cert(ssl.PEM_cert_to_DER_cert(cert2.decode()))


def _served_certificate(port: int) -> str:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        with context.wrap_socket(sock, server_hostname=HOST) as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return ssl.DER_cert_to_PEM_cert(der)


def test_remove_site(host: Host, tmp_path: Path) -> None:
    cert, key = self_signed_cert(tmp_path, HOST)
    files = host.nginx.write_tls(KEY, cert, key)
    host.nginx.apply_site(KEY, host.site())
    assert http_get(host.port).status == 200
    assert host.nginx.remove_site(KEY) is True
    assert http_get(host.port).status == 404
    assert host.nginx.current_site(KEY) is None and not host.layout.nginx_site(KEY).exists()
    assert not any(path.exists() for path in files)
    assert host.nginx.remove_site(KEY) is False


def test_stop_leaves_no_nginx_process_and_ensure_running_restarts(host: Host) -> None:
    host.nginx.apply_site(KEY, host.site())
    master, workers = host.pids()
    assert master is not None
    assert host.nginx.stop() is True
    assert not any(procfs.alive(pid) for pid in {master, *workers})
    assert host.nginx.master_pid() is None
    assert host.nginx.stop() is False

    # A stopped nginx still gets checked site changes; the next start serves them.
    assert host.nginx.apply_site(KEY, host.site(serverNames=["after.test"])) is True
    assert host.nginx.ensure_running() is True
    assert http_get(host.port, host="after.test").json()["upstream"] == "rev1"


def test_host_setting_changes_reload_the_main_config(host: Host) -> None:
    host.nginx.apply_site(KEY, host.site())
    master, workers = host.pids()
    host.nginx.worker_shutdown_timeout = 5
    assert host.nginx.ensure_running() is True
    assert "worker_shutdown_timeout 5s;" in host.nginx.main_conf.read_text()
    new_master, new_workers = host.pids()
    assert new_master == master and new_workers and not new_workers & workers
    assert http_get(host.port).json()["upstream"] == "rev1"


def test_a_start_that_cannot_bind_is_reported(host: Host) -> None:
    host.nginx.stop()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", host.port))
        busy.listen()
        with pytest.raises(ProxyConfigRejected, match="bind"):
            host.nginx.ensure_running()
    assert host.nginx.master_pid() is None

