"""The host's systemd units for apprelease's daemons: what they say, and what to do about them.

Pure: `render_supervisor_unit` / `render_nginx_unit` build unit file text, `plan_units`
compares it with what `host/systemd.py` observed on the host and returns the actions that
module applies. Called by the supervisor backends and the nginx applier when the host has
systemd (the DaemonSet agent reaching PID 1 through nsenter).

Why units: nsenter changes namespaces, not cgroups, so a daemon the agent starts itself stays
in the agent pod's cgroup and dies with the pod (an agent upgrade would stop every app). A
unit puts the supervisor, and the apps it parents, in the unit's own cgroup; systemd starts
it at boot, before any agent or apiserver is reachable, and circusd/supervisord then start
the watchers whose config files are on disk (the serving revisions).

Drift: a unit file that differs from the rendered one is rewritten and systemd reloaded, and
a disabled unit is enabled again, but a running unit is never restarted for it: restarting
the supervisor's unit stops every app on the host. The repaired definition applies at the
next start (a reboot, a crash). Only a unit that is not running is started.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

SUPERVISOR_UNIT = "apprelease-supervisor.service"
NGINX_UNIT = "apprelease-nginx.service"
WANTED_BY = "multi-user.target"
# Enough for circusd to stop every watcher gracefully (each has its own graceful_timeout)
# before systemd sends SIGKILL to what is left in the unit's cgroup.
SUPERVISOR_STOP_SECONDS = 120
HEADER = "# Written by the apprelease agent ({root}); edits are put back at its next resync.\n"

WRITE = "write-unit"
DAEMON_RELOAD = "daemon-reload"
ENABLE = "enable-unit"
START = "start-unit"

_PLAIN = re.compile(r"[A-Za-z0-9._/@+:,=-]+")


@dataclass(frozen=True)
class ObservedUnit:
    text: str | None  # the unit file's content, None if there is none
    enabled: bool  # wanted by WANTED_BY (started at boot)
    active: str  # `systemctl is-active`: active, activating, reloading, inactive, failed, ...


@dataclass(frozen=True)
class UnitAction:
    kind: str
    unit: str = ""

    def __str__(self) -> str:
        return f"{self.kind}({self.unit})" if self.unit else self.kind


def plan_units(desired: Mapping[str, str], observed: Mapping[str, ObservedUnit]) -> tuple[UnitAction, ...]:
    """Write what differs, reload systemd once, enable what is not, start what is not running."""
    missing = ObservedUnit(None, False, "inactive")
    writes = [UnitAction(WRITE, name) for name, text in sorted(desired.items())
              if observed.get(name, missing).text != text]
    actions = [*writes, *([UnitAction(DAEMON_RELOAD)] if writes else [])]
    actions += [UnitAction(ENABLE, name) for name in sorted(desired) if not observed.get(name, missing).enabled]
    actions += [UnitAction(START, name) for name in sorted(desired)
                if observed.get(name, missing).active not in ("active", "activating", "reloading")]
    return tuple(actions)


def exec_line(argv: Sequence[str]) -> str:
    """An ExecStart= value that systemd splits back into exactly `argv`."""
    return " ".join(_quote(arg) for arg in argv)


def _quote(arg: str) -> str:
    # systemd expands %specifiers and $VARIABLES in Exec lines: doubling them keeps them literal.
    escaped = arg.replace("%", "%%").replace("$", "$$")
    if _PLAIN.fullmatch(arg):
        return escaped
    return '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_supervisor_unit(*, root: str, kind: str, argv: Sequence[str], pidfile: str, forking: bool,
                           environment: Mapping[str, str]) -> str:
    """The unit that runs the host's circusd or supervisord (and so every app under it).

    KillMode=mixed: a stop sends SIGTERM to the daemon only, which stops each watcher with its
    own graceful timeout; what is left after SUPERVISOR_STOP_SECONDS gets SIGKILL.
    Restart=always: a crashed daemon comes back and restarts the watchers on disk.
    Delegate=yes: the daemon may create sub-cgroups in its unit's cgroup.
    """
    env = " ".join(_quote(f"{k}={v}") for k, v in sorted(environment.items()))
    type_lines = f"Type=forking\nPIDFile={pidfile}\n" if forking else "Type=simple\n"
    return (
        HEADER.format(root=root)
        + "[Unit]\n"
        + f"Description=apprelease supervisor ({kind}) of {root}: every app's workers\n"
        + "After=network.target\n"
        + "\n[Service]\n"
        + type_lines
        + f"ExecStart={exec_line(argv)}\n"
        + f"Environment={env}\n"
        + "KillMode=mixed\n"
        + f"TimeoutStopSec={SUPERVISOR_STOP_SECONDS}\n"
        + "Restart=always\n"
        + "RestartSec=1\n"
        + "Delegate=yes\n"
        + "\n[Install]\n"
        + f"WantedBy={WANTED_BY}\n"
    )


def render_nginx_unit(*, root: str, argv: Sequence[str], pidfile: str, stop_seconds: int) -> str:
    """The unit that runs the host's nginx with apprelease's config.

    nginx daemonizes (Type=forking, its pid file). Reload is SIGHUP to the master, as the
    agent did before units; stop is SIGQUIT, nginx's graceful shutdown (in-flight requests
    finish), SIGKILL after `stop_seconds`.
    """
    return (
        HEADER.format(root=root)
        + "[Unit]\n"
        + f"Description=apprelease nginx of {root}\n"
        + "After=network.target\n"
        + "\n[Service]\n"
        + "Type=forking\n"
        + f"PIDFile={pidfile}\n"
        + f"ExecStart={exec_line(argv)}\n"
        + "ExecReload=/bin/kill -s HUP $MAINPID\n"
        + "KillMode=mixed\n"
        + "KillSignal=SIGQUIT\n"
        + f"TimeoutStopSec={stop_seconds}\n"
        + "Restart=on-failure\n"
        + "RestartSec=1\n"
        + "\n[Install]\n"
        + f"WantedBy={WANTED_BY}\n"
    )


# -- resources: one transient scope per revision ------------------------------------------------

SYSTEMD_RUN = "/usr/bin/systemd-run"  # absolute: the supervisor runs watchers with no PATH of its own


def app_slice(key: str) -> str:
    """The slice of an app's scopes, a direct child of apprelease.slice.

    systemd nests slices at each '-' of the name, so a key's own dashes would put app
    `team-a_web-x` inside app `team-a_web`'s slice (another tenant's). Names and namespaces
    never hold ':', so mapping '-' to ':' keeps keys apart and passes the supervisor configs'
    plain-value check (systemd's own escape, \x2d, would not).
    """
    return f"apprelease-{key.replace('-', ':')}.slice"


def revision_scope(watcher: str) -> str:
    """The transient scope one revision's gunicorn runs in (one at a time: the watcher's process)."""
    return f"{watcher}.scope"


def scope_argv(*, watcher: str, key: str, user: str, group: str, memory_max: str | None,
               cpu_weight: int | None) -> tuple[str, ...]:
    """What goes before the watcher's command so that it runs in its own scope with the limits.

    `systemd-run --scope` asks systemd for a scope holding its own pid, then execs the command:
    the pid, the signals, the supervisor's restarts stay as they are, and the kernel enforces
    the limits on the revision's master and workers together. It also drops to the app's user
    (--uid/--gid), so the supervisor starts it as root. Why per revision and not per app: during
    a rotation old and new workers run at once; one app-wide limit would count both.
    """
    properties = []
    if memory_max is not None:
        properties += ["-p", f"MemoryMax={memory_max}"]
    if cpu_weight is not None:
        properties += ["-p", f"CPUWeight={cpu_weight}"]
    return (SYSTEMD_RUN, "--scope", "--quiet", "--collect", f"--unit={revision_scope(watcher)}",
            f"--slice={app_slice(key)}", *properties, f"--uid={user}", f"--gid={group}", "--")
