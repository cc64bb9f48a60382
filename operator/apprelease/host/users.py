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


OWNER_PREFIX = "apprelease "


def owner_comment(role: str, namespace: str, app: str) -> str:
    """The GECOS field of an account apprelease made: its role and the app it belongs to.

    No ':' or ',' (passwd's separators); namespace and app are DNS labels, so none can occur.
    """
    return f"{OWNER_PREFIX}{role} {namespace}/{app}"


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


def refusal(name: str, gecos: str | None, *, namespace: str, app: str,
            allowed_existing: frozenset[str] = frozenset(), reserved: frozenset[str] = frozenset(),
            ran_this_app: bool = False) -> str | None:
    """Why (namespace, app) may not run as `name`, or None when it may. Pure.

    `gecos` is the account's GECOS field, None when there is no such account (apprelease
    will create it). An account is this app's when apprelease recorded it for this app; one
    recorded for another app, or one apprelease did not create, is refused unless the host's
    admin allowed it for this namespace (`allowed_existing`). `reserved` accounts (nginx's
    workers: they may enter every app's socket directory) are refused always.

    `ran_this_app`: the host shows this app already ran as this account (its socket dir is
    the account's): an account an apprelease before owner records made for it, adopted so an
    upgrade does not stop every app.
    """
    mine = owner_comment("app", namespace, app)
    if name in reserved:
        return (f"user {name!r} is the proxy's (nginx's workers may enter every app's socket directory): "
                "an app never runs as it; leave spec.user empty for a user of the app's own")
    if gecos is None or gecos == mine:
        return None
    if gecos.startswith(OWNER_PREFIX):
        owner = gecos.rsplit(" ", 1)[-1]
        return (f"user {name!r} belongs to {owner} on this host (apprelease created it for that app); "
                "two apps never share a user: name another one or leave spec.user empty")
    if name in allowed_existing or ran_this_app:
        return None
    return (f"user {name!r} already exists on this host and was not created by apprelease for {namespace}/{app}: "
            "apps run as their own user, so leave spec.user empty or name a new one "
            f"(a cluster admin can allow an existing account for namespace {namespace})")


def ensure_user(name: str, executor: LocalExecutor | None = None, *, namespace: str, app: str,
                allowed_existing: frozenset[str] = frozenset(), reserved: frozenset[str] = frozenset(),
                app_dirs: AppPaths | None = None) -> tuple[int, int]:
    """(uid, gid) of the app user `name` of (namespace, app), created as a system user without
    home or shell and recorded as that app's; `UnsafeUser` when the app may not use it.

    `app_dirs`: the app's directories on this host, the evidence that it ran as `name` before
    apprelease recorded owners (see `refusal`); such an account is recorded now.
    """
    executor = executor or LocalExecutor()
    _refuse_root(name, None)
    rules.POSIX_USER.check(name)
    entry = _passwd(name, executor)
    gecos = entry[4] if entry else None
    # What an apprelease before owner records made (useradd --system, no GECOS, nologin), and
    # this app's socket dir is its: adopt it. Never a service's account (GECOS, a shell).
    legacy = (entry is not None and app_dirs is not None and gecos == "" and entry[6] == "/usr/sbin/nologin"
              and _owned_by(app_dirs.run, int(entry[2])))
    why = refusal(name, gecos, namespace=namespace, app=app, allowed_existing=allowed_existing, reserved=reserved,
                  ran_this_app=legacy)
    if why:
        raise UnsafeUser(why)
    if legacy:
        executor.run(["usermod", "--comment", owner_comment("app", namespace, app), name], timeout=60)
    if entry is None:
        entry = _create_account(name, owner_comment("app", namespace, app), executor)
        why = refusal(name, entry[4], namespace=namespace, app=app, reserved=reserved)
        if why:  # someone else made it for another app between our look and our lock
            raise UnsafeUser(why)
    ids = (int(entry[2]), int(entry[3]))
    _refuse_root(name, ids)
    return ids


# Held around "create unless it exists": two useradd runs for one name at once (two agents on
# one machine, as in the tests) both passed useradd's own existence check and left the first
# caller with a uid the second had replaced (seen here: its socket dir owned by a dead uid).
ACCOUNTS_LOCK = "/run/lock/apprelease-accounts.lock"
_CREATE_UNLESS_EXISTS = 'getent passwd "$1" >/dev/null || exec useradd --system --no-create-home ' \
                        '--shell /usr/sbin/nologin --user-group --comment "$2" "$1"'


def _create_account(name: str, comment: str, executor: LocalExecutor) -> list[str]:
    """The passwd entry of `name`, created as a system user recording `comment` unless it exists."""
    proc = executor.run(["flock", ACCOUNTS_LOCK, "sh", "-c", _CREATE_UNLESS_EXISTS, "create-account", name, comment],
                        check=False, timeout=60)
    entry = _passwd(name, executor)
    if entry is None:
        raise RuntimeError(f"useradd {name} exited with {proc.returncode}: {proc.stdout.strip()}")
    return entry


def _owned_by(path: Path, uid: int) -> bool:
    try:
        return path.lstat().st_uid == uid
    except FileNotFoundError:
        return False


def remove_accounts(namespace: str, app: str, executor: LocalExecutor | None = None) -> list[str]:
    """Delete the accounts apprelease made for (namespace, app) (its app and build users).

    Called when the app leaves the host; an account still in use is kept (userdel refuses)
    and removed at the next removal. Returns the names removed.
    """
    executor = executor or LocalExecutor()
    listing = executor.run(["getent", "passwd"], check=False, timeout=30).stdout
    ours = {owner_comment(role, namespace, app) for role in ("app", "build")}
    removed = []
    for line in listing.splitlines():
        fields = line.split(":")
        if len(fields) >= 5 and fields[4] in ours and fields[2] != "0":
            if executor.run(["userdel", fields[0]], check=False, timeout=60).returncode == 0:
                removed.append(fields[0])
    return removed


def ensure_build_user(namespace: str, app: str, executor: LocalExecutor | None = None) -> BuildIdentity:
    """The build user of (namespace, app), created if missing; refused if the name is someone else's."""
    executor = executor or LocalExecutor()
    name, comment = build_user_name(namespace, app), owner_comment("build", namespace, app)
    entry = _passwd(name, executor)
    if entry is None:
        entry = _create_account(name, comment, executor)
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
