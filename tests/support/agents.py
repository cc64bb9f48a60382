"""Host agents as real subprocesses (`apprelease agent run`), for e2e tests.

Used by tests/e2e/test_agent_cluster.py and the operator's e2e tests. An `AgentProcess` is
one "host": its own root (circusd and nginx of its own, started by the agent and left
running when it exits, as on a real host), a Node name, the control plane's kubeconfig,
and its output in a log file. It can be started, stopped (SIGTERM), killed (-9) and started
again; `close()` stops the agent and then the host's daemons (`apprelease agent stop`), so
nothing is left behind even when a test fails. `running_agent(...)` wraps that in a
context manager.

Agent roots hold unix sockets (107-byte limit): put them under the `short_tmp` fixture.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from support.nginx import free_port

CLI = [sys.executable, "-m", "apprelease.cli"]
STOP_TIMEOUT = 180.0  # SIGTERM lets the current reconcile (maybe a venv build) finish


@dataclass
class AgentProcess:
    node: str
    root: Path
    kubeconfig: Path
    log_path: Path
    resync_seconds: float = 2.0
    supervisor: str = "circus"
    # Where this host's nginx listens. Hosts of one test that serve the same app (the same
    # listenPort) need addresses of their own: any of 127.0.0.0/8 works on Linux.
    listen_address: str = "127.0.0.1"
    extra_args: Sequence[str] = ()
    # Host options of `run` and `stop` both, e.g. --host-namespaces --host-pid P (a systemd test host)
    host_extra: Sequence[str] = ()
    env_extra: dict[str, str] = field(default_factory=dict)  # e.g. PYTHONPATH of another build of the agent
    health_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def host_args(self) -> list[str]:
        """The host options `apprelease agent run|stop|status` share."""
        return ["--root", str(self.root), "--supervisor", self.supervisor, "--listen-address", self.listen_address,
                *self.host_extra]

    def argv(self) -> list[str]:
        return [
            *CLI, "agent", "run", "--node", self.node, "--kubeconfig", str(self.kubeconfig),
            "--resync-seconds", str(self.resync_seconds), "--health-port", str(self.health_port),
            "--health-address", "127.0.0.1", *self.host_args, *self.extra_args,
        ]

    def start(self) -> AgentProcess:
        if self.running:
            raise RuntimeError(f"agent {self.node} is already running (pid {self.proc.pid})")
        self.root.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "NODE_NAME")} | self.env_extra
        with self.log_path.open("ab") as out:
            out.write(f"\n==== {time.strftime('%H:%M:%S')} starting: {' '.join(self.argv())}\n".encode())
            out.flush()
            # Its own session: a SIGINT to pytest does not reach it; close() stops it.
            self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         env=env, start_new_session=True)
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM and wait; the exit code (None if it was not running). Kills it after `timeout`."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(f"agent {self.node} did not exit within {timeout}s of SIGTERM:\n{self.log_tail()}")
        return self.proc.returncode

    def kill(self) -> None:
        """kill -9, as a crash or an OOM kill would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def restart(self) -> AgentProcess:
        self.stop()
        return self.start()

    def stop_host(self) -> None:
        """Stop the host's supervisor daemon (and so its apps) and nginx."""
        out = subprocess.run([*CLI, "agent", "stop", *self.host_args], capture_output=True, text=True, timeout=180)
        if out.returncode != 0:
            raise AssertionError(f"agent stop --root {self.root} failed: {out.stderr}")

    def close(self) -> None:
        """The agent, then the host's daemons: nothing of this host keeps running."""
        try:
            self.stop(timeout=60)  # raises (after kill -9) if SIGTERM was not honoured
        finally:
            self.stop_host()

    # -- looking at it -----------------------------------------------------------------

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def log_matches(self, pattern: str, since: int = 0) -> list[str]:
        """Log lines after character offset `since` matching the regex `pattern`."""
        return [line for line in self.log_text()[since:].splitlines() if re.search(pattern, line)]

    def probe(self, path: str) -> int | None:
        """HTTP status of the agent's /healthz or /readyz, None if nothing answers."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}{path}", timeout=3) as resp:
                return resp.status
        except urllib.error.HTTPError as err:
            return err.code
        except OSError:
            return None


@contextmanager
def running_agent(node: str, root: Path, kubeconfig: Path, log_path: Path, **options: object) -> Iterator[AgentProcess]:
    """An agent started for the block and closed (agent and host daemons) after it, even on failure."""
    agent = AgentProcess(node=node, root=root, kubeconfig=kubeconfig, log_path=log_path, **options)  # type: ignore[arg-type]
    try:
        yield agent.start()
    finally:
        agent.close()
