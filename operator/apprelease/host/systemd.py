"""The host's systemd, as the agent reaches it: unit files and `systemctl` through the executor.

Called by the supervisor backends and the nginx applier when `booted(executor)` says the host
runs systemd (core.Host is wired by the agent's CLI). Unit files live in the host's
/etc/systemd/system, reached through `/proc/<host pid>/root` (the DaemonSet's hostPID gives
the agent the host's PID 1; a test host's systemd is reached the same way with its own pid);
every `systemctl` runs through the executor, i.e. `nsenter -t <pid> … systemctl`, which talks
to that systemd over its private socket. What to do is decided by `units.plan_units`.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from .executor import LocalExecutor
from .units import DAEMON_RELOAD, ENABLE, START, WANTED_BY, WRITE, ObservedUnit, UnitAction, plan_units

log = logging.getLogger(__name__)

SYSTEMCTL_TIMEOUT = 180.0  # a start waits for the daemon; a stop for its graceful drain


class SystemdError(RuntimeError):
    pass


def booted(executor: LocalExecutor) -> bool:
    """True if the host's init is systemd (sd_booted(3): /run/systemd/system exists)."""
    return (executor.host_root / "run/systemd/system").is_dir()


class Systemd:
    """Units of one host. Thread-safe: one lock around each observe-plan-apply."""

    def __init__(self, executor: LocalExecutor):
        self.executor = executor
        self._lock = threading.Lock()

    @property
    def unit_dir(self) -> Path:
        return self.executor.host_root / "etc/systemd/system"

    def unit_path(self, name: str) -> Path:
        return self.unit_dir / name

    def systemctl(self, *args: str, check: bool = True) -> str:
        proc = self.executor.run(["systemctl", *args], check=False, timeout=SYSTEMCTL_TIMEOUT)
        if check and proc.returncode != 0:
            raise SystemdError(f"systemctl {' '.join(args)} exited with {proc.returncode}: {proc.stdout.strip()}")
        # "Failed to connect to bus" comes first when there is no D-Bus; systemctl then uses
        # systemd's private socket (TOOLING.md): not an answer.
        return "\n".join(li for li in proc.stdout.splitlines() if "Failed to connect to bus" not in li).strip()

    def observe(self, name: str) -> ObservedUnit:
        try:
            text: str | None = self.unit_path(name).read_text()
        except FileNotFoundError:
            text = None
        enabled = (self.unit_dir / f"{WANTED_BY}.wants" / name).is_symlink()
        active = self.systemctl("is-active", name, check=False) or "unknown"
        return ObservedUnit(text, enabled, active)

    def ensure(self, name: str, text: str) -> tuple[UnitAction, ...]:
        """Make unit `name` say `text`, be enabled, and run; returns what was done."""
        with self._lock:
            actions = plan_units({name: text}, {name: self.observe(name)})
            for action in actions:
                self._apply(action, text)
            if actions:
                log.info("systemd unit %s: %s", name, " -> ".join(map(str, actions)))
            return actions

    def _apply(self, action: UnitAction, text: str) -> None:
        if action.kind == WRITE:
            self.unit_dir.mkdir(parents=True, exist_ok=True)
            path = self.unit_path(action.unit)
            staged = path.with_name(f".{path.name}.staged")
            staged.write_text(text)
            staged.chmod(0o644)
            os.replace(staged, path)
        elif action.kind == DAEMON_RELOAD:
            self.systemctl("daemon-reload")
        elif action.kind == ENABLE:
            self.systemctl("enable", action.unit)
        elif action.kind == START:
            self.systemctl("start", action.unit)
        else:
            raise ValueError(f"unknown unit action {action}")

    def is_active(self, name: str) -> bool:
        return self.systemctl("is-active", name, check=False) in ("active", "reloading")

    def main_pid(self, name: str) -> int | None:
        """The unit's main pid as the host numbers it (0 / None: not running)."""
        value = self.systemctl("show", "--property=MainPID", "--value", name, check=False)
        return int(value) if value.isdigit() and int(value) > 0 else None

    def reload(self, name: str) -> None:
        self.systemctl("reload", name)

    def stop(self, name: str) -> bool:
        """Stop and disable (it stays stopped after a reboot); False if it was not running."""
        was_active = self.is_active(name)
        self.systemctl("disable", "--now", name, check=False)
        return was_active
