"""Values from Secrets and ConfigMaps, pure: api/envrefs.py, controller/grants.py, identity.

Covers: resolution with core/v1 semantics (envFrom then env, env wins, prefixes, optional
objects and keys, invalid keys skipped, SecretNotFound naming namespace/name/key, unusable
values named by key and never shown); the keyed digest (changes with a value and with the key,
never holds a value, none without references); the revision follows the digest, the buildId
ignores indexCredentials, and revisions of specs without references are unchanged; the
agents' Role names exactly the referenced objects and never has an empty resourceNames;
the referenced objects include the TLS Secret and the index credentials.
"""

from __future__ import annotations

import pytest

from apprelease.api import envrefs, identity, resolve
from apprelease.api.models import AppReleaseSpec
from apprelease.controller import grants
from support.manifests import EXAMPLE

pytestmark = pytest.mark.unit

SECRET_VALUE = "s3cr3t-Pa55"


def spec_with(**changes) -> AppReleaseSpec:
    return AppReleaseSpec.model_validate({**EXAMPLE["spec"], **changes})


def lookup_from(objects):
    return lambda kind, name: objects.get((kind, name))


OBJECTS = {
    ("Secret", "db"): {"url": f"postgres://app:{SECRET_VALUE}@db/app", "password": SECRET_VALUE},
    ("ConfigMap", "settings"): {"LOG_LEVEL": "debug", "MODE": "web", "not-a-name": "x"},
}
DB_URL = {"name": "DATABASE_URL", "valueFrom": {"secretKeyRef": {"name": "db", "key": "url"}}}
LOG_LEVEL = {"name": "LOG_LEVEL", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "LOG_LEVEL"}}}


def test_env_resolves_literals_and_references():
    spec = spec_with(env=[{"name": "PLAIN", "value": "1"}, DB_URL, LOG_LEVEL])
    resolved = envrefs.resolve_env(spec, "shop", lookup_from(OBJECTS))
    assert resolved.env == {"PLAIN": "1", "DATABASE_URL": OBJECTS[("Secret", "db")]["url"], "LOG_LEVEL": "debug"}
    assert resolved.referenced == {"DATABASE_URL", "LOG_LEVEL"}


def test_env_from_with_prefix_then_env_wins_and_bad_names_are_skipped():
    spec = spec_with(envFrom=[{"configMapRef": {"name": "settings"}, "prefix": "APP_"}, {"configMapRef": {"name": "settings"}}],
                     env=[{"name": "MODE", "value": "literal"}])
    resolved = envrefs.resolve_env(spec, "shop", lookup_from(OBJECTS))
    assert resolved.env["APP_LOG_LEVEL"] == "debug" and resolved.env["LOG_LEVEL"] == "debug"
    assert resolved.env["MODE"] == "literal" and "MODE" not in resolved.referenced
    assert set(resolved.skipped) == {"APP_not-a-name", "not-a-name"}


@pytest.mark.parametrize(("env", "env_from", "message"), [
    ([DB_URL], [], None),
    ([{"name": "X", "valueFrom": {"secretKeyRef": {"name": "gone", "key": "k"}}}], [], "Secret shop/gone not found"),
    ([{"name": "X", "valueFrom": {"secretKeyRef": {"name": "db", "key": "nokey"}}}], [], "Secret shop/db has no key 'nokey'"),
    ([{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "gone", "key": "k"}}}], [], "ConfigMap shop/gone not found"),
    ([], [{"secretRef": {"name": "gone"}}], "Secret shop/gone not found"),
], ids=["present", "secret-missing", "key-missing", "configmap-missing", "env-from-missing"])
def test_missing_references_name_namespace_name_and_key(env, env_from, message):
    spec = spec_with(env=env, envFrom=env_from)
    if message is None:
        envrefs.resolve_env(spec, "shop", lookup_from(OBJECTS))
        return
    with pytest.raises(envrefs.MissingReference) as caught:
        envrefs.resolve_env(spec, "shop", lookup_from(OBJECTS))
    assert str(caught.value) == message


def test_optional_references_are_left_out():
    spec = spec_with(
        env=[{"name": "A", "valueFrom": {"secretKeyRef": {"name": "gone", "key": "k", "optional": True}}},
             {"name": "B", "valueFrom": {"secretKeyRef": {"name": "db", "key": "nokey", "optional": True}}}],
        envFrom=[{"configMapRef": {"name": "gone", "optional": True}}])
    assert envrefs.resolve_env(spec, "shop", lookup_from(OBJECTS)).env == {}


def test_an_unusable_value_is_named_by_its_key_never_shown():
    objects = {("Secret", "db"): {"url": SECRET_VALUE + "\n"}}
    with pytest.raises(envrefs.UnusableValue) as caught:
        envrefs.resolve_env(spec_with(env=[DB_URL]), "shop", lookup_from(objects))
    assert "'url'" in str(caught.value) and "shop/db" in str(caught.value)
    assert SECRET_VALUE not in str(caught.value)


def test_digest_is_keyed_follows_values_and_holds_none_of_them():
    spec = spec_with(env=[DB_URL])
    one = envrefs.resolve_env(spec, "shop", lookup_from(OBJECTS))
    rotated = envrefs.resolve_env(spec, "shop", lookup_from({("Secret", "db"): {"url": "other"}}))
    d = envrefs.values_digest(b"k" * 32, "shop", "web", one)
    assert d == envrefs.values_digest(b"k" * 32, "shop", "web", one)
    assert d != envrefs.values_digest(b"k" * 32, "shop", "web", rotated)
    assert d != envrefs.values_digest(b"x" * 32, "shop", "web", one), "the key must matter (no offline guessing)"
    assert SECRET_VALUE not in d and len(d) == 1 + envrefs.DIGEST_LENGTH
    assert envrefs.values_digest(b"k", "shop", "web", envrefs.resolve_env(spec_with(), "shop", lookup_from({}))) is None


def test_revision_follows_the_digest_and_specs_without_references_keep_theirs():
    plain = identity.with_user(spec_with(), "shop", "web")
    assert identity.revision(plain) == identity.revision(plain, None)
    assert identity.revision(plain, "vaaaa") != identity.revision(plain, "vbbbb")
    hr = resolve.host_release_spec("shop", "web", "n1", spec_with(env=[DB_URL]), values_digest="vaaaa")
    assert hr.values_digest == "vaaaa" and SECRET_VALUE not in hr.model_dump_json()
    assert hr.wire()["env"] == [{**DB_URL, "value": ""}]  # the reference (value: the CRD's default); no value


def test_build_id_ignores_index_credentials_but_not_the_index():
    base = spec_with(source={"requirements": ["a==1"], "indexUrl": "http://127.0.0.1:1/simple/"})
    with_creds = spec_with(source={"requirements": ["a==1"], "indexUrl": "http://127.0.0.1:1/simple/",
                                   "indexCredentials": {"secretName": "index"}})
    other_index = spec_with(source={"requirements": ["a==1"], "indexUrl": "http://127.0.0.1:2/simple/"})
    assert identity.build_id(base) == identity.build_id(with_creds) != identity.build_id(other_index)


def test_referenced_objects_include_tls_and_index_credentials():
    spec = spec_with(env=[DB_URL, LOG_LEVEL], envFrom=[{"secretRef": {"name": "extra"}}],
                     proxy={**EXAMPLE["spec"]["proxy"], "tls": {"secretName": "web-tls"}},
                     source={"requirements": ["a==1"], "indexUrl": "http://127.0.0.1:1/simple/",
                             "indexCredentials": {"secretName": "index"}})
    assert envrefs.referenced_objects(spec) == {
        envrefs.ObjectRef("Secret", "db"), envrefs.ObjectRef("ConfigMap", "settings"),
        envrefs.ObjectRef("Secret", "extra"), envrefs.ObjectRef("Secret", "web-tls"),
        envrefs.ObjectRef("Secret", "index")}
    assert envrefs.env_objects(spec) == {envrefs.ObjectRef("Secret", "db"), envrefs.ObjectRef("ConfigMap", "settings"),
                                         envrefs.ObjectRef("Secret", "extra")}


@pytest.mark.parametrize(("refs", "rules"), [
    ([], None),
    ([("Secret", "db")], [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["db"], "verbs": ["get"]}]),
    ([("Secret", "b"), ("Secret", "a"), ("ConfigMap", "c"), ("Secret", "a")],
     [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["c"], "verbs": ["get"]},
      {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["a", "b"], "verbs": ["get"]}]),
], ids=["none-no-role", "one-secret", "sorted-deduplicated-per-kind"])
def test_agent_role_names_exactly_the_references(refs, rules):
    manifest = grants.role_manifest("shop", [envrefs.ObjectRef(k, n) for k, n in refs])
    if rules is None:
        assert manifest is None  # never a Role with an empty resourceNames: that would grant every Secret
        return
    assert manifest["rules"] == rules and manifest["metadata"] == {
        "name": grants.ROLE_NAME, "namespace": "shop", "labels": grants.MANAGED_BY}
    assert all(r["resourceNames"] and r["verbs"] == ["get"] for r in manifest["rules"])


def test_index_credentials_basic_or_token():
    assert envrefs.index_credentials("ns", "ix", {"username": "u", "password": "p"}) == ("u", "p")
    assert envrefs.index_credentials("ns", "ix", {"token": "t"}) == ("__token__", "t")
    with pytest.raises(envrefs.MissingReference, match="Secret ns/ix has no key 'password'"):
        envrefs.index_credentials("ns", "ix", {"username": "u"})
    with pytest.raises(envrefs.MissingReference, match="Secret ns/ix not found"):
        envrefs.index_credentials("ns", "ix", None)
