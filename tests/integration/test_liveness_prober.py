"""The agent's liveness prober against real sockets: one tenant's app cannot delay another's probes.

Covers: a probe of a server that trickles its answer (a byte every 0.5 s) fails at the
probe's deadline, not when the answer is complete (the timeout is a total deadline, not
per read); the health gate before a switch ends at its deadline the same way; while one app's probe hangs
until its deadline, a healthy app of another namespace is probed every period all along, and
the hanging app's failure reaches its status (written by the probe worker's own client);
a namespace with more hanging apps than its share holds only its share of the probe pool:
another namespace's app is still probed every period, and no app ever has two probes at once.

The apps are plain socket servers in the test (no gunicorn, no supervisor): the prober reaches
an app only through `apps/<key>/run/live.sock`, which is what is built here.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest

from apprelease.agent import cluster
from apprelease.agent.kube import Listed
from apprelease.api.models import HostRelease
from apprelease.host import core, health
from apprelease.host.layout import LIVE_SOCKET, HostLayout, app_key
from support.cluster import wait_for

pytestmark = pytest.mark.integration

NODE = "node-a"
REVISION = "r1"
DRIP_SECONDS = 0.5
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
TRICKLED = b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\nConnection: close\r\n\r\n" + b"x" * 40  # ~50 s at 0.5 s a byte


@dataclass
class Connection:
    accepted: float
    closed: float | None = None  # None while open
    sent: int = 0  # bytes of the answer sent


class App:
    """An app's live socket: answers at once, or trickles its answer a byte every DRIP_SECONDS.

    Records each connection (when accepted and closed, how much of the answer it got) and the
    most connections it had open at once.
    """

    def __init__(self, layout: HostLayout, namespace: str, name: str, *, trickle: bool):
        run = layout.app(app_key(namespace, name)).run
        run.mkdir(parents=True)
        self.path = run / f"{REVISION}.sock"
        (run / LIVE_SOCKET).symlink_to(self.path.name)
        self.answer = TRICKLED if trickle else ANSWER
        self.connections: list[Connection] = []
        self.most_open = 0
        self._lock = threading.Lock()
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(self.path))
        self._server.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return  # closed
            with self._lock:
                record = Connection(time.monotonic())
                self.connections.append(record)
                self.most_open = max(self.most_open, sum(1 for c in self.connections if c.closed is None))
            threading.Thread(target=self._answer, args=(conn, record), daemon=True).start()

    def _answer(self, conn: socket.socket, record: Connection) -> None:
        try:
            conn.recv(65536)
            if self.answer is ANSWER:
                conn.sendall(ANSWER)
                record.sent = len(ANSWER)
                conn.recv(1)  # until the client is done and closes
            else:
                for byte in self.answer:
                    conn.sendall(bytes([byte]))
                    record.sent += 1
                    readable, _, _ = select.select([conn], [], [], DRIP_SECONDS)
                    if readable and not conn.recv(1):
                        break  # the client gave up and closed: noted at once, not at the next byte
        except OSError:
            pass
        finally:
            conn.close()
            with self._lock:
                record.closed = time.monotonic()

    def accepted_between(self, start: float, end: float) -> int:
        with self._lock:
            return sum(1 for c in self.connections if start <= c.accepted <= end)

    def first_closed(self) -> Connection | None:
        with self._lock:
            return next((c for c in self.connections if c.closed is not None), None)

    def all_closed(self) -> list[Connection] | None:
        with self._lock:
            return list(self.connections) if all(c.closed is not None for c in self.connections) else None

    def close(self) -> None:
        self._server.close()


def most_open_together(apps: list[App]) -> int:
    """The most connections the apps had open at the same time."""
    edges = sorted((t, step) for app in apps for c in list(app.connections)
                   for t, step in ((c.accepted, 1), (c.closed if c.closed is not None else float("inf"), -1)))
    most = level = 0
    for _, step in edges:
        level += step
        most = max(most, level)
    return most


class RecordingAPI:
    """The API calls of the probe workers: status patches and Events, on HostReleases in memory."""

    def __init__(self, objects: dict[str, dict]):
        self.objects = objects
        self.patches: list[tuple[str, dict]] = []
        self.lock = threading.Lock()

    def list(self, selector: str) -> Listed:
        return Listed(items=list(self.objects.values()), resource_version="1")

    def patch_status(self, namespace: str, name: str, patch: dict) -> dict:
        with self.lock:
            self.patches.append((f"{namespace}/{name}", patch))
            obj = self.objects[f"{namespace}/{name}"]
            obj["status"] = {**obj["status"], **{k: v for k, v in patch.items() if v is not None}}
            return obj

    def create_event(self, obj: dict, **event: str) -> None:
        pass

    def liveness_of(self, key: str) -> dict:
        with self.lock:
            return dict((self.objects[key].get("status") or {}).get("liveness") or {})


def host_release(namespace: str, app: str, *, period: int = 1, probe_timeout: int = 4) -> dict:
    spec = {"version": "1", "source": {"requirements": ["web==1"]}, "entrypoint": "web:app", "app": app, "user": app,
            "proxy": {"serverNames": [f"{app}.local"]}, "node": NODE, "buildId": "b1", "revision": REVISION,
            "healthCheck": {"path": "/healthz", "periodSeconds": period, "failureThreshold": 100,
                            "probeTimeoutSeconds": probe_timeout}}
    return {"apiVersion": "apprelease.dev/v1alpha1", "kind": "HostRelease",
            "metadata": {"name": f"{app}-{NODE}", "namespace": namespace, "generation": 1, "resourceVersion": "1",
                         "uid": f"uid-{namespace}-{app}",
                         "labels": {"apprelease.dev/node": NODE, "apprelease.dev/app": app}},
            "spec": spec,
            "status": {"observedGeneration": 1, "phase": "Ready", "servingRevision": REVISION}}


@pytest.fixture
def layout(short_tmp: Path) -> HostLayout:
    return HostLayout(short_tmp)


@pytest.fixture
def prober() -> Iterator:
    """`start(layout, objects, **settings)` runs a ClusterAgent's prober thread (only that) on them."""
    stops: list[threading.Event] = []

    def start(layout: HostLayout, objects: list[dict], **settings) -> tuple[cluster.ClusterAgent, RecordingAPI]:
        api = RecordingAPI({f"{o['metadata']['namespace']}/{o['metadata']['name']}": o for o in objects})
        host = SimpleNamespace(layout=layout)  # a probe reaches only layout (restart_workers: threshold 100)
        agent = cluster.ClusterAgent(host, cluster.Settings(node=NODE, **settings), lambda: api)  # type: ignore[arg-type]
        agent.cache.replace(objects)
        stop = threading.Event()
        stops.append(stop)
        threading.Thread(target=agent._probe_loop, args=(stop,), name="prober", daemon=True).start()
        return agent, api

    yield start
    for stop in stops:
        stop.set()


def test_a_trickled_answer_fails_the_probe_at_its_deadline(layout):
    app = App(layout, "evil", "drip", trickle=True)
    release = HostRelease.model_validate(host_release("evil", "drip", probe_timeout=1))
    try:
        probe = core.probe_live(SimpleNamespace(layout=layout), "evil", "drip", release.spec)  # type: ignore[arg-type]
        (probed,) = wait_for(app.all_closed, timeout=30, message="the probe's connection stayed open")
        # the health gate (before a switch, on the agent's one worker) ends at its deadline too
        gate = health.wait_healthy(app.path, "/healthz", expected=200, deadline_seconds=1, request_timeout=1)
        gated = wait_for(app.all_closed, timeout=30, message="the health gate's connection stayed open")[1:]
    finally:
        app.close()
    assert (probe.revision, probe.passed) == (REVISION, False)
    assert "TimeoutError" in probe.detail and "(timeout 1s)" in probe.detail, probe.detail
    assert probed.sent < len(TRICKLED), "the probe waited for the trickled answer to end"
    assert not gate.healthy and "TimeoutError" in gate.detail, gate
    assert gated and all(c.sent < len(TRICKLED) for c in gated), "the health gate waited for a trickled answer"


def test_a_hanging_app_does_not_delay_another_apps_probes(layout, prober):
    hanging = App(layout, "evil", "drip", trickle=True)
    healthy = App(layout, "good", "web", trickle=False)
    agent, api = prober(layout, [host_release("evil", "drip", probe_timeout=6), host_release("good", "web")])
    try:
        wait_for(lambda: hanging.connections, timeout=30, message="the hanging app was never probed")
        stuck = wait_for(hanging.first_closed, timeout=30, message="the hanging probe never ended")
        # all along the hanging probe (~6 s, its deadline), the healthy app kept its 1 s period
        during = healthy.accepted_between(stuck.accepted, stuck.closed)
        assert stuck.sent < len(TRICKLED)  # the hanging probe ended at its deadline
        assert during >= 3, f"healthy app probed {during} times while another app's probe hung"
        assert hanging.most_open == 1 and healthy.most_open == 1  # never two probes of one app
        wait_for(lambda: api.liveness_of("evil/drip-node-a").get("failing"), timeout=30,
                 message=lambda: f"the hanging app's failure was not reported: {api.patches}")
        assert "TimeoutError" in api.liveness_of("evil/drip-node-a")["lastFailure"]
        assert not api.liveness_of("good/web-node-a").get("failing")
    finally:
        hanging.close()
        healthy.close()


def test_a_namespace_with_many_hanging_apps_holds_only_its_share(layout, prober):
    hanging = [App(layout, "evil", f"drip{i}", trickle=True) for i in range(4)]
    healthy = App(layout, "good", "web", trickle=False)
    objects = [host_release("evil", f"drip{i}", probe_timeout=6) for i in range(4)] + [host_release("good", "web")]
    # a pool of 3: without a per-namespace share, the 4 hanging apps would hold all of it
    prober(layout, objects, probe_workers=3, probes_per_namespace=2)
    try:
        stuck = wait_for(lambda: next((c for app in hanging if (c := app.first_closed())), None), timeout=30,
                         message="no hanging probe ever ended")
        during = healthy.accepted_between(stuck.accepted, stuck.closed)
        assert during >= 3, f"healthy app probed {during} times while evil's probes hung"
        assert max(app.most_open for app in hanging) == 1
        assert most_open_together(hanging) == 2  # the namespace's share, never more
    finally:
        for app in [*hanging, healthy]:
            app.close()
