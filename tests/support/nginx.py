"""Test helpers for the nginx proxy backend.

- `parse_config`: a tiny nginx tokenizer/parser, so rendering tests check statements, not text.
- `UnixHTTPServer` / `serve_unix`: a threaded HTTP upstream on a unix socket that answers with
  its own name and the headers it saw (stands in for gunicorn).
- `free_port`, `self_signed_cert`, `http_get`: loopback plumbing for the integration tests.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import socketserver
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path

NGINX = "/usr/sbin/nginx"


# -- a tiny nginx config parser --------------------------------------------------------


class ConfigSyntaxError(ValueError):
    pass


@dataclass
class Statement:
    name: str
    args: list[str]
    block: list[Statement] | None = None  # None: a simple directive ending in ';'

    def find(self, name: str) -> list[Statement]:
        return [s for s in self.block or [] if s.name == name]

    def walk(self) -> Iterator[Statement]:
        yield self
        for child in self.block or []:
            yield from child.walk()


def tokenize(text: str) -> list[str]:
    """nginx's lexical rules in short: '#' comments, quoted strings, ';', '{', '}' and words.

    A quoted token is returned with its quotes, so a test can tell a quoted value apart.
    """
    tokens: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif c == "#":
            while i < n and text[i] != "\n":
                i += 1
        elif c in ";{}":
            tokens.append(c)
            i += 1
        elif c in "\"'":
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if text[j] == "\\" else 1
            if j >= n:
                raise ConfigSyntaxError(f"unterminated quote at {i}")
            tokens.append(text[i : j + 1])
            i = j + 1
        else:
            j = i
            while j < n and not text[j].isspace() and text[j] not in ";{}\"'#":
                j += 2 if text[j] == "\\" else 1
            tokens.append(text[i:j])
            i = j
    return tokens


def parse_config(text: str) -> list[Statement]:
    """Statements of a config; raises `ConfigSyntaxError` on unbalanced braces or a missing ';'."""
    tokens = tokenize(text)
    pos = 0

    def block(depth: int) -> list[Statement]:
        nonlocal pos
        out: list[Statement] = []
        words: list[str] = []
        while pos < len(tokens):
            tok = tokens[pos]
            pos += 1
            if tok == ";":
                if not words:
                    raise ConfigSyntaxError("empty statement")
                out.append(Statement(words[0], words[1:]))
                words = []
            elif tok == "{":
                if not words:
                    raise ConfigSyntaxError("block without a name")
                out.append(Statement(words[0], words[1:], block(depth + 1)))
                words = []
            elif tok == "}":
                if depth == 0 or words:
                    raise ConfigSyntaxError("unexpected '}'")
                return out
            else:
                words.append(tok)
        if depth != 0 or words:
            raise ConfigSyntaxError("unexpected end of config")
        return out

    return block(0)


# -- processes and sockets -------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nginx_t(conf: Path, prefix: Path) -> subprocess.CompletedProcess[str]:
    """`nginx -t` one config file (no server is started)."""
    return subprocess.run(
        [NGINX, "-t", "-q", "-p", f"{prefix}/", "-c", str(conf), "-e", str(prefix / "error.log")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def self_signed_cert(directory: Path, name: str) -> tuple[bytes, bytes]:
    """(cert PEM, key PEM) for `name`, made by the openssl CLI."""
    key, cert = directory / f"{name}.key", directory / f"{name}.crt"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}",
         "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert.read_bytes(), key.read_bytes()


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


def http_get(
    port: int,
    path: str = "/",
    host: str = "app.test",
    *,
    tls: bool = False,
    method: str = "GET",
    body: bytes | None = None,
    address: str = "127.0.0.1",
) -> Response:
    """One request to nginx on `address`:`port` with a Host header (SNI = host for TLS)."""
    if tls:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(address, port, timeout=10, context=context)
        # SNI must name the site: connect by IP but send the server name.
        sock = socket.create_connection((address, port), timeout=10)
        conn.sock = context.wrap_socket(sock, server_hostname=host)
    else:
        conn = http.client.HTTPConnection(address, port, timeout=10)
    try:
        conn.request(method, path, body=body, headers={"Host": host})
        resp = conn.getresponse()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


class _Handler(BaseHTTPRequestHandler):
    server: UnixHTTPServer

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.hits.append(self.path)
        payload = json.dumps(
            {
                "upstream": self.server.name,
                "method": self.command,
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body_length": len(body),
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass  # keep test output quiet

    def address_string(self) -> str:
        return "unix"  # a unix peer has no (host, port)


class UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: Path, name: str):
        self.name = name
        self.hits: list[str] = []
        super().__init__(str(path), _Handler)
        # nginx's workers (www-data) must be allowed to connect.
        os.chmod(path, 0o666)


@dataclass
class RunningUpstream:
    server: UnixHTTPServer
    thread: threading.Thread
    path: Path
    hits: list[str] = field(default_factory=list)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
        self.path.unlink(missing_ok=True)


def serve_unix(path: Path, name: str) -> RunningUpstream:
    """Start an upstream on unix socket `path`; call `.close()` (a fixture finalizer does)."""
    server = UnixHTTPServer(path, name)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return RunningUpstream(server, thread, path, server.hits)
