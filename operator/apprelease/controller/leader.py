"""Leader election for `apprelease operator --leader-elect`: one replica reconciles, the others wait.

Called by `controller.cli` only: before Kopf starts it calls `LeaderElector.acquire` (blocking,
with a `StandbyProbe` answering the liveness URL meanwhile, so a waiting replica is alive and
not restarted), then runs `renew_until` in a thread beside Kopf, and `release` after Kopf stopped.

The lock is a Lease (coordination.k8s.io/v1, default `apprelease-operator` in the operator's
namespace), with client-go's rules: the holder renews it every `retry_period`; a candidate
takes it over once the record has not changed for `lease_duration` *by the candidate's own
clock* (hosts' clocks are never compared); a holder that cannot renew within
`renew_deadline` steps down. Every write is a replace carrying the resourceVersion read just
before, so two candidates racing for an expired lease cannot both win (one gets 409).

Why not `kubernetes.leaderelection`: its LeaseLock talks through the global default client
configuration (not the operator's --kubeconfig), logs at INFO on every retry of every
follower, and never releases the lease on a graceful stop, so each rolling update of the
Deployment would leave the operator headless for a whole lease duration.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..kubeclient import ApiError as ApiException
from .kube import KubeApi

log = logging.getLogger(__name__)

LEASE_NAME = "apprelease-operator"
SA_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
REQUEST_TIMEOUT = 10.0  # seconds; below renew_deadline, so a hung request cannot outlive the lease


def default_namespace() -> str:
    """$POD_NAMESPACE (downward API), else the pod's ServiceAccount namespace, else `default`."""
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    if SA_NAMESPACE_FILE.exists():
        return SA_NAMESPACE_FILE.read_text().strip()
    return "default"


def default_identity() -> str:
    """The pod name (the hostname in a pod) plus a random suffix: a restarted process is a new candidate."""
    return f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class LeaseConfig:
    namespace: str
    identity: str
    name: str = LEASE_NAME
    lease_duration: float = 15.0  # seconds a follower waits on an unchanged record
    renew_deadline: float = 10.0  # seconds a leader keeps trying to renew before it steps down
    retry_period: float = 2.0  # seconds between attempts

    def __post_init__(self) -> None:
        if not self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError("leader election needs retry_period < renew_deadline < lease_duration")


@dataclass(frozen=True)
class Observed:
    """The part of a Lease that changes on every renewal; a follower watches it stand still."""

    holder: str
    renew_time: str
    transitions: int


class Decision(Enum):
    CREATE = "create"  # no Lease yet
    RENEW = "renew"  # we hold it
    TAKE = "take"  # free (released) or expired
    WAIT = "wait"  # someone else holds it and renews


def decide(observed: Observed | None, unchanged_for: float, identity: str, lease_duration: float) -> Decision:
    """What a candidate does with the Lease it just read (pure).

    `unchanged_for` is how long, by our own clock, the record has looked exactly like this.
    """
    if observed is None:
        return Decision.CREATE
    if observed.holder == identity:
        return Decision.RENEW
    if not observed.holder or unchanged_for >= lease_duration:
        return Decision.TAKE
    return Decision.WAIT


def micro_time(moment: datetime) -> str:
    """A MicroTime as the apiserver wants it (RFC 3339, always six fraction digits, UTC)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """One candidate for the Lease. Not thread-safe: one thread at a time calls it."""

    def __init__(self, api: KubeApi, config: LeaseConfig,  # KubeApi with timeout REQUEST_TIMEOUT
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.api = api
        self.config = config
        self.clock = clock
        self._observed: Observed | None = None
        self._observed_at = 0.0
        self._acquire_time: str | None = None  # set while we hold the Lease

    @property
    def is_leader(self) -> bool:
        return self._acquire_time is not None

    def try_acquire_or_renew(self) -> bool:
        """One attempt: True if we hold the Lease afterwards. API failures count as False (logged)."""
        cfg = self.config
        try:
            lease = self.api.read_lease(cfg.namespace, cfg.name)
        except ApiException as exc:
            if exc.status != 404:
                return self._failed("read", exc)
            lease = None
        observed = None if lease is None else Observed(
            holder=(lease.get("spec") or {}).get("holderIdentity") or "",
            renew_time=str((lease.get("spec") or {}).get("renewTime")),
            transitions=int((lease.get("spec") or {}).get("leaseTransitions") or 0),
        )
        now = self.clock()
        if observed != self._observed:
            self._observed, self._observed_at = observed, now
        decision = decide(observed, now - self._observed_at, cfg.identity, cfg.lease_duration)
        if decision is Decision.WAIT:
            self._acquire_time = None
            return False
        stamp = micro_time(datetime.now(UTC))
        if decision is not Decision.RENEW or self._acquire_time is None:
            self._acquire_time = stamp
        transitions = 0 if observed is None else observed.transitions + (decision is Decision.TAKE)
        spec = {
            "holderIdentity": cfg.identity,
            "leaseDurationSeconds": int(cfg.lease_duration),
            "acquireTime": self._acquire_time,
            "renewTime": stamp,
            "leaseTransitions": transitions,
        }
        try:
            if lease is None:
                self.api.create_lease(cfg.namespace, {"metadata": {"name": cfg.name}, "spec": spec})
            else:
                body = {"metadata": {"name": cfg.name, "resourceVersion": lease["metadata"]["resourceVersion"]},
                        "spec": spec}
                self.api.replace_lease(cfg.namespace, cfg.name, body)
        except ApiException as exc:
            self._acquire_time = None
            if exc.status == 409:  # another candidate wrote first: it is the leader now
                return False
            return self._failed("write", exc)
        if decision is not Decision.RENEW:
            log.info("acquired Lease %s/%s as %s (%s)", cfg.namespace, cfg.name, cfg.identity,
                     "new" if observed is None else f"previous holder {observed.holder or 'none (released)'}")
        return True

    def _failed(self, what: str, exc: ApiException) -> bool:
        # 403 is a deployment error (RBAC), worth an ERROR; the rest is the apiserver being away.
        level = logging.ERROR if exc.status in (401, 403) else logging.WARNING
        log.log(level, "leader election: %s of Lease %s/%s failed: HTTP %s %s", what, self.config.namespace,
                self.config.name, exc.status, exc.reason)
        return False

    def acquire(self, stop: threading.Event) -> bool:
        """Block until we hold the Lease (True) or `stop` is set (False)."""
        cfg = self.config
        log.info("waiting to lead: Lease %s/%s, identity %s", cfg.namespace, cfg.name, cfg.identity)
        waiting_on = None
        while not stop.is_set():
            if self.try_acquire_or_renew():
                return True
            holder = self._observed.holder if self._observed else None
            if holder != waiting_on:  # one line per leader, not one per retry
                log.info("standing by: Lease %s/%s is held by %s", cfg.namespace, cfg.name, holder)
                waiting_on = holder
            stop.wait(cfg.retry_period)
        return False

    def renew_until(self, stop: threading.Event, on_lost: Callable[[], None]) -> None:
        """Renew every retry period until `stop` is set; call `on_lost` and return if renewal
        has failed for `renew_deadline`."""
        cfg = self.config
        last_renewed = self.clock()
        while not stop.wait(cfg.retry_period):
            if self.try_acquire_or_renew():
                last_renewed = self.clock()
            elif not self.is_leader or self.clock() - last_renewed >= cfg.renew_deadline:
                log.error("lost the Lease %s/%s (held by %s now): stepping down", cfg.namespace, cfg.name,
                          self._observed.holder if self._observed else "nobody")
                self._acquire_time = None
                on_lost()
                return

    def release(self) -> None:
        """Give the Lease up at once (graceful stop): the next candidate need not wait it out."""
        if not self.is_leader:
            return
        cfg = self.config
        try:
            lease = self.api.read_lease(cfg.namespace, cfg.name)
            spec = lease.get("spec") or {}
            if spec.get("holderIdentity") != cfg.identity:
                return
            body = {
                "metadata": {"name": cfg.name, "resourceVersion": lease["metadata"]["resourceVersion"]},
                "spec": {"holderIdentity": None, "leaseDurationSeconds": 1,
                         "renewTime": micro_time(datetime.now(UTC)),
                         "leaseTransitions": int(spec.get("leaseTransitions") or 0)},
            }
            self.api.replace_lease(cfg.namespace, cfg.name, body)
        except ApiException as exc:
            # Not fatal: the Lease then expires on its own after lease_duration.
            self._failed("release", exc)
            return
        finally:
            self._acquire_time = None
        log.info("released Lease %s/%s", cfg.namespace, cfg.name)


class StandbyProbe:
    """Answers the liveness URL with 200 while the replica waits to lead (Kopf's own endpoint
    only starts with Kopf). Closed before Kopf binds the same address."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or parts.port is None:
            raise ValueError(f"liveness URL must be http://HOST:PORT/PATH, not {url!r}")

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                body = b'{"standby": true}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - probes every few seconds
                return

        self.server = ThreadingHTTPServer((parts.hostname or "0.0.0.0", parts.port), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, name="standby-probe", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join()
