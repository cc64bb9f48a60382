"""Real identities for RBAC tests: ServiceAccount tokens from the TokenRequest API, and
kubeconfigs made from them.

Who uses it: tests/e2e/test_rbac.py (the operator and the agents as their ServiceAccounts,
the agents' tokens bound to Pods on Nodes) and tests/e2e/test_leader.py. A token from
`kubectl create token` is the token a pod of that ServiceAccount gets (signed by the
apiserver's key); bound to a Pod whose spec.nodeName is set, it also carries the Node's
name in the user's extra info (`authentication.kubernetes.io/node-name`).
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from controlplane import ControlPlane, render_kubeconfig


@dataclass(frozen=True)
class Identity:
    """A token and a kubeconfig holding it; `kubectl` runs as that identity, never as admin."""

    name: str
    token: str
    kubeconfig: Path
    control_plane: ControlPlane

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        # --kubeconfig wins over the admin $KUBECONFIG that control_plane.kubectl sets.
        return self.control_plane.kubectl("--kubeconfig", str(self.kubeconfig), *args, input=input, check=check)

    def can_i(self, verb: str, resource: str, namespace: str | None = None, subresource: str | None = None,
              name: str | None = None) -> bool:
        """`kubectl auth can-i` as this identity (a SelfSubjectAccessReview: RBAC only, no admission)."""
        target = f"{resource}/{name}" if name else resource
        scope = ["-n", namespace] if namespace else ["--all-namespaces"]
        sub = [f"--subresource={subresource}"] if subresource else []
        result = self.kubectl("auth", "can-i", verb, target, *scope, *sub, check=False)
        answer = result.stdout.strip()
        if answer not in ("yes", "no"):
            raise AssertionError(f"can-i {verb} {target}: {answer!r} {result.stderr.strip()}")
        return answer == "yes"

    def whoami(self) -> dict:
        return json.loads(self.kubectl("auth", "whoami", "-o", "json").stdout)


def service_account_token(cp: ControlPlane, namespace: str, service_account: str, *,
                          bound_pod: str | None = None, duration: str = "1h") -> str:
    """A token for the ServiceAccount (TokenRequest), bound to `bound_pod` if given."""
    bound = ["--bound-object-kind", "Pod", "--bound-object-name", bound_pod] if bound_pod else []
    return cp.kubectl("create", "token", service_account, "-n", namespace, "--duration", duration, *bound).stdout.strip()


def write_kubeconfig(cp: ControlPlane, path: Path, user: str, token: str) -> Path:
    """A kubeconfig for the control plane with one token user (0600: it holds a credential)."""
    path.touch(mode=0o600)
    path.write_text(render_kubeconfig(cp.server_url, cp.ca_file, user, token))
    return path


def service_account_identity(cp: ControlPlane, directory: Path, namespace: str, service_account: str, *,
                             bound_pod: str | None = None) -> Identity:
    name = f"{service_account}@{bound_pod}" if bound_pod else service_account
    token = service_account_token(cp, namespace, service_account, bound_pod=bound_pod)
    kubeconfig = write_kubeconfig(cp, directory / f"{name.replace('@', '-')}.kubeconfig", name, token)
    return Identity(name=name, token=token, kubeconfig=kubeconfig, control_plane=cp)
