"""Prometheus metrics, probes and JSON logs of a real operator and a real agent.

A real apiserver, the operator (`--metrics-port`, `--log-json`) and one agent (`agent run`,
/metrics on its probe port and on `--metrics-port`) as subprocesses, one host. The run: v1
then v2 roll out (a venv build each), a failing v3 halts on the host (a build and a failed
health check), the revert to v1 reuses the release on disk (a cache hit). Then the scrapes
must show: rollouts started 4 / completed 3 / halted 1 (HostFailed), one host Ready,
reconcile timings; venv builds 3 misses and 1 hit with plausible seconds, each rotation step timed
(the settle step about 0.5 s), one health-check failure; /healthz and /readyz answer 200 on
both; the operator's log lines are JSON objects.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from support.agents import AgentProcess
from support.cluster import wait_for, wait_for_crd
from support.hosts import app_release
from support.manifests import ROOT
from support.nginx import free_port
from support.operator import OperatorProcess

pytestmark = pytest.mark.e2e

APP = "webxample"


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of GET /metrics, keyed by (sample name, labels)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    """The sample's value; 0 when absent, as Prometheus treats an unseen counter."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def status_code(port: int, path: str) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
        return resp.status


@dataclass
class Run:
    namespace: str
    operator: OperatorProcess
    operator_metrics: int
    agent: AgentProcess
    agent_metrics: int


@pytest.fixture(scope="module")
def run(control_plane, package_index, tmp_path_factory) -> Iterator[Run]:
    cp = control_plane
    cp.kubectl("apply", "-f", str(ROOT / "crds"))
    for plural in ("appreleases", "hostreleases"):
        wait_for_crd(cp, f"{plural}.apprelease.dev")
    suffix = uuid.uuid4().hex[:6]
    namespace, node, selector = f"metrics-{suffix}", f"metrics-host-{suffix}", {"e2e.apprelease.dev/metrics": suffix}
    cp.kubectl("create", "namespace", namespace)
    cp.kubectl("apply", "-f", "-", input=json.dumps(
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node, "labels": selector}}))
    logs = tmp_path_factory.mktemp("metrics-logs")
    # Short (unix socket paths) and traversable by the app's user, as the short_tmp fixture.
    root = Path(tempfile.mkdtemp(prefix="ar-m-", dir="/tmp"))
    root.chmod(0o755)
    operator_metrics, agent_metrics = free_port(), free_port()
    agent = AgentProcess(node=node, root=root / "host", kubeconfig=cp.kubeconfig_path, log_path=logs / "agent.log",
                         extra_args=("--metrics-port", str(agent_metrics), "--metrics-address", "127.0.0.1"))
    operator = OperatorProcess(cp, logs / "operator.log", namespaces=[namespace], extra_args=(
        "--metrics-port", str(operator_metrics), "--metrics-address", "127.0.0.1", "--log-json"))
    app_port = free_port()

    def apply(version: str, **options: object) -> None:
        doc = app_release(package_index.url, version, port=app_port, name=APP, namespace=namespace,
                          **options).wire()  # type: ignore[arg-type]
        doc["spec"]["hosts"] = {"nodeSelector": selector}
        cp.kubectl("apply", "-f", "-", input=json.dumps(doc))

    def conditions() -> dict[str, dict]:
        obj = json.loads(cp.kubectl("get", "ar", APP, "-n", namespace, "-o", "json").stdout)
        current = (obj.get("status") or {}).get("observedGeneration") == obj["metadata"]["generation"]
        return {c["type"]: c for c in obj.get("status", {}).get("conditions", [])} if current else {}

    def wait_reason(kind: str, reason: str) -> None:
        wait_for(lambda: conditions().get(kind, {}).get("reason") == reason, 240,
                 lambda: f"{kind} never {reason}: {conditions()}\n{operator.logs()[-3000:]}")

    try:
        agent.start()
        operator.start()
        for version in ("1.0.0", "2.0.0"):
            apply(version)
            wait_reason("Progressing", "RolloutComplete")
        apply("3.0.0", fail_health=True, health_timeout=5)
        wait_reason("Degraded", "HostFailed")
        apply("1.0.0")
        wait_reason("Progressing", "RolloutComplete")
        yield Run(namespace, operator, operator_metrics, agent, agent_metrics)
    finally:
        cp.kubectl("delete", "ar", APP, "-n", namespace, "--ignore-not-found", "--timeout=60s", check=False)
        operator.stop()
        agent.close()
        cp.kubectl("delete", "node", node, "--ignore-not-found", check=False)
        cp.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        shutil.rmtree(root, ignore_errors=True)


def test_operator_counts_rollouts_and_hosts(run: Run) -> None:
    samples = scrape(run.operator_metrics)
    app = {"namespace": run.namespace, "app": APP}
    assert value(samples, "apprelease_rollouts_started_total", **app) == 4  # v1, v2, v3, back to v1
    assert value(samples, "apprelease_rollouts_completed_total", **app) == 3  # all but v3
    assert value(samples, "apprelease_rollouts_halted_total", **app, reason="HostFailed") == 1
    assert value(samples, "apprelease_hosts", **app, phase="Ready") == 1
    assert value(samples, "apprelease_hosts", **app, phase="Failed") == 0
    assert value(samples, "apprelease_operator_reconcile_seconds_count") >= 3
    assert 0 < value(samples, "apprelease_operator_reconcile_seconds_sum") < 60
    assert value(samples, "process_resident_memory_bytes") > 10e6  # the process collector is there


def test_agent_times_builds_and_rotation_steps(run: Run) -> None:
    samples = scrape(run.agent.health_port)
    build = "apprelease_agent_venv_build_seconds"
    assert value(samples, f"{build}_count", cache="miss") == 3  # v1, v2 and v3 were built
    assert 0.05 < value(samples, f"{build}_sum", cache="miss") < 300
    assert value(samples, f"{build}_count", cache="hit") >= 1  # the revert found v1 on disk
    assert value(samples, f"{build}_sum", cache="hit") < 1.0
    step = "apprelease_agent_rotation_step_seconds"
    for name in ("ensure-user", "ensure-release", "start-watcher", "health-check", "switch-live", "settle",
                 "stop-watcher", "swap-current"):
        assert value(samples, f"{step}_count", step=name) >= 1, name
    settles = value(samples, f"{step}_count", step="settle")
    assert 0.45 * settles <= value(samples, f"{step}_sum", step="settle") <= 2.0 * settles  # 0.5 s each
    assert value(samples, f"{step}_sum", step="health-check") > 0.05  # gunicorn boots before it answers
    assert value(samples, "apprelease_agent_health_check_failures_total", app=f"{run.namespace}_{APP}") == 1


def test_metrics_port_and_probes(run: Run) -> None:
    assert value(scrape(run.agent_metrics), "apprelease_agent_venv_build_seconds_count", cache="miss") == 3
    for port in (run.agent.health_port, run.agent_metrics, run.operator_metrics):
        assert status_code(port, "/healthz") == 200
        assert status_code(port, "/readyz") == 200


def test_operator_logs_json_lines(run: Run) -> None:
    lines = [line for line in run.operator.logs().splitlines() if line.strip() and not line.startswith("====")]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert records and {"time", "level", "logger", "message"} <= set(records[0])
    assert any("rolling out" in r["message"] or "HostRelease" in r["message"] for r in records)
