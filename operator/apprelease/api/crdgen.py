"""Generates the CustomResourceDefinitions in `crds/` from the pydantic models.

Called by `apprelease crds` (and `make crds`); a test regenerates and fails on any diff, so
the CRDs can never drift from the models. Pydantic's JSON schema is turned into a structural
OpenAPI v3 schema: `$ref`s inlined, `anyOf [X, null]` collapsed to X, titles dropped,
default factories written out (nested objects default to `{}` so the apiserver fills in
their own defaults, as pydantic does), and the CEL rules the models carry kept as they are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, NoDefault

from . import models
from .rules import DNS_LABEL

_DROP = {"title"}


class _WithFactoryDefaults(GenerateJsonSchema):
    def get_default_value(self, schema: Any) -> Any:
        factory = schema.get("default_factory")
        if factory is None:
            return super().get_default_value(schema)
        if schema.get("default_factory_takes_data"):
            return NoDefault
        value = factory()
        return {} if isinstance(value, BaseModel) else value


def _structural(node: dict[str, Any], defs: dict[str, Any], *, with_defaults: bool) -> dict[str, Any]:
    node = dict(node)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        merged = {**target, **node}  # sibling keys (description, default) win
        return _structural(merged, defs, with_defaults=with_defaults)
    if "anyOf" in node:
        options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"cannot express union {options} structurally; give it a WithJsonSchema")
        return _structural({**options[0], **node}, defs, with_defaults=with_defaults)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP or (key == "default" and (value is None or not with_defaults)):
            continue
        if key == "const":
            out["enum"] = [value]
        elif key == "properties":
            out[key] = {k: _structural(v, defs, with_defaults=with_defaults) for k, v in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = _structural(value, defs, with_defaults=with_defaults)
        else:
            out[key] = value
    if "properties" in out:
        out.setdefault("type", "object")
        out.pop("additionalProperties", None)  # structural schemas prune unknown fields instead
    return out


def openapi_schema(model: type[BaseModel], *, with_defaults: bool = True) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation", schema_generator=_WithFactoryDefaults)
    defs = raw.pop("$defs", {})
    schema = _structural(raw, defs, with_defaults=with_defaults)
    if model.__doc__ and "description" not in schema:
        schema["description"] = " ".join(model.__doc__.split())
    return schema


_APP_NAME_RULE = {
    "rule": f"self.metadata.name.matches(r'{DNS_LABEL.pattern}') && size(self.metadata.name) <= {models.APP_NAME_MAX}",
    "message": f"metadata.name {models.APP_NAME_MESSAGE}",
}


def _crd(kind: str, plural: str, short: str, spec: type[BaseModel], status: type[BaseModel],
         columns: list[dict[str, Any]], description: str, rules: list[dict[str, str]]) -> dict[str, Any]:
    schema = {
        "type": "object",
        "description": description,
        "required": ["spec"],
        **({"x-kubernetes-validations": rules} if rules else {}),
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": openapi_schema(spec),
            "status": openapi_schema(status, with_defaults=False),
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{models.GROUP}"},
        "spec": {
            "group": models.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": [short],
                "categories": ["apprelease-all"],
            },
            "versions": [
                {
                    "name": models.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {"openAPIV3Schema": schema},
                }
            ],
        },
    }


def _column(name: str, path: str, type_: str = "string", description: str = "", priority: int = 0) -> dict[str, Any]:
    col = {"name": name, "type": type_, "jsonPath": path}
    if description:
        col["description"] = description
    if priority:
        col["priority"] = priority
    return col


def crds() -> dict[str, dict[str, Any]]:
    """File name -> CRD object."""
    age = _column("Age", ".metadata.creationTimestamp", "date")
    app = _crd(
        "AppRelease", "appreleases", "ar", models.AppReleaseSpec, models.AppReleaseStatus,
        [
            _column("Version", ".spec.version", description="Version label of the desired release"),
            _column("Ready", ".status.ready", description="Hosts serving the desired revision and healthy"),
            _column("Up-to-date", ".status.updatedHosts", "integer", "Hosts moved to the desired revision"),
            age,
            _column("Revision", ".status.currentRevision", priority=1),
            _column("Paused", ".spec.paused", "boolean", priority=1),
        ],
        "AppRelease: one Python web app released onto the hosts its selector picks, rolled host by host.",
        [_APP_NAME_RULE],
    )
    host = _crd(
        "HostRelease", "hostreleases", "hr", models.HostReleaseSpec, models.HostReleaseStatus,
        [
            _column("Node", ".spec.node"),
            _column("Version", ".spec.version"),
            _column("Phase", ".status.phase"),
            _column("Serving", ".status.servingVersion", description="Version the host's nginx serves now"),
            age,
            _column("Revision", ".spec.revision", priority=1),
            _column("Restarts", ".status.liveness.restarts", "integer",
                    "Times the agent restarted the live revision's workers for failed liveness probes", priority=1),
            # `kubectl get hr -o wide -w`: what the phase is doing (the build's stage, the health check).
            _column("Message", ".status.message", priority=1),
        ],
        "HostRelease: the resolved release for one host, written by the operator and reconciled by that host's agent.",
        [],
    )
    return {"apprelease.dev_appreleases.yaml": app, "apprelease.dev_hostreleases.yaml": host}


def render(crd: dict[str, Any]) -> str:
    return "# Generated by `apprelease crds` from operator/apprelease/api/models.py. Do not edit.\n" + yaml.safe_dump(
        crd, sort_keys=False, width=120
    )


def write(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, crd in crds().items():
        path = directory / name
        path.write_text(render(crd))
        written.append(path)
    return written
