"""`kubectl apprelease ...` (the `kubectl-apprelease` console script): wiring only.

    kubectl apprelease status NAME [-w] [--timeout S]     per-host table and conditions; -w follows a rollout
    kubectl apprelease history NAME                        revisions, when served, where still on disk
    kubectl apprelease undo NAME [--to-revision R] [--force]
    kubectl apprelease diff -f FILE                        what applying FILE does on each host
    kubectl apprelease logs NAME [--host H] [--revision R] [--process release|worker-0] [-f] [--tail N]
    kubectl apprelease restart|pause|resume NAME

Flags as kubectl's: --kubeconfig, --context, -n/--namespace (default: the context's), and
-o json|yaml where a command prints data. Exit codes: 0 success (for `status -w` a complete
rollout, for `diff` no change), 1 a failed, paused or timed-out rollout, a refused undo, or
(`diff`) changes to show, 2 bad usage or an error talking to the cluster.
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import urllib3
import yaml
from kubernetes.client.exceptions import ApiException

from ..api.manifests import ManifestError, load_documents, parse_resource
from ..api.models import GROUP, AppRelease
from . import logclient, views
from .kube import Connection, NotFound, PluginAPI, connect, describe

RESOURCE = f"apprelease.{GROUP}"
EXIT_OK, EXIT_FAILED, EXIT_ERROR = 0, 1, 2


def now() -> datetime:
    return datetime.now(UTC)


def emit(data: Any, output: str | None) -> None:
    if output == "json":
        print(json.dumps(data, indent=2))
    else:
        print(yaml.safe_dump(data, sort_keys=False), end="")


class Context:
    """What every command gets: the connection, the API, and where to print."""

    def __init__(self, args: argparse.Namespace):
        self.connection: Connection = connect(args.kubeconfig, args.context, args.namespace)
        self.api = PluginAPI(self.connection)
        self.args = args


# ----- status


def cmd_status(ctx: Context) -> int:
    args = ctx.args
    app = ctx.api.get_app_release(args.name)
    if not args.watch:
        hrs = ctx.api.host_releases(args.name)
        if args.output:
            emit(views.status_document(app, hrs), args.output)
            return EXIT_OK
        print(views.status_summary(app))
        print()
        print(views.status_table(views.host_rows(hrs), now()))
        print()
        print(views.conditions_table(app, now()))
        return EXIT_OK
    return watch_rollout(ctx, app, args.timeout)


def watch_rollout(ctx: Context, app: dict, timeout: float) -> int:
    """Follow the rollout until the verdict says it is over (or `timeout` passes): one line per change."""
    started = time.monotonic()
    last_line = ""

    def show(app: dict) -> views.Verdict:
        nonlocal last_line
        line = views.progress_line(app, ctx.api.host_releases(ctx.args.name))
        if line != last_line:
            print(f"[{time.monotonic() - started:6.1f}s] {line}", flush=True)
            last_line = line
        return views.rollout_verdict(app)

    verdict = show(app)
    version = app["metadata"]["resourceVersion"]
    while not verdict.done:
        left = timeout - (time.monotonic() - started) if timeout else 60.0
        if left <= 0:
            print(f"error: timed out after {timeout:g}s: {verdict.message}", file=sys.stderr)
            return EXIT_FAILED
        try:
            for event in ctx.api.watch_app_release(ctx.args.name, version, max(1, min(60, int(left)))):
                version = event["metadata"]["resourceVersion"]
                verdict = show(event)
                if verdict.done:
                    break
        except ApiException as exc:
            if exc.status != 410:  # 410: our resourceVersion expired; read afresh below
                raise
        if not verdict.done:  # the watch ended (timeout, 410): read the object afresh
            app = ctx.api.get_app_release(ctx.args.name)
            version = app["metadata"]["resourceVersion"]
            verdict = show(app)
    stream = sys.stdout if verdict.exit_code == 0 else sys.stderr
    print(verdict.message, file=stream)
    return verdict.exit_code


# ----- history


def cmd_history(ctx: Context) -> int:
    app = ctx.api.get_app_release(ctx.args.name)
    rows = views.history_rows(app, ctx.api.host_releases(ctx.args.name))
    if ctx.args.output:
        emit([r.wire() for r in rows], ctx.args.output)
    else:
        print(views.history_table(rows, now()))
    return EXIT_OK


# ----- undo


def cmd_undo(ctx: Context) -> int:
    args = ctx.args
    app = ctx.api.get_app_release(args.name)
    try:
        digest = views.values_digest(ctx.api.host_releases(args.name))
        target = views.undo_target(app, args.to_revision, digest)
    except views.UndoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    tracking = views.argocd_tracking(app)
    if tracking is not None and not args.force:
        application = ctx.api.argocd_application(tracking.application)
        print(views.argocd_advice(app, tracking, target, application), file=sys.stderr)
        return EXIT_FAILED
    if views.desired_revision(app, digest) == target.revision:
        print(f"{RESOURCE}/{args.name} skipped rollback (the spec already is {target.version}, {target.revision})")
        return EXIT_OK
    ctx.api.patch_app_release(args.name, views.undo_patch(app, target.template or {}), json_patch=True)
    print(f"{RESOURCE}/{args.name} rolled back to {target.version} ({target.revision})")
    return EXIT_OK


# ----- restart, pause, resume


def cmd_restart(ctx: Context) -> int:
    app = ctx.api.get_app_release(ctx.args.name)
    if (app.get("spec") or {}).get("paused"):
        print(f"error: can't restart paused {RESOURCE} {ctx.args.name} "
              f"(run `kubectl apprelease resume {ctx.args.name}` first)", file=sys.stderr)
        return EXIT_FAILED
    stamp = now().isoformat(timespec="seconds").replace("+00:00", "Z")
    ctx.api.patch_app_release(ctx.args.name, {"spec": {"restartedAt": stamp}})
    print(f"{RESOURCE}/{ctx.args.name} restarted")
    return EXIT_OK


def set_paused(paused: bool) -> Callable[[Context], int]:
    def command(ctx: Context) -> int:
        app = ctx.api.get_app_release(ctx.args.name)
        word = "paused" if paused else "resumed"
        if bool((app.get("spec") or {}).get("paused")) == paused:
            print(f"error: {RESOURCE} {ctx.args.name} is {'already' if paused else 'not'} paused", file=sys.stderr)
            return EXIT_FAILED
        ctx.api.patch_app_release(ctx.args.name, {"spec": {"paused": paused}})
        print(f"{RESOURCE}/{ctx.args.name} {word}")
        return EXIT_OK

    return command


# ----- diff


def cmd_diff(ctx: Context) -> int:
    args = ctx.args
    text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
    try:
        docs = [d for d in load_documents(text) if d.get("kind") == "AppRelease"]
        for doc in docs:  # the object's namespace, else -n / the context's, as kubectl apply does
            doc.setdefault("metadata", {}).setdefault("namespace", ctx.connection.namespace)
        apps = [parse_resource(d) for d in docs]
    except ManifestError as exc:
        print(f"error: {args.file}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if not apps:
        print(f"error: {args.file} holds no AppRelease", file=sys.stderr)
        return EXIT_ERROR
    report, changes = [], False
    for new in apps:
        assert isinstance(new, AppRelease)
        api = ctx.api
        if new.metadata.namespace != api.namespace:
            api = PluginAPI(Connection(ctx.connection.configuration, new.metadata.namespace))
        hrs = api.host_releases(new.metadata.name)
        try:
            nodes = api.node_names(new.spec.hosts.node_selector)
        except ApiException as exc:
            if exc.status != 403:
                raise
            nodes = sorted(views.node_of(hr) for hr in hrs)
            print(f"warning: may not list Nodes ({describe(exc)}); assuming the hosts stay those that have the app",
                  file=sys.stderr)
        rows = views.diff_rows(new, nodes, hrs)
        changes |= any(r.changes for r in rows) or api.find_app_release(new.metadata.name) is None
        report.append((new, rows))
    if args.output:
        emit([{"name": n.metadata.name, "namespace": n.metadata.namespace, "hosts": [r.wire() for r in rows]}
              for n, rows in report], args.output)
    else:
        for new, rows in report:
            print(f"AppRelease {new.metadata.namespace}/{new.metadata.name}:")
            print(views.diff_table(rows))
    return EXIT_FAILED if changes else EXIT_OK


# ----- logs


def cmd_logs(ctx: Context) -> int:
    args = ctx.args
    ctx.api.get_app_release(args.name)  # a clear "not found" for a wrong name
    hrs = ctx.api.host_releases(args.name)
    if args.host:
        hrs = [hr for hr in hrs if views.node_of(hr) == args.host]
        if not hrs:
            print(f"error: {args.name} has no host {args.host}", file=sys.stderr)
            return EXIT_ERROR
    token = ctx.connection.bearer_token()
    if not token:
        print("error: logs are read with your bearer token, and this kubeconfig's user has none "
              "(a client certificate cannot be forwarded to the agents)", file=sys.stderr)
        return EXIT_ERROR
    targets = []
    for hr in hrs:
        endpoint = views.host_status(hr).logs
        if endpoint is None:
            print(f"warning: {views.node_of(hr)}: its agent publishes no log endpoint", file=sys.stderr)
            continue
        targets.append(logclient.Target(node=views.node_of(hr), url=endpoint.url, cert_sha256=endpoint.cert_sha256))
    query = logclient.Query(namespace=ctx.api.namespace, app=args.name, revision=args.revision, tail=args.tail,
                            follow=args.follow, process=args.process)
    prefix = args.prefix or len(targets) > 1
    lines: queue.Queue[tuple[str, str | None, str | None]] = queue.Queue()

    def read(target: logclient.Target) -> None:
        try:
            for line in logclient.read_lines(target, token, query):
                lines.put((target.node, line, None))
        except logclient.LogError as exc:
            lines.put((target.node, None, str(exc)))
        finally:
            lines.put((target.node, None, None))

    # One reader per host (-f follows them all at once); lines print as they come.
    for target in targets:
        threading.Thread(target=read, args=(target,), daemon=True, name=f"logs {target.node}").start()
    open_readers, failed = len(targets), False
    try:
        while open_readers:
            node, line, error = lines.get()
            if error is not None:
                print(f"error: {node}: {error}", file=sys.stderr)
                failed = True
            elif line is None:
                open_readers -= 1
            else:
                print(f"[{node}] {line}" if prefix else line, flush=True)
    except KeyboardInterrupt:
        return EXIT_OK
    return EXIT_FAILED if failed or not targets else EXIT_OK


# ----- parser


def add_common(parser: argparse.ArgumentParser, suppress: bool) -> None:
    default = argparse.SUPPRESS if suppress else None
    parser.add_argument("--kubeconfig", default=default, help="kubeconfig file (default $KUBECONFIG, ~/.kube/config)")
    parser.add_argument("--context", default=default, help="kubeconfig context")
    parser.add_argument("-n", "--namespace", default=default, help="namespace (default: the context's)")


def add_output(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", choices=("json", "yaml"), help="print data as JSON or YAML")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kubectl apprelease", description="Rollout verbs for AppReleases.")
    add_common(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", required=True)

    def verb(name: str, func: Callable[[Context], int], help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        add_common(p, suppress=True)  # flags before or after the verb, as kubectl takes them
        p.set_defaults(func=func)
        return p

    status = verb("status", cmd_status, "hosts and conditions; -w follows a rollout until it completes or fails")
    status.add_argument("name")
    status.add_argument("-w", "--watch", action="store_true",
                        help="follow the rollout: exit 0 when complete, 1 on Degraded, a passed deadline or pause")
    status.add_argument("--timeout", type=float, default=0, help="with -w: give up (exit 1) after this many seconds")
    add_output(status)

    history = verb("history", cmd_history, "revisions: when served, on which hosts still on disk")
    history.add_argument("name")
    add_output(history)

    undo = verb("undo", cmd_undo, "apply the template of an earlier revision (default: the previous one)")
    undo.add_argument("name")
    undo.add_argument("--to-revision", help="a revision (or a unique prefix of one) or a version from `history`")
    undo.add_argument("--force", action="store_true", help="undo even when Argo CD manages the AppRelease")

    diff = verb("diff", cmd_diff, "what applying FILE would do on each host")
    diff.add_argument("-f", "--filename", dest="file", required=True, help="AppRelease manifest(s); - for stdin")
    add_output(diff)

    logs = verb("logs", cmd_logs, "the app's logs from its hosts (through each host's agent)")
    logs.add_argument("name")
    logs.add_argument("--host", help="one host (Node name)")
    logs.add_argument("--revision", help="a revision (default: the one each host serves)")
    logs.add_argument("--process", help="release (the release command's output) or a process type replica such as "
                                        "worker-0 (default: the web server)")
    logs.add_argument("-f", "--follow", action="store_true", help="keep streaming new lines")
    logs.add_argument("--tail", type=int, default=-1, help="lines of recent log to show (default all; -1: all)")
    logs.add_argument("--prefix", action="store_true", help="prefix each line with its host (always with several)")

    for name, func, help in (("restart", cmd_restart, "start new workers of the same build on every host"),
                             ("pause", set_paused(True), "stop moving hosts to new revisions"),
                             ("resume", set_paused(False), "let a paused rollout go on")):
        verb(name, func, help).add_argument("name")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(Context(args))
    except NotFound as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except ApiException as exc:
        print(f"error: {describe(exc)}", file=sys.stderr)
        return EXIT_ERROR
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        print(f"error: cannot reach the cluster: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
