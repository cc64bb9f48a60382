"""Values from Secrets and ConfigMaps on one host, through the standalone agent (`agent reconcile -f`).

Covers: env valueFrom (secretKeyRef, configMapKeyRef) and envFrom reach the app's process
environment exactly (read from /proc as root); a new values digest rotates to a new revision
whose processes have the new value; a missing Secret fails before anything moves
(SecretNotFound) and the serving revision keeps serving; no value is in the CLI's output, and
every file under the agent root that holds one (in any encoding) is root-owned 0600 under the
supervisor's 0700 directory — spec.json, state.json, release.json, logs and nginx hold none.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from apprelease.api import resolve
from apprelease.api.models import HostRelease
from apprelease.host.layout import app_key, watcher_name
from support.hosts import SERVER_NAME, app_release, make_host
from support.leaks import process_environment, scan_tree
from support.nginx import free_port, http_get

pytestmark = pytest.mark.integration

KEY = app_key("default", "webxample")
PASSWORDS = ("Pw-one-4f1c9a2e", "Pw-two-77d0b3c8")


def secret_doc(password: str) -> dict:
    url = f"postgres://app:{password}@db.internal/app"
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db", "namespace": "default"},
            "data": {"url": base64.b64encode(url.encode()).decode()}}


CONFIG_MAP = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings", "namespace": "default"},
              "data": {"LOG_LEVEL": "debug", "FEATURE_X": "on"}}
ENV = [{"name": "WEBXAMPLE_GREETING", "value": "hi"},
       {"name": "DATABASE_URL", "valueFrom": {"secretKeyRef": {"name": "db", "key": "url"}}},
       {"name": "LOG_LEVEL", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "LOG_LEVEL"}}}]


def release(index_url: str, port: int, digest: str) -> HostRelease:
    app = app_release(index_url, "1.0.0", port=port, extra={
        "env": ENV, "envFrom": [{"configMapRef": {"name": "settings"}, "prefix": "CFG_"}]})
    spec = resolve.host_release_spec("default", "webxample", "host-a", app.spec, values_digest=digest)
    return HostRelease(metadata=resolve.host_release(app, "host-a").metadata, spec=spec)


def reconcile(root: Path, docs: list[dict]) -> subprocess.CompletedProcess:
    manifest = root.parent / "docs.yaml"
    manifest.write_text(yaml.safe_dump_all(docs))
    return subprocess.run([sys.executable, "-m", "apprelease.cli", "agent", "reconcile", "-f", str(manifest),
                           "--root", str(root), "--listen-address", "127.0.0.1", "-o", "json"],
                          capture_output=True, text=True, timeout=300)


def test_values_reach_only_the_app_environment_rotate_and_a_missing_secret_moves_nothing(short_tmp, package_index):
    root, port = short_tmp / "host-s", free_port()
    host = make_host(root)
    outputs = []
    try:
        first = release(package_index.url, port, "v" + "1" * 20)
        out = reconcile(root, [first.wire(), secret_doc(PASSWORDS[0]), CONFIG_MAP])
        outputs.append(out.stdout + out.stderr)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["status"]["phase"] == "Ready"
        env = process_environment(host.supervisor.main_pid(watcher_name(KEY, first.spec.revision)))
        assert env["DATABASE_URL"] == f"postgres://app:{PASSWORDS[0]}@db.internal/app"
        assert (env["LOG_LEVEL"], env["CFG_LOG_LEVEL"], env["CFG_FEATURE_X"]) == ("debug", "debug", "on")
        assert env["WEBXAMPLE_GREETING"] == "hi"

        rotated = release(package_index.url, port, "v" + "2" * 20)
        assert rotated.spec.revision != first.spec.revision and rotated.spec.build_id == first.spec.build_id
        out = reconcile(root, [rotated.wire(), secret_doc(PASSWORDS[1]), CONFIG_MAP])
        outputs.append(out.stdout + out.stderr)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["plan"][-1:] != []  # it rotated
        env = process_environment(host.supervisor.main_pid(watcher_name(KEY, rotated.spec.revision)))
        assert env["DATABASE_URL"] == f"postgres://app:{PASSWORDS[1]}@db.internal/app"
        assert watcher_name(KEY, first.spec.revision) not in host.supervisor.watchers()

        gone = release(package_index.url, port, "v" + "3" * 20)
        out = reconcile(root, [gone.wire(), CONFIG_MAP])  # the Secret is not there
        outputs.append(out.stdout + out.stderr)
        status = json.loads(out.stdout)["status"]
        assert status["phase"] == "Failed" and status["reason"] == "SecretNotFound", status
        assert "Secret default/db not found" in status["message"]
        assert watcher_name(KEY, gone.spec.revision) not in host.supervisor.watchers()
        resp = http_get(port, "/version", SERVER_NAME)
        assert resp.status == 200 and status["servingRevision"] == rotated.spec.revision

        for text in outputs:
            assert not any(p in text for p in PASSWORDS), "a value in the agent's output"
        hits = scan_tree(root, PASSWORDS)
        assert hits, "the watcher files must hold the values (the supervisor restarts the app without the agent)"
        for hit in hits:
            assert hit.private, f"{hit.path} holds a value but is mode {hit.mode:o}, uid {hit.uid}"
            assert hit.path.is_relative_to(host.layout.root / "supervisor"), hit.path
    finally:
        subprocess.run([sys.executable, "-m", "apprelease.cli", "agent", "stop", "--root", str(root),
                        "--listen-address", "127.0.0.1"], capture_output=True, timeout=120)


INDEX_PASSWORD = "ix-9c2f7e41b0"


def test_private_index_with_basic_auth_credentials_used_for_the_build_only(short_tmp, package_index):
    """A basic-auth index: the build fails clearly without credentials, works with
    source.indexCredentials, and afterwards the password is in no file, status or log."""
    from apprelease.host import core
    from support.hosts import running_host
    from support.pypi import LocalIndex

    private = LocalIndex(package_index.index.directory, basic_auth=("builder", INDEX_PASSWORD)).start()
    port = free_port()
    source = {"requirements": ["webxample==1.0.0"], "indexUrl": private.url}

    def release_with(src: dict) -> HostRelease:
        return resolve.host_release(app_release(private.url, "1.0.0", port=port, extra={"source": src}), "host-a")

    secrets = {}

    def values(kind, namespace, name):
        return secrets.get((kind, namespace, name))

    try:
        with running_host(short_tmp / "host-p") as host:
            without = core.reconcile(host, release_with(source), values=values)
            assert without.status.phase == "Failed"
            assert "401" in (without.status.message or "") + (without.status.log_tail or ""), without.status

            with_creds = release_with({**source, "indexCredentials": {"secretName": "index"}})
            assert with_creds.spec.build_id == release_with(source).spec.build_id  # credentials are not the venv
            missing = core.reconcile(host, with_creds, values=values)
            assert missing.status.reason == "SecretNotFound", missing.status
            assert "source.indexCredentials: Secret default/index not found" in missing.status.message

            secrets[("Secret", "default", "index")] = {"username": "builder", "password": INDEX_PASSWORD}
            built = core.reconcile(host, with_creds, values=values)
            assert built.status.phase == "Ready", built.status.message
            assert http_get(port, "/version", SERVER_NAME).json()["version"] == "1.0.0"
            assert any(r.status == 200 and r.path.startswith("/files/") for r in private.requests)
            for result in (without, missing, built):
                assert INDEX_PASSWORD not in result.status.model_dump_json()
            assert scan_tree(host.layout.root, [INDEX_PASSWORD]) == [], "the password is on disk after the build"
    finally:
        private.stop()
