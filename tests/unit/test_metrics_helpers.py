"""The Prometheus helpers (apprelease.metrics) and the operator's halt detection.

Aspects: `status.halted_reason` counts a halt when it begins (HostFailed, then
ProgressDeadlineExceeded), not while it lasts, and not for InvalidSpec; `record_rollout`
turns event reasons into the started/completed counters and sets every host phase (a phase
left drops to 0), and knows every phase the HostRelease model has; `forget_app` drops an app's gauges; the agent's helpers label builds
hit/miss and steps by name; `EndpointServer` serves /metrics in the Prometheus text format
and checks as 200/503. The end-to-end values are in tests/e2e/test_metrics.py.
"""

from __future__ import annotations

import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime
from typing import get_args

import pytest
from prometheus_client import CollectorRegistry, Counter

from apprelease import metrics
from apprelease.api.models import AppReleaseStatus, HostPhase
from apprelease.controller import status

pytestmark = pytest.mark.unit

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def with_conditions(*conditions: tuple[str, str, str]) -> AppReleaseStatus:
    result: list = []
    for kind, state, reason in conditions:
        result = status.set_condition(result, kind, state, reason, "m", NOW, 1)  # type: ignore[arg-type]
    return AppReleaseStatus(conditions=result)


HEALTHY = with_conditions(("Progressing", "True", "RolloutInProgress"), ("Degraded", "False", "NoHostFailed"))
FAILED = with_conditions(("Progressing", "True", "RolloutInProgress"), ("Degraded", "True", "HostFailed"))
STUCK = with_conditions(("Progressing", "False", "ProgressDeadlineExceeded"), ("Degraded", "False", "NoHostFailed"))
INVALID = with_conditions(("Progressing", "True", "RolloutInProgress"), ("Degraded", "True", "InvalidSpec"))


@pytest.mark.parametrize(("previous", "new", "expected"), [
    pytest.param(HEALTHY, FAILED, "HostFailed", id="host-fails"),
    pytest.param(None, FAILED, "HostFailed", id="first-status-already-failed"),
    pytest.param(FAILED, FAILED, None, id="still-failed-not-counted-again"),
    pytest.param(HEALTHY, STUCK, "ProgressDeadlineExceeded", id="deadline-passes"),
    pytest.param(STUCK, STUCK, None, id="still-stuck"),
    pytest.param(HEALTHY, INVALID, None, id="invalid-spec-is-not-a-halt"),
    pytest.param(FAILED, HEALTHY, None, id="recovered"),
])
def test_halted_reason(previous, new, expected) -> None:
    assert status.halted_reason(previous, new) == expected


def sample(name: str, **labels: str) -> float:
    value = metrics.OPERATOR.get_sample_value(name, labels)
    if value is None:
        value = metrics.AGENT.get_sample_value(name, labels)
    return value or 0.0


def test_record_rollout_counts_and_sets_every_phase() -> None:
    ns, app = "ns", f"app-{uuid.uuid4().hex[:6]}"
    metrics.record_rollout(ns, app, ["RolloutStarted", "HostUpdated"], None, ["Building", "Pending"])
    metrics.record_rollout(ns, app, ["HostUpdated", "RolloutComplete"], "HostFailed", ["Ready", "Ready"])
    labels = {"namespace": ns, "app": app}
    assert sample("apprelease_rollouts_started_total", **labels) == 1
    assert sample("apprelease_rollouts_completed_total", **labels) == 1
    assert sample("apprelease_rollouts_halted_total", **labels, reason="HostFailed") == 1
    assert sample("apprelease_hosts", **labels, phase="Ready") == 2
    assert sample("apprelease_hosts", **labels, phase="Building") == 0  # left: back to 0
    metrics.forget_app(ns, app)
    assert metrics.OPERATOR.get_sample_value("apprelease_hosts", {**labels, "phase": "Ready"}) is None
    metrics.forget_app(ns, app)  # twice: nothing left to remove, no error


def test_host_phases_are_the_models_phases() -> None:
    # metrics is a leaf (it may not import the api), so it keeps its own copy: the same words, same order.
    assert metrics.HOST_PHASES == get_args(HostPhase)


def test_agent_helpers_label_builds_and_steps() -> None:
    before_hit = sample("apprelease_agent_venv_build_seconds_count", cache="hit")
    before_miss = sample("apprelease_agent_venv_build_seconds_count", cache="miss")
    metrics.venv_ensured(0.0, reused=True)
    metrics.venv_ensured(1.5, reused=False)
    assert sample("apprelease_agent_venv_build_seconds_count", cache="hit") == before_hit + 1
    assert sample("apprelease_agent_venv_build_seconds_count", cache="miss") == before_miss + 1
    before = sample("apprelease_agent_rotation_step_seconds_count", step="settle")
    metrics.step_done("settle", 0.5)
    assert sample("apprelease_agent_rotation_step_seconds_count", step="settle") == before + 1


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read().decode()


def test_endpoint_server_serves_metrics_and_checks() -> None:
    registry = CollectorRegistry()
    Counter("demo_things_total", "Things.", registry=registry).inc(3)
    server = metrics.EndpointServer("127.0.0.1", 0, registry, {
        "healthz": lambda: (True, "ok"), "readyz": lambda: (False, "not listed yet"),
    }).start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        code, content_type, body = get(f"{base}/metrics")
        assert code == 200 and content_type.startswith("text/plain; version=") and "demo_things_total 3.0" in body
        assert get(f"{base}/healthz")[::2] == (200, "ok\n")
        assert get(f"{base}/readyz")[::2] == (503, "not listed yet\n")
        assert get(f"{base}/nope")[0] == 404
    finally:
        server.stop()
