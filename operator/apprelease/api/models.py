"""The AppRelease and HostRelease resources as pydantic models: the one source of truth.

The CRDs in `crds/` are generated from these models (`apprelease crds`), the operator and
the agent validate every spec through them, and nothing else reads specs as raw dicts.
Field names are snake_case in Python and camelCase on the wire, as Kubernetes expects.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from packaging.requirements import InvalidRequirement, Requirement
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema, field_validator, model_validator
from pydantic.alias_generators import to_camel

from . import rules
from .rules import checked

GROUP = "apprelease.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
HOST_LABEL = f"{GROUP}/host"
NODE_LABEL = f"{GROUP}/node"
APP_LABEL = f"{GROUP}/app"


class Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
    )

    def wire(self) -> dict[str, Any]:
        """The camelCase JSON form, as stored in the apiserver."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def _require_unique(key: str, values: list[str]) -> None:
    """List-map semantics, as the CRD declares them (x-kubernetes-list-map-keys)."""
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise ValueError(f"duplicate {key} {repeated}: each {key} may appear once")


def _parse_requirement(value: str) -> str:
    try:
        Requirement(value)
    except InvalidRequirement as exc:
        raise ValueError(f"{value!r} is not a valid PEP 508 requirement: {exc}") from None
    return value


Requirement508 = Annotated[
    checked(rules.REQUIREMENT, "A PEP 508 requirement, e.g. webxample==1.2.0."),
    AfterValidator(_parse_requirement),
]


class Wheel(Model):
    """A wheel downloaded from a URL and verified against its sha256 before install."""

    url: checked(rules.URL, "URL of the wheel file.")
    sha256: checked(rules.SHA256, "Expected sha256 of the wheel; the install fails on mismatch.")


class IndexCredentials(Model):
    """Basic auth (keys `username` and `password`) or a bearer-style token (key `token`) for indexUrl."""

    secret_name: checked(rules.DNS_SUBDOMAIN, "Name of a Secret in the same namespace with username and password, "
                                              "or token.")


_CREDENTIALS_NEED_INDEX = "indexCredentials needs indexUrl (the index they log in to)"


class Source(Model):
    """What goes into the release's virtualenv."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.requirements) || has(self.wheel)",
                    "message": "source needs requirements, a wheel, or both",
                },
                {"rule": "!has(self.indexCredentials) || has(self.indexUrl)", "message": _CREDENTIALS_NEED_INDEX},
            ]
        }
    )

    requirements: list[Requirement508] | None = Field(
        default=None, max_length=50, description="PEP 508 requirements installed into the venv."
    )
    index_url: checked(rules.URL, "Package index (PEP 503 simple API) to install from.") | None = None
    wheel: Wheel | None = Field(default=None, description="A wheel installed by URL, checked by sha256.")
    only_binary: bool | None = Field(
        default=None,
        description="Install wheels only (no source distributions): no package code runs at build time.",
    )
    index_credentials: IndexCredentials | None = Field(
        default=None,
        description="Credentials for indexUrl from a Secret: used for the build only, never in the buildId, on disk "
                    "after the build, or in logs.",
    )

    @model_validator(mode="after")
    def _needs_something(self) -> Source:
        if not self.requirements and self.wheel is None:
            raise ValueError("source needs requirements, a wheel, or both")
        if self.index_credentials is not None and not self.index_url:
            raise ValueError(_CREDENTIALS_NEED_INDEX)
        return self
MANAGED_GUNICORN_ARGS = (
    "--bind", "--user", "--group", "--daemon", "--pid", "--chdir", "--workers", "--threads", "--worker-class",
)  # fmt: skip
# gunicorn worker classes by the names a spec uses; host/servers.py maps them to import paths.
WorkerClass = Literal["gthread", "sync", "uvicorn"]
_MANAGED_MESSAGE = f"extraArgs: {', '.join(MANAGED_GUNICORN_ARGS)} are set by apprelease and cannot be overridden"


class Server(Model):
    """The gunicorn server running the app (one watcher per revision)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.extraArgs) || self.extraArgs.all(a, !%s.exists(m, a == m || a.startsWith(m + '=')))"
                    % str(list(MANAGED_GUNICORN_ARGS)),
                    "message": _MANAGED_MESSAGE,
                }
            ]
        }
    )

    workers: int = Field(default=2, ge=1, le=64, description="gunicorn worker processes.")
    threads: int = Field(default=4, ge=1, le=64, description="Threads per worker (gthread worker class only).")
    worker_class: WorkerClass = Field(
        default="gthread",
        description=(
            "gunicorn worker class: gthread (threads per worker), sync (one request at a time per worker), "
            "or uvicorn (ASGI apps: uvicorn-worker's UvicornWorker, or uvicorn's own when uvicorn-worker is not installed)."
        ),
    )
    timeout_seconds: int = Field(default=30, ge=1, le=3600, description="Worker timeout (gunicorn --timeout).")
    graceful_timeout_seconds: int = Field(
        default=30, ge=1, le=3600, description="Time in-flight requests get to finish when a revision stops."
    )
    extra_args: list[checked(rules.GUNICORN_ARG, "One extra gunicorn option.")] = Field(
        default_factory=list, max_length=20, description="Extra gunicorn options (--bind, --user and --daemon are managed)."
    )

    @model_validator(mode="after")
    def _managed_args(self) -> Server:
        for arg in self.extra_args:
            name = arg.split("=", 1)[0]
            if name in MANAGED_GUNICORN_ARGS:
                raise ValueError(f"{_MANAGED_MESSAGE} (got {name})")
        return self


# Environment from Secrets and ConfigMaps, as core/v1 has it (EnvVarSource, EnvFromSource):
# the same field names, semantics and validation words, so a Pod's env block can be copied
# here. Only references travel in specs; the values are read on the host by its agent
# (agent/kube.py, through a Role the operator maintains) and digested by the operator with a
# key only it reads (api/envrefs.py): never in an AppRelease, a HostRelease, a log or a hash.
_ONE_REF = "may not have more than one field specified at a time"
_SOME_REF = "must specify one of: `configMapKeyRef` or `secretKeyRef`"
_VALUE_AND_FROM = "may not be specified when `value` is not empty"


class SecretKeySelector(Model):
    """A key of a Secret in the AppRelease's namespace (core/v1 SecretKeySelector)."""

    name: checked(rules.DNS_SUBDOMAIN, "Name of the Secret in the same namespace.")
    key: checked(rules.CONFIG_KEY, "The key of the Secret to select from.")
    optional: bool | None = Field(default=None, description="Specify whether the Secret or its key must be defined.")


class ConfigMapKeySelector(Model):
    """A key of a ConfigMap in the AppRelease's namespace (core/v1 ConfigMapKeySelector)."""

    name: checked(rules.DNS_SUBDOMAIN, "Name of the ConfigMap in the same namespace.")
    key: checked(rules.CONFIG_KEY, "The key to select.")
    optional: bool | None = Field(default=None, description="Specify whether the ConfigMap or its key must be defined.")


class EnvVarSource(Model):
    """Where an env value comes from (core/v1 EnvVarSource; fieldRef and resourceFieldRef have no host meaning)."""

    model_config = ConfigDict(
        json_schema_extra={"x-kubernetes-validations": [
            {"rule": "!(has(self.secretKeyRef) && has(self.configMapKeyRef))", "message": _ONE_REF},
            {"rule": "has(self.secretKeyRef) || has(self.configMapKeyRef)", "message": _SOME_REF},
        ]}
    )

    secret_key_ref: SecretKeySelector | None = Field(default=None, description="Selects a key of a Secret.")
    config_map_key_ref: ConfigMapKeySelector | None = Field(default=None, description="Selects a key of a ConfigMap.")

    @model_validator(mode="after")
    def _exactly_one(self) -> EnvVarSource:
        given = [r for r in (self.secret_key_ref, self.config_map_key_ref) if r is not None]
        if len(given) > 1:
            raise ValueError(_ONE_REF)
        if not given:
            raise ValueError(_SOME_REF)
        return self


class EnvVar(Model):
    model_config = ConfigDict(
        json_schema_extra={"x-kubernetes-validations": [
            {"rule": "!has(self.valueFrom) || !has(self.value) || self.value == ''",
             "message": f"valueFrom: {_VALUE_AND_FROM}"},
        ]}
    )

    name: checked(rules.ENV_NAME, "Environment variable name.")
    value: checked(rules.ENV_VALUE, "Environment variable value.") = ""
    value_from: EnvVarSource | None = Field(
        default=None, description="Source for the environment variable's value. Cannot be used if value is not empty.")

    @model_validator(mode="after")
    def _value_or_from(self) -> EnvVar:
        if self.value_from is not None and self.value:
            raise ValueError(f"valueFrom: {_VALUE_AND_FROM}")
        return self


class SecretEnvSource(Model):
    """Every key of a Secret as environment variables (core/v1 SecretEnvSource)."""

    name: checked(rules.DNS_SUBDOMAIN, "Name of the Secret in the same namespace.")
    optional: bool | None = Field(default=None, description="Specify whether the Secret must be defined.")


class ConfigMapEnvSource(Model):
    """Every key of a ConfigMap as environment variables (core/v1 ConfigMapEnvSource)."""

    name: checked(rules.DNS_SUBDOMAIN, "Name of the ConfigMap in the same namespace.")
    optional: bool | None = Field(default=None, description="Specify whether the ConfigMap must be defined.")


class EnvFromSource(Model):
    """A Secret or ConfigMap whose keys all become environment variables (core/v1 EnvFromSource).

    Keys that are not POSIX variable names are skipped (and named in the agent's log), as the
    kubelet skips them; `env` entries win over `envFrom` ones of the same name."""

    model_config = ConfigDict(
        json_schema_extra={"x-kubernetes-validations": [
            {"rule": "!(has(self.secretRef) && has(self.configMapRef))", "message": _ONE_REF},
            {"rule": "has(self.secretRef) || has(self.configMapRef)",
             "message": "must specify one of: `configMapRef` or `secretRef`"},
        ]}
    )

    prefix: checked(rules.ENV_PREFIX, "An optional identifier to prepend to each key.") | None = None
    config_map_ref: ConfigMapEnvSource | None = Field(default=None, description="The ConfigMap to select from.")
    secret_ref: SecretEnvSource | None = Field(default=None, description="The Secret to select from.")

    @model_validator(mode="after")
    def _exactly_one(self) -> EnvFromSource:
        given = [r for r in (self.secret_ref, self.config_map_ref) if r is not None]
        if len(given) > 1:
            raise ValueError(_ONE_REF)
        if not given:
            raise ValueError("must specify one of: `configMapRef` or `secretRef`")
        return self


class TLS(Model):
    """TLS for the nginx server block, from a kubernetes.io/tls Secret."""

    secret_name: checked(rules.DNS_SUBDOMAIN, "Name of a kubernetes.io/tls Secret in the same namespace.")


class StaticPath(Model):
    """A URL prefix served by nginx straight from the release's files."""

    url_path: checked(rules.URL_PATH_PREFIX, "URL prefix, e.g. /static/.")
    directory: checked(
        rules.RELATIVE_DIR, "Directory relative to the venv's site-packages, e.g. webxample/static."
    )


class Proxy(Model):
    """The nginx server block in front of the app."""

    server_names: list[checked(rules.SERVER_NAME, "A server name.")] = Field(
        min_length=1, max_length=20, description="nginx server_name values: host names or *.wildcards."
    )
    listen_port: int = Field(default=80, ge=1, le=65535, description="Port nginx listens on.")
    tls: TLS | None = Field(default=None, description="Serve HTTPS with a certificate from a Secret.")
    static: list[StaticPath] = Field(
        default_factory=list,
        max_length=20,
        description="Paths served by nginx from the release, not the app.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["urlPath"]},
    )
    client_max_body_size: checked(rules.BODY_SIZE, "Largest request body nginx accepts.") = "1m"

    @field_validator("static")
    @classmethod
    def _unique_static(cls, static: list[StaticPath]) -> list[StaticPath]:
        _require_unique("urlPath", [s.url_path for s in static])
        return static


class Resources(Model):
    """Limits of one revision's gunicorn (master and workers together): a systemd scope per revision."""

    memory_max: str | None = Field(
        default=None, pattern=r"^[1-9][0-9]{0,6}[KMG]$",
        description="Memory limit, e.g. 512M: above it the kernel kills the largest process (a worker; gunicorn "
                    "starts another) and status.oomKills counts it.",
    )
    cpu_weight: int | None = Field(
        default=None, ge=1, le=10000, description="CPU weight against other apps (systemd CPUWeight, default 100)."
    )


DEFAULT_FAILURE_THRESHOLD = 3
DEFAULT_PROBE_TIMEOUT_SECONDS = 10


class HealthCheck(Model):
    """The gate a new revision passes, through its own socket, before it gets traffic."""

    path: checked(rules.HEALTH_PATH, "Path requested on the new revision.") = "/healthz"
    expected_status: int = Field(default=200, ge=100, le=599, description="Status that counts as healthy.")
    timeout_seconds: int = Field(
        default=30, ge=1, le=600, description="Deadline for the revision to boot and answer healthy."
    )
    # Liveness: after the switch. Not part of the revision (identity.py): changing how the live
    # revision is watched restarts nothing.
    period_seconds: int | None = Field(
        default=None, ge=1, le=3600,
        description="Liveness: probe the live revision through its own socket this often (unset: only before the "
                    "switch). After failureThreshold failed probes in a row its workers are restarted gracefully.",
    )
    # Unset rather than defaulted: a stored spec from before these fields stays the same object.
    failure_threshold: int | None = Field(
        default=None, ge=1, le=100,
        description=f"Liveness: failed probes in a row before the workers are restarted (default {DEFAULT_FAILURE_THRESHOLD}).",
    )
    probe_timeout_seconds: int | None = Field(
        default=None, ge=1, le=600,
        description="Liveness: a probe with no answer after this long failed; a slower answer under load is not a "
                    f"failure (default {DEFAULT_PROBE_TIMEOUT_SECONDS}).",
    )

    @property
    def liveness_threshold(self) -> int:
        return self.failure_threshold or DEFAULT_FAILURE_THRESHOLD

    @property
    def probe_timeout(self) -> int:
        return self.probe_timeout_seconds or DEFAULT_PROBE_TIMEOUT_SECONDS


class Strategy(Model):
    """How the release rolls across hosts."""

    max_unavailable: Annotated[
        int | str,
        WithJsonSchema(
            {
                "x-kubernetes-int-or-string": True,
                "description": "Hosts updated at once: a count >= 1 or a percentage such as 25%.",
                "x-kubernetes-validations": [rules.PERCENT_OR_COUNT_CEL],
            }
        ),
    ] = 1
    progress_deadline_seconds: int = Field(
        default=600, ge=10, le=86400, description="A rollout making no progress this long is reported stuck."
    )

    @model_validator(mode="after")
    def _max_unavailable(self) -> Strategy:
        value = self.max_unavailable
        ok = value >= 1 if isinstance(value, int) else bool(re.fullmatch(r"(100|[1-9][0-9]?)%", value))
        if not ok:
            raise ValueError(PERCENT_MESSAGE)
        return self


PERCENT_MESSAGE = rules.PERCENT_OR_COUNT_CEL["message"]


class Hosts(Model):
    """Which Nodes (hosts) run the app."""

    node_selector: dict[str, str] = Field(
        default_factory=lambda: {HOST_LABEL: "true"},
        description="Labels a Node must carry to run the app.",
    )


CommandArg = checked(rules.COMMAND_ARG, "One argument (the first names a program in the release's venv bin/).")
_PROGRAM_CEL = {
    "rule": "size(self) == 0 || self[0].matches(r'%s')" % rules.COMMAND_PROGRAM.pattern,
    "message": "command[0] must be " + rules.COMMAND_PROGRAM.allowed,
}
_PROCESS_NAMES_CEL = {
    "rule": "self.all(k, k.matches(r'%s') && size(k) <= %d)" % (rules.PROCESS_NAME.pattern, rules.PROCESS_NAME.max_length),
    "message": "process type names must be " + rules.PROCESS_NAME.allowed,
}


def _check_program(command: list[str]) -> list[str]:
    try:
        rules.COMMAND_PROGRAM.check(command[0])
    except ValueError as exc:
        raise ValueError(f"command[0]: {exc}") from None
    return command


Command = Annotated[
    list[CommandArg],
    Field(min_length=1, max_length=30,
          description="argv of a program in the release's venv bin/, e.g. [python, -m, myapp, migrate]: never a shell.",
          json_schema_extra={"x-kubernetes-validations": [_PROGRAM_CEL]}),
    AfterValidator(_check_program),
]
ReleaseRunOn = Literal["firstHost", "everyHost"]
StopSignal = Literal["TERM", "INT", "QUIT", "HUP", "USR1", "USR2"]


class ReleaseCommand(Model):
    """A command run once per revision before its workers start (e.g. database migrations)."""

    command: Command
    timeout_seconds: int = Field(
        default=300, ge=1, le=3600, description="Killed (with everything it started) and the revision failed after this long."
    )
    run_on: ReleaseRunOn = Field(
        default="firstHost",
        description=(
            "firstHost: once per rollout, on the first host (by node name), before any other host moves "
            "(shared state such as a database); everyHost: on each host before its own switch (per-host state)."
        ),
    )


class ProcessType(Model):
    """A process beside the web server (a queue worker, a scheduler), moved with each revision."""

    command: Command
    replicas: int = Field(default=1, ge=1, le=32, description="Copies of the process on each host.")
    stop_signal: StopSignal = Field(default="TERM", description="Signal that asks the process to finish and exit.")
    graceful_timeout_seconds: int = Field(
        default=30, ge=1, le=3600, description="Time from stopSignal to SIGKILL when the revision stops."
    )


def _check_process_names(processes: dict[str, ProcessType]) -> dict[str, ProcessType]:
    for name in processes:
        rules.PROCESS_NAME.check(name)
    return processes


class ReleaseTemplate(Model):
    """What a release is, wherever it runs: shared by AppRelease and HostRelease specs."""

    version: checked(rules.VERSION_LABEL, "Version label shown to humans, e.g. 1.2.0.")
    source: Source
    python: checked(rules.PYTHON_VERSION, "Python version on the host, e.g. 3.11.") = "3.11"
    entrypoint: checked(rules.ENTRYPOINT, "WSGI entrypoint, module:callable.")
    server: Server = Field(default_factory=Server)
    env: list[EnvVar] = Field(
        default_factory=list,
        max_length=100,
        description="Environment of the app processes.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    env_from: list[EnvFromSource] = Field(
        default_factory=list,
        max_length=20,
        description="Secrets and ConfigMaps whose keys all become environment variables (env wins on a clash).",
    )
    user: checked(
        rules.POSIX_USER,
        "Dedicated unprivileged user the app runs as (never root, never an account apprelease did not "
        "create for this namespace and app). Empty: derived from namespace and app (ar-<app>-<hash>).",
    ) | None = None
    proxy: Proxy
    health_check: HealthCheck = Field(default_factory=HealthCheck)
    release: ReleaseCommand | None = Field(
        default=None,
        description="Run once per revision before its workers start, e.g. migrations; not run again on a rollback.",
    )
    processes: Annotated[dict[str, ProcessType], AfterValidator(_check_process_names)] = Field(
        default_factory=dict,
        max_length=10,
        description="Processes beside the web server (workers, schedulers), started and stopped with each revision.",
        json_schema_extra={"x-kubernetes-validations": [_PROCESS_NAMES_CEL]},
    )
    resources: Resources | None = Field(
        default=None,
        description="Kernel-enforced limits of each revision's web processes (cgroups through the host's systemd; "
                    "ignored on hosts without systemd).",
    )
    revision_history_limit: int = Field(
        default=5, ge=1, le=50, description="Releases kept on disk for rollback besides the serving one."
    )
    restarted_at: checked(
        rules.RESTARTED_AT,
        "Set by `kubectl apprelease restart` (an RFC 3339 time): a new value starts new workers of the same "
        "build, as kubectl.kubernetes.io/restartedAt does for a Deployment.",
    ) | None = None

    @field_validator("env")
    @classmethod
    def _unique_env(cls, env: list[EnvVar]) -> list[EnvVar]:
        _require_unique("name", [e.name for e in env])
        return env


class AppReleaseSpec(ReleaseTemplate):
    """The desired release of one app across a set of hosts."""

    hosts: Hosts = Field(default_factory=Hosts)
    strategy: Strategy = Field(default_factory=Strategy)
    paused: bool = Field(default=False, description="Stop moving hosts to new revisions.")


class HostReleaseSpec(ReleaseTemplate):
    """The resolved release for one host; written by the operator, read by that host's agent."""

    app: checked(rules.DNS_LABEL, "Name of the AppRelease this host release belongs to.")
    node: checked(rules.DNS_SUBDOMAIN, "Node (host) that runs this release.")
    user: checked(rules.POSIX_USER, "The app's user on the host: spec.user, or the one derived from namespace and app.")
    build_id: checked(rules.DNS_LABEL, "Hash of the venv inputs; same inputs reuse the same venv.")
    revision: checked(rules.DNS_LABEL, "Hash of buildId and runtime config; a new one means new workers.")
    run_release_command: bool | None = Field(
        default=None,
        description="This host runs release.command (set by the operator: every host, or only the first one).",
    )
    values_digest: checked(rules.DNS_LABEL, "Keyed digest of the values env and envFrom reference (set by the "
                                            "operator; a new value means a new revision). Never the values.") | None = None


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(Model):
    """A metav1.Condition."""

    type: str = Field(max_length=316)
    status: ConditionStatus
    reason: str = Field(max_length=1024)
    message: str = Field(default="", max_length=32768)
    last_transition_time: datetime
    observed_generation: int | None = Field(default=None, ge=0)


# The release template of a revision as the user wrote it (the ReleaseTemplate fields of the
# AppRelease spec, camelCase): what `kubectl apprelease undo` applies again. Kept schemaless in
# the CRD: it was valid when it was recorded, and it is validated again when it is re-applied.
TemplateWire = Annotated[
    dict[str, Any],
    WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                    "description": "The release template of this revision, as the AppRelease spec had it."}),
]


class RetainedRelease(Model):
    version: str
    revision: str
    build_id: str
    first_deployed: datetime | None = None
    template: TemplateWire | None = None


class HostState(Model):
    node: str
    phase: str
    revision: str | None = None
    message: str | None = None
    processes: str | None = Field(default=None, description="Process types of the serving revision, running/replicas.")
    lock_digest: str | None = Field(
        default=None, description="Digest of the exact set of distributions this host installed for the buildId.")


class AppReleaseStatus(Model):
    observed_generation: int | None = None
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    desired_hosts: int = 0
    updated_hosts: int = 0
    ready_hosts: int = 0
    failed_hosts: int = 0
    ready: str | None = Field(default=None, description="Ready hosts over desired hosts, e.g. 2/2.")
    current_revision: str | None = None
    previous_revision: str | None = None
    history: list[RetainedRelease] = Field(default_factory=list)
    hosts: list[HostState] = Field(default_factory=list)
    last_progress_time: datetime | None = Field(
        default=None,
        description="When the rollout last made progress (a host moved or settled); the progress deadline counts from it.",
    )


# What a host is doing for its HostRelease, in rotation order (DESIGN.md's steps): the agent
# writes the in-progress phases as each step begins (throttled, agent/phases.py), then Ready or
# Failed. Building..Draining are unsettled like Pending; the old revision serves throughout.
HostPhase = Literal["Pending", "Building", "Starting", "HealthChecking", "Switching", "Draining", "Ready", "Failed",
                    "Terminating"]
IN_PROGRESS_PHASES = ("Building", "Starting", "HealthChecking", "Switching", "Draining")
# HostReleaseStatus.reason of a spec refused because another app on the host holds its
# (port, server name) or its port's TLS mode (api/claims.py). Not terminal: checked again at
# each reconcile, so the spec converges once the other app is gone.
CONFLICT_REASON = "Conflict"


class BuildRecord(Model):
    build_id: str
    reused: bool
    seconds: float
    lock_digest: str | None = Field(
        default=None,
        description="sha256 of the exact set (name==version + file hashes) the venv holds, from its release.json; "
                    "hosts of one buildId that show different digests resolved differently.",
    )


class ReleaseCommandRecord(Model):
    """The last release command this host ran."""

    revision: str
    exit_code: int | None = Field(default=None, description="Exit status; unset when its deadline killed it.")
    seconds: float
    at: datetime


class ProcessStatus(Model):
    """One process type of the serving revision on this host."""

    name: str
    replicas: int = Field(description="Replicas the spec asks for.")
    running: int = Field(description="Replicas the supervisor runs (restarted on crash).")


class LivenessStatus(Model):
    """The live revision's liveness on this host (healthCheck.periodSeconds set)."""

    failing: bool = Field(description="The last probe failed, or workers were restarted and no probe passed since.")
    consecutive_failures: int = 0
    restarts: int = Field(default=0, description="Times the agent restarted this revision's workers for liveness.")
    last_failure: str | None = Field(default=None, description="What the last failed probe saw.")
    last_restart_at: datetime | None = None
    log_tail: str | None = Field(default=None, description="The app's log tail when its workers were restarted.")


class RevisionEvent(Model):
    revision: str
    version: str
    at: datetime


class LogEndpoint(Model):
    """Where this host's agent serves the app's logs (`kubectl apprelease logs`).

    Written by the node's agent only (the own-node admission policy holds that), so a reader
    that trusts the HostRelease may pin the agent's self-signed certificate by its digest.
    """

    url: str = Field(description="https://ADDRESS:PORT of the agent's log endpoint.")
    cert_sha256: str = Field(description="sha256 of the agent's TLS certificate (DER), hex: pinned by clients.")


class HostReleaseStatus(Model):
    observed_generation: int | None = None
    phase: HostPhase | None = None
    serving_revision: str | None = None
    serving_build_id: str | None = None
    serving_version: str | None = None
    reason: str | None = Field(
        default=None, max_length=64,
        description="Why the phase is what it is, when the phase alone does not say: Conflict (another app on the "
                    "host holds this spec's port and server name; the message names it).",
    )
    message: str | None = None
    log_tail: str | None = Field(default=None, description="Tail of the app's log after a failure.")
    last_build: BuildRecord | None = None
    release_command: ReleaseCommandRecord | None = Field(
        default=None, description="The last release command run on this host (its output: logs/<revision>.release.log).")
    processes: list[ProcessStatus] = Field(default_factory=list, description="Process types of the serving revision.")
    liveness: LivenessStatus | None = Field(default=None, description="Liveness of the serving revision.")
    oom_kills: int | None = Field(
        default=None, description="Processes of the serving revision the kernel killed for exceeding resources.memoryMax.")
    history: list[RevisionEvent] = Field(default_factory=list, description="Revisions this host switched to.")
    retained_build_ids: list[str] = Field(
        default_factory=list, description="buildIds whose venv is on this host's disk: a rollback to them builds nothing."
    )
    logs: LogEndpoint | None = Field(default=None, description="The agent's log endpoint for this app.")
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    updated_at: datetime | None = None


class ObjectMeta(Model):
    model_config = ConfigDict(extra="allow")
    name: checked(rules.DNS_SUBDOMAIN, "Object name.")
    namespace: str = "default"
    generation: int | None = None


class AppRelease(Model):
    model_config = ConfigDict(extra="ignore")
    api_version: Literal["apprelease.dev/v1alpha1"] = API_VERSION
    kind: Literal["AppRelease"] = "AppRelease"
    metadata: ObjectMeta
    spec: AppReleaseSpec
    status: AppReleaseStatus | None = None

    @model_validator(mode="after")
    def _short_name(self) -> AppRelease:
        name = self.metadata.name
        if not re.fullmatch(rules.DNS_LABEL.pattern, name) or len(name) > APP_NAME_MAX:
            raise ValueError(f"metadata.name: {APP_NAME_MESSAGE}")
        return self


APP_NAME_MAX = 40
APP_NAME_MESSAGE = (
    f"must be a DNS-1123 label of at most {APP_NAME_MAX} characters (it names per-host objects, labels and directories)"
)


class HostRelease(Model):
    model_config = ConfigDict(extra="ignore")
    api_version: Literal["apprelease.dev/v1alpha1"] = API_VERSION
    kind: Literal["HostRelease"] = "HostRelease"
    metadata: ObjectMeta
    spec: HostReleaseSpec
    status: HostReleaseStatus | None = None
