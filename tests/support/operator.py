"""The operator as a real subprocess (`apprelease operator`) for e2e tests.

Who uses it: tests/e2e/test_operator.py (one operator per test, scoped to the test's
namespace) and the end-to-end tests with real agents. Typical use:

    with OperatorProcess(control_plane, tmp_path / "operator.log", namespaces=[ns]) as op:
        ...            # op.kill() (SIGKILL), op.start() again, op.stop() (SIGTERM), op.logs()

`start()` returns once the operator's liveness endpoint answers (Kopf is up and logged in);
the process dies with the test process even if that is killed (setpriv --pdeathsig), and
the context manager stops it. Its output goes to the log file, appended across restarts.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from controlplane import ControlPlane
from support.nginx import free_port


class OperatorProcess:
    def __init__(
        self,
        control_plane: ControlPlane,
        log_path: Path,
        namespaces: Sequence[str] = (),
        extra_args: Sequence[str] = (),
    ) -> None:
        self.control_plane = control_plane
        self.log_path = Path(log_path)
        self.namespaces = tuple(namespaces)
        self.extra_args = tuple(extra_args)
        self.process: subprocess.Popen[bytes] | None = None
        self.liveness_url = ""

    def argv(self) -> list[str]:
        scope = [a for ns in self.namespaces for a in ("--namespace", ns)] or ["--all-namespaces"]
        return [
            sys.executable, "-m", "apprelease.cli", "operator",
            "--kubeconfig", str(self.control_plane.kubeconfig_path), *scope,
            "--liveness", self.liveness_url, *self.extra_args,
        ]

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 60.0) -> None:
        if self.running:
            raise RuntimeError(f"operator already running (pid {self.process.pid})")  # type: ignore[union-attr]
        self.liveness_url = f"http://127.0.0.1:{free_port()}/healthz"
        argv = ["setpriv", "--pdeathsig", "KILL", "--", *self.argv()]
        env = self.control_plane.env()
        env["PYTHONUNBUFFERED"] = "1"
        with self.log_path.open("ab") as out:
            out.write(f"\n==== {time.strftime('%H:%M:%S')} starting: {' '.join(argv)}\n".encode())
            out.flush()
            self.process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not self._alive():
            if self.process.poll() is not None:
                raise RuntimeError(f"operator exited with {self.process.returncode}:\n{self.logs()[-4000:]}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"operator not live after {timeout:g}s:\n{self.logs()[-4000:]}")
            time.sleep(0.2)

    def _alive(self) -> bool:
        try:
            with urllib.request.urlopen(self.liveness_url, timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM (Kopf exits gracefully), SIGKILL if it does not within `timeout`."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill would: no cleanup of any kind."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
