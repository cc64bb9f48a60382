"""The agent in the cluster: a real kube-apiserver, a real `apprelease agent run` subprocess
with its own root, circusd and nginx on loopback; HostReleases created as the operator would.

Covers: a HostRelease of the agent's node is reconciled (finalizer, status Ready with
observedGeneration and a Ready condition, an Event, served through nginx) while one
labelled for another node is never touched; a spec update moves the host to v2 (history
shows the switch); drift (deleted nginx site, removed watcher, removed `current` link) is
repaired by resync without a build; a missing TLS Secret is a Failed status that clears
once the Secret exists; deletion stops the app and removes the finalizer; a HostRelease
deleted while the agent was stopped is cleaned at its next start, and so is an app no
HostRelease names any more; SIGTERM exits 0 and the apps keep serving; kill -9 mid-rotation
and a restart converge; an apiserver outage leaves the app serving, the agent not ready,
and after it the agent reconnects and applies a change made after the restart; a watch
from an expired resourceVersion raises `Gone` (the agent lists again); live phases, watched
through the API during a first deploy, an upgrade and a rollback: always in rotation order
from Pending to Ready, every phase that lasted longer than the throttle interval seen, none
shorter than its minimum age, Building for the builds and never for the rollback, and
`kubectl get hr -w` showing them.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import shutil
import tempfile
import threading
import time
import typing
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from apprelease.agent import kube, phases
from apprelease.agent.kube import FINALIZER
from apprelease.host import core
from apprelease.host.layout import app_key, watcher_name
from apprelease.api.models import HostPhase, HostRelease
from apprelease.host.plan import ENSURE_RELEASE
from apprelease.host.progress import PHASE_OF_STEP
from support.agents import AgentProcess
from support.cluster import wait_for
from support.hosts import SERVER_NAME, make_host, release_for
from support.nginx import free_port, http_get, self_signed_cert
from support.pypi import LocalIndex

pytestmark = pytest.mark.e2e

NODE = "node-a"
OTHER_NODE = "node-b"
CONVERGE = 180.0  # a first venv build on a cold cache plus a health check


@pytest.fixture(scope="module")
def agent(cluster, tmp_path_factory) -> Iterator[AgentProcess]:
    """One agent (one host) for the module; tests that stop or kill it start it again."""
    short = Path(tempfile.mkdtemp(prefix="ar-", dir="/tmp"))
    short.chmod(0o755)  # app users traverse it to reach their venv and socket
    logs = tmp_path_factory.mktemp("agent-logs")
    process = AgentProcess(node=NODE, root=short / "host-a", kubeconfig=cluster.kubeconfig_path,
                           log_path=logs / f"{NODE}.log", resync_seconds=2.0)
    try:
        yield process.start()
    finally:
        try:
            if process.running:
                # The agent releases its finalizers in the namespaces the tests deleted, so
                # none stays Terminating in the session's control plane.
                wait_for(lambda: not host_releases_of(cluster, NODE), 120,
                         lambda: f"HostReleases of {NODE} left: {host_releases_of(cluster, NODE)}")
        finally:
            try:
                process.close()
            finally:
                shutil.rmtree(short, ignore_errors=True)


@pytest.fixture
def live_agent(agent) -> AgentProcess:
    """The module's agent, running (a previous test may have left it stopped by failing)."""
    if not agent.running:
        agent.start()
    return agent


@pytest.fixture
def host(agent) -> core.Host:
    """A view of the agent's host for assertions (its daemons are the agent's)."""
    return make_host(agent.root)


@pytest.fixture
def namespace(cluster) -> Iterator[str]:
    name = f"ag-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    # HostReleases first: the namespace controller may take a while after an apiserver restart.
    cluster.kubectl("delete", "hostreleases", "--all", "-n", name, "--wait=false")
    cluster.kubectl("delete", "namespace", name, "--wait=false")


# -- helpers ---------------------------------------------------------------------------


def apply(cluster, release: HostRelease) -> None:
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(release.wire()))


def host_releases_of(cluster, node: str) -> list[str]:
    out = cluster.kubectl("get", "hostreleases", "-A", "-l", kube.node_selector(node), "-o", "name").stdout
    return out.split()


def get(cluster, namespace: str, name: str) -> dict | None:
    got = cluster.kubectl("get", "hostrelease", name, "-n", namespace, "-o", "json", check=False)
    if got.returncode != 0:
        assert "NotFound" in got.stderr, got.stderr
        return None
    return json.loads(got.stdout)


def wait_status(cluster, agent: AgentProcess, namespace: str, name: str, *, phase: str = "Ready",
                version: str | None = None, timeout: float = CONVERGE) -> dict:
    """Wait until the status describes the current generation with `phase` (and serves `version`)."""
    seen: dict = {}

    def done() -> dict | None:
        obj = get(cluster, namespace, name)
        seen["obj"] = obj
        status = (obj or {}).get("status") or {}
        if (obj and status.get("observedGeneration") == obj["metadata"]["generation"] and status.get("phase") == phase
                and (version is None or status.get("servingVersion") == version)):
            return obj
        return None

    return wait_for(done, timeout, lambda: f"{namespace}/{name} not {phase} {version or ''}: "
                    f"{json.dumps((seen.get('obj') or {}).get('status'), indent=1)}\nagent log:\n{agent.log_tail()}")


def served_version(port: int, tls: bool = False) -> str:
    resp = http_get(port, "/version", SERVER_NAME, tls=tls)
    assert resp.status == 200, resp
    return resp.json()["version"]


def deploy(cluster, agent, index, namespace: str, version: str, port: int, name: str = "webxample",
           **options: object) -> tuple[HostRelease, dict]:
    release = release_for(index.url, version, port=port, node=NODE, name=name, namespace=namespace, **options)
    apply(cluster, release)
    return release, wait_status(cluster, agent, namespace, release.metadata.name, version=version)


def events(cluster, namespace: str, name: str) -> list[dict]:
    out = cluster.kubectl("get", "events", "-n", namespace, "--field-selector", f"involvedObject.name={name}",
                          "-o", "json").stdout
    return json.loads(out)["items"]


def app_is_gone(host: core.Host, key: str) -> bool:
    return (not core.app_watchers(host.supervisor, key) and host.nginx.current_site(key) is None
            and not host.layout.app(key).base.exists())


# -- tests -----------------------------------------------------------------------------


def test_reconciles_its_node_and_ignores_others(cluster, live_agent, host, package_index, namespace):
    port = free_port()
    other = release_for(package_index.url, "1.0.0", port=free_port(), node=OTHER_NODE, name="other",
                        namespace=namespace)
    apply(cluster, other)
    release, obj = deploy(cluster, live_agent, package_index, namespace, "1.0.0", port)

    status = obj["status"]
    assert FINALIZER in obj["metadata"]["finalizers"]
    assert status["servingRevision"] == release.spec.revision and status["servingVersion"] == "1.0.0"
    (ready,) = [c for c in status["conditions"] if c["type"] == "Ready"]
    assert ready["status"] == "True" and ready["observedGeneration"] == obj["metadata"]["generation"]
    assert served_version(port) == "1.0.0"
    wait_for(lambda: any(e["reason"] == "Reconciled" for e in events(cluster, namespace, release.metadata.name)),
             30, "no Reconciled event")

    # Settled: resyncs (every 2 s) neither write status again nor touch the other node's object.
    version = obj["metadata"]["resourceVersion"]
    time.sleep(5)
    again = get(cluster, namespace, release.metadata.name)
    assert again["metadata"]["resourceVersion"] == version, "status rewritten without a change"
    untouched = get(cluster, namespace, other.metadata.name)
    assert "status" not in untouched and not untouched["metadata"].get("finalizers")
    assert host.nginx.current_site(app_key(namespace, "other")) is None


def test_spec_update_moves_to_v2(cluster, live_agent, package_index, namespace):
    port = free_port()
    first, _ = deploy(cluster, live_agent, package_index, namespace, "1.0.0", port)
    second, obj = deploy(cluster, live_agent, package_index, namespace, "2.0.0", port)
    status = obj["status"]
    assert obj["metadata"]["generation"] == 2 and status["observedGeneration"] == 2
    assert [h["revision"] for h in status["history"]][-2:] == [first.spec.revision, second.spec.revision]
    assert status["servingRevision"] == second.spec.revision
    assert served_version(port) == "2.0.0"


def test_drift_is_repaired_by_resync_without_a_build(cluster, live_agent, host, package_index, namespace):
    port = free_port()
    release, obj = deploy(cluster, live_agent, package_index, namespace, "1.0.0", port)
    key = app_key(namespace, release.spec.app)
    paths = host.layout.app(key)
    package_index.index.clear_requests()
    offset = len(live_agent.log_text())

    drifts = {
        "nginx site deleted": lambda: host.layout.nginx_site(key).unlink(),
        "watcher removed": lambda: host.supervisor.remove(watcher_name(key, release.spec.revision)),
        "current link removed": lambda: paths.current.unlink(),
    }
    for what, drift in drifts.items():
        drift()

        def repaired() -> bool:
            try:
                return (host.nginx.current_site(key) is not None and paths.current.is_symlink()
                        and core.app_watchers(host.supervisor, key) == {release.spec.revision: "running"}
                        and served_version(port) == "1.0.0")
            except (OSError, AssertionError):
                return False  # 502 while the watcher is being started again

        wait_for(repaired, 60, lambda: f"{what}: not repaired\n{live_agent.log_tail()}")

    assert package_index.index.requests == [], "resync reached for the package index: it rebuilt"
    assert live_agent.log_matches(r"ensure-release", since=offset), "the watcher was never restarted?"
    status = get(cluster, namespace, release.metadata.name)["status"]
    assert status["phase"] == "Ready" and status["lastBuild"]["reused"] is True
    assert status["servingRevision"] == release.spec.revision


def test_missing_tls_secret_fails_until_it_exists(cluster, live_agent, package_index, namespace, tmp_path):
    port = free_port()
    deploy(cluster, live_agent, package_index, namespace, "1.0.0", port)
    with_tls = release_for(package_index.url, "1.0.0", port=port, node=NODE, namespace=namespace,
                           tls={"secretName": "webxample-tls"})
    apply(cluster, with_tls)
    obj = wait_status(cluster, live_agent, namespace, with_tls.metadata.name, phase="Failed")
    assert obj["status"]["message"] == f"TLS Secret {namespace}/webxample-tls not found"
    assert served_version(port) == "1.0.0"  # the previous site still serves

    cert, key = self_signed_cert(tmp_path, SERVER_NAME)
    secret = {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
              "metadata": {"name": "webxample-tls", "namespace": namespace},
              "data": {"tls.crt": base64.b64encode(cert).decode(), "tls.key": base64.b64encode(key).decode()}}
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(secret))
    obj = wait_status(cluster, live_agent, namespace, with_tls.metadata.name, timeout=60)
    assert served_version(port, tls=True) == "1.0.0"
    assert "BEGIN" not in json.dumps(obj["status"])  # no key material in status


def test_deletion_stops_the_app_and_releases_the_finalizer(cluster, live_agent, host, package_index, namespace):
    port = free_port()
    release, _ = deploy(cluster, live_agent, package_index, namespace, "1.0.0", port)
    key = app_key(namespace, release.spec.app)
    cluster.kubectl("delete", "hostrelease", release.metadata.name, "-n", namespace, "--wait=false")
    wait_for(lambda: get(cluster, namespace, release.metadata.name) is None, 60,
             lambda: f"HostRelease not gone\n{live_agent.log_tail()}")
    assert app_is_gone(host, key)
    assert any(e["reason"] == "Removed" for e in events(cluster, namespace, release.metadata.name))


def test_changes_while_the_agent_is_stopped_are_cleaned_at_start(cluster, live_agent, host, package_index, namespace):
    port_a, port_b = free_port(), free_port()
    deleted, _ = deploy(cluster, live_agent, package_index, namespace, "1.0.0", port_a, name="deleted")
    orphan, _ = deploy(cluster, live_agent, package_index, namespace, "1.0.0", port_b, name="orphan")

    assert live_agent.stop() == 0  # SIGTERM: a clean exit
    assert served_version(port_a) == "1.0.0"  # apps belong to the host's supervisor, not the agent
    cluster.kubectl("delete", "hostrelease", deleted.metadata.name, "-n", namespace, "--wait=false")
    assert get(cluster, namespace, deleted.metadata.name)["metadata"]["deletionTimestamp"]  # the finalizer holds it
    # An object gone without the agent's cleanup (its finalizer removed by hand): only the host knows the app.
    cluster.kubectl("patch", "hostrelease", orphan.metadata.name, "-n", namespace, "--type=merge",
                    "-p", '{"metadata":{"finalizers":null}}')
    cluster.kubectl("delete", "hostrelease", orphan.metadata.name, "-n", namespace)

    live_agent.start()
    wait_for(lambda: get(cluster, namespace, deleted.metadata.name) is None, 60,
             lambda: f"deleted HostRelease still there\n{live_agent.log_tail()}")
    for release in (deleted, orphan):
        key = app_key(namespace, release.spec.app)
        wait_for(lambda: app_is_gone(host, key), 60, lambda: f"{key} still on the host\n{live_agent.log_tail()}")


def test_kill_9_mid_rotation_then_restart_converges(cluster, live_agent, host, package_index, namespace):
    port = free_port()
    deploy(cluster, live_agent, package_index, namespace, "1.0.0", port)
    v2 = release_for(package_index.url, "2.0.0", port=port, node=NODE, namespace=namespace)
    offset = len(live_agent.log_text())
    apply(cluster, v2)
    wait_for(lambda: live_agent.log_matches(rf"start-watcher\({v2.spec.revision}\)", since=offset), 120,
             lambda: f"rotation to v2 never started\n{live_agent.log_tail()}", interval=0.05)
    live_agent.kill()
    assert served_version(port) in ("1.0.0", "2.0.0")  # serving throughout

    live_agent.start()
    obj = wait_status(cluster, live_agent, namespace, v2.metadata.name, version="2.0.0")
    assert obj["status"]["servingRevision"] == v2.spec.revision
    assert served_version(port) == "2.0.0"
    key = app_key(namespace, v2.spec.app)
    wait_for(lambda: core.app_watchers(host.supervisor, key) == {v2.spec.revision: "running"}, 30,
             lambda: f"old watcher left: {core.app_watchers(host.supervisor, key)}")


def test_apiserver_outage_keeps_serving_and_the_agent_reconnects(cluster, live_agent, package_index, namespace):
    port = free_port()
    deploy(cluster, live_agent, package_index, namespace, "1.0.0", port)
    pid = live_agent.pid
    wait_for(lambda: live_agent.probe("/readyz") == 200, 30, "agent not ready before the outage")

    results: list[str] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                results.append(served_version(port))
            except (OSError, AssertionError) as exc:
                results.append(f"error: {exc}")
            time.sleep(0.05)

    loader = threading.Thread(target=load)
    cluster.stop_apiserver()
    try:
        loader.start()
        wait_for(lambda: live_agent.probe("/readyz") == 503, 30, "agent still ready without an apiserver")
        assert live_agent.probe("/healthz") == 200  # alive: not a reason to restart it
        time.sleep(8)
    finally:
        stop.set()
        if loader.is_alive():
            loader.join()
        cluster.start_apiserver()
    assert results and set(results) == {"1.0.0"}, [r for r in results if r != "1.0.0"][:5]

    wait_for(lambda: live_agent.probe("/readyz") == 200, 60, lambda: f"agent did not reconnect\n{live_agent.log_tail()}")
    deploy(cluster, live_agent, package_index, namespace, "2.0.0", port)
    assert served_version(port) == "2.0.0"
    assert live_agent.pid == pid and live_agent.running  # the same process rode it out


def test_watch_from_an_expired_resource_version_asks_for_a_list(cluster, namespace, package_index):
    """The plumbing the agent's re-list rests on: an expired resourceVersion is `Gone`, not a retry loop."""
    api = kube.HostReleaseAPI(kube.load_configuration(str(cluster.kubeconfig_path)))
    apply(cluster, release_for(package_index.url, "1.0.0", port=free_port(), node="node-gone", namespace=namespace))
    listed = api.list(kube.node_selector("node-gone"))
    assert [o["metadata"]["namespace"] for o in listed.items] == [namespace]
    with pytest.raises(kube.Gone):
        for _ in api.watch(kube.node_selector("node-gone"), "1", timeout_seconds=5):
            pass


# -- live phases -------------------------------------------------------------------------

PHASE_ORDER = typing.get_args(HostPhase)
SCHEDULING_SLACK = 0.25  # a loaded 2-core machine: thread wake-ups, the watch's delivery


class PhaseRecorder:
    """Every status phase of one HostRelease as a watch delivers it: (generation, phase, message)."""

    def __init__(self, cluster, namespace: str, name: str, node: str = NODE):
        self.api = kube.HostReleaseAPI(kube.load_configuration(str(cluster.kubeconfig_path)))
        self.namespace, self.name, self.node = namespace, name, node
        self.seen: list[tuple[int | None, str | None, str | None]] = []
        self._stop = threading.Event()
        version = self.api.list(kube.node_selector(node)).resource_version
        self._thread = threading.Thread(target=self._run, args=(version,), daemon=True)
        self._thread.start()

    def _run(self, version: str) -> None:
        while not self._stop.is_set():
            for kind, obj in self.api.watch(kube.node_selector(self.node), version, timeout_seconds=5):
                version = obj["metadata"].get("resourceVersion", version)
                meta, status = obj["metadata"], obj.get("status") or {}
                if kind != "BOOKMARK" and (meta["namespace"], meta["name"]) == (self.namespace, self.name):
                    entry = (status.get("observedGeneration"), status.get("phase"), status.get("message"))
                    if not self.seen or self.seen[-1] != entry:
                        self.seen.append(entry)
                if self._stop.is_set():
                    return

    def phases(self, generation: int) -> list[str]:
        """The phases written for one generation, each once, in the order seen."""
        return list(dict.fromkeys(p for g, p, _ in self.seen if g == generation and p))

    def messages(self, generation: int, phase: str) -> list[str]:
        return [m for g, p, m in self.seen if g == generation and p == phase and m]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def phase_durations(agent: AgentProcess, namespace: str, name: str, revision: str, *, built: bool) -> dict[str, float]:
    """How long the host spent in each phase, from the agent's own log of the rotation to
    `revision` (the step timings it logs at the end of a reconcile). Steps without a phase
    of their own (ensure-user, swap-current, ...) count for the phase before them, which
    is what the HostRelease keeps showing meanwhile."""
    pattern = rf"{namespace}/{name}: .*switch-live\({revision}\).* -> Ready \((.*)\)$"
    (line,) = [m for m in agent.log_matches(pattern)][-1:]
    steps = re.match(r".* -> Ready \((.*)\)$", line).group(1).split("; ")
    durations: dict[str, float] = {"Pending": 0.0}
    current = "Pending"
    for step in steps:
        kind, seconds = re.fullmatch(r"([a-z-]+)(?:\(.*\))? ([0-9.]+)s", step).groups()
        phase = PHASE_OF_STEP.get(kind)
        if phase and (kind != ENSURE_RELEASE or built):  # a reused release never announces Building
            current = phase
        durations[current] = durations.get(current, 0.0) + float(seconds)
    return durations


def assert_phases(recorder: PhaseRecorder, generation: int, durations: dict[str, float]) -> list[str]:
    """What the design promises (agent/phases.py), phase by phase."""
    seen = recorder.phases(generation)
    context = f"seen {seen}; durations {durations}; statuses {recorder.seen}"
    assert seen[0] == "Pending" and seen[-1] == "Ready", context
    assert seen == sorted(seen, key=PHASE_ORDER.index), f"out of rotation order: {context}"
    for phase, seconds in durations.items():
        if phase != "Pending" and seconds > phases.DEFAULT_INTERVAL + SCHEDULING_SLACK:
            assert phase in seen, f"{phase} lasted {seconds:.2f}s but was never written: {context}"
        if phase != "Pending" and seconds < phases.DEFAULT_MIN_AGE - 0.01:  # the log rounds to 10 ms
            assert phase not in seen, f"{phase} lasted {seconds:.2f}s yet was written: {context}"
    return seen


def test_live_phases_are_written_in_rotation_order(cluster, live_agent, package_index, namespace):
    """A first deploy, an upgrade and a rollback, each watched through the API.

    The index answers after 0.4 s, like one across the internet, so each build lasts
    well over the throttle interval and its Building must be seen; draining the old
    revision (0.5 s settle + a graceful stop) must be seen in each rotation; Starting and
    Switching take milliseconds and are never written; HealthChecking (gunicorn's boot) is
    seen when it lasts long enough; a rollback builds nothing and never says Building.
    """
    slow = LocalIndex(package_index.index.directory, delay_seconds=0.4).start()
    port = free_port()
    kubectl_watch = None
    try:
        def rollout(version: str, *, built: bool) -> tuple[list[str], dict[str, float], PhaseRecorder]:
            release = release_for(slow.url, version, port=port, node=NODE, namespace=namespace, name="phases")
            recorder = PhaseRecorder(cluster, namespace, release.metadata.name)
            try:
                apply(cluster, release)
                obj = wait_status(cluster, live_agent, namespace, release.metadata.name, version=version)
                time.sleep(1)  # the watch delivers the last events
            finally:
                recorder.stop()
            generation = obj["metadata"]["generation"]
            durations = phase_durations(live_agent, namespace, release.metadata.name, release.spec.revision,
                                        built=built)
            return assert_phases(recorder, generation, durations), durations, recorder

        first, first_durations, recorder = rollout("1.0.0", built=True)
        assert first[:2] == ["Pending", "Building"], first
        assert any("building the venv of 1.0.0" in m for m in recorder.messages(1, "Building"))
        assert "Draining" not in first  # nothing served before: nothing to drain

        kubectl_watch = subprocess.Popen(
            [str(cluster.bin_dir / "kubectl"), "--kubeconfig", str(cluster.kubeconfig_path), "get", "hr",
             release_for(slow.url, "1.0.0", port=port, node=NODE, name="phases").metadata.name,
             "-n", namespace, "-o", "wide", "-w"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        upgrade, upgrade_durations, _ = rollout("2.0.0", built=True)
        assert upgrade[:2] == ["Pending", "Building"] and upgrade[-2:] == ["Draining", "Ready"], upgrade

        back, back_durations, _ = rollout("1.0.0", built=False)
        assert "Building" not in back and back[-2:] == ["Draining", "Ready"], back
        kubectl_watch.terminate()
        watched = kubectl_watch.communicate(timeout=10)[0]
        phase_column = [line.split()[3] for line in watched.splitlines()[1:] if len(line.split()) > 3]
        for phase in ("Pending", "Building", "Draining", "Ready"):
            assert phase in phase_column, watched
        print(f"\nfirst deploy: {' -> '.join(first)}  ({first_durations})\nupgrade: {' -> '.join(upgrade)}"
              f"  ({upgrade_durations})\nrollback: {' -> '.join(back)}  ({back_durations})\n$ kubectl get hr -w\n{watched}")
    finally:
        if kubectl_watch is not None and kubectl_watch.poll() is None:
            kubectl_watch.kill()
            kubectl_watch.wait()
        slow.stop()
