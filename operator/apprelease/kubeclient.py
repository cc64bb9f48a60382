"""A small Kubernetes API client: kubeconfig/in-cluster config, JSON requests, watch streams.

Who calls it: the host agent (`agent/kube.py`, its only API path) and `describe` from the
kubectl plugin (`plugin/kube.py`). Why it exists: the agent runs on every host, so its memory
is multiplied by the fleet, and `import kubernetes` (even `kubernetes.config`) imports the
client's ~800 generated model modules: ~50 MB and ~1 s before the agent does anything
(measured with bench/footprint.py, before/after in its table). The agent makes six kinds of
calls on plain JSON dicts; this module is those calls' transport and nothing more: urllib3
(already a dependency) for pooled HTTPS, PyYAML for the kubeconfig, no generated models.

What it supports of a kubeconfig: `--kubeconfig` / `$KUBECONFIG` (a `:`-separated list,
merged as kubectl does: the first file that sets a key wins), the current context or a named
one, `server`, `certificate-authority(-data)`, `insecure-skip-tls-verify`, `tls-server-name`,
`token`, `tokenFile`, `client-certificate(-data)` + `client-key(-data)`, `username`/`password`.
`exec` credential plugins (client.authentication.k8s.io ExecCredential: a token, run again
when its expirationTimestamp passes). In a pod: the service account's token (re-read every
minute, as the kubelet rotates bound tokens), CA and `KUBERNETES_SERVICE_HOST`. The deprecated
`auth-provider` is refused with a clear error.

A leaf: it imports nothing of apprelease (import-linter contract `leaves`).
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import urllib3
import yaml

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
TOKEN_REREAD_SECONDS = 60.0
DEFAULT_KUBECONFIG = Path.home() / ".kube" / "config"

Obj = dict[str, Any]
Timeout = tuple[float, float]


class ConfigError(Exception):
    """No usable cluster configuration (missing file, context, server...)."""


class ApiError(Exception):
    """An HTTP error answer of the apiserver (status >= 400), or an ERROR event of a watch.

    Same attribute names as `kubernetes.client.ApiException` (status, reason, body), so
    `describe` reads both."""

    def __init__(self, status: int, reason: str = "", body: str | None = None):
        super().__init__(f"HTTP {status}: {reason}")
        self.status = status
        self.reason = reason
        self.body = body


def decode_secret_data(data: Mapping[str, str] | None) -> dict[str, str]:
    """A Secret's `data` (base64 on the wire) as text; bytes that are not UTF-8 survive as surrogates."""
    return {k: base64.b64decode(v).decode("utf-8", "surrogateescape") for k, v in (data or {}).items()}


def event_manifest(obj: Mapping[str, Any], *, api_version: str, kind: str, event_type: str, reason: str,
                   message: str, component: str, instance: str, host: str | None = None) -> Obj:
    """A core/v1 Event about `obj` (the agent's and the operator's; each posts its own)."""
    meta = obj["metadata"]
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    reference = {"apiVersion": api_version, "kind": kind, "name": meta["name"], "namespace": meta["namespace"],
                 "uid": meta.get("uid"), "resourceVersion": meta.get("resourceVersion")}
    source = {"component": component, **({"host": host} if host else {})}
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{meta['name']}.{os.urandom(8).hex()}", "namespace": meta["namespace"]},
        "involvedObject": {k: v for k, v in reference.items() if v is not None},
        "reason": reason,
        "message": message[:1024],
        "type": event_type,
        "source": source,
        "reportingComponent": component,
        "reportingInstance": instance,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }


def describe(exc: BaseException) -> str:
    """One line about an API failure (an ApiException's str() spans headers and body).

    Reads the Kubernetes `Status` message from the body when there is one; works for
    `ApiError` and for `kubernetes.client.ApiException` (the plugin's), without importing
    the latter."""
    status = getattr(exc, "status", None)
    if isinstance(status, int) and hasattr(exc, "body"):
        reason = getattr(exc, "reason", "") or ""
        try:
            reason = json.loads(exc.body or "{}").get("message", reason)  # type: ignore[attr-defined]
        except (json.JSONDecodeError, AttributeError, TypeError):
            pass  # a non-JSON body (a proxy's error page): the HTTP reason is all there is
        return f"HTTP {status}: {reason}"
    return f"{type(exc).__name__}: {exc}"


@dataclass
class Config:
    """Where the apiserver is and how to authenticate to it."""

    server: str
    ca_file: str | None = None
    ca_data: bytes | None = None
    insecure: bool = False
    tls_server_name: str | None = None
    token: str | None = None
    token_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    cert_data: bytes | None = None
    key_data: bytes | None = None
    basic_auth: str | None = None
    exec_plugin: Obj | None = None
    _token_expires: float = field(default=0.0, repr=False)
    _token_read_at: float = field(default=0.0, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def authorization(self) -> str | None:
        """The Authorization header value, re-reading a token file once a minute."""
        if self.token_file:
            with self._lock:
                now = time.monotonic()
                if self.token is None or now - self._token_read_at > TOKEN_REREAD_SECONDS:
                    self.token = Path(self.token_file).read_text().strip()
                    self._token_read_at = now
        if self.exec_plugin:
            with self._lock:
                if self.token is None or time.time() >= self._token_expires:
                    self.token, self._token_expires = run_exec_plugin(self.exec_plugin)
        if self.token:
            return f"Bearer {self.token}"
        if self.basic_auth:
            return "Basic " + base64.b64encode(self.basic_auth.encode()).decode()
        return None

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(
            cafile=self.ca_file, cadata=self.ca_data.decode() if self.ca_data else None)
        if self.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.cert_file or self.cert_data:
            _load_client_certificate(context, self)
        return context


def _load_client_certificate(context: ssl.SSLContext, config: Config) -> None:
    """ssl can load a certificate chain only from files: inline data goes through a 0600
    temp file that is removed at once."""
    if config.cert_file and not config.cert_data:
        context.load_cert_chain(config.cert_file, config.key_file)
        return
    with tempfile.TemporaryDirectory(prefix="apprelease-cert-") as tmp:
        cert = Path(tmp) / "cert.pem"
        key = Path(tmp) / "key.pem"
        for path, data, name in ((cert, config.cert_data, config.cert_file), (key, config.key_data, config.key_file)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(data if data is not None else Path(name or "").read_bytes())
        context.load_cert_chain(str(cert), str(key))


# -- configuration ---------------------------------------------------------------------


def load_config(kubeconfig: str | None = None, context: str | None = None) -> Config:
    """--kubeconfig, else $KUBECONFIG, else the pod's service account, else ~/.kube/config."""
    paths = kubeconfig or os.environ.get("KUBECONFIG")
    if paths:
        return load_kubeconfig([p for p in paths.split(os.pathsep) if p], context)
    if os.environ.get("KUBERNETES_SERVICE_HOST") and (SERVICE_ACCOUNT_DIR / "token").exists():
        return load_incluster_config()
    return load_kubeconfig([str(DEFAULT_KUBECONFIG)], context)


def load_incluster_config(directory: Path = SERVICE_ACCOUNT_DIR) -> Config:
    host = os.environ.get("KUBERNETES_SERVICE_HOST")
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        raise ConfigError("KUBERNETES_SERVICE_HOST is not set: not in a pod")
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    return Config(server=f"https://{host}:{port}", ca_file=str(directory / "ca.crt"),
                  token_file=str(directory / "token"))


def merge_kubeconfigs(paths: list[str]) -> tuple[Obj, Path]:
    """kubectl's merge of a KUBECONFIG list: the first file to set a key (or name) wins.

    Returns the merged document and the directory relative paths resolve against (the
    first file's; kubectl resolves per file, which only matters for split setups)."""
    merged: Obj = {"clusters": [], "users": [], "contexts": []}
    seen: dict[str, set[str]] = {"clusters": set(), "users": set(), "contexts": set()}
    base: Path | None = None
    for path in paths:
        file = Path(path).expanduser()
        if not file.exists():
            continue
        doc = yaml.safe_load(file.read_text()) or {}
        if base is None:
            base = file.parent
        if "current-context" not in merged and doc.get("current-context"):
            merged["current-context"] = doc["current-context"]
        for section in ("clusters", "users", "contexts"):
            for entry in doc.get(section) or []:
                if entry.get("name") not in seen[section]:
                    seen[section].add(entry.get("name"))
                    # paths inside a file are relative to that file
                    merged[section].append({**entry, "_base": str(file.parent)})
    if base is None:
        raise ConfigError(f"no kubeconfig found at {':'.join(paths)}")
    return merged, base


def load_kubeconfig(paths: list[str], context: str | None = None) -> Config:
    doc, _ = merge_kubeconfigs(paths)
    name = context or doc.get("current-context")
    if not name:
        raise ConfigError("the kubeconfig has no current-context")
    ctx = _named(doc, "contexts", name).get("context") or {}
    cluster_entry = _named(doc, "clusters", ctx.get("cluster", ""))
    user_entry = _named(doc, "users", ctx["user"]) if ctx.get("user") else {}
    cluster, user = cluster_entry.get("cluster") or {}, user_entry.get("user") or {}
    if not cluster.get("server"):
        raise ConfigError(f"cluster {ctx.get('cluster')!r} of context {name!r} has no server")
    if "auth-provider" in user:
        raise ConfigError(f"user {ctx.get('user')!r}: auth-provider is not supported; use a token, a certificate or exec")

    def path(entry: Obj, value: str | None) -> str | None:
        return str(Path(entry["_base"], value)) if value else None

    def data(value: str | None) -> bytes | None:
        return base64.b64decode(value) if value else None

    basic = f"{user['username']}:{user.get('password', '')}" if user.get("username") else None
    return Config(
        server=cluster["server"].rstrip("/"),
        ca_file=path(cluster_entry, cluster.get("certificate-authority")),
        ca_data=data(cluster.get("certificate-authority-data")),
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
        tls_server_name=cluster.get("tls-server-name"),
        token=user.get("token"),
        token_file=path(user_entry, user.get("tokenFile")),
        cert_file=path(user_entry, user.get("client-certificate")),
        key_file=path(user_entry, user.get("client-key")),
        cert_data=data(user.get("client-certificate-data")),
        key_data=data(user.get("client-key-data")),
        basic_auth=basic,
        exec_plugin=user.get("exec"),
    )


def _named(doc: Obj, section: str, name: str) -> Obj:
    for entry in doc.get(section) or []:
        if entry.get("name") == name:
            return entry
    raise ConfigError(f"no {section[:-1]} named {name!r} in the kubeconfig")


def run_exec_plugin(spec: Obj) -> tuple[str, float]:
    """(token, expiry as a UNIX time) from a kubeconfig `exec` credential plugin."""
    import subprocess  # noqa: PLC0415 - only hosts with an exec plugin pay for it

    env = {**os.environ, **{e["name"]: e["value"] for e in spec.get("env") or []}}
    env["KUBERNETES_EXEC_INFO"] = json.dumps({"apiVersion": spec.get("apiVersion"), "kind": "ExecCredential",
                                              "spec": {"interactive": False}})
    done = subprocess.run([spec["command"], *(spec.get("args") or [])], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise ConfigError(f"exec plugin {spec['command']} failed: {done.stderr.strip()[-300:]}")
    status = (json.loads(done.stdout) or {}).get("status") or {}
    if not status.get("token"):
        raise ConfigError(f"exec plugin {spec['command']} returned no token (client certificates from exec "
                          "plugins are not supported)")
    expires = float("inf")
    if status.get("expirationTimestamp"):
        from datetime import datetime  # noqa: PLC0415

        expires = datetime.fromisoformat(status["expirationTimestamp"].replace("Z", "+00:00")).timestamp() - 30
    return status["token"], expires


# -- the client ------------------------------------------------------------------------


class Client:
    """JSON requests to one apiserver over a pooled HTTPS connection (thread-safe pool)."""

    def __init__(self, config: Config, *, pool_size: int = 2):
        self.config = config
        url = urlsplit(config.server)
        self.scheme = url.scheme or "https"
        self.host = url.hostname or "localhost"
        self.port = url.port or (443 if self.scheme == "https" else 80)
        self.prefix = url.path.rstrip("/")
        kwargs: Obj = {"maxsize": pool_size, "block": False, "retries": False}
        if self.scheme == "https":
            kwargs["ssl_context"] = config.ssl_context()
            if config.tls_server_name:
                kwargs["server_hostname"] = config.tls_server_name
                kwargs["assert_hostname"] = config.tls_server_name
            if config.insecure:
                kwargs["cert_reqs"] = "CERT_NONE"
                kwargs["assert_hostname"] = False
            self.pool: urllib3.HTTPConnectionPool = urllib3.HTTPSConnectionPool(self.host, self.port, **kwargs)
        else:
            self.pool = urllib3.HTTPConnectionPool(self.host, self.port, **kwargs)

    def url(self, path: str, query: Mapping[str, Any] | None = None) -> str:
        params = {k: _query_value(v) for k, v in (query or {}).items() if v is not None}
        return self.prefix + path + (f"?{urlencode(params)}" if params else "")

    def _headers(self, content_type: str | None) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "apprelease"}
        if content_type:
            headers["Content-Type"] = content_type
        auth = self.config.authorization()
        if auth:
            headers["Authorization"] = auth
        return headers

    def request(self, method: str, path: str, *, query: Mapping[str, Any] | None = None, body: Any = None,
                content_type: str = "application/json", timeout: Timeout = (10.0, 30.0)) -> Obj:
        """One request; the answer's JSON. Raises ApiError (>= 400), urllib3/OS errors (no answer)."""
        payload = None if body is None else json.dumps(body).encode()
        resp = self.pool.request(
            method, self.url(path, query), body=payload, headers=self._headers(content_type if payload else None),
            timeout=urllib3.Timeout(connect=timeout[0], read=timeout[1]), retries=False, preload_content=True,
        )
        text = resp.data.decode("utf-8", "replace")
        if resp.status >= 400:
            raise ApiError(resp.status, resp.reason or "", text)
        return json.loads(text) if text else {}

    def stream_lines(self, path: str, *, query: Mapping[str, Any] | None = None,
                     timeout: Timeout = (10.0, 330.0)) -> Iterator[str]:
        """The lines of a streamed GET (a watch), as they arrive; closes the response at the end."""
        resp = self.pool.request(
            "GET", self.url(path, query), headers=self._headers(None),
            timeout=urllib3.Timeout(connect=timeout[0], read=timeout[1]), retries=False, preload_content=False,
        )
        try:
            if resp.status >= 400:
                raise ApiError(resp.status, resp.reason or "", resp.read().decode("utf-8", "replace"))
            pending = b""
            for chunk in resp.stream(amt=None, decode_content=True) if resp.chunked else resp.stream(65536):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    yield line.decode("utf-8")
            if pending:
                yield pending.decode("utf-8")
        finally:
            resp.release_conn()
            resp.close()

    def watch(self, path: str, *, query: Mapping[str, Any] | None = None,
              timeout: Timeout = (10.0, 330.0)) -> Iterator[tuple[str, Obj]]:
        """(type, object) watch events. An ERROR event raises ApiError with its code."""
        for line in self.stream_lines(path, query={**(query or {}), "watch": "true"}, timeout=timeout):
            if not line.strip():
                continue
            event = json.loads(line)
            kind, obj = event["type"], event["object"]
            if kind == "ERROR":
                raise ApiError(obj.get("code", 0), f"{obj.get('reason')}: {obj.get('message')}", json.dumps(obj))
            yield kind, obj


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def path_segment(value: str) -> str:
    return quote(value, safe="")
