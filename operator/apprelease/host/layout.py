"""Where things live under an agent root (default /var/lib/apprelease, `--root` in tests).

    apps/<ns>_<app>/releases/<buildId>/venv            immutable once complete
    apps/<ns>_<app>/releases/<buildId>/release.json    build inputs, timestamps, build log tail
    apps/<ns>_<app>/releases/.tmp-<buildId>-<random>   a build in progress (never looks complete)
    apps/<ns>_<app>/current -> releases/<buildId>      swapped atomically, once the old workers drained
    apps/<ns>_<app>/static-live -> releases/<buildId>  nginx's first place for static files: the
                                                       build about to serve, pointed before the switch
    apps/<ns>_<app>/static-previous -> releases/<id>   nginx's second place: the build static-live
                                                       named before, so pages of either revision find
                                                       their assets during and after a rotation
    apps/<ns>_<app>/run/<revision>.sock                gunicorn's socket, one per running revision
    apps/<ns>_<app>/run/live.sock -> <revision>.sock   what nginx connects to
    apps/<ns>_<app>/logs/                              stdout/stderr of the app's processes, release command output
    apps/<ns>_<app>/cache/{uv,pip}                     the app's build cache, owned by its build user (0700)
    apps/<ns>_<app>/locks/<buildId>.txt                the exact set a buildId installs (root's; kept after GC)
    apps/<ns>_<app>/releases/<buildId>/bytecode.json   bytecode compiled into the venv after the switch
    apps/<ns>_<app>/spec.json                          the last spec applied (for status and resync)
    apps/<ns>_<app>/state.json                         failed revision, served order, history (host/state.py)
    supervisor/                                        circusd or supervisord config, state and socket
    nginx/                                             the host's nginx prefix: nginx.conf, conf.d/, logs
    tools/uv                                           uv for build users, if the agent's is out of their reach
    cache/venv                                         root's uv cache for making venvs (interpreter facts), 0700

Pure path arithmetic: nothing here touches the filesystem.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

TMP_PREFIX = ".tmp-"
BYTECODE_RECORD = "bytecode.json"  # in a release: its bytecode is compiled (host/bytecode.py)
LIVE_SOCKET = "live.sock"
STATIC_LIVE = "static-live"
STATIC_PREVIOUS = "static-previous"


def app_key(namespace: str, app: str) -> str:
    """Directory and config name of an app on a host; '_' never occurs in DNS labels."""
    return f"{namespace}_{app}"


def watcher_name(key: str, revision: str) -> str:
    """Supervisor watcher/program name of one revision of an app."""
    return f"ar_{key}_{revision}"


def parse_watcher_name(name: str) -> tuple[str, str] | None:
    """(app key, revision) of a web watcher this agent manages, or None for anything else."""
    parts = name.split("_")
    if len(parts) != 4 or parts[0] != "ar":
        return None
    return f"{parts[1]}_{parts[2]}", parts[3]


def app_of_watcher(name: str) -> str | None:
    """The app key of any watcher this agent manages (web or process type), else None."""
    parsed = parse_watcher_name(name) or parse_process_watcher_name(name)
    return parsed[0] if parsed else None


def process_instance(process: str, index: int) -> str:
    """One replica of a process type: `worker-0`; process type names hold no '-' or '_'."""
    return f"{process}-{index}"


def process_instances(replicas: Mapping[str, int]) -> frozenset[str]:
    """Every replica of every process type: {"worker": 2} -> {"worker-0", "worker-1"}."""
    return frozenset(process_instance(name, i) for name, count in replicas.items() for i in range(count))


def process_watcher_name(key: str, revision: str, instance: str) -> str:
    """Supervisor watcher/program name of one replica of a process type of one revision."""
    return f"ar_{key}_{revision}_{instance}"


def parse_process_watcher_name(name: str) -> tuple[str, str, str] | None:
    """(app key, revision, instance) of a process-type watcher, or None for anything else."""
    parts = name.split("_")
    if len(parts) != 5 or parts[0] != "ar" or "-" not in parts[4]:
        return None
    return f"{parts[1]}_{parts[2]}", parts[3], parts[4]


@dataclass(frozen=True)
class AppPaths:
    base: Path

    @property
    def releases(self) -> Path:
        return self.base / "releases"

    def release(self, build_id: str) -> Path:
        return self.releases / build_id

    def venv(self, build_id: str) -> Path:
        return self.release(build_id) / "venv"

    def release_record(self, build_id: str) -> Path:
        return self.release(build_id) / "release.json"

    def site_packages_link(self, build_id: str) -> Path:
        """releases/<id>/site-packages -> venv/lib/pythonX.Y/site-packages (stable for nginx)."""
        return self.release(build_id) / "site-packages"

    @property
    def current(self) -> Path:
        return self.base / "current"

    @property
    def static_live(self) -> Path:
        """The build nginx looks in first for static files (host/proxy/render.py `site_inputs`)."""
        return self.base / STATIC_LIVE

    @property
    def static_previous(self) -> Path:
        """The build nginx looks in when static-live has no such file: the one served before."""
        return self.base / STATIC_PREVIOUS

    @property
    def run(self) -> Path:
        return self.base / "run"

    def socket(self, revision: str) -> Path:
        return self.run / f"{revision}.sock"

    @property
    def live_socket(self) -> Path:
        return self.run / LIVE_SOCKET

    @property
    def logs(self) -> Path:
        return self.base / "logs"

    def log_file(self, revision: str, stream: str) -> Path:
        return self.logs / f"{revision}.{stream}.log"

    def release_command_log(self, revision: str) -> Path:
        """Output (stdout and stderr) of the revision's release command on this host."""
        return self.logs / f"{revision}.release.log"

    @property
    def build_cache(self) -> Path:
        """This app's own uv/pip cache, owned by its build user: never shared with another app."""
        return self.base / "cache"

    @property
    def locks(self) -> Path:
        """Root-owned locks of the app's buildIds (host/locks.py); they outlive the releases."""
        return self.base / "locks"

    def lock(self, build_id: str) -> Path:
        return self.locks / f"{build_id}.txt"

    @property
    def spec_file(self) -> Path:
        return self.base / "spec.json"

    @property
    def state_file(self) -> Path:
        return self.base / "state.json"


@dataclass(frozen=True)
class HostLayout:
    root: Path

    @property
    def apps(self) -> Path:
        return self.root / "apps"

    def app(self, key: str) -> AppPaths:
        return AppPaths(self.apps / key)

    @property
    def supervisor(self) -> Path:
        return self.root / "supervisor"

    @property
    def nginx(self) -> Path:
        return self.root / "nginx"

    @property
    def nginx_sites(self) -> Path:
        return self.nginx / "conf.d"

    def nginx_site(self, key: str) -> Path:
        return self.nginx_sites / f"{key}.conf"

    @property
    def venv_cache(self) -> Path:
        """uv's cache for making venvs, which root does (only interpreter facts): never a build user's."""
        return self.root / "cache" / "venv"

    @property
    def tools(self) -> Path:
        """Root-owned copies of tools build users run (uv), when the agent's own copy is out of their reach."""
        return self.root / "tools"

    @property
    def secrets(self) -> Path:
        """Root-owned 0700 directory for TLS keys and secret env files."""
        return self.root / "secrets"
