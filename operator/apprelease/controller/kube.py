"""The operator's Kubernetes API calls, and the conversions between API objects and plan inputs.

Called by `controller.reconcile` (which runs in a worker thread, off Kopf's event loop) and by
the CLI (`connect`). Uses the synchronous `kubernetes` client; every call is a plain request
with no caching, so each reconcile reads what the apiserver holds right now (a stale cache
could let a rollout exceed maxUnavailable). Builders (`host_release_manifest`, `host_view`)
return values and are tested as such; `KubeApi` methods each do one request.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import kopf
import kubernetes
import base64
import secrets as random_secrets

from kubernetes.client import ApiClient, Configuration, CoreV1Api, CustomObjectsApi, RbacAuthorizationV1Api
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from ..api.models import (
    API_VERSION,
    APP_LABEL,
    GROUP,
    NODE_LABEL,
    VERSION,
    HostReleaseSpec,
)
from .plan import HostView, WireSpec

APP_PLURAL = "appreleases"
HOST_PLURAL = "hostreleases"
FIELD_MANAGER = "apprelease-operator"
JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
REQUEST_TIMEOUT = 30.0  # seconds; a reconcile must not hang on a dead apiserver


# ----- connecting


def client_configuration(kubeconfig: str | None) -> Configuration:
    """A client configuration from `kubeconfig`, else in-cluster, else the default kubeconfig."""
    config = Configuration()
    if kubeconfig:
        kubernetes.config.load_kube_config(config_file=kubeconfig, client_configuration=config)
        return config
    try:
        kubernetes.config.load_incluster_config(client_configuration=config)
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(client_configuration=config)
    return config


def connection_info(config: Configuration) -> kopf.ConnectionInfo:
    """The same credentials for Kopf's own client (its login handler returns this)."""
    header = config.get_api_key_with_prefix("BearerToken") or config.get_api_key_with_prefix("authorization")
    parts = header.split(" ", 1) if header else []
    scheme, token = (None, None) if not parts else (None, parts[0]) if len(parts) == 1 else (parts[0], parts[1])
    return kopf.ConnectionInfo(
        server=config.host,
        ca_path=config.ssl_ca_cert,
        insecure=not config.verify_ssl,
        username=config.username or None,
        password=config.password or None,
        scheme=scheme,
        token=token,
        certificate_path=config.cert_file,
        private_key_path=config.key_file,
    )


# ----- builders (pure)


def host_release_manifest(
    app_name: str, namespace: str, app_uid: str, node: str, name: str, spec: WireSpec
) -> dict[str, Any]:
    """A HostRelease owned by its AppRelease (the garbage collector deletes it with the owner)."""
    return {
        "apiVersion": API_VERSION,
        "kind": "HostRelease",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {NODE_LABEL: node, APP_LABEL: app_name},
            "ownerReferences": [{
                "apiVersion": API_VERSION, "kind": "AppRelease", "name": app_name, "uid": app_uid,
                "controller": True, "blockOwnerDeletion": True,
            }],
        },
        "spec": dict(spec),
    }


def normalized_spec(raw: Mapping[str, Any] | None) -> WireSpec | None:
    """A stored HostRelease spec in the exact form the operator writes (None if it is invalid).

    Comparing through the model means defaults the apiserver filled in and key order cannot
    make an up-to-date host look outdated (which would rewrite it forever).
    """
    if not raw:
        return None
    try:
        return HostReleaseSpec.model_validate(raw).wire()
    except ValidationError:
        return None


def host_view(obj: Mapping[str, Any]) -> HostView:
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    labels = meta.get("labels") or {}
    return HostView(
        name=meta["name"],
        node=labels.get(NODE_LABEL) or spec.get("node") or "",
        spec=normalized_spec(spec),
        generation=int(meta.get("generation") or 1),
        observed_generation=status.get("observedGeneration"),
        phase=status.get("phase"),
        serving_revision=status.get("servingRevision"),
        message=status.get("message"),
        reason=status.get("reason"),
        processes=processes_summary(status.get("processes") or []),
        liveness_failure=liveness_summary(status.get("liveness")),
        deleting=bool(meta.get("deletionTimestamp")),
        finalizers=tuple(meta.get("finalizers") or ()),
    )


def liveness_summary(liveness: dict | None) -> str | None:
    """What Degraded says of a host whose live revision fails its liveness probes; None if it does not."""
    if not liveness or not liveness.get("failing"):
        return None
    restarts = liveness.get("restarts") or 0
    return f"{liveness.get('lastFailure') or 'probe failed'} (workers restarted {restarts} time{'s' * (restarts != 1)})"


def processes_summary(processes: list[Mapping[str, Any]]) -> str | None:
    """`worker 2/2, beat 1/1` from a HostRelease's status.processes (running/replicas), or None."""
    parts = [f"{p.get('name')} {p.get('running', 0)}/{p.get('replicas', 0)}" for p in processes if p.get("name")]
    return ", ".join(parts) or None


def label_selector(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def status_patch(new: Mapping[str, Any], old: Mapping[str, Any] | None) -> dict[str, Any]:
    """A JSON merge patch turning status `old` into `new` (keys gone from `new` set to null)."""
    removed = {k: None for k in (old or {}) if k not in new}
    return {"status": {**removed, **new}}


# ----- the API


class KubeApi:
    """One method per request the operator makes."""

    def __init__(self, client: ApiClient) -> None:
        self.custom = CustomObjectsApi(client)
        self.core = CoreV1Api(client)
        self.rbac = RbacAuthorizationV1Api(client)

    @classmethod
    def from_configuration(cls, config: Configuration) -> KubeApi:
        return cls(ApiClient(config))

    def get_app_release(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, APP_PLURAL, name, _request_timeout=REQUEST_TIMEOUT
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def list_host_releases(self, namespace: str, app: str) -> list[dict[str, Any]]:
        listed = self.custom.list_namespaced_custom_object(
            GROUP, VERSION, namespace, HOST_PLURAL, label_selector=f"{APP_LABEL}={app}",
            _request_timeout=REQUEST_TIMEOUT,
        )
        return list(listed.get("items") or [])

    def list_all_app_releases(self) -> list[dict[str, Any]]:
        """Every AppRelease in the cluster (host conflicts do not stop at namespaces)."""
        listed = self.custom.list_cluster_custom_object(GROUP, VERSION, APP_PLURAL, _request_timeout=REQUEST_TIMEOUT)
        return list(listed.get("items") or [])

    def node_labels(self) -> dict[str, dict[str, str]]:
        """Every Node's labels, by name."""
        nodes = self.core.list_node(_request_timeout=REQUEST_TIMEOUT)
        return {n.metadata.name: dict(n.metadata.labels or {}) for n in nodes.items}

    def list_node_names(self, selector: Mapping[str, str]) -> list[str]:
        nodes = self.core.list_node(label_selector=label_selector(selector) or None, _request_timeout=REQUEST_TIMEOUT)
        return sorted(n.metadata.name for n in nodes.items)

    def existing_nodes(self, names: Sequence[str]) -> frozenset[str]:
        """Which of `names` are Nodes that exist (one GET each: only used for HostReleases being deleted)."""
        live = set()
        for name in names:
            try:
                self.core.read_node(name, _request_timeout=REQUEST_TIMEOUT)
            except ApiException as exc:
                if exc.status == 404:
                    continue
                raise
            live.add(name)
        return frozenset(live)

    def create_host_release(self, manifest: Mapping[str, Any]) -> None:
        meta = manifest["metadata"]
        self.custom.create_namespaced_custom_object(
            GROUP, VERSION, meta["namespace"], HOST_PLURAL, dict(manifest),
            field_manager=FIELD_MANAGER, _request_timeout=REQUEST_TIMEOUT,
        )

    def replace_host_release_spec(self, namespace: str, name: str, spec: WireSpec) -> None:
        # A JSON patch replacing /spec as a whole: a merge patch would keep fields the new spec
        # dropped (e.g. a removed source.wheel).
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, HOST_PLURAL, name, [{"op": "replace", "path": "/spec", "value": dict(spec)}],
            field_manager=FIELD_MANAGER, _content_type=JSON_PATCH, _request_timeout=REQUEST_TIMEOUT,
        )

    def delete_host_release(self, namespace: str, name: str) -> None:
        try:
            self.custom.delete_namespaced_custom_object(
                GROUP, VERSION, namespace, HOST_PLURAL, name, _request_timeout=REQUEST_TIMEOUT
            )
        except ApiException as exc:
            if exc.status != 404:  # already gone is what we wanted
                raise

    def remove_finalizer(self, namespace: str, name: str, finalizers: Sequence[str], finalizer: str) -> None:
        """Drop `finalizer`, guarded by a test of the list we saw (a concurrent change fails the
        patch with 422 rather than losing someone else's finalizer)."""
        remaining = [f for f in finalizers if f != finalizer]
        ops = [
            {"op": "test", "path": "/metadata/finalizers", "value": list(finalizers)},
            {"op": "replace", "path": "/metadata/finalizers", "value": remaining},
        ]
        try:
            self.custom.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, HOST_PLURAL, name, ops,
                field_manager=FIELD_MANAGER, _content_type=JSON_PATCH, _request_timeout=REQUEST_TIMEOUT,
            )
        except ApiException as exc:
            if exc.status != 404:
                raise

    def patch_app_release_status(self, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, APP_PLURAL, name, dict(patch),
            field_manager=FIELD_MANAGER, _content_type=MERGE_PATCH, _request_timeout=REQUEST_TIMEOUT,
        )

    def list_app_releases(self, namespace: str) -> list[dict[str, Any]]:
        listed = self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, APP_PLURAL,
                                                          _request_timeout=REQUEST_TIMEOUT)
        return list(listed.get("items") or [])

    # -- Secrets and ConfigMaps the AppReleases reference (values never logged or returned upward
    # beyond api.envrefs, which digests them)

    def read_secret_data(self, namespace: str, name: str) -> dict[str, str] | None:
        """The Secret's data decoded to text; None when it does not exist."""
        try:
            secret = self.core.read_namespaced_secret(name, namespace, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return decode_secret_data(secret.data)

    def read_config_map_data(self, namespace: str, name: str) -> dict[str, str] | None:
        try:
            cm = self.core.read_namespaced_config_map(name, namespace, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return dict(cm.data or {})

    def values_key(self, namespace: str, name: str) -> bytes:
        """The per-cluster key of the values digest (api/envrefs.py): Secret `namespace/name`,
        made once with 32 random bytes. Only the operator reads it (its Role in its namespace)."""
        data = self.read_secret_data(namespace, name)
        if data is None:
            body = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                    "metadata": {"name": name, "namespace": namespace},
                    "data": {"key": base64.b64encode(random_secrets.token_bytes(32)).decode()}}
            try:
                self.core.create_namespaced_secret(namespace, body, field_manager=FIELD_MANAGER,
                                                   _request_timeout=REQUEST_TIMEOUT)
            except ApiException as exc:
                if exc.status != 409:  # another replica made it first: read theirs
                    raise
            data = self.read_secret_data(namespace, name)
        if not data or not data.get("key"):
            raise RuntimeError(f"Secret {namespace}/{name} has no key 'key' (the values digest key)")
        return data["key"].encode("utf-8", "surrogateescape")

    # -- the agents' Role per namespace (controller/grants.py)

    def read_role_rules(self, namespace: str, name: str) -> list[dict[str, Any]] | None:
        try:
            role = self.rbac.read_namespaced_role(name, namespace, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return [ApiClient().sanitize_for_serialization(r) for r in (role.rules or [])]

    def apply_role(self, manifest: Mapping[str, Any], exists: bool) -> None:
        meta = manifest["metadata"]
        if exists:
            self.rbac.replace_namespaced_role(meta["name"], meta["namespace"], dict(manifest),
                                              field_manager=FIELD_MANAGER, _request_timeout=REQUEST_TIMEOUT)
        else:
            self.rbac.create_namespaced_role(meta["namespace"], dict(manifest), field_manager=FIELD_MANAGER,
                                             _request_timeout=REQUEST_TIMEOUT)

    def ensure_role_binding(self, manifest: Mapping[str, Any]) -> None:
        meta = manifest["metadata"]
        try:
            self.rbac.create_namespaced_role_binding(meta["namespace"], dict(manifest), field_manager=FIELD_MANAGER,
                                                     _request_timeout=REQUEST_TIMEOUT)
        except ApiException as exc:
            if exc.status != 409:
                raise

    def delete_role_and_binding(self, namespace: str, name: str) -> None:
        for delete in (self.rbac.delete_namespaced_role_binding, self.rbac.delete_namespaced_role):
            try:
                delete(name, namespace, _request_timeout=REQUEST_TIMEOUT)
            except ApiException as exc:
                if exc.status != 404:
                    raise


def decode_secret_data(data: Mapping[str, str] | None) -> dict[str, str]:
    """A Secret's `data` (base64 on the wire) as text; bytes that are not UTF-8 survive as surrogates."""
    return {k: base64.b64decode(v).decode("utf-8", "surrogateescape") for k, v in (data or {}).items()}
