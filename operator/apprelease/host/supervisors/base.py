"""The interface every supervisor backend implements, and what the backends share.

The agent's rotation code talks to a `Supervisor` only: start the per-host daemon, list
what it runs, add one watcher (a `WatcherSpec`) and remove one, each through the daemon's
control socket so no other watcher is touched and the daemon never restarts. Backends:
`circus.CircusSupervisor` (default) and `supervisord.SupervisordSupervisor`.

Shared here:
- `launch_argv` / `encode_env`: how a watcher's environment reaches the process exactly.
  Neither daemon's config format can carry an arbitrary one-line value unchanged (measured
  with their own parsers: circus strips values, cuts them at ' ;', turns '""' into '' and
  substitutes '$NAME' from circusd's own environment; supervisord cuts at ' ;' and ' #',
  strips quotes off both ends, cannot quote a value holding both quote kinds, and hands
  every program its own environment plus SUPERVISOR_* variables). So the config carries
  each `NAME=value` hex-encoded under `APPRELEASE_ENV_<i>`, and the command is the release's
  interpreter running a one-line launcher that decodes them and execve()s gunicorn with
  exactly that environment and nothing else. Same pid, so signals and restarts are as if
  the daemon had started gunicorn itself.
- `quote_arg`: shell-style quoting of one argv element that neither config format alters.
- `SupervisorBackend`: daemon life cycle (lock, spawn in its own session, wait for the
  control socket, pid file, shutdown) around four small backend-specific hooks.
"""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
import sys
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import jinja2

from ...api import rules
from .. import units
from ..executor import LocalExecutor
from ..systemd import Systemd
from ..watchers import WatcherSpec

ENV_PREFIX = "APPRELEASE_ENV_"
# Runs as the app user under the release's interpreter with -I -S (no site, no user env):
# rebuilds the environment from the hex-encoded variables, byte for byte, and becomes
# gunicorn. Written without '$(', '((', '%', or a ';'/'#' after a space, which the config
# formats would interpret; `quote_arg` keeps it intact anyway.
LAUNCHER = (
    "import os,sys;"
    f"n={len(ENV_PREFIX)};"
    "e=dict(bytes.fromhex(v.decode()).split(b'=',1)for k,v in os.environb.items()"
    f"if k[:n]==b{ENV_PREFIX!r});"
    "os.execve(sys.argv[1],sys.argv[1:],e)"
)
# Longest unix socket path: sun_path is 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107
# Values written verbatim into daemon configs (paths, user names, watcher names). Both
# formats strip, comment out or expand other characters, and there is no need for them.
PLAIN_VALUE = re.compile(r"[A-Za-z0-9._/@+:,=-]+")
# What the daemons themselves run with: not the agent's environment (kubeconfig, tokens).
DAEMON_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("apprelease", "templates"),
    undefined=jinja2.StrictUndefined,
    autoescape=False,  # ini files, not HTML: every value is made safe by the caller
    keep_trailing_newline=True,
)


def render_template(template: str, /, **context: Any) -> str:
    return _TEMPLATES.get_template(template).render(**context)


class SupervisorError(RuntimeError):
    """The supervisor daemon refused a command, did not answer, or could not start."""


@dataclass(frozen=True)
class WatcherState:
    """What the daemon says about one watcher.

    status is normalised across backends: running, starting, stopping, stopped, backoff,
    fatal, or unknown; pids are the processes the daemon itself started (the gunicorn master).
    """

    name: str
    status: str
    pids: tuple[int, ...] = ()


@dataclass(frozen=True)
class ProcessExit:
    """How a watcher's process ended: `code` >= 0 is its exit status, < 0 minus the signal
    that killed it, None when the daemon did not say (e.g. it could not start it at all)."""

    code: int | None
    detail: str = ""

    def describe(self) -> str:
        if self.code is None:
            return f"exited ({self.detail or 'exit status unknown'})"
        if self.code < 0:
            return f"was killed by signal {-self.code}"
        return f"exited with code {self.code}"


class Supervisor(Protocol):
    """A per-host process supervisor controlled through a local socket."""

    kind: str

    def ensure_running(self) -> None:
        """Start the daemon unless it answers already; it outlives the caller."""
        ...

    def daemon_pid(self) -> int | None:
        """Pid of the running daemon, or None."""
        ...

    def watchers(self) -> dict[str, WatcherState]:
        """Every watcher the daemon runs, by name."""
        ...

    def add(self, spec: WatcherSpec) -> None:
        """Persist the watcher's config, then add and start it without touching others."""
        ...

    def remove(self, name: str) -> None:
        """Stop the watcher gracefully, wait until it stopped, forget it and its config."""
        ...

    def main_pid(self, name: str) -> int | None:
        """Pid of the watcher's process (the gunicorn master), or None if not running."""
        ...

    def exit_status(self, name: str) -> ProcessExit | None:
        """How the watcher's process ended, while the daemon has it exited (before or instead
        of a restart); None while it runs. The health gate stops waiting on it."""
        ...

    def signal(self, name: str, signum: int) -> None:
        """Send `signum` to the watcher's process (the gunicorn master) only."""
        ...

    def stop_daemon(self) -> None:
        """Stop every watcher and the daemon, and wait until they are gone."""
        ...


def encode_env(env: Mapping[str, str]) -> dict[str, str]:
    """The environment as configured in the daemon: `APPRELEASE_ENV_<i>` = hex("NAME=value").

    Numbered keys, not the names themselves: ini parsers fold option names to lower case,
    so `F` and `f` would collide (found by hypothesis); the name travels inside the value.
    """
    encoded = {}
    for i, (name, value) in enumerate(sorted(env.items())):
        rules.ENV_NAME.check(name)
        rules.ENV_VALUE.check(value)
        encoded[f"{ENV_PREFIX}{i}"] = f"{name}={value}".encode("utf-8", "surrogateescape").hex()
    return encoded


def decode_env(encoded: Mapping[str, str]) -> dict[str, str]:
    """What LAUNCHER makes of a configured environment (tests compare it with the spec)."""
    pairs = (
        bytes.fromhex(value).decode("utf-8", "surrogateescape").split("=", 1)
        for key, value in encoded.items()
        if key.upper().startswith(ENV_PREFIX)
    )
    return dict(pairs)


def launch_argv(spec: WatcherSpec) -> list[str]:
    """The command the daemon runs: the release's interpreter as launcher, then spec.argv;
    behind the revision's systemd scope when it has one."""
    return [*spec.scope, *launcher_argv(spec.argv, spec.name)]


def launcher_argv(argv: Sequence[str], what: str) -> list[str]:
    """`argv` (whose first element is the release's interpreter) behind the env-decoding launcher."""
    interpreter = argv[0]
    if not Path(interpreter).name.startswith("python"):
        raise ValueError(f"{what}: argv[0] must be the release's Python interpreter, got {interpreter!r}")
    return [interpreter, "-I", "-S", "-c", LAUNCHER, *argv]


def quote_arg(arg: str) -> str:
    """One argv element in single-quote shell syntax (as `shlex.split` reads it).

    A new quoted chunk starts before every '(', ';' and '#', so the raw text never holds
    circus's '$(circus.x)' / '((circus.x))' expansions, nor a ';' or '#' after whitespace,
    which both ini parsers take for an inline comment. No whitespace at either end either.
    """
    if any(c in arg for c in "\0\r\n"):
        raise ValueError(f"argument {arg!r} holds a NUL or line break")
    chunks = re.split(r"(?=[(;#])", arg)
    return "".join("'" + chunk.replace("'", "'\"'\"'") + "'" for chunk in chunks)


def command_line(argv: Sequence[str]) -> str:
    return " ".join(quote_arg(arg) for arg in argv)


def plain(value: str | Path, what: str) -> str:
    """A value written verbatim into a daemon config; anything the formats alter is refused."""
    text = str(value)
    if not PLAIN_VALUE.fullmatch(text):
        raise ValueError(
            f"{what} {text!r} cannot be written into a supervisor config: "
            f"use only letters, digits and . _ / @ + : , = -"
        )
    return text


def check_socket_path(path: Path) -> Path:
    if len(os.fsencode(str(path))) > MAX_SOCKET_PATH:
        raise SupervisorError(
            f"unix socket path {path} is {len(os.fsencode(str(path)))} bytes, longer than the "
            f"{MAX_SOCKET_PATH} the kernel accepts: use a shorter agent root"
        )
    return path


def write_atomically(path: Path, text: str, mode: int = 0o600) -> None:
    """Write a file so readers see either the old or the new content, never a partial one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def private_dir(path: Path) -> Path:
    """A root-only directory (0700): its sockets accept commands that run as any user."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask; be explicit
    return path


def process_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (a zombie has finished)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    # The state letter follows the command name, which is in parentheses and may hold spaces.
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SupervisorError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def log_tail(path: Path, lines: int = 20) -> str:
    if not path.exists():
        return f"(no {path.name})"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


class SupervisorBackend(ABC):
    """Daemon life cycle shared by the backends; subclasses speak their control protocol."""

    kind = ""
    start_timeout = 20.0
    daemonizes = False  # the daemon forks into the background itself (unit Type=forking)

    def __init__(self, root: Path, executor: LocalExecutor | None = None, python: str = sys.executable,
                 services: Systemd | None = None):
        self.root = root  # layout.supervisor
        self.executor = executor or LocalExecutor()
        self.python = python  # the interpreter that has circus / supervisor installed
        # The host's systemd, if it has one: the daemon then runs in its unit, never as the
        # agent's child (units.py says why). None: spawned detached (--root, plain hosts).
        self.services = services
        self._spawned: subprocess.Popen[bytes] | None = None

    # -- backend hooks -------------------------------------------------------------
    @property
    @abstractmethod
    def pidfile(self) -> Path: ...

    @property
    @abstractmethod
    def daemon_log(self) -> Path: ...

    @abstractmethod
    def _write_main_config(self) -> list[str]:
        """Write the daemon's main config; return the argv that starts the daemon."""

    @abstractmethod
    def _answers(self) -> bool:
        """True if the daemon answers on its control socket."""

    @abstractmethod
    def _request_shutdown(self) -> None:
        """Ask the daemon to stop its watchers (gracefully) and exit."""

    # -- shared ----------------------------------------------------------------------
    @contextmanager
    def _lock(self) -> Iterator[None]:
        """One agent (or test) at a time starts or stops the daemon: never two daemons."""
        private_dir(self.root)
        with open(self.root / "daemon.lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def daemon_pid(self) -> int | None:
        try:
            pid = self.executor.visible_pid(int(self.pidfile.read_text().strip()))
        except (FileNotFoundError, ValueError):
            return None
        return pid if pid is not None and process_alive(pid) else None

    def unit_text(self, argv: Sequence[str]) -> str:
        return units.render_supervisor_unit(
            root=str(self.root.parent), kind=self.kind, argv=argv, pidfile=str(self.pidfile),
            forking=self.daemonizes, environment=DAEMON_ENV,
        )

    def ensure_running(self) -> None:
        if self.services is not None:
            self._ensure_unit()
            return
        with self._lock():
            if self.daemon_pid() is not None and self._answers():
                return
            argv = self._write_main_config()
            # The executor starts it in its own session: it outlives the agent and the
            # agent's signals; it is reparented to init when the agent exits.
            self._spawned = self.executor.spawn(argv, env=DAEMON_ENV)
            spawned = self._spawned

            def up() -> bool:
                if spawned.poll() is not None:
                    raise SupervisorError(
                        f"{self.kind} exited with {spawned.returncode} while starting:\n{log_tail(self.daemon_log)}"
                    )
                return self.daemon_pid() is not None and self._answers()

            wait_for(up, self.start_timeout, f"{self.kind} to answer on its control socket")

    def _ensure_unit(self) -> None:
        """Unit written, enabled, started (units.plan_units); then wait for the control socket.

        Also the drift repair the agent runs at each resync: a converged host costs one
        `systemctl is-active`.
        """
        assert self.services is not None
        with self._lock():
            argv = self._write_main_config()
            self.services.ensure(units.SUPERVISOR_UNIT, self.unit_text(argv))
            wait_for(self._answers, self.start_timeout, f"{self.kind} ({units.SUPERVISOR_UNIT}) to answer "
                     "on its control socket")

    def stop_daemon(self, timeout: float = 60.0) -> None:
        if self.services is not None:
            # systemd stops it as the unit says (graceful, then SIGKILL) and keeps it stopped.
            self.services.stop(units.SUPERVISOR_UNIT)
            return
        with self._lock():
            pid = self.daemon_pid()
            if pid is None:
                return
            self._request_shutdown()
            if self._spawned is not None and self._spawned.pid == pid:
                # Our own child: reap it, or it would linger as a zombie.
                self._spawned.wait(timeout)
                self._spawned = None
            else:
                wait_for(lambda: not process_alive(pid), timeout, f"{self.kind} (pid {pid}) to exit")
