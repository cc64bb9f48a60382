"""Reading an app's logs from one host's agent over HTTPS, as `kubectl logs` reads a kubelet's.

Called by `plugin.cli` (`kubectl apprelease logs`). The agent's address and the sha256 of its
self-signed certificate come from the HostRelease status (`status.logs`), which only that
node's agent may write (the own-node admission policy): the plugin pins that certificate,
and checks it right after the TLS handshake, **before** it sends the user's bearer token,
so a token is never handed to anyone but that agent. The agent authenticates the token
(TokenReview) and authorizes `get hostreleases/log` in the namespace (SubjectAccessReview).
"""

from __future__ import annotations

import hashlib
import http.client
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

CONNECT_TIMEOUT = 10.0


class LogError(Exception):
    """The agent could not be read (unreachable, wrong certificate, refused); the message says which."""


@dataclass(frozen=True)
class Target:
    node: str
    url: str
    cert_sha256: str


@dataclass(frozen=True)
class Query:
    namespace: str
    app: str
    revision: str | None = None
    tail: int = -1
    follow: bool = False
    process: str | None = None  # "release", or a process-type replica such as "worker-0"

    def path(self) -> str:
        params = {"namespace": self.namespace, "app": self.app, "tail": str(self.tail),
                  "follow": "true" if self.follow else "false"}
        if self.revision:
            params["revision"] = self.revision
        if self.process:
            params["process"] = self.process
        return "/logs?" + urlencode(params)


def _pinned_context() -> ssl.SSLContext:
    # No CA: the certificate is self-signed and checked by its digest below, not by a chain.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def read_lines(target: Target, token: str, query: Query) -> Iterator[str]:
    """The log lines the agent sends; with `query.follow`, until the caller stops reading."""
    parts = urlsplit(target.url)
    if parts.scheme != "https" or not parts.hostname:
        raise LogError(f"the agent's log endpoint {target.url!r} is not an https:// URL")
    conn = http.client.HTTPSConnection(parts.hostname, parts.port or 443, timeout=CONNECT_TIMEOUT,
                                       context=_pinned_context())
    try:
        try:
            conn.connect()
        except OSError as exc:
            raise LogError(f"cannot reach the agent at {target.url}: {exc}") from None
        der = conn.sock.getpeercert(binary_form=True)
        digest = hashlib.sha256(der or b"").hexdigest()
        if digest != target.cert_sha256:
            raise LogError(f"the agent at {target.url} shows certificate sha256 {digest[:16]}..., its HostRelease "
                           f"says {target.cert_sha256[:16]}...: not sending a token to it")
        if query.follow:
            conn.sock.settimeout(None)  # a quiet app may write nothing for a long time
        conn.request("GET", query.path(), headers={"Authorization": f"Bearer {token}"})
        resp = conn.getresponse()
        if resp.status != 200:
            body = resp.read(4096).decode(errors="replace").strip()
            raise LogError(f"HTTP {resp.status}: {body}")
        while True:
            line = resp.readline()
            if not line:
                return
            yield line.decode(errors="replace").rstrip("\n")
    finally:
        conn.close()
