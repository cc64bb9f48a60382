"""Health gate: a new revision answers through its own socket before it gets any traffic.

Called by `core` between starting a watcher and switching the live socket link. The request
goes straight to `run/<revision>.sock`, bypassing nginx, so it tests exactly the new workers.
"""

from __future__ import annotations

import http.client
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .supervisors.base import ProcessExit


# Of the body, read only this much: the status decides, and an endless body must not fill memory
# (the kubelet's probes read 10 KiB too).
MAX_BODY = 10 * 1024


class DeadlineSocket(socket.socket):
    """A socket whose every operation gets only what is left of one total deadline.

    A plain socket timeout is per operation: a server that sends one byte a second answers
    every read in time and keeps a "2 s" request going for as long as it likes. The health
    gate and the liveness probe talk to tenants' apps, so their timeout must bound the whole
    request: connect, send, status line, headers and body.
    """

    deadline: float = 0.0  # time.monotonic() after which every operation fails

    def _arm(self) -> None:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("timed out")
        self.settimeout(left)

    def connect(self, address: Any) -> None:
        self._arm()
        super().connect(address)

    def sendall(self, data: Any, flags: int = 0) -> None:
        self._arm()
        super().sendall(data, flags)

    def send(self, data: Any, flags: int = 0) -> int:
        self._arm()
        return super().send(data, flags)

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        self._arm()
        return super().recv(bufsize, flags)

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:  # what makefile()'s reads call
        self._arm()
        return super().recv_into(buffer, nbytes, flags)


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a unix socket; `timeout` is a total deadline from connect() on (DeadlineSocket)."""

    def __init__(self, path: Path, host: str, timeout: float):
        super().__init__(host, timeout=timeout)
        self._path = str(path)

    def connect(self) -> None:
        sock = DeadlineSocket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.deadline = time.monotonic() + self.timeout
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def get(path: Path, url: str, host: str = "localhost", timeout: float = 2.0) -> tuple[int, bytes]:
    """GET `url` through the unix socket `path`: (status, the body's first MAX_BODY bytes).

    Raises TimeoutError when the whole exchange takes longer than `timeout`, however the
    server spreads its answer.
    """
    conn = UnixHTTPConnection(path, host, timeout)
    try:
        conn.request("GET", url, headers={"Host": host, "User-Agent": "apprelease-health"})
        resp = conn.getresponse()
        return resp.status, resp.read(MAX_BODY)
    finally:
        conn.close()


@dataclass(frozen=True)
class HealthResult:
    healthy: bool
    detail: str  # last status or error seen: goes into the Failed message
    seconds: float
    exited: ProcessExit | None = None  # the revision's process ended while we waited


def _running() -> ProcessExit | None:
    return None


def wait_healthy(
    sock: Path, url: str, *, expected: int, deadline_seconds: float, host: str = "localhost",
    interval: float = 0.05, max_interval: float = 1.0, request_timeout: float = 2.0,
    exited: Callable[[], ProcessExit | None] = _running,
) -> HealthResult:
    """Poll until `url` answers `expected` or the deadline passes (a booting app refuses at first).

    The interval starts short (a healthy app answers within a few hundred ms and every wait
    delays the switch) and doubles up to `max_interval`, so a failing app is not flooded.
    `exited` is asked after each unanswered poll: a process that has ended (a bad option, an
    app that raises at import) will not become healthy, so the wait ends there, saying so.
    """
    start = time.monotonic()
    detail = "no answer yet"
    while True:
        try:
            status, _ = get(sock, url, host, request_timeout)
            if status == expected:
                return HealthResult(True, f"{url} answered {status}", time.monotonic() - start)
            detail = f"{url} answered {status}, expected {expected}"
        except (OSError, http.client.HTTPException) as exc:
            detail = f"{url}: {type(exc).__name__}: {exc}"
        ended = exited()
        if ended is not None:
            return HealthResult(False, detail, time.monotonic() - start, exited=ended)
        if time.monotonic() - start >= deadline_seconds:
            return HealthResult(False, detail, time.monotonic() - start)
        time.sleep(interval)
        interval = min(interval * 2, max_interval)
