"""The local control plane the e2e tests run against (hack/controlplane.py, tests/support/cluster.py).

Covers: the apiserver answers /readyz; kubectl and the server are the pinned version; the
garbage collector deletes a dependent once its owner is gone; namespace deletion finishes
(namespace controller); restarting only the apiserver keeps port and data; `stop()` leaves no
process of that state dir; components die with a killed parent (die_with_parent); the
`hack/controlplane` command: up, up again, status, env, down.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from controlplane import REPO, ControlPlane, processes_using
from support.cluster import wait_for

pytestmark = pytest.mark.e2e


def pinned_kubernetes_version() -> str:
    """The version hack/go/kube/go.mod pins (the one truth build-controlplane also reads)."""
    gomod = (REPO / "hack/go/kube/go.mod").read_text()
    match = re.search(r"^\s*k8s\.io/kubernetes (v\S+)\s*$", gomod, re.MULTILINE)
    assert match, "k8s.io/kubernetes pin not found in hack/go/kube/go.mod"
    return match.group(1)


def exists(cp: ControlPlane, *resource: str) -> bool:
    """Whether `kubectl get RESOURCE` finds it; other errors fail the test."""
    got = cp.kubectl("get", *resource, "-o", "name", check=False)
    if got.returncode == 0:
        return True
    assert "NotFound" in got.stderr, got.stderr
    return False


@pytest.fixture
def namespace(control_plane: ControlPlane) -> str:
    name = f"cp-{uuid.uuid4().hex[:8]}"
    control_plane.kubectl("create", "namespace", name)
    return name


@pytest.fixture
def own_control_plane(tmp_path: Path) -> Iterator[ControlPlane]:
    """A second, private control plane for tests that stop or restart it."""
    cp = ControlPlane(tmp_path / "cp", durable=False, die_with_parent=True)
    cp.start()
    yield cp
    cp.stop()


def test_apiserver_answers_readyz(control_plane: ControlPlane) -> None:
    assert control_plane.readyz() == 200
    assert control_plane.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"


def test_kubectl_and_server_are_the_pinned_version(control_plane: ControlPlane) -> None:
    versions = json.loads(control_plane.kubectl("version", "-o", "json").stdout)
    pinned = pinned_kubernetes_version()
    assert versions["clientVersion"]["gitVersion"] == pinned
    assert versions["serverVersion"]["gitVersion"] == pinned


def test_env_puts_built_binaries_first(control_plane: ControlPlane) -> None:
    env = control_plane.env()
    assert env["KUBECONFIG"] == str(control_plane.kubeconfig_path)
    assert env["PATH"].split(os.pathsep)[0] == str(control_plane.bin_dir)
    found = subprocess.run(["kubectl", "config", "view", "--minify", "-o", "jsonpath={.clusters[0].cluster.server}"],
                           env=env, capture_output=True, text=True, check=True)
    assert found.stdout == control_plane.server_url


def test_garbage_collector_deletes_dependents(control_plane: ControlPlane, namespace: str) -> None:
    cp = control_plane
    cp.kubectl("create", "configmap", "owner", "-n", namespace)
    uid = cp.kubectl("get", "configmap", "owner", "-n", namespace, "-o", "jsonpath={.metadata.uid}").stdout
    dependent = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "dependent",
            "namespace": namespace,
            "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}],
        },
    }
    cp.kubectl("create", "-f", "-", input=json.dumps(dependent))

    cp.kubectl("delete", "configmap", "owner", "-n", namespace)

    wait_for(lambda: not exists(cp, "configmap", "dependent", "-n", namespace), 30,
             "the garbage collector did not delete the dependent ConfigMap")


def test_namespace_deletion_finishes(control_plane: ControlPlane, namespace: str) -> None:
    cp = control_plane
    cp.kubectl("create", "configmap", "content", "-n", namespace)

    cp.kubectl("delete", "namespace", namespace, "--wait=false")

    wait_for(lambda: not exists(cp, "namespace", namespace), 60,
             f"namespace {namespace} is still there (namespace controller not finishing?)")


def test_apiserver_restart_keeps_port_and_data(own_control_plane: ControlPlane) -> None:
    cp = own_control_plane
    cp.kubectl("create", "configmap", "kept", "-n", "default")
    url = cp.server_url

    cp.stop_apiserver()
    assert cp.readyz() is None
    assert cp.running_components() == ["etcd", "kube-controller-manager"]
    cp.start_apiserver()

    assert cp.server_url == url
    assert exists(cp, "configmap", "kept", "-n", "default")


def test_stop_leaves_no_process(own_control_plane: ControlPlane) -> None:
    cp = own_control_plane
    pids = [rec.pid for rec in cp.records().values()]
    assert len(pids) == 3 and sorted(processes_using(cp.state_dir)) == sorted(pids)

    cp.stop()

    assert processes_using(cp.state_dir) == []
    assert all(not Path(f"/proc/{pid}").exists() for pid in pids), "a component was not reaped"
    assert cp.records() == {}


def test_components_die_with_a_killed_parent(tmp_path: Path) -> None:
    """die_with_parent: even SIGKILL of the Python process (no finalizer runs) stops them."""
    state_dir = tmp_path / "cp"
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(REPO / 'hack')!r})
        from controlplane import ControlPlane
        ControlPlane({str(state_dir)!r}, durable=False, die_with_parent=True).start()
        print("started", flush=True)
        time.sleep(600)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None and parent.stdout.readline().strip() == "started"
        # The parent's own command line names the state dir too.
        assert len(set(processes_using(state_dir)) - {parent.pid}) == 3
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()

    wait_for(lambda: processes_using(state_dir) == [], 30,
             lambda: f"components outlived their parent: {processes_using(state_dir)}")


def test_command_up_status_down(tmp_path: Path) -> None:
    state_dir = tmp_path / "demo"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(REPO / "hack/controlplane"), *args, "--state-dir", str(state_dir)],
                              capture_output=True, text=True, timeout=300)

    up = run("up")
    try:
        assert up.returncode == 0, up.stderr
        assert f"export KUBECONFIG={state_dir}/admin.kubeconfig" in up.stdout
        again = run("up")
        assert again.returncode == 0 and "already running" in again.stdout
        status = run("status")
        assert status.returncode == 0, status.stdout + status.stderr
        assert "/readyz: 200" in status.stdout
        assert run("kubeconfig").stdout.strip() == f"{state_dir}/admin.kubeconfig"
        assert "export PATH=" in run("env").stdout
    finally:
        down = run("down")
    assert down.returncode == 0, down.stderr
    assert processes_using(state_dir) == []
    assert run("status").returncode == 1
