"""What the two-host e2e stories stand on and read (tests/e2e/test_hosts_rollout.py,
test_gitops.py, test_kubectl_plugin.py).

`two_hosts` makes the world: a namespace, two Nodes, an agent per Node (each with its own
root, circusd and nginx on its own loopback address) and the operator, and takes it all down
again. `HostsView` reads one AppRelease in it, its HostReleases, and what each host's nginx
serves; the stories add how they change the AppRelease (kubectl apply, git commits through
Argo CD, the kubectl plugin).
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controlplane import ControlPlane
from support.agents import AgentProcess
from support.hosts import SERVER_NAME
from support.nginx import http_get
from support.operator import OperatorProcess


@dataclass
class TwoHosts:
    namespace: str
    agents: dict[str, AgentProcess]
    operator: OperatorProcess


@contextlib.contextmanager
def two_hosts(cp: ControlPlane, *, namespace: str, addresses: dict[str, str], selector: dict[str, str],
              logs: Path, roots: Path, agent_args: Sequence[str] = (), create_namespace: bool = True,
              host_args: dict[str, Sequence[str]] | None = None,
              before_teardown: Callable[[], object] = lambda: None) -> Iterator[TwoHosts]:
    """`roots` short: unix socket paths live under it; each agent's root is named by its
    node name's last 8 characters. `host_args`: per node host options (e.g. the
    --host-namespaces --host-pid of a systemd test host)."""
    if create_namespace:
        cp.kubectl("create", "namespace", namespace)
    for node in addresses:
        cp.kubectl("apply", "-f", "-", input=json.dumps(
            {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node, "labels": selector}}))
    roots.mkdir(mode=0o755)
    agents = {node: AgentProcess(node=node, root=roots / node[-8:], kubeconfig=cp.kubeconfig_path,
                                 log_path=logs / f"{node}.log", listen_address=address, resync_seconds=2,
                                 extra_args=list(agent_args), host_extra=list((host_args or {}).get(node, ())))
              for node, address in addresses.items()}
    operator = OperatorProcess(cp, logs / "operator.log", namespaces=[namespace])
    try:
        for agent in agents.values():
            agent.start()
        operator.start()
        yield TwoHosts(namespace, agents, operator)
    finally:
        before_teardown()
        if operator.running:
            operator.stop()
        for agent in agents.values():
            agent.close()
        for node in addresses:
            cp.kubectl("delete", "node", node, "--ignore-not-found", check=False)
        cp.kubectl("delete", "namespace", namespace, "--wait=false", "--ignore-not-found", check=False)
        shutil.rmtree(roots, ignore_errors=True)


class HostsView:
    def __init__(self, cp: ControlPlane, namespace: str, port: int, addresses: dict[str, str], app: str):
        self.cp, self.namespace, self.port, self.addresses, self.app_name = cp, namespace, port, addresses, app

    def get(self, *args: str) -> dict[str, Any]:
        return json.loads(self.cp.kubectl("get", *args, "-n", self.namespace, "-o", "json").stdout)

    def app_release(self) -> dict[str, Any]:
        """The AppRelease, or {} while it does not exist."""
        found = self.cp.kubectl("get", "ar", self.app_name, "-n", self.namespace, "-o", "json", check=False)
        return json.loads(found.stdout) if found.returncode == 0 else {}

    def conditions(self) -> dict[str, dict]:
        return {c["type"]: c for c in (self.app_release().get("status") or {}).get("conditions", [])}

    def host_releases(self) -> dict[str, dict]:
        items = self.get("hr", "-l", f"apprelease.dev/app={self.app_name}")["items"]
        return {hr["spec"]["node"]: hr for hr in items}

    def served(self, node: str) -> str | None:
        """The version `node`'s nginx serves, None if nothing answers 200."""
        try:
            resp = http_get(self.port, "/version", SERVER_NAME, address=self.addresses[node])
        except OSError:
            return None
        return resp.json()["version"] if resp.status == 200 else None
