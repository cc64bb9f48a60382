"""Release commands and process types with a real Django app: circusd/supervisord, gunicorn, nginx.

Covers:
- `release.command` (Django's `migrate`) runs as the app user with the new venv and env,
  before the new workers start: the first revision serves the migrated table; a failing
  command and a command past its deadline fail the revision with the command's output tail
  and its exit, the previous revision keeps serving, no worker of the failed revision ever
  started, and nothing the command started survives its deadline; a rollback to a revision
  that served here does not run its command again;
- `processes` (Django's `worker` command, 2 replicas) run as the app user beside gunicorn,
  move to each new revision (the old replicas get SIGTERM and finish their item), are
  restarted by the supervisor after a kill -9, show in status; a program the venv lacks
  fails the revision and leaves nothing of it running; both supervisor backends;
- the Django app rotating under load with its release command and its workers: 0 failed
  requests (the line printed is the README's number).
"""

from __future__ import annotations

import json
import os
import pwd
import signal
from pathlib import Path

import pytest

from apprelease.host import core, plan
from apprelease.host.layout import app_key, process_watcher_name, watcher_name
from support.cluster import wait_for
from support.hosts import SERVER_NAME, release_for, running_host
from support.load import rotate_under_load
from support.nginx import free_port, http_get

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

APP = "djangoapp"
KEY = app_key("default", APP)
MIGRATE = ["python", "-m", "django_app", "migrate", "--noinput"]
WORKER = {"worker": {"command": ["python", "-m", "django_app", "worker"], "replicas": 2, "gracefulTimeoutSeconds": 10}}


@pytest.fixture
def data_dir(short_tmp: Path) -> Path:
    """Where the app keeps its sqlite database and its workers report (the app user writes here)."""
    path = short_tmp / "data"
    path.mkdir()
    path.chmod(0o1777)
    return path


def django(index_url: str, version: str, port: int, data: Path, *, release: dict | None = None,
           processes: dict | None = None, rotation: int = 0):
    extra: dict = {}
    if release is not None:
        extra["release"] = release
    if processes is not None:
        extra["processes"] = processes
    return release_for(
        index_url, version, name=APP, port=port, requirements=[f"django-app=={version}", "gunicorn==23.0.0"],
        entrypoint="django_app.wsgi:application", server={"workerClass": "sync", "workers": 2}, static=[],
        env={"DJANGO_APP_DB": str(data / "db.sqlite3"), "DJANGO_ALLOWED_HOSTS": SERVER_NAME,
             "DJANGO_APP_WORKER_DIR": str(data), "ROTATION": str(rotation)},
        extra=extra,
    )


def ready(host, release) -> core.Result:
    result = core.reconcile(host, release)
    assert result.status.phase == "Ready", f"{result.plan}: {result.status.message}\n{result.status.log_tail}"
    return result


def failed(host, release) -> core.Result:
    result = core.reconcile(host, release)
    assert result.status.phase == "Failed", result.status
    return result


def served_version(port: int) -> str:
    resp = http_get(port, "/version", SERVER_NAME)
    assert resp.status == 200, resp
    return resp.json()["version"]


def processes_of_user(user: str, needle: str) -> list[int]:
    uid = pwd.getpwnam(user).pw_uid
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid == uid and needle in (entry / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def reports(data: Path, version: str) -> dict[str, dict]:
    """The worker replicas' own reports for `version`, by replica."""
    out = {}
    for path in data.glob(f"worker-*-{version}.json"):
        try:
            out[path.name.removesuffix(f"-{version}.json")] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # replaced while we read it
    return out


@pytest.fixture
def port() -> int:
    return free_port()


def test_release_command_migrates_before_the_switch_and_a_failure_keeps_the_old_revision(
        short_tmp, real_index, port, data_dir):
    with running_host(short_tmp / "host-a") as host:
        paths = host.layout.app(KEY)
        first = ready(host, django(real_index.url, "1.0.0", port, data_dir, release={"command": MIGRATE}))
        v1 = first.status.serving_revision
        assert first.plan.kinds().index(plan.RUN_RELEASE) < first.plan.kinds().index(plan.START)
        assert first.status.release_command.revision == v1 and first.status.release_command.exit_code == 0
        assert "Applying notes.0001_initial... OK" in paths.release_command_log(v1).read_text()
        assert http_get(port, "/notes", SERVER_NAME, method="POST", body=b"hello").json() == {"notes": 1}
        assert (data_dir / "db.sqlite3").stat().st_uid == pwd.getpwnam(release_user(host)).pw_uid  # as the app user

        # A failing command: the old revision serves on, the new one never started a worker.
        bad = django(real_index.url, "2.0.0", port, data_dir,
                     release={"command": ["python", "-m", "django_app", "migrate", "nosuchapp"]})
        result = failed(host, bad)
        assert "release command of revision" in result.status.message and "exited with code 1" in result.status.message
        assert "No installed app with label 'nosuchapp'" in (result.status.log_tail or "")
        assert not any(step.action.startswith(plan.START) for step in result.steps)  # stopped before
        assert watcher_name(KEY, bad.spec.revision) not in host.supervisor.watchers()
        assert served_version(port) == "1.0.0"
        assert failed(host, bad).plan.kinds() == [plan.REPORT_FAILED]  # terminal: not run again

        # Past its deadline: killed with everything it started.
        hanging = django(real_index.url, "2.0.0", port, data_dir, release={
            "command": ["python", "-m", "http.server", "--bind", "127.0.0.1", "0"], "timeoutSeconds": 2})
        result = failed(host, hanging)
        assert "did not finish within timeoutSeconds (2s)" in result.status.message, result.status.message
        assert result.status.release_command.exit_code is None
        assert processes_of_user(release_user(host), "http.server") == []
        assert served_version(port) == "1.0.0"

        second = ready(host, django(real_index.url, "2.0.0", port, data_dir, release={"command": MIGRATE}))
        v2 = second.status.serving_revision
        assert served_version(port) == "2.0.0" and second.status.release_command.revision == v2
        assert http_get(port, "/notes", SERVER_NAME).json() == {"notes": 1}  # same database, migrated once

        # Back to the first revision: it served here, so its command is not run again.
        log_v1 = paths.release_command_log(v1).stat().st_mtime_ns
        back = ready(host, django(real_index.url, "1.0.0", port, data_dir, release={"command": MIGRATE}))
        assert back.status.serving_revision == v1 and plan.RUN_RELEASE not in back.plan.kinds()
        assert back.status.release_command.revision == v2
        assert paths.release_command_log(v1).stat().st_mtime_ns == log_v1
        assert served_version(port) == "1.0.0"


def release_user(host) -> str:
    spec = json.loads(host.layout.app(KEY).spec_file.read_text())
    return spec["spec"]["user"]


@pytest.mark.parametrize("backend", ["circus", "supervisord"])
def test_worker_processes_move_with_each_revision_and_restart_after_a_crash(
        short_tmp, real_index, port, data_dir, backend):
    with running_host(short_tmp / "host-a", backend) as host:
        first = ready(host, django(real_index.url, "1.0.0", port, data_dir, release={"command": MIGRATE},
                                   processes=WORKER))
        v1 = first.status.serving_revision
        kinds = first.plan.kinds()
        assert kinds.index(plan.HEALTH) < kinds.index(plan.START_PROCESSES) < kinds.index(plan.SWITCH)
        assert [p.wire() for p in first.status.processes] == [{"name": "worker", "replicas": 2, "running": 2}]
        wait_for(lambda: {r.get("state") for r in reports(data_dir, "1.0.0").values()} == {"working"}
                 and len(reports(data_dir, "1.0.0")) == 2, timeout=20, message="two v1 workers working")
        user = release_user(host)
        for report in reports(data_dir, "1.0.0").values():
            assert Path(f"/proc/{report['pid']}").stat().st_uid == pwd.getpwnam(user).pw_uid

        # kill -9: the supervisor starts the replica again.
        crashed = reports(data_dir, "1.0.0")["worker-0"]["pid"]
        os.kill(crashed, signal.SIGKILL)
        wait_for(lambda: reports(data_dir, "1.0.0").get("worker-0", {}).get("pid") not in (None, crashed),
                 timeout=30, message="worker-0 restarted")

        second = ready(host, django(real_index.url, "2.0.0", port, data_dir, release={"command": MIGRATE},
                                    processes=WORKER))
        v2 = second.status.serving_revision
        old = reports(data_dir, "1.0.0")
        assert {r["state"] for r in old.values()} == {"stopped"}, old  # SIGTERM, item finished, exit 0
        wait_for(lambda: len(reports(data_dir, "2.0.0")) == 2, timeout=20, message="two v2 workers")
        names = set(host.supervisor.watchers())
        assert {process_watcher_name(KEY, v2, f"worker-{i}") for i in range(2)} <= names
        assert not any(v1 in name for name in names)

        # A program the venv does not have: the revision fails whole, v2 and its workers go on.
        broken = django(real_index.url, "1.0.0", port, data_dir, release={"command": MIGRATE},
                        processes={"worker": {"command": ["celery", "worker"]}})
        result = failed(host, broken)
        assert "processes.worker.command[0]: 'celery' is not a program in the release's venv bin/" \
            in result.status.message
        assert not any(broken.spec.revision in name for name in host.supervisor.watchers())
        assert served_version(port) == "2.0.0"
        assert [p.wire() for p in result.status.processes] == [{"name": "worker", "replicas": 2, "running": 2}]


def test_django_rotates_under_load_with_migrations_and_workers(short_tmp, real_index, port, data_dir):
    versions = ["1.0.0", "2.0.0"]
    rotations = 6
    with running_host(short_tmp / "host-a") as host:
        ready(host, django(real_index.url, versions[0], port, data_dir, release={"command": MIGRATE},
                           processes=WORKER))

        def rotate(rotation: int) -> None:
            # A new revision each time (ROTATION), so each runs its migrations and moves its workers.
            result = ready(host, django(real_index.url, versions[rotation % 2], port, data_dir,
                                        release={"command": MIGRATE}, processes=WORKER, rotation=rotation))
            assert plan.RUN_RELEASE in result.plan.kinds() and plan.SWITCH in result.plan.kinds()

        tally = rotate_under_load(port, rotate, rotations, label="django-app with migrate + 2 workers",
                                  host_header=SERVER_NAME, expect=versions, max_seconds=240)
    failed_requests = tally["errors"] + tally["badStatus"]
    assert failed_requests == 0, tally["failures"]
    assert set(tally["versions"]) == set(versions)
