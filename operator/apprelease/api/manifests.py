"""Parsing manifests into typed resources, with errors a person can act on.

Used by the CLI (`apprelease validate`, `apprelease agent reconcile -f`), the operator and the
agent: every spec enters the program here, once, and is typed from then on.
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from .models import AppRelease, HostRelease

KINDS: dict[str, type[BaseModel]] = {"AppRelease": AppRelease, "HostRelease": HostRelease}


class ManifestError(ValueError):
    """A manifest that cannot be used; the message names each bad field and what is allowed."""


# Fields that are maps (name -> value): their keys print as `[key]`, as the apiserver prints them.
MAP_FIELDS = frozenset({"processes", "nodeSelector"})


def field_path(loc: tuple[Any, ...]) -> str:
    out = ""
    previous = None
    for part in loc:
        if isinstance(part, int) or (previous in MAP_FIELDS and part != "[key]"):
            out += f"[{part}]"
        elif part != "[key]":
            out += f".{part}" if out else str(part)
        previous = part
    return out


def explain(error: ValidationError, prefix: str = "") -> str:
    lines = []
    for err in error.errors():
        path = field_path(err["loc"])
        where = f"{prefix}.{path}" if prefix and path else (prefix or path or "(object)")
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown field (check the spelling; fields are camelCase)"
        elif err["type"] == "missing":
            message = "required field is missing"
        lines.append(f"{where}: {message}")
    return "\n".join(lines)


def parse_resource(doc: dict[str, Any]) -> BaseModel:
    kind = doc.get("kind")
    model = KINDS.get(kind)  # type: ignore[arg-type]
    if model is None:
        raise ManifestError(f"kind {kind!r} is not one of {sorted(KINDS)}")
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        name = (doc.get("metadata") or {}).get("name", "?")
        raise ManifestError(f"{kind}/{name} is invalid:\n{explain(exc)}") from None


def load_documents(text: str) -> list[dict[str, Any]]:
    try:
        return [d for d in yaml.safe_load_all(text) if d]
    except yaml.YAMLError as exc:
        raise ManifestError(f"not valid YAML: {exc}") from None


def load_resources(text: str) -> list[BaseModel]:
    """AppRelease and HostRelease documents of a multi-document YAML text, validated."""
    return [parse_resource(d) for d in load_documents(text) if d.get("kind") in KINDS]
