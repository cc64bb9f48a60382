"""Values from Secrets and ConfigMaps: which objects a release references, what its environment
resolves to, and the keyed digest that puts a value change into the revision. Pure.

Called by the operator (`controller.reconcile`: SecretNotFound, the digest, the agent's Role)
and by the agent (`agent.cluster`, `agent.cli`: the values themselves, on the host). The
reads are injected as a `Lookup`, so the Kubernetes API, files given to `agent reconcile -f`
and unit tests all go through the same rules, with core/v1's semantics:
- `envFrom` entries in order, then `env` entries in order; a later name wins, so `env`
  overrides `envFrom`;
- a missing object or key is an error unless `optional: true`, which leaves the variable out;
- `envFrom` keys that are not POSIX variable names (after the prefix) are skipped and named.

The digest is HMAC-SHA256 keyed with a per-cluster key only the operator reads (a Secret in
its namespace): a plain hash of a short password could be brute-forced offline from a
HostRelease, which every agent reads; without the key it cannot. It never contains a value.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from . import rules
from .models import ReleaseTemplate

SECRET = "Secret"
CONFIG_MAP = "ConfigMap"
# (kind, name) -> the object's data, decoded to text (Secret data is base64 on the wire), or
# None when the object does not exist. A read that fails otherwise raises (not "missing").
Lookup = Callable[[str, str], Mapping[str, str] | None]
DIGEST_LENGTH = 20


@dataclass(frozen=True, order=True)
class ObjectRef:
    kind: str  # Secret | ConfigMap
    name: str


class MissingReference(Exception):
    """A referenced Secret/ConfigMap or key does not exist and is not optional (SecretNotFound)."""

    def __init__(self, namespace: str, kind: str, name: str, key: str | None = None) -> None:
        self.namespace, self.kind, self.name, self.key = namespace, kind, name, key
        what = f"{kind} {namespace}/{name}"
        super().__init__(f"{what} has no key {key!r}" if key is not None and key != "" else f"{what} not found")


class UnusableValue(Exception):
    """A referenced value cannot be an environment value here (the message names the key, never the value)."""


@dataclass(frozen=True)
class Resolved:
    env: dict[str, str]  # the app's complete environment from the spec (literals and references)
    referenced: frozenset[str] = frozenset()  # names whose value came from a Secret or ConfigMap
    skipped: tuple[str, ...] = field(default=())  # envFrom keys that are not variable names


def env_objects(spec: ReleaseTemplate) -> frozenset[ObjectRef]:
    """The Secrets and ConfigMaps the app's environment reads."""
    refs = set()
    for e in spec.env:
        if e.value_from is not None:
            if e.value_from.secret_key_ref is not None:
                refs.add(ObjectRef(SECRET, e.value_from.secret_key_ref.name))
            if e.value_from.config_map_key_ref is not None:
                refs.add(ObjectRef(CONFIG_MAP, e.value_from.config_map_key_ref.name))
    for src in spec.env_from:
        if src.secret_ref is not None:
            refs.add(ObjectRef(SECRET, src.secret_ref.name))
        if src.config_map_ref is not None:
            refs.add(ObjectRef(CONFIG_MAP, src.config_map_ref.name))
    return frozenset(refs)


def referenced_objects(spec: ReleaseTemplate) -> frozenset[ObjectRef]:
    """Everything a host's agent reads for this release: env, the TLS Secret, index credentials."""
    refs = set(env_objects(spec))
    if spec.proxy.tls is not None:
        refs.add(ObjectRef(SECRET, spec.proxy.tls.secret_name))
    if spec.source.index_credentials is not None:
        refs.add(ObjectRef(SECRET, spec.source.index_credentials.secret_name))
    return frozenset(refs)


def has_references(spec: ReleaseTemplate) -> bool:
    return bool(env_objects(spec))


def _checked_value(kind: str, namespace: str, name: str, key: str, value: str) -> str:
    if re.search(r"[\x00\r\n]", value):
        raise UnusableValue(
            f"the value of key {key!r} of {kind} {namespace}/{name} holds a NUL, carriage return or newline, "
            f"which an environment value here cannot (a trailing newline from `echo` or a file is the usual cause)")
    if len(value) > 65536:
        raise UnusableValue(f"the value of key {key!r} of {kind} {namespace}/{name} is longer than 65536 characters")
    return value


def resolve_env(spec: ReleaseTemplate, namespace: str, lookup: Lookup) -> Resolved:
    """The app's environment as core/v1 builds a container's. Raises MissingReference or UnusableValue."""
    cache: dict[ObjectRef, Mapping[str, str] | None] = {}

    def data(kind: str, name: str) -> Mapping[str, str] | None:
        ref = ObjectRef(kind, name)
        if ref not in cache:
            cache[ref] = lookup(kind, name)
        return cache[ref]

    env: dict[str, str] = {}
    referenced: set[str] = set()
    skipped: list[str] = []
    for src in spec.env_from:
        kind, ref = (SECRET, src.secret_ref) if src.secret_ref is not None else (CONFIG_MAP, src.config_map_ref)
        assert ref is not None
        found = data(kind, ref.name)
        if found is None:
            if ref.optional:
                continue
            raise MissingReference(namespace, kind, ref.name)
        for key, value in sorted(found.items()):
            name = (src.prefix or "") + key
            if not re.fullmatch(rules.ENV_NAME.pattern, name) or len(name) > rules.ENV_NAME.max_length:
                skipped.append(name)
                continue
            env[name] = _checked_value(kind, namespace, ref.name, key, value)
            referenced.add(name)
    for e in spec.env:
        if e.value_from is None:
            env[e.name] = e.value
            referenced.discard(e.name)
            continue
        source = e.value_from
        kind, sel = (SECRET, source.secret_key_ref) if source.secret_key_ref is not None \
            else (CONFIG_MAP, source.config_map_key_ref)
        assert sel is not None
        found = data(kind, sel.name)
        if found is None or sel.key not in found:
            if sel.optional:
                env.pop(e.name, None)
                continue
            raise MissingReference(namespace, kind, sel.name, None if found is None else sel.key)
        env[e.name] = _checked_value(kind, namespace, sel.name, sel.key, found[sel.key])
        referenced.add(e.name)
    return Resolved(env=env, referenced=frozenset(referenced), skipped=tuple(skipped))


def values_digest(key: bytes, namespace: str, app: str, resolved: Resolved) -> str | None:
    """The keyed digest of the referenced values (None when nothing is referenced)."""
    if not resolved.referenced:
        return None
    values = {name: resolved.env[name] for name in sorted(resolved.referenced)}
    message = json.dumps({"namespace": namespace, "app": app, "values": values}, sort_keys=True,
                         separators=(",", ":"))
    return "v" + hmac.new(key, message.encode(), hashlib.sha256).hexdigest()[:DIGEST_LENGTH]


def index_credentials(namespace: str, secret_name: str, data: Mapping[str, str] | None) -> tuple[str, str]:
    """(username, password) for the index from a Secret's data: username + password, or a token
    (sent as the password of the user `__token__`, as PyPI-style indexes expect).
    Raises MissingReference when the Secret or its keys are absent."""
    if data is None:
        raise MissingReference(namespace, SECRET, secret_name)
    if data.get("token"):
        return "__token__", data["token"]
    for key in ("username", "password"):
        if not data.get(key):
            raise MissingReference(namespace, SECRET, secret_name, key)
    return data["username"], data["password"]
