"""`apprelease operator`: run the Kopf operator. Wiring only.

    apprelease operator [--kubeconfig K] [--namespace NS ... | --all-namespaces] [--liveness URL]

Without --namespace, all namespaces are served. Registered on the main parser by
`apprelease.cli` through `register`.
"""

from __future__ import annotations

import argparse
import logging


class _QuietWakeups(logging.Filter):
    """Drop Kopf's "Handler 'wake-…' succeeded" lines: one per watch event of every HostRelease
    and Node, they say nothing a reconcile's own log lines do not."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno <= logging.INFO and str(record.msg).startswith("Handler 'wake-"))


def _cmd_operator(args: argparse.Namespace) -> int:
    # Imported here: Kopf and the kubernetes client take a while to import, and every other
    # `apprelease` command would pay for it.
    import kopf

    from .handlers import OperatorContext, build_registry
    from .kube import KubeApi, client_configuration

    # force=True: importing circus (through the agent's modules) already configured the root
    # logger, so a plain basicConfig would be a no-op and INFO lines would be lost.
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(_QuietWakeups())
    config = client_configuration(args.kubeconfig)
    ctx = OperatorContext(config=config, api=KubeApi.from_configuration(config))
    namespaces = args.namespace or []
    kopf.run(
        registry=build_registry(ctx),
        standalone=True,  # no peering: a single replica (leader election comes later)
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=args.liveness,
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    op = sub.add_parser("operator", help="run the operator (rolls AppReleases out across hosts)")
    op.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then $KUBECONFIG or ~/.kube/config)")
    scope = op.add_mutually_exclusive_group()
    scope.add_argument("--namespace", "-n", action="append", help="serve only this namespace (repeatable)")
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="serve all namespaces (the default)")
    op.add_argument("--liveness", metavar="URL", help="serve a liveness probe, e.g. http://127.0.0.1:8080/healthz")
    op.add_argument("--debug", action="store_true", help="log at DEBUG level")
    op.set_defaults(func=_cmd_operator)
