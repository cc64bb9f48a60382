"""Process supervisor backends for the agent: circus (default) and supervisord.

The agent builds one with `make_supervisor` from its `--supervisor` setting and then uses
only the `Supervisor` interface (see base.py).
"""

from __future__ import annotations

import sys
from typing import Literal

from ..executor import LocalExecutor
from ..layout import HostLayout
from ..systemd import Systemd
from .base import Supervisor, SupervisorError, WatcherState
from .circus import CircusSupervisor
from .supervisord import SupervisordSupervisor

SupervisorKind = Literal["circus", "supervisord"]
KINDS: tuple[SupervisorKind, ...] = ("circus", "supervisord")


def make_supervisor(
    kind: SupervisorKind,
    layout: HostLayout,
    executor: LocalExecutor | None = None,
    python: str = sys.executable,
    services: Systemd | None = None,
) -> Supervisor:
    """The backend `kind` for this host; `python` is an interpreter that has it installed;
    `services`: the host's systemd, which then runs the daemon in its unit."""
    if kind == "circus":
        return CircusSupervisor(layout.supervisor, executor, python, services)
    if kind == "supervisord":
        return SupervisordSupervisor(layout.supervisor, executor, python, services)
    raise ValueError(f"unknown supervisor {kind!r}: choose one of {', '.join(KINDS)}")


__all__ = [
    "KINDS",
    "CircusSupervisor",
    "Supervisor",
    "SupervisorError",
    "SupervisorKind",
    "SupervisordSupervisor",
    "WatcherState",
    "make_supervisor",
]
