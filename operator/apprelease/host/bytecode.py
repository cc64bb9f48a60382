"""Bytecode for a release's venv, compiled after the release serves instead of during its build.

Called by the agent's reconcile core (`plan.COMPILE_BYTECODE`, planned after the switch for the
serving build when its release has no `bytecode.json` yet). Why not during the build: uv's
`--compile-bytecode` was about 40% of a warm build (77 of ~190 ms here), all of it on the
rotation's critical path; the app starts as well without .pyc files (its imports compile in
memory), and the first rotation pays that once.

Why not let the app write its own `__pycache__`: the venv is root-owned so that an app (or an
attacker inside it) can never change its own code, and a .pyc is code. Why not root running
compileall in the venv: a sealed venv is still what a tenant's build made, and root following
a planted `__pycache__ -> /etc` symlink, or compiling a planted `x.py -> /root/secret.py` into
a world-readable .pyc, would cross the trust boundary. So:

1. the app's build user compiles, confined as for a build (`sandbox.confine`), with the
   host's interpreter in isolated mode without `site` (no .pth file of the tenant runs), into
   a private prefix (`-X pycache_prefix`) in a temp dir: the venv itself stays read-only;
2. root seals that temp dir (its processes are gone) and copies each .pyc into the venv's
   `__pycache__` directories, reaching them only through real directories (`O_NOFOLLOW` at
   every step, never a symlink); the copies are root-owned 0644 like the rest of the venv;
3. one `syncfs`, then `bytecode.json` records the outcome. A failure is recorded too and not
   retried (the app runs without .pyc files): bytecode is an optimisation, never a reason to
   fail a revision or re-plan forever.

The build user could put any bytecode in its temp dir: into its own app's venv only, which is
what its build could already do with any .py file.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .builder import seal, write_record
from .executor import LocalExecutor
from .files import syncfs
from .layout import BYTECODE_RECORD, TMP_PREFIX, AppPaths
from .sandbox import BuildIdentity, confine

log = logging.getLogger(__name__)

MARKER = BYTECODE_RECORD
PYCACHE = "__pycache__"
MAX_PYC_BYTES = 16 << 20


def compiled(release: Path) -> bool:
    """Whether the release's bytecode was compiled (or given up on): nothing left to do."""
    return (release / MARKER).is_file()


def compile_argv(venv: Path, site_packages: Path, prefix: Path) -> list[str]:
    """compileall of the venv's site-packages into `prefix`, running no code of the venv's packages."""
    return [str(venv / "bin" / "python"), "-I", "-S", "-X", f"pycache_prefix={prefix}", "-m", "compileall", "-q",
            str(site_packages)]  # fmt: skip


def compile_release(
    paths: AppPaths, build_id: str, executor: LocalExecutor, identity: BuildIdentity, *, timeout: float = 600,
) -> dict[str, object]:
    """Compile the release's site-packages and record it in `bytecode.json`; returns the record."""
    release = paths.release(build_id).absolute()  # the pycache prefix mirrors absolute paths
    started = time.monotonic()
    tmp = paths.releases / f"{TMP_PREFIX}pyc-{build_id}-{secrets.token_hex(4)}"
    try:
        site_packages = (release / os.readlink(release / "site-packages")).absolute()
        os.mkdir(tmp, 0o700)
        os.chown(tmp, identity.uid, identity.gid)
        argv = compile_argv(release / "venv", site_packages, tmp)
        # compileall exits 1 when a file does not compile (a py2-only test module): the rest is done.
        proc = executor.run(confine(argv, identity, [tmp, release]), env={"PATH": "/usr/bin:/bin", "HOME": str(tmp)},
                            check=False, timeout=timeout)
        seal(tmp)  # its processes are gone: root's own before root reads it
        copied = _copy_into_venv(tmp / site_packages.relative_to("/"), release, site_packages.relative_to(release))
        syncfs(release)
        record = {"ok": proc.returncode in (0, 1) and copied > 0, "files": copied, "exitCode": proc.returncode,
                  "seconds": round(time.monotonic() - started, 3), "output": proc.stdout[-2000:]}
    except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
        log.warning("compiling the bytecode of %s failed: %s", release, exc)
        record = {"ok": False, "files": 0, "error": str(exc), "seconds": round(time.monotonic() - started, 3)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write_record(release, record, MARKER)  # replaces whatever the build left under that name
    return record


@contextmanager
def _open_dir(parent_fd: int, name: str, *, create: bool = False) -> Iterator[int]:
    """A real directory under `parent_fd` (never a symlink), optionally made root's 0755."""
    made = False
    if create:
        try:
            os.mkdir(name, 0o755, dir_fd=parent_fd)
            made = True
        except FileExistsError:
            pass
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent_fd)
    try:
        if made:
            os.fchmod(fd, 0o755)  # whatever the agent's umask: the app user reads it
        yield fd
    finally:
        os.close(fd)


def _open_path(top_fd: int, relative: Path) -> int:
    """A directory reached from `top_fd` through real directories only; the caller closes it."""
    fd = os.dup(top_fd)
    try:
        for part in relative.parts:
            with _open_dir(fd, part) as child:
                next_fd = os.dup(child)
            os.close(fd)
            fd = next_fd
    except BaseException:
        os.close(fd)
        raise
    return fd


def _copy_into_venv(mirror: Path, release: Path, site_packages: Path) -> int:
    """Copy `mirror/<dir>/*.pyc` to `<site-packages>/<dir>/__pycache__/`; returns how many.

    Directories that are not real directories in the venv (a symlink the build planted) are
    skipped; a .pyc already there (a release built with bytecode) is kept.
    """
    copied = 0
    release_fd = os.open(release, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        for dirpath, _dirnames, filenames in os.walk(mirror):
            pycs = [name for name in filenames if name.endswith(".pyc")]
            if not pycs:
                continue
            try:
                target_fd = _open_path(release_fd, site_packages / Path(dirpath).relative_to(mirror))
            except OSError:
                continue
            try:
                with _open_dir(target_fd, PYCACHE, create=True) as cache_fd:
                    copied += sum(_copy_pyc(Path(dirpath), name, cache_fd) for name in pycs)
            except OSError:
                continue
            finally:
                os.close(target_fd)
    finally:
        os.close(release_fd)
    return copied


def _copy_pyc(source_dir: Path, name: str, cache_fd: int) -> bool:
    try:
        os.stat(name, dir_fd=cache_fd, follow_symlinks=False)
        return False  # already there
    except FileNotFoundError:
        pass
    src = os.open(source_dir / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        st = os.fstat(src)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_PYC_BYTES:
            return False
        data = os.read(src, st.st_size + 1)
    finally:
        os.close(src)
    staging = f".{name}.{secrets.token_hex(4)}"
    dst = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=cache_fd)
    with os.fdopen(dst, "wb") as out:
        os.fchmod(dst, 0o644)
        out.write(data)
    os.rename(staging, name, src_dir_fd=cache_fd, dst_dir_fd=cache_fd)
    return True


