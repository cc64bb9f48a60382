"""Manifests for tests: the example AppRelease and a table of bad variants of it.

The same table is checked against pydantic (tests/unit) and the real apiserver (tests/e2e):
both must reject each case with a message that names the field.
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = yaml.safe_load((ROOT / "manifests/examples/webxample.yaml").read_text())
DELETE = object()


def with_change(path: str, value: object) -> dict:
    """The example with the value at a dotted path replaced (or removed, with DELETE)."""
    doc = copy.deepcopy(EXAMPLE)
    node = doc
    keys = path.split(".")
    for key in keys[:-1]:
        node = node[int(key)] if key.isdigit() else node.setdefault(key, {})
    last = keys[-1]
    if value is DELETE:
        del node[last]
    elif last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value
    return doc


# (id, field path in the manifest, bad value, the field named in the error, words of the message)
BAD = [
    ("root-user", "spec.user", "root", "spec.user", "never run as root"),
    ("user-uppercase", "spec.user", "Web", "spec.user", "POSIX user name"),
    ("server-name-semicolon", "spec.proxy.serverNames", ["a.com;evil"], "spec.proxy.serverNames[0]", "RFC 1123"),
    ("server-name-space", "spec.proxy.serverNames", ["a.com b.com"], "spec.proxy.serverNames[0]", "RFC 1123"),
    ("server-name-brace", "spec.proxy.serverNames", ["a{b"], "spec.proxy.serverNames[0]", "RFC 1123"),
    ("no-server-names", "spec.proxy.serverNames", [], "spec.proxy.serverNames", "at least 1"),
    ("port-zero", "spec.proxy.listenPort", 0, "spec.proxy.listenPort", "greater than or equal to 1"),
    ("port-too-big", "spec.proxy.listenPort", 70000, "spec.proxy.listenPort", "less than or equal to 65535"),
    ("bad-requirement", "spec.source.requirements", ["webxample==="], "spec.source.requirements[0]", "PEP 508"),
    ("url-requirement", "spec.source.requirements", ["x @ http://e/x.whl"], "spec.source.requirements[0]", "PEP 508"),
    ("static-dotdot", "spec.proxy.static", [{"urlPath": "/s/", "directory": "../etc"}], "spec.proxy.static[0].directory", "no '..'"),
    ("static-url-dotdot", "spec.proxy.static", [{"urlPath": "/../", "directory": "a"}], "spec.proxy.static[0].urlPath", "no '..'"),
    ("unknown-field", "spec.replicas", 3, "spec.replicas", "unknown field"),
    ("history-negative", "spec.revisionHistoryLimit", -1, "spec.revisionHistoryLimit", "greater than or equal to 1"),
    ("history-too-big", "spec.revisionHistoryLimit", 51, "spec.revisionHistoryLimit", "less than or equal to 50"),
    ("python-bad", "spec.python", "3", "spec.python", "Python version"),
    ("entrypoint-bad", "spec.entrypoint", "webxample.app", "spec.entrypoint", "module:callable"),
    ("env-name-bad", "spec.env", [{"name": "1X", "value": "v"}], "spec.env[0].name", "POSIX environment"),
    ("env-value-newline", "spec.env", [{"name": "X", "value": "a\nb"}], "spec.env[0].value", "newline"),
    # Values from Secrets and ConfigMaps: core/v1's field names and validation words.
    ("env-value-and-value-from", "spec.env", [{"name": "X", "value": "v", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}],
     "spec.env[0]", "may not be specified when `value` is not empty"),
    ("env-value-from-two-refs", "spec.env",
     [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}, "configMapKeyRef": {"name": "c", "key": "k"}}}],
     "spec.env[0].valueFrom", "may not have more than one field specified at a time"),
    ("env-value-from-empty", "spec.env", [{"name": "X", "valueFrom": {}}], "spec.env[0].valueFrom", "must specify one of"),
    ("secret-key-slash", "spec.env", [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "a/b"}}}],
     "spec.env[0].valueFrom.secretKeyRef.key", "a valid config key must consist of alphanumeric characters"),
    ("secret-name-upper", "spec.env", [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "S", "key": "k"}}}],
     "spec.env[0].valueFrom.secretKeyRef.name", "DNS-1123 subdomain"),
    ("env-from-two-refs", "spec.envFrom", [{"secretRef": {"name": "s"}, "configMapRef": {"name": "c"}}],
     "spec.envFrom[0]", "may not have more than one field specified at a time"),
    ("env-from-prefix-digit", "spec.envFrom", [{"prefix": "1X", "secretRef": {"name": "s"}}],
     "spec.envFrom[0].prefix", "prefix"),
    ("index-credentials-without-index", "spec.source", {"requirements": ["a==1"], "indexCredentials": {"secretName": "s"}},
     "spec.source", "indexCredentials needs indexUrl"),
    ("max-unavailable-zero", "spec.strategy.maxUnavailable", 0, "spec.strategy", "maxUnavailable"),
    ("max-unavailable-pct", "spec.strategy.maxUnavailable", "150%", "spec.strategy", "maxUnavailable"),
    ("no-source", "spec.source", {"indexUrl": "http://127.0.0.1/simple/"}, "spec.source", "requirements, a wheel"),
    ("index-url-quote", "spec.source.indexUrl", "http://x/\"", "spec.source.indexUrl", "URL"),
    ("managed-gunicorn-arg", "spec.server.extraArgs", ["--bind=0.0.0.0:80"], "spec.server", "set by apprelease"),
    ("managed-worker-class-arg", "spec.server.extraArgs", ["--worker-class=sync"], "spec.server", "set by apprelease"),
    ("worker-class-unknown", "spec.server.workerClass", "gevent", "spec.server.workerClass", "uvicorn"),
    ("duplicate-env", "spec.env", [{"name": "X", "value": "1"}, {"name": "X", "value": "2"}], "spec.env", "duplicate"),
    ("duplicate-static", "spec.proxy.static", [{"urlPath": "/s/", "directory": "a"}, {"urlPath": "/s/", "directory": "b"}],
     "spec.proxy.static", "duplicate"),
    ("missing-version", "spec.version", DELETE, "spec.version", "required"),
    ("release-command-shell", "spec.release", {"command": ["sh", "-c", "migrate;rm"]}, "spec.release.command[2]",
     "never run through a shell"),
    ("release-command-path", "spec.release", {"command": ["/bin/sh"]}, "spec.release.command", "venv bin/"),
    ("release-command-empty", "spec.release", {"command": []}, "spec.release.command", "at least 1"),
    ("release-run-on-unknown", "spec.release", {"command": ["python"], "runOn": "allHosts"}, "spec.release.runOn",
     "everyHost"),
    ("process-command-space", "spec.processes", {"worker": {"command": ["celery", "worker --beat"]}},
     "spec.processes[worker].command[1]", "no whitespace"),
    ("process-name-underscore", "spec.processes", {"my_worker": {"command": ["python"]}}, "spec.processes",
     "process type name"),
    # The apiserver names map entries spec.processes.worker in schema errors, spec.processes[worker] in CEL ones.
    ("process-stop-signal-kill", "spec.processes", {"worker": {"command": ["python"], "stopSignal": "KILL"}},
     "stopSignal", "TERM"),
    ("process-replicas-zero", "spec.processes", {"worker": {"command": ["python"], "replicas": 0}},
     "replicas", "greater than or equal to 1"),
]


