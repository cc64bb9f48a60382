"""Prometheus metrics of the operator and of the agent, and the HTTP endpoint serving them.

Who calls it:
- controller/reconcile.py records rollouts started / completed / halted and hosts by phase
  after each reconcile; controller/handlers.py counts failed reconciles and marks the
  operator ready once Kopf has started; controller/cli.py serves `OPERATOR` on
  `apprelease operator --metrics-port`;
- host/core.py records venv builds (cache hit: the release was on disk) and the seconds of
  each rotation step, and counts failed health checks, through `AgentRecorder`, which
  agent/cli.py hands to the host it wires; agent/cluster.py counts failed
  reconciles; agent/cli.py serves `AGENT` on `apprelease agent run --health-port` (with the
  probes) and `--metrics-port`.

Each role has its own registry, so an operator does not export the agent's series (all zero
there) and the other way round; both carry the process collector (CPU, memory, fds).
Recording is cheap and never raises into the caller's work. Label values are bounded: app
keys, phases, step names and reasons, never revisions or messages.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.process_collector import ProcessCollector

log = logging.getLogger(__name__)

OPERATOR = CollectorRegistry()
AGENT = CollectorRegistry()
ProcessCollector(registry=OPERATOR)
ProcessCollector(registry=AGENT)

# ----- operator

ROLLOUTS_STARTED = Counter(
    "apprelease_rollouts_started_total", "Rollouts of a new revision begun (first hosts moved).",
    ["namespace", "app"], registry=OPERATOR)
ROLLOUTS_COMPLETED = Counter(
    "apprelease_rollouts_completed_total", "Rollouts that reached every selected host.",
    ["namespace", "app"], registry=OPERATOR)
ROLLOUTS_HALTED = Counter(
    "apprelease_rollouts_halted_total",
    "Rollouts halted: a host failed (HostFailed), a host conflict (HostConflict) or no progress within the deadline "
    "(ProgressDeadlineExceeded).",
    ["namespace", "app", "reason"], registry=OPERATOR)
HOSTS = Gauge(
    "apprelease_hosts", "Hosts of an AppRelease by the phase its status shows.",
    ["namespace", "app", "phase"], registry=OPERATOR)
OPERATOR_RECONCILE_ERRORS = Counter(
    "apprelease_operator_reconcile_errors_total", "AppRelease reconciles that failed and will be retried.",
    ["error"], registry=OPERATOR)
OPERATOR_RECONCILE_SECONDS = Histogram(
    "apprelease_operator_reconcile_seconds", "Seconds of one AppRelease reconcile pass.",
    registry=OPERATOR, buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))

# The phases a HostState can show (api/models.HostPhase, plus the operator's own Pending and
# Terminating): each is set on every record, so a phase a host left drops to 0.
HOST_PHASES = ("Pending", "Building", "Starting", "HealthChecking", "Switching", "Draining", "Ready", "Failed",
               "Terminating")

HALT_REASONS = ("HostFailed", "ProgressDeadlineExceeded")

_operator_started = threading.Event()


def operator_started() -> None:
    """Kopf ran the startup handlers: the operator is logged in and watching."""
    _operator_started.set()


def operator_ready() -> tuple[bool, str]:
    return (True, "ok") if _operator_started.is_set() else (False, "Kopf has not started yet")


def record_rollout(namespace: str, app: str, events: Iterable[str], halted: str | None,
                   phases: Iterable[str]) -> None:
    """One reconcile's outcome: the event reasons it posted, a new halt (reason) if any, host phases."""
    for reason in events:
        if reason == "RolloutStarted":
            ROLLOUTS_STARTED.labels(namespace, app).inc()
        elif reason == "RolloutComplete":
            ROLLOUTS_COMPLETED.labels(namespace, app).inc()
    if halted is not None:
        ROLLOUTS_HALTED.labels(namespace, app, halted).inc()
    counts = dict.fromkeys(HOST_PHASES, 0)
    for phase in phases:
        counts[phase] = counts.get(phase, 0) + 1
    for phase, count in counts.items():
        HOSTS.labels(namespace, app, phase).set(count)


def forget_app(namespace: str, app: str) -> None:
    """The AppRelease is gone: its host gauges go too (counters stay, as Prometheus expects)."""
    for phase in HOST_PHASES:
        try:
            HOSTS.remove(namespace, app, phase)
        except KeyError:
            pass  # never recorded: nothing to remove


def operator_reconcile_failed(error: BaseException) -> None:
    OPERATOR_RECONCILE_ERRORS.labels(type(error).__name__).inc()


# ----- agent

VENV_BUILD_SECONDS = Histogram(
    "apprelease_agent_venv_build_seconds",
    "Seconds to ensure a release's venv; cache=hit when the release was already on disk (no build).",
    ["cache"], registry=AGENT, buckets=(0.005, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
ROTATION_STEP_SECONDS = Histogram(
    "apprelease_agent_rotation_step_seconds", "Seconds of each step of a reconcile (ensure-release, "
    "start-watcher, health-check, switch-live, settle, stop-watcher, ...).",
    ["step"], registry=AGENT, buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300))
HEALTH_CHECK_FAILURES = Counter(
    "apprelease_agent_health_check_failures_total", "New revisions that failed their health check (not switched to).",
    ["app"], registry=AGENT)
AGENT_RECONCILE_ERRORS = Counter(
    "apprelease_agent_reconcile_errors_total",
    "HostRelease reconciles that failed and will be retried (transient: API or host hiccup).",
    ["kind"], registry=AGENT)

for _cache in ("hit", "miss"):
    VENV_BUILD_SECONDS.labels(_cache)
for _kind in ("transient", "unexpected"):
    AGENT_RECONCILE_ERRORS.labels(_kind)


def venv_ensured(seconds: float, reused: bool) -> None:
    VENV_BUILD_SECONDS.labels("hit" if reused else "miss").observe(seconds)


def step_done(step: str, seconds: float) -> None:
    ROTATION_STEP_SECONDS.labels(step).observe(seconds)


def health_check_failed(app_key: str) -> None:
    HEALTH_CHECK_FAILURES.labels(app_key).inc()


class AgentRecorder:
    """The host data plane's `Recorder` (host/recorder.py), counted in the agent's registry."""

    venv_ensured = staticmethod(venv_ensured)
    step_done = staticmethod(step_done)
    health_check_failed = staticmethod(health_check_failed)


def agent_reconcile_failed(transient: bool) -> None:
    AGENT_RECONCILE_ERRORS.labels("transient" if transient else "unexpected").inc()


# ----- the endpoint

Check = Callable[[], tuple[bool, str]]


class EndpointServer:
    """GET /metrics (the registry, Prometheus text format) and one path per check (/healthz, ...).

    A check answers 200 with "ok" or 503 with its reason. A tiny stdlib server on its own
    daemon thread, so serving never waits on the reconcile loops.
    """

    def __init__(self, address: str, port: int, registry: CollectorRegistry, checks: dict[str, Check]):
        routes = {f"/{name}": check for name, check in checks.items()}

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._answer(200, generate_latest(registry), CONTENT_TYPE_LATEST)
                    return
                check = routes.get(path)
                if check is None:
                    self._answer(404, b"not found\n")
                    return
                ok, message = check()
                self._answer(200 if ok else 503, (message + "\n").encode())

            def _answer(self, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
                log.debug("endpoint %s", format % args)

        self._server = ThreadingHTTPServer((address, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"endpoints-{port}", daemon=True)
        self.paths = ["/metrics", *routes]

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> EndpointServer:
        self._thread.start()
        log.info("serving %s on port %d", " ".join(self.paths), self.port)
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def serve_operator(address: str, port: int) -> EndpointServer:
    """The operator's /metrics, /healthz (the process answers) and /readyz (Kopf has started)."""
    return EndpointServer(address, port, OPERATOR, {
        "healthz": lambda: (True, "ok"),
        "readyz": operator_ready,
    }).start()
