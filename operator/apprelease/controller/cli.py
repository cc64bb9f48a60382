"""`apprelease operator`: run the Kopf operator. Wiring only.

    apprelease operator [--kubeconfig K] [--namespace NS ... | --all-namespaces] [--liveness URL]
                        [--values-key-secret NS/NAME] [--agent-service-account NS/NAME]
                        [--leader-elect [--leader-elect-namespace NS] [--leader-elect-lease-duration S]]

Without --namespace, all namespaces are served. With --leader-elect the process first waits
to hold the Lease (controller/leader.py), then runs Kopf while renewing it, and exits with 1
if it loses it (the Deployment restarts it as a candidate). Registered on the main parser by
`apprelease.cli` through `register`.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..kubeclient import Config as Configuration


class _QuietWakeups(logging.Filter):
    """Drop Kopf's "Handler 'wake-…' succeeded" lines: one per watch event of every HostRelease
    and Node, they say nothing a reconcile's own log lines do not."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno <= logging.INFO and str(record.msg).startswith("Handler 'wake-"))


def _cmd_operator(args: argparse.Namespace) -> int:
    # Imported here: Kopf and the kubernetes client take a while to import, and every other
    # `apprelease` command would pay for it.
    import kopf

    from ..logs import use_json
    from ..metrics import serve_operator
    from .handlers import OperatorContext, build_registry
    from .kube import KubeApi, client_configuration

    # force=True: importing circus (through the agent's modules) already configured the root
    # logger, so a plain basicConfig would be a no-op and INFO lines would be lost.
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    # Also on Kopf's poster of per-object log lines as Kubernetes Events ('kopf.objects'):
    # without it every watch event cost an Event POST (bench/fleet.py: 1,270 of 2,409 idle
    # requests in 35 s at 500 apps were these Events).
    for handler in [*logging.getLogger().handlers, *logging.getLogger("kopf.objects").handlers]:
        handler.addFilter(_QuietWakeups())
    # Metrics and JSON logs (apprelease.metrics, apprelease.logs): served before any leader
    # election, so a standby replica is scraped and probed too.
    if args.log_json:
        use_json()
    if args.metrics_port:
        serve_operator(args.metrics_address, args.metrics_port)
    from .reconcile import SecretsConfig

    config = client_configuration(args.kubeconfig)
    api = KubeApi.from_configuration(config, pool_size=args.workers + 2)  # + the Event poster and the re-list
    key_ns, _, key_name = args.values_key_secret.partition("/")
    agent_ns, _, agent_sa = args.agent_service_account.partition("/")
    import functools

    secrets = SecretsConfig(values_key=functools.cache(lambda: api.values_key(key_ns, key_name)),
                            agent_service_account=(agent_ns, agent_sa) if agent_sa else None)
    ctx = OperatorContext(config=config, api=api, secrets=secrets, workers=args.workers)
    namespaces = args.namespace or []

    def run_kopf() -> None:
        kopf.run(
            registry=build_registry(ctx),
            standalone=True,  # no Kopf peering: one active replica, chosen by --leader-elect
            clusterwide=not namespaces,
            namespaces=namespaces,
            liveness_endpoint=args.liveness,
        )

    if not args.leader_elect:
        run_kopf()
        return 0
    return _run_as_leader(args, config, run_kopf)


def _run_as_leader(args: argparse.Namespace, config: Configuration, run_kopf: Callable[[], None]) -> int:
    """Wait for the Lease, run Kopf while renewing it, release it when Kopf stops.

    Exit status 1 when the Lease was lost: the process must not go on reconciling, and a
    restart makes it a plain candidate again.
    """

    from .kube import KubeApi
    from .leader import REQUEST_TIMEOUT as LEASE_REQUEST_TIMEOUT
    from .leader import LeaderElector, LeaseConfig, StandbyProbe, default_identity, default_namespace

    lease = LeaseConfig(
        namespace=args.leader_elect_namespace or default_namespace(),
        identity=args.leader_elect_identity or default_identity(),
        lease_duration=args.leader_elect_lease_duration,
        renew_deadline=args.leader_elect_lease_duration * 2 / 3,
        retry_period=args.leader_elect_lease_duration * 2 / 15,
    )
    elector = LeaderElector(KubeApi.from_configuration(config, timeout=LEASE_REQUEST_TIMEOUT), lease)
    # Until Kopf runs (it installs its own handlers), SIGTERM/SIGINT just end the wait.
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    standby = StandbyProbe(args.liveness) if args.liveness else None
    try:
        acquired = elector.acquire(stop)
    finally:
        if standby is not None:
            standby.close()  # before Kopf binds the same address
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not acquired:
        return 0
    renewing = threading.Event()  # set: stop renewing
    lost = threading.Event()

    def step_down() -> None:
        lost.set()
        # Stop Kopf as a SIGTERM would (graceful, with Kopf's own SIGKILL deadline). Not
        # kopf.run(stop_flag=threading.Event()): Kopf waits on such a flag in an executor
        # thread, and its loop's shutdown then waits for that thread until the flag is set,
        # which a signal-initiated stop never does (seen here: the process hung).
        os.kill(os.getpid(), signal.SIGTERM)

    renewer = threading.Thread(target=elector.renew_until, args=(renewing, step_down), name="lease-renewer",
                               daemon=True)
    renewer.start()
    try:
        run_kopf()
    finally:
        renewing.set()
        renewer.join()
        if not lost.is_set():
            elector.release()
    return 1 if lost.is_set() else 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    op = sub.add_parser("operator", help="run the operator (rolls AppReleases out across hosts)")
    op.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then $KUBECONFIG or ~/.kube/config)")
    scope = op.add_mutually_exclusive_group()
    scope.add_argument("--namespace", "-n", action="append", help="serve only this namespace (repeatable)")
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="serve all namespaces (the default)")
    op.add_argument("--liveness", metavar="URL", help="serve a liveness probe, e.g. http://127.0.0.1:8080/healthz")
    op.add_argument("--leader-elect", action="store_true",
                    help="hold the Lease `apprelease-operator` while reconciling; other replicas wait")
    op.add_argument("--leader-elect-namespace",
                    help="namespace of the Lease (default $POD_NAMESPACE, else the pod's, else default)")
    op.add_argument("--leader-elect-identity", help="this candidate's name (default: hostname + random suffix)")
    op.add_argument("--leader-elect-lease-duration", type=float, default=15.0, metavar="SECONDS",
                    help="seconds a standby waits on an unrenewed Lease (renew deadline 2/3, retry 2/15 of it)")
    op.add_argument("--values-key-secret", default="apprelease-system/apprelease-values-key", metavar="NS/NAME",
                    help="Secret holding the per-cluster key of the values digest (made when absent; only the "
                         "operator reads it)")
    op.add_argument("--agent-service-account", default="apprelease-system/apprelease-agent", metavar="NS/NAME",
                    help="the agents' ServiceAccount, granted get on exactly the Secrets and ConfigMaps AppReleases "
                         "reference (a Role per namespace); '' keeps no Roles")
    op.add_argument("--workers", type=_positive_int, default=8,
                    help="AppReleases reconciled at once (never one AppRelease twice at once)")
    op.add_argument("--debug", action="store_true", help="log at DEBUG level")
    op.add_argument("--log-json", action="store_true", help="log one JSON object per line")
    op.add_argument("--metrics-port", type=int, default=0,
                    help="serve Prometheus /metrics, /healthz and /readyz on this port (0: off)")
    op.add_argument("--metrics-address", default="0.0.0.0", help="address of the metrics server")
    op.set_defaults(func=_cmd_operator)
