"""Running a revision's release command (e.g. migrations) on this host, before its workers start.

The command is the tenant's code, so it runs exactly as the app's own processes do: as the
app user (no supplementary groups, no capabilities, `no_new_privs`), with the new venv and
the revision's environment, in the release directory. It also runs in its own PID namespace:
when it exits or its deadline passes, the kernel kills everything it started, so a timed-out
migration cannot keep writing after the revision was declared failed.

Its output goes to `logs/<revision>.release.log` (readable with `kubectl apprelease logs`)
and its tail into the HostRelease status when it fails.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .executor import LocalExecutor
from .supervisors.base import DAEMON_ENV, encode_env, launcher_argv

TAIL_LINES = 30


@dataclass(frozen=True)
class Outcome:
    code: int | None  # exit status; None when the deadline killed it
    seconds: float
    tail: str

    @property
    def ok(self) -> bool:
        return self.code == 0

    def describe(self, timeout: int) -> str:
        if self.code is None:
            return f"did not finish within timeoutSeconds ({timeout}s) and was killed"
        return f"exited with code {self.code}" if self.code >= 0 else f"was killed by signal {-self.code}"


def confined_argv(argv: Sequence[str], uid: int, gid: int, cwd: Path) -> list[str]:
    """`argv` (the venv's interpreter first) as the app user in a PID namespace of its own, in `cwd`.

    Root's part (unshare, setpriv) is found through the daemons' fixed PATH, never the app's:
    the app's PATH starts with its venv's bin/, where a package could install an `unshare`.
    The app's environment travels hex-encoded and is set by the launcher as the app user,
    so no value (a password) shows in the command line of a process that outlives the exec.
    """
    if uid == 0 or gid == 0:
        raise ValueError("refusing to run a release command as uid/gid 0")
    return [
        "unshare", "--pid", "--fork", "--kill-child", f"--wd={cwd}", "--",
        "setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
        "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all", "--",
        *launcher_argv(argv, "release command"),
    ]  # fmt: skip


def run(executor: LocalExecutor, argv: Sequence[str], *, uid: int, gid: int, cwd: Path, env: Mapping[str, str],
        timeout: int, log_path: Path) -> Outcome:
    """Run to completion or deadline; every line goes to `log_path` as it is printed.

    `env` is the app's complete environment: exactly what the command sees."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with log_path.open("w", encoding="utf-8", errors="replace") as log:
        def write(line: str) -> None:
            log.write(line + "\n")
            log.flush()

        try:
            proc = executor.run(confined_argv(argv, uid, gid, cwd), env={**DAEMON_ENV, **encode_env(env)},
                                timeout=timeout, check=False, on_line=write)
            code: int | None = proc.returncode
        except subprocess.TimeoutExpired:
            code = None
    return Outcome(code=code, seconds=time.monotonic() - started, tail=tail(log_path))


def tail(path: Path, lines: int = TAIL_LINES) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return "\n".join(text.splitlines()[-lines:])
