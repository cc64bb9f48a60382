"""`apprelease agent ...`: the host agent's commands for people and tests.

    apprelease agent reconcile -f hostrelease.yaml [-f secret.yaml] [-f configmap.yaml] --root DIR
    apprelease agent status --root DIR
    apprelease agent remove --app NAME [--namespace NS] --root DIR
    apprelease agent stop --root DIR          stop this root's supervisor daemon and nginx
    apprelease agent run --node NAME --root DIR [--kubeconfig K] [--logs-port P]
                                              the in-cluster agent (agent/cluster.py) until SIGTERM;
                                              --logs-port serves the apps' logs (agent/logserver.py)

Wiring only: flags become a `core.Host`, manifests become typed resources, results print.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import shutil
import signal
import sys
import threading
from pathlib import Path

import yaml

from .. import metrics
from ..api.manifests import ManifestError, load_documents, parse_resource
from ..api.models import HostRelease
from ..logs import JsonFormatter
from ..host import core, state, systemd
from ..host.executor import HostExecutor, LocalExecutor
from ..host.systemd import Systemd
from ..host.layout import HostLayout, parse_watcher_name
from ..host.proxy.nginx import Nginx
from ..host.supervisors import make_supervisor
from . import cluster, kube, logserver

DEFAULT_ROOT = "/var/lib/apprelease"


def add_host_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", default=DEFAULT_ROOT, help=f"agent root directory (default {DEFAULT_ROOT})")
    parser.add_argument("--supervisor", choices=("circus", "supervisord"), default="circus")
    parser.add_argument("--listen-address", default="0.0.0.0", help="address nginx listens on")
    parser.add_argument("--proxy-user", default="www-data", help="user (and group) of nginx's workers")
    parser.add_argument("--catch-all-port", type=int, action="append", default=[],
                        help="ports where unknown Host headers get 404 instead of the first app (e.g. 80)")
    parser.add_argument("--no-uv", action="store_true", help="build venvs with python -m venv + pip")
    parser.add_argument("--allow-existing-user", action="append", default=[], metavar="NAMESPACE:USER",
                        type=_namespace_user,
                        help="let apps of NAMESPACE run as USER although apprelease did not create it (repeatable)")
    parser.add_argument("--host-namespaces", action="store_true",
                        help="run host commands through nsenter -t 1 (the agent in a DaemonSet pod); on a "
                             "host with systemd the supervisor and nginx then run as systemd units")
    parser.add_argument("--host-pid", type=int, default=1, metavar="PID",
                        help="with --host-namespaces: the host's init (default 1; tests give a test host's systemd)")


def make_host(args: argparse.Namespace) -> core.Host:
    layout = HostLayout(Path(args.root).resolve())
    executor = HostExecutor(args.host_pid) if args.host_namespaces else LocalExecutor()
    # Only in the host's namespaces: a standalone --root agent keeps its detached daemons.
    services = Systemd(executor) if args.host_namespaces and systemd.booted(executor) else None
    uv = None if args.no_uv else shutil.which("uv") or _venv_uv()
    return core.Host(
        layout=layout,
        executor=executor,
        supervisor=make_supervisor(args.supervisor, layout, executor, services=services),
        nginx=Nginx(layout, executor, listen_address=args.listen_address, worker_user=args.proxy_user,
                    default_http_ports=tuple(args.catch_all_port), services=services),
        uv=uv,
        proxy_group=args.proxy_user,
        recorder=metrics.AgentRecorder(),
        allowed_users=allowed_users(args.allow_existing_user),
        services=services,
    )


def _namespace_user(value: str) -> tuple[str, str]:
    namespace, sep, user = value.partition(":")
    if not sep or not namespace or not user:
        raise argparse.ArgumentTypeError(f"{value!r}: expected NAMESPACE:USER, e.g. shop:legacy-app")
    return namespace, user


def allowed_users(pairs: list[tuple[str, str]]) -> dict[str, frozenset[str]]:
    out: dict[str, set[str]] = {}
    for namespace, user in pairs:
        out.setdefault(namespace, set()).add(user)
    return {namespace: frozenset(users) for namespace, users in out.items()}


def _venv_uv() -> str | None:
    candidate = Path(sys.executable).with_name("uv")
    return str(candidate) if candidate.exists() else None


def tls_from_secrets(docs: list[dict]) -> core.TLSSource:
    """A TLS source reading kubernetes.io/tls Secret documents given on the command line."""
    secrets = {
        ((d.get("metadata") or {}).get("namespace", "default"), d["metadata"]["name"]): d
        for d in docs if d.get("kind") == "Secret"
    }

    def lookup(namespace: str, name: str) -> tuple[str, str]:
        data = secrets[(namespace, name)].get("data") or {}
        return base64.b64decode(data["tls.crt"]).decode(), base64.b64decode(data["tls.key"]).decode()

    return lookup


def values_from_documents(docs: list[dict]) -> core.ValueSource:
    """A value source reading the Secret and ConfigMap documents given on the command line
    (Secret `data` is base64, `stringData` plain text, as kubectl accepts them)."""
    objects: dict[tuple[str, str, str], dict[str, str]] = {}
    for d in docs:
        kind, meta = d.get("kind"), d.get("metadata") or {}
        if kind not in ("Secret", "ConfigMap") or not meta.get("name"):
            continue
        if kind == "Secret":
            data = {k: base64.b64decode(v).decode("utf-8", "surrogateescape") for k, v in (d.get("data") or {}).items()}
            data.update({k: str(v) for k, v in (d.get("stringData") or {}).items()})
        else:
            data = {k: str(v) for k, v in (d.get("data") or {}).items()}
        objects[(kind, meta.get("namespace", "default"), meta["name"])] = data

    return lambda kind, namespace, name: objects.get((kind, namespace, name))


def _cmd_reconcile(args: argparse.Namespace) -> int:
    docs = []
    for file in args.file:
        docs += load_documents(Path(file).read_text() if file != "-" else sys.stdin.read())
    try:
        releases = [parse_resource(d) for d in docs if d.get("kind") == "HostRelease"]
    except ManifestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not releases:
        print("error: no HostRelease in the given files", file=sys.stderr)
        return 2
    host = make_host(args)
    host.start()
    failed = False
    for release in releases:
        assert isinstance(release, HostRelease)
        try:
            result = core.reconcile(host, release, tls_from_secrets(docs), values=values_from_documents(docs))
        except core.StepFailed as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        failed |= result.status.phase != "Ready"
        out = {
            "hostRelease": f"{release.metadata.namespace}/{release.metadata.name}",
            "plan": [str(a) for a in result.plan.actions],
            "steps": [{"action": s.action, "seconds": round(s.seconds, 3)} for s in result.steps],
            "status": result.status.wire(),
        }
        print(yaml.safe_dump(out, sort_keys=False) if args.output == "yaml" else json.dumps(out))
    return 1 if failed else 0


def _cmd_status(args: argparse.Namespace) -> int:
    host = make_host(args)
    apps = sorted(p.name for p in host.layout.apps.iterdir()) if host.layout.apps.exists() else []
    running: dict[str, list[str]] = {}
    for name in host.supervisor.watchers() if host.supervisor.daemon_pid() else {}:
        parsed = parse_watcher_name(name)
        if parsed:
            running.setdefault(parsed[0], []).append(parsed[1])
    report = []
    for key in apps:
        paths = host.layout.app(key)
        app_state = state.load(paths.state_file)
        report.append({
            "app": key,
            "serving": core.live_revision(paths),
            "current": Path(core._link_target(paths.current) or "").name or None,
            "running": sorted(running.get(key, [])),
            "releases": [r.build_id for r in core.builder.list_releases(paths)],
            "failed": app_state.failed.wire() if app_state.failed else None,
            "nginxSite": host.nginx.current_site(key) is not None,
        })
    print(yaml.safe_dump(report, sort_keys=False) if args.output == "yaml" else json.dumps(report))
    return 0


def _cmd_remove(args: argparse.Namespace) -> int:
    host = make_host(args)
    host.start()
    done = core.remove(host, args.namespace, args.app)
    print(str(done))
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    host = make_host(args)
    host.nginx.stop()
    host.supervisor.stop_daemon()
    return 0


def configure_logging(log_json: bool) -> None:
    """INFO to stderr, plain or JSON lines. force=True: importing circus already called
    logging.basicConfig(), which would make a second plain call a no-op (WARNING and up only)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_json else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s [%(threadName)s]: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)


def _cmd_run(args: argparse.Namespace) -> int:
    configure_logging(args.log_json)
    if not args.node:
        print("error: --node (or NODE_NAME) is required", file=sys.stderr)
        return 2
    configuration = kube.load_configuration(args.kubeconfig)
    settings = cluster.Settings(node=args.node, resync_seconds=args.resync_seconds,
                                watch_timeout_seconds=args.watch_timeout_seconds)
    agent = cluster.ClusterAgent(make_host(args), settings, lambda: kube.HostReleaseAPI(configuration))
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        # Only flag it: the main loop stops the worker after its current reconcile.
        logging.getLogger(__name__).info("got %s", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # The probes' port serves /metrics too; --metrics-port adds a port of its own (e.g. one
    # that a NetworkPolicy opens to Prometheus only).
    logs = None
    if args.logs_port is not None:
        advertise = args.logs_advertise_address or os.environ.get("HOST_IP") or args.logs_address
        if advertise in ("0.0.0.0", "::"):
            print("error: --logs-advertise-address (or HOST_IP) is required when --logs-address is a wildcard",
                  file=sys.stderr)
            return 2
        review_api = kube.HostReleaseAPI(configuration)
        logs = logserver.LogServer(agent.host.layout, args.node, args.logs_address, args.logs_port, advertise,
                                   review_api.review, agent.serves_app, agent.host.layout.root / "agent" / "tls")
        settings.log_endpoint = logs.start()
    checks = {"healthz": agent.health.live, "readyz": agent.health.ready}
    endpoints = [metrics.EndpointServer(address, port, metrics.AGENT, checks).start()
                 for address, port in ((args.health_address, args.health_port), (args.metrics_address, args.metrics_port))
                 if port]
    try:
        agent.run(stop)
    except core.StepFailed as exc:  # the host cannot be run (its root, its nginx): one line says why
        logging.getLogger(__name__).error("cannot run this host: %s", exc)
        return 1
    finally:
        for endpoint in endpoints:
            endpoint.stop()
        if logs is not None:
            logs.stop()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    agent = sub.add_parser("agent", help="the host agent")
    verbs = agent.add_subparsers(dest="verb", required=True)

    rec = verbs.add_parser("reconcile", help="move this host to the HostRelease(s) in the given files")
    rec.add_argument("-f", "--file", action="append", required=True,
                     help="YAML with HostRelease documents (and the Secrets and ConfigMaps they name: TLS, env)")
    rec.add_argument("-o", "--output", choices=("yaml", "json"), default="yaml")
    add_host_options(rec)
    rec.set_defaults(func=_cmd_reconcile)

    st = verbs.add_parser("status", help="what this host serves, runs and keeps on disk")
    st.add_argument("-o", "--output", choices=("yaml", "json"), default="yaml")
    add_host_options(st)
    st.set_defaults(func=_cmd_status)

    rm = verbs.add_parser("remove", help="stop an app on this host and delete its files")
    rm.add_argument("--app", required=True)
    rm.add_argument("--namespace", default="default")
    add_host_options(rm)
    rm.set_defaults(func=_cmd_remove)

    stop = verbs.add_parser("stop", help="stop this root's supervisor daemon (and its apps) and nginx")
    add_host_options(stop)
    stop.set_defaults(func=_cmd_stop)

    run = verbs.add_parser("run", help="the in-cluster agent: converge this host on its node's HostReleases")
    run.add_argument("--node", default=os.environ.get("NODE_NAME"),
                     help="this host's Node name (default $NODE_NAME, from the downward API)")
    run.add_argument("--kubeconfig", help="kubeconfig file (default $KUBECONFIG, else the pod's service account)")
    run.add_argument("--resync-seconds", type=float, default=30.0,
                     help="reconcile every HostRelease this often, repairing drift on the host (default 30)")
    run.add_argument("--watch-timeout-seconds", type=int, default=300,
                     help="server-side timeout of one watch request; it is renewed after (default 300)")
    run.add_argument("--health-port", type=int, default=0, help="serve /healthz and /readyz here (0: off)")
    run.add_argument("--health-address", default="0.0.0.0", help="address of the probe server")
    run.add_argument("--metrics-port", type=int, default=0,
                     help="serve Prometheus /metrics (and the probes) on this port as well (0: off; "
                          "/metrics is always on --health-port)")
    run.add_argument("--metrics-address", default="0.0.0.0", help="address of the metrics server")
    run.add_argument("--log-json", action="store_true", help="log one JSON object per line")
    run.add_argument("--logs-port", type=int, default=None,
                     help="serve the apps' logs over HTTPS on this port for `kubectl apprelease logs` "
                          "(TokenReview + SubjectAccessReview on hostreleases/log; 0: any free port; default off)")
    run.add_argument("--logs-address", default="0.0.0.0", help="address the log endpoint binds")
    run.add_argument("--logs-advertise-address",
                     help="address published in HostRelease status for clients (default $HOST_IP, else --logs-address)")
    add_host_options(run)
    run.set_defaults(func=_cmd_run)

