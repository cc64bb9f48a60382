"""Both supervisor backends (circus, supervisord) with real daemons and real gunicorn.

Covers, for each backend: a watcher runs as a freshly ensured unprivileged user (checked in
/proc), with exactly the spec's environment (hostile values included), serves 200 through
its unix socket and writes its logs under logs/; the run dir lets www-data connect and not
nobody; adding a second watcher and removing the first leaves the second running and the
daemon's pid unchanged; a kill -9 of the gunicorn master is restarted by the daemon; a
restarted daemon brings the watchers back from their files on disk; a graceful remove lets
an in-flight 2-second request finish; remove and add are idempotent; stop_daemon leaves no
process behind (checked after every test, also when it failed).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from apprelease.host.layout import HostLayout
from apprelease.host.supervisors import KINDS, Supervisor, make_supervisor
from apprelease.host.supervisors.base import LAUNCHER, encode_env, process_alive
from apprelease.host.users import ensure_user, prepare_app_dirs
from apprelease.host.servers import ServerSoftware
from apprelease.host.watchers import WatcherSpec, watcher_for
from apprelease.api.models import HostReleaseSpec
from support.apps import (
    APP_PYTHON,
    ENTRYPOINT,
    GUNICORN,
    build_tiny_venv,
    http_get,
    pids_of_uid,
    proc_environ,
    proc_uid,
    wait_serving,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

USER = "ar-itest"
KEY = "itest_web"
BUILD = "b1"
HOSTILE = {"GREETING": " a ;b #c $HOME $(circus.env.HOME) %(here)s \"q\" 'q' ", "EMPTY": ""}


def public_tmpdir(prefix: str) -> Path:
    # pytest's tmp_path is under a 0700 directory the app user cannot traverse.
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    return path


@pytest.fixture(scope="session")
def tiny_venv() -> Iterator[Path]:
    base = public_tmpdir("apprelease-venv-")
    try:
        yield build_tiny_venv(base / "venv")
    finally:
        shutil.rmtree(base)


@pytest.fixture(scope="session")
def app_ids() -> tuple[int, int]:
    entry = subprocess.run(["getent", "passwd", USER], capture_output=True, text=True).stdout.split(":")
    if len(entry) > 4 and entry[4] != "apprelease app itest/supervisors":
        subprocess.run(["userdel", USER], check=True)  # this test's account, left by an older run
    return ensure_user(USER, namespace="itest", app="supervisors")


@pytest.fixture(params=KINDS)
def host(request: pytest.FixtureRequest, tiny_venv: Path, app_ids: tuple[int, int]) -> Iterator[tuple[HostLayout, Supervisor]]:
    root = public_tmpdir("ar-sup-")
    layout = HostLayout(root)
    app = layout.app(KEY)
    prepare_app_dirs(app, USER)
    app.release(BUILD).mkdir(parents=True)
    app.release(BUILD).chmod(0o755)
    app.venv(BUILD).symlink_to(tiny_venv)
    supervisor = make_supervisor(request.param, layout)
    supervisor.ensure_running()
    try:
        yield layout, supervisor
    finally:
        daemon = supervisor.daemon_pid()
        supervisor.stop_daemon()
        # Workers orphaned by a kill -9 of their master exit by themselves once they see
        # their parent change (gunicorn checks every second): give them that long.
        deadline = time.monotonic() + 10
        while (leftovers := pids_of_uid(app_ids[0])) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in leftovers:
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(root)
        assert daemon is None or not process_alive(daemon), "daemon survived stop_daemon"
        assert not leftovers, f"processes of {USER} survived stop_daemon: {leftovers}"


def spec_for(revision: str, env: dict[str, str] | None = None, graceful: int = 5) -> HostReleaseSpec:
    return HostReleaseSpec.model_validate(
        {
            "version": "1.0.0",
            "source": {"requirements": ["tinyapp==1.0"]},
            "entrypoint": ENTRYPOINT,
            "user": USER,
            "proxy": {"serverNames": ["tiny.example"]},
            "server": {"workers": 1, "threads": 4, "gracefulTimeoutSeconds": graceful},
            "env": [{"name": k, "value": v} for k, v in (env or {}).items()],
            "app": "web",
            "node": "node-1",
            "buildId": BUILD,
            "revision": revision,
        }
    )


def start(layout: HostLayout, supervisor: Supervisor, revision: str, **kw: object) -> WatcherSpec:
    # tinyapp's venv holds the gunicorn apps.GUNICORN pins.
    software = ServerSoftware(gunicorn=GUNICORN.split("==")[1])
    watcher = watcher_for(layout, KEY, spec_for(revision, **kw), software)  # type: ignore[arg-type]
    supervisor.add(watcher)
    wait_serving(layout.app(KEY).socket(revision))
    return watcher


def can_connect_as(user: str, group: str, sock: Path) -> bool:
    probe = "import socket,sys; socket.socket(socket.AF_UNIX).connect(sys.argv[1])"
    proc = subprocess.run([APP_PYTHON, "-c", probe, str(sock)], user=user, group=group, extra_groups=[], capture_output=True)
    return proc.returncode == 0


def test_watcher_runs_as_app_user_with_exact_env_and_logs(host: tuple[HostLayout, Supervisor], app_ids: tuple[int, int]) -> None:
    layout, supervisor = host
    watcher = start(layout, supervisor, "r1", env=HOSTILE)
    pid = supervisor.main_pid(watcher.name)
    assert pid is not None
    assert proc_uid(pid) == app_ids[0] != 0
    assert proc_environ(pid) == dict(watcher.env)  # nothing from the daemon, nothing lost
    assert supervisor.watchers()[watcher.name].status in ("starting", "running")  # supervisord: RUNNING after startsecs
    status, body = http_get(layout.app(KEY).socket("r1"))
    assert status == 200 and body.startswith("ok ")
    assert watcher.stderr_log.exists() and "Listening at" in watcher.stderr_log.read_text()
    sock = layout.app(KEY).socket("r1")
    assert can_connect_as("www-data", "www-data", sock)
    assert not can_connect_as("nobody", "nogroup", sock)
    supervisor.add(watcher)  # idempotent: same config, nothing restarted
    assert supervisor.main_pid(watcher.name) == pid


def test_add_second_remove_first_then_crash_is_restarted(host: tuple[HostLayout, Supervisor]) -> None:
    layout, supervisor = host
    daemon = supervisor.daemon_pid()
    first = start(layout, supervisor, "r1")
    second = start(layout, supervisor, "r2")
    second_pid = supervisor.main_pid(second.name)
    supervisor.remove(first.name)
    supervisor.remove(first.name)  # idempotent
    assert first.name not in supervisor.watchers()
    assert not layout.app(KEY).socket("r1").exists()
    assert supervisor.main_pid(second.name) == second_pid
    assert supervisor.daemon_pid() == daemon
    wait_serving(layout.app(KEY).socket("r2"))

    assert second_pid is not None
    os.kill(second_pid, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while supervisor.main_pid(second.name) in (None, second_pid):
        assert time.monotonic() < deadline, "the daemon did not restart the killed master"
        time.sleep(0.1)
    wait_serving(layout.app(KEY).socket("r2"))
    assert supervisor.daemon_pid() == daemon


def test_restarted_daemon_brings_watchers_back_from_disk(host: tuple[HostLayout, Supervisor]) -> None:
    layout, supervisor = host
    start(layout, supervisor, "r1", env=HOSTILE)
    second = start(layout, supervisor, "r2")
    old_daemon = supervisor.daemon_pid()
    supervisor.stop_daemon()
    assert supervisor.daemon_pid() is None
    supervisor.ensure_running()
    assert supervisor.daemon_pid() not in (None, old_daemon)
    wait_serving(layout.app(KEY).socket("r1"))
    wait_serving(layout.app(KEY).socket("r2"))
    pid = supervisor.main_pid(second.name.replace("r2", "r1"))
    assert pid is not None and proc_environ(pid) == {**HOSTILE, "PATH": second.env["PATH"]}


def test_graceful_remove_lets_an_inflight_request_finish(host: tuple[HostLayout, Supervisor]) -> None:
    layout, supervisor = host
    watcher = start(layout, supervisor, "r1", graceful=10)
    result: list[object] = []
    request = threading.Thread(target=lambda: result.append(http_get(layout.app(KEY).socket("r1"), "/slow?s=2")))
    request.start()
    time.sleep(0.5)  # the request is in the worker now
    began = time.monotonic()
    supervisor.remove(watcher.name)
    request.join(10)
    assert result and result[0][0] == 200, result  # type: ignore[index]
    assert time.monotonic() - began >= 1.0  # remove waited for the drain
    assert watcher.name not in supervisor.watchers()


def test_a_watcher_removed_while_listing_is_left_out(host: tuple[HostLayout, Supervisor]) -> None:
    # circusd answers status and pids in two calls; the agent's other thread (or a second
    # client) may remove a watcher between them. Force that order against the real daemon.
    layout, supervisor = host
    first = start(layout, supervisor, "r1")
    second = start(layout, supervisor, "r2")
    if supervisor.kind == "circus":
        command = supervisor._command  # type: ignore[attr-defined]

        def remove_after_status(verb: str, **kw: object) -> dict:
            answer = command(verb, **kw)
            if verb == "status":
                make_supervisor("circus", layout).remove(first.name)
            return answer

        supervisor._command = remove_after_status  # type: ignore[attr-defined]
    else:
        supervisor.remove(first.name)
    assert set(supervisor.watchers()) == {second.name}
    assert supervisor.main_pid(first.name) is None


def test_launcher_execs_with_exactly_the_decoded_env() -> None:
    # /usr/bin/env as the target prints the environment it was exec'd with, untouched
    # (a Python target would add LC_CTYPE itself: PEP 538 locale coercion).
    env = {"A": " x ;y ", "B": "", "PATH": "/usr/bin", "U": "ünï ☃"}
    proc = subprocess.run(
        [APP_PYTHON, "-I", "-S", "-c", LAUNCHER, "/usr/bin/env", "-0"],
        env={**encode_env(env), "LEAK": "1"},
        capture_output=True,
        check=True,
    )
    printed = dict(item.decode().split("=", 1) for item in proc.stdout.split(b"\0") if item)
    assert printed == env
