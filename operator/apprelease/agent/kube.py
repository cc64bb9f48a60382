"""The in-cluster agent's Kubernetes API plumbing: config, HostRelease list/watch/patch, Secrets, Events.

Called by `agent/cluster.py` only; nothing here decides anything. HostReleases are handled
as the plain JSON dicts the apiserver sends (the cluster loop validates them into
`api.models.HostRelease` once, at its edge); writes are JSON merge patches, to the status
subresource for status and to metadata for the finalizer, never to spec.

Transport is `apprelease.kubeclient`, not the `kubernetes` package: importing that package
imports its ~800 generated models (~50 MB and ~1 s on every host; bench/footprint.py), and the
agent needs six calls on plain JSON. The watch reaches the caller event by event, so that a
`410 Gone` arrives as `Gone` (re-list) and every other failure surfaces as an exception the
caller backs off on.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import urllib3

from ..api.models import GROUP, NODE_LABEL, VERSION
from ..kubeclient import ApiError, Client, Config, decode_secret_data, describe, event_manifest, load_config
from ..kubeclient import path_segment as _seg

log = logging.getLogger(__name__)

PLURAL = "hostreleases"
KIND = "HostRelease"
FINALIZER = f"{GROUP}/agent-cleanup"
TLS_SECRET_TYPE = "kubernetes.io/tls"
COMPONENT = "apprelease-agent"
CONNECT_TIMEOUT = 10.0
# A request that gets no answer this long is treated as a lost connection (the watch adds
# its own server-side timeout on top).
READ_TIMEOUT = 30.0

Obj = dict[str, Any]


class Gone(Exception):
    """The watch's resourceVersion is too old (410): the caller lists again."""


class SecretUnusable(Exception):
    """A Secret exists but cannot serve as TLS material (wrong type or missing keys)."""


def node_selector(node: str) -> str:
    """The server-side label selector of one node's HostReleases."""
    return f"{NODE_LABEL}={node}"


def object_key(obj: Obj) -> str:
    meta = obj["metadata"]
    return f"{meta['namespace']}/{meta['name']}"


def is_transient(exc: BaseException) -> bool:
    """Errors worth retrying unchanged: no connection, timeouts, throttling, server errors, conflicts."""
    if isinstance(exc, ApiError):
        return exc.status in (0, 409, 429) or exc.status >= 500
    return isinstance(exc, (urllib3.exceptions.HTTPError, OSError))


def is_not_found(exc: BaseException) -> bool:
    return isinstance(exc, ApiError) and exc.status == 404


def load_configuration(kubeconfig: str | None) -> Config:
    """--kubeconfig, else $KUBECONFIG, else the pod's service account, else ~/.kube/config."""
    return load_config(kubeconfig)


__all__ = ["ApiError", "Gone", "HostReleaseAPI", "Listed", "SecretUnusable", "describe", "is_not_found",
           "is_transient", "load_configuration", "node_selector", "object_key"]


@dataclass
class Listed:
    items: list[Obj]
    resource_version: str


class HostReleaseAPI:
    """The calls the agent makes. One instance per thread: each has its own connection pool."""

    def __init__(self, configuration: Config):
        self.client = Client(configuration)

    @staticmethod
    def _collection(namespace: str | None = None) -> str:
        if namespace is None:
            return f"/apis/{GROUP}/{VERSION}/{PLURAL}"
        return f"/apis/{GROUP}/{VERSION}/namespaces/{_seg(namespace)}/{PLURAL}"

    # -- HostReleases ------------------------------------------------------------------

    def list(self, label_selector: str) -> Listed:
        body = self.client.request("GET", self._collection(), query={"labelSelector": label_selector},
                                   timeout=(CONNECT_TIMEOUT, READ_TIMEOUT))
        for item in body["items"]:  # a list's items carry no kind/apiVersion
            item.setdefault("apiVersion", f"{GROUP}/{VERSION}")
            item.setdefault("kind", KIND)
        return Listed(items=body["items"], resource_version=body["metadata"]["resourceVersion"])

    def watch(self, label_selector: str, resource_version: str, timeout_seconds: int) -> Iterator[tuple[str, Obj]]:
        """(type, object) events after `resource_version` until the server ends the watch.

        BOOKMARK events carry only a newer resourceVersion. Raises `Gone` when the version
        is too old, ApiError for other server errors, urllib3/OS errors on lost connections.
        """
        query = {"labelSelector": label_selector, "resourceVersion": resource_version,
                 "allowWatchBookmarks": True, "timeoutSeconds": timeout_seconds}
        try:
            yield from self.client.watch(self._collection(), query=query,
                                         timeout=(CONNECT_TIMEOUT, timeout_seconds + READ_TIMEOUT))
        except ApiError as exc:
            # expired before the stream began (an HTTP 410), or during it (an ERROR event)
            if exc.status == 410:
                raise Gone(describe(exc)) from None
            raise

    def patch_metadata(self, namespace: str, name: str, metadata: Obj) -> Obj:
        """A merge patch on metadata; include resourceVersion to make it conditional (409 if stale)."""
        return self.client.request("PATCH", f"{self._collection(namespace)}/{_seg(name)}", body={"metadata": metadata},
                                   content_type="application/merge-patch+json", timeout=(CONNECT_TIMEOUT, READ_TIMEOUT))

    def patch_status(self, namespace: str, name: str, status: Obj) -> Obj:
        """A merge patch on the status subresource (spec is never written by the agent)."""
        return self.client.request("PATCH", f"{self._collection(namespace)}/{_seg(name)}/status",
                                   body={"status": status}, content_type="application/merge-patch+json",
                                   timeout=(CONNECT_TIMEOUT, READ_TIMEOUT))

    # -- Secrets -----------------------------------------------------------------------

    def read_tls_secret(self, namespace: str, name: str) -> tuple[str, str]:
        """(certificate PEM, key PEM) of a kubernetes.io/tls Secret; KeyError if it does not exist."""
        try:
            secret = self.client.request("GET", f"/api/v1/namespaces/{_seg(namespace)}/secrets/{_seg(name)}",
                                         timeout=(CONNECT_TIMEOUT, READ_TIMEOUT))
        except ApiError as exc:
            if exc.status == 404:
                raise KeyError(f"{namespace}/{name}") from None
            raise
        secret_type = secret.get("type")
        if secret_type != TLS_SECRET_TYPE:
            raise SecretUnusable(f"Secret {namespace}/{name} is of type {secret_type!r}, not {TLS_SECRET_TYPE}")
        data = secret.get("data") or {}
        missing = [k for k in ("tls.crt", "tls.key") if not data.get(k)]
        if missing:
            raise SecretUnusable(f"Secret {namespace}/{name} has no {' or '.join(missing)}")
        return base64.b64decode(data["tls.crt"]).decode(), base64.b64decode(data["tls.key"]).decode()

    def read_values(self, kind: str, namespace: str, name: str) -> dict[str, str] | None:
        """A referenced Secret's or ConfigMap's data as text; None when it does not exist.

        Allowed only for the objects the operator's Role `apprelease-agent-reads` names (get by
        name, never list). The values go to the host's data plane and nowhere else: never logged."""
        collection = "secrets" if kind == "Secret" else "configmaps"
        try:
            obj = self.client.request("GET", f"/api/v1/namespaces/{_seg(namespace)}/{collection}/{_seg(name)}",
                                      timeout=(CONNECT_TIMEOUT, READ_TIMEOUT))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        if kind == "Secret":
            return decode_secret_data(obj.get("data"))
        return dict(obj.get("data") or {})

    # -- reviews (the log endpoint, agent/logserver.py) --------------------------------

    def review(self, body: Obj) -> Obj:
        """Create a TokenReview or SubjectAccessReview; the answer as JSON (camelCase)."""
        if body["kind"] == "TokenReview":
            path = "/apis/authentication.k8s.io/v1/tokenreviews"
        elif body["kind"] == "SubjectAccessReview":
            path = "/apis/authorization.k8s.io/v1/subjectaccessreviews"
        else:
            raise ValueError(f"not a review: {body['kind']}")
        return self.client.request("POST", path, body=body, timeout=(CONNECT_TIMEOUT, READ_TIMEOUT))

    # -- Events ------------------------------------------------------------------------

    def create_event(self, obj: Obj, *, event_type: str, reason: str, message: str, node: str) -> None:
        event = event_manifest(obj, api_version=f"{GROUP}/{VERSION}", kind=KIND, event_type=event_type,
                               reason=reason, message=message, component=COMPONENT, instance=node, host=node)
        self.client.request("POST", f"/api/v1/namespaces/{_seg(obj['metadata']['namespace'])}/events", body=event,
                            timeout=(CONNECT_TIMEOUT, READ_TIMEOUT))
