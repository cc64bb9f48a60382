"""Pytest pieces for tests against a real control plane (etcd + kube-apiserver + controller manager).

Who uses it: tests/conftest.py imports the session fixture (`from support.cluster import
control_plane  # noqa`), so one control plane serves the whole test session; e2e tests use
`wait_for` and `wait_for_crd` instead of sleeps. The control plane itself is hack/controlplane.py.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

from controlplane import ControlPlane

T = TypeVar("T")


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """A started control plane for the session; stopped (no process left) at its end.

    etcd runs without fsync (nothing here outlives the session) and the components die with
    the pytest process even if it is killed before this finalizer runs.
    """
    cp = ControlPlane(tmp_path_factory.mktemp("controlplane"), durable=False, die_with_parent=True)
    cp.start()  # on failure start() stops what it started before raising
    try:
        yield cp
    finally:
        cp.stop()
        # Logs and config stay for debugging (pytest keeps the last few basetemps); etcd's
        # preallocated WAL files (64 MB each) do not need to.
        shutil.rmtree(cp.state_dir / "etcd", ignore_errors=False)


def wait_for(
    predicate: Callable[[], T],
    timeout: float,
    message: str | Callable[[], str],
    interval: float = 0.2,
) -> T:
    """Poll `predicate` until it returns something truthy and return that.

    On timeout, fail with `message` (a callable is called then, so it can describe the last
    state seen). Exceptions from the predicate propagate: a predicate that expects transient
    errors handles them itself and says so.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"{text} (waited {timeout:g}s)")
        time.sleep(interval)


def wait_for_crd(cp: ControlPlane, name: str, timeout: float = 60.0) -> None:
    """Wait until the CRD `name` (plural.group) is Established and a list of it succeeds.

    Right after Established, lists can still answer `429 storage is (re)initializing` for a
    moment; a test that creates objects at once would then fail for no reason of its own.
    """
    last = {"state": "not checked yet"}
    established = '{.status.conditions[?(@.type=="Established")].status}'

    def ready() -> bool:
        crd = cp.kubectl("get", "crd", name, "-o", f"jsonpath={established}", check=False)
        if crd.returncode != 0 or crd.stdout.strip() != "True":
            last["state"] = f"Established={crd.stdout.strip() or '?'} {crd.stderr.strip()}"
            return False
        listed = cp.kubectl("get", name, "--all-namespaces", "-o", "name", check=False)
        if listed.returncode != 0:
            last["state"] = f"Established, but list failed: {listed.stderr.strip()}"
            return False
        return True

    wait_for(ready, timeout, lambda: f"CRD {name} not usable: {last['state']}")
