"""Session fixtures shared by every test level.

`package_index`: webxample 1.0.0/2.0.0/3.0.0 (built here) and gunicorn's wheels served as a
PEP 503 index on loopback, so every venv build in the tests is a real HTTP install.
`real_index`: real releases from the registry (fetched once, cached) with the example apps
built against them (support/pypi.py `start_real_index`).
`control_plane`: a real etcd + kube-apiserver + kube-controller-manager on loopback.
`short_tmp`: a temp dir whose path leaves room for unix socket names.
`accounts_left_clean` (autouse): the app and build users apprelease made during the run are
deleted at the end of the last of the sessions running at once (tests in fresh namespaces
would otherwise fill the system uid range).
"""

from __future__ import annotations

import fcntl
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.cluster import control_plane  # noqa: F401 - the session fixture
from support.pypi import RealIndex, WebxampleIndex, start_real_index, start_webxample_index


@pytest.fixture(scope="session")
def package_index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebxampleIndex]:
    served = start_webxample_index(tmp_path_factory.mktemp("pypi"))
    yield served
    served.stop()


@pytest.fixture(scope="session")
def real_index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealIndex]:
    """Real registry releases (gunicorn 20.1..newest, FastAPI, uvicorn, Django) and the example apps."""
    served = start_real_index(tmp_path_factory.mktemp("real-pypi"))
    yield served
    served.stop()


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temp dir with a short path: unix socket paths (gunicorn, circus ipc) are limited to 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="ar-", dir="/tmp"))
    path.chmod(0o755)  # app users traverse it to reach their venv and socket
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _apprelease_accounts() -> set[str]:
    listing = subprocess.run(["getent", "passwd"], capture_output=True, text=True).stdout
    return {f[0] for f in (line.split(":") for line in listing.splitlines())
            if len(f) > 4 and f[4].startswith("apprelease ")}


# Several pytest sessions may run on one machine at once (developers running parts of the
# suite side by side): one session's clean-up must not delete accounts another still uses.
# Every session holds a shared lock while it runs; the first one records the accounts that
# existed before any of them, and only the last one to finish (it gets the lock exclusively)
# deletes what was made since.
_SESSIONS_LOCK = Path("/run/lock/apprelease-test-sessions.lock")
_BASELINE = Path("/run/lock/apprelease-test-accounts.baseline")


@pytest.fixture(scope="session", autouse=True)
def accounts_left_clean() -> Iterator[None]:
    with _SESSIONS_LOCK.open("a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            _BASELINE.write_text("\n".join(sorted(_apprelease_accounts())))  # alone: the baseline is now
            fcntl.flock(lock, fcntl.LOCK_SH)
        except BlockingIOError:
            fcntl.flock(lock, fcntl.LOCK_SH)  # others run: their baseline holds
        yield
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # another session still runs: the last one cleans up
        before = set(_BASELINE.read_text().split()) if _BASELINE.exists() else _apprelease_accounts()
        for name in sorted(_apprelease_accounts() - before):
            # still in use (a process of a test that leaked) -> userdel refuses: kept, not killed
            subprocess.run(["userdel", name], capture_output=True)
