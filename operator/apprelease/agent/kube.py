"""The in-cluster agent's Kubernetes API plumbing: config, HostRelease list/watch/patch, Secrets, Events.

Called by `agent/cluster.py` only; nothing here decides anything. HostReleases are handled
as the plain JSON dicts the apiserver sends (the cluster loop validates them into
`api.models.HostRelease` once, at its edge); writes are JSON merge patches, to the status
subresource for status and to metadata for the finalizer, never to spec.

The watch is read line by line from the raw response rather than through
`kubernetes.watch.Watch`, so that a `410 Gone` reaches the caller as `Gone` (re-list)
instead of being retried inside the library, and every other failure surfaces as an
exception the caller backs off on.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from kubernetes.watch.watch import iter_resp_lines

from ..api.models import GROUP, NODE_LABEL, VERSION

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
    if isinstance(exc, ApiException):
        return exc.status in (0, 409, 429) or exc.status >= 500
    return isinstance(exc, (urllib3.exceptions.HTTPError, OSError))


def is_not_found(exc: BaseException) -> bool:
    return isinstance(exc, ApiException) and exc.status == 404


def describe(exc: BaseException) -> str:
    """One line about an API failure (ApiException's str() spans headers and body)."""
    if isinstance(exc, ApiException):
        reason = exc.reason or ""
        try:
            reason = json.loads(exc.body or "{}").get("message", reason)
        except (json.JSONDecodeError, AttributeError):
            pass  # a non-JSON body (a proxy's error page): the HTTP reason is all there is
        return f"HTTP {exc.status}: {reason}"
    return f"{type(exc).__name__}: {exc}"


def load_configuration(kubeconfig: str | None) -> client.Configuration:
    """--kubeconfig, else $KUBECONFIG, else the pod's service account, else ~/.kube/config."""
    configuration = client.Configuration()
    path = kubeconfig or os.environ.get("KUBECONFIG")
    if path:
        config.load_kube_config(config_file=path, client_configuration=configuration, persist_config=False)
    else:
        try:
            config.load_incluster_config(client_configuration=configuration)
        except ConfigException:
            config.load_kube_config(client_configuration=configuration, persist_config=False)
    # No retries inside urllib3: the agent backs off itself (and logs once per attempt,
    # not three warnings per refused connection during an apiserver outage).
    configuration.retries = False
    return configuration


@dataclass
class Listed:
    items: list[Obj]
    resource_version: str


class HostReleaseAPI:
    """The calls the agent makes. One instance per thread: each has its own connection pool."""

    def __init__(self, configuration: client.Configuration):
        api_client = client.ApiClient(configuration)
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)

    # -- HostReleases ------------------------------------------------------------------

    def list(self, label_selector: str) -> Listed:
        body = self.custom.list_cluster_custom_object(
            GROUP, VERSION, PLURAL, label_selector=label_selector,
            _request_timeout=(CONNECT_TIMEOUT, READ_TIMEOUT),
        )
        for item in body["items"]:  # a list's items carry no kind/apiVersion
            item.setdefault("apiVersion", f"{GROUP}/{VERSION}")
            item.setdefault("kind", KIND)
        return Listed(items=body["items"], resource_version=body["metadata"]["resourceVersion"])

    def watch(self, label_selector: str, resource_version: str, timeout_seconds: int) -> Iterator[tuple[str, Obj]]:
        """(type, object) events after `resource_version` until the server ends the watch.

        BOOKMARK events carry only a newer resourceVersion. Raises `Gone` when the version
        is too old, ApiException for other server errors, urllib3/OS errors on lost connections.
        """
        try:
            resp = self.custom.list_cluster_custom_object(
                GROUP, VERSION, PLURAL, label_selector=label_selector, watch=True,
                resource_version=resource_version, allow_watch_bookmarks=True, timeout_seconds=timeout_seconds,
                _preload_content=False, _request_timeout=(CONNECT_TIMEOUT, timeout_seconds + READ_TIMEOUT),
            )
        except ApiException as exc:
            if exc.status == 410:  # expired before the stream began (else it comes as an ERROR event)
                raise Gone(describe(exc)) from None
            raise
        try:
            for line in iter_resp_lines(resp):
                if not line.strip():
                    continue
                event = json.loads(line)
                kind, obj = event["type"], event["object"]
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise Gone(obj.get("message", "resourceVersion too old"))
                    raise ApiException(status=obj.get("code", 0), reason=f"{obj.get('reason')}: {obj.get('message')}")
                yield kind, obj
        finally:
            resp.close()
            resp.release_conn()

    def patch_metadata(self, namespace: str, name: str, metadata: Obj) -> Obj:
        """A merge patch on metadata; include resourceVersion to make it conditional (409 if stale)."""
        return self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, {"metadata": metadata},
            _content_type="application/merge-patch+json", _request_timeout=(CONNECT_TIMEOUT, READ_TIMEOUT),
        )

    def patch_status(self, namespace: str, name: str, status: Obj) -> Obj:
        """A merge patch on the status subresource (spec is never written by the agent)."""
        return self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, name, {"status": status},
            _content_type="application/merge-patch+json", _request_timeout=(CONNECT_TIMEOUT, READ_TIMEOUT),
        )

    # -- Secrets -----------------------------------------------------------------------

    def read_tls_secret(self, namespace: str, name: str) -> tuple[str, str]:
        """(certificate PEM, key PEM) of a kubernetes.io/tls Secret; KeyError if it does not exist."""
        try:
            secret = self.core.read_namespaced_secret(name, namespace, _request_timeout=(CONNECT_TIMEOUT, READ_TIMEOUT))
        except ApiException as exc:
            if exc.status == 404:
                raise KeyError(f"{namespace}/{name}") from None
            raise
        if secret.type != TLS_SECRET_TYPE:
            raise SecretUnusable(f"Secret {namespace}/{name} is of type {secret.type!r}, not {TLS_SECRET_TYPE}")
        data = secret.data or {}
        missing = [k for k in ("tls.crt", "tls.key") if not data.get(k)]
        if missing:
            raise SecretUnusable(f"Secret {namespace}/{name} has no {' or '.join(missing)}")
        return base64.b64decode(data["tls.crt"]).decode(), base64.b64decode(data["tls.key"]).decode()

    def read_values(self, kind: str, namespace: str, name: str) -> dict[str, str] | None:
        """A referenced Secret's or ConfigMap's data as text; None when it does not exist.

        Allowed only for the objects the operator's Role `apprelease-agent-reads` names (get by
        name, never list). The values go to the host's data plane and nowhere else: never logged."""
        timeout = (CONNECT_TIMEOUT, READ_TIMEOUT)
        try:
            if kind == "Secret":
                secret = self.core.read_namespaced_secret(name, namespace, _request_timeout=timeout)
                return {k: base64.b64decode(v).decode("utf-8", "surrogateescape") for k, v in (secret.data or {}).items()}
            cm = self.core.read_namespaced_config_map(name, namespace, _request_timeout=timeout)
            return dict(cm.data or {})
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    # -- reviews (the log endpoint, agent/logserver.py) --------------------------------

    def review(self, body: Obj) -> Obj:
        """Create a TokenReview or SubjectAccessReview; the answer as JSON (camelCase)."""
        api_client = self.core.api_client
        if body["kind"] == "TokenReview":
            answer = client.AuthenticationV1Api(api_client).create_token_review(
                body, _request_timeout=(CONNECT_TIMEOUT, READ_TIMEOUT))
        elif body["kind"] == "SubjectAccessReview":
            answer = client.AuthorizationV1Api(api_client).create_subject_access_review(
                body, _request_timeout=(CONNECT_TIMEOUT, READ_TIMEOUT))
        else:
            raise ValueError(f"not a review: {body['kind']}")
        return api_client.sanitize_for_serialization(answer)

    # -- Events ------------------------------------------------------------------------

    def create_event(self, obj: Obj, *, event_type: str, reason: str, message: str, node: str) -> None:
        meta = obj["metadata"]
        now = datetime.now(UTC)
        event = client.CoreV1Event(
            metadata=client.V1ObjectMeta(name=f"{meta['name']}.{uuid.uuid4().hex[:16]}", namespace=meta["namespace"]),
            involved_object=client.V1ObjectReference(
                api_version=f"{GROUP}/{VERSION}", kind=KIND, name=meta["name"], namespace=meta["namespace"],
                uid=meta.get("uid"), resource_version=meta.get("resourceVersion"),
            ),
            reason=reason,
            message=message[:1024],
            type=event_type,
            source=client.V1EventSource(component=COMPONENT, host=node),
            reporting_component=COMPONENT,
            reporting_instance=node,
            first_timestamp=now,
            last_timestamp=now,
            count=1,
        )
        self.core.create_namespaced_event(meta["namespace"], event, _request_timeout=(CONNECT_TIMEOUT, READ_TIMEOUT))
