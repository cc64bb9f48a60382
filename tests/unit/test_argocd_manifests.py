"""The Argo CD manifests under manifests/argocd.

Aspects: argocd-cm-patch.yaml is a ConfigMap patch for argocd/argocd-cm whose health key
embeds manifests/argocd/health.lua byte for byte (the Lua file is the single source;
hack/argocd-cm-patch regenerates the patch and agrees it is current); application.yaml is
an Argo CD Application syncing manifests/examples automatically with selfHeal, and that path
holds AppReleases. The Lua's behaviour is tested in gopher-lua (tests/go/argocdhealth).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
ARGOCD = ROOT / "manifests" / "argocd"
HEALTH_KEY = "resource.customizations.health.apprelease.dev_AppRelease"


def test_cm_patch_embeds_health_lua_exactly() -> None:
    patch = yaml.safe_load((ARGOCD / "argocd-cm-patch.yaml").read_text())
    assert (patch["apiVersion"], patch["kind"]) == ("v1", "ConfigMap")
    assert patch["metadata"] == {"name": "argocd-cm", "namespace": "argocd"}
    assert list(patch["data"]) == [HEALTH_KEY]
    assert patch["data"][HEALTH_KEY] == (ARGOCD / "health.lua").read_text()


def test_cm_patch_is_what_the_generator_writes() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "hack" / "argocd-cm-patch"), "--check"],
                            capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 0, result.stderr


def test_application_syncs_the_examples_with_self_heal() -> None:
    app = yaml.safe_load((ARGOCD / "application.yaml").read_text())
    assert (app["apiVersion"], app["kind"]) == ("argoproj.io/v1alpha1", "Application")
    assert app["metadata"]["namespace"] == "argocd"
    source = app["spec"]["source"]
    assert source["path"] == "manifests/examples" and source["repoURL"] and source["targetRevision"]
    assert app["spec"]["syncPolicy"]["automated"] == {"prune": True, "selfHeal": True}
    assert app["spec"]["destination"]["server"] == "https://kubernetes.default.svc"
    kinds = [doc["kind"] for f in sorted((ROOT / source["path"]).glob("*.yaml"))
             for doc in yaml.safe_load_all(f.read_text()) if doc]
    assert kinds and set(kinds) == {"AppRelease"}, kinds
