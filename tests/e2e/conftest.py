"""Fixtures of the e2e level: the real control plane with apprelease's CRDs installed."""

from __future__ import annotations

import pytest

from apprelease.api import models
from support.argocd import argocd  # noqa: F401 - the session fixture (GitOps tests)
from support.cluster import wait_for_crd
from support.manifests import ROOT


@pytest.fixture(scope="session")
def cluster(control_plane):
    """The session's control plane with crds/ applied, established and listable."""
    control_plane.kubectl("apply", "-f", str(ROOT / "crds"))
    for plural in ("appreleases", "hostreleases"):
        wait_for_crd(control_plane, f"{plural}.{models.GROUP}")
    return control_plane
