"""A real systemd as PID 1 of its own namespaces: one "host" with a service manager, for tests.

Who calls it:
- the tests (tests/support/systemd.py: `SystemdHost(state_dir)` started by a fixture and
  killed in its finalizer), which let the agent reach it with `nsenter -t <pid>` exactly as
  the DaemonSet agent reaches a real host's PID 1 (`--host-namespaces --host-pid <pid>`);
- people, through `hack/systemd-host up|down|reboot|status --state-dir D` (`main()` below).

How (TOOLING.md, "A real systemd for tests"): `unshare --pid --mount --cgroup --uts --ipc
--mount-proc` runs a small script that bind-mounts the state dir's `units/` over
/lib/systemd/system (only empty targets: systemd starts nothing of this machine) and its
`etc/` over /etc/systemd/system (where the agent writes and enables its units, so they
survive a "reboot"), mounts a tmpfs on /run, and execs systemd.

Cgroups (measured here, cgroup v1 + a v2 `unified` mount): the process is first moved into an
`apprelease-test-<id>` sub-cgroup of its current cgroup in every hierarchy, and the script
mounts the hierarchies afresh inside its cgroup namespace. Without the fresh mounts systemd
sees the machine's /sys/fs/cgroup, whose paths start at the machine's root, and creates
init.scope and system.slice there (seen: it moved itself into the machine's
memory:/init.scope). With them, everything it creates is under the sub-cgroup, which `kill()`
removes once empty.

"Reboot": `kill()` (SIGKILL to its PID 1: the kernel kills the whole PID namespace; PID 1
ignores SIGTERM) and `start()` again with the same state dir: enabled units come back.
Only the standard library is used.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
SYSTEMD = "/lib/systemd/systemd"
# Targets services' default dependencies name (and the one the agent's units are wanted by).
# Empty: the private unit directory holds nothing else, so systemd starts nothing but what the
# test (or the agent) writes into etc/.
TARGETS = ("multi-user", "sysinit", "basic", "shutdown", "network", "network-online", "local-fs", "sockets",
           "timers", "paths", "slices", "default")
CGROUP_PREFIX = "apprelease-test-"

RUN_SCRIPT = """#!/bin/sh
# PID 1 of a test host (hack/systemd_host.py): private units, /run, and cgroup mounts rooted
# at this cgroup namespace's root (the test's sub-cgroup), then systemd.
set -e
mount --bind "$1/units" /lib/systemd/system
mount --bind "$1/etc" /etc/systemd/system
# No generators: the sysv one would turn this machine's /etc/init.d scripts into units and
# start them (seen: dbus, postgresql).
mount --bind "$1/generators" /lib/systemd/system-generators
# A private /run, but this machine's /run/lock in it: the test hosts share this machine's
# accounts (/etc/passwd), so they must share the lock agents take to create one
# (host/users.py ACCOUNTS_LOCK); with a private one, two hosts made one user at once and
# one of them ran its app under a uid its socket dir was not made for.
mkdir -p /run/lock
mount --bind /run/lock "$1/runlock"
mount -t tmpfs -o mode=755 tmpfs /run
mkdir /run/lock
mount --bind "$1/runlock" /run/lock
mount -t tmpfs -o mode=755 tmpfs /sys/fs/cgroup
for c in $2; do mkdir /sys/fs/cgroup/$c; mount -t cgroup -o $c cgroup /sys/fs/cgroup/$c; done
mkdir /sys/fs/cgroup/systemd; mount -t cgroup -o none,name=systemd cgroup /sys/fs/cgroup/systemd
if [ "$3" = unified ]; then
  mkdir /sys/fs/cgroup/unified; mount -t cgroup2 cgroup2 /sys/fs/cgroup/unified
fi
exec {systemd} --system --unit=multi-user.target
"""

START_SCRIPT = """#!/bin/sh
# Move this process into the test's sub-cgroups, then become the namespaces' parent.
set -e
for procs in $CGROUP_PROCS; do echo $$ > "$procs"; done
exec unshare --fork --kill-child --pid --mount --cgroup --uts --ipc --mount-proc --propagation private \\
  "$STATE/run.sh" "$STATE" "$V1_CONTROLLERS" "$UNIFIED"
"""


class SystemdHostError(RuntimeError):
    """systemd did not start, did not answer, or left processes or cgroups behind."""


def mounted_hierarchies() -> dict[str, Path]:
    """{name: mount point} of the cgroup hierarchies under /sys/fs/cgroup ('unified' for v2)."""
    found: dict[str, Path] = {}
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, point, kind, options, *_ = line.split()
        if not point.startswith(str(CGROUP_ROOT) + "/"):
            continue
        if kind == "cgroup2":
            found["unified"] = Path(point)
        elif kind == "cgroup":
            opts = options.split(",")
            named = [o.removeprefix("name=") for o in opts if o.startswith("name=")]
            name = named[0] if named else Path(point).name
            found[name] = Path(point)
    return found


def own_cgroups() -> dict[str, str]:
    """{hierarchy name: this process's cgroup path in it} from /proc/self/cgroup."""
    out: dict[str, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        number, controllers, path = line.split(":", 2)
        if number == "0" and controllers == "":
            out["unified"] = path
            continue
        for controller in controllers.split(","):
            out[controller.removeprefix("name=")] = path
    return out


def _tree_procs(directory: Path) -> list[int]:
    pids: list[int] = []
    for procs in directory.rglob("cgroup.procs"):
        try:
            pids += [int(p) for p in procs.read_text().split()]
        except (FileNotFoundError, OSError):
            pass
    return pids


def _remove_tree(directory: Path) -> None:
    """rmdir a cgroup and its children, deepest first (cgroupfs dirs are removed with rmdir)."""
    if not directory.exists():
        return
    for sub in sorted((p for p in directory.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        sub.rmdir()
    directory.rmdir()


@dataclass
class SystemdHost:
    """One test host's systemd; its state dir keeps the units it enabled across reboots."""

    state_dir: Path
    name: str = field(default_factory=lambda: secrets.token_hex(4))
    start_timeout: float = 30.0
    die_with_parent: bool = True  # tests: nothing survives a killed pytest; False for `up`
    proc: subprocess.Popen[bytes] | None = None
    pid: int | None = None  # systemd's pid as this machine numbers it: the agent's --host-pid

    @property
    def cgroup_name(self) -> str:
        return CGROUP_PREFIX + self.name

    @property
    def unit_dir(self) -> Path:
        """What the host sees as /etc/systemd/system."""
        return self.state_dir / "etc"

    @property
    def log_path(self) -> Path:
        return self.state_dir / "systemd.log"

    def cgroup_dirs(self) -> dict[str, Path]:
        """The sub-cgroup of each hierarchy this host lives in (created by `start`)."""
        mine = own_cgroups()
        return {
            name: point / mine.get(name, "/").lstrip("/") / self.cgroup_name
            for name, point in mounted_hierarchies().items()
        }

    # -- life cycle ----------------------------------------------------------------------

    def start(self) -> SystemdHost:
        if self.running:
            raise SystemdHostError(f"systemd of {self.state_dir} already runs (pid {self.pid})")
        self._write_files()
        dirs = self.cgroup_dirs()
        for name, directory in dirs.items():
            directory.mkdir(exist_ok=True)
            if name == "cpuset":  # an empty cpuset cgroup cannot hold a process
                for key in ("cpuset.cpus", "cpuset.mems"):
                    (directory / key).write_text((directory.parent / key).read_text())
        hierarchies = mounted_hierarchies()
        v1 = [n for n in hierarchies if n not in ("unified", "systemd")]
        env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "STATE": str(self.state_dir),
            "CGROUP_PROCS": " ".join(str(d / "cgroup.procs") for d in dirs.values()),
            "V1_CONTROLLERS": " ".join(v1),
            "UNIFIED": "unified" if "unified" in hierarchies else "",
        }
        with self.log_path.open("ab") as out:
            out.write(f"\n==== {time.strftime('%H:%M:%S')} starting systemd\n".encode())
            out.flush()
            # setpriv: the kernel kills unshare when the caller dies, and unshare's
            # --kill-child then kills systemd, whose death ends its PID namespace.
            death = ["setpriv", "--pdeathsig", "KILL", "--"] if self.die_with_parent else []
            self.proc = subprocess.Popen(
                [*death, "sh", str(self.state_dir / "start.sh")],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            )
        try:
            self.pid = self._wait_for_pid()
            self._wait_until_answering()
        except BaseException:
            self.kill()
            raise
        self._save_state()
        return self

    def kill(self) -> None:
        """SIGKILL its PID 1 (everything in the host dies with it), wait, remove the cgroups."""
        if self.pid is None:
            self._load_state()
        if self.pid is not None and _is_systemd(self.pid):
            os.kill(self.pid, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(30)
            self.proc = None
        self.pid = None
        dirs = self.cgroup_dirs()
        deadline = time.monotonic() + 30
        while any(_tree_procs(d) for d in dirs.values() if d.exists()):
            if time.monotonic() > deadline:
                left = sorted({p for d in dirs.values() if d.exists() for p in _tree_procs(d)})
                raise SystemdHostError(f"processes {left} outlived systemd of {self.state_dir}")
            time.sleep(0.05)
        for directory in dirs.values():
            _remove_tree(directory)
        (self.state_dir / "state.json").unlink(missing_ok=True)

    def reboot(self) -> SystemdHost:
        self.kill()
        return self.start()

    @property
    def running(self) -> bool:
        return self.pid is not None and _is_systemd(self.pid)

    # -- talking to it ----------------------------------------------------------------------

    def nsenter(self) -> list[str]:
        """The prefix the DaemonSet's executor uses, with this host's PID 1."""
        if self.pid is None:
            raise SystemdHostError("systemd is not running")
        return ["nsenter", "-t", str(self.pid), "-m", "-u", "-i", "-n", "-p", "--"]

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.nsenter(), "systemctl", *args], capture_output=True, text=True, check=check,
                              timeout=60)

    def host_pids(self) -> list[int]:
        """Pids (as this machine numbers them) of every process in this host."""
        return sorted({p for d in self.cgroup_dirs().values() if d.exists() for p in _tree_procs(d)})

    # -- internals -------------------------------------------------------------------------

    def _write_files(self) -> None:
        units = self.state_dir / "units"
        units.mkdir(parents=True, exist_ok=True)
        self.unit_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "generators").mkdir(exist_ok=True)
        (self.state_dir / "runlock").mkdir(exist_ok=True)
        for target in TARGETS:
            (units / f"{target}.target").write_text(f"[Unit]\nDescription={target} (test host)\n")
        run = self.state_dir / "run.sh"
        run.write_text(RUN_SCRIPT.replace("{systemd}", SYSTEMD))
        run.chmod(0o755)
        (self.state_dir / "start.sh").write_text(START_SCRIPT)

    def _wait_for_pid(self) -> int:
        assert self.proc is not None
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemdHostError(f"systemd exited at once ({self.proc.returncode}):\n{self._log_tail()}")
            for pid in _descendants(self.proc.pid):
                if _is_systemd(pid):
                    return pid
            time.sleep(0.02)
        raise SystemdHostError(f"systemd did not start within {self.start_timeout}s:\n{self._log_tail()}")

    def _wait_until_answering(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            answer = self.systemctl("is-system-running", check=False).stdout.strip()
            if answer in ("running", "degraded"):
                return
            time.sleep(0.05)
        raise SystemdHostError(f"systemd of {self.state_dir} did not answer systemctl:\n{self._log_tail()}")

    def _log_tail(self) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-30:])
        except FileNotFoundError:
            return ""

    def _save_state(self) -> None:
        (self.state_dir / "state.json").write_text(json.dumps({"pid": self.pid, "name": self.name}))

    def _load_state(self) -> None:
        try:
            saved = json.loads((self.state_dir / "state.json").read_text())
        except FileNotFoundError:
            return
        self.pid, self.name = saved["pid"], saved["name"]


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        try:
            kids = [int(c) for c in Path(f"/proc/{parent}/task/{parent}/children").read_text().split()]
        except FileNotFoundError:
            continue
        found += kids
        todo += kids
    return found


def _is_systemd(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0] == SYSTEMD.encode()
    except (FileNotFoundError, ProcessLookupError):
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hack/systemd-host", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("up", "down", "reboot", "status"))
    parser.add_argument("--state-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    args.state_dir.mkdir(parents=True, exist_ok=True)
    host = SystemdHost(args.state_dir.resolve(), die_with_parent=False)
    host._load_state()
    if args.command == "up":
        if host.running:
            print(f"already running: pid {host.pid}")
            return 0
        host.start()
        print(f"systemd pid {host.pid}; agent: apprelease agent run --host-namespaces --host-pid {host.pid} ...")
    elif args.command == "down":
        host.kill()
    elif args.command == "reboot":
        host.reboot()
        print(f"systemd pid {host.pid}")
    else:
        print(json.dumps({"running": host.running, "pid": host.pid, "cgroups": {k: str(v) for k, v in
                                                                                host.cgroup_dirs().items()}}))
    return 0


if __name__ == "__main__":
    shutil.which("unshare") or sys.exit("unshare (util-linux) is needed")
    sys.exit(main())
