"""The one way the agent runs host commands.

`LocalExecutor` runs them as child processes (tests, `--root` on a plain host).
`HostExecutor` runs them in the host's namespaces through `nsenter -t 1` (the DaemonSet), so
daemons started by the agent (circusd, nginx) live on the host and outlive the agent's pod.
Files under the agent root are touched directly: the DaemonSet mounts it at the same path.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


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
    ) -> subprocess.CompletedProcess[str]:
        full = self.command(argv)
        self.log.append(full)
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


def HostExecutor() -> LocalExecutor:  # noqa: N802 - a named configuration, not a class
    """Commands run in PID 1's mount, UTS, IPC, network and PID namespaces: on the host."""
    return LocalExecutor(prefix=("nsenter", "-t", "1", "-m", "-u", "-i", "-n", "-p", "--"))
