"""Real apps on real server releases from the registry: circusd, gunicorn, uvicorn and nginx.

Covers:
- each gunicorn from 20.1 to the newest (GUNICORN_MATRIX) brought by the app's own pin:
  built (release.json records the version), started with only the options that version knows
  (no --no-control-socket before 25.1), and rotated 3 times under load (keep-alive and fresh
  connections, GET, POST with a body, 2-second requests) with 0 failed requests;
- a FastAPI app on uvicorn-worker's UvicornWorker (`server.workerClass: uvicorn`): 3 rotations
  between two versions under load, each with a streaming response started on the old revision
  that must finish there, whole, after the switch; 0 failed requests;
- a release built before release.json recorded the versions is read from its venv at start;
- the Django example app is built from the index with a real Django and serves its /healthz
  on the sync worker (migrations belong to the release commands, not here).

Each test prints one line of measurements (rotations, requests, failures) for the README.
"""

from __future__ import annotations

import http.client
import json
import threading
from pathlib import Path

import pytest

from apprelease.host import core, plan
from apprelease.host.layout import app_key, watcher_name
from support.hosts import SERVER_NAME, release_for, running_host
from support.load import rotate_under_load
from support.nginx import free_port, http_get
from support.pypi import GUNICORN_EXTRA, GUNICORN_MATRIX

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

KEY = app_key("default", "webxample")
ROTATIONS = 3


@pytest.fixture
def host(short_tmp: Path):
    with running_host(short_tmp / "host-a") as host:
        yield host


@pytest.fixture
def port() -> int:
    return free_port()


def release_record(host, result: core.Result) -> dict:
    build_id = result.status.serving_build_id
    return json.loads((host.layout.app(KEY).release(build_id) / "release.json").read_text())


def running_argv(host, revision: str) -> list[str]:
    pid = host.supervisor.main_pid(watcher_name(KEY, revision))
    assert pid, f"no process for {revision}"
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


def assert_no_failures(tally: dict) -> None:
    assert tally["errors"] == 0 and tally["badStatus"] == 0, tally["failures"]


@pytest.mark.parametrize("gunicorn", GUNICORN_MATRIX, ids=lambda v: f"gunicorn-{v}")
def test_gunicorn_version_deploys_and_rotates_under_load(host, real_index, port, gunicorn):
    requirements = ["webxample==1.0.0", f"gunicorn=={gunicorn}", *GUNICORN_EXTRA.get(gunicorn, ())]

    def deploy(rotation: int) -> core.Result:
        # Same venv, new runtime config: each rotation is a new revision on the same build.
        release = release_for(real_index.url, "1.0.0", port=port, requirements=requirements,
                              env={"ROTATION": str(rotation)}, static=[])
        result = core.reconcile(host, release)
        assert result.status.phase == "Ready", f"{result.status.message}\n{result.status.log_tail}"
        return result

    first = deploy(0)
    assert release_record(host, first)["gunicorn"] == gunicorn
    argv = running_argv(host, first.status.serving_revision)
    assert ("--no-control-socket" in argv) == (tuple(map(int, gunicorn.split(".")[:2])) >= (25, 1)), argv

    def rotate(rotation: int) -> None:
        assert plan.SWITCH in deploy(rotation).plan.kinds()

    tally = rotate_under_load(port, rotate, ROTATIONS, label=f"gunicorn {gunicorn}", host_header=SERVER_NAME,
                              expect=["1.0.0"], max_seconds=120)
    assert_no_failures(tally)
    assert tally["byKind"].get("slow", 0) >= ROTATIONS and tally["byKind"].get("post", 0) > 50, tally


def test_release_built_before_versions_were_recorded_is_detected_at_start(host, real_index, port):
    requirements = ["webxample==1.0.0", "gunicorn==23.0.0"]

    def deploy(rotation: int) -> core.Result:
        release = release_for(real_index.url, "1.0.0", port=port, requirements=requirements,
                              env={"ROTATION": str(rotation)}, static=[])
        return core.reconcile(host, release)

    first = deploy(0)
    record_file = host.layout.app(KEY).release(first.status.serving_build_id) / "release.json"
    old_record = {k: v for k, v in json.loads(record_file.read_text()).items()
                  if k not in ("gunicorn", "uvicorn", "uvicornWorker", "setuptools")}
    record_file.write_text(json.dumps(old_record))  # as an older apprelease wrote it
    second = deploy(1)
    assert second.status.phase == "Ready", second.status.message
    assert second.status.last_build.reused  # detected from the venv, nothing rebuilt
    assert "--no-control-socket" not in running_argv(host, second.status.serving_revision)


class Stream(threading.Thread):
    """One streaming request through nginx, read to its end in the background."""

    def __init__(self, port: int, seconds: float):
        super().__init__(daemon=True)
        self.port, self.seconds = port, seconds
        self.status: int | None = None
        self.served_by = ""
        self.body = ""
        self.error: BaseException | None = None
        self.started = threading.Event()

    def run(self) -> None:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            conn.request("GET", f"/stream?seconds={self.seconds}&interval=0.2", headers={"Host": SERVER_NAME})
            resp = conn.getresponse()
            self.status, self.served_by = resp.status, resp.getheader("X-Served-By", "")
            self.started.set()
            self.body = resp.read().decode()
            conn.close()
        except BaseException as exc:  # reported by the test thread
            self.error = exc
            self.started.set()

    def check_finished_on(self, version: str) -> None:
        assert self.error is None, repr(self.error)
        assert self.status == 200 and self.served_by == f"fastapi-app/{version}", (self.status, self.served_by)
        *chunks, last = self.body.splitlines()
        # Whole: every chunk arrived and the generator ran to its end ...
        assert last == f"done {len(chunks)}" and len(chunks) >= 10, self.body
        # ... in one process of the old revision, which was stopped gracefully around it.
        assert len({tuple(chunk.split()[1:]) for chunk in chunks}) == 1 and chunks[0].split()[1] == version, self.body


def test_fastapi_on_uvicorn_workers_rotates_under_load_and_finishes_streams(host, real_index, port):
    versions = ["1.0.0", "2.0.0"]

    def deploy(version: str) -> core.Result:
        release = release_for(
            real_index.url, version, port=port, requirements=[f"fastapi-app=={version}", "gunicorn==23.0.0"],
            entrypoint="fastapi_app.main:app", server={"workerClass": "uvicorn"}, static=[],
        )
        result = core.reconcile(host, release)
        assert result.status.phase == "Ready", f"{result.status.message}\n{result.status.log_tail}"
        return result

    first = deploy(versions[0])
    record = release_record(host, first)
    assert (record["gunicorn"], record["uvicornWorker"]) == ("23.0.0", "0.4.0"), record
    argv = running_argv(host, first.status.serving_revision)
    assert argv[argv.index("--worker-class") + 1] == "uvicorn_worker.UvicornWorker" and "--threads" not in argv
    assert "--no-control-socket" not in argv  # gunicorn 23 does not know it
    streams: list[tuple[Stream, str]] = []

    def rotate(rotation: int) -> None:
        old, new = versions[(rotation - 1) % 2], versions[rotation % 2]
        stream = Stream(port, seconds=4)  # started on the old revision, must finish there
        stream.start()
        assert stream.started.wait(10), "the stream did not start"
        assert plan.SWITCH in deploy(new).plan.kinds()
        streams.append((stream, old))

    tally = rotate_under_load(port, rotate, ROTATIONS, label="fastapi-app on uvicorn-worker", host_header=SERVER_NAME,
                              expect=versions, max_seconds=180)
    for stream, _ in streams:
        stream.join(timeout=30)
    print(f"{len(streams)} streams of 4 s finished on the old revision")
    for stream, old in streams:
        stream.check_finished_on(old)
    assert_no_failures(tally)
    assert set(tally["versions"]) == set(versions)
    assert tally["byKind"].get("slow", 0) >= ROTATIONS and tally["byKind"].get("post", 0) > 50, tally


def test_django_app_builds_from_real_django_and_serves(host, real_index, port, short_tmp):
    release = release_for(
        real_index.url, "1.0.0", port=port, requirements=["django-app==1.0.0", "gunicorn==23.0.0"],
        entrypoint="django_app.wsgi:application", server={"workerClass": "sync"}, static=[],
        env={"DJANGO_APP_DB": str(short_tmp / "django.sqlite3"), "DJANGO_ALLOWED_HOSTS": SERVER_NAME},
    )
    result = core.reconcile(host, release)
    assert result.status.phase == "Ready", f"{result.status.message}\n{result.status.log_tail}"
    resp = http_get(port, "/version", SERVER_NAME)
    assert resp.status == 200 and resp.json()["version"] == "1.0.0", resp
    assert resp.headers["x-served-by"] == "django-app/1.0.0"
    argv = running_argv(host, result.status.serving_revision)
    assert argv[argv.index("--worker-class") + 1] == "sync" and "--threads" not in argv
