"""What one running revision of an app is, as a supervisor sees it: a `WatcherSpec`.

Pure: `watcher_for` turns a HostReleaseSpec, and the server software its venv holds, into
the command, user, environment and logs of the gunicorn master serving that revision on its
own unix socket. The rotation code calls
it and hands the result to a supervisor backend (`host.supervisors`), which only knows how
to run a WatcherSpec, never how an app release is put together.
"""

from __future__ import annotations

import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..api.models import HostReleaseSpec
from . import servers
from .layout import HostLayout, watcher_name
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


def watcher_for(layout: HostLayout, key: str, spec: HostReleaseSpec, software: ServerSoftware) -> WatcherSpec:
    """The watcher serving `spec.revision` of app `key` on `run/<revision>.sock`.

    `software` is what the release's venv holds (release.json): the options depend on it.
    """
    app = layout.app(key)
    venv = app.venv(spec.build_id)
    env = {e.name: e.value for e in spec.env}
    # The venv's bin first so subprocesses the app starts find the venv's tools; a PATH
    # given in the spec is kept behind it.
    env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', DEFAULT_PATH)}"
    return WatcherSpec(
        name=watcher_name(key, spec.revision),
        argv=gunicorn_argv(venv / "bin" / "python", app.socket(spec.revision), spec, software),
        cwd=app.release(spec.build_id),
        user=spec.user,
        group=spec.user,  # useradd --user-group: the user's own group
        env=env,
        stdout_log=app.log_file(spec.revision, "stdout"),
        stderr_log=app.log_file(spec.revision, "stderr"),
        graceful_timeout=spec.server.graceful_timeout_seconds + STOP_MARGIN_SECONDS,
    )
