"""Letting the old revision accept what is queued on its socket before it is told to stop.

After the switch nginx connects to the new socket, but connections it opened just before
are still in the old socket's accept queue. gunicorn closes its listener when it gets
SIGTERM, and the kernel resets whatever was still queued there: nginx answers those
requests with 502. With gthread workers the queue empties within milliseconds; with sync
workers busy on slow requests it can hold connections for seconds. So the settle step waits
until the old sockets' accept queues are empty (bounded), measured with `ss`, which reads
the queue length of a listening unix socket through sock_diag.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from pathlib import Path

from .executor import LocalExecutor

log = logging.getLogger(__name__)

POLL_SECONDS = 0.1


def parse_queues(ss_output: str) -> dict[str, int]:
    """Listening unix socket path -> connections waiting in its accept queue (`ss -xlnH`)."""
    queues = {}
    for line in ss_output.splitlines():
        fields = line.split()
        # Netid State Recv-Q Send-Q Path Inode Peer PeerInode; Recv-Q of a listener is its backlog
        if len(fields) >= 5 and fields[1] == "LISTEN" and fields[2].isdigit():
            queues[fields[4]] = int(fields[2])
    return queues


def pending(executor: LocalExecutor, sockets: Iterable[Path]) -> dict[str, int]:
    """Of `sockets`, those with connections waiting to be accepted, and how many."""
    wanted = {str(s) for s in sockets}
    try:
        proc = executor.run(["ss", "-xlnH"], check=False, timeout=10)
    except FileNotFoundError:  # no iproute2 on this host: the fixed settle time is all there is
        log.warning("ss (iproute2) is not installed: cannot tell when the old revision's queue is empty")
        return {}
    return {path: n for path, n in parse_queues(proc.stdout).items() if path in wanted and n > 0}


def wait_accepted(executor: LocalExecutor, sockets: Iterable[Path], deadline_seconds: float) -> dict[str, int]:
    """Wait until no connection waits on `sockets`, at most `deadline_seconds`; what still waits."""
    sockets = list(sockets)
    deadline = time.monotonic() + deadline_seconds
    while True:
        waiting = pending(executor, sockets) if sockets else {}
        if not waiting or time.monotonic() >= deadline:
            return waiting
        time.sleep(POLL_SECONDS)
