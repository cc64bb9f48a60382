"""The circus backend (the default): one circusd per host, driven over its ZMQ endpoint.

Called by the agent's rotation code through the `Supervisor` interface. circusd listens on
`ipc://` sockets inside `layout.supervisor` (0700, root): a TCP endpoint would let any local
user run commands as root. Each watcher is also written as its own ini file in
`supervisor/circus.d/`, which circusd's main config includes, before it is added live.

Facts this relies on (TOOLING.md): `add` takes `uid`, `gid`, `env`, `copy_env`,
`graceful_timeout`, `stop_signal` (an integer) and FileStream streams; the arbiter runs one
command at a time, so add/rm/quit carry `"waiting": true` and are answered when done.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import zmq
from circus.client import CircusClient
from circus.exc import CallError

from ..executor import LocalExecutor
from ..systemd import Systemd
from ..watchers import WatcherSpec
from .base import (
    ENV_PREFIX,
    ProcessExit,
    SupervisorBackend,
    SupervisorError,
    WatcherState,
    check_socket_path,
    command_line,
    encode_env,
    launch_argv,
    plain,
    private_dir,
    render_template,
    write_atomically,
)

# circus's words for a watcher's status, in the interface's words.
_STATUS = {"active": "running", "starting": "starting", "stopping": "stopping", "stopped": "stopped"}
QUICK_TIMEOUT = 5.0
STOP_MARGIN = 15.0  # on top of a watcher's graceful_timeout, for the answer to come back


def watcher_options(spec: WatcherSpec) -> dict[str, Any]:
    """The watcher as circus options: what `add` sends and what the ini file holds."""
    streams = {
        stream: {
            "class": "FileStream",
            "filename": plain(path, f"{spec.name} log file"),
            "max_bytes": spec.max_bytes,
            "backup_count": spec.backup_count,
        }
        for stream, path in (("stdout_stream", spec.stdout_log), ("stderr_stream", spec.stderr_log))
    }
    return {
        "cmd": command_line(launch_argv(spec)),
        "working_dir": plain(spec.cwd, f"{spec.name} working directory"),
        # With a scope, systemd-run drops to the app's user (units.scope_argv): circus starts it as root.
        **({} if spec.scope else {"uid": plain(spec.user, f"{spec.name} user"),
                                  "gid": plain(spec.group, f"{spec.name} group")}),
        "env": encode_env(spec.env),
        "copy_env": False,
        "numprocesses": 1,
        "stop_signal": int(spec.stop_signal),
        "stop_children": False,  # gunicorn's master drains and stops its own workers
        "graceful_timeout": spec.graceful_timeout,
        "respawn": True,
        **streams,
    }


def render_watcher(spec: WatcherSpec) -> str:
    """The watcher's ini file, read by circusd when it starts."""
    options = watcher_options(spec)
    return render_template(
        "circus_watcher.ini.j2",
        name=plain(spec.name, "watcher name"),
        cmd=options["cmd"],
        working_dir=options["working_dir"],
        uid=options.get("uid"),
        gid=options.get("gid"),
        stop_signal=options["stop_signal"],
        graceful_timeout=options["graceful_timeout"],
        streams={s: options[s] for s in ("stdout_stream", "stderr_stream")},
        env=options["env"],
        env_names=sorted(spec.env),
    )


class CircusSupervisor(SupervisorBackend):
    """circusd under `root` (= layout.supervisor)."""

    kind = "circus"

    def __init__(self, root: Path, executor: LocalExecutor | None = None, python: str = sys.executable,
                 services: Systemd | None = None):
        super().__init__(root, executor, python, services)
        self._subscribers: dict[str, zmq.Socket] = {}  # watcher -> its reap events
        self._exits: dict[str, ProcessExit] = {}  # watcher -> its last exit seen

    @property
    def config(self) -> Path:
        return self.root / "circus.ini"

    @property
    def watchers_dir(self) -> Path:
        return self.root / "circus.d"

    @property
    def pidfile(self) -> Path:
        return self.root / "circusd.pid"

    @property
    def daemon_log(self) -> Path:
        return self.root / "circusd.log"

    def socket(self, name: str) -> Path:
        return check_socket_path(self.root / f"{name}.sock")

    @property
    def endpoint(self) -> str:
        return f"ipc://{self.socket('ctl')}"

    def watcher_file(self, name: str) -> Path:
        return self.watchers_dir / f"{plain(name, 'watcher name')}.ini"

    # -- daemon ----------------------------------------------------------------------
    def render_main_config(self) -> str:
        return render_template(
            "circus.ini.j2",
            control_socket=plain(self.socket("ctl"), "circus socket"),
            pubsub_socket=plain(self.socket("pub"), "circus socket"),
            pidfile=plain(self.pidfile, "pid file"),
            logfile=plain(self.daemon_log, "log file"),
            watchers_dir=plain(self.watchers_dir, "watchers directory"),
        )

    def _write_main_config(self) -> list[str]:
        private_dir(self.root)
        private_dir(self.watchers_dir)
        write_atomically(self.config, self.render_main_config())
        return [self.python, "-m", "circus.circusd", str(self.config)]

    def _answers(self) -> bool:
        if not self.socket("ctl").exists():
            return False
        try:
            self._call("list", timeout=1.0)
        except CallError:
            return False
        return True

    def _request_shutdown(self) -> None:
        # Not waiting: the arbiter stops every watcher gracefully, then exits without
        # necessarily answering; the caller waits for the process to go.
        self._call("quit", waiting=False)

    # -- control ---------------------------------------------------------------------
    def _call(self, command: str, timeout: float = QUICK_TIMEOUT, **properties: Any) -> dict[str, Any]:
        """One command to circusd; raises CallError if it does not answer in time."""
        client = CircusClient(endpoint=self.endpoint, timeout=timeout)
        try:
            answer = client.call({"command": command, "properties": properties})
        finally:
            client.stop()
        if answer.get("status") != "ok":
            raise SupervisorError(f"circusd refused {command} {properties.get('name', '')}: {answer.get('reason')}")
        return answer

    def _command(self, command: str, timeout: float = QUICK_TIMEOUT, **properties: Any) -> dict[str, Any]:
        try:
            return self._call(command, timeout=timeout, **properties)
        except CallError as exc:
            raise SupervisorError(f"circusd did not answer {command} within {timeout:.0f}s: {exc}") from exc

    def signal(self, name: str, signum: int) -> None:
        # children=False (circus's default): the master only; gunicorn handles its workers.
        self._command("signal", name=name, signum=int(signum))

    def watchers(self) -> dict[str, WatcherState]:
        statuses = self._command("status")["statuses"]
        states = {}
        for name, status in statuses.items():
            pids = self._pids(name)
            if pids is not None:
                states[name] = WatcherState(name=name, status=_STATUS.get(status, "unknown"), pids=pids)
        return states

    def _pids(self, name: str) -> tuple[int, ...] | None:
        answer = self._about("list", name)
        return None if answer is None else tuple(sorted(answer["pids"]))

    def _options(self, name: str) -> dict[str, Any] | None:
        answer = self._about("options", name)
        return None if answer is None else dict(answer["options"])

    def _about(self, command: str, name: str) -> dict[str, Any] | None:
        """circusd's answer to `command` on one watcher, or None when it is not (or no longer) there.

        Asking first whether it exists would race: circusd has no call that answers status
        and details at once, and the agent's other thread (or another client) may remove a
        watcher between two calls.
        """
        try:
            return self._command(command, name=name)
        except SupervisorError as exc:
            if f"program {name} not found" in str(exc):
                return None
            raise

    def main_pid(self, name: str) -> int | None:
        pids = self._pids(name)
        return min(pids) if pids else None

    def _reap_subscriber(self, name: str) -> zmq.Socket:
        """A subscription to circusd's `reap` events of one watcher, opened on first use.

        circusd tells exit codes only on its pub/sub stream (its `list` hides an exited
        process at once). It reaps every check_delay (circus.ini) and then respawns, so even
        a subscription made just after a failing process exited sees its next exit.
        """
        sub = self._subscribers.get(name)
        if sub is None:
            sub = zmq.Context.instance().socket(zmq.SUB)
            sub.setsockopt(zmq.LINGER, 0)
            sub.setsockopt(zmq.SUBSCRIBE, f"watcher.{name}.reap".encode())
            sub.connect(f"ipc://{self.socket('pub')}")
            self._subscribers[name] = sub
        return sub

    def _forget_exits(self, name: str) -> None:
        sub = self._subscribers.pop(name, None)
        if sub is not None:
            sub.close()
        self._exits.pop(name, None)

    def exit_status(self, name: str) -> ProcessExit | None:
        sub = self._reap_subscriber(name)
        while sub.poll(0):
            _topic, body = sub.recv_multipart()
            code = json.loads(body).get("exit_code")
            self._exits[name] = ProcessExit(code if isinstance(code, int) else None)
        return self._exits.get(name)

    def add(self, spec: WatcherSpec) -> None:
        options = watcher_options(spec)
        self._forget_exits(spec.name)
        self._reap_subscriber(spec.name)  # before it runs: its first exit is then seen too
        # On disk first: from here on a restarted circusd runs it even if we die now.
        write_atomically(self.watcher_file(spec.name), render_watcher(spec))
        live = self._options(spec.name)
        if live is not None:
            # A watcher loaded from its ini file also carries circus's '__name__' in env.
            live_env = {k: v for k, v in (live.get("env") or {}).items() if k.startswith(ENV_PREFIX)}
            if live.get("cmd") == options["cmd"] and live_env == options["env"]:
                statuses = self._command("status")["statuses"]
                if statuses[spec.name] == "stopped":
                    self._command("start", timeout=60, name=spec.name, waiting=True)
                return
            # Same name, different config (someone changed it by hand): replace it.
            self._stop_and_forget(spec.name, float(live.get("graceful_timeout", 30)))
        self._command(
            "add",
            timeout=60,
            name=spec.name,
            cmd=options.pop("cmd"),
            args=None,
            options=options,
            start=True,
            waiting=True,
        )

    def _stop_and_forget(self, name: str, graceful_timeout: float) -> None:
        # rm stops the watcher (stop_signal, then SIGKILL after graceful_timeout) and
        # answers only once it is gone, thanks to waiting.
        self._command("rm", timeout=graceful_timeout + STOP_MARGIN, name=name, nostop=False, waiting=True)

    def remove(self, name: str) -> None:
        self._forget_exits(name)
        live = self._options(name)
        if live is not None:
            self._stop_and_forget(name, float(live.get("graceful_timeout", 30)))
        self.watcher_file(name).unlink(missing_ok=True)
