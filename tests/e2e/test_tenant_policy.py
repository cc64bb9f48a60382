"""The tenant admission policy (manifests/tenant-policy.yaml) in a real kube-apiserver.

Covers, with the whole kustomize base installed: each rule refuses a `kubectl apply` with a
message naming the field, the rule's key and the ConfigMap apprelease-system/apprelease-policy,
and allowed values pass — listen ports (default 80, 443, 8000-8999: 22, 7999, 9000 refused; an
admin's "*"), package sources (default any; with allowedIndexes set, indexUrl, the default
index and wheel.url outside the prefixes refused), sdist builds (allowSdist "false" requires
spec.source.onlyBinary), pre-existing users (refused unless preexistingUsers.<namespace>
lists them, for that namespace only); an edit of the ConfigMap takes effect without a
restart; an AppRelease admitted under an older policy can still change its metadata and be
deleted, but not its spec; without the ConfigMap every AppRelease is refused (fails closed);
a typo in the ConfigMap is refused at the edit, naming the key, and valid values pass.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from apprelease.api import models
from support.cluster import wait_for
from support.install import NAMESPACE, POLICY_CONFIGMAP, install
from support.manifests import EXAMPLE

pytestmark = pytest.mark.e2e

POLICY = f"{NAMESPACE}/{POLICY_CONFIGMAP}"
TIMEOUT = 15.0  # the apiserver sees a ConfigMap edit through its informer, within a moment


@pytest.fixture(scope="module")
def installed(control_plane):
    install(control_plane)
    return control_plane


@pytest.fixture
def namespace(installed) -> Iterator[str]:
    name = f"pol-{uuid.uuid4().hex[:8]}"
    installed.kubectl("create", "namespace", name)
    yield name
    installed.kubectl("delete", "appreleases", "--all", "-n", name, "--wait=false", check=False)
    installed.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def params(installed) -> Iterator[Any]:
    """Set keys of the policy's ConfigMap for one test; the shipped data is restored after it."""
    shipped = json.loads(installed.kubectl("get", "configmap", POLICY_CONFIGMAP, "-n", NAMESPACE, "-o", "json").stdout)

    def set_keys(**data: str | None) -> None:
        installed.kubectl("patch", "configmap", POLICY_CONFIGMAP, "-n", NAMESPACE, "--type=merge",
                          "-p", json.dumps({"data": data}))

    yield set_keys
    installed.kubectl("apply", "-f", "-", input=yaml.safe_dump({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": POLICY_CONFIGMAP, "namespace": NAMESPACE}, "data": shipped["data"]}))


def manifest(namespace: str, name: str = "web", **changes: Any) -> str:
    """The example AppRelease with `changes` ('proxy.listenPort': 22; None removes a key)."""
    doc = copy.deepcopy(EXAMPLE)
    doc["metadata"] = {"name": name, "namespace": namespace}
    for path, value in changes.items():
        *parents, leaf = path.split(".")
        node = doc["spec"]
        for key in parents:
            node = node.setdefault(key, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return yaml.safe_dump(doc)


def apply(cp, namespace: str, name: str = "web", **changes: Any):
    return cp.kubectl("apply", "-f", "-", input=manifest(namespace, name, **changes), check=False)


def refused(cp, namespace: str, field: str, *words: str, **changes: Any) -> str:
    """Apply until refused (a ConfigMap edit reaches the apiserver within a moment); the message."""
    seen = {}

    def check() -> bool:
        result = apply(cp, namespace, **changes)
        seen["result"] = result
        if result.returncode == 0:
            cp.kubectl("delete", "ar", "web", "-n", namespace, "--wait=false", check=False)
            return False
        return True

    wait_for(check, TIMEOUT, lambda: f"accepted: {seen['result'].stdout}", interval=0.5)
    message = seen["result"].stderr
    assert "apprelease-tenant-policy" in message and POLICY in message, message
    assert field in message, message
    for word in words:
        assert word in message, message
    return message


def allowed(cp, namespace: str, name: str = "web", **changes: Any) -> None:
    """Apply until admitted (after a ConfigMap edit), then delete it again."""
    seen = {}

    def check() -> bool:
        seen["result"] = apply(cp, namespace, name, **changes)
        return seen["result"].returncode == 0

    wait_for(check, TIMEOUT, lambda: f"refused: {seen['result'].stderr}", interval=0.5)
    cp.kubectl("delete", "ar", name, "-n", namespace, "--wait=false")


# ----- listen ports


@pytest.mark.parametrize("port", [80, 443, 8000, 8080, 8999])
def test_default_ports_pass(installed, namespace, port):
    allowed(installed, namespace, **{"proxy.listenPort": port})


@pytest.mark.parametrize("port", [22, 7999, 9000, 5432])
def test_other_ports_are_refused_naming_the_field_and_the_policy(installed, namespace, port):
    message = refused(installed, namespace, "spec.proxy.listenPort", f"{port} is not allowed",
                      "listenPorts", "80,443,8000-8999", **{"proxy.listenPort": port})
    if port == 22:
        print(f"\n$ kubectl apply -f web.yaml    # listenPort: 22\n{message}")


def test_admins_change_the_ports_without_a_restart(installed, namespace, params):
    params(listenPorts="22, 9000-9010")
    refused(installed, namespace, "spec.proxy.listenPort", "22, 9000-9010", **{"proxy.listenPort": 8080})
    allowed(installed, namespace, **{"proxy.listenPort": 9005})
    params(listenPorts="*")
    allowed(installed, namespace, **{"proxy.listenPort": 5432})


# ----- package sources


def test_any_index_by_default(installed, namespace):
    allowed(installed, namespace, **{"source.indexUrl": "https://anything.example/simple/"})
    allowed(installed, namespace, **{"source.indexUrl": None})


def test_allowed_indexes_are_prefixes_of_index_and_wheel_urls(installed, namespace, params):
    params(allowedIndexes="https://pypi.internal/, https://mirror.internal/simple/")
    message = refused(installed, namespace, "spec.source.indexUrl", "http://127.0.0.1:8765/simple/",
                      "allowedIndexes")
    print(f"\n$ kubectl apply -f web.yaml    # indexUrl outside allowedIndexes\n{message}")
    refused(installed, namespace, "spec.source.indexUrl", "https://pypi.org/simple/ (the default index)",
            **{"source.indexUrl": None})
    allowed(installed, namespace, **{"source.indexUrl": "https://pypi.internal/simple/"})
    allowed(installed, namespace, **{"source.indexUrl": "https://mirror.internal/simple/"})
    wheel = {"url": "https://files.example/web-1.0-py3-none-any.whl", "sha256": "0" * 64}
    refused(installed, namespace, "spec.source.wheel.url", "https://files.example/", "allowedIndexes",
            **{"source.indexUrl": "https://pypi.internal/simple/", "source.wheel": wheel})
    allowed(installed, namespace, **{"source.indexUrl": "https://pypi.internal/simple/",
                                     "source.wheel": {**wheel, "url": "https://pypi.internal/f/web-1.0-py3-none-any.whl"}})


# ----- sdist builds


def test_sdists_allowed_by_default(installed, namespace):
    allowed(installed, namespace)


def test_no_sdists_requires_only_binary(installed, namespace, params):
    params(allowSdist="false")
    message = refused(installed, namespace, "spec.source.onlyBinary", "must be true", "allowSdist")
    print(f"\n$ kubectl apply -f web.yaml    # allowSdist: \"false\"\n{message}")
    if "only_binary" in models.Source.model_fields:  # the field the build sandbox adds
        allowed(installed, namespace, **{"source.onlyBinary": True})
        refused(installed, namespace, "spec.source.onlyBinary", **{"source.onlyBinary": False})


# ----- pre-existing users


def test_preexisting_users_only_where_listed(installed, namespace, params):
    message = refused(installed, namespace, "spec.user", "www-data", f"preexistingUsers.{namespace}",
                      user="www-data")
    print(f"\n$ kubectl apply -f web.yaml    # user: www-data\n{message}")
    refused(installed, namespace, "spec.user", "postgres", user="postgres")
    allowed(installed, namespace, user="web")  # an app user apprelease creates
    allowed(installed, namespace, user=None)  # empty: derived per (namespace, app), never a system account
    params(**{f"preexistingUsers.{namespace}": "www-data, nobody"})
    allowed(installed, namespace, user="www-data")
    allowed(installed, namespace, user="nobody")
    refused(installed, namespace, "spec.user", "postgres", user="postgres")
    other = f"{namespace}-other"
    installed.kubectl("create", "namespace", other)
    try:
        refused(installed, other, "spec.user", f"preexistingUsers.{other}", user="www-data")
    finally:
        installed.kubectl("delete", "namespace", other, "--wait=false")


# ----- updates, deletion, a missing ConfigMap


def test_admitted_apps_keep_their_metadata_and_deletion_but_not_spec_changes(installed, namespace, params):
    allowed(installed, namespace, name="kept", **{"proxy.listenPort": 8080})  # created, then deleted again
    assert apply(installed, namespace, "kept", **{"proxy.listenPort": 8080}).returncode == 0
    params(listenPorts="80")
    refused_update = {}

    def spec_refused() -> bool:
        result = apply(installed, namespace, "kept", **{"proxy.listenPort": 8080, "version": "1.0.1"})
        refused_update["stderr"] = result.stderr
        return result.returncode != 0

    wait_for(spec_refused, TIMEOUT, "a spec change under the tightened policy was admitted", interval=0.5)
    assert "spec.proxy.listenPort" in refused_update["stderr"]
    installed.kubectl("label", "ar", "kept", "-n", namespace, "team=web")  # no spec change: admitted
    installed.kubectl("delete", "ar", "kept", "-n", namespace, "--timeout=30s")


def test_without_its_configmap_the_policy_refuses_everything(installed, namespace, params):
    installed.kubectl("delete", "configmap", POLICY_CONFIGMAP, "-n", NAMESPACE)
    seen = {}

    def denied() -> bool:
        seen["result"] = apply(installed, namespace)
        if seen["result"].returncode == 0:
            installed.kubectl("delete", "ar", "web", "-n", namespace, "--wait=false")
        return seen["result"].returncode != 0

    wait_for(denied, TIMEOUT, "admitted without the policy's ConfigMap", interval=0.5)
    assert "apprelease-tenant-policy" in seen["result"].stderr, seen["result"].stderr
    print(f"\n$ kubectl apply -f web.yaml    # no ConfigMap apprelease-policy\n{seen['result'].stderr}")
    # `params` puts the shipped ConfigMap back


@pytest.mark.parametrize(("key", "value"), [
    ("listenPorts", "80,http"), ("listenPorts", "80-"), ("listenPorts", ""),
    ("allowedIndexes", "pypi.internal"), ("allowSdist", "no"),
])
def test_a_typo_in_the_configmap_is_refused_naming_the_key(installed, params, key, value):
    result = installed.kubectl("patch", "configmap", POLICY_CONFIGMAP, "-n", NAMESPACE, "--type=merge",
                               "-p", json.dumps({"data": {key: value}}), check=False)
    assert result.returncode != 0, result.stdout
    assert "apprelease-policy-params" in result.stderr and f"{key}:" in result.stderr, result.stderr
    if key == "listenPorts" and value == "80,http":
        print(f"\n$ kubectl -n {NAMESPACE} edit configmap {POLICY_CONFIGMAP}    # listenPorts: 80,http\n{result.stderr}")


@pytest.mark.parametrize(("key", "value"), [
    ("listenPorts", " 80 , 8000 - 8100 "), ("listenPorts", "*"), ("allowedIndexes", ""), ("allowedIndexes", "*"),
    ("allowedIndexes", "https://a.example/, http://b.example/simple/"), ("allowSdist", "False"),
])
def test_valid_configmap_values_pass(installed, params, key, value):
    params(**{key: value})

