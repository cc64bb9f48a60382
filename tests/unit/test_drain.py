"""Reading accept queues from `ss -xlnH` (host/drain.py), as iproute2 prints them."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from apprelease.host import drain
from apprelease.host.executor import LocalExecutor

pytestmark = pytest.mark.unit

SS = """u_str LISTEN 3      16     /tmp/ar-x/run/r1.sock 894041 * 0
u_str LISTEN 0      2048   /tmp/ar-x/run/r2.sock 894042 * 0
u_str ESTAB  0      0      /tmp/ar-x/run/r1.sock 894043 * 894044
u_seq LISTEN 0      5      @/abstract 894045 * 0
"""


def test_parse_queues_reads_listeners_only():
    assert drain.parse_queues(SS) == {"/tmp/ar-x/run/r1.sock": 3, "/tmp/ar-x/run/r2.sock": 0, "@/abstract": 0}


def test_pending_counts_real_queued_connections(tmp_path: Path):
    path = tmp_path / "old.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen(16)
    clients = [socket.socket(socket.AF_UNIX) for _ in range(2)]
    try:
        for client in clients:
            client.connect(str(path))
        assert drain.pending(LocalExecutor(), [path, tmp_path / "other.sock"]) == {str(path): 2}
        assert drain.wait_accepted(LocalExecutor(), [path], deadline_seconds=0.3) == {str(path): 2}
        for _ in clients:
            listener.accept()[0].close()
        assert drain.wait_accepted(LocalExecutor(), [path], deadline_seconds=5) == {}
    finally:
        for client in clients:
            client.close()
        listener.close()
