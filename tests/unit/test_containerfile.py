"""The Containerfile and manifests/ name only commands that exist (the image cannot be built here).

Covers: every container of the operator Deployment and the agent DaemonSet that runs the
apprelease image parses with the real argparse parser and reaches the intended command
(`apprelease operator`, `apprelease agent run`); the image's entrypoint is the package's
console script; the agent's interpreter is the runtime the init container copies from the
path the Containerfile builds, under the hostPath mounted at the same path; probe ports are
the ports the commands serve; the kustomization lists every manifest file and crds/Kustomization
every CRD the models generate.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

from apprelease import cli
from apprelease.agent import cli as agent_cli
from apprelease.api import crdgen
from apprelease.controller import cli as controller_cli

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
CONTAINERFILE = (ROOT / "Containerfile").read_text()
HOST_ROOT = "/var/lib/apprelease"
RUNTIME_IN_IMAGE = "/opt/apprelease/runtime"


def manifest_objects() -> dict[tuple[str, str], dict]:
    objects = {}
    for path in MANIFESTS.glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and "kind" in doc and doc["kind"] != "Kustomization":
                objects[(doc["kind"], doc["metadata"]["name"])] = doc
    return objects


def containerfile_instruction(name: str) -> str:
    lines = [line for line in CONTAINERFILE.splitlines() if line.startswith(f"{name} ")]
    assert len(lines) == 1, f"expected one {name} in Containerfile, got {lines}"
    return lines[0].split(" ", 1)[1]


def entrypoint() -> list[str]:
    return yaml.safe_load(containerfile_instruction("ENTRYPOINT"))  # JSON exec form is YAML


def argv_of(container: dict) -> tuple[list[str], list[str]]:
    """(program, arguments) the container runs: its command or the image's entrypoint."""
    return container.get("command") or entrypoint(), container.get("args") or []


def pod_spec(kind: str, name: str) -> dict:
    return manifest_objects()[(kind, name)]["spec"]["template"]["spec"]


def test_image_base_and_entrypoint_is_the_console_script():
    assert containerfile_instruction("FROM") == "python:3.11-slim"
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entrypoint() == ["apprelease"]
    assert scripts["apprelease"] == "apprelease.cli:main"


def test_operator_container_runs_apprelease_operator_with_leader_election():
    (container,) = pod_spec("Deployment", "apprelease-operator")["containers"]
    program, args = argv_of(container)
    assert program == ["apprelease"]
    parsed = cli.build_parser().parse_args(args)
    assert parsed.func is controller_cli._cmd_operator
    assert parsed.leader_elect and parsed.all_namespaces
    port = int(re.fullmatch(r"http://0\.0\.0\.0:(\d+)/healthz", parsed.liveness).group(1))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in ("livenessProbe", "readinessProbe"):
        assert ports[container[probe]["httpGet"]["port"]] == port
        assert container[probe]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert pod_spec("Deployment", "apprelease-operator")["securityContext"]["runAsNonRoot"] is True


def test_agent_container_runs_apprelease_agent_run_from_the_host_runtime():
    spec = pod_spec("DaemonSet", "apprelease-agent")
    (container,) = spec["containers"]
    program, args = argv_of(container)
    assert program[1:] == ["-m", "apprelease.cli"]  # the same parser as the console script
    assert program[0] == f"{HOST_ROOT}/runtime/current/bin/python3"
    parsed = cli.build_parser().parse_args(args)
    assert parsed.func is agent_cli._cmd_run
    assert parsed.host_namespaces and parsed.root == HOST_ROOT
    env = {e["name"]: e for e in container["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    # shutil.which("uv") must find the host-visible runtime's uv, never the image's.
    path = env["PATH"]["value"].split(":")
    assert path[0] == f"{HOST_ROOT}/runtime/current/bin" and "/usr/local/bin" not in path
    assert spec["hostPID"] is True and container["securityContext"]["privileged"] is True
    (mount,) = container["volumeMounts"]
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    assert volume["hostPath"]["path"] == mount["mountPath"] == HOST_ROOT
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports[container["livenessProbe"]["httpGet"]["port"]] == parsed.health_port
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_agent_runtime_is_what_the_image_builds_and_the_init_container_installs():
    (init,) = pod_spec("DaemonSet", "apprelease-agent")["initContainers"]
    script = init["command"][-1]
    assert f"cp -a {RUNTIME_IN_IMAGE} " in script
    assert f"{RUNTIME_IN_IMAGE}/RUNTIME_ID" in script and f"dest={HOST_ROOT}/runtime" in script
    assert '"$dest/current"' in script
    assert f"--python {RUNTIME_IN_IMAGE}/bin/python3" in CONTAINERFILE
    assert f"> {RUNTIME_IN_IMAGE}/RUNTIME_ID" in CONTAINERFILE
    assert f"{RUNTIME_IN_IMAGE}/bin/uv" in CONTAINERFILE  # found beside the agent's python
    assert "util-linux" in CONTAINERFILE  # nsenter


def test_every_manifest_file_is_in_the_kustomization_and_every_crd_in_crds_kustomization():
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    files = {p.name for p in MANIFESTS.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files | {"../crds"}
    crds = yaml.safe_load((ROOT / "crds" / "Kustomization").read_text())
    assert sorted(crds["resources"]) == sorted(crdgen.crds())


def test_shell_in_manifests_is_only_the_init_script():
    # No `sh -c` wrappers around apprelease commands: they would hide argv from this test.
    for obj in manifest_objects().values():
        if obj["kind"] not in ("Deployment", "DaemonSet"):
            continue
        for container in obj["spec"]["template"]["spec"]["containers"]:
            assert "sh" not in shlex.split(" ".join(container.get("command") or []))
