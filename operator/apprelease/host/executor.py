"""The one way the agent runs host commands.

`LocalExecutor` runs them as child processes (tests, `--root` on a plain host).
`HostExecutor` runs them in the host's namespaces through `nsenter -t 1` (the DaemonSet).
nsenter changes namespaces, not cgroups: on a host with systemd the long-lived daemons are
therefore started by systemd units (`host/systemd.py`), not by the executor. Tests give
`HostExecutor` the pid of a test host's own systemd (hack/systemd_host.py) instead of 1: the
only difference from the DaemonSet's path.
Files under the agent root are touched directly: the DaemonSet mounts it at the same path.
Files elsewhere on the host (unit files) are reached through `/proc/<pid>/root`, and pids the
host's tools report (pid files) are translated with `visible_pid`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path


class CommandFailed(RuntimeError):
    def __init__(self, argv: Sequence[str], returncode: int, output: str):
        self.argv = list(argv)
        self.returncode = returncode
        self.output = output
        tail = "\n".join(output.strip().splitlines()[-20:])
        super().__init__(f"{argv[0]} exited with {returncode}: {tail}")


@dataclass
class LocalExecutor:
    prefix: tuple[str, ...] = ()
    log: list[list[str]] = field(default_factory=list)  # every argv run, for status and tests
    target_pid: int | None = None  # the host's PID 1 as this process numbers it (HostExecutor)

    @property
    def host_root(self) -> Path:
        """The host's file system root as this process reaches it."""
        return Path("/") if self.target_pid is None else Path(f"/proc/{self.target_pid}/root")

    def visible_pid(self, host_pid: int) -> int | None:
        """The pid of the process the host numbers `host_pid` (a pid file's content), as this
        process numbers it; None if there is none.

        The DaemonSet agent shares the host's PID namespace (hostPID), so this is `host_pid`.
        A test host's systemd is PID 1 of a namespace nested in the test's: its pid files hold
        the inner numbers, and /proc/<pid>/status's NSpid line maps them.
        """
        if self.target_pid is None or _pid_namespace(self.target_pid) == _pid_namespace("self"):
            return host_pid
        target_ns = _pid_namespace(self.target_pid)
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                line = next(li for li in (entry / "status").read_text().splitlines() if li.startswith("NSpid:"))
            except (FileNotFoundError, ProcessLookupError, StopIteration):
                continue
            numbers = line.split()[1:]
            if len(numbers) > 1 and numbers[-1] == str(host_pid) and _pid_namespace(entry.name) == target_ns:
                return int(numbers[0])
        return None

    def command(self, argv: Sequence[str]) -> list[str]:
        return [*self.prefix, *argv]

    def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        timeout: float | None = 600,
        check: bool = True,
        input: str | None = None,
        on_line: Callable[[str], None] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run to completion; output is stdout and stderr together. With `on_line`, each line is
        also handed over as the command prints it (a build's progress), not only at the end."""
        full = self.command(argv)
        self.log.append(full)
        if on_line is not None:
            if input is not None:
                raise ValueError("on_line and input cannot be combined")
            proc = _run_streaming(full, env, timeout, on_line)
        else:
            proc = subprocess.run(
                full,
                env=dict(env) if env is not None else None,
                input=input,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=timeout,
                check=False,
            )
        if check and proc.returncode != 0:
            raise CommandFailed(full, proc.returncode, proc.stdout)
        return proc

    def spawn(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start a long-running daemon in its own session so it outlives the caller's signals."""
        full = self.command(argv)
        self.log.append(full)
        return subprocess.Popen(
            full,
            env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )


def _run_streaming(argv: list[str], env: Mapping[str, str] | None, timeout: float | None,
                   on_line: Callable[[str], None]) -> subprocess.CompletedProcess[str]:
    """subprocess.run's contract (output, returncode, TimeoutExpired), reading line by line."""
    # Its own process group, so a timeout kills what it started too (uv's bytecode compilers):
    # a grandchild holding the pipe open would keep us reading after the kill.
    proc = subprocess.Popen(argv, env=dict(env) if env is not None else None, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                            process_group=0)
    expired = threading.Event()

    def kill() -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def expire() -> None:
        expired.set()
        kill()

    # A timer rather than a deadline checked between lines: a command that prints nothing
    # for a long time still gets killed on time.
    timer = threading.Timer(timeout, expire) if timeout is not None else None
    lines: list[str] = []
    finished = False
    try:
        if timer is not None:
            timer.start()
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            on_line(line.rstrip("\n"))
        finished = True
    finally:
        if timer is not None:
            timer.cancel()
        if not finished:  # on_line raised (or we were interrupted): leave no process behind
            kill()
        proc.wait()
        proc.stdout.close()
    output = "".join(lines)
    if expired.is_set():
        raise subprocess.TimeoutExpired(argv, timeout or 0, output=output)
    return subprocess.CompletedProcess(argv, proc.returncode, output)


def _pid_namespace(pid: int | str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except (FileNotFoundError, ProcessLookupError):
        return None


def HostExecutor(pid: int = 1) -> LocalExecutor:  # noqa: N802 - a named configuration, not a class
    """Commands run in `pid`'s mount, UTS, IPC, network and PID namespaces: on the host.

    `pid` is the host's init: 1 for the DaemonSet (hostPID), a test host's systemd in tests.
    """
    return LocalExecutor(prefix=("nsenter", "-t", str(pid), "-m", "-u", "-i", "-n", "-p", "--"), target_pid=pid)
