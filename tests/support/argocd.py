"""Pytest pieces for GitOps tests: a real Argo CD for the session, and reading its Applications.

Who uses it: tests/e2e/conftest.py imports the session fixture `argocd` (so the Argo CD,
started once, serves every e2e test that asks for it); tests/e2e/test_gitops.py uses the
helpers to refresh an Application and read its sync state and per-resource health. The
processes themselves are hack/argocd.py's.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from argocd import NAMESPACE, ArgoCD
from controlplane import ControlPlane


@pytest.fixture(scope="session")
def argocd(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArgoCD]:
    """Argo CD installed into the session's control plane and running; stopped at the end.

    The components die with the pytest process even if it is killed before this finalizer
    runs. Their logs stay in the temp dir for debugging; checkouts and caches do not.
    """
    argo = ArgoCD(tmp_path_factory.mktemp("argocd"), control_plane, die_with_parent=True)
    argo.start()  # on failure start() stops what it started before raising
    try:
        yield argo
    finally:
        argo.stop()
        shutil.rmtree(argo.state_dir / "tmp")


def refresh(cp: ControlPlane, name: str, kind: str = "normal") -> None:
    """Ask the controller to compare with git now (~1 s) rather than at its next poll (minutes).

    `hard` also drops the repo-server's manifest cache and re-reads argocd-cm's health checks.
    """
    cp.kubectl("annotate", "application", name, "-n", NAMESPACE, f"argocd.argoproj.io/refresh={kind}",
               "--overwrite")


def application(cp: ControlPlane, name: str) -> dict[str, Any]:
    return json.loads(cp.kubectl("get", "application", name, "-n", NAMESPACE, "-o", "json").stdout)


def resource_health(app: dict[str, Any], kind: str, name: str) -> dict[str, str]:
    """`status.resources[].health` of one managed resource ({} while Argo CD has not assessed it)."""
    for res in (app.get("status") or {}).get("resources", []):
        if res.get("kind") == kind and res.get("name") == name:
            return res.get("health") or {}
    return {}


def synced_revision(app: dict[str, Any]) -> str | None:
    """The git commit the Application is Synced to, once the last sync of it Succeeded."""
    status = app.get("status") or {}
    sync = status.get("sync") or {}
    operation = status.get("operationState") or {}
    if sync.get("status") != "Synced" or operation.get("phase") != "Succeeded":
        return None
    if (operation.get("syncResult") or {}).get("revision") != sync.get("revision"):
        return None  # synced by comparison, but the last sync operation was of another commit
    return sync.get("revision")


def sync_failure(app: dict[str, Any]) -> str:
    """Why the last sync failed to apply something ("" if it did not): e.g. an object the
    apiserver rejected. Argo CD retries such a sync, but a test should not wait for that."""
    operation = (app.get("status") or {}).get("operationState") or {}
    failed = [f"{r.get('kind')}/{r.get('name')}: {r.get('message')}"
              for r in (operation.get("syncResult") or {}).get("resources", []) if r.get("status") == "SyncFailed"]
    if operation.get("phase") in ("Failed", "Error"):
        failed.insert(0, operation.get("message", operation["phase"]))
    return "; ".join(failed)
