"""The demo's own decisions (hack/demo.py), without running it.

Covers: a checkout other users can traverse keeps its hosts under .demo/hosts, one they
cannot (root's home, `mktemp -d`) or one whose path leaves no room for unix sockets gets
them under /var/lib/apprelease-demo/<hash of the path>, stable per checkout, and an
explicit APPRELEASE_DEMO_HOSTS_DIR wins; the directories made for them are 0755 even under
a 077 umask; traversability looks at every parent; the progress line shows each host's
live phase, where it is going, and a build's stage, and calls a status about an older spec
Pending. Running it is tests/e2e/test_newcomer_demo.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import demo  # hack/demo.py (hack is on pytest's pythonpath)

pytestmark = pytest.mark.unit


def test_reachable_checkout_keeps_its_hosts_inside():
    assert demo.host_roots_base(Path("/srv/apprelease"), True) == Path("/srv/apprelease/.demo/hosts")


@pytest.mark.parametrize(("checkout", "traversable"), [
    (Path("/root/apprelease"), False),
    (Path("/srv/" + "deep/" * 10 + "apprelease"), True),
], ids=["not-traversable", "path-too-long-for-sockets"])
def test_other_checkouts_get_their_hosts_under_var_lib(checkout, traversable):
    base = demo.host_roots_base(checkout, traversable)
    assert base.parent == Path("/var/lib/apprelease-demo") and len(base.name) == 12
    assert base == demo.host_roots_base(checkout, traversable), "the same checkout, the same place"
    assert base != demo.host_roots_base(checkout / "other", traversable)
    longest = base / "host-a" / "apps/default_webxample/run/r0123456789a.sock"
    assert len(str(longest).encode()) <= 107


def test_an_explicit_hosts_dir_wins():
    assert demo.host_roots_base(Path("/root/x"), False, override="/somewhere") == Path("/somewhere")


def test_dirs_made_for_hosts_are_reachable_under_a_strict_umask(tmp_path):
    tmp_path.chmod(0o755)
    old = os.umask(0o077)
    try:
        demo.make_reachable_dirs(tmp_path / "a" / "b" / "host-a")
    finally:
        os.umask(old)
    for directory in (tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / "host-a"):
        assert directory.stat().st_mode & 0o777 == 0o755, directory
    assert demo.traversable_by_others(tmp_path / "a" / "b" / "host-a") == demo.traversable_by_others(tmp_path)


def test_traversable_looks_at_every_parent(short_tmp):
    (short_tmp / "closed" / "open").mkdir(parents=True)
    (short_tmp / "closed" / "open").chmod(0o755)
    (short_tmp / "closed").chmod(0o700)
    assert demo.traversable_by_others(short_tmp)  # /tmp/ar-*: 0755 under 1777
    assert not demo.traversable_by_others(short_tmp / "closed" / "open")
    (short_tmp / "closed").chmod(0o711)
    assert demo.traversable_by_others(short_tmp / "closed" / "open")


def hr(node: str, version: str, phase: str | None, serving: str | None, message: str = "",
       generation: int = 2, observed: int = 2) -> dict:
    status = {"phase": phase, "servingVersion": serving, "message": message, "observedGeneration": observed}
    return {"metadata": {"generation": generation}, "spec": {"node": node, "version": version},
            "status": {k: v for k, v in status.items() if v is not None}}


@pytest.mark.parametrize(("obj", "line"), [
    (hr("host-a", "1.0.0", "Ready", "1.0.0"), "host-a: 1.0.0 (Ready)"),
    (hr("host-a", "2.0.0", "Ready", "1.0.0", observed=1), "host-a: 1.0.0 (Pending -> 2.0.0)"),
    (hr("host-a", "2.0.0", "Pending", "1.0.0"), "host-a: 1.0.0 (Pending -> 2.0.0)"),
    (hr("host-a", "2.0.0", "Building", "1.0.0", "building the venv of 2.0.0 (buildId b1): installing 2 packages"),
     "host-a: 1.0.0 (Building -> 2.0.0: installing 2 packages)"),
    (hr("host-a", "2.0.0", "HealthChecking", "1.0.0", "checking /healthz ..."),
     "host-a: 1.0.0 (HealthChecking -> 2.0.0)"),
    (hr("host-b", "1.0.0", "Draining", "1.0.0", "stopping revision r2 gracefully"), "host-b: 1.0.0 (Draining -> 1.0.0)"),
    (hr("host-b", "1.0.0", None, None, observed=None), "host-b: - (Pending -> 1.0.0)"),
    (hr("host-b", "3.0.0", "Failed", "2.0.0"), "host-b: 2.0.0 (Failed -> 3.0.0)"),
], ids=["ready", "spec-not-seen-yet", "pending", "building-with-stage", "health-checking",
        "draining-back-to-the-same-version", "first", "failed"])
def test_host_summary(obj, line):
    assert demo.host_summary(obj) == line
