"""Two hosts with a real systemd each, their agents reaching it as the DaemonSet reaches PID 1.

Each host is a systemd of its own (hack/systemd_host.py) and an agent run with
`--host-namespaces --host-pid <its pid>`; a real apiserver and the operator drive them. The
tests run in file order and share the hosts. Covers: v1 serves on both hosts from
apprelease-supervisor.service and apprelease-nginx.service; under load on both hosts, one
agent stopped with SIGTERM and the other killed with -9, both started again as a different
build of the agent, and converged: 0 failed requests, no watcher restarted (same gunicorn
masters), no venv rebuilt (same release directories); a live revision whose workers start
hanging after the switch is restarted gracefully after failureThreshold probes, reported in
HostRelease status.liveness and a Warning Event LivenessFailed with the app's log tail, the
AppRelease Degraded (LivenessFailed) while it lasts and not after; a reboot of one host
serves before its agent starts, and the agent converges without a restart; deleting the
AppRelease cleans both hosts. What kubectl shows is printed (README material).
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from pathlib import Path

import pytest

from apprelease.host import units
from apprelease.host.layout import app_key
from support.cluster import wait_for
from support.hosts import SERVER_NAME, app_release
from support.load import LoadProcess, assert_no_failed_requests, finish
from support.nginx import free_port
from support.systemd import SystemdHost, processes_of_unit, unit_state
from support.twohosts import HostsView, two_hosts

pytestmark = pytest.mark.e2e

SUFFIX = uuid.uuid4().hex[:6]
ADDRESSES = {f"sd-a-{SUFFIX}": "127.0.0.4", f"sd-b-{SUFFIX}": "127.0.0.5"}
HOST_A, HOST_B = sorted(ADDRESSES)
SELECTOR = {"e2e.apprelease.dev/suite": f"sd-{SUFFIX}"}
APP = "webxample"
BASE = Path(f"/tmp/ar-sd-{SUFFIX}")
HANG_FILE = BASE / "hang"  # webxample's /healthz hangs in workers started before its mtime
PERIOD, THRESHOLD, PROBE_TIMEOUT = 1, 3, 2


def host_args(sd: SystemdHost) -> list[str]:
    return ["--host-namespaces", "--host-pid", str(sd.pid)]


class World(HostsView):
    def __init__(self, cp, index, namespace, port, agents, operator, hosts: dict[str, SystemdHost]):
        super().__init__(cp, namespace, port, ADDRESSES, APP)
        self.index, self.agents, self.operator, self.hosts = index, agents, operator, hosts

    def apply(self, version: str) -> None:
        doc = app_release(self.index.url, version, port=self.port, name=APP, namespace=self.namespace,
                          env={"WEBXAMPLE_HANG_FILE": str(HANG_FILE)}).wire()
        doc["spec"]["hosts"] = {"nodeSelector": SELECTOR}
        doc["spec"]["healthCheck"].update(periodSeconds=PERIOD, failureThreshold=THRESHOLD,
                                          probeTimeoutSeconds=PROBE_TIMEOUT)
        self.cp.kubectl("apply", "-f", "-", input=json.dumps(doc))

    def wait_ready(self, version: str, timeout: float = 240) -> None:
        def done() -> bool:
            status = self.app_release().get("status") or {}
            return status.get("readyHosts") == 2 and all(self.served(n) == version for n in ADDRESSES)

        wait_for(done, timeout=timeout, message=lambda: f"not ready on {version}: "
                 f"{json.dumps(self.app_release().get('status'), indent=1)}\n"
                 + "\n".join(a.log_tail(30) for a in self.agents.values()))

    def root(self, node: str) -> Path:
        return self.agents[node].root

    def watchers(self, node: str) -> dict[int, str]:
        """gunicorn processes in the host's supervisor unit: {pid: command line}."""
        found = processes_of_unit(self.hosts[node], units.SUPERVISOR_UNIT)
        return {pid: cmd for pid, cmd in found.items() if "gunicorn" in cmd}

    def stable_watchers(self, node: str) -> dict[int, str]:
        """The gunicorn processes once a master and its 2 workers run and stay for 2 s."""
        seen: list[dict[int, str]] = [{}]

        def settled() -> bool:
            now = self.watchers(node)
            same = now == seen[0] and len(now) >= 3
            seen[0] = now
            return same

        wait_for(settled, timeout=60, interval=2, message=lambda: str(seen[0]))
        return seen[0]

    def releases(self, node: str) -> dict[str, int]:
        """buildId -> inode of its release directory (a rebuild makes a new directory)."""
        releases = self.root(node) / "apps" / app_key(self.namespace, APP) / "releases"
        return {p.name: p.stat().st_ino for p in releases.iterdir()}

    def kubectl_text(self, *args: str) -> str:
        return self.cp.kubectl(*args, "-n", self.namespace).stdout


@pytest.fixture(scope="module")
def world(cluster, package_index, tmp_path_factory):
    BASE.mkdir(mode=0o755)
    HANG_FILE.unlink(missing_ok=True)
    hosts: dict[str, SystemdHost] = {}
    try:
        for node in ADDRESSES:
            state = BASE / f"systemd-{node[:4]}"
            state.mkdir()
            hosts[node] = SystemdHost(state).start()
        with two_hosts(cluster, namespace=f"sd-{SUFFIX}", addresses=ADDRESSES, selector=SELECTOR,
                       logs=tmp_path_factory.mktemp("sd-logs"), roots=BASE / "roots",
                       host_args={n: host_args(sd) for n, sd in hosts.items()}) as w:
            yield World(cluster, package_index, w.namespace, free_port(), w.agents, w.operator, hosts)
    finally:
        for sd in hosts.values():
            sd.kill()
        shutil.rmtree(BASE, ignore_errors=True)


def test_v1_serves_from_units_on_both_hosts(world):
    started = time.monotonic()
    world.apply("1.0.0")
    world.wait_ready("1.0.0")
    print(f"\napply v1 -> serving on 2 systemd hosts: {time.monotonic() - started:.1f}s")
    for node, sd in world.hosts.items():
        for unit in (units.SUPERVISOR_UNIT, units.NGINX_UNIT):
            state = unit_state(sd, unit)
            assert (state["ActiveState"], state["UnitFileState"]) == ("active", "enabled"), (node, unit, state)
        assert len(world.watchers(node)) >= 3  # the gunicorn master and 2 workers, in the unit's cgroup


def _other_build(dest: Path) -> Path:
    """A copy of the agent's package under another version: what a new DaemonSet image brings."""
    import apprelease

    package = Path(apprelease.__file__).parent
    shutil.copytree(package, dest / "apprelease", ignore=shutil.ignore_patterns("__pycache__"))
    init = dest / "apprelease" / "__init__.py"
    init.write_text(init.read_text().replace(f'__version__ = "{apprelease.__version__}"',
                                             '__version__ = "0.1.0+newbuild"'))
    return dest


def test_agents_stopped_killed_and_upgraded_under_load_fail_no_request(world):
    watchers = {n: world.stable_watchers(n) for n in ADDRESSES}
    releases = {n: world.releases(n) for n in ADDRESSES}
    build = _other_build(BASE / "newbuild")
    loads = [LoadProcess(world.port, host_header=SERVER_NAME, expect=["1.0.0"], address=a, max_seconds=300,
                         keepalive=2, fresh=1, fresh_post=1, slow=1) for a in ADDRESSES.values()]
    try:
        time.sleep(1)
        agent_a, agent_b = world.agents[HOST_A], world.agents[HOST_B]
        assert agent_a.stop() == 0  # SIGTERM
        agent_b.kill()  # kill -9
        time.sleep(2)  # no agent on either host: the apps serve on
        offsets = {}
        for agent in (agent_a, agent_b):
            agent.env_extra = {"PYTHONPATH": str(build)}
            offset = offsets[agent.node] = len(agent.log_text())
            agent.start()
            wait_for(lambda a=agent, o=offset: a.log_matches(r"apprelease 0\.1\.0\+newbuild agent", o), timeout=60,
                     message=lambda a=agent: f"the new build did not start:\n{a.log_tail()}")
        for agent in (agent_a, agent_b):
            wait_for(lambda a=agent: a.probe("/readyz") == 200, timeout=60, message=lambda a=agent: a.log_tail())
        time.sleep(6)  # a few resyncs (every 2 s): each reconciles and repairs the units
        tallies = finish(loads)
    finally:
        for load in loads:
            load.kill()
    for tally in tallies:
        print(f"\nagent SIGTERM / kill -9 / new build under load: {tally['ok']} requests, "
              f"{tally['errors'] + tally['badStatus']} failed")
    assert_no_failed_requests(tallies)
    for node in ADDRESSES:
        assert world.watchers(node) == watchers[node], f"{node}: a watcher was restarted"
        assert world.releases(node) == releases[node], f"{node}: a venv was rebuilt"
        hr = world.host_releases()[node]
        assert hr["status"]["phase"] == "Ready", hr["status"]
        assert not world.agents[node].log_matches(r"start-watcher|ensure-release", offsets[node]), \
            world.agents[node].log_tail()


def test_a_hanging_live_revision_is_restarted_and_reported(world):
    masters_before = {n: min(world.stable_watchers(n)) for n in ADDRESSES}
    started = time.monotonic()
    HANG_FILE.write_text("hang\n")  # the workers running now start hanging on /healthz
    seen: dict[str, str] = {}

    def restarted_and_degraded() -> bool:
        hrs = world.host_releases()
        liveness = {n: (hr.get("status") or {}).get("liveness") or {} for n, hr in hrs.items()}
        degraded = world.conditions().get("Degraded", {})
        if degraded.get("reason") == "LivenessFailed" and "get_hr" not in seen:
            seen["get_hr"] = world.kubectl_text("get", "hr", "-o", "wide")
            seen["describe_ar"] = world.kubectl_text("describe", "ar", APP)
            seen["degraded"] = degraded["message"]
        return all(lv.get("restarts", 0) >= 1 for lv in liveness.values()) and "get_hr" in seen

    wait_for(restarted_and_degraded, timeout=120, interval=0.5,
             message=lambda: f"no liveness restart: {json.dumps({n: hr.get('status') for n, hr in world.host_releases().items()}, indent=1)}")
    restarted_after = time.monotonic() - started
    print(f"\nworkers hanging -> restarted on both hosts after {restarted_after:.1f}s "
          f"(period {PERIOD}s, threshold {THRESHOLD}, probe timeout {PROBE_TIMEOUT}s)")
    print("\n$ kubectl get hr -o wide (while Degraded)\n" + seen["get_hr"])
    print("$ kubectl describe ar (while Degraded)\n" + seen["describe_ar"])
    assert "live revision" in seen["degraded"] and "fails its liveness probe" in seen["degraded"]
    # the new workers (started after the hang began) answer: liveness passes, Degraded ends
    wait_for(lambda: world.conditions().get("Degraded", {}).get("status") == "False", timeout=120,
             message=lambda: json.dumps(world.conditions(), indent=1))
    for node, hr in world.host_releases().items():
        liveness = hr["status"]["liveness"]
        assert liveness["failing"] is False and liveness["restarts"] >= 1, liveness
        assert "hanging on purpose" in liveness["logTail"], liveness["logTail"]
        assert hr["status"]["phase"] == "Ready"
        # graceful: the same gunicorn master (same socket) with new workers, not a new watcher
        assert min(world.watchers(node)) == masters_before[node]
        assert world.served(node) == "1.0.0"
    events = json.loads(world.cp.kubectl("get", "events", "-n", world.namespace, "-o", "json",
                                         "--field-selector", "reason=LivenessFailed").stdout)["items"]
    assert {e["type"] for e in events} == {"Warning"}, events
    by_kind = {k: [e for e in events if e["involvedObject"]["kind"] == k] for k in ("HostRelease", "AppRelease")}
    # each agent's, with the app's log tail, on its HostRelease; one from the operator on the AppRelease
    assert len(by_kind["HostRelease"]) >= 2 and len(by_kind["AppRelease"]) == 1, events
    assert all("hanging on purpose" in e["message"] for e in by_kind["HostRelease"]), events
    print("$ kubectl get events --field-selector reason=LivenessFailed\n"
          + world.kubectl_text("get", "events", "--field-selector", "reason=LivenessFailed"))
    hr_name = next(iter(world.host_releases().values()))["metadata"]["name"]
    print(f"$ kubectl describe hr {hr_name}  (status.liveness and events)\n"
          + world.kubectl_text("describe", "hr", hr_name).split("Status:", 1)[-1])
    print("$ kubectl get hr -o wide (after)\n" + world.kubectl_text("get", "hr", "-o", "wide"))
    print("$ kubectl describe ar (after)\n" + world.kubectl_text("describe", "ar", APP))


def test_a_reboot_serves_before_the_agent_and_the_agent_restarts_nothing(world):
    node = HOST_A
    agent, sd = world.agents[node], world.hosts[node]
    agent.stop()
    sd.kill()  # the host goes down: systemd, circusd, the apps, nginx
    assert world.served(node) is None
    started = time.monotonic()
    sd.start()
    wait_for(lambda: world.served(node) == "1.0.0", timeout=60, interval=0.1,
             message=f"{node} did not serve after its reboot")
    print(f"\nreboot of {node}: serving {time.monotonic() - started:.1f}s after its systemd started, no agent running")
    assert not agent.running
    # circusd brought the watcher back and its gunicorn its 2 workers, with no agent involved
    watchers = world.stable_watchers(node)
    releases = world.releases(node)
    agent.host_extra = host_args(sd)
    offset = len(agent.log_text())
    agent.start()
    wait_for(lambda: agent.probe("/readyz") == 200, timeout=60, message=agent.log_tail)
    time.sleep(5)
    after = world.watchers(node)
    assert after == watchers, f"before {watchers}\nafter {after}\n{agent.log_tail()}"
    assert world.releases(node) == releases
    assert not agent.log_matches(r"start-watcher|ensure-release", offset), agent.log_tail()
    print("\n$ kubectl get hr -o wide (after the reboot of one host)\n" + world.kubectl_text("get", "hr", "-o", "wide"))
    print("$ kubectl get ar\n" + world.kubectl_text("get", "ar"))


def test_deleting_the_app_release_cleans_both_hosts(world):
    world.cp.kubectl("delete", "ar", APP, "-n", world.namespace, "--wait=false")
    wait_for(lambda: not world.get("ar")["items"] and not world.get("hr")["items"], timeout=90,
             message=lambda: f"left: {world.cp.kubectl('get', 'ar,hr', '-n', world.namespace).stdout}")
    for node in ADDRESSES:
        wait_for(lambda n=node: not world.watchers(n), timeout=30, message=f"{node} still runs the app")
        assert world.served(node) is None
        # nginx itself keeps running in its unit, with no site for the app
        assert unit_state(world.hosts[node], units.NGINX_UNIT)["ActiveState"] == "active"
