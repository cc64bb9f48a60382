"""Who may read which app's logs from this agent, decided like the kubelet decides `pods/log`. Pure.

Called by `agent/logserver.py` for every request to `/logs`. A request names a namespace,
an app, optionally a revision and a process (`release`, or a replica such as `worker-0`),
`tail` and `follow`; it carries the caller's bearer token.
The server asks the apiserver two questions and this module builds them and reads the
answers:

1. TokenReview: who is this token? (authentication, exactly as the apiserver would do it:
   ServiceAccount tokens, OIDC, whatever the cluster accepts);
2. SubjectAccessReview: may that user `get` the subresource `log` of the HostRelease
   `<app>-<node>` in that namespace (group apprelease.dev)? So RBAC says who reads logs: a
   Role granting `hostreleases/log` in a namespace (the `apprelease-view` ClusterRole, bound
   in a namespace) and nothing else — not node access, not ssh.

Every input is checked against the same rules as the resources (DNS labels), so a request
can only ever name files under `apps/<namespace>_<app>/logs/` of this host.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..api import rules
from ..api.models import GROUP
from ..api.resolve import host_release_name

MAX_TAIL = 100_000


class BadRequest(ValueError):
    """The query cannot be served as asked; the message says which parameter and why."""


RELEASE_PROCESS = "release"  # `process=release`: the revision's release command output
_INSTANCE = re.compile(rf"({rules.PROCESS_NAME.pattern[1:-1]})-([0-9]{{1,2}})")


@dataclass(frozen=True)
class LogQuery:
    namespace: str
    app: str
    revision: str | None
    tail: int  # -1: everything the current files hold
    follow: bool
    process: str | None = None  # None: the web server; "release"; or a process-type replica, "worker-0"

    def for_node(self, node: str) -> str:
        """The HostRelease this query is about on `node`: what RBAC is asked about."""
        return host_release_name(self.app, node)


def _label(params: Mapping[str, str], name: str, required: bool = True) -> str | None:
    value = params.get(name)
    if not value:
        if required:
            raise BadRequest(f"{name} is required")
        return None
    try:
        return rules.DNS_LABEL.check(value)
    except ValueError as exc:
        raise BadRequest(f"{name}: {exc}") from None


def parse_query(params: Mapping[str, str]) -> LogQuery:
    """`/logs?namespace=&app=&revision=&tail=&follow=` as a LogQuery, or BadRequest."""
    tail_text = params.get("tail", "-1") or "-1"
    try:
        tail = int(tail_text)
    except ValueError:
        raise BadRequest(f"tail: {tail_text!r} is not an integer") from None
    if tail < -1 or tail > MAX_TAIL:
        raise BadRequest(f"tail must be -1 (all) or 0..{MAX_TAIL}")
    follow = params.get("follow", "false").lower()
    if follow not in ("true", "false", "1", "0"):
        raise BadRequest("follow must be true or false")
    process = params.get("process") or None
    if process is not None and process != RELEASE_PROCESS and not _INSTANCE.fullmatch(process):
        raise BadRequest(f"process: {process!r} is not {RELEASE_PROCESS!r} or a process type replica such as worker-0")
    return LogQuery(namespace=_label(params, "namespace") or "", app=_label(params, "app") or "",
                    revision=_label(params, "revision", required=False), tail=tail, follow=follow in ("true", "1"),
                    process=process)


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def token_review(token: str) -> dict[str, Any]:
    return {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}


@dataclass(frozen=True)
class User:
    name: str
    uid: str
    groups: tuple[str, ...]
    extra: Mapping[str, tuple[str, ...]]


def authenticated_user(review: Mapping[str, Any]) -> User | None:
    """The user a TokenReview's answer names, None when the token was not accepted."""
    status = review.get("status") or {}
    if not status.get("authenticated"):
        return None
    user = status.get("user") or {}
    return User(name=user.get("username", ""), uid=user.get("uid", ""), groups=tuple(user.get("groups") or ()),
                extra={k: tuple(v) for k, v in (user.get("extra") or {}).items()})


def access_review(user: User, namespace: str, host_release: str) -> dict[str, Any]:
    """May `user` get hostreleases/log `host_release` in `namespace`? (as the kubelet asks for pods/log)"""
    return {
        "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {
            "user": user.name, "uid": user.uid, "groups": list(user.groups),
            "extra": {k: list(v) for k, v in user.extra.items()},
            "resourceAttributes": {"group": GROUP, "resource": "hostreleases", "subresource": "log", "verb": "get",
                                   "namespace": namespace, "name": host_release},
        },
    }


def allowed(review: Mapping[str, Any]) -> tuple[bool, str]:
    status = review.get("status") or {}
    return bool(status.get("allowed")), status.get("reason") or status.get("evaluationError") or ""


def refusal(user: User, namespace: str, host_release: str, reason: str) -> str:
    """The 403 body, worded like the apiserver's."""
    why = f": {reason}" if reason else ""
    return (f'{user.name} cannot get resource "hostreleases/log" in API group "{GROUP}" in the namespace '
            f'"{namespace}" (hostrelease {host_release}){why}')
