"""What server software a release's venv holds, and which gunicorn options that allows.

Pure. Apps bring their own gunicorn (often pinned to 20.1–23 by the app's requirements), so
the command line depends on what was installed, not on what apprelease was tested with:
the builder reads the versions from the venv's package metadata (`builder.detect_server_software`)
and records them in release.json; `watchers.gunicorn_argv` asks this module for the options of
that version and of the spec's worker class.

Facts from gunicorn's source (config.py at each tag), not guessed from the newest release:
- `--bind --workers --threads --worker-class --timeout --graceful-timeout` exist in every
  version from 20.1 on, with the same meaning;
- gunicorn 25.1.0 added a control socket, on by default (created in the working directory or
  the user's home: a system user has no writable one), and `--no-control-socket` to disable
  it; older versions exit with `unrecognized arguments` when given that flag;
- the sync worker turns into gthread when `--threads` is above 1, so `--threads` is passed to
  gthread only;
- gunicorn 20.x imports `pkg_resources` when it starts (21.0 moved to importlib), and
  setuptools 82.0.0 removed `pkg_resources` (checked in both wheels): gunicorn 20.1 with
  today's setuptools cannot start, so such a venv is refused at build with the pin that fixes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from packaging.version import InvalidVersion, Version

from ..api.models import Server

MIN_GUNICORN = (20, 1)
NO_CONTROL_SOCKET_SINCE = (25, 1)
PKG_RESOURCES_UNTIL = (21,)  # gunicorn versions before this import pkg_resources
SETUPTOOLS_WITHOUT_PKG_RESOURCES = (82,)
# Worker classes as gunicorn names them; uvicorn's depends on what the venv holds.
BUILTIN_WORKERS = {"gthread": "gthread", "sync": "sync"}
UVICORN_WORKER = "uvicorn_worker.UvicornWorker"  # the uvicorn-worker package (uvicorn's own moved there)
UVICORN_LEGACY_WORKER = "uvicorn.workers.UvicornWorker"


class UnsupportedServer(ValueError):
    """The venv cannot serve the spec: no gunicorn, a too old one, or a worker class it lacks."""


@dataclass(frozen=True)
class ServerSoftware:
    """Versions of the server packages installed in a venv (None: not installed)."""

    gunicorn: str | None
    uvicorn: str | None = None
    uvicorn_worker: str | None = None
    setuptools: str | None = None

    def record(self) -> dict[str, Any]:
        """The release.json fields."""
        return {
            "gunicorn": self.gunicorn,
            "uvicorn": self.uvicorn,
            "uvicornWorker": self.uvicorn_worker,
            "setuptools": self.setuptools,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> ServerSoftware | None:
        """From release.json; None for releases built before the versions were recorded."""
        if "gunicorn" not in record:
            return None
        return cls(record.get("gunicorn"), record.get("uvicorn"), record.get("uvicornWorker"), record.get("setuptools"))


def release_tuple(version: str) -> tuple[int, ...]:
    """(23, 0, 0) for "23.0.0"; pre- and post-release parts do not matter to option support."""
    try:
        return Version(version).release
    except InvalidVersion as exc:
        raise UnsupportedServer(f"gunicorn version {version!r} is not a version apprelease can read") from exc


def check_gunicorn(software: ServerSoftware) -> tuple[int, ...]:
    """The gunicorn version as a tuple; raises UnsupportedServer when missing or too old."""
    minimum = ".".join(map(str, MIN_GUNICORN))
    if software.gunicorn is None:
        raise UnsupportedServer(
            f"gunicorn is not installed in the venv: the requirements must bring gunicorn>={minimum} "
            "(apps run as <venv>/bin/python -m gunicorn)"
        )
    version = release_tuple(software.gunicorn)
    if version < MIN_GUNICORN:
        raise UnsupportedServer(
            f"gunicorn {software.gunicorn} found in the venv; apprelease needs gunicorn {minimum} or newer "
            f"(pin gunicorn>={minimum} in the requirements)"
        )
    if version < PKG_RESOURCES_UNTIL and (
        software.setuptools is None or release_tuple(software.setuptools) >= SETUPTOOLS_WITHOUT_PKG_RESOURCES
    ):
        found = f"setuptools {software.setuptools}" if software.setuptools else "no setuptools"
        raise UnsupportedServer(
            f"gunicorn {software.gunicorn} imports pkg_resources, which setuptools 82 removed, and the venv has "
            f"{found}: add setuptools<82 to the requirements (or use gunicorn>=21)"
        )
    return version


def version_options(gunicorn: tuple[int, ...]) -> tuple[str, ...]:
    """Options apprelease always wants, passed only to the gunicorn versions that know them."""
    return ("--no-control-socket",) if gunicorn >= NO_CONTROL_SOCKET_SINCE else ()


def worker_class_path(worker_class: str, software: ServerSoftware) -> str:
    if worker_class in BUILTIN_WORKERS:
        return BUILTIN_WORKERS[worker_class]
    if worker_class == "uvicorn":
        if software.uvicorn_worker is not None:
            return UVICORN_WORKER
        if software.uvicorn is not None:
            return UVICORN_LEGACY_WORKER
        raise UnsupportedServer(
            "server.workerClass is uvicorn but the venv has neither uvicorn-worker nor uvicorn: "
            "add uvicorn-worker to the requirements"
        )
    raise UnsupportedServer(f"unknown server.workerClass {worker_class!r}")


def worker_options(server: Server, software: ServerSoftware) -> tuple[str, ...]:
    threads = ("--threads", str(server.threads)) if server.worker_class == "gthread" else ()
    return (*threads, "--worker-class", worker_class_path(server.worker_class, software))
