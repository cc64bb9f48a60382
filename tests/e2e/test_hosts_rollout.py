"""The whole story on two hosts: a real apiserver, the operator and two agents as real processes.

Each host (`host-a`, `host-b` plus a suffix: Nodes are cluster-wide) is an agent with its own
root, circusd and nginx, listening on 127.0.0.2 and 127.0.0.3. The tests run in file order
and share the hosts. Covers: apply v1 -> both serve, `kubectl get ar` shows 2/2, Available,
observedGeneration; v2 moves hosts one at a time (never two in flight, host-a first) while
a load generator on both hosts sees only 200s; a failing v3 halts after the first host,
Degraded names it, the other host keeps v2, no request fails; reverting to v2 then v1 needs
no build; a firstHost release command runs on host-a only, and host-b moves only once host-a
is Ready (even with maxUnavailable 100%); kill -9 of the operator mid-rollout and of an agent mid-rotation; a 20 s apiserver
outage while the apps keep serving; a Node relabelled off the selector stops its app;
deleting the AppRelease cleans both hosts. Times from apply to serving are printed.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest

from apprelease.host.layout import HostLayout, app_key
from support.agents import AgentProcess
from support.cluster import wait_for
from support.hosts import SERVER_NAME, app_release
from support.load import LoadProcess, assert_no_failed_requests, finish
from support.nginx import free_port
from support.twohosts import HostsView, two_hosts

pytestmark = pytest.mark.e2e

SUFFIX = uuid.uuid4().hex[:6]
ADDRESSES = {f"host-a-{SUFFIX}": "127.0.0.2", f"host-b-{SUFFIX}": "127.0.0.3"}
HOST_A, HOST_B = sorted(ADDRESSES)
SELECTOR = {"e2e.apprelease.dev/suite": SUFFIX}
APP = "webxample"


class Story(HostsView):
    """What the tests of this module share: the cluster, the hosts, the operator."""

    def __init__(self, cp, index, namespace: str, port: int, agents: dict[str, AgentProcess], operator):
        super().__init__(cp, namespace, port, ADDRESSES, APP)
        self.index, self.agents, self.operator = index, agents, operator

    def apply(self, version: str, **options) -> None:
        doc = app_release(self.index.url, version, port=self.port, name=APP, namespace=self.namespace,
                          **options).wire()
        doc["spec"]["hosts"] = {"nodeSelector": SELECTOR}
        self.cp.kubectl("apply", "-f", "-", input=json.dumps(doc))

    def app(self) -> dict:
        return self.get("ar", APP)

    def wait_rollout(self, version: str, timeout: float = 240) -> dict:
        """Until every host serves `version` and the AppRelease says so; tracks hosts in flight."""
        self.max_in_flight = 0

        def done() -> bool:
            hrs = self.host_releases()
            in_flight = [n for n, hr in hrs.items() if hr["spec"]["version"] == version
                         and (hr.get("status") or {}).get("servingVersion") != version]
            self.max_in_flight = max(self.max_in_flight, len(in_flight))
            app = self.app()
            status = app.get("status") or {}
            progressing = {c["type"]: c for c in status.get("conditions", [])}.get("Progressing", {})
            return (status.get("observedGeneration") == app["metadata"]["generation"]
                    and status.get("readyHosts") == status.get("desiredHosts") == len(hrs)
                    and progressing.get("reason") == "RolloutComplete"
                    and all(self.served(n) == version for n in hrs))

        wait_for(done, timeout=timeout, message=lambda: f"rollout to {version} incomplete: "
                 f"{json.dumps(self.app().get('status'), indent=1)}\n{self.operator.logs()[-3000:]}")
        return self.app()

    def loads(self, expect: list[str]) -> list[LoadProcess]:
        return [LoadProcess(self.port, host_header=SERVER_NAME, expect=expect, address=a, max_seconds=400,
                            keepalive=2, fresh=1, fresh_post=1, slow=1) for a in ADDRESSES.values()]


@pytest.fixture(scope="module")
def story(cluster, package_index, tmp_path_factory):
    logs = tmp_path_factory.mktemp("story-logs")
    with two_hosts(cluster, namespace=f"story-{SUFFIX}", addresses=ADDRESSES, selector=SELECTOR, logs=logs,
                   roots=Path(f"/tmp/ar-story-{SUFFIX}")) as world:
        yield Story(cluster, package_index, world.namespace, free_port(), world.agents, world.operator)


def test_v1_serves_on_both_hosts(story):
    started = time.monotonic()
    story.apply("1.0.0")
    app = story.wait_rollout("1.0.0")
    print(f"\napply v1 -> serving on 2 hosts (venv builds included): {time.monotonic() - started:.1f}s")
    assert app["status"]["observedGeneration"] == app["metadata"]["generation"]
    assert story.conditions()["Available"]["status"] == "True"
    row = story.cp.kubectl("get", "ar", APP, "-n", story.namespace, "--no-headers").stdout.split()
    assert row[:4] == [APP, "1.0.0", "2/2", "2"], row


def test_v2_moves_hosts_one_at_a_time_with_no_failed_request(story):
    loads = story.loads(["1.0.0", "2.0.0"])
    started = time.monotonic()
    story.apply("2.0.0")
    story.wait_rollout("2.0.0")
    print(f"\napply v2 -> serving on 2 hosts: {time.monotonic() - started:.1f}s")
    assert_no_failed_requests(finish(loads))
    assert story.max_in_flight <= 1
    hrs = story.host_releases()
    switched = {node: hr["status"]["history"][-1]["at"] for node, hr in hrs.items()}
    assert switched[HOST_A] <= switched[HOST_B], switched  # nodes in name order


def test_failing_v3_halts_after_the_first_host(story):
    loads = story.loads(["2.0.0"])
    story.apply("3.0.0", fail_health=True, health_timeout=5)

    def halted() -> bool:
        degraded = story.conditions().get("Degraded", {})
        return degraded.get("status") == "True" and degraded.get("reason") == "HostFailed"

    wait_for(halted, timeout=120, message=lambda: json.dumps(story.app().get("status"), indent=1))
    time.sleep(3)  # give a wrong operator time to move the second host
    tallies = finish(loads)
    degraded = story.conditions()["Degraded"]
    assert HOST_A in degraded["message"], degraded
    hrs = story.host_releases()
    assert hrs[HOST_A]["status"]["phase"] == "Failed"
    assert hrs[HOST_B]["spec"]["version"] == "2.0.0"  # the rollout stopped before host-b
    assert story.served(HOST_A) == story.served(HOST_B) == "2.0.0"
    assert_no_failed_requests(tallies)


def test_revert_to_v2_then_v1_builds_nothing(story):
    for version in ("2.0.0", "1.0.0"):
        story.index.index.clear_requests()
        started = time.monotonic()
        story.apply(version)
        story.wait_rollout(version)
        print(f"\nrevert to {version} -> serving on 2 hosts: {time.monotonic() - started:.1f}s")
        assert story.index.index.requests == []  # no resolver, no download: nothing was built
        for node, hr in story.host_releases().items():
            assert hr["status"]["lastBuild"]["buildId"] == hr["spec"]["buildId"], node
    for node, hr in story.host_releases().items():  # both hosts moved back to 1.0.0 from disk
        assert hr["status"]["lastBuild"]["reused"] is True, (node, hr["status"]["lastBuild"])


def test_first_host_release_command_runs_there_alone_before_any_other_host_moves(story):
    # maxUnavailable 100%: without the gate both hosts would move at once. The command stands in
    # for migrations (webxample has none): it only has to run, exit 0 and be recorded.
    command = ["python", "-m", "timeit", "-n", "1", "-r", "1", "pass"]
    story.apply("2.0.0", extra={"release": {"command": command}, "strategy": {"maxUnavailable": "100%"}})
    early: list[str] = []

    def watch_order() -> bool:
        hrs = story.host_releases()
        a_ready = (hrs[HOST_A].get("status") or {}).get("servingVersion") == "2.0.0" \
            and hrs[HOST_A]["status"].get("phase") == "Ready"
        if hrs[HOST_B]["spec"]["version"] == "2.0.0" and not a_ready:
            early.append(json.dumps(hrs[HOST_A].get("status")))
        return all(story.served(n) == "2.0.0" for n in hrs) and not early

    wait_for(lambda: watch_order() or bool(early), timeout=240, message="rollout with a release command")
    assert not early, f"{HOST_B} moved before {HOST_A} was Ready: {early[0]}"
    story.wait_rollout("2.0.0")
    hrs = story.host_releases()
    assert hrs[HOST_A]["spec"].get("runReleaseCommand") is True and "runReleaseCommand" not in hrs[HOST_B]["spec"]
    ran = hrs[HOST_A]["status"]["releaseCommand"]
    assert ran["exitCode"] == 0 and ran["revision"] == hrs[HOST_A]["spec"]["revision"], ran
    assert "releaseCommand" not in hrs[HOST_B]["status"]


def test_operator_kill_9_mid_rollout_resumes(story):
    story.apply("2.0.0")
    wait_for(lambda: any(hr["spec"]["version"] == "2.0.0" for hr in story.host_releases().values()),
             timeout=60, message="no host moved to 2.0.0")
    story.operator.kill()
    story.operator.start()
    story.wait_rollout("2.0.0")


def test_agent_kill_9_mid_rotation_converges(story):
    agent = story.agents[HOST_A]
    story.apply("1.0.0")
    wait_for(lambda: story.host_releases()[HOST_A]["spec"]["version"] == "1.0.0", timeout=60,
             message="host-a was not moved to 1.0.0")
    time.sleep(0.3)  # inside its rotation (a reused build: start, health gate, switch)
    agent.kill()
    assert story.served(HOST_A) in ("1.0.0", "2.0.0")  # serving, whichever revision it got to
    agent.start()
    story.wait_rollout("1.0.0")


def test_apiserver_outage_keeps_apps_serving(story):
    loads = story.loads(["1.0.0"])
    story.cp.stop_apiserver()
    try:
        time.sleep(20)
        assert all(story.served(node) == "1.0.0" for node in ADDRESSES)
    finally:
        story.cp.start_apiserver()
    assert_no_failed_requests(finish(loads))
    story.apply("2.0.0")  # everything reconnected and carries on
    story.wait_rollout("2.0.0")


def _host_is_clean(story, node: str) -> bool:
    layout = HostLayout(story.agents[node].root)
    key = app_key(story.namespace, APP)
    watchers = [p for p in (layout.supervisor / "circus.d").glob(f"ar_{key}_*")] if layout.supervisor.exists() else []
    return not layout.nginx_site(key).exists() and not watchers and not layout.app(key).base.exists()


def test_node_relabelled_off_the_selector_stops_its_app(story):
    story.cp.kubectl("label", "node", HOST_B, "e2e.apprelease.dev/suite-")
    wait_for(lambda: HOST_B not in story.host_releases(), timeout=60, message="host-b's HostRelease remains")
    wait_for(lambda: _host_is_clean(story, HOST_B), timeout=60, message="host-b still runs the app")
    assert story.served(HOST_B) is None
    assert story.served(HOST_A) == "2.0.0"
    wait_for(lambda: (story.app().get("status") or {}).get("desiredHosts") == 1, timeout=30,
             message="desiredHosts is not 1")


def test_deleting_the_app_release_cleans_every_host(story):
    story.cp.kubectl("delete", "ar", APP, "-n", story.namespace, "--wait=false")
    wait_for(lambda: not story.get("ar")["items"] and not story.get("hr")["items"], timeout=90,
             message=lambda: f"left: {story.cp.kubectl('get', 'ar,hr', '-n', story.namespace).stdout}")
    for node in ADDRESSES:
        wait_for(lambda n=node: _host_is_clean(story, n), timeout=30, message=f"{node} still runs the app")
        assert story.served(node) is None
