"""Which server packages a venv holds, read from dist-info metadata (host/builder.py).

Covers: versions come from METADATA, names are matched PEP 503-normalized (uvicorn_worker's
dist-info is uvicorn-worker), an absent package is None, a similarly named one is not taken
for it; release.json's record wins, and a release built before the record existed is
detected from its venv. Files in a temp dir only: nothing is installed or run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from apprelease.host.builder import detect_server_software, installed_version, server_software
from apprelease.host.servers import ServerSoftware

pytestmark = pytest.mark.unit


def dist_info(site: Path, dirname: str, name: str, version: str) -> None:
    info = site / f"{dirname}.dist-info"
    info.mkdir(parents=True)
    # A long description after the headers, as real METADATA files have.
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n\nVersion: 0.0 in prose\n")


@pytest.fixture
def site(tmp_path: Path) -> Path:
    site = tmp_path / "venv" / "lib" / "python3.11" / "site-packages"
    dist_info(site, "gunicorn-23.0.0", "gunicorn", "23.0.0")
    dist_info(site, "uvicorn_worker-0.4.0", "uvicorn-worker", "0.4.0")
    dist_info(site, "gunicorn_extras-1.0", "gunicorn-extras", "1.0")
    return site


def test_versions_from_metadata_with_normalized_names(site: Path) -> None:
    assert installed_version(site, "gunicorn") == "23.0.0"
    assert installed_version(site, "uvicorn-worker") == installed_version(site, "Uvicorn_Worker") == "0.4.0"
    assert installed_version(site, "uvicorn") is None
    assert detect_server_software(site) == ServerSoftware(gunicorn="23.0.0", uvicorn=None, uvicorn_worker="0.4.0")
    dist_info(site, "setuptools-81.0.0", "setuptools", "81.0.0")
    assert detect_server_software(site).setuptools == "81.0.0"


def test_release_record_wins_and_old_releases_are_detected(tmp_path: Path, site: Path) -> None:
    release = tmp_path
    (release / "site-packages").symlink_to(site.relative_to(release))
    (release / "release.json").write_text(json.dumps({"buildId": "b1"}))
    assert server_software(release) == ServerSoftware("23.0.0", None, "0.4.0")
    (release / "release.json").write_text(json.dumps({"gunicorn": "22.0.0", "uvicorn": None, "uvicornWorker": None}))
    assert server_software(release) == ServerSoftware("22.0.0")
