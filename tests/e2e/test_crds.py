"""The generated CRDs in a real kube-apiserver (built from Go modules, see hack/).

Covers: the CRDs install and become Established; the example manifest passes
`kubectl apply --dry-run=server` and a real create, with server-side defaults; pydantic and
the apiserver agree on every default (round trip); each bad manifest of the shared table is
rejected by the apiserver with a message naming the field; printer columns and the status
subresource; deleting an AppRelease garbage-collects the HostReleases it owns.
"""

from __future__ import annotations

import json
import uuid

import pytest
import yaml

from apprelease.api import models
from support.cluster import wait_for
from support.manifests import BAD, EXAMPLE, with_change

pytestmark = pytest.mark.e2e

MINIMAL_SPEC = {
    "version": "0.1",
    "source": {"requirements": ["webxample==1.0.0"]},
    "entrypoint": "webxample.app:application",
    "user": "webxample",
    "proxy": {"serverNames": ["webxample.local"]},
}


@pytest.fixture
def namespace(cluster):
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false")


def _manifest(doc: dict, name: str, namespace: str) -> str:
    doc = {**doc, "metadata": {"name": name, "namespace": namespace}}
    return yaml.safe_dump(doc)


def _get(cluster, kind: str, name: str, namespace: str) -> dict:
    out = cluster.kubectl("get", kind, name, "-n", namespace, "-o", "json").stdout
    return json.loads(out)


def test_crds_are_established(cluster):
    out = cluster.kubectl("get", "crd", "-o", "json").stdout
    crds = {c["metadata"]["name"]: c for c in json.loads(out)["items"]}
    for plural in ("appreleases", "hostreleases"):
        conditions = {c["type"]: c["status"] for c in crds[f"{plural}.{models.GROUP}"]["status"]["conditions"]}
        assert conditions["Established"] == "True"
        assert conditions["NamesAccepted"] == "True"


def test_example_passes_server_dry_run_and_create(cluster, namespace):
    text = _manifest(EXAMPLE, "webxample", namespace)
    dry = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=text)
    assert "(server dry run)" in dry.stdout
    cluster.kubectl("apply", "-f", "-", input=text)
    stored = _get(cluster, "apprelease", "webxample", namespace)
    assert stored["spec"]["server"]["timeoutSeconds"] == 30  # filled in by the server
    assert stored["spec"]["strategy"]["progressDeadlineSeconds"] == 600


@pytest.mark.parametrize("spec", [MINIMAL_SPEC, EXAMPLE["spec"]], ids=["minimal", "example"])
def test_pydantic_and_server_agree_on_defaults(cluster, namespace, spec):
    cluster.kubectl("create", "-f", "-", input=_manifest({**EXAMPLE, "spec": spec}, "roundtrip", namespace))
    stored = _get(cluster, "apprelease", "roundtrip", namespace)["spec"]
    assert stored == models.AppReleaseSpec.model_validate(spec).wire()
    assert models.AppReleaseSpec.model_validate(stored).wire() == stored


@pytest.mark.parametrize(("path", "value", "field", "words"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_apiserver_rejects_bad_manifest_naming_field(cluster, namespace, path, value, field, words):
    text = _manifest(with_change(path, value), "bad", namespace)
    result = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=text, check=False)
    assert result.returncode != 0, f"accepted: {result.stdout}"
    message = result.stderr
    assert field in message, message
    if "unknown field" not in words:
        assert words.lower() in message.lower(), message


def test_printer_columns_and_status_subresource(cluster, namespace):
    cluster.kubectl("apply", "-f", "-", input=_manifest(EXAMPLE, "webxample", namespace))
    status = {"status": {"ready": "1/2", "updatedHosts": 2, "desiredHosts": 2, "readyHosts": 1}}
    cluster.kubectl("patch", "ar", "webxample", "-n", namespace, "--subresource=status",
                    "--type=merge", "-p", json.dumps(status))
    table = cluster.kubectl("get", "ar", "-n", namespace).stdout.splitlines()
    assert table[0].split() == ["NAME", "VERSION", "READY", "UP-TO-DATE", "AGE"]
    assert table[1].split()[:4] == ["webxample", "1.0.0", "1/2", "2"]
    # a spec change through the status subresource is ignored, as Kubernetes does
    cluster.kubectl("patch", "ar", "webxample", "-n", namespace, "--subresource=status",
                    "--type=merge", "-p", json.dumps({"spec": {"version": "9"}}))
    assert _get(cluster, "ar", "webxample", namespace)["spec"]["version"] == "1.0.0"
    # and short names and the category work
    assert "webxample" in cluster.kubectl("get", "apprelease", "-n", namespace, "-o", "name").stdout


def test_deleting_the_owner_garbage_collects_host_releases(cluster, namespace):
    cluster.kubectl("apply", "-f", "-", input=_manifest(EXAMPLE, "webxample", namespace))
    owner = _get(cluster, "ar", "webxample", namespace)
    host_spec = {
        **EXAMPLE["spec"], "app": "webxample", "node": "host-a", "buildId": "b1", "revision": "r1",
    }
    for key in ("hosts", "strategy", "paused"):
        host_spec.pop(key, None)
    host = {
        "apiVersion": models.API_VERSION, "kind": "HostRelease",
        "metadata": {
            "name": "webxample-host-a", "namespace": namespace,
            "labels": {models.NODE_LABEL: "host-a", models.APP_LABEL: "webxample"},
            "ownerReferences": [{
                "apiVersion": models.API_VERSION, "kind": "AppRelease", "name": "webxample",
                "uid": owner["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True,
            }],
        },
        "spec": host_spec,
    }
    models.HostRelease.model_validate(host)  # the same object is valid for pydantic too
    cluster.kubectl("create", "-f", "-", input=yaml.safe_dump(host))
    assert "webxample-host-a" in cluster.kubectl("get", "hr", "-n", namespace, "-o", "name").stdout
    cluster.kubectl("delete", "ar", "webxample", "-n", namespace)
    wait_for(
        lambda: cluster.kubectl("get", "hr", "-n", namespace, "-o", "name").stdout.strip() == "",
        timeout=30, message="HostRelease was not garbage-collected after its AppRelease was deleted",
    )
