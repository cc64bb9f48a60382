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

from .supervisors.base import ProcessExit


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, host: str, timeout: float):
        super().__init__(host, timeout=timeout)
        self._path = str(path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def get(path: Path, url: str, host: str = "localhost", timeout: float = 2.0) -> tuple[int, bytes]:
    conn = UnixHTTPConnection(path, host, timeout)
    try:
        conn.request("GET", url, headers={"Host": host, "User-Agent": "apprelease-health"})
        resp = conn.getresponse()
        return resp.status, resp.read()
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
