"""The pydantic models: what a user may write, and what they are told when it is wrong.

Covers: the example manifest is valid; defaults; each validation rule rejects with a message
naming the field and what is allowed; release identity (buildId/revision) reacts to exactly
the inputs it should; the generated CRDs are current.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from apprelease.api import crdgen, identity
from apprelease.api.manifests import ManifestError, load_resources, parse_resource
from apprelease.api.models import AppReleaseSpec
from support.manifests import BAD, EXAMPLE, with_change

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def test_example_is_valid():
    (res,) = load_resources(yaml.safe_dump(EXAMPLE))
    assert res.spec.user == "webxample"
    assert res.spec.server.workers == 2


def test_defaults_are_sane():
    spec = AppReleaseSpec.model_validate(
        {"version": "1", "source": {"requirements": ["a==1"]}, "entrypoint": "a:b", "user": "a",
         "proxy": {"serverNames": ["a.example"]}}
    )
    assert (spec.server.workers, spec.revision_history_limit, spec.strategy.max_unavailable) == (2, 5, 1)
    assert spec.health_check.path == "/healthz" and spec.proxy.listen_port == 80
    assert spec.hosts.node_selector == {"apprelease.dev/host": "true"}


@pytest.mark.parametrize(("path", "value", "field", "words"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_manifest_names_field(path, value, field, words):
    with pytest.raises(ManifestError) as info:
        parse_resource(with_change(path, value))
    message = str(info.value)
    assert f"{field}:" in message, message
    assert words.lower() in message.lower(), message


@pytest.mark.parametrize("name", ["webxample.local", "*.example.com", "_", "a-b.c0"])
def test_good_server_names(name):
    parse_resource(with_change("spec.proxy.serverNames", [name]))


@pytest.mark.parametrize("value", [1, 3, "25%", "100%"])
def test_good_max_unavailable(value):
    parse_resource(with_change("spec.strategy.maxUnavailable", value))


def test_build_id_depends_on_venv_inputs_only():
    spec = AppReleaseSpec.model_validate(EXAMPLE["spec"])
    other_version = spec.model_copy(update={"source": spec.source.model_copy(update={"requirements": ["webxample==2.0.0"]})})
    other_python = spec.model_copy(update={"python": "3.12"})
    runtime_only = spec.model_copy(update={"server": spec.server.model_copy(update={"workers": 3})})
    proxy_only = spec.model_copy(update={"proxy": spec.proxy.model_copy(update={"listen_port": 9090})})
    label_only = spec.model_copy(update={"version": "1.0.0-relabel"})
    b = identity.build_id
    assert b(spec) != b(other_version) and b(spec) != b(other_python)
    assert b(spec) == b(runtime_only) == b(proxy_only) == b(label_only)


def test_revision_depends_on_runtime_not_proxy():
    spec = AppReleaseSpec.model_validate(EXAMPLE["spec"])
    r = identity.revision
    runtime = spec.model_copy(update={"server": spec.server.model_copy(update={"workers": 3})})
    env = spec.model_copy(update={"env": []})
    proxy_only = spec.model_copy(update={"proxy": spec.proxy.model_copy(update={"listen_port": 9090})})
    assert r(spec) != r(runtime) and r(spec) != r(env)
    assert r(spec) == r(proxy_only)
    assert r(spec) == r(AppReleaseSpec.model_validate(copy.deepcopy(EXAMPLE["spec"])))


@pytest.mark.parametrize("worker_class", ["sync", "uvicorn"])
def test_revision_depends_on_the_worker_class(worker_class):
    spec = AppReleaseSpec.model_validate(EXAMPLE["spec"])
    other = spec.model_copy(update={"server": spec.server.model_copy(update={"worker_class": worker_class})})
    assert identity.revision(spec) != identity.revision(other)
    assert identity.build_id(spec) == identity.build_id(other)


def test_default_worker_class_keeps_the_revisions_from_before_the_field():
    # Computed before workerClass existed: an upgrade of apprelease must not rotate every app.
    assert EXAMPLE["spec"]["server"].get("workerClass") is None
    assert identity.revision(AppReleaseSpec.model_validate(EXAMPLE["spec"])) == "r764069a6c9d"


def test_crds_are_generated_from_models():
    for name, crd in crdgen.crds().items():
        path = ROOT / "crds" / name
        assert path.exists(), f"{path} missing: run `make crds`"
        assert path.read_text() == crdgen.render(crd), f"{path} is stale: run `make crds`"
