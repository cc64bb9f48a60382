"""The operator's Kubernetes API calls, and the conversions between API objects and plan inputs.

Called by `controller.reconcile` (which runs in a worker thread, off Kopf's event loop) and by
the CLI (`connect`). Uses `apprelease.kubeclient` (synchronous, thread-safe pool), not the
`kubernetes` package: `from kubernetes.client import ...` alone costs ~94 MB of RSS
(bench/footprint.py). Every call here is a plain request; the operator's cache of Nodes and
claims lives in `controller.cache`. Builders (`host_release_manifest`, `host_view`)
return values and are tested as such; `KubeApi` methods each do one request.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Any

import kopf
import secrets as random_secrets

from pydantic import ValidationError

from ..kubeclient import ApiError, Client, Config, decode_secret_data, load_config
from ..kubeclient import path_segment as _seg
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


def client_configuration(kubeconfig: str | None) -> Config:
    """A client configuration from `kubeconfig`, else in-cluster, else the default kubeconfig."""
    return load_config(kubeconfig)


def connection_info(config: Config) -> kopf.ConnectionInfo:
    """The same credentials for Kopf's own client (its login handler returns this; Kopf calls
    it again on a 401, which re-reads a token file or re-runs an exec plugin)."""
    header = config.authorization()
    scheme, token = header.split(" ", 1) if header and header.startswith("Bearer ") else (None, None)
    username, password = (config.basic_auth.split(":", 1) if config.basic_auth else (None, None))

    def b64(data: bytes | None) -> str | None:
        return base64.b64encode(data).decode() if data else None

    return kopf.ConnectionInfo(
        server=config.server,
        ca_path=config.ca_file,
        ca_data=b64(config.ca_data),
        insecure=config.insecure or None,
        username=username,
        password=password,
        scheme=scheme,
        token=token,
        certificate_path=config.cert_file,
        certificate_data=b64(config.cert_data),
        private_key_path=config.key_file,
        private_key_data=b64(config.key_data),
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
        lock_digest=lock_digest_of(spec, status),
        deleting=bool(meta.get("deletionTimestamp")),
        finalizers=tuple(meta.get("finalizers") or ()),
    )


def lock_digest_of(spec: Mapping[str, Any], status: Mapping[str, Any]) -> str | None:
    """The lock digest the host reported for the buildId its spec names (not an older build's)."""
    last = status.get("lastBuild") or {}
    return last.get("lockDigest") if last.get("buildId") == spec.get("buildId") else None


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

    def __init__(self, client: Client, timeout: float = REQUEST_TIMEOUT) -> None:
        self.client = client
        self.timeout = timeout

    @classmethod
    def from_configuration(cls, config: Config, timeout: float = REQUEST_TIMEOUT, pool_size: int = 8) -> KubeApi:
        return cls(Client(config, pool_size=pool_size), timeout)

    def _request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        return self.client.request(method, path, timeout=(self.timeout, self.timeout), **kwargs)

    @staticmethod
    def _custom(plural: str, namespace: str | None = None, name: str | None = None) -> str:
        path = f"/apis/{GROUP}/{VERSION}"
        if namespace is not None:
            path += f"/namespaces/{_seg(namespace)}"
        path += f"/{plural}"
        return path + (f"/{_seg(name)}" if name is not None else "")

    def get_app_release(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._get_or_none(self._custom(APP_PLURAL, namespace, name))

    def list_host_releases(self, namespace: str, app: str) -> list[dict[str, Any]]:
        listed = self._request("GET", self._custom(HOST_PLURAL, namespace), query={"labelSelector": f"{APP_LABEL}={app}"})
        return list(listed.get("items") or [])

    def list_all_app_releases(self) -> list[dict[str, Any]]:
        """Every AppRelease in the cluster (host conflicts do not stop at namespaces)."""
        return list(self._request("GET", self._custom(APP_PLURAL)).get("items") or [])

    def node_labels(self) -> dict[str, dict[str, str]]:
        """Every Node's labels, by name."""
        nodes = self._request("GET", "/api/v1/nodes").get("items") or []
        return {n["metadata"]["name"]: dict(n["metadata"].get("labels") or {}) for n in nodes}

    def list_node_names(self, selector: Mapping[str, str]) -> list[str]:
        nodes = self._request("GET", "/api/v1/nodes", query={"labelSelector": label_selector(selector) or None})
        return sorted(n["metadata"]["name"] for n in nodes.get("items") or [])

    def existing_nodes(self, names: Sequence[str]) -> frozenset[str]:
        """Which of `names` are Nodes that exist (one GET each: only used for HostReleases being deleted)."""
        live = set()
        for name in names:
            try:
                self._request("GET", f"/api/v1/nodes/{_seg(name)}")
            except ApiError as exc:
                if exc.status == 404:
                    continue
                raise
            live.add(name)
        return frozenset(live)

    def create_host_release(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """The HostRelease as created."""
        meta = manifest["metadata"]
        return self._request("POST", self._custom(HOST_PLURAL, meta["namespace"]), body=dict(manifest),
                      query={"fieldManager": FIELD_MANAGER})

    def replace_host_release_spec(self, namespace: str, name: str, spec: WireSpec) -> dict[str, Any]:
        """The HostRelease as patched. A JSON patch replacing /spec as a whole: a merge patch
        would keep fields the new spec dropped (e.g. a removed source.wheel)."""
        return self._request("PATCH", self._custom(HOST_PLURAL, namespace, name),
                      body=[{"op": "replace", "path": "/spec", "value": dict(spec)}],
                      content_type=JSON_PATCH, query={"fieldManager": FIELD_MANAGER})

    def delete_host_release(self, namespace: str, name: str) -> None:
        try:
            self._request("DELETE", self._custom(HOST_PLURAL, namespace, name))
        except ApiError as exc:
            if exc.status != 404:  # already gone is what we wanted
                raise

    def remove_finalizer(self, namespace: str, name: str, finalizers: Sequence[str], finalizer: str,
                         plural: str = HOST_PLURAL) -> None:
        """Drop `finalizer` from what we saw (`finalizers`); gone already is fine."""
        self.set_finalizers(plural, namespace, name, finalizers, [f for f in finalizers if f != finalizer], "")

    def set_finalizers(self, plural: str, namespace: str, name: str, seen: Sequence[str], wanted: Sequence[str],
                       resource_version: str) -> None:
        """Replace the finalizers we saw with `wanted`, guarded by a test of the list we saw (or,
        when there was none, of the resourceVersion): a concurrent change fails the patch with
        422 rather than losing someone else's finalizer. A 404 is fine (the object is gone)."""
        if seen:
            ops = [{"op": "test", "path": "/metadata/finalizers", "value": list(seen)},
                   {"op": "replace", "path": "/metadata/finalizers", "value": list(wanted)}]
        else:
            ops = [{"op": "test", "path": "/metadata/resourceVersion", "value": resource_version},
                   {"op": "add", "path": "/metadata/finalizers", "value": list(wanted)}]
        try:
            self._request("PATCH", self._custom(plural, namespace, name), body=ops, content_type=JSON_PATCH,
                          query={"fieldManager": FIELD_MANAGER})
        except ApiError as exc:
            if exc.status != 404:
                raise

    def post_event(self, obj: Mapping[str, Any], event: Mapping[str, Any]) -> None:
        self._request("POST", f"/api/v1/namespaces/{_seg(obj['metadata']['namespace'])}/events", body=dict(event))

    def patch_app_release_status(self, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        self._request("PATCH", self._custom(APP_PLURAL, namespace, name) + "/status", body=dict(patch),
                      content_type=MERGE_PATCH, query={"fieldManager": FIELD_MANAGER})

    # -- Leases (controller/leader.py) --------------------------------------------------

    def read_lease(self, namespace: str, name: str) -> dict[str, Any]:
        return self._request("GET", f"/apis/coordination.k8s.io/v1/namespaces/{_seg(namespace)}/leases/{_seg(name)}")

    def create_lease(self, namespace: str, body: Mapping[str, Any]) -> None:
        self._request("POST", f"/apis/coordination.k8s.io/v1/namespaces/{_seg(namespace)}/leases",
                      body={"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", **body})

    def replace_lease(self, namespace: str, name: str, body: Mapping[str, Any]) -> None:
        self._request("PUT", f"/apis/coordination.k8s.io/v1/namespaces/{_seg(namespace)}/leases/{_seg(name)}",
                      body={"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", **body})

    def list_app_releases(self, namespace: str) -> list[dict[str, Any]]:
        return list(self._request("GET", self._custom(APP_PLURAL, namespace)).get("items") or [])

    # -- Secrets and ConfigMaps the AppReleases reference (values never logged or returned upward
    # beyond api.envrefs, which digests them)

    def _get_or_none(self, path: str) -> dict[str, Any] | None:
        try:
            return self._request("GET", path)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def read_secret_data(self, namespace: str, name: str) -> dict[str, str] | None:
        """The Secret's data decoded to text; None when it does not exist."""
        secret = self._get_or_none(f"/api/v1/namespaces/{_seg(namespace)}/secrets/{_seg(name)}")
        return None if secret is None else decode_secret_data(secret.get("data"))

    def read_config_map_data(self, namespace: str, name: str) -> dict[str, str] | None:
        cm = self._get_or_none(f"/api/v1/namespaces/{_seg(namespace)}/configmaps/{_seg(name)}")
        return None if cm is None else dict(cm.get("data") or {})

    def values_key(self, namespace: str, name: str) -> bytes:
        """The per-cluster key of the values digest (api/envrefs.py): Secret `namespace/name`,
        made once with 32 random bytes. Only the operator reads it (its Role in its namespace)."""
        data = self.read_secret_data(namespace, name)
        if data is None:
            body = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                    "metadata": {"name": name, "namespace": namespace},
                    "data": {"key": base64.b64encode(random_secrets.token_bytes(32)).decode()}}
            try:
                self._request("POST", f"/api/v1/namespaces/{_seg(namespace)}/secrets", body=body,
                              query={"fieldManager": FIELD_MANAGER})
            except ApiError as exc:
                if exc.status != 409:  # another replica made it first: read theirs
                    raise
            data = self.read_secret_data(namespace, name)
        if not data or not data.get("key"):
            raise RuntimeError(f"Secret {namespace}/{name} has no key 'key' (the values digest key)")
        return data["key"].encode("utf-8", "surrogateescape")

    # -- the agents' Role per namespace (controller/grants.py)

    @staticmethod
    def _rbac(kind: str, namespace: str, name: str | None = None) -> str:
        path = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{_seg(namespace)}/{kind}"
        return path + (f"/{_seg(name)}" if name is not None else "")

    def read_role_rules(self, namespace: str, name: str) -> list[dict[str, Any]] | None:
        role = self._get_or_none(self._rbac("roles", namespace, name))
        return None if role is None else list(role.get("rules") or [])

    def apply_role(self, manifest: Mapping[str, Any], exists: bool) -> None:
        meta = manifest["metadata"]
        if exists:
            self._request("PUT", self._rbac("roles", meta["namespace"], meta["name"]), body=dict(manifest),
                          query={"fieldManager": FIELD_MANAGER})
        else:
            self._request("POST", self._rbac("roles", meta["namespace"]), body=dict(manifest),
                          query={"fieldManager": FIELD_MANAGER})

    def ensure_role_binding(self, manifest: Mapping[str, Any]) -> None:
        meta = manifest["metadata"]
        try:
            self._request("POST", self._rbac("rolebindings", meta["namespace"]), body=dict(manifest),
                          query={"fieldManager": FIELD_MANAGER})
        except ApiError as exc:
            if exc.status != 409:
                raise

    def delete_role_and_binding(self, namespace: str, name: str) -> None:
        for kind in ("rolebindings", "roles"):
            try:
                self._request("DELETE", self._rbac(kind, namespace, name))
            except ApiError as exc:
                if exc.status != 404:
                    raise


