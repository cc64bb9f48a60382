"""String rules shared by the pydantic models and the generated CRD.

Each rule is one RE2-compatible pattern plus a sentence saying what is allowed. The same
rule validates in Python (pydantic) and in the apiserver (a CEL `matches` rule carrying the
same message), so a user gets the same answer from `apprelease` and from `kubectl apply`.
Patterns avoid look-arounds: neither Go's RE2 nor pydantic-core's regex engine has them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import AfterValidator, Field, WithJsonSchema


@dataclass(frozen=True)
class StringRule:
    pattern: str
    allowed: str
    max_length: int
    forbidden: tuple[str, ...] = ()  # exact values refused even though they match
    forbidden_reason: str = ""

    def check(self, value: str) -> str:
        if len(value) > self.max_length:
            raise ValueError(f"must be at most {self.max_length} characters")
        if not re.fullmatch(self.pattern, value):
            raise ValueError(f"{value!r} is not allowed: {self.allowed}")
        if value in self.forbidden:
            raise ValueError(f"{value!r} is not allowed: {self.forbidden_reason}")
        return value

    def cel(self) -> list[dict[str, str]]:
        rules = [{"rule": f"self.matches(r'{self.pattern}')", "message": self.allowed}]
        for value in self.forbidden:
            rules.append({"rule": f"self != '{value}'", "message": self.forbidden_reason})
        return rules

    def json_schema(self, description: str) -> dict[str, Any]:
        return {
            "type": "string",
            "maxLength": self.max_length,
            "description": description,
            "x-kubernetes-validations": self.cel(),
        }


def checked(rule: StringRule, description: str) -> Any:
    """An annotated `str` type validated by `rule` in Python and in the CRD."""
    return Annotated[
        str,
        AfterValidator(rule.check),
        WithJsonSchema(rule.json_schema(description)),
        Field(description=description),
    ]


_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_URL = r"https?://[A-Za-z0-9._~:/?#\[\]@!$&()*+,=%-]+"

DNS_LABEL = StringRule(
    rf"^{_LABEL}$",
    "a DNS-1123 label: lowercase letters, digits and '-', starting and ending with a letter or digit",
    63,
)
DNS_SUBDOMAIN = StringRule(
    rf"^{_LABEL}(\.{_LABEL})*$",
    "a DNS-1123 subdomain: dot-separated lowercase labels of letters, digits and '-'",
    253,
)
VERSION_LABEL = StringRule(
    r"^[A-Za-z0-9][A-Za-z0-9._+-]*$",
    "a version label such as 1.2.0 or 2024.05-rc1: letters, digits, '.', '_', '+', '-'",
    63,
)
PYTHON_VERSION = StringRule(
    r"^3\.[0-9]{1,2}$",
    "a Python version such as 3.11 (major.minor; the host must have python<version>)",
    5,
)
ENTRYPOINT = StringRule(
    r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$",
    "a WSGI entrypoint 'module:callable', e.g. webxample.app:application",
    200,
)
# Loose enough for real PEP 508 requirements, strict enough that no quote, brace, newline
# or URL gets through; pydantic additionally parses every requirement with `packaging`.
REQUIREMENT = StringRule(
    r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?(\[[A-Za-z0-9._, -]+\])? *"
    r"((===|==|~=|!=|<=|>=|<|>) *[A-Za-z0-9.*+!_-]+ *(, *(===|==|~=|!=|<=|>=|<|>) *[A-Za-z0-9.*+!_-]+ *)*)?"
    r"(; *[A-Za-z0-9_.<>=!~ ()\x27\x22-]+)?$",
    "a PEP 508 requirement such as 'webxample==1.2.0' or 'flask>=3,<4' (no URLs: use source.wheel)",
    200,
)
URL = StringRule(
    rf"^{_URL}$",
    "an http:// or https:// URL without spaces, quotes, braces or semicolons",
    2000,
)
SHA256 = StringRule(r"^[0-9a-f]{64}$", "a sha256 digest: 64 lowercase hex characters", 64)
# RFC 1123 host names, an optional leading '*.' wildcard, or nginx's catch-all '_'.
SERVER_NAME = StringRule(
    rf"^(_|(\*\.)?{_LABEL}(\.{_LABEL})*)$",
    "an RFC 1123 host name (lowercase letters, digits, '-', '.'), optionally starting with '*.'",
    253,
)
ENV_NAME = StringRule(
    r"^[A-Za-z_][A-Za-z0-9_]*$",
    "a POSIX environment variable name: letters, digits and '_', not starting with a digit",
    128,
)
# core/v1's words for ConfigMap and Secret keys (IsConfigMapKey).
CONFIG_KEY = StringRule(
    r"^[-._a-zA-Z0-9]+$",
    "a valid config key must consist of alphanumeric characters, '-', '_' or '.'",
    253,
)
ENV_PREFIX = StringRule(
    r"^[A-Za-z_][A-Za-z0-9_]*$",
    "an environment variable name prefix: letters, digits and '_', not starting with a digit",
    128,
)
ENV_VALUE = StringRule(
    r"^[^\x00\r\n]*$",
    "any text on one line: NUL, carriage return and newline are not allowed",
    4096,
)
POSIX_USER = StringRule(
    r"^[a-z_][a-z0-9_-]{0,30}$",
    "a POSIX user name: lowercase letters, digits, '_' and '-', starting with a letter or '_', at most 31 characters",
    31,
    forbidden=("root",),
    forbidden_reason="apps never run as root: name a dedicated unprivileged user, e.g. the app's name",
)
URL_PATH_PREFIX = StringRule(
    r"^/([A-Za-z0-9_~-][A-Za-z0-9._~-]*/)+$",
    "a URL path prefix such as /static/: starts and ends with '/', not '/' alone, no '..' or '.' segments, no spaces",
    200,
)
RELATIVE_DIR = StringRule(
    r"^[A-Za-z0-9_-][A-Za-z0-9._-]*(/[A-Za-z0-9_-][A-Za-z0-9._-]*)*$",
    "a relative directory inside site-packages such as webxample/static: no leading '/', no '..' or '.' segments",
    200,
)
HEALTH_PATH = StringRule(
    r"^/[A-Za-z0-9._~/?=&%-]*$",
    "an absolute URL path such as /healthz (no spaces or quotes)",
    200,
)
BODY_SIZE = StringRule(
    r"^[0-9]{1,6}[kKmMgG]?$",
    "an nginx size such as 1m, 512k or 10485760",
    7,
)
GUNICORN_ARG = StringRule(
    r"^--[a-z][a-z0-9-]*(=[A-Za-z0-9._:/,=-]+)?$",
    "a gunicorn long option such as --max-requests=1000 (one argument, '--name' or '--name=value')",
    200,
)
# Commands (release commands, process types) are argv lists run without a shell: the program
# is one of the release venv's own (`python`, or a console script such as celery or alembic),
# and no argument may hold a shell metacharacter or whitespace, as in the other fields.
COMMAND_PROGRAM = StringRule(
    r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
    "the name of a program in the release's venv bin/ (python, or a console script such as celery): "
    "no path, no shell",
    64,
)
COMMAND_ARG = StringRule(
    r"^[A-Za-z0-9_@%+=:,./-]+$",
    "one argument of letters, digits and _ @ % + = : , . / - (no whitespace, quotes or shell metacharacters; "
    "commands never run through a shell)",
    256,
)
PROCESS_NAME = StringRule(
    r"^[a-z]([a-z0-9]*[a-z0-9])?$",
    "a process type name of lowercase letters and digits, starting with a letter, e.g. worker or beat",
    15,
)
RESTARTED_AT = StringRule(
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})$",
    "an RFC 3339 time such as 2026-12-01T10:00:00Z",
    40,
)
PERCENT_OR_COUNT_CEL = {
    "rule": "type(self) == int ? self >= 1 : self.matches(r'^(100|[1-9][0-9]?)%$')",
    "message": "maxUnavailable must be an integer >= 1 or a percentage from 1% to 100%",
}
