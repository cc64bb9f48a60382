"""The host agent end to end on one host: real uv, circusd/supervisord, gunicorn and nginx.

Covers, for both supervisor backends: first deploy served through nginx (static files by
nginx from static-live, not the app); a second reconcile does nothing; zero downtime over 20+
rotations under load (keep-alive and fresh connections, GET, POST with a body, 2-second
requests that must finish on the old revision); on circus, 20 rotations under page clients
that fetch a page and at once the hashed asset it names, with no asset 404 (static files
follow the revision: static-live and static-previous); static links missing on a serving host
(a host from before them) are pointed again; a failing revision leaves the old one serving and reports
Failed with the app's log tail, and is not retried in a loop; rollback to a retained
release performs no build; the progress callback hears each phase of a rotation as its step
begins (Building with uv's stages, then Starting .. Draining; a rollback never says Building); a proxy-only change re-renders nginx without new workers;
kill -9 of the gunicorn master; a crash between any two rotation steps converges (simulated at
each step, and a real kill -9 of the agent process); GC keeps
exactly revisionHistoryLimit releases besides the serving one; the CLI.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from apprelease.host import core, plan
from apprelease.host.layout import app_key, watcher_name
from support.hosts import SERVER_NAME, make_host, release_for, running_host, stop_host
from support.load import LoadProcess, rotate_under_load
from support.nginx import free_port, http_get

pytestmark = pytest.mark.integration

KEY = app_key("default", "webxample")


@pytest.fixture(params=["circus", "supervisord"])
def backend(request) -> str:
    return request.param


@pytest.fixture
def host(short_tmp: Path, backend: str):
    with running_host(short_tmp / "host-a", backend) as host:
        yield host


@pytest.fixture
def port() -> int:
    return free_port()


def served_version(port: int) -> str:
    resp = http_get(port, "/version", SERVER_NAME)
    assert resp.status == 200, resp
    return resp.json()["version"]


def deploy(host, index, version, port, **options) -> core.Result:
    return core.reconcile(host, release_for(index.url, version, port=port, **options))


def test_first_deploy_serves_through_nginx_and_static_from_nginx(host, package_index, port):
    result = deploy(host, package_index, "1.0.0", port)
    assert result.status.phase == "Ready", result.status.message
    assert result.status.serving_version == "1.0.0"
    assert served_version(port) == "1.0.0"
    static = http_get(port, "/static/hello.txt", SERVER_NAME)
    assert static.status == 200 and b"1.0.0" in static.body
    assert "x-served-by" not in static.headers  # nginx served it, not the app
    paths = host.layout.app(KEY)
    assert os.readlink(paths.static_live) == f"releases/{result.status.serving_build_id}"
    assert not paths.static_previous.is_symlink()  # nothing served before
    app = http_get(port, "/", SERVER_NAME)
    assert app.headers["x-served-by"] == "webxample/1.0.0"
    # the app runs as its own user, not root
    pid = host.supervisor.main_pid(watcher_name(KEY, result.status.serving_revision))
    assert pid and os.stat(f"/proc/{pid}").st_uid != 0


def test_second_reconcile_does_nothing(host, package_index, port):
    deploy(host, package_index, "1.0.0", port)
    again = deploy(host, package_index, "1.0.0", port)
    assert not again.plan, str(again.plan)
    assert again.status.phase == "Ready"


ALTERNATING = ["1.0.0", "2.0.0"]


def rotation_plan(host, package_index, port, i: int) -> list[str]:
    """Rotation `i` between the two versions: Ready, and the kinds of its plan."""
    result = deploy(host, package_index, ALTERNATING[i % 2], port)
    assert result.status.phase == "Ready", result.status.message
    return result.plan.kinds()


def test_zero_downtime_over_many_rotations(host, package_index, port):
    versions = ALTERNATING
    deploy(host, package_index, versions[0], port)
    rotations = 20

    def rotate(i: int) -> None:
        assert plan.SWITCH in rotation_plan(host, package_index, port, i)

    tally = rotate_under_load(port, rotate, rotations, label="webxample", host_header=SERVER_NAME, expect=versions,
                              max_seconds=400)
    assert tally["errors"] == 0 and tally["badStatus"] == 0, tally["failures"]
    assert set(tally["versions"]) == set(versions)
    assert tally["byKind"].get("slow", 0) >= rotations // 2, tally  # 2 s requests completed across rotations
    assert tally["byKind"].get("post", 0) > 100 and tally["ok"] > 1000, tally


@pytest.mark.parametrize("backend", ["circus"])  # nginx's part: the supervisor does not matter here
def test_hashed_assets_never_404_over_rotations_under_load(host, package_index, port):
    """Pages name assets by a hash of their content (webxample's build writes app.<hash>.css
    per version); clients fetch a page and at once its asset, as a browser does, while 20
    rotations alternate two versions. nginx finds the asset of a page rendered by either
    revision: the new one is in static-live before the switch, the old one stays in
    static-previous after it."""
    versions = ALTERNATING
    deploy(host, package_index, versions[0], port)
    rotations = 20

    def rotate(i: int) -> None:
        kinds = rotation_plan(host, package_index, port, i)
        assert kinds.index(plan.POINT_STATIC_PREVIOUS) < kinds.index(plan.POINT_STATIC) < kinds.index(plan.SWITCH)

    tally = rotate_under_load(port, rotate, rotations, label="hashed assets (pages + assets)", host_header=SERVER_NAME,
                              expect=versions, max_seconds=400, keepalive=0, fresh=0, fresh_post=0, slow=0, page=4)
    pages, assets = tally["byKind"].get("page", 0), tally["byKind"].get("asset", 0)
    failed = tally["errors"] + tally["badStatus"]
    print(f"\nhashed assets under load: {rotations} rotations, {pages} pages + {assets} assets "
          f"= {pages + assets} requests, {failed} failed ({tally['failedByKind'] or 'none'}) in {tally['seconds']} s")
    assert failed == 0 and not tally["failedByKind"], tally["failures"]
    assert set(tally["versions"]) == set(versions)
    assert assets == pages > 200, tally  # every page's asset was fetched, and found
    paths = host.layout.app(KEY)
    builds = {v: release_for(package_index.url, v, port=port).spec.build_id for v in versions}
    assert os.readlink(paths.static_live) == f"releases/{builds[versions[0]]}"  # rotation 20 served 1.0.0
    assert os.readlink(paths.static_previous) == f"releases/{builds[versions[1]]}"


def test_missing_static_links_are_pointed_again(host, package_index, port):
    """A host from before the links (or one whose links were lost) serves static files again
    at the next reconcile, without new workers."""
    first = deploy(host, package_index, "1.0.0", port)
    paths = host.layout.app(KEY)
    paths.static_live.unlink()
    assert http_get(port, "/static/hello.txt", SERVER_NAME).status == 404
    again = deploy(host, package_index, "1.0.0", port)
    assert again.plan.kinds() == [plan.POINT_STATIC], str(again.plan)
    assert http_get(port, "/static/hello.txt", SERVER_NAME).status == 200
    assert again.status.serving_revision == first.status.serving_revision


def test_failed_health_check_keeps_old_revision_serving(host, package_index, port):
    deploy(host, package_index, "2.0.0", port)
    load = LoadProcess(port, host_header=SERVER_NAME, expect=["2.0.0"], max_seconds=120, slow=1)
    try:
        bad = deploy(host, package_index, "3.0.0", port, fail_health=True, health_timeout=4)
        tally = load.finish()
    finally:
        load.kill()
    assert bad.status.phase == "Failed"
    assert "failed its health check" in bad.status.message and "/healthz answered 500" in bad.status.message
    assert bad.status.log_tail and "healthz" in bad.status.log_tail.lower()
    assert bad.status.serving_version == "2.0.0"
    assert served_version(port) == "2.0.0"
    assert tally["errors"] == 0 and tally["badStatus"] == 0, tally["failures"]
    # no restart loop: the same failed spec is not started again
    again = deploy(host, package_index, "3.0.0", port, fail_health=True, health_timeout=4)
    assert again.plan.kinds() == [plan.REPORT_FAILED] and again.status.phase == "Failed"
    failed_revision = release_for(package_index.url, "3.0.0", port=port, fail_health=True, health_timeout=4).spec.revision
    assert failed_revision not in core.app_watchers(host.supervisor, KEY)


@pytest.mark.parametrize(
    ("options", "said", "in_tail"),
    [
        pytest.param({"server": {"extraArgs": ["--no-such-option"]}},
                     r"exited with code 2 before it became healthy: gunicorn: error: unrecognized arguments: --no-such-option$",
                     "usage:", id="unknown-option"),
        # gunicorn halts with 3 ("Reason: Worker failed to boot."), or, when the worker's death
        # interrupts its own start-up, dies of the uncaught HaltServer (1): both seen here. The
        # 30-line tail of such a run is interleaved tracebacks, ending anywhere in them.
        pytest.param({"entrypoint": "webxample.missing:application"},
                     r"exited with code [13] before it became healthy: .*(Worker failed to boot\.|HaltServer.*3>)$",
                     "Worker", id="import-error"),
    ],
)
def test_revision_that_exits_fails_fast_saying_how(host, package_index, port, options, said, in_tail):
    deploy(host, package_index, "1.0.0", port)
    started = time.monotonic()
    bad = deploy(host, package_index, "2.0.0", port, health_timeout=60, **options)
    seconds = time.monotonic() - started
    assert bad.status.phase == "Failed"
    revision = release_for(package_index.url, "2.0.0", port=port, health_timeout=60, **options).spec.revision
    status = f"{bad.status.message}\n{bad.status.log_tail}"
    assert bad.status.message.startswith(f"revision {revision} (2.0.0) "), status
    assert re.search(said, bad.status.message), status
    assert "FileNotFoundError" not in bad.status.message and "ConnectionRefused" not in bad.status.message
    assert bad.status.log_tail and in_tail in bad.status.log_tail
    print(f"\n{host.supervisor.kind}: failed after {seconds:.1f}s (deadline 60 s): {bad.status.message}")
    assert seconds < 20, f"the gate waited {seconds:.1f}s for a process that had exited"  # not the 60 s deadline
    assert bad.status.serving_version == "1.0.0" and served_version(port) == "1.0.0"
    assert revision not in core.app_watchers(host.supervisor, KEY)


def test_rollback_to_retained_release_builds_nothing(host, package_index, port):
    deploy(host, package_index, "1.0.0", port)
    deploy(host, package_index, "2.0.0", port)
    package_index.index.clear_requests()
    commands_before = len(host.executor.log)
    back = deploy(host, package_index, "1.0.0", port)
    assert back.status.phase == "Ready" and back.status.last_build.reused
    assert package_index.index.requests == []  # no resolver, no download
    assert not any("uv" in Path(argv[0]).name or "pip" in argv for argv in host.executor.log[commands_before:])
    assert served_version(port) == "1.0.0"


def test_progress_hears_each_phase_as_its_step_begins(host, package_index, port):
    heard: list[tuple[str, str]] = []
    core.reconcile(host, release_for(package_index.url, "1.0.0", port=port), progress=lambda *p: heard.append(p))
    phases = list(dict.fromkeys(phase for phase, _ in heard))
    assert phases == ["Building", "Starting", "HealthChecking", "Switching"], heard  # nothing to drain yet
    building = [message for phase, message in heard if phase == "Building"]
    assert building[0].startswith("building the venv of 1.0.0 (buildId ") and building[0].endswith("finding python3.11")
    assert any(m.endswith("resolving the requirements") for m in building)
    assert any(m.endswith("installing 2 packages") for m in building), building

    v2 = release_for(package_index.url, "2.0.0", port=port)
    heard.clear()
    core.reconcile(host, v2, progress=lambda *p: heard.append(p))
    assert list(dict.fromkeys(phase for phase, _ in heard)) == [
        "Building", "Starting", "HealthChecking", "Switching", "Draining"]
    assert ("Starting", f"starting revision {v2.spec.revision} (2.0.0)") in heard

    heard.clear()  # back to 1.0.0: on disk, so nothing is built and Building is never said
    back = core.reconcile(host, release_for(package_index.url, "1.0.0", port=port), progress=lambda *p: heard.append(p))
    assert back.status.phase == "Ready"
    assert list(dict.fromkeys(phase for phase, _ in heard)) == ["Starting", "HealthChecking", "Switching", "Draining"]


def test_proxy_only_change_rewrites_nginx_without_new_workers(host, package_index, port):
    first = deploy(host, package_index, "1.0.0", port)
    pid = host.supervisor.main_pid(watcher_name(KEY, first.status.serving_revision))
    changed = deploy(host, package_index, "1.0.0", port, clientMaxBodySize="2m")
    assert changed.plan.kinds() == [plan.WRITE_SITE]
    assert host.supervisor.main_pid(watcher_name(KEY, first.status.serving_revision)) == pid
    assert "client_max_body_size 2m;" in host.nginx.current_site(KEY)
    assert served_version(port) == "1.0.0"


def test_killed_gunicorn_master_is_restarted(host, package_index, port):
    result = deploy(host, package_index, "1.0.0", port)
    name = watcher_name(KEY, result.status.serving_revision)
    pid = host.supervisor.main_pid(name)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        new = host.supervisor.main_pid(name)
        if new and new != pid:
            try:
                if served_version(port) == "1.0.0":
                    break
            except (OSError, AssertionError):
                pass
        time.sleep(0.2)
    else:
        pytest.fail("the supervisor did not bring the app back after kill -9 of its master")


def test_gc_keeps_history_limit_plus_serving(host, package_index, port):
    requirement_sets = [["webxample==1.0.0"], ["webxample==2.0.0"], ["webxample==3.0.0"],
                        ["webxample==1.0.0", "gunicorn==27.0.1"]]
    for reqs in requirement_sets:
        result = deploy(host, package_index, "1.0.0" if "webxample==1.0.0" in reqs else reqs[0].split("==")[1],
                        port, limit=2, requirements=reqs)
        assert result.status.phase == "Ready", result.status.message
    kept = sorted(p.name for p in host.layout.app(KEY).releases.iterdir())
    assert len(kept) == 3, kept  # limit 2 + the serving one
    assert result.status.serving_build_id in kept


@pytest.mark.parametrize("backend", ["circus"], indirect=False)
@pytest.mark.parametrize("crash_after", range(1, 8))
def test_crash_between_rotation_steps_converges(short_tmp, package_index, backend, crash_after):
    host = make_host(short_tmp / "host-a", backend)
    host.start()
    try:
        port = free_port()
        deploy(host, package_index, "1.0.0", port)
        release = release_for(package_index.url, "2.0.0", port=port)
        key = app_key("default", "webxample")
        app_state = core.state.load(host.layout.app(key).state_file)
        observed = core.observe(host, key, app_state, serving_next=release.spec.build_id, limit=5)
        site = host.nginx.render_site(key, release.spec.proxy)
        rotation = plan.plan_release(
            plan.Desired(release.spec.build_id, release.spec.revision, release.spec.user, site), observed)
        assert len(rotation.actions) >= crash_after
        # the agent dies after `crash_after` steps: only those ran
        core._Apply(host, key, release.spec, site, app_state, "default").run(rotation.actions[:crash_after], [])
        assert served_version(port) in ("1.0.0", "2.0.0")  # serving throughout
        result = core.reconcile(host, release)
        assert result.status.phase == "Ready", result.status.message
        assert served_version(port) == "2.0.0"
        assert core.app_watchers(host.supervisor, key) == {release.spec.revision: "running"}
        assert not core.reconcile(host, release).plan
    finally:
        stop_host(host)


def test_cli_reconcile_and_status(short_tmp, package_index, port):
    root = short_tmp / "host-cli"
    manifest = short_tmp / "hr.yaml"
    manifest.write_text(yaml.safe_dump(release_for(package_index.url, "1.0.0", port=port).wire()))
    cli = [sys.executable, "-m", "apprelease.cli"]
    base = ["--root", str(root), "--listen-address", "127.0.0.1"]
    try:
        out = subprocess.run([*cli, "agent", "reconcile", "-f", str(manifest), *base, "-o", "json"],
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["status"]["phase"] == "Ready"
        assert served_version(port) == "1.0.0"
        again = subprocess.run([*cli, "agent", "reconcile", "-f", str(manifest), *base, "-o", "json"],
                               capture_output=True, text=True, timeout=300)
        assert json.loads(again.stdout)["plan"] == []
        status = subprocess.run([*cli, "agent", "status", *base, "-o", "json"], capture_output=True, text=True)
        (app,) = json.loads(status.stdout)
        assert app["app"] == KEY and app["nginxSite"] and len(app["running"]) == 1
    finally:
        subprocess.run([*cli, "agent", "stop", *base], capture_output=True, timeout=120)


def test_kill_9_of_agent_process_mid_rotation_converges(short_tmp, package_index):
    """A real crash: the CLI agent is SIGKILLed once the new watcher exists, before the switch."""
    root, port = short_tmp / "host-k", free_port()
    cli = [sys.executable, "-m", "apprelease.cli"]
    base = ["--root", str(root), "--listen-address", "127.0.0.1"]
    manifests = {}
    for version in ("1.0.0", "2.0.0"):
        manifests[version] = short_tmp / f"hr-{version}.yaml"
        manifests[version].write_text(yaml.safe_dump(release_for(package_index.url, version, port=port).wire()))
    host = make_host(root)
    try:
        subprocess.run([*cli, "agent", "reconcile", "-f", str(manifests["1.0.0"]), *base], check=True,
                       capture_output=True, timeout=300)
        agent = subprocess.Popen([*cli, "agent", "reconcile", "-f", str(manifests["2.0.0"]), *base],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while len(core.app_watchers(host.supervisor, KEY)) < 2 and agent.poll() is None:
            assert time.monotonic() < deadline, "the new watcher never appeared"
            time.sleep(0.05)
        agent.kill()
        agent.wait()
        assert served_version(port) == "1.0.0"  # the old revision still serves
        out = subprocess.run([*cli, "agent", "reconcile", "-f", str(manifests["2.0.0"]), *base, "-o", "json"],
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["status"]["phase"] == "Ready"
        assert served_version(port) == "2.0.0"
        assert len(core.app_watchers(host.supervisor, KEY)) == 1
    finally:
        subprocess.run([*cli, "agent", "stop", *base], capture_output=True, timeout=120)
