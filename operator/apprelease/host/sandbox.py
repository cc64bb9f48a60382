"""Running a tenant's build without root: the command line that confines one build.

Called by `builder` for every command that may run package code (venv creation, installs,
which run sdist build backends, and the gunicorn probe, which imports the venv's packages).
The agent is root; an AppRelease author is not to be trusted, so each build runs:

- as the app's **build user** (`users.ensure_build_user`: one per (namespace, app), never
  the app user and never shared), with no supplementary groups, no capabilities and
  `no_new_privs` (a setuid binary cannot give root back) — so ordinary file permissions stop
  it from writing anything but its own temp build dir and its own cache;
- in its own **PID namespace**: when the build command exits, the kernel kills whatever it
  left running (a daemon forked by a setup.py cannot linger and rewrite the venv after the
  agent has sealed it);
- in its own **mount namespace** with fresh tmpfs on /tmp, /var/tmp and /dev/shm: the
  world-writable places of the host are neither readable nor writable from a build, and
  nothing a build leaves there outlives it.

`unshare` and `setpriv` (util-linux) do it; both exist on any Debian/Ubuntu/RHEL host, and
through `nsenter` the DaemonSet agent runs the same command line on its host.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# Size cap of each private tmpfs: a build's temp files count against memory, not the disk.
TMPFS_SIZE = "2g"
PRIVATE_DIRS = ("/tmp", "/var/tmp", "/dev/shm")

# Runs as root inside the new namespaces, before dropping to the build user. Arguments come
# through "$@" (the paths to carry, "--", the command), never through the script text: no
# value is ever parsed by the shell. A path under a private dir (an agent root under /tmp, as
# in tests) is bind-mounted aside first and back onto its own path inside the fresh tmpfs.
# umask 022: the parents made there must let the build user through whatever the agent's
# umask; what the build writes is sealed (modes normalized) afterwards anyway.
_MOUNTS = rf"""set -e
umask 022
opts="mode=1777,nosuid,nodev,size={TMPFS_SIZE}"
mount -t tmpfs -o "$opts" apprelease-build /dev/shm
mkdir /dev/shm/.carry
n=0
while [ "$1" != "--" ]; do
  n=$((n+1)); mkdir "/dev/shm/.carry/$n"; mount --rbind "$1" "/dev/shm/.carry/$n"; eval "carry_$n=\$1"; shift
done
shift
for d in /tmp /var/tmp; do [ -d "$d" ] && mount -t tmpfs -o "$opts" apprelease-build "$d"; done
i=0
while [ "$i" -lt "$n" ]; do
  i=$((i+1)); eval "p=\$carry_$i"; mkdir -p "$p"; mount --rbind "/dev/shm/.carry/$i" "$p"; umount -l "/dev/shm/.carry/$i"
done
exec "$@"
"""


def carried(paths: Sequence[Path]) -> list[str]:
    """Of the paths a build needs, those a private tmpfs would hide (so they must be carried)."""
    out = []
    for path in paths:
        path = Path(path)
        if Path("/dev/shm") in (path, *path.parents):
            raise ValueError(f"{path}: a build cannot use a path under /dev/shm")
        if any(Path(d) in (path, *path.parents) for d in PRIVATE_DIRS):
            out.append(str(path))
    return out


@dataclass(frozen=True)
class BuildIdentity:
    """Who a build runs as: the app's build user."""

    user: str
    uid: int
    gid: int


def confine(argv: Sequence[str], identity: BuildIdentity, visible: Sequence[Path] = ()) -> list[str]:
    """`argv` run as `identity`, in fresh PID and mount namespaces with private temp dirs.

    `visible`: paths the build needs (its build dir, its cache, uv) that must stay where they
    are even if they lie under /tmp or /var/tmp.
    """
    if identity.uid == 0 or identity.gid == 0:
        raise ValueError(f"refusing to run a build as uid/gid 0 ({identity.user})")
    return [
        "unshare", "--pid", "--fork", "--kill-child", "--mount-proc", "--propagation", "private", "--",
        "/bin/sh", "-c", _MOUNTS, "apprelease-build", *carried(visible), "--",
        "setpriv", f"--reuid={identity.uid}", f"--regid={identity.gid}", "--clear-groups",
        "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all", "--",
        *argv,
    ]  # fmt: skip
