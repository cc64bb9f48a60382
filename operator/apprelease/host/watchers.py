"""What one running revision of an app is, as a supervisor sees it: `WatcherSpec`s.

`watcher_for` turns a HostReleaseSpec, and the server software its venv holds, into the
command, user, environment and logs of the gunicorn master serving that revision on its own
unix socket; `process_watchers` does the same for each replica of its process types (queue
workers, schedulers). The rotation code hands them to a supervisor backend
(`host.supervisors`), which only knows how to run a WatcherSpec, never how an app release
is put together. Only `program_argv` looks at the disk (is the program in the venv?).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..api.models import HostReleaseSpec
from . import servers, units
from .layout import HostLayout, process_instance, process_watcher_name, watcher_name
from .servers import ServerSoftware

# Log files rotate at this size, keeping this many old files (per stream, per revision).
LOG_MAX_BYTES = 10 * 1024 * 1024
LOG_BACKUP_COUNT = 5
# gunicorn's own --graceful-timeout runs first (it drains, then kills its workers); the
# supervisor's SIGKILL is only the backstop, so it waits a little longer than gunicorn does.
STOP_MARGIN_SECONDS = 5
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass(frozen=True)
class WatcherSpec:
    """One supervised process: the gunicorn master of one revision."""

    name: str
    argv: tuple[str, ...]
    cwd: Path
    user: str
    group: str
    env: Mapping[str, str] = field(default_factory=dict)  # the complete environment, nothing inherited
    stdout_log: Path = Path("/dev/null")
    stderr_log: Path = Path("/dev/null")
    max_bytes: int = LOG_MAX_BYTES
    backup_count: int = LOG_BACKUP_COUNT
    graceful_timeout: int = 30 + STOP_MARGIN_SECONDS  # seconds from SIGTERM to SIGKILL
    stop_signal: int = int(signal.SIGTERM)
    # Runs before the launcher, as root: `systemd-run --scope … --uid --gid --` (units.scope_argv),
    # which drops to `user` itself; the supervisor then must not (resources on systemd hosts).
    scope: tuple[str, ...] = ()


def gunicorn_argv(python: Path, socket: Path, spec: HostReleaseSpec, software: ServerSoftware) -> tuple[str, ...]:
    """The gunicorn command line of a revision, for the gunicorn the venv holds.

    `python -m gunicorn`, not `bin/gunicorn`: the venv is built in a temp dir and renamed,
    so script shebangs name a path that no longer exists; the interpreter finds its venv
    from its own path instead. Raises `servers.UnsupportedServer` when the venv cannot run it.
    """
    server = spec.server
    version = servers.check_gunicorn(software)
    return (
        str(python),
        "-m",
        "gunicorn",
        "--bind",
        f"unix:{socket}",
        "--workers",
        str(server.workers),
        *servers.worker_options(server, software),
        "--timeout",
        str(server.timeout_seconds),
        "--graceful-timeout",
        str(server.graceful_timeout_seconds),
        *servers.version_options(version),
        *server.extra_args,
        spec.entrypoint,
    )


def app_environment(venv: Path, spec: HostReleaseSpec, resolved: Mapping[str, str] | None = None) -> dict[str, str]:
    """The complete environment of every process of a revision (web, release command, process types).

    `resolved` is the spec's environment with values read from Secrets and ConfigMaps
    (api/envrefs.resolve_env); without it only literal values exist."""
    env = dict(resolved) if resolved is not None else {e.name: e.value for e in spec.env if e.value_from is None}
    # The venv's bin first so subprocesses the app starts find the venv's tools; a PATH
    # given in the spec is kept behind it.
    env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', DEFAULT_PATH)}"
    return env


class ProgramNotFound(ValueError):
    """A command's program is not in the release's venv."""


def program_argv(venv: Path, command: Sequence[str], field: str) -> tuple[str, ...]:
    """`command` as the venv's interpreter runs it: the program may only come from the venv.

    The validated spec holds a bare name (no '/'): `python` is the venv's interpreter; any
    other name must be a script the release installed in bin/ (a console script such as
    celery), which the interpreter runs as its file, so no shebang and no PATH is ever
    consulted. Raises `ProgramNotFound` naming the field and what the venv does have.
    """
    python = venv / "bin" / "python"
    if command[0] == "python":
        return (str(python), *command[1:])
    program = venv / "bin" / command[0]
    if "/" in command[0] or not program.is_file():
        found = sorted(p.name for p in (venv / "bin").iterdir() if p.is_file() and os.access(p, os.X_OK))
        raise ProgramNotFound(
            f"{field}[0]: {command[0]!r} is not a program in the release's venv bin/ "
            f"(it has: {', '.join(found[:30]) or 'nothing'}); add the package that provides it to source.requirements"
        )
    return (str(python), str(program), *command[1:])


def process_watchers(layout: HostLayout, key: str, spec: HostReleaseSpec,
                     resolved: Mapping[str, str] | None = None) -> list[WatcherSpec]:
    """One watcher per replica of each process type of `spec.revision` (name: see layout)."""
    app = layout.app(key)
    venv = app.venv(spec.build_id)
    env = app_environment(venv, spec, resolved)
    out = []
    for name, process in sorted(spec.processes.items()):
        argv = program_argv(venv, process.command, f"processes.{name}.command")
        for index in range(process.replicas):
            instance = process_instance(name, index)
            out.append(WatcherSpec(
                name=process_watcher_name(key, spec.revision, instance),
                argv=argv,
                cwd=app.release(spec.build_id),
                user=spec.user,
                group=spec.user,
                env={**env, "APPRELEASE_PROCESS": name, "APPRELEASE_REPLICA": str(index)},
                stdout_log=app.log_file(f"{spec.revision}.{instance}", "stdout"),
                stderr_log=app.log_file(f"{spec.revision}.{instance}", "stderr"),
                # No gunicorn in between: the supervisor's SIGKILL is the deadline itself.
                graceful_timeout=process.graceful_timeout_seconds,
                stop_signal=int(getattr(signal, f"SIG{process.stop_signal}")),
            ))
    return out


def watcher_for(layout: HostLayout, key: str, spec: HostReleaseSpec, software: ServerSoftware,
                resolved: Mapping[str, str] | None = None, *, scoped: bool = False) -> WatcherSpec:
    """The watcher serving `spec.revision` of app `key` on `run/<revision>.sock`.

    `software` is what the release's venv holds (release.json): the options depend on it.
    `scoped`: the host has systemd, so spec.resources are enforced by a scope per revision.
    """
    app = layout.app(key)
    venv = app.venv(spec.build_id)
    env = app_environment(venv, spec, resolved)
    name = watcher_name(key, spec.revision)
    scope = units.scope_argv(watcher=name, key=key, user=spec.user, group=spec.user,
                             memory_max=spec.resources.memory_max, cpu_weight=spec.resources.cpu_weight,
                             ) if scoped and spec.resources is not None else ()
    return WatcherSpec(
        scope=scope,
        name=name,
        argv=gunicorn_argv(venv / "bin" / "python", app.socket(spec.revision), spec, software),
        cwd=app.release(spec.build_id),
        user=spec.user,
        group=spec.user,  # useradd --user-group: the user's own group
        env=env,
        stdout_log=app.log_file(spec.revision, "stdout"),
        stderr_log=app.log_file(spec.revision, "stderr"),
        graceful_timeout=spec.server.graceful_timeout_seconds + STOP_MARGIN_SECONDS,
    )
