"""The agent's log endpoint: an app's logs over HTTPS for `kubectl apprelease logs`, no ssh.

Started by `apprelease agent run --logs-port P` (agent/cli.py) beside the cluster loop.
`GET /logs?namespace=&app=&revision=&tail=&follow=` with `Authorization: Bearer <token>`:
the token is authenticated with a TokenReview and the caller authorized with a
SubjectAccessReview for `get hostreleases/log` on the app's HostRelease in its namespace
(agent/logaccess.py decides; this module asks and serves), the way a kubelet serves
`pods/log`. Then the tail of the revision's stderr and stdout files (`tail` lines of each;
the serving revision unless one is named), and with `follow=true` new lines as they are
written, surviving the supervisor's log rotation, until the client goes away.

TLS: the agent makes a self-signed certificate once (EC P-256, kept under
`<root>/agent/tls/`, so it stays the same across restarts) and publishes its address and
the certificate's sha256 in each of its HostReleases' status (`status.logs`). Clients pin
that digest. Why not a CA: a cluster CA signing serving certs for agents would need a CSR
approver, and a certificate in a Secret would have to reach every node; the HostRelease
status is already written by that node's agent only (the own-node admission policy), so
its digest is as trustworthy as the HostRelease itself, and costs nothing to rotate.

No caching of reviews: two small API requests per log request is what a kubelet does
without its webhook cache, and a revoked RoleBinding takes effect on the next request.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import logging
import os
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from ..api.models import LogEndpoint
from ..host import core
from ..host.layout import AppPaths, HostLayout, app_key
from . import logaccess

log = logging.getLogger(__name__)

FOLLOW_POLL_SECONDS = 0.2
STREAMS = ("stderr", "stdout")  # gunicorn's own log and tracebacks first, then what the app prints


# ----- the certificate


def log_files(paths: AppPaths, revision: str, process: str | None) -> list[Path]:
    """The files a query reads: the web server's streams, a replica's, or the release command's output."""
    if process == logaccess.RELEASE_PROCESS:
        return [paths.release_command_log(revision)]
    name = revision if process is None else f"{revision}.{process}"
    return [paths.log_file(name, stream) for stream in STREAMS]


def ensure_certificate(directory: Path, node: str, host: str) -> tuple[Path, Path, str]:
    """(cert path, key path, sha256 of the DER certificate), made once and kept."""
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    if not (cert_path.exists() and key_path.exists()):
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o700)
        # Imported here: cryptography costs ~9 MB of every agent's RSS, and only the first
        # start of a host makes the certificate (bench/footprint.py).
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"apprelease-agent {node}")])
        try:
            alt: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            alt = x509.DNSName(host)
        now = dt.datetime.now(dt.UTC)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
                .not_valid_after(now + dt.timedelta(days=3650))
                .add_extension(x509.SubjectAlternativeName([alt]), critical=False)
                .sign(key, hashes.SHA256()))
        tmp_key = key_path.with_name(".key.pem.tmp")
        fd = os.open(tmp_key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()))
        os.replace(tmp_key, key_path)
        tmp_cert = cert_path.with_name(".cert.pem.tmp")
        tmp_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        os.replace(tmp_cert, cert_path)
    der = ssl.PEM_cert_to_DER_cert(cert_path.read_text())
    return cert_path, key_path, hashlib.sha256(der).hexdigest()


# ----- reading log files


def tail_lines(path: Path, count: int) -> tuple[list[bytes], int, int]:
    """The last `count` lines of `path` (-1: all), and (inode, size) where following resumes."""
    try:
        with path.open("rb") as f:
            stat = os.fstat(f.fileno())
            data = f.read(stat.st_size)  # files rotate at 10 MB (host/watchers.py)
    except FileNotFoundError:
        return [], 0, 0
    lines = data.splitlines(keepends=True)
    if data and not data.endswith(b"\n"):
        # A line still being written: sent once it is complete.
        partial = lines.pop()
        size = stat.st_size - len(partial)
    else:
        size = stat.st_size
    return (lines if count < 0 else lines[-count:] if count else []), stat.st_ino, size


class Follower:
    """New complete lines of one log file, across rotation (a new inode, or a shorter file)."""

    def __init__(self, path: Path, inode: int, offset: int):
        self.path, self.inode, self.offset = path, inode, offset

    def read(self) -> list[bytes]:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return []
        if stat.st_ino != self.inode or stat.st_size < self.offset:
            self.inode, self.offset = stat.st_ino, 0  # rotated: the new file from its start
        if stat.st_size == self.offset:
            return []
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = f.read(stat.st_size - self.offset)
        end = data.rfind(b"\n") + 1
        self.offset += end
        return data[:end].splitlines(keepends=True)


# ----- the server


Reviewer = Callable[[dict[str, Any]], dict[str, Any]]  # POSTs a review object, returns the answer


class LogServer:
    """HTTPS on (address, port); `start()` returns the endpoint to publish, `stop()` ends it."""

    def __init__(self, layout: HostLayout, node: str, address: str, port: int, advertise: str,
                 review: Reviewer, knows_app: Callable[[str, str], bool], tls_dir: Path):
        self.layout, self.node, self.review, self.knows_app = layout, node, review, knows_app
        self.address, self.port, self.advertise, self.tls_dir = address, port, advertise, tls_dir
        self.stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> LogEndpoint:
        cert, key, digest = ensure_certificate(self.tls_dir, self.node, self.advertise)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(cert, key)
        handler = type("Handler", (_Handler,), {"owner": self})
        family = socket.AF_INET6 if ":" in self.address else socket.AF_INET
        server_class = type("Server", (ThreadingHTTPServer,), {"address_family": family, "daemon_threads": True})
        self._server = server_class((self.address, self.port), handler)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="logs", daemon=True)
        self._thread.start()
        host = f"[{self.advertise}]" if ":" in self.advertise else self.advertise
        endpoint = LogEndpoint(url=f"https://{host}:{self.port}", cert_sha256=digest)
        log.info("serving app logs on %s (certificate sha256 %s)", endpoint.url, digest)
        return endpoint

    def stop(self) -> None:
        self.stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


class _Handler(BaseHTTPRequestHandler):
    owner: LogServer
    server_version = "apprelease-agent"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        log.debug("%s %s", self.client_address[0], format % args)

    def _refuse(self, status: HTTPStatus, message: str) -> None:
        body = (message + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        url = urlsplit(self.path)
        if url.path != "/logs":
            self._refuse(HTTPStatus.NOT_FOUND, "not found: the agent serves /logs")
            return
        try:
            query = logaccess.parse_query(dict(parse_qsl(url.query)))
        except logaccess.BadRequest as exc:
            self._refuse(HTTPStatus.BAD_REQUEST, str(exc))
            return
        token = logaccess.bearer_token(self.headers.get("Authorization"))
        if token is None:
            self._refuse(HTTPStatus.UNAUTHORIZED, "Unauthorized: a bearer token is required")
            return
        owner = self.owner
        host_release = query.for_node(owner.node)
        try:
            user = logaccess.authenticated_user(owner.review(logaccess.token_review(token)))
            if user is None:
                self._refuse(HTTPStatus.UNAUTHORIZED, "Unauthorized: the token was not accepted")
                return
            ok, reason = logaccess.allowed(owner.review(logaccess.access_review(user, query.namespace, host_release)))
        except Exception as exc:  # noqa: BLE001 - the apiserver is the authority: no answer, no logs
            log.warning("logs: cannot review a request for %s/%s: %s", query.namespace, query.app, exc)
            self._refuse(HTTPStatus.SERVICE_UNAVAILABLE, "cannot reach the apiserver to authorize this request")
            return
        if not ok:
            log.info("logs: refused %s for %s/%s", user.name, query.namespace, host_release)
            self._refuse(HTTPStatus.FORBIDDEN, logaccess.refusal(user, query.namespace, host_release, reason))
            return
        if not owner.knows_app(query.namespace, query.app):
            self._refuse(HTTPStatus.NOT_FOUND, f"no HostRelease of {query.app} in namespace {query.namespace} "
                                               f"on node {owner.node}")
            return
        paths = owner.layout.app(app_key(query.namespace, query.app))
        revision = query.revision or core.live_revision(paths)
        if revision is None:
            self._refuse(HTTPStatus.NOT_FOUND, f"{query.app} serves no revision on node {owner.node}: name one")
            return
        log.info("logs: %s reads %s/%s revision %s (tail %d%s)", user.name, query.namespace, query.app, revision,
                 query.tail, ", following" if query.follow else "")
        self._serve(log_files(paths, revision, query.process), query)

    def _serve(self, files: list[Path], query: logaccess.LogQuery) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Connection", "close")  # the body ends when the connection does
        self.end_headers()
        followers = []
        try:
            for path in files:
                lines, inode, offset = tail_lines(path, query.tail)
                self.wfile.writelines(lines)
                followers.append(Follower(path, inode, offset))
            self.wfile.flush()
            while query.follow and not self.owner.stopping.is_set() and not self._client_gone():
                fresh = [line for f in followers for line in f.read()]
                if fresh:
                    self.wfile.writelines(fresh)
                    self.wfile.flush()
                else:
                    time.sleep(FOLLOW_POLL_SECONDS)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass  # the client went away
        self.close_connection = True

    def _client_gone(self) -> bool:
        """A follower's client that closed its side (it never sends anything after the request)."""
        readable, _, _ = select.select([self.connection], [], [], 0)
        if not readable:
            return False
        self.connection.settimeout(0.05)  # a TLS record that is not application data must not block us
        try:
            return self.connection.recv(1) == b""
        except (ssl.SSLWantReadError, BlockingIOError, TimeoutError):
            return False
        except OSError:
            return True
        finally:
            self.connection.settimeout(None)
