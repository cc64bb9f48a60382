"""Test hosts with a real systemd (hack/systemd_host.py), reached as the DaemonSet reaches PID 1.

`systemd_host(state_dir)` starts one and always kills it (removing its cgroups) when the block
ends. `make_unit_host(root, sd)` wires a `core.Host` exactly as `apprelease agent run
--host-namespaces --host-pid <pid>` does (agent/cli.make_host): a `HostExecutor` with the test
systemd's pid and the host's `Systemd`, so the supervisor and nginx run in units.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

from apprelease.host import core, systemd
from apprelease.host.executor import HostExecutor
from apprelease.host.layout import HostLayout
from apprelease.host.proxy.nginx import Nginx
from apprelease.host.supervisors import make_supervisor
from support.hosts import uv_binary
from systemd_host import SystemdHost

__all__ = ["SystemdHost", "make_unit_host", "processes_of_unit", "systemd_host", "unit_state"]


@contextlib.contextmanager
def systemd_host(state_dir: Path) -> Iterator[SystemdHost]:
    state_dir.mkdir(parents=True, exist_ok=True)
    host = SystemdHost(state_dir)
    try:
        yield host.start()
    finally:
        host.kill()


def make_unit_host(root: Path, sd: SystemdHost, backend: str = "circus", *,
                   listen_address: str = "127.0.0.1") -> core.Host:
    executor = HostExecutor(sd.pid or 0)
    assert systemd.booted(executor), "the test host's systemd does not show as booted through /proc/<pid>/root"
    services = systemd.Systemd(executor)
    layout = HostLayout(root)
    return core.Host(
        layout=layout,
        executor=executor,
        supervisor=make_supervisor(backend, layout, executor, services=services),
        nginx=Nginx(layout, executor, listen_address=listen_address, services=services),
        uv=uv_binary(),
        services=services,
    )


def unit_state(sd: SystemdHost, unit: str) -> dict[str, str]:
    """A few `systemctl show` properties of `unit` on the test host."""
    out = sd.systemctl("show", unit, "--property=ActiveState,UnitFileState,MainPID,ControlGroup,NRestarts",
                       check=False).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def processes_of_unit(sd: SystemdHost, unit: str) -> dict[int, str]:
    """{pid: command line} of the processes in the unit's cgroup, pids as this machine numbers them."""
    group = unit_state(sd, unit).get("ControlGroup", "")
    procs = sd.cgroup_dirs()["systemd"] / group.lstrip("/") / "cgroup.procs"
    if not group or not procs.exists():
        return {}
    found = {}
    for pid in procs.read_text().split():
        try:
            found[int(pid)] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except FileNotFoundError:
            pass
    return found


def nsenter_available() -> bool:
    return shutil.which("nsenter") is not None and shutil.which("unshare") is not None
