"""The release store: one immutable virtualenv per buildId under `apps/<key>/releases/`.

Called by the agent's reconcile core: `ensure_release` is step 1 of a rotation (make sure the
venv for the spec's buildId exists), `list_releases` + `remove_release`
are the garbage collection after it (which releases go is `plan.collectable`'s choice), and `remove_temp_builds` clears what a
crashed build left behind (at agent start, when no build of the app runs).

The one invariant: `releases/<buildId>` exists only when it is complete. A build happens in
`releases/.tmp-<buildId>-<random>/` and is renamed into place as its last step; a removal
renames to a `.tmp-` name first. So an existing release directory is reused without running
anything, which is what makes a rollback take about a second.

A warm build is on a rotation's critical path, so it does only what it must (measured in
bench/venv_build.py): uv builds from requirements resolve once per buildId and host and keep
the answer as a lock (host/locks.py: root-owned `locks/<buildId>.txt`, recorded in
release.json with its digest); every later build of that buildId installs exactly the
lock's files, offline from the app's cache when it has them (`uv pip sync --require-hashes
--offline`, online with the same hashes when not). The empty venv is a copy of a relocatable
template uv made once per interpreter; the interpreter's probe is remembered by its file's
identity; bytecode is compiled after the switch (host/bytecode.py), not here; one syncfs of
the releases' file system flushes the build before the rename.

Builds ignore the host's pip/uv configuration (config files and PIP_*/UV_* variables) so the
same spec builds the same venv on every host. Every command that may run package code runs
confined as the app's build user (`sandbox.confine`), writing only its temp build dir and the
app's own cache; the agent then seals the result (root-owned, read-only for everyone else)
before renaming it into place. After sealing, the versions of the server packages (gunicorn,
uvicorn, uvicorn-worker, setuptools) are read from the venv's metadata — nothing from the venv
runs as root — checked (`servers.check_gunicorn`: gunicorn >= 20.1) and recorded in
release.json: the gunicorn command line depends on them (`server_software` reads them back,
or detects them in releases built before they were recorded). Apps run as `<venv>/bin/python -m gunicorn`,
never through console-script shebangs, which is why a venv built under a temp name stays
valid after the rename.

Pure helpers (commands, environment, GC choice) come first; functions touching the
filesystem, the network or processes follow.
"""

from __future__ import annotations

import email.parser
import errno
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import stat
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, unquote, urlsplit

from ..api import identity
from ..api.models import HostReleaseSpec
from . import servers
from .executor import CommandFailed, LocalExecutor
from . import locks
from .files import fsync_dir, syncfs
from .layout import BYTECODE_RECORD, TMP_PREFIX, AppPaths, HostLayout
from .sandbox import BuildIdentity, confine
from .servers import ServerSoftware

log = logging.getLogger(__name__)

Tool = Literal["uv", "pip"]

DEFAULT_PYTHON_SEARCH_PATH = ("/usr/local/bin", "/usr/bin", "/bin")
LOG_TAIL_LINES = 30
RELEASE_RECORD = "release.json"
DOWNLOAD_DIR = "download"
LOCKS_KEPT = 100  # per app; each a few hundred bytes (host/locks.py)
BUILD_HOME = ".home"  # HOME of the build user during a build; removed before sealing
# Environment variables that would make a build depend on the host rather than the spec.
AMBIENT_PREFIXES = ("PIP_", "UV_", "PYTHON", "VIRTUAL_ENV", "CONDA_")
# Printed by each candidate interpreter: proves it runs (as root, here) and tells its version.
PROBE = "import platform, sys; print('%d.%d' % sys.version_info[:2], platform.python_version())"
# How uv says a package has only a source distribution while builds from source are off
# (`--only-binary :all:`): "Because evilpkg==1.0 has no usable wheels …" and "Wheels are
# required for `evilpkg` …". pip's message does not tell this from a missing package.
_SDIST_ONLY = re.compile(r"Because ([A-Za-z0-9][A-Za-z0-9._-]*?)(?:[=<>!~ ]\S*)? has no (?:usable )?wheels|"
                         r"Wheels are required for `([^`]+)`")
# Distributions whose versions decide the server's command line (servers.ServerSoftware).
SERVER_DISTRIBUTIONS = {
    "gunicorn": "gunicorn", "uvicorn": "uvicorn", "uvicorn_worker": "uvicorn-worker", "setuptools": "setuptools",
}  # fmt: skip


class BuildFailed(RuntimeError):
    """A venv could not be built; `log_tail` is the end of the uv/pip output, for status."""

    def __init__(self, build_id: str, reason: str, log_tail: str = ""):
        self.build_id = build_id
        self.reason = reason
        self.log_tail = log_tail
        super().__init__(f"build {build_id} failed: {reason}" + (f"\n{log_tail}" if log_tail else ""))


@dataclass(frozen=True)
class BuildResult:
    build_id: str
    path: Path  # releases/<buildId>
    reused: bool  # True when the release existed: nothing was run or downloaded
    seconds: float
    tool: Tool | None  # None when reused
    log_tail: str


@dataclass(frozen=True)
class ReleaseRecord:
    build_id: str
    created: datetime  # when the build finished (release.json), UTC


# ---------------------------------------------------------------------------- pure helpers


def clean_build_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment for build commands: the host's, minus pip/uv/Python settings.

    PATH, HOME, locale and proxy variables stay (a host may need its proxy to reach the
    index); pip additionally gets PIP_CONFIG_FILE=/dev/null, which makes it skip every
    config file, including the global one that `--isolated` still reads.
    """
    env = {k: v for k, v in environ.items() if not k.startswith(AMBIENT_PREFIXES)}
    env["PIP_CONFIG_FILE"] = os.devnull
    return env


def interpreter_candidates(python: str, search_path: Sequence[str]) -> list[Path]:
    """`python<X.Y>` in each directory of `search_path`, in order.

    Not $PATH: here (and on many hosts) a pyenv shim comes first there, whose interpreter
    lives in root's home (mode 700) and cannot be executed by the app's user.
    """
    return [Path(directory) / f"python{python}" for directory in search_path]


def venv_command(tool: Tool, interpreter: Path, venv: Path, *, uv: str | None, cache_dir: Path) -> list[str]:
    if tool == "uv":
        assert uv is not None
        return [
            uv, "venv", "--no-config", "--relocatable", "--no-python-downloads",
            "--python-preference", "only-system", "--python", str(interpreter),
            "--cache-dir", str(cache_dir), str(venv),
        ]  # fmt: skip
    return [str(interpreter), "-m", "venv", str(venv)]


def install_command(
    tool: Tool,
    venv: Path,
    *,
    uv: str | None,
    cache_dir: Path,
    index_url: str | None,
    wheel_file: Path | None,
    requirements: Sequence[str],
    only_binary: bool = False,
) -> list[str]:
    """The one install command; without an index URL the tool's default index (PyPI) is used."""
    python = str(venv / "bin" / "python")
    if tool == "uv":
        assert uv is not None
        argv = [uv, "pip", "install", "--no-config", "--python", python, "--cache-dir", str(cache_dir)]
        # No --compile-bytecode: bytecode is compiled after the release serves (host/bytecode.py).
        argv += ["--no-progress"]
        # Copies, not hardlinks: a hardlinked file is the cache's inode, which the build user
        # could rewrite after the agent sealed the venv (and sealing would chown the cache).
        argv += ["--link-mode", "copy"]
    else:
        argv = [python, "-m", "pip", "install", "--isolated", "--no-input", "--disable-pip-version-check"]
        argv += ["--no-warn-script-location", "--progress-bar", "off", "--cache-dir", str(cache_dir)]
    if only_binary:
        argv += ["--only-binary", ":all:"]
    if index_url:
        argv += ["--index-url", index_url]
    if wheel_file is not None:
        argv.append(str(wheel_file))
    argv += list(requirements)
    return argv


def wheel_filename(url: str) -> str:
    """The file name a wheel URL names; installers read name and version from it."""
    name = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    if not name.endswith(".whl") or "/" in name or name.startswith("."):
        raise ValueError(f"{url} does not name a .whl file")
    return name


def tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


# uv's summary lines (printed with --no-progress too, one per stage, as each stage ends).
_UV_STAGE = re.compile(r"^(Resolved|Prepared|Installed|Audited) (\d+) packages?\b")
_PIP_INSTALLING = re.compile(r"^Installing collected packages: (.+)$")


def build_stage(tool: Tool, line: str) -> str | None:
    """What a build is doing next, judged from one line of uv's or pip's output; None when the
    line says nothing about it. Status shows it while the `install` command runs.

    uv prints one summary line per stage, not per package (its per-package output is DEBUG
    logging, not something to parse), so uv builds say "downloading" without n/N; pip names
    each file it downloads.
    """
    if tool == "uv":
        found = _UV_STAGE.match(line)
        if not found:
            return None
        word, count = found.group(1), int(found.group(2))
        return {
            "Resolved": f"resolved {count} package{'s' * (count != 1)}; downloading what the cache lacks",
            "Prepared": f"installing {count} package{'s' * (count != 1)}",
            "Installed": f"installed {count} package{'s' * (count != 1)}",
            "Audited": "nothing to install",
        }[word]
    if line.startswith("Collecting "):
        return f"resolving: {line.removeprefix('Collecting ').strip()}"
    if line.strip().startswith("Downloading "):
        return f"downloading {line.strip().removeprefix('Downloading ').split(' ')[0].rsplit('/', 1)[-1]}"
    found = _PIP_INSTALLING.match(line)
    if found:
        count = len(found.group(1).split(","))
        return f"installing {count} package{'s' * (count != 1)}"
    return None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


# ----------------------------------------------------------------------------- the build


@dataclass
class _BuildLog:
    """Everything the build commands printed, each command introduced by its argv.

    `secrets` (the index credentials) are replaced by **** in everything added, raw and
    URL-quoted, so no credential reaches release.json, a status or a log line."""

    text: str = ""
    secrets: tuple[str, ...] = ()

    def _scrub(self, text: str) -> str:
        return redact(text, self.secrets)

    def add(self, argv: Sequence[str], output: str) -> None:
        self.text += self._scrub(f"$ {' '.join(argv)}\n{output}")
        if output and not output.endswith("\n"):
            self.text += "\n"

    def note(self, line: str) -> None:
        self.text += self._scrub(f"# {line}\n")

    def tail(self) -> str:
        return tail(self.text)


def redact(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        if secret:
            for form in {secret, quote(secret, safe="")}:
                text = text.replace(form, "****")
    return text


def index_url_with_credentials(index_url: str, username: str, password: str) -> str:
    """`index_url` with basic-auth credentials in its netloc (URL-quoted), as uv reads them."""
    parts = urlsplit(index_url)
    host = parts.netloc.rsplit("@", 1)[-1]
    netloc = f"{quote(username, safe='')}:{quote(password, safe='')}@{host}"
    return parts._replace(netloc=netloc).geturl()


@dataclass(frozen=True)
class Interpreter:
    """The host's python<X.Y> a venv is made from."""

    path: Path
    minor: str  # "3.11"
    full: str  # "3.11.2"


def ensure_release(
    layout: HostLayout,
    key: str,
    spec: HostReleaseSpec,
    executor: LocalExecutor,
    *,
    uv: str | None,
    identity: BuildIdentity | None,
    python_search_path: Sequence[str] = DEFAULT_PYTHON_SEARCH_PATH,
    timeout: float = 900,
    on_stage: Callable[[str], None] | None = None,
    index_auth: tuple[str, str] | None = None,
) -> BuildResult:
    """Make sure `releases/<spec.build_id>` exists and is complete; build it if not.

    With `uv` (path of the uv binary) the venv is made by uv with the app's own cache
    (`cache/uv` under the app); with `uv=None` by `python -m venv` and pip. Both run as
    `identity`, the app's build user. Raises `BuildFailed`, leaving no trace in `releases/`
    but the app's cache. `on_stage` hears what a real build is doing ("resolving",
    "installing 2 packages", ...); a reused release says nothing.

    `index_auth` (user, password) logs in to source.indexUrl for this build only: uv gets them
    in its environment (UV_DEFAULT_INDEX, readable by the build user and root only, never on a
    command line every local user can read, never in a file), and they are scrubbed from the
    build log. pip takes credentials only on its command line, so it is refused then.
    """
    started = time.monotonic()
    paths = layout.app(key)
    build_id = spec.build_id
    final = paths.release(build_id)
    if final.is_dir():
        return BuildResult(build_id, final, True, time.monotonic() - started, None, "")
    if identity is None:
        raise ValueError("a build needs a build identity (users.ensure_build_user): builds never run as root")

    tool: Tool = "uv" if uv else "pip"
    if index_auth is not None and not uv:
        raise BuildFailed(build_id, "source.indexCredentials needs uv on the host: pip takes credentials only on "
                                    "its command line, which every local user can read")
    if uv:
        uv = tool_for_build_users(layout, uv)
    started_at = _now()
    _make_dirs(paths.releases)
    tmp = paths.releases / f"{TMP_PREFIX}{build_id}-{secrets.token_hex(4)}"
    os.mkdir(tmp, 0o700)
    build_log = _BuildLog(secrets=tuple(index_auth) if index_auth else ())
    try:
        os.chown(tmp, identity.uid, identity.gid)
        interpreter, software, locked = _build_into(
            tmp, paths, spec, executor, build_log, uv=uv, identity=identity, venv_cache=layout.venv_cache,
            search_path=python_search_path,
            timeout=timeout, on_stage=on_stage or (lambda _: None), index_auth=index_auth,
        )
        record = release_document(
            spec,
            tool,
            interpreter,
            software,
            built_as=identity.user,
            started_at=started_at,
            finished_at=_now(),
            seconds=time.monotonic() - started,
            log_tail=build_log.tail(),
            locked=locked,
        )
        write_record(tmp, record)
        if tool == "pip":  # pip compiled at install, as the build user: nothing left for after the switch
            write_record(tmp, {"ok": True, "by": "pip install"}, BYTECODE_RECORD)
        _keep_lock(paths, build_id, locked)
        reused = _publish(tmp, final)
    except BaseException as exc:
        _discard(tmp, exc)
        raise
    return BuildResult(build_id, final, reused, time.monotonic() - started, tool, build_log.tail())


def _build_into(
    tmp: Path,
    paths: AppPaths,
    spec: HostReleaseSpec,
    executor: LocalExecutor,
    build_log: _BuildLog,
    *,
    uv: str | None,
    identity: BuildIdentity,
    venv_cache: Path,
    search_path: Sequence[str],
    timeout: float,
    on_stage: Callable[[str], None],
    index_auth: tuple[str, str] | None = None,
) -> tuple[Interpreter, ServerSoftware, Locked | None]:
    build_id = spec.build_id
    tool: Tool = "uv" if uv else "pip"
    env = clean_build_env(os.environ)
    # The interpreter probe runs the host's python, not the tenant's code: root may run it.
    on_stage(f"finding python{spec.python}")
    interpreter = find_interpreter(spec.python, search_path, executor, env, build_id=build_id)
    build_log.note(f"interpreter {interpreter.path} (Python {interpreter.full})")

    # Making the venv runs only the host's interpreter (no package of the tenant's yet), so root
    # does it, with a cache only root uses, before anything of the build user runs; the build
    # user then gets the empty venv to install into. It saves a sandbox per build.
    venv = tmp / "venv"
    on_stage(f"creating the venv (Python {interpreter.full})")
    _make_dirs(venv_cache)
    os.chmod(venv_cache, 0o700)
    root_env = {**env, "HOME": str(venv_cache)}
    if uv:
        template = _venv_template(interpreter, executor, root_env, build_log, uv=uv, venv_cache=venv_cache,
                                  build_id=build_id, timeout=timeout)
        shutil.copytree(template, venv, symlinks=True)
        build_log.note(f"venv copied from {template}")
    else:
        _run_step(executor, venv_command(tool, interpreter.path, venv, uv=uv, cache_dir=venv_cache), root_env,
                  build_log, build_id=build_id, tool=tool, timeout=timeout, on_line=lambda _: None)
    _give(venv, identity)

    env["HOME"] = str(tmp / BUILD_HOME)
    env.pop("TMPDIR", None)  # the sandbox's private /tmp
    _make_owned_dir(paths.build_cache, identity)
    _make_owned_dir(tmp / BUILD_HOME, identity)
    cache_dir = paths.build_cache / tool

    wheel_file = None
    if spec.source.wheel is not None:
        on_stage(f"downloading {wheel_filename(spec.source.wheel.url)}")
        wheel_file = download_wheel(
            spec.source.wheel.url, spec.source.wheel.sha256, tmp / DOWNLOAD_DIR, build_id=build_id
        )

    index_url = spec.source.index_url
    install_env = env
    if index_auth is not None and index_url:
        # The index with its credentials through the environment, not argv (/proc/*/cmdline is
        # world-readable); --index-url is then left out, or it would win over it.
        install_env = {**env, "UV_DEFAULT_INDEX": index_url_with_credentials(index_url, *index_auth)}
        index_url = None
    install = install_command(
        tool,
        venv,
        uv=uv,
        cache_dir=cache_dir,
        index_url=index_url,
        wheel_file=wheel_file,
        requirements=spec.source.requirements or [],
        only_binary=bool(spec.source.only_binary),
    )

    def on_line(line: str) -> None:
        stage = build_stage(tool, line)
        if stage:
            on_stage(stage)

    visible = [tmp, paths.build_cache, *([Path(uv).parent] if uv else [])]
    locked = None
    if uv and wheel_file is None:
        locked = _install_locked(
            tmp, venv, paths, spec, executor, build_log, uv=uv, identity=identity, cache_dir=cache_dir,
            index_url=index_url, env=install_env, visible=visible, timeout=timeout, on_stage=on_stage, on_line=on_line,
        )
    else:  # pip, or a wheel by URL (a lock would name the build's temp path): resolve each build
        on_stage("resolving the requirements")
        _run_step(executor, confine(install, identity, visible), install_env, build_log, build_id=build_id, tool=tool,
                  timeout=timeout, on_line=on_line, only_binary=bool(spec.source.only_binary))

    seal(tmp)  # the build's processes are gone: from here on only root touches the tree
    on_stage("checking the server packages")
    if wheel_file is not None:
        shutil.rmtree(tmp / DOWNLOAD_DIR)
    site_packages = Path("venv") / "lib" / f"python{interpreter.minor}" / "site-packages"
    if not _real_dir(tmp, site_packages):
        raise BuildFailed(build_id, f"the venv has no {site_packages} (or it is a symlink)", build_log.tail())
    software = detect_server_software(tmp / site_packages)
    build_log.note(", ".join(f"{name} {version or 'not installed'}" for name, version in software.record().items()))
    try:
        servers.check_gunicorn(software)
    except servers.UnsupportedServer as exc:
        raise BuildFailed(build_id, str(exc), build_log.tail()) from None
    # Relative, so it stays right after the rename; nginx serves static paths through it.
    os.symlink(site_packages, tmp / "site-packages")
    return interpreter, software, locked


@dataclass(frozen=True)
class Locked:
    """What a uv build installed: the lock's canonical text, and how the build got it."""

    text: str
    source: Literal["resolved", "stored"]  # resolved by this build, or the host's lock of the buildId
    offline: bool  # installed from the app's cache alone, no index request
    staged: Path | None  # a freshly resolved lock, renamed to locks/<buildId>.txt once the build is complete

    @property
    def digest(self) -> str:
        return locks.lock_digest(self.text)


def _install_locked(
    tmp: Path,
    venv: Path,
    paths: AppPaths,
    spec: HostReleaseSpec,
    executor: LocalExecutor,
    build_log: _BuildLog,
    *,
    uv: str,
    identity: BuildIdentity,
    cache_dir: Path,
    index_url: str | None,
    env: Mapping[str, str],
    visible: list[Path],
    timeout: float,
    on_stage: Callable[[str], None],
    on_line: Callable[[str], None],
) -> Locked:
    """Install the buildId's lock: the host's, offline first; else resolve once and keep it.

    The lock lives in `locks/` (root's, outside the build dir, carried into the sandbox read
    only): the build user reads it and cannot change it. An unreadable stored lock is
    resolved again; a stored lock the index no longer satisfies fails the build, naming the
    lock (the same buildId must install the same bytes; delete the lock to resolve anew).
    """
    build_id = spec.build_id
    only_binary = bool(spec.source.only_binary)
    _make_dirs(paths.locks)
    visible = [*visible, paths.locks]
    stored = read_stored_lock(paths, build_id, build_log)
    staged = None
    if stored is None:
        on_stage("resolving the requirements")
        token = secrets.token_hex(4)
        requirements = paths.locks / f"{TMP_PREFIX}{build_id}-{token}.in"
        _write_root_file(requirements, "".join(f"{r}\n" for r in spec.source.requirements or []))
        output = Path(BUILD_HOME) / "resolved.txt"
        argv = locks.resolve_command(uv, venv, cache_dir=cache_dir, index_url=index_url, only_binary=only_binary,
                                     requirements_file=requirements, output=tmp / output)
        try:
            _run_step(executor, confine(argv, identity, visible), env, build_log, build_id=build_id, tool="uv",
                      timeout=timeout, on_line=on_line, only_binary=only_binary)
        finally:
            requirements.unlink(missing_ok=True)
        try:
            text = locks.format_lock(locks.parse_lock(_read_build_file(tmp, output)))
        except (OSError, UnicodeDecodeError, locks.BadLock) as exc:
            raise BuildFailed(build_id, f"uv's resolution is not a usable lock: {exc}", build_log.tail()) from None
        staged = paths.locks / f"{TMP_PREFIX}{build_id}-{token}.txt"
        _write_root_file(staged, text)
        lock_file = staged
    else:
        text, lock_file = stored, paths.lock(build_id)
        build_log.note(f"installing the lock of {build_id} ({locks.lock_digest(text)})")
    count = len(text.splitlines())
    offline = stored is not None
    if offline:
        on_stage(f"installing {count} locked package{'s' * (count != 1)} from the cache")

    def on_sync_line(line: str) -> None:
        if not line.startswith("Resolved "):  # the lock's own entries: nothing was resolved
            on_line(line)

    try:
        argv = locks.sync_command(uv, venv, cache_dir=cache_dir, index_url=index_url, lock_file=lock_file,
                                  offline=offline, only_binary=only_binary)
        try:
            _run_step(executor, confine(argv, identity, visible), env, build_log, build_id=build_id, tool="uv",
                      timeout=timeout, on_line=on_sync_line, only_binary=only_binary)
        except BuildFailed:
            if not offline:
                raise
            offline = False
            build_log.note("the app's cache lacks files of the lock: installing them from the index")
            on_stage(f"downloading the locked packages the cache lacks ({count})")
            argv = locks.sync_command(uv, venv, cache_dir=cache_dir, index_url=index_url, lock_file=lock_file,
                                      offline=False, only_binary=only_binary)
            try:
                _run_step(executor, confine(argv, identity, visible), env, build_log, build_id=build_id, tool="uv",
                          timeout=timeout, on_line=on_sync_line, only_binary=only_binary)
            except BuildFailed as exc:
                raise BuildFailed(build_id, f"{exc.reason} installing the lock {paths.lock(build_id)}: the index no "
                                  "longer serves what it names (remove the file to resolve the requirements again)",
                                  exc.log_tail) from exc
    except BaseException:
        if staged is not None:
            staged.unlink(missing_ok=True)
        raise
    return Locked(text, "resolved" if stored is None else "stored", offline, staged)


def read_stored_lock(paths: AppPaths, build_id: str, build_log: _BuildLog) -> str | None:
    """The host's lock of `build_id` in canonical form; None when there is none or it is unusable."""
    try:
        text = paths.lock(build_id).read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        build_log.note(f"the stored lock of {build_id} is unreadable ({exc}): resolving again")
        return None
    try:
        return locks.format_lock(locks.parse_lock(text))
    except locks.BadLock as exc:
        build_log.note(f"the stored lock of {build_id} is not usable ({exc}): resolving again")
        return None


def _read_build_file(top: Path, relative: Path, limit: int = locks.MAX_LOCK_BYTES) -> str:
    """A regular file the build user wrote under `top`, read by root without following any link.

    Every directory on the way is opened with O_NOFOLLOW (the build user owned them and could
    have made one a link to /root), the file too, non-blocking (a FIFO must not hang the agent).
    """
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        for part in relative.parts[:-1]:
            child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = child
        file_fd = os.open(relative.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
    finally:
        os.close(fd)
    with os.fdopen(file_fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(file_fd).st_mode):
            raise OSError(errno.EINVAL, f"{relative} is not a regular file")
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise OSError(errno.EFBIG, f"{relative} is larger than {limit} bytes")
    return data.decode()


def _write_root_file(path: Path, text: str) -> None:
    """A root-owned 0644 file written whole under a new name (never through a link, never an existing file)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w") as out:
        os.fchmod(fd, 0o644)
        out.write(text)


def _keep_lock(paths: AppPaths, build_id: str, locked: Locked | None) -> None:
    """A freshly resolved lock becomes the host's lock of the buildId (the build is complete).

    Locks outlive their releases (a rebuild after GC is the warm path), so the oldest go once
    an app has more than LOCKS_KEPT: a buildId that old builds cold again if it ever returns.
    """
    if locked is None or locked.staged is None:
        return
    os.replace(locked.staged, paths.lock(build_id))
    stored = [p for p in paths.locks.glob("*.txt") if not p.name.startswith(TMP_PREFIX)]
    if len(stored) > LOCKS_KEPT:
        by_age = sorted(stored, key=lambda p: (p.stat().st_mtime_ns, p.name))
        for old in by_age[: len(stored) - LOCKS_KEPT]:
            if old != paths.lock(build_id):
                old.unlink(missing_ok=True)


def _run_step(
    executor: LocalExecutor,
    argv: list[str],
    env: Mapping[str, str],
    build_log: _BuildLog,
    *,
    build_id: str,
    tool: Tool,
    timeout: float,
    on_line: Callable[[str], None],
    only_binary: bool = False,
) -> None:
    shown = unconfined(argv)
    try:
        proc = executor.run(argv, env=env, timeout=timeout, on_line=on_line)
    except CommandFailed as exc:
        build_log.add(shown, exc.output)
        reason = f"{tool}: {Path(shown[0]).name} exited with {exc.returncode}"
        sdists = sdist_only_packages(exc.output) if only_binary else []
        if sdists:
            reason = (f"source.onlyBinary is set but {', '.join(sdists)} has no wheel for this host "
                      "(only a source distribution, whose build would run its code): publish a wheel or unset onlyBinary")
        raise BuildFailed(build_id, reason, build_log.tail()) from exc
    except subprocess.TimeoutExpired as exc:
        output = exc.output.decode(errors="replace") if isinstance(exc.output, bytes) else (exc.output or "")
        build_log.add(shown, output)
        raise BuildFailed(build_id, f"{tool}: timed out after {timeout:g}s", build_log.tail()) from exc
    except FileNotFoundError as exc:
        raise BuildFailed(build_id, f"{tool}: {argv[0]} not found") from exc
    build_log.add(shown, proc.stdout)


# Facts of the host's interpreters, by what they are on disk (_fingerprint): the agent is
# long-running and every build asked the same python the same question (~15 ms of a warm build).
_PROBED: dict[tuple[object, ...], Interpreter] = {}


def _fingerprint(executor: LocalExecutor, path: Path | str) -> tuple[object, ...] | None:
    """What identifies a file's content without reading it (its target's, for a link); None if absent."""
    try:
        st = os.stat(executor.host_root / Path(path).relative_to("/"))
    except (OSError, ValueError):
        return None
    return (str(executor.host_root), str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _venv_template(
    interpreter: Interpreter,
    executor: LocalExecutor,
    env: Mapping[str, str],
    build_log: _BuildLog,
    *,
    uv: str,
    venv_cache: Path,
    build_id: str,
    timeout: float,
) -> Path:
    """An empty relocatable venv for `interpreter`, made once by root and copied for each build.

    `uv venv --relocatable` writes no path of the venv itself into it (pyvenv.cfg names the
    interpreter's directory; activate scripts find their own place), so a copy is the venv uv
    would have made there; copying ~20 small files is ~1 ms against ~12 ms for `uv venv`. Keyed
    by the interpreter's and uv's files on disk: a new Python or uv makes a new template.
    """
    key = hashlib.sha256(repr((_fingerprint(executor, interpreter.path), _fingerprint(executor, uv))).encode())
    template = venv_cache / "templates" / key.hexdigest()[:24]
    if (template / "venv" / "pyvenv.cfg").is_file():
        return template / "venv"
    _make_dirs(template.parent)
    staging = template.parent / f"{TMP_PREFIX}{secrets.token_hex(4)}"
    try:
        os.mkdir(staging, 0o700)
        _run_step(executor, venv_command("uv", interpreter.path, staging / "venv", uv=uv, cache_dir=venv_cache), env,
                  build_log, build_id=build_id, tool="uv", timeout=timeout, on_line=lambda _: None)
        os.rename(staging, template)
    except OSError as exc:
        if not (template / "venv" / "pyvenv.cfg").is_file():  # not another build's template that won
            raise BuildFailed(build_id, f"making the venv template {template} failed: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return template / "venv"


def find_interpreter(
    python: str,
    search_path: Sequence[str],
    executor: LocalExecutor,
    env: Mapping[str, str],
    *,
    build_id: str,
) -> Interpreter:
    """The first `python<X.Y>` in `search_path` that runs and reports version X.Y.

    Probed through the executor, not with os.path: in the DaemonSet the host's /usr/bin is
    reached only through `nsenter`.
    """
    tried: list[str] = []
    for candidate in interpreter_candidates(python, search_path):
        fingerprint = _fingerprint(executor, candidate)
        if fingerprint in _PROBED:
            return _PROBED[fingerprint]
        try:
            proc = executor.run([str(candidate), "-c", PROBE], env=env, check=False, timeout=30)
        except (FileNotFoundError, PermissionError) as exc:
            tried.append(f"{candidate}: {exc.strerror}")
            continue
        fields = proc.stdout.split()
        if proc.returncode == 0 and len(fields) == 2 and fields[0] == python:
            found = Interpreter(candidate, fields[0], fields[1])
            if fingerprint is not None:
                _PROBED[fingerprint] = found
            return found
        tried.append(f"{candidate}: {tail(proc.stdout, 2) or f'exit {proc.returncode}'}")
    raise BuildFailed(
        build_id,
        f"python{python} not found in {':'.join(search_path)} (install Python {python} on the host)",
        "\n".join(tried),
    )


def download_wheel(url: str, sha256: str, directory: Path, *, build_id: str, timeout: float = 120) -> Path:
    """Download `url` into `directory` and check its sha256 before anything installs it."""
    try:
        name = wheel_filename(url)
    except ValueError as exc:
        raise BuildFailed(build_id, str(exc)) from exc
    _make_dirs(directory)
    target = directory / name
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(target, "wb") as out:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                digest.update(chunk)
                out.write(chunk)
    except (urllib.error.URLError, OSError) as exc:
        raise BuildFailed(build_id, f"downloading {url} failed: {exc}") from exc
    actual = digest.hexdigest()
    if actual != sha256:
        raise BuildFailed(build_id, f"sha256 mismatch for {url}: expected {sha256}, got {actual}")
    return target


def _real_dir(top: Path, relative: Path) -> bool:
    """`top/relative` is a directory reached without a symlink (the build wrote the tree: the
    agent reads it and nginx serves from it, so it must not lead anywhere else)."""
    path = top
    for part in relative.parts:
        path = path / part
        try:
            if not stat.S_ISDIR(path.lstat().st_mode):
                return False
        except FileNotFoundError:
            return False
    return True


def unconfined(argv: Sequence[str]) -> list[str]:
    """The command a confined argv runs (what the build log shows), without the sandbox prefix."""
    argv = list(argv)
    return argv[argv.index("--", argv.index("setpriv")) + 1:] if "setpriv" in argv else argv


def sdist_only_packages(output: str) -> list[str]:
    """Packages uv/pip could not install because only a source distribution exists (with --only-binary)."""
    found = []
    for match in _SDIST_ONLY.finditer(output):
        name = match.group(1) or match.group(2)
        if name not in found:
            found.append(name)
    return found


def tool_for_build_users(layout: HostLayout, tool: str) -> str:
    """`tool` where a build user can run it: in place when every directory above it lets
    others through, else a root-owned copy under the agent root (e.g. an agent run from a
    checkout under root's 0700 home), refreshed when the original changes."""
    source = Path(tool).resolve()
    if all(d.stat().st_mode & 0o001 for d in source.parents) and source.stat().st_mode & 0o001:
        return str(source)
    target = layout.tools / source.name
    src_stat = source.stat()
    try:
        current = target.stat()
        if (current.st_size, int(current.st_mtime)) == (src_stat.st_size, int(src_stat.st_mtime)):
            return str(target)
    except FileNotFoundError:
        pass
    _make_dirs(layout.tools)
    staging = layout.tools / f".{source.name}.{secrets.token_hex(4)}"
    shutil.copy2(source, staging)
    os.chmod(staging, 0o755)
    os.replace(staging, target)
    return str(target)


def _make_owned_dir(path: Path, identity: BuildIdentity) -> None:
    """A directory only the build user (and root) may enter; created, or re-owned as a whole
    when it belonged to another uid (a build user deleted and made again)."""
    path.mkdir(parents=True, exist_ok=True)
    if path.lstat().st_uid != identity.uid:
        for dirpath, dirnames, filenames in os.walk(path):
            for name in [*dirnames, *filenames]:
                os.lchown(os.path.join(dirpath, name), identity.uid, identity.gid)
    os.chown(path, identity.uid, identity.gid, follow_symlinks=False)
    os.chmod(path, 0o700)


def _give(top: Path, identity: BuildIdentity) -> None:
    """Hand a tree root made (the fresh venv) to the build user, links included, never followed."""
    for dirpath, dirnames, filenames in os.walk(top):
        os.lchown(dirpath, identity.uid, identity.gid)
        for name in dirnames + filenames:
            os.lchown(os.path.join(dirpath, name), identity.uid, identity.gid)


def seal(top: Path) -> None:
    """Make a finished build root's own: the build user loses every way to change it.

    Runs after the build's PID namespace is gone (nothing of the build runs any more). The
    build user's HOME goes first; lchown never follows a symlink the build may have planted.
    """
    shutil.rmtree(top / BUILD_HOME, ignore_errors=True)
    _walk_modes(top, chown=True)


def normalize_modes(top: Path) -> None:
    """Root-owned tree readable by all, writable by its owner only: dirs 0755, files 0644/0755.

    Done explicitly rather than through the agent's umask (process-wide, and whatever the
    agent was started with), so an app user can never modify its own code or libraries.
    """
    _walk_modes(top, chown=False)


def _walk_modes(top: Path, *, chown: bool) -> None:
    """One pass over the tree: (root's ownership and) the modes of `normalize_modes`.

    lchown never follows a link; os.walk does not follow symlinks (venv/bin/python,
    site-packages) and neither does chmod here: their targets are not ours to change. The
    chown comes before the chmod of each entry: chown clears setuid/setgid bits, and a mode
    set first could be changed by it.
    """
    for dirpath, dirnames, filenames in os.walk(top):
        if chown:
            os.lchown(dirpath, 0, 0)
        os.chmod(dirpath, 0o755)
        for name in dirnames:
            path = os.path.join(dirpath, name)
            if chown:
                os.lchown(path, 0, 0)
        for name in filenames:
            path = os.path.join(dirpath, name)
            if chown:
                os.lchown(path, 0, 0)
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                continue
            os.chmod(path, 0o755 if mode & 0o111 else 0o644)


def _project(name: str) -> str:
    """PEP 503 normalized project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_version(site_packages: Path, project: str) -> str | None:
    """Version of an installed distribution, from its dist-info METADATA; None if absent.

    Read from files rather than by importing the package: nothing from the venv runs, so
    this works the same whoever builds, and root never runs the tenant's code.
    """
    wanted = _project(project)
    for info in site_packages.glob("*.dist-info"):
        name, _, _version = info.name.removesuffix(".dist-info").rpartition("-")
        if _project(name) != wanted:
            continue
        metadata = info / "METADATA"
        try:
            if info.is_symlink() or not stat.S_ISREG(metadata.lstat().st_mode):
                continue  # a build-made link or FIFO must not make the agent read elsewhere, or block
            headers = email.parser.HeaderParser().parsestr(metadata.read_text(errors="replace"))
        except OSError:
            continue
        if headers["Version"]:
            return headers["Version"].strip()
    return None


def detect_server_software(site_packages: Path) -> ServerSoftware:
    """The server packages a venv holds (gunicorn, uvicorn, uvicorn-worker, setuptools) and their versions."""
    return ServerSoftware(**{field: installed_version(site_packages, project) for field, project in SERVER_DISTRIBUTIONS.items()})


def server_software(release: Path) -> ServerSoftware:
    """What release.json recorded; detected from the venv for releases built before it did."""
    try:
        recorded = ServerSoftware.from_record(json.loads((release / RELEASE_RECORD).read_text()))
    except (OSError, ValueError):
        recorded = None
    return recorded or detect_server_software(release / "site-packages")


def recorded_lock_digest(release: Path) -> str | None:
    """The lock digest release.json recorded; None for pip, wheel-URL and older builds."""
    try:
        digest = json.loads((release / RELEASE_RECORD).read_text()).get("lockDigest")
    except (OSError, ValueError, AttributeError):
        return None
    return digest if isinstance(digest, str) else None


def release_document(
    spec: HostReleaseSpec,
    tool: Tool,
    interpreter: Interpreter,
    software: ServerSoftware,
    *,
    built_as: str,
    started_at: str,
    finished_at: str,
    seconds: float,
    log_tail: str,
    locked: Locked | None = None,
) -> dict[str, Any]:
    """The content of release.json: what went into the venv and how it was built.

    With a lock (uv builds from requirements): its canonical lines, digest (what status shows
    to compare hosts), whether this build resolved it or installed the host's stored one, and
    whether it installed offline."""
    lock = {} if locked is None else {
        "lock": locked.text.splitlines(), "lockDigest": locked.digest, "lockSource": locked.source,
        "installedOffline": locked.offline,
    }
    return {
        **lock,
        "buildId": spec.build_id,
        "inputs": identity.build_inputs(spec),
        "tool": tool,
        "python": interpreter.full,
        "interpreter": str(interpreter.path),
        "builtAs": built_as,
        **software.record(),
        "startedAt": started_at,
        "finishedAt": finished_at,
        "seconds": round(seconds, 3),
        "logTail": log_tail,
    }


def write_record(tmp: Path, record: dict[str, Any], name: str = RELEASE_RECORD) -> None:
    """Root writes `tmp/name` as a new file renamed over whatever the build left under that name.

    The build user owned `tmp` during the build: a `release.json -> /etc/shadow` it planted
    would have root write (and chmod 0644) the target if opened by name. A fresh name with
    O_EXCL|O_NOFOLLOW, then a rename, replaces the link itself.
    """
    staging = tmp / f".{name}.{secrets.token_hex(4)}"
    _write_root_file(staging, json.dumps(record, indent=2, sort_keys=True) + "\n")
    os.replace(staging, tmp / name)


def _publish(tmp: Path, final: Path) -> bool:
    """Rename the finished build into place; True when another builder got there first.

    Everything is flushed before the rename: after a power cut, a directory that looks
    complete must not hold empty files (it would be reused forever). One syncfs of the
    releases' file system, not os.sync() (every file system of the host, a busy neighbour's
    too) nor an fsync per file (a journal commit each: hundreds per venv).
    """
    syncfs(final.parent)
    try:
        os.rename(tmp, final)
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST) and final.is_dir():
            # A concurrent build of the same inputs won; its result is as good as ours.
            shutil.rmtree(tmp)
            return True
        raise
    fsync_dir(final.parent)
    return False


def _discard(tmp: Path, exc: BaseException) -> None:
    """Remove a failed build's temp dir; a cleanup failure is attached to the build's error."""
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
    except OSError as cleanup:
        exc.add_note(f"also failed to remove {tmp}: {cleanup} (remove_temp_builds will retry)")


def _make_dirs(path: Path) -> None:
    """`path` and its missing parents, each made 0755 whatever the agent's umask: build users
    and app users traverse them (mkdir's mode is masked by the umask, and parents ignore it)."""
    missing = []
    while not path.is_dir():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        try:
            directory.mkdir()
        except FileExistsError:
            continue  # another builder made it: its mode is its maker's business
        os.chmod(directory, 0o755)


# ------------------------------------------------------------------------- the store / GC


def list_releases(app_paths: AppPaths) -> list[ReleaseRecord]:
    """Complete releases of one app, in no particular order."""
    if not app_paths.releases.is_dir():
        return []
    records = []
    for entry in app_paths.releases.iterdir():
        if entry.name.startswith(TMP_PREFIX) or not entry.is_dir() or entry.is_symlink():
            continue
        records.append(ReleaseRecord(entry.name, _created(entry)))
    return records


def _created(release: Path) -> datetime:
    try:
        return datetime.fromisoformat(json.loads((release / RELEASE_RECORD).read_text())["finishedAt"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        # Not one of ours by construction (release.json is written before the rename), but
        # GC must still be able to order it: the directory's own time is the next best thing.
        log.warning("release %s has no readable %s (%s); using its mtime", release, RELEASE_RECORD, exc)
        return datetime.fromtimestamp(release.stat().st_mtime, timezone.utc)


def remove_release(app_paths: AppPaths, build_id: str) -> bool:
    """Remove one release; False if it was not there. Refuses the one `current` points to.

    Renamed to a `.tmp-` name first, so a removal cut short never leaves a directory that
    looks complete (and `remove_temp_builds` finishes it).
    """
    if build_id.startswith(TMP_PREFIX) or "/" in build_id or build_id in ("", ".", ".."):
        raise ValueError(f"{build_id!r} is not a buildId")
    release = app_paths.release(build_id)
    if not release.is_dir():
        return False
    if app_paths.current.is_symlink() and Path(os.readlink(app_paths.current)).name == build_id:
        raise ValueError(f"release {build_id} is current: it cannot be removed")
    doomed = app_paths.releases / f"{TMP_PREFIX}{build_id}-{secrets.token_hex(4)}-removing"
    os.rename(release, doomed)
    shutil.rmtree(doomed)
    return True


def remove_temp_builds(app_paths: AppPaths) -> list[str]:
    """Remove what crashed builds and removals left (`.tmp-*`); returns the names removed.

    Call only when no build of this app is running (the agent works on one app at a time),
    or it would pull a build's directory from under it.
    """
    if not app_paths.releases.is_dir():
        return []
    removed = []
    for entry in sorted(app_paths.locks.glob(f"{TMP_PREFIX}*")):  # a lock resolved by a build cut short
        entry.unlink()
    for entry in sorted(app_paths.releases.iterdir()):
        if not entry.name.startswith(TMP_PREFIX):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
        removed.append(entry.name)
    return removed
