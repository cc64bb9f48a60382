"""The agent's small API client (apprelease.kubeclient) and the agent's footprint.

Covers: the agent's run path imports neither the kubernetes package nor cryptography (checked in
a fresh interpreter, as behaviour: the modules are not in sys.modules); kubeconfig loading (the
current or a named context, token, relative tokenFile and certificate paths, inline data, a
KUBECONFIG list merged first-wins, a missing context, auth-provider refused, an exec plugin's
token used until it expires); `describe` reads the Status message of ApiError and of the
kubernetes package's ApiException alike.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from apprelease import kubeclient

pytestmark = pytest.mark.unit


def test_the_agent_run_path_imports_no_kubernetes_models_and_no_cryptography():
    code = textwrap.dedent("""
        import sys
        from apprelease import cli
        from apprelease.agent import cli as agent_cli, cluster, kube, logserver
        cli.build_parser()
        print(sorted({m.split('.')[0] for m in sys.modules}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    top = json.loads(out.replace("'", '"'))
    assert "kubernetes" not in top and "cryptography" not in top and "kopf" not in top


def write(path: Path, doc: dict) -> Path:
    path.write_text(json.dumps(doc))  # JSON is YAML
    return path


def kubeconfig(server: str = "https://127.0.0.1:6443", user: dict | None = None, *, name: str = "c",
               current: str | None = "c", cluster: dict | None = None) -> dict:
    doc = {
        "clusters": [{"name": name, "cluster": {"server": server, **(cluster or {})}}],
        "users": [{"name": name, "user": user or {"token": "t0k"}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
    }
    if current:
        doc["current-context"] = current
    return doc


def test_token_and_relative_paths(tmp_path: Path):
    (tmp_path / "tok").write_text("from-file\n")
    path = write(tmp_path / "k", kubeconfig(user={"tokenFile": "tok"}, cluster={"certificate-authority": "ca.crt"}))
    config = kubeclient.load_config(str(path))
    assert config.server == "https://127.0.0.1:6443"
    assert config.ca_file == str(tmp_path / "ca.crt")
    assert config.authorization() == "Bearer from-file"


def test_inline_data_and_insecure(tmp_path: Path):
    user = {"client-certificate-data": base64.b64encode(b"CERT").decode(),
            "client-key-data": base64.b64encode(b"KEY").decode()}
    path = write(tmp_path / "k", kubeconfig(user=user, cluster={"insecure-skip-tls-verify": True}))
    config = kubeclient.load_config(str(path))
    assert (config.cert_data, config.key_data, config.insecure) == (b"CERT", b"KEY", True)
    assert config.authorization() is None


def test_a_kubeconfig_list_is_merged_first_wins(tmp_path: Path):
    first = write(tmp_path / "a", kubeconfig("https://first:1", {"token": "a"}, name="x", current="x"))
    second = write(tmp_path / "b", kubeconfig("https://second:2", {"token": "b"}, name="x", current=None))
    third = write(tmp_path / "c", kubeconfig("https://third:3", {"token": "c"}, name="y", current="y"))
    config = kubeclient.load_config(f"{first}:{second}:{third}")
    assert (config.server, config.token) == ("https://first:1", "a")
    named = kubeclient.load_kubeconfig([str(first), str(third)], context="y")
    assert (named.server, named.token) == ("https://third:3", "c")


def test_a_missing_context_or_file_is_a_config_error(tmp_path: Path):
    path = write(tmp_path / "k", kubeconfig())
    with pytest.raises(kubeclient.ConfigError, match="no context named 'nope'"):
        kubeclient.load_kubeconfig([str(path)], context="nope")
    with pytest.raises(kubeclient.ConfigError, match="no kubeconfig"):
        kubeclient.load_config(str(tmp_path / "absent"))


def test_auth_provider_is_refused_with_a_reason(tmp_path: Path):
    path = write(tmp_path / "k", kubeconfig(user={"auth-provider": {"name": "gcp"}}))
    with pytest.raises(kubeclient.ConfigError, match="auth-provider is not supported"):
        kubeclient.load_config(str(path))


def test_an_exec_plugin_token_is_used_until_it_expires(tmp_path: Path):
    counter = tmp_path / "runs"
    plugin = tmp_path / "plugin"
    plugin.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import json, os, pathlib
        p = pathlib.Path({str(counter)!r}); n = int(p.read_text()) + 1 if p.exists() else 1; p.write_text(str(n))
        print(json.dumps({{"kind": "ExecCredential", "status": {{"token": os.environ["PREFIX"] + str(n),
                          "expirationTimestamp": os.environ["EXPIRES"]}}}}))
    """))
    plugin.chmod(0o755)
    exec_spec = {"apiVersion": "client.authentication.k8s.io/v1", "command": str(plugin),
                 "env": [{"name": "PREFIX", "value": "tok-"}, {"name": "EXPIRES", "value": "2999-01-01T00:00:00Z"}]}
    config = kubeclient.load_config(str(write(tmp_path / "k", kubeconfig(user={"exec": exec_spec}))))
    assert config.authorization() == "Bearer tok-1"
    assert config.authorization() == "Bearer tok-1"  # not expired: not run again
    exec_spec["env"][1]["value"] = "2000-01-01T00:00:00Z"
    expired = kubeclient.load_config(str(write(tmp_path / "k2", kubeconfig(user={"exec": exec_spec}))))
    assert expired.authorization() == "Bearer tok-2"
    assert expired.authorization() == "Bearer tok-3"  # already expired: run for every request


def test_describe_reads_the_status_message_of_either_error_type():
    from kubernetes.client.exceptions import ApiException

    body = json.dumps({"kind": "Status", "message": "hostreleases.apprelease.dev \"x\" not found"})
    assert kubeclient.describe(kubeclient.ApiError(404, "Not Found", body)) == \
        'HTTP 404: hostreleases.apprelease.dev "x" not found'
    plugin_error = ApiException(status=403, reason="Forbidden")
    plugin_error.body = "<html>proxy</html>"
    assert kubeclient.describe(plugin_error) == "HTTP 403: Forbidden"
    assert kubeclient.describe(OSError("refused")) == "OSError: refused"
