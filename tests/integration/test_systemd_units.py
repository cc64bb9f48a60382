"""The host's service manager owns the long-lived processes: a real systemd per test host.

Covers: the harness (hack/systemd_host.py) boots a systemd that starts nothing of this
machine, runs units in cgroups under its own apprelease-test-* sub-cgroup, and a kill leaves
no process and no cgroup; on a host reached like the DaemonSet reaches PID 1 (nsenter -t
<pid>), the agent writes, enables and starts apprelease-supervisor.service and
apprelease-nginx.service, circusd and the apps run in the supervisor unit's cgroup and are
not the agent's children, and a second start or reconcile changes nothing; a unit file that
was edited, and a unit that was disabled, are repaired without restarting the running
daemon; a reboot (every process of the host killed, its systemd started again) serves the
last good revision before any agent runs, with only the serving revision's watcher, and the
agent that comes back converges without restarting anything; supervisord runs in the unit
too, and `agent stop` stops and disables it; resources.memoryMax and cpuWeight put each
revision's gunicorn into its own scope under the app's slice, rotations under load fail no
request, a worker over the limit is killed by the kernel, replaced by gunicorn, and the
status says why, and after a reboot the revision is back in its scope.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from apprelease.host import core, plan, units
from apprelease.host.layout import app_key, watcher_name
from support.hosts import SERVER_NAME, release_for
from support.load import assert_no_failed_requests, rotate_under_load
from support.nginx import free_port, http_get
from support.systemd import SystemdHost, make_unit_host, processes_of_unit, systemd_host, unit_state

pytestmark = pytest.mark.integration

KEY = app_key("default", "webxample")


def test_harness_boots_runs_units_in_its_own_cgroup_and_kills_cleanly(short_tmp: Path):
    with systemd_host(short_tmp / "sd") as sd:
        # nothing of this machine was started: no generators, only the empty targets
        services = sd.systemctl("list-units", "--type=service", "--all", "--plain", "--no-legend").stdout
        assert services.strip() == "", services
        (sd.unit_dir / "hello.service").write_text("[Service]\nExecStart=/bin/sleep 600\n")
        sd.systemctl("daemon-reload")
        sd.systemctl("start", "hello.service")
        state = unit_state(sd, "hello.service")
        assert state["ActiveState"] == "active" and state["ControlGroup"] == "/system.slice/hello.service"
        sleeper = processes_of_unit(sd, "hello.service")
        assert list(sleeper.values()) == ["/bin/sleep 600"]
        pid = next(iter(sleeper))
        # its cgroup, seen from this machine, is below the test's sub-cgroup, in every hierarchy
        for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
            assert f"/{sd.cgroup_name}" in line, line
        dirs = sd.cgroup_dirs()
        # /run is its own, but /run/lock is this machine's: the hosts share its accounts, and
        # the lock agents take to create one (host/users.py ACCOUNTS_LOCK)
        markers = [Path(run) / f"apprelease-test-{sd.cgroup_name}" for run in ("/run/lock", "/run")]
        try:
            for marker in markers:
                marker.write_text("this machine's")
            seen = [subprocess.run([*sd.nsenter(), "cat", str(m)], capture_output=True, text=True, timeout=30).stdout
                    for m in markers]
            assert seen == ["this machine's", ""], seen
        finally:
            for marker in markers:
                marker.unlink(missing_ok=True)
    assert not Path(f"/proc/{pid}").exists()
    assert not any(d.exists() for d in dirs.values()), dirs


# -- one systemd host shared by the tests below (in order: start, drift, deploy, reboot) ----------


@pytest.fixture(scope="module")
def host_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="ar-sd-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def sd(host_dir: Path) -> Iterator[SystemdHost]:
    with systemd_host(host_dir / "systemd") as running:
        yield running


@pytest.fixture(scope="module")
def port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def host(host_dir: Path, sd: SystemdHost) -> core.Host:
    host = make_unit_host(host_dir / "root", sd)
    host.start()
    return host


def served_version(port: int) -> str:
    resp = http_get(port, "/version", SERVER_NAME)
    assert resp.status == 200, resp
    return resp.json()["version"]


def test_daemons_run_as_enabled_units_not_as_children_of_the_agent(sd, host):
    for unit in (units.SUPERVISOR_UNIT, units.NGINX_UNIT):
        state = unit_state(sd, unit)
        assert (state["ActiveState"], state["UnitFileState"]) == ("active", "enabled"), (unit, state)
    circusd = processes_of_unit(sd, units.SUPERVISOR_UNIT)
    assert any("circus.circusd" in cmd for cmd in circusd.values()), circusd
    nginx = processes_of_unit(sd, units.NGINX_UNIT)
    assert any(cmd.startswith("nginx: master process") for cmd in nginx.values()), nginx
    for pid in [*circusd, *nginx]:
        assert _ppid(pid) != os.getpid()
    assert host.supervisor.daemon_pid() in circusd  # pid files translated to this machine's pids
    assert host.nginx.master_pid() in nginx
    # a second start (the agent restarting) touches no unit
    before = {u: unit_state(sd, u)["MainPID"] for u in (units.SUPERVISOR_UNIT, units.NGINX_UNIT)}
    host.start()
    assert {u: unit_state(sd, u)["MainPID"] for u in before} == before


def test_edited_and_disabled_units_are_repaired_without_a_restart(sd, host):
    supervisor_file = sd.unit_dir / units.SUPERVISOR_UNIT
    good = supervisor_file.read_text()
    before = unit_state(sd, units.SUPERVISOR_UNIT)["MainPID"]
    supervisor_file.write_text(good.replace("Restart=always", "Restart=no"))
    sd.systemctl("disable", units.NGINX_UNIT)
    assert unit_state(sd, units.NGINX_UNIT)["UnitFileState"] == "disabled"
    host.ensure_daemons()  # what the agent runs at each resync
    assert supervisor_file.read_text() == good
    assert unit_state(sd, units.NGINX_UNIT)["UnitFileState"] == "enabled"
    assert unit_state(sd, units.SUPERVISOR_UNIT)["MainPID"] == before


def test_apps_run_in_the_supervisor_units_cgroup(sd, host, package_index, port):
    result = core.reconcile(host, release_for(package_index.url, "1.0.0", port=port))
    assert result.status.phase == "Ready", result.status.message
    assert served_version(port) == "1.0.0"
    gunicorn = host.supervisor.main_pid(watcher_name(KEY, result.status.serving_revision))
    assert gunicorn is not None
    in_unit = processes_of_unit(sd, units.SUPERVISOR_UNIT)
    # circus reports the host's pid; the unit's cgroup holds the app's master and its workers
    assert sum("gunicorn" in cmd for cmd in in_unit.values()) >= 3, in_unit
    again = core.reconcile(host, release_for(package_index.url, "1.0.0", port=port))
    assert not again.plan, str(again.plan)
    # a rotation leaves only the new revision's watcher config on disk
    result = core.reconcile(host, release_for(package_index.url, "2.0.0", port=port))
    assert result.status.phase == "Ready", result.status.message
    assert served_version(port) == "2.0.0"


def test_a_reboot_serves_the_last_good_revision_before_any_agent(sd, host, package_index, port):
    # after the previous test a rotation 1.0.0 -> 2.0.0 happened here; alone, this deploys 2.0.0
    result = core.reconcile(host, release_for(package_index.url, "2.0.0", port=port))
    assert result.status.phase == "Ready", result.status.message
    serving = result.status.serving_revision
    sd.kill()  # every process of the host dies: systemd, circusd, gunicorn, nginx
    with pytest.raises(OSError):
        http_get(port, "/version", SERVER_NAME)
    started = time.monotonic()
    sd.start()
    # No agent, no Host object: only the units on disk and the watcher configs under the root.
    deadline = started + 60
    while True:
        try:
            if http_get(port, "/version", SERVER_NAME).status == 200:
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, "nothing served within 60 s of the reboot"
        time.sleep(0.1)
    serving_after = time.monotonic() - started
    assert served_version(port) == "2.0.0"
    print(f"serving {serving_after:.1f} s after systemd started")
    # the agent comes back (a new Host: nothing in memory) and converges without a restart
    agent = make_unit_host(host.layout.root, sd)
    agent.start()
    watchers = agent.supervisor.watchers()
    assert sorted(watchers) == [watcher_name(KEY, serving)], watchers
    pid = agent.supervisor.main_pid(watcher_name(KEY, serving))
    result = core.reconcile(agent, release_for(package_index.url, "2.0.0", port=port))
    assert result.status.phase == "Ready", result.status.message
    assert plan.START not in result.plan.kinds() and plan.SWITCH not in result.plan.kinds(), str(result.plan)
    assert agent.supervisor.main_pid(watcher_name(KEY, serving)) == pid


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_supervisord_runs_in_its_unit_too(short_tmp: Path, package_index):
    """The other backend: supervisord (nodaemon) as apprelease-supervisor.service."""
    port = free_port()
    with systemd_host(short_tmp / "sd") as sd:
        host = make_unit_host(short_tmp / "root", sd, "supervisord")
        host.start()
        daemon = processes_of_unit(sd, units.SUPERVISOR_UNIT)
        assert any("supervisor.supervisord" in cmd for cmd in daemon.values()), daemon
        result = core.reconcile(host, release_for(package_index.url, "1.0.0", port=port))
        assert result.status.phase == "Ready", result.status.message
        assert served_version(port) == "1.0.0"
        assert sum("gunicorn" in cmd for cmd in processes_of_unit(sd, units.SUPERVISOR_UNIT).values()) >= 3
        host.supervisor.stop_daemon()  # `apprelease agent stop`: stopped and disabled
        state = unit_state(sd, units.SUPERVISOR_UNIT)
        assert (state["ActiveState"], state["UnitFileState"]) == ("inactive", "disabled"), state


def test_resources_are_enforced_per_revision_and_an_oom_kill_is_reported(short_tmp: Path, package_index):
    """resources.memoryMax/cpuWeight: each revision's gunicorn runs in its own scope under the
    app's slice; rotations under load stay at 0 failed requests; a worker over the limit is
    killed by the kernel, gunicorn starts another, and the status says why."""
    port = free_port()
    limits = {"resources": {"memoryMax": "160M", "cpuWeight": 50}}
    with systemd_host(short_tmp / "sd") as sd:
        host = make_unit_host(short_tmp / "root", sd)
        host.start()

        def deploy(version: str) -> core.Result:
            result = core.reconcile(host, release_for(package_index.url, version, port=port, extra=limits))
            assert result.status.phase == "Ready", result.status.message
            return result

        revision = deploy("1.0.0").status.serving_revision
        scope = units.revision_scope(watcher_name(KEY, revision))
        state = unit_state(sd, scope)
        assert state["ActiveState"] == "active", state
        assert state["ControlGroup"] == f"/apprelease.slice/{units.app_slice(KEY)}/{scope}", state
        limit = sorted(sd.systemctl("show", scope, "--property=MemoryMax,CPUWeight").stdout.split())
        assert limit == ["CPUWeight=50", f"MemoryMax={160 << 20}"], limit
        assert sum("gunicorn" in cmd for cmd in processes_of_unit(sd, scope).values()) == 3  # master + 2 workers
        tally = rotate_under_load(port, lambda i: deploy(("1.0.0", "2.0.0")[i % 2]), 4,
                                  label="rotations with a scope per revision", host_header=SERVER_NAME,
                                  expect=["1.0.0", "2.0.0"], max_seconds=200)
        assert_no_failed_requests([tally])
        revision = deploy("1.0.0").status.serving_revision
        scope = units.revision_scope(watcher_name(KEY, revision))
        master = host.supervisor.main_pid(watcher_name(KEY, revision))
        try:
            hog = http_get(port, "/hog?mb=400", SERVER_NAME)
            assert hog.status == 502, hog  # the worker died under the request
        except OSError:
            pass
        deadline = time.monotonic() + 30
        while served_version(port) != "1.0.0":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        result = deploy("1.0.0")
        assert result.status.oom_kills and result.status.oom_kills >= 1, result.status
        assert "killed 1 of its processes for exceeding resources.memoryMax 160M" in (result.status.message or "")
        assert host.supervisor.main_pid(watcher_name(KEY, revision)) == master  # gunicorn replaced its worker
        print(f"\nOOM kill reported: {result.status.message}")
        # after a reboot circusd starts the revision in its scope again, before any agent
        sd.reboot()
        deadline = time.monotonic() + 60
        while True:
            try:
                if served_version(port) == "1.0.0":
                    break
            except (OSError, AssertionError):
                pass
            assert time.monotonic() < deadline, "nothing served after the reboot"
            time.sleep(0.1)
        assert unit_state(sd, scope)["ActiveState"] == "active"
