"""Secrets the Kubernetes way, in a real cluster: the operator and two agents on their own
ServiceAccount tokens (the agents' bound to Pods on their Nodes), the manifests of manifests/.

The tests run in file order and share the world. Covers: DATABASE_URL from a Secret and
LOG_LEVEL from a ConfigMap reach the app's processes on both hosts (read from /proc); the
agents read them through the Role the operator keeps (the agents hold no other Secret right);
rotating the Secret's value rolls a new revision out host by host (never two in flight) under
load with 0 failed requests; TLS from a kubernetes.io/tls Secret is served by nginx and
verified with curl --cacert, and adding it (a proxy-only change) starts no new workers;
deleting the Secret makes the AppRelease Degraded/SecretNotFound naming namespace/name while
both hosts keep serving the revision they had; after the whole story no secret value is in
any API object (AppRelease, HostReleases, Events, managedFields included), in the operator's
or the agents' logs, or in any file under the agent roots except root-owned 0600 ones.
Times from a Secret change to the new revision serving everywhere are printed.
"""

from __future__ import annotations

import base64
import json
import random
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import yaml

from apprelease.host.layout import app_key, watcher_name
from support.agents import AgentProcess
from support.cluster import wait_for
from support.hosts import SERVER_NAME, app_release, make_host
from support.identities import service_account_identity
from support.install import AGENT_SA, NAMESPACE, OPERATOR_SA, POLICY_CONFIGMAP, install
from support.leaks import contains, process_environment, scan_tree
from support.load import LoadProcess, assert_no_failed_requests, finish
from support.nginx import http_get, self_signed_cert
from support.operator import OperatorProcess

pytestmark = pytest.mark.e2e

SUFFIX = uuid.uuid4().hex[:6]
ADDRESSES = {f"sec-a-{SUFFIX}": "127.0.0.4", f"sec-b-{SUFFIX}": "127.0.0.5"}
HOST_A, HOST_B = sorted(ADDRESSES)
SELECTOR = {"e2e.apprelease.dev/secrets": SUFFIX}
APP = "vault"
PASSWORDS = [f"pw1-{uuid.uuid4().hex[:12]}", f"pw2-{uuid.uuid4().hex[:12]}"]


def db_url(password: str) -> str:
    return f"postgres://app:{password}@db.internal:5432/app"


def port_in_policy_range() -> int:
    """A port the installed tenant policy allows (8000-8999) and free on both addresses."""
    for port in random.sample(range(8000, 9000), 200):
        try:
            for address in ADDRESSES.values():
                with socket.socket() as s:
                    s.bind((address, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port in 8000-8999")


class World:
    def __init__(self, cp, index, directory: Path) -> None:
        self.cp, self.index, self.directory = cp, index, directory
        self.ns = f"secrets-{SUFFIX}"
        self.port = port_in_policy_range()
        self.roots = Path(f"/tmp/ar-sec-{SUFFIX}")
        self.agents: dict[str, AgentProcess] = {}
        self.operator: OperatorProcess | None = None

    def kubectl(self, *args: str, **kw):
        return self.cp.kubectl(*args, **kw)

    def setup(self) -> None:
        install(self.cp)
        self.kubectl("create", "namespace", self.ns)
        self.roots.mkdir(mode=0o755)
        for node, address in ADDRESSES.items():
            self.kubectl("apply", "-f", "-", input=json.dumps(
                {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node, "labels": SELECTOR}}))
            pod = f"apprelease-agent-{node}"
            self.kubectl("create", "-f", "-", input=yaml.safe_dump({
                "apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod, "namespace": NAMESPACE},
                "spec": {"serviceAccountName": AGENT_SA, "nodeName": node,
                         "containers": [{"name": "agent", "image": "apprelease"}]}}))
            identity = service_account_identity(self.cp, self.directory, NAMESPACE, AGENT_SA, bound_pod=pod)
            self.agents[node] = AgentProcess(node=node, root=self.roots / node[-8:], kubeconfig=identity.kubeconfig,
                                             log_path=self.directory / f"{node}.log", listen_address=address,
                                             resync_seconds=2).start()
        operator = service_account_identity(self.cp, self.directory, NAMESPACE, OPERATOR_SA)
        self.operator = OperatorProcess(self.cp, self.directory / "operator.log", namespaces=[self.ns],
                                        extra_args=["--kubeconfig", str(operator.kubeconfig)])
        self.operator.start()

    def teardown(self) -> None:
        try:
            if self.operator is not None and self.operator.running:
                self.kubectl("delete", "ar", APP, "-n", self.ns, "--ignore-not-found", "--timeout=90s", check=False)
                self.operator.stop()
        finally:
            for agent in self.agents.values():
                agent.close()
            for node in ADDRESSES:
                self.kubectl("delete", "pod", f"apprelease-agent-{node}", "-n", NAMESPACE, "--force",
                             "--grace-period=0", "--ignore-not-found", check=False)
                self.kubectl("delete", "node", node, "--ignore-not-found", check=False)
            self.kubectl("delete", "namespace", self.ns, "--wait=false", "--ignore-not-found", check=False)
            subprocess.run(["rm", "-rf", str(self.roots)], check=False)
            # As the session's other modules expect (conftest: tenant_policy_open_ports_after_the_module).
            self.kubectl("patch", "configmap", POLICY_CONFIGMAP, "-n", NAMESPACE, "--type=merge",
                         "-p", '{"data": {"listenPorts": "*"}}', check=False)

    # -- objects

    def set_db_secret(self, password: str) -> None:
        self.kubectl("apply", "-f", "-", input=json.dumps({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db", "namespace": self.ns},
            "data": {"url": base64.b64encode(db_url(password).encode()).decode()}}))

    def apply_app(self, **proxy) -> None:
        doc = app_release(self.index.url, "1.0.0", port=self.port, name=APP, namespace=self.ns, extra={"env": [
            {"name": "WEBXAMPLE_GREETING", "value": "hi"},
            {"name": "DATABASE_URL", "valueFrom": {"secretKeyRef": {"name": "db", "key": "url"}}},
            {"name": "LOG_LEVEL", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "LOG_LEVEL"}}},
        ]}, **proxy).wire()
        doc["spec"]["hosts"] = {"nodeSelector": SELECTOR}
        self.kubectl("apply", "-f", "-", input=json.dumps(doc))

    def get(self, *args: str) -> dict:
        return json.loads(self.kubectl("get", *args, "-n", self.ns, "-o", "json").stdout)

    def app(self) -> dict:
        return self.get("ar", APP)

    def conditions(self) -> dict[str, dict]:
        return {c["type"]: c for c in (self.app().get("status") or {}).get("conditions", [])}

    def host_releases(self) -> dict[str, dict]:
        return {hr["spec"]["node"]: hr for hr in self.get("hr", "-l", f"apprelease.dev/app={APP}")["items"]}

    def app_environment(self, node: str, revision: str) -> dict[str, str]:
        host = make_host(self.agents[node].root)
        pid = host.supervisor.main_pid(watcher_name(app_key(self.ns, APP), revision))
        assert pid, f"no running watcher of {revision} on {node}"
        return process_environment(pid)

    def served(self, node: str) -> str | None:
        try:
            resp = http_get(self.port, "/version", SERVER_NAME, address=ADDRESSES[node])
        except OSError:
            return None
        return resp.json()["version"] if resp.status == 200 else None

    def wait_revision_everywhere(self, revision_changed_from: str | None, timeout: float = 240) -> str:
        """Until every host is Ready on one revision (other than `revision_changed_from`) and the
        AppRelease says RolloutComplete; tracks hosts in flight. The revision."""
        self.max_in_flight = 0
        seen: dict[str, str] = {}

        def done() -> bool:
            hrs = self.host_releases()
            revisions = {hr["spec"]["revision"] for hr in hrs.values()}
            in_flight = [n for n, hr in hrs.items() if (hr.get("status") or {}).get("servingRevision")
                         != hr["spec"]["revision"] or (hr.get("status") or {}).get("phase") != "Ready"]
            moved = [n for n, hr in hrs.items() if hr["spec"]["revision"] != revision_changed_from]
            if moved:
                self.max_in_flight = max(self.max_in_flight, len(in_flight))
            status = self.app().get("status") or {}
            progressing = self.conditions().get("Progressing", {})
            seen["status"] = json.dumps(status, indent=1)
            return (len(hrs) == 2 and len(revisions) == 1 and revision_changed_from not in revisions
                    and not in_flight and progressing.get("reason") == "RolloutComplete"
                    and status.get("currentRevision") in revisions)

        wait_for(done, timeout=timeout, message=lambda: f"rollout incomplete: {seen.get('status')}\n"
                 f"{self.operator.logs()[-3000:]}")
        return next(iter(self.host_releases().values()))["spec"]["revision"]


@pytest.fixture(scope="module")
def world(cluster, package_index, tmp_path_factory):
    w = World(cluster, package_index, tmp_path_factory.mktemp("secrets"))
    try:
        w.setup()
        yield w
    finally:
        w.teardown()


def test_values_from_a_secret_and_a_config_map_reach_the_app_on_both_hosts(world):
    world.set_db_secret(PASSWORDS[0])
    world.kubectl("create", "configmap", "settings", "-n", world.ns, "--from-literal=LOG_LEVEL=debug")
    started = time.monotonic()
    world.apply_app()
    world.revision = world.wait_revision_everywhere(None)
    print(f"\napply -> serving on 2 hosts with values from a Secret (builds included): {time.monotonic() - started:.1f}s")
    for node in ADDRESSES:
        env = world.app_environment(node, world.revision)
        assert env["DATABASE_URL"] == db_url(PASSWORDS[0]) and env["LOG_LEVEL"] == "debug"
        assert world.served(node) == "1.0.0"
    spec = next(iter(world.host_releases().values()))["spec"]
    assert spec["valuesDigest"] and {e["name"]: e.get("valueFrom") for e in spec["env"]}["DATABASE_URL"] == {
        "secretKeyRef": {"name": "db", "key": "url"}}


def test_rotating_the_secret_rolls_out_host_by_host_with_no_failed_request(world):
    loads = [LoadProcess(world.port, host_header=SERVER_NAME, expect=["1.0.0"], address=a, max_seconds=300,
                         keepalive=2, fresh=1, fresh_post=1, slow=1) for a in ADDRESSES.values()]
    try:
        started = time.monotonic()
        world.set_db_secret(PASSWORDS[1])
        rotated = world.wait_revision_everywhere(world.revision)
        print(f"\nSecret value changed -> new revision serving on 2 hosts (operator resync 30 s): "
              f"{time.monotonic() - started:.1f}s")
    finally:
        tallies = finish(loads)
    assert_no_failed_requests(tallies)
    print(f"requests during the rotation: {sum(t['ok'] for t in tallies)} ok, "
          f"{sum(t['errors'] + t['badStatus'] for t in tallies)} failed")
    assert world.max_in_flight <= 1
    hrs = world.host_releases()
    assert hrs[HOST_A]["status"]["history"][-1]["at"] <= hrs[HOST_B]["status"]["history"][-1]["at"]
    for node in ADDRESSES:
        assert world.app_environment(node, rotated)["DATABASE_URL"] == db_url(PASSWORDS[1])
    assert hrs[HOST_A]["spec"]["buildId"] == hrs[HOST_A]["status"]["servingBuildId"]  # no rebuild: same venv
    world.revision = rotated


def test_tls_from_a_secret_is_served_and_starts_no_new_workers(world, tmp_path):
    cert, key = self_signed_cert(tmp_path, SERVER_NAME)
    world.tls_key = key
    world.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": "vault-tls", "namespace": world.ns},
        "data": {"tls.crt": base64.b64encode(cert).decode(), "tls.key": base64.b64encode(key).decode()}}))
    pids = {n: make_host(world.agents[n].root).supervisor.main_pid(watcher_name(app_key(world.ns, APP), world.revision))
            for n in ADDRESSES}
    world.apply_app(tls={"secretName": "vault-tls"})
    ca = tmp_path / "ca.crt"
    ca.write_bytes(cert)

    def curl(node: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["curl", "-sS", "--max-time", "5", "--cacert", str(ca), "--resolve",
             f"{SERVER_NAME}:{world.port}:{ADDRESSES[node]}", f"https://{SERVER_NAME}:{world.port}/version"],
            capture_output=True, text=True)

    for node in ADDRESSES:
        wait_for(lambda n=node: curl(n).returncode == 0, timeout=120,
                 message=lambda n=node: f"no TLS on {n}: {curl(n).stderr}")
        assert json.loads(curl(node).stdout)["version"] == "1.0.0"
    assert world.wait_revision_everywhere("none") == world.revision  # proxy-only: same revision
    after = {n: make_host(world.agents[n].root).supervisor.main_pid(watcher_name(app_key(world.ns, APP), world.revision))
             for n in ADDRESSES}
    assert after == pids, "a TLS change must re-render nginx only, never start new workers"
    world.curl = curl


def test_deleting_the_secret_is_secret_not_found_and_the_hosts_keep_serving(world):
    generation_specs = {n: hr["spec"] for n, hr in world.host_releases().items()}
    world.kubectl("delete", "secret", "db", "-n", world.ns)

    def degraded() -> bool:
        c = world.conditions().get("Degraded", {})
        return c.get("status") == "True" and c.get("reason") == "SecretNotFound"

    wait_for(degraded, timeout=90, message=lambda: json.dumps(world.app().get("status"), indent=1))
    assert world.conditions()["Degraded"]["message"] == f"Secret {world.ns}/db not found"
    # Nothing moves: a spec change that would need the values is held too.
    world.kubectl("patch", "ar", APP, "-n", world.ns, "--type=merge", "-p",
                  json.dumps({"spec": {"server": {"workers": 3}}}))
    time.sleep(5)
    assert {n: hr["spec"] for n, hr in world.host_releases().items()} == generation_specs
    for node in ADDRESSES:
        assert json.loads(world.curl(node).stdout)["version"] == "1.0.0"
        assert world.app_environment(node, world.revision)["DATABASE_URL"] == db_url(PASSWORDS[1])
    events = world.get("events")["items"]
    assert any(e["reason"] == "SecretNotFound" and e["involvedObject"]["name"] == APP for e in events)


def test_no_secret_value_in_api_objects_logs_or_host_files(world):
    values = [*PASSWORDS, *(db_url(p) for p in PASSWORDS)]
    key_line = [line for line in world.tls_key.decode().splitlines() if line and "-----" not in line][5]
    for kind in ("ar", "hr", "events"):
        text = world.kubectl("get", kind, "-n", world.ns, "-o", "json", "--show-managed-fields").stdout
        assert not contains(text.encode(), [*values, key_line]), f"a value in {kind}"
    logs = [world.operator.logs(), *(a.log_text() for a in world.agents.values())]
    for text in logs:
        assert not contains(text.encode(), [*values, key_line])
    for agent in world.agents.values():
        hits = scan_tree(agent.root, [*values, key_line])
        assert any(PASSWORDS[1] in h.values for h in hits), "the serving revision's watcher file holds its env"
        for hit in hits:
            assert hit.private, f"{hit.path} holds a value but is mode {hit.mode:o}, uid {hit.uid}"
            allowed = agent.root / ("secrets" if key_line in hit.values else "supervisor")
            assert hit.path.is_relative_to(allowed), hit.path
