"""Leader election between two real operator processes (`apprelease operator --leader-elect`).

Covers: the first replica takes the Lease and reconciles; a second replica answers its
liveness probe but stands by and reconciles nothing; after the leader is killed (-9, no
release) the standby takes over within the lease duration and reconciles (a new Node gets
its HostRelease); a graceful stop releases the Lease at once.
"""

from __future__ import annotations

import copy
import json
import time
import uuid
from collections.abc import Iterator

import pytest
import yaml

from apprelease.api import models
from support.cluster import wait_for, wait_for_crd
from support.manifests import EXAMPLE, ROOT
from support.operator import OperatorProcess

pytestmark = pytest.mark.e2e

LEASE = "apprelease-operator"
LEASE_DURATION = 6.0  # seconds; the Deployment keeps the default 15


@pytest.fixture
def namespace(control_plane) -> Iterator[str]:
    control_plane.kubectl("apply", "-f", str(ROOT / "crds"))
    for plural in ("appreleases", "hostreleases"):
        wait_for_crd(control_plane, f"{plural}.{models.GROUP}")
    name = f"leader-{uuid.uuid4().hex[:8]}"
    control_plane.kubectl("create", "namespace", name)
    yield name
    control_plane.kubectl("delete", "nodes", "-l", f"leader-test={name}", "--ignore-not-found", check=False)
    control_plane.kubectl("delete", "namespace", name, "--wait=false", check=False)


def lease_spec(cp, ns: str) -> dict:
    out = cp.kubectl("get", "lease", LEASE, "-n", ns, "-o", "json", "--ignore-not-found").stdout
    return json.loads(out)["spec"] if out.strip() else {}


def host_nodes(cp, ns: str) -> list[str]:
    out = cp.kubectl("get", "hr", "-n", ns, "-o", "json").stdout
    return sorted(i["spec"]["node"] for i in json.loads(out)["items"])


def add_node(cp, ns: str, suffix: str) -> str:
    name = f"{ns}-{suffix}"
    cp.kubectl("create", "-f", "-", input=yaml.safe_dump(
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {"leader-test": ns}}}))
    return name


def candidate(cp, ns: str, identity: str, log) -> OperatorProcess:
    return OperatorProcess(cp, log, namespaces=[ns], extra_args=[
        "--leader-elect", "--leader-elect-namespace", ns, "--leader-elect-identity", identity,
        "--leader-elect-lease-duration", str(LEASE_DURATION),
    ])


def test_standby_takes_over_after_the_leader_dies(control_plane, namespace, tmp_path):
    cp, ns = control_plane, namespace
    first = candidate(cp, ns, "op-1", tmp_path / "op-1.log")
    second = candidate(cp, ns, "op-2", tmp_path / "op-2.log")
    try:
        first.start()
        assert lease_spec(cp, ns)["holderIdentity"] == "op-1"
        second.start()  # returns once its liveness URL answers: the standby is alive
        wait_for(lambda: "standing by: Lease" in second.logs(), 10, "the second replica does not stand by")

        nodes = [add_node(cp, ns, "a")]
        doc = copy.deepcopy(EXAMPLE)
        doc["metadata"] = {"name": "webxample", "namespace": ns}
        doc["spec"]["hosts"] = {"nodeSelector": {"leader-test": ns}}
        cp.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc))
        wait_for(lambda: host_nodes(cp, ns) == nodes, 30, "the leader did not fan out")
        assert "kopf" not in second.logs(), "the standby started Kopf while the leader lives"

        first.kill()  # no release: the standby must wait the Lease out
        killed = time.monotonic()
        nodes.append(add_node(cp, ns, "b"))
        wait_for(lambda: host_nodes(cp, ns) == sorted(nodes), LEASE_DURATION + 20,
                 lambda: f"the standby did not take over:\n{second.logs()[-3000:]}")
        took = time.monotonic() - killed
        spec = lease_spec(cp, ns)
        assert spec["holderIdentity"] == "op-2"
        assert spec["leaseTransitions"] == 1
        assert took >= LEASE_DURATION * 0.8, f"took over after {took:.1f}s, before the Lease expired"
        assert took <= LEASE_DURATION + 15, f"took over only after {took:.1f}s"

        cp.kubectl("delete", "ar", "webxample", "-n", ns, "--timeout=60s")
        assert second.stop() == 0
        assert not lease_spec(cp, ns).get("holderIdentity"), "a graceful stop did not release the Lease"
    finally:
        second.stop()
        first.stop()
