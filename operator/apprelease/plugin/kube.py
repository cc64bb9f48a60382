"""The plugin's Kubernetes API calls, with kubectl's way of finding the cluster and namespace.

Called by `plugin.cli` only; nothing here decides anything. `connect` reads the kubeconfig
kubectl would (`--kubeconfig`, else $KUBECONFIG, else ~/.kube/config; in a pod, the service
account) with `--context`, and takes the namespace from `-n`, else the context's, else
`default`, as kubectl does. Every call is one request with a timeout; objects are the
apiserver's JSON dicts, which `plugin.views` reads.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from kubernetes.watch.watch import iter_resp_lines

from ..api.models import APP_LABEL, GROUP, VERSION
from ..kubeclient import describe  # noqa: F401 - re-exported: one wording of API failures, shared with the agent

APP_PLURAL = "appreleases"
HOST_PLURAL = "hostreleases"
FIELD_MANAGER = "kubectl-apprelease"
TIMEOUT = (10.0, 30.0)
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")

Obj = dict[str, Any]


class NotFound(LookupError):
    pass


@dataclass
class Connection:
    configuration: client.Configuration
    namespace: str

    def bearer_token(self) -> str | None:
        """The token the plugin presents to the agents' log endpoints (kubectl's own credential).

        Client certificates cannot be forwarded: a kubeconfig with only a certificate gets a
        clear error from `logs` instead."""
        header = (self.configuration.api_key or {}).get("authorization") or (
            self.configuration.api_key or {}).get("BearerToken")
        if not header:
            return None
        return header.split(" ", 1)[1] if header.lower().startswith("bearer ") else header


def connect(kubeconfig: str | None, context: str | None, namespace: str | None) -> Connection:
    configuration = client.Configuration()
    path = kubeconfig or os.environ.get("KUBECONFIG")
    context_namespace = None
    try:
        if path or not SERVICE_ACCOUNT_NAMESPACE.exists():
            # KUBECONFIG may list several files; the client library merges them as kubectl does.
            config.load_kube_config(config_file=path, context=context, client_configuration=configuration,
                                    persist_config=False)
            contexts, active = config.list_kube_config_contexts(config_file=path)
            chosen = next((c for c in contexts if c["name"] == context), active) if context else active
            context_namespace = ((chosen or {}).get("context") or {}).get("namespace")
        else:
            config.load_incluster_config(client_configuration=configuration)
            context_namespace = SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
    except ConfigException as exc:
        raise SystemExit(f"error: {exc}") from None
    configuration.retries = False
    return Connection(configuration, namespace or context_namespace or "default")


class PluginAPI:
    def __init__(self, connection: Connection):
        api_client = client.ApiClient(connection.configuration)
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.namespace = connection.namespace

    def get_app_release(self, name: str) -> Obj:
        try:
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, APP_PLURAL, name,
                                                            _request_timeout=TIMEOUT)
        except ApiException as exc:
            if exc.status == 404:
                raise NotFound(f'appreleases.{GROUP} "{name}" not found in namespace {self.namespace}') from None
            raise

    def find_app_release(self, name: str) -> Obj | None:
        try:
            return self.get_app_release(name)
        except NotFound:
            return None

    def host_releases(self, app: str) -> list[Obj]:
        listed = self.custom.list_namespaced_custom_object(
            GROUP, VERSION, self.namespace, HOST_PLURAL, label_selector=f"{APP_LABEL}={app}", _request_timeout=TIMEOUT)
        return sorted(listed.get("items") or [], key=lambda o: o["metadata"]["name"])

    def node_names(self, selector: Mapping[str, str]) -> list[str]:
        text = ",".join(f"{k}={v}" for k, v in sorted(selector.items())) or None
        nodes = self.core.list_node(label_selector=text, _request_timeout=TIMEOUT)
        return sorted(n.metadata.name for n in nodes.items)

    def patch_app_release(self, name: str, patch: Any, *, json_patch: bool = False) -> Obj:
        return self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, APP_PLURAL, name, patch, field_manager=FIELD_MANAGER,
            _content_type="application/json-patch+json" if json_patch else "application/merge-patch+json",
            _request_timeout=TIMEOUT)

    def watch_app_release(self, name: str, resource_version: str, timeout_seconds: int) -> Iterator[Obj]:
        """The AppRelease as it changes, until the server ends the watch (the caller renews it).

        Only the AppRelease is watched: the operator rewrites its status whenever a host's
        phase changes, so its events carry every step of a rollout."""
        resp = self.custom.list_namespaced_custom_object(
            GROUP, VERSION, self.namespace, APP_PLURAL, field_selector=f"metadata.name={name}", watch=True,
            resource_version=resource_version, allow_watch_bookmarks=True, timeout_seconds=timeout_seconds,
            _preload_content=False, _request_timeout=(10.0, timeout_seconds + 30.0))
        try:
            for line in iter_resp_lines(resp):
                if not line.strip():
                    continue
                event = json.loads(line)
                if event["type"] == "ERROR":
                    raise ApiException(status=event["object"].get("code", 0), reason=event["object"].get("message"))
                if event["type"] in ("ADDED", "MODIFIED"):
                    yield event["object"]
                elif event["type"] == "DELETED":
                    raise NotFound(f"AppRelease {name} was deleted")
        finally:
            resp.close()
            resp.release_conn()

    def argocd_application(self, tracked: str) -> Obj | None:
        """Argo CD's Application named by a tracking id, best effort (None when not readable:
        the user may well have no right to read Argo CD's namespace)."""
        namespace, _, name = tracked.partition("_") if "_" in tracked else ("argocd", "", tracked)
        try:
            return self.custom.get_namespaced_custom_object("argoproj.io", "v1alpha1", namespace, "applications",
                                                            name, _request_timeout=TIMEOUT)
        except (ApiException, OSError):
            return None
