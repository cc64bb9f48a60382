"""Host conflicts with a real apiserver: the operator and an agent as real processes.

Covers: the operator (watching two namespaces) holds the younger of two AppReleases that
claim the same (port, server name) on shared Nodes — no HostRelease of it is created, it is
Degraded/HostConflict naming the older one, with one HostConflict Event — and once the older
one is deleted the held one fans out within seconds (a wake-up, not the 30 s resync); an
agent (resync 120 s) given a conflicting HostRelease by hand reports Failed with reason
Conflict and a Ready condition saying so, while the first app keeps serving under load with
0 failed requests; deleting the first HostRelease wakes the second, which then serves.
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from apprelease.api.models import HostRelease
from support.agents import AgentProcess
from support.cluster import wait_for
from support.hosts import SERVER_NAME, release_for
from support.load import LoadProcess
from support.manifests import EXAMPLE
from support.nginx import free_port, http_get
from support.operator import OperatorProcess

pytestmark = pytest.mark.e2e

TIMEOUT = 30.0
CONVERGE = 180.0  # a first venv build on a cold cache plus a health check


@pytest.fixture
def namespaces(cluster) -> Iterator[tuple[str, str]]:
    tag = uuid.uuid4().hex[:6]
    names = (f"cf-{tag}-a", f"cf-{tag}-b")
    for name in names:
        cluster.kubectl("create", "namespace", name)
    yield names
    for name in names:
        cluster.kubectl("delete", "appreleases,hostreleases", "--all", "-n", name, "--wait=false", check=False)
        cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def get_json(cluster, *args: str) -> dict:
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def condition(obj: dict, type_: str) -> dict:
    return next((c for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == type_), {})


def app_release(namespace: str, name: str, selector: dict[str, str]) -> str:
    doc = copy.deepcopy(EXAMPLE)
    doc["metadata"] = {"name": name, "namespace": namespace}
    doc["spec"]["hosts"] = {"nodeSelector": selector}
    del doc["spec"]["user"]  # derived from namespace and app: these namespaces are new each run
    return yaml.safe_dump(doc)


def test_operator_holds_the_younger_app_until_the_older_goes(cluster, namespaces, tmp_path):
    ns_a, ns_b = namespaces
    selector = {"e2e.apprelease.dev/run": ns_a}
    nodes = [f"{ns_a}-node-1", f"{ns_a}-node-2"]
    for node in nodes:
        cluster.kubectl("create", "-f", "-", input=yaml.safe_dump(
            {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node, "labels": selector}}))
    operator = OperatorProcess(cluster, tmp_path / "operator.log", namespaces=[ns_a, ns_b])
    try:
        operator.start()
        cluster.kubectl("apply", "-f", "-", input=app_release(ns_a, "shop", selector))
        wait_for(lambda: len(get_json(cluster, "hr", "-n", ns_a)["items"]) == 2, TIMEOUT,
                 lambda: f"the first AppRelease never fanned out:\n{operator.logs()[-3000:]}")
        time.sleep(1.1)  # creationTimestamp has whole seconds: the second is strictly younger
        cluster.kubectl("apply", "-f", "-", input=app_release(ns_b, "rival", selector))

        def held() -> dict | None:
            obj = get_json(cluster, "ar", "rival", "-n", ns_b)
            return obj if condition(obj, "Degraded").get("reason") == "HostConflict" else None

        rival = wait_for(held, TIMEOUT, lambda: f"not held:\n{operator.logs()[-3000:]}")
        message = condition(rival, "Degraded")["message"]
        assert message == (f"Conflict: AppRelease {ns_a}/shop (older) claims webxample.local on port 8080 on node(s) "
                           f"{nodes[0]}, {nodes[1]}: no host of this AppRelease is created or updated until one of "
                           f"them changes")
        conditions = "{range .status.conditions[*]}{.type}={.status} {.reason}: {.message}{\"\\n\"}{end}"
        print(f"\n$ kubectl -n {ns_b} get ar rival -o jsonpath='{conditions}'\n"
              + cluster.kubectl("get", "ar", "rival", "-n", ns_b, "-o", f"jsonpath={conditions}").stdout)
        print(f"$ kubectl -n {ns_b} get events --field-selector reason=HostConflict\n"
              + cluster.kubectl("get", "events", "-n", ns_b, "--field-selector", "reason=HostConflict").stdout)
        assert get_json(cluster, "hr", "-n", ns_b)["items"] == []
        events = [e for e in get_json(cluster, "events", "-n", ns_b)["items"] if e["reason"] == "HostConflict"]
        assert len(events) == 1 and events[0]["type"] == "Warning", events
        time.sleep(3)  # passes go on (HostRelease events of the older one, resyncs): still nothing created
        assert get_json(cluster, "hr", "-n", ns_b)["items"] == []
        assert sum(e["reason"] == "HostConflict" for e in get_json(cluster, "events", "-n", ns_b)["items"]) == 1

        started = time.monotonic()
        cluster.kubectl("delete", "ar", "shop", "-n", ns_a, "--timeout=60s")
        wait_for(lambda: len(get_json(cluster, "hr", "-n", ns_b)["items"]) == 2, 15,
                 lambda: f"the held AppRelease did not fan out:\n{operator.logs()[-3000:]}")
        print(f"held AppRelease fanned out {time.monotonic() - started:.1f} s after the older one was deleted")
        wait_for(lambda: condition(get_json(cluster, "ar", "rival", "-n", ns_b), "Degraded").get("status") == "False",
                 TIMEOUT, "still Degraded")
    finally:
        operator.stop()
        for node in nodes:
            cluster.kubectl("delete", "node", node, "--ignore-not-found", "--wait=false", check=False)


@pytest.fixture
def agent(cluster, tmp_path) -> Iterator[AgentProcess]:
    short = Path(tempfile.mkdtemp(prefix="ar-", dir="/tmp"))
    short.chmod(0o755)  # app users traverse it to reach their venv and socket
    node = f"cf-{uuid.uuid4().hex[:6]}"
    # A long resync: converging after the owner leaves must come from the wake-up.
    process = AgentProcess(node=node, root=short / "host", kubeconfig=cluster.kubeconfig_path,
                           log_path=tmp_path / "agent.log", resync_seconds=120.0)
    try:
        yield process.start()
    finally:
        try:
            process.close()
        finally:
            shutil.rmtree(short, ignore_errors=True)


def hr_status(cluster, release: HostRelease) -> dict:
    obj = get_json(cluster, "hr", release.metadata.name, "-n", release.metadata.namespace)
    return {**(obj.get("status") or {}), "generation": obj["metadata"]["generation"]}


def wait_phase(cluster, agent: AgentProcess, release: HostRelease, phase: str, timeout: float = CONVERGE) -> dict:
    seen: dict = {}

    def done() -> dict | None:
        seen.update(hr_status(cluster, release))
        ok = seen.get("phase") == phase and seen.get("observedGeneration") == seen["generation"]
        return dict(seen) if ok else None

    return wait_for(done, timeout, lambda: f"{release.metadata.name} not {phase}: {seen}\n{agent.log_tail()}")


def test_agent_refuses_a_conflict_and_converges_when_the_owner_goes(cluster, agent, namespaces, package_index):
    ns_a, ns_b = namespaces
    port = free_port()
    first = release_for(package_index.url, "1.0.0", port=port, node=agent.node, name="shop", namespace=ns_a)
    second = release_for(package_index.url, "2.0.0", port=port, node=agent.node, name="rival", namespace=ns_b)
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(first.wire()))
    wait_phase(cluster, agent, first, "Ready")

    load = LoadProcess(port, host_header=SERVER_NAME, expect=["1.0.0"], max_seconds=120, slow=1)
    try:
        time.sleep(1)
        cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(second.wire()))
        refused = wait_phase(cluster, agent, second, "Failed", timeout=TIMEOUT)
        time.sleep(2)
        tally = load.finish()
    finally:
        load.kill()
    assert refused["reason"] == "Conflict"
    assert refused["message"] == f"Conflict: {ns_a}/shop already serves {SERVER_NAME} on port {port}"
    assert "servingRevision" not in refused
    ready = next(c for c in refused["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "Conflict")
    print(f"\nwhile the rival was refused: {tally['ok']} requests, {tally['errors']} errors, "
          f"{tally['badStatus']} bad statuses")
    assert tally["errors"] == 0 and tally["badStatus"] == 0, tally["failures"]
    assert tally["ok"] > 100, tally
    shown = cluster.kubectl("get", "hr", "-A", "-l", f"apprelease.dev/node={agent.node}", "-o",
                            "custom-columns=NAMESPACE:.metadata.namespace,NAME:.metadata.name,PHASE:.status.phase,"
                            "REASON:.status.reason,MESSAGE:.status.message").stdout
    print(shown)

    started = time.monotonic()
    cluster.kubectl("delete", "hr", first.metadata.name, "-n", ns_a, "--timeout=60s")
    wait_phase(cluster, agent, second, "Ready", timeout=60)
    print(f"rival Ready {time.monotonic() - started:.1f} s after the owner's HostRelease was deleted "
          f"(agent resync: {agent.resync_seconds:g} s)")
    resp = http_get(port, "/version", SERVER_NAME)
    assert resp.status == 200 and resp.json()["version"] == "2.0.0"
