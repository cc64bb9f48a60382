"""The supervisord backend: one supervisord per host, driven over XML-RPC on a unix socket.

Called by the agent's rotation code through the `Supervisor` interface, for hosts that
standardise on supervisord. The socket lives in `layout.supervisor` (0700, root). Each
program is its own conf file in `supervisor/programs/`, included by the main config, and is
added live with `reloadConfig` + `addProcessGroup` (removed with `stopProcess` +
`removeProcessGroup`): other programs and the daemon are never restarted.
"""

from __future__ import annotations

import re
import signal
import sys
import xmlrpc.client
from pathlib import Path
from typing import Any

from supervisor.xmlrpc import Faults, SupervisorTransport

from ..executor import LocalExecutor
from ..systemd import Systemd
from ..watchers import WatcherSpec
from .base import (
    ProcessExit,
    SupervisorBackend,
    SupervisorError,
    WatcherState,
    check_socket_path,
    command_line,
    encode_env,
    launch_argv,
    log_tail,
    plain,
    private_dir,
    render_template,
    wait_for,
    write_atomically,
)

_STATUS = {
    "RUNNING": "running",
    "STARTING": "starting",
    "STOPPING": "stopping",
    "STOPPED": "stopped",
    "EXITED": "stopped",
    "BACKOFF": "backoff",
    "FATAL": "fatal",
}
_NOT_STARTED = ("STOPPED", "EXITED", "FATAL")
_EXITED = ("BACKOFF", "EXITED", "FATAL")


def escape(value: str) -> str:
    """supervisord %-expands option values (`%(here)s`, `%(ENV_X)s`): a literal % is %%."""
    return value.replace("%", "%%")


def environment_value(env: dict[str, str]) -> str:
    """`environment=` as supervisord's lexer reads it: KEY="value",... (values are hex)."""
    return ",".join(f'{name}="{value}"' for name, value in env.items())


def render_program(spec: WatcherSpec) -> str:
    """The program's conf file: what supervisord reads on `reloadConfig` and at start."""
    return render_template(
        "supervisord_program.conf.j2",
        name=plain(spec.name, "program name"),
        command=escape(command_line(launch_argv(spec))),
        directory=plain(spec.cwd, f"{spec.name} working directory"),
        # supervisord runs the program with the user's primary group (and its supplementary
        # groups); watcher_for sets group = user, the group useradd --user-group made.
        # With a scope, systemd-run drops to the app's user (units.scope_argv).
        user=None if spec.scope else plain(spec.user, f"{spec.name} user"),
        environment=environment_value(encode_env(spec.env)),
        env_names=sorted(spec.env),
        stop_signal=signal.Signals(spec.stop_signal).name.removeprefix("SIG"),
        stop_wait=int(spec.graceful_timeout),
        stdout_log=plain(spec.stdout_log, f"{spec.name} log file"),
        stderr_log=plain(spec.stderr_log, f"{spec.name} log file"),
        max_bytes=int(spec.max_bytes),
        backup_count=int(spec.backup_count),
    )


def logged_exit(log: str, name: str) -> ProcessExit | None:
    """The last exit of program `name` that supervisord's log reports, if any."""
    pattern = re.compile(rf"exited: {re.escape(name)} \((?:exit status (\d+)|terminated by SIG(\w+))")
    for line in reversed(log.splitlines()):
        match = pattern.search(line)
        if match:
            if match.group(1) is not None:
                return ProcessExit(int(match.group(1)))
            number = getattr(signal, f"SIG{match.group(2)}", None)
            return ProcessExit(-int(number)) if number is not None else ProcessExit(None, f"terminated by SIG{match.group(2)}")
    return None


class SupervisordSupervisor(SupervisorBackend):
    """supervisord under `root` (= layout.supervisor)."""

    kind = "supervisord"

    def __init__(self, root: Path, executor: LocalExecutor | None = None, python: str = sys.executable,
                 services: Systemd | None = None):
        super().__init__(root, executor, python, services)
        self._log_marks: dict[str, int] = {}  # program -> daemon log size when it was added

    @property
    def config(self) -> Path:
        return self.root / "supervisord.conf"

    @property
    def programs_dir(self) -> Path:
        return self.root / "programs"

    @property
    def socket(self) -> Path:
        return check_socket_path(self.root / "supervisord.sock")

    @property
    def pidfile(self) -> Path:
        return self.root / "supervisord.pid"

    @property
    def daemon_log(self) -> Path:
        return self.root / "supervisord.log"

    def program_file(self, name: str) -> Path:
        return self.programs_dir / f"{plain(name, 'program name')}.conf"

    # -- daemon ----------------------------------------------------------------------
    def render_main_config(self) -> str:
        return render_template(
            "supervisord.conf.j2",
            socket=plain(self.socket, "supervisord socket"),
            pidfile=plain(self.pidfile, "pid file"),
            logfile=plain(self.daemon_log, "log file"),
            childlogdir=plain(self.root / "childlogs", "log directory"),
            programs_dir=plain(self.programs_dir, "programs directory"),
        )

    def _write_main_config(self) -> list[str]:
        private_dir(self.root)
        private_dir(self.programs_dir)
        private_dir(self.root / "childlogs")
        write_atomically(self.config, self.render_main_config())
        return [self.python, "-m", "supervisor.supervisord", "-c", str(self.config)]

    def _rpc(self) -> Any:
        transport = SupervisorTransport(None, None, f"unix://{self.socket}")
        # The host part is ignored: the transport connects to the unix socket.
        return xmlrpc.client.ServerProxy("http://localhost", transport=transport).supervisor

    def _answers(self) -> bool:
        if not self.socket.exists():
            return False
        try:
            return self._rpc().getState()["statename"] == "RUNNING"
        except (OSError, xmlrpc.client.Fault, xmlrpc.client.ProtocolError):
            return False

    def _request_shutdown(self) -> None:
        # supervisord stops every program (stopsignal, stopwaitsecs) and then exits.
        self._rpc().shutdown()

    # -- control ---------------------------------------------------------------------
    def watchers(self) -> dict[str, WatcherState]:
        return {
            info["name"]: WatcherState(
                name=info["name"],
                status=_STATUS.get(info["statename"], "unknown"),
                pids=(info["pid"],) if info["pid"] else (),
            )
            for info in self._rpc().getAllProcessInfo()
        }

    def _info(self, name: str) -> dict[str, Any] | None:
        try:
            return self._rpc().getProcessInfo(name)
        except xmlrpc.client.Fault as fault:
            if fault.faultCode == Faults.BAD_NAME:
                return None
            raise

    def main_pid(self, name: str) -> int | None:
        info = self._info(name)
        return info["pid"] if info and info["pid"] else None

    def exit_status(self, name: str) -> ProcessExit | None:
        # supervisord's log is the one complete record: its API clears the exit status of a
        # process that exited within startsecs (BACKOFF, then FATAL), and a later exit
        # (EXITED) lasts only until autorestart starts it again, easily between two polls.
        # Requested stops are logged as "stopped:", never "exited:".
        info = self._info(name)
        if info is None:
            return None
        mark = self._log_marks.get(name)
        if mark is not None:
            logged = logged_exit(self._log_since(mark), name)
            if logged is not None:
                return logged
        elif info["statename"] in _EXITED:  # added by an earlier agent process: the recent log
            logged = logged_exit(log_tail(self.daemon_log, 200), name)
            if logged is not None:
                return logged
        if info["statename"] == "EXITED":
            return ProcessExit(int(info["exitstatus"]))
        if info["statename"] in _EXITED:
            return ProcessExit(None, str(info.get("spawnerr") or info["statename"].lower()))
        return None

    def _log_size(self) -> int:
        try:
            return self.daemon_log.stat().st_size
        except FileNotFoundError:
            return 0

    def _log_since(self, mark: int) -> str:
        try:
            with self.daemon_log.open("rb") as f:
                if f.seek(0, 2) < mark:
                    mark = 0  # rotated since
                f.seek(mark)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def add(self, spec: WatcherSpec) -> None:
        self._log_marks[spec.name] = self._log_size()  # exit_status reads what follows
        # On disk first: from here on a restarted supervisord runs it even if we die now.
        write_atomically(self.program_file(spec.name), render_program(spec))
        rpc = self._rpc()
        # reloadConfig only compares the files with what runs; nothing is applied yet.
        [[added, changed, _removed]] = rpc.reloadConfig()
        if spec.name in changed:
            # Same name, different config (someone changed it by hand): replace it.
            self._stop_and_forget(spec.name)
            rpc.addProcessGroup(spec.name)
        elif spec.name in added:
            rpc.addProcessGroup(spec.name)  # autostart=true: supervisord starts it
        else:
            info = self._info(spec.name)
            if info is None:
                raise SupervisorError(f"supervisord did not load {self.program_file(spec.name)}")
            if info["statename"] in _NOT_STARTED:
                rpc.startProcess(spec.name, False)

        def spawned() -> bool:
            info = self._info(spec.name)
            return info is not None and (bool(info["pid"]) or info["statename"] in ("BACKOFF", "FATAL"))

        wait_for(spawned, 10, f"supervisord to start {spec.name}")

    def _stop_and_forget(self, name: str) -> None:
        rpc = self._rpc()
        try:
            # Blocks until stopped: TERM, then SIGKILL to the group after stopwaitsecs.
            rpc.stopProcess(name, True)
        except xmlrpc.client.Fault as fault:
            if fault.faultCode != Faults.NOT_RUNNING:
                raise
        rpc.removeProcessGroup(name)

    def signal(self, name: str, signum: int) -> None:
        self._rpc().signalProcess(name, str(int(signum)))

    def remove(self, name: str) -> None:
        self._log_marks.pop(name, None)
        if self._info(name) is not None:
            self._stop_and_forget(name)
        self.program_file(name).unlink(missing_ok=True)
