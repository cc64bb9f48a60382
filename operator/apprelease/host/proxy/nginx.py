"""The host's nginx: one instance per agent root, run as `nginx -p <root>/nginx -c nginx.conf`.

The agent's core calls `Nginx` when an app's proxy spec changes (never for a rotation: that
only renames `run/live.sock`). Every change follows the same path: render, stage, check with
`nginx -t` against a candidate main config that includes the staged file instead of the live
one, rename into place, reload gracefully and wait until the new workers run; if the reload
fails, put the previous file back and reload again. Nothing here decides *what* to serve.

Files under the prefix:
    nginx.conf            rendered by `render_main`, includes conf.d/*.conf
    conf.d/<key>.conf     one app's server block (the live files)
    staging/              candidates being checked; never included by the live config
    run/nginx.pid, logs/error.log, logs/access.log, temp/
TLS keys live under the agent root's `secrets/tls/` (0700 directories, 0600 files).
"""

from __future__ import annotations

import hashlib
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ..executor import LocalExecutor
from ..systemd import Systemd, SystemdError
from ..units import NGINX_UNIT, render_nginx_unit
from ..files import fsync_dir
from ..layout import HostLayout
from . import procfs
from ...api import models
from .render import APP_KEY, MainInputs, SiteInputs, render_main, render_site, site_inputs

MASTER_TITLE = "nginx: master process"
WORKER_TITLE = "nginx: worker process"  # "... is shutting down" once told to quit


class ProxyError(RuntimeError):
    """nginx could not be brought to the desired state."""


class ProxyConfigRejected(ProxyError):
    """nginx refused a config; nothing live changed (or it was restored). `output` is nginx's."""

    def __init__(self, message: str, output: str = ""):
        self.output = output
        super().__init__(f"{message}: {output.strip()}" if output.strip() else message)


class ProxyReloadFailed(ProxyConfigRejected):
    """A config passed `nginx -t` but the reload failed (e.g. a port already in use)."""


class Nginx:
    """Applier for the host's nginx. Thread-safe: one lock serialises every change."""

    def __init__(
        self,
        layout: HostLayout,
        executor: LocalExecutor,
        listen_address: str = "0.0.0.0",
        worker_user: str = "www-data",
        *,
        worker_group: str | None = None,
        worker_processes: int | None = None,
        default_http_ports: Sequence[int] = (),
        default_https_ports: Sequence[int] = (),
        binary: str = "nginx",
        reload_timeout: float = 15.0,
        stop_timeout: float = 30.0,
        worker_shutdown_timeout: int = 30,
        services: Systemd | None = None,
    ):
        self.layout = layout
        self.executor = executor
        self.listen_address = listen_address
        self.worker_user = worker_user
        self.worker_group = worker_group
        self.worker_processes = worker_processes
        self.default_http_ports = tuple(default_http_ports)
        self.default_https_ports = tuple(default_https_ports)
        self.binary = binary
        self.reload_timeout = reload_timeout
        self.stop_timeout = stop_timeout
        self.worker_shutdown_timeout = worker_shutdown_timeout
        # The host's systemd, if it has one: nginx then runs in its unit (units.py says why),
        # started, reloaded and stopped with systemctl. None: started detached.
        self.services = services
        self._lock = threading.RLock()

    # -- paths -------------------------------------------------------------------------

    @property
    def prefix(self) -> Path:
        return self.layout.nginx

    @property
    def main_conf(self) -> Path:
        return self.prefix / "nginx.conf"

    @property
    def staging(self) -> Path:
        return self.prefix / "staging"

    @property
    def tls_dir(self) -> Path:
        return self.layout.secrets / "tls"

    def main_inputs(self, site_includes: Sequence[str] | None = None) -> MainInputs:
        """The main config's inputs; the live one includes every file in conf.d."""
        if site_includes is None:
            site_includes = (f"{self.layout.nginx_sites}/*.conf",)
        return MainInputs(
            prefix=str(self.prefix),
            worker_user=self.worker_user,
            worker_group=self.worker_group,
            worker_processes=self.worker_processes,
            worker_shutdown_timeout_seconds=self.worker_shutdown_timeout,
            site_includes=tuple(site_includes),
            listen_address=self.listen_address,
            default_http_ports=self.default_http_ports,
            default_https_ports=self.default_https_ports,
        )

    def render_site(self, key: str, proxy: models.Proxy, tls_files: tuple[Path, Path] | None = None) -> str:
        """Convenience for callers: `render_site(site_inputs(...))` with this host's settings."""
        return render_site(self.site_inputs(key, proxy, tls_files))

    def site_inputs(
        self, key: str, proxy: models.Proxy, tls_files: tuple[Path, Path] | None = None
    ) -> SiteInputs:
        return site_inputs(self.layout, key, proxy, tls_files, listen_address=self.listen_address)

    # -- lifecycle ---------------------------------------------------------------------

    def ensure_running(self) -> bool:
        """Write the main config if it changed, start nginx or reload it. True if anything changed.

        Idempotent: with the config unchanged and the master alive, it does nothing.
        """
        with self._lock:
            self._make_dirs()
            # Candidates left by a crash between staging and rename; never included anywhere.
            for leftover in self.staging.glob("*.staged"):
                leftover.unlink()
            text = render_main(self.main_inputs())
            previous = _read(self.main_conf)
            changed = previous != text
            if changed:
                staged = self._stage(self.main_conf.name, text)
                try:
                    self._test(staged)
                except BaseException:
                    staged.unlink(missing_ok=True)
                    raise
                os.replace(staged, self.main_conf)
            master = self.master_pid()
            if self.services is not None:
                # Also the resync's drift repair of the unit: never a restart of a running nginx.
                offset = _size(self._error_log)
                try:
                    self.services.ensure(NGINX_UNIT, self.unit_text())
                except SystemdError as exc:
                    raise ProxyConfigRejected(f"nginx failed to start: {exc}", self._errors_since(offset)) from exc
                if master is None:
                    self._wait_started(offset)
                    return True
            if master is None:
                self._start()
                return True
            if changed:
                self._reload_or_restore(master, self.main_conf, previous)
            return changed

    def stop(self) -> bool:
        """Quit gracefully (in-flight requests finish) and wait until no nginx of ours is left.

        Escalates to SIGTERM, then SIGKILL, if the drain outlives `stop_timeout`.
        False if nginx was not running.
        """
        with self._lock:
            if self.services is not None:
                return self.services.stop(NGINX_UNIT)
            master = self.master_pid()
            if master is None:
                return False
            pids = {master, *procfs.children(master)}
            for sig, wait in (
                (signal.SIGQUIT, self.stop_timeout),
                (signal.SIGTERM, 5.0),
                (signal.SIGKILL, 5.0),
            ):
                for pid in (master,) if sig != signal.SIGKILL else sorted(pids):
                    _signal(pid, sig)
                if _wait_until(lambda: not any(procfs.alive(p) for p in pids), wait):
                    return True
            raise ProxyError(f"nginx processes {sorted(p for p in pids if procfs.alive(p))} survived SIGKILL")

    def master_pid(self) -> int | None:
        """Pid of our running master: from the pid file, alive, and started with our config."""
        try:
            pid = self.executor.visible_pid(int(self._pid_file.read_text().strip()))
        except (FileNotFoundError, ValueError):
            return None
        if pid is None:
            return None
        title = procfs.cmdline(pid)
        # The pid file may be stale after a crash or reboot and its pid reused by another
        # process, or by another host root's nginx: check the title names our config.
        if not procfs.alive(pid) or not title.startswith(MASTER_TITLE) or str(self.main_conf) not in title:
            return None
        return pid

    def worker_pids(self) -> set[int]:
        """Pids of the master's current (not shutting down) workers."""
        master = self.master_pid()
        if master is None:
            return set()
        return {pid for pid, title in procfs.children(master).items() if title == WORKER_TITLE}

    # -- sites -------------------------------------------------------------------------

    def current_site(self, key: str) -> str | None:
        """The live config text of app `key`, or None if it has none."""
        return _read(self._site_path(key))

    def live_sites(self) -> dict[str, str]:
        """Every live site file's text, by file stem (`<namespace>_<app>` for the apps' own)."""
        if not self.layout.nginx_sites.is_dir():
            return {}
        sites = {}
        for path in sorted(self.layout.nginx_sites.glob("*.conf")):
            text = _read(path)
            if text is not None and path.is_file():
                sites[path.stem] = text
        return sites

    def apply_site(self, key: str, text: str) -> bool:
        """Make `text` app `key`'s live server block. False if it already was.

        Raises `ProxyConfigRejected` (nothing live changed) when `nginx -t` refuses the
        candidate, `ProxyReloadFailed` when the reload failed and the previous file was put
        back. If nginx is not running, the checked file is put in place for its next start.
        """
        with self._lock:
            live = self._site_path(key)
            previous = _read(live)
            if previous == text:
                return False
            self._make_dirs()
            staged = self._stage(live.name, text)
            try:
                self._test_candidate(key, staged)
            except BaseException:
                staged.unlink(missing_ok=True)
                raise
            os.replace(staged, live)
            fsync_dir(live.parent)
            master = self.master_pid()
            if master is not None:
                self._reload_or_restore(master, live, previous)
            self._prune_tls(key, keep_referenced_by=text)
            return True

    def remove_site(self, key: str) -> bool:
        """Remove app `key`'s server block and its TLS files. False if it had none."""
        with self._lock:
            live = self._site_path(key)
            previous = _read(live)
            if previous is not None:
                live.unlink()
                fsync_dir(live.parent)
                master = self.master_pid()
                if master is not None:
                    self._reload_or_restore(master, live, previous)
            self._prune_tls(key, keep_referenced_by="")
            return previous is not None

    def write_tls(self, key: str, cert_pem: str | bytes, key_pem: str | bytes) -> tuple[Path, Path]:
        """Store app `key`'s certificate chain and private key; returns (cert, key) paths.

        Files are root-owned 0600 in a 0700 directory, written atomically. Their names carry
        a digest of the contents, so a renewed certificate changes the site's text and the
        site is reloaded (nginx reads certificates only at reload); the old files are
        removed once a site no longer references them.
        """
        _check_key(key)
        cert_bytes = cert_pem.encode() if isinstance(cert_pem, str) else cert_pem
        key_bytes = key_pem.encode() if isinstance(key_pem, str) else key_pem
        digest = hashlib.sha256(cert_bytes + b"\0" + key_bytes).hexdigest()[:16]
        with self._lock:
            for directory in (self.layout.secrets, self.tls_dir):
                _private_dir(directory)
            cert_path = self.tls_dir / f"{key}.{digest}.crt"
            key_path = self.tls_dir / f"{key}.{digest}.key"
            for path, data in ((cert_path, cert_bytes), (key_path, key_bytes)):
                if not (path.exists() and path.read_bytes() == data and _mode(path) == 0o600):
                    _write_atomic(path, data, 0o600)
            return cert_path, key_path

    # -- internals ---------------------------------------------------------------------

    @property
    def _pid_file(self) -> Path:
        return Path(self.main_inputs().pid_file)

    @property
    def _error_log(self) -> Path:
        return Path(self.main_inputs().error_log)

    def _site_path(self, key: str) -> Path:
        _check_key(key)
        return self.layout.nginx_site(key)

    def unit_text(self) -> str:
        return render_nginx_unit(root=str(self.layout.root), argv=self._argv(self.main_conf),
                                 pidfile=str(self._pid_file), stop_seconds=int(self.stop_timeout))

    def _argv(self, conf: Path, *extra: str) -> list[str]:
        # -e: where nginx logs before it has read error_log from the config.
        return [self.binary, "-p", f"{self.prefix}/", "-c", str(conf), "-e", str(self._error_log), *extra]

    def _make_dirs(self) -> None:
        for directory in (
            self.prefix,
            self.layout.nginx_sites,
            self.staging,
            self.prefix / "run",
            self.prefix / "logs",
            self.prefix / "temp",
        ):
            directory.mkdir(parents=True, exist_ok=True)

    def _stage(self, name: str, text: str) -> Path:
        fd, path = tempfile.mkstemp(dir=self.staging, prefix=f"{name}.", suffix=".staged")
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(path, 0o644)
        return Path(path)

    def _test(self, conf: Path) -> None:
        proc = self.executor.run(self._argv(conf, "-t", "-q"), check=False, timeout=120)
        if proc.returncode != 0:
            raise ProxyConfigRejected(f"nginx -t refused {conf.name}", proc.stdout)

    def _test_candidate(self, key: str, staged: Path) -> None:
        """`nginx -t` a main config including the staged file in place of the live one."""
        live = self._site_path(key)
        files = {p.name: str(p) for p in self.layout.nginx_sites.glob("*.conf") if p.is_file()}
        files[live.name] = str(staged)
        # The same order as the live glob (sorted), so the first server per port is the same.
        includes = [files[name] for name in sorted(files)]
        candidate = self._stage(f"nginx.{key}", render_main(self.main_inputs(includes)))
        try:
            self._test(candidate)
        except ProxyConfigRejected as exc:
            # Name the app's file, not the staging path nginx saw.
            raise ProxyConfigRejected(
                f"nginx -t refused the config of {key}", exc.output.replace(str(staged), str(live))
            ) from None
        finally:
            candidate.unlink(missing_ok=True)

    def _start(self) -> None:
        offset = _size(self._error_log)
        # nginx daemonizes: the command returns once the master runs on its own, outside
        # the agent's process tree (the executor may start it in the host's namespaces).
        proc = self.executor.run(self._argv(self.main_conf), check=False, timeout=60)
        if proc.returncode != 0:
            raise ProxyConfigRejected("nginx failed to start", proc.stdout + self._errors_since(offset))
        self._wait_started(offset)

    def _wait_started(self, offset: int) -> None:
        started = _wait_until(lambda: self.master_pid() is not None and bool(self.worker_pids()), 10.0)
        if not started:
            raise ProxyError(f"nginx started but no master with workers appeared: {self._errors_since(offset)}")

    def _reload_or_restore(self, master: int, path: Path, previous: str | None) -> None:
        """Reload; if that fails put `previous` back at `path` (None: no file), reload, raise."""
        try:
            self._reload(master)
        except ProxyReloadFailed as failed:
            if previous is None:
                path.unlink(missing_ok=True)
            else:
                _write_atomic(path, previous.encode(), 0o644)
            try:
                self._reload(master)
            except ProxyReloadFailed as again:
                raise ProxyReloadFailed(
                    f"{failed}; restoring the previous {path.name} also failed", again.output
                ) from failed
            raise

    def _reload(self, master: int) -> None:
        """SIGHUP the master and wait until new workers serve and the old ones stopped accepting.

        nginx answers a failed reload by logging and keeping its old workers: that shows as an
        [emerg]/[alert] line from the master in the error log, or as no new workers in time.
        """
        before = {pid for pid, title in procfs.children(master).items() if title == WORKER_TITLE}
        offset = _size(self._error_log)
        if self.services is not None:
            self.services.reload(NGINX_UNIT)  # SIGHUP to the master, sent by systemd
        else:
            _signal(master, signal.SIGHUP)
        deadline = time.monotonic() + self.reload_timeout
        while time.monotonic() < deadline:
            workers = {pid for pid, title in procfs.children(master).items() if title == WORKER_TITLE}
            # Old workers retitle themselves "... is shutting down" as they close their
            # listeners, so once none is left under the plain title only new ones accept.
            if workers - before and not workers & before:
                return
            errors = self._errors_since(offset, master)
            if errors:
                raise ProxyReloadFailed("nginx refused to reload", errors)
            if not procfs.alive(master):
                raise ProxyReloadFailed("nginx master exited during reload", self._errors_since(offset))
            time.sleep(0.02)
        raise ProxyReloadFailed(
            f"nginx did not reload within {self.reload_timeout}s", self._errors_since(offset)
        )

    def _errors_since(self, offset: int, pid: int | None = None) -> str:
        """[emerg]/[alert]/[crit] lines appended to the error log after `offset` (by `pid`)."""
        try:
            with open(self._error_log, "rb") as handle:
                handle.seek(offset)
                tail = handle.read().decode(errors="replace")
        except FileNotFoundError:
            return ""
        marker = f"] {pid}#" if pid is not None else "]"
        lines = [
            line
            for line in tail.splitlines()
            if any(level in line for level in ("[emerg]", "[alert]", "[crit]")) and marker in line
        ]
        return "\n".join(lines)

    def _prune_tls(self, key: str, keep_referenced_by: str) -> None:
        """Remove `key`'s TLS files that `text` no longer names (nginx holds loaded ones)."""
        if not self.tls_dir.is_dir():
            return
        for path in self.tls_dir.glob(f"{key}.*"):
            if path.suffix in (".crt", ".key") and str(path) not in keep_referenced_by:
                path.unlink()


def _check_key(key: str) -> None:
    # The key becomes a file name: refuse anything but '<namespace>_<app>'.
    if not APP_KEY.fullmatch(key):
        raise ValueError(f"app key {key!r} is not '<namespace>_<app>' of DNS labels")


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass  # already gone: exactly what the caller waits for


def _wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def _private_dir(directory: Path) -> None:
    """A 0700 directory owned by us (root on a host); refuse one someone else owns."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    owner = directory.stat().st_uid
    if owner != os.geteuid():
        raise ProxyError(f"{directory} is owned by uid {owner}, not by the agent: refusing to store keys")
    os.chmod(directory, 0o700)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write to a temp file in the same directory (created with `mode`), fsync, rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)

