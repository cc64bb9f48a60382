"""App users, build users, and the directories they may touch.

Called by the agent before it starts a revision: `ensure_user` makes the app's dedicated
system user if it is missing, `prepare_app_dirs` sets owners and modes under the app's
directory so that only the app and nginx's workers can reach its sockets. Before a build,
`ensure_build_user` makes the app's build user (`sandbox.py` says why builds never run as
root or as the app user). Every account apprelease creates records the (namespace, app) it
belongs to in its GECOS field, so the host itself says whose it is. Users and groups
are looked up with `getent` through the executor, because in the DaemonSet the host's
/etc/passwd is not the agent container's. Files are touched directly: the agent root is
mounted at the same path.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..api import rules
from .executor import LocalExecutor
from .layout import AppPaths
from .sandbox import BuildIdentity

# getent's exit code for "no such entry".
_GETENT_NOT_FOUND = 2


class UnsafeUser(ValueError):
    """An app was asked to run as root (or as a user that is root in disguise)."""


def owner_comment(role: str, namespace: str, app: str) -> str:
    """The GECOS field of an account apprelease made: its role and the app it belongs to.

    No ':' or ',' (passwd's separators); namespace and app are DNS labels, so none can occur.
    """
    return f"apprelease {role} {namespace}/{app}"


def build_user_name(namespace: str, app: str) -> str:
    """The build user of (namespace, app): `arb-` + 12 hex digits, within useradd's 32 chars."""
    return "arb-" + hashlib.sha256(f"{namespace}/{app}".encode()).hexdigest()[:12]


def _passwd(name: str, executor: LocalExecutor) -> list[str] | None:
    return _getent("passwd", name, executor)


def _getent(database: str, name: str, executor: LocalExecutor) -> list[str] | None:
    proc = executor.run(["getent", database, name], check=False, timeout=30)
    if proc.returncode == _GETENT_NOT_FOUND:
        return None
    if proc.returncode != 0:
        raise RuntimeError(f"getent {database} {name} exited with {proc.returncode}: {proc.stdout.strip()}")
    return proc.stdout.strip().split(":")


def lookup_user(name: str, executor: LocalExecutor | None = None) -> tuple[int, int] | None:
    """(uid, primary gid) of `name` on the host, or None if there is no such user."""
    entry = _getent("passwd", name, executor or LocalExecutor())
    return None if entry is None else (int(entry[2]), int(entry[3]))


def lookup_group(name: str, executor: LocalExecutor | None = None) -> int | None:
    entry = _getent("group", name, executor or LocalExecutor())
    return None if entry is None else int(entry[2])


def _refuse_root(name: str, ids: tuple[int, int] | None) -> None:
    # Validation already forbids 'root'; this holds even when validation was bypassed,
    # and also catches another name for uid 0 (e.g. 'toor').
    if name == "root" or (ids is not None and ids[0] == 0):
        raise UnsafeUser(f"refusing to run an app as {name!r} (uid 0): apps run as a dedicated unprivileged user")


def ensure_user(name: str, executor: LocalExecutor | None = None) -> tuple[int, int]:
    """(uid, gid) of the app user `name`, created as a system user without home or shell."""
    executor = executor or LocalExecutor()
    _refuse_root(name, None)
    rules.POSIX_USER.check(name)
    ids = lookup_user(name, executor)
    if ids is None:
        proc = executor.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "--user-group", name],
            check=False,
            timeout=60,
        )
        ids = lookup_user(name, executor)
        if ids is None:  # useradd failed and nobody else created it meanwhile
            raise RuntimeError(f"useradd {name} exited with {proc.returncode}: {proc.stdout.strip()}")
    _refuse_root(name, ids)
    return ids


def ensure_build_user(namespace: str, app: str, executor: LocalExecutor | None = None) -> BuildIdentity:
    """The build user of (namespace, app), created if missing; refused if the name is someone else's."""
    executor = executor or LocalExecutor()
    name, comment = build_user_name(namespace, app), owner_comment("build", namespace, app)
    entry = _passwd(name, executor)
    if entry is None:
        proc = executor.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "--user-group",
             "--comment", comment, name],
            check=False, timeout=60,
        )  # fmt: skip
        entry = _passwd(name, executor)
        if entry is None:
            raise RuntimeError(f"useradd {name} exited with {proc.returncode}: {proc.stdout.strip()}")
    if entry[4] != comment:
        raise UnsafeUser(f"build user {name!r} exists but is not {namespace}/{app}'s ({entry[4]!r}): refusing to build as it")
    uid, gid = int(entry[2]), int(entry[3])
    _refuse_root(name, (uid, gid))
    return BuildIdentity(name, uid, gid)


def _own(path: Path, uid: int, gid: int, mode: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, uid, gid, follow_symlinks=False)
    os.chmod(path, mode)


def prepare_app_dirs(
    app: AppPaths,
    user: str,
    proxy_group: str = "www-data",
    executor: LocalExecutor | None = None,
) -> None:
    """Owners and modes of an app's directories.

    - the app dir: root's, 0755: the app user and nginx traverse it to their parts;
    - run/: the app user's, group = nginx workers' group, 0750. gunicorn makes its socket
      0777, so this directory is the guard: only the app (owner) and nginx (group) can
      reach the sockets; any other local user would otherwise bypass nginx;
    - logs/: root's (the supervisor writes them), group = the app's group, 0750: the app's
      people can read their logs, nobody but the supervisor can write or replace them.
    """
    executor = executor or LocalExecutor()
    ids = lookup_user(user, executor)
    if ids is None:
        raise RuntimeError(f"user {user!r} does not exist: call ensure_user first")
    _refuse_root(user, ids)
    uid, gid = ids
    proxy_gid = lookup_group(proxy_group, executor)
    if proxy_gid is None:
        raise RuntimeError(
            f"group {proxy_group!r} does not exist: it is nginx workers' group (Debian's nginx package creates www-data)"
        )
    _own(app.base, 0, 0, 0o755)
    _own(app.run, uid, proxy_gid, 0o750)
    _own(app.logs, 0, gid, 0o750)
