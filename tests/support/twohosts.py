"""What the two-host e2e stories read (tests/e2e/test_hosts_rollout.py, test_gitops.py).

One AppRelease in one namespace, its HostReleases, and what each host's nginx serves; the
stories add how they change the AppRelease (kubectl apply, or git commits through Argo CD).
"""

from __future__ import annotations

import json
from typing import Any

from controlplane import ControlPlane
from support.hosts import SERVER_NAME
from support.nginx import http_get


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
