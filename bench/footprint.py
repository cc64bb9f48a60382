"""Benchmark: memory and start-up time of `apprelease agent run` and `apprelease operator`, before/after.

Run by a developer or `make bench` (`.venv/bin/python bench/footprint.py [--apps 20] [--before REF]`),
not by the tests. Starts a local control plane (hack/controlplane.py) and measures, for the code
of this checkout ("after") and of git REF ("before", exported with `git archive` into a temp dir
and put first on PYTHONPATH; default: the last commit before issue 15's work):
  - agent start-up: exec until its /readyz answers 200 (imports, first list, watch started);
  - agent idle RSS (no HostReleases on its node), read from /proc after a settle;
  - agent steady RSS on a host serving N apps: N HostReleases (webxample from a local index,
    1 gunicorn worker each) are built and started once by a set-up agent, which then stops (the
    apps keep running under circusd, as on a real host); each measured agent then starts on
    that host, waits until every HostRelease is Ready again, settles, and is measured — so the
    before and after agents do the same work, and a build's transient memory is not counted;
  - operator start-up (exec until its liveness endpoint answers) and RSS after a settle, idle.
Prints one table, all numbers measured in this run. Everything it starts is stopped at the end,
and the N apps' accounts (app and build users) are deleted: their HostReleases are deleted while
an agent runs, which removes each app from the host with its accounts, as in production; what
that leaves (a bench that failed half-way, an agent that did not finish in time) is deleted
directly, by each account's owner record (host/users.py), never another app's account.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "hack"))
sys.path.insert(0, str(REPO / "bench"))

import yaml  # noqa: E402
from apprelease.host import users  # noqa: E402
from _benchkit import control_plane_with_crds, export_tree, free_port, http_ok, proc_stats, stop_process, wait  # noqa: E402
from controlplane import ControlPlane  # noqa: E402
from support.hosts import release_for  # noqa: E402
from support.pypi import start_webxample_index  # noqa: E402

# The last commit of main before issue 15 (a lean agent): the "before" of the table.
BEFORE_REF = "92c50ba"
NAMESPACE = "footprint"
NODE = "fp-host"
SETTLE_SECONDS = 5.0
REMOVAL_SECONDS = 120.0  # for the agent to remove the apps at the end (else: accounts deleted directly)


class Code:
    """One version of the code: how to run `apprelease` from it."""

    def __init__(self, label: str, python_path: Path | None):
        self.label, self.python_path = label, python_path

    def env(self, cp: ControlPlane) -> dict[str, str]:
        env = {k: v for k, v in cp.env().items() if k not in ("NODE_NAME",)}
        env["PYTHONUNBUFFERED"] = "1"
        if self.python_path:
            env["PYTHONPATH"] = str(self.python_path)
        return env

    def argv(self, *args: str) -> list[str]:
        return ["setpriv", "--pdeathsig", "KILL", "--", sys.executable, "-m", "apprelease.cli", *args]


def start_agent(code: Code, cp: ControlPlane, root: Path, log: Path) -> tuple[subprocess.Popen[bytes], float, str]:
    port = free_port()
    argv = code.argv("agent", "run", "--node", NODE, "--kubeconfig", str(cp.kubeconfig_path), "--root", str(root),
                     "--listen-address", "127.0.0.1", "--health-address", "127.0.0.1", "--health-port", str(port))
    started = time.monotonic()
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env=code.env(cp), start_new_session=True)
    ready = f"http://127.0.0.1:{port}/readyz"
    while not http_ok(ready):
        if proc.poll() is not None:
            raise RuntimeError(f"agent exited with {proc.returncode}; see {log}")
        if time.monotonic() - started > 120:
            raise RuntimeError(f"agent not ready after 120 s; see {log}")
        time.sleep(0.05)
    return proc, time.monotonic() - started, ready


def all_ready(cp: ControlPlane, count: int, since: float | None = None) -> bool:
    if count == 0:
        return True
    out = cp.kubectl("get", "hostreleases", "-n", NAMESPACE, "-o", "json").stdout
    items = json.loads(out)["items"]
    ready = [i for i in items if (i.get("status") or {}).get("phase") == "Ready"
             and (i.get("status") or {}).get("observedGeneration") == i["metadata"]["generation"]]
    return len(items) == count and len(ready) == count


class Refused(RuntimeError):
    """An older agent that cannot read today's HostReleases (a field it does not know)."""


def measure_agent(code: Code, cp: ControlPlane, root: Path, apps: int, log: Path) -> dict[str, float]:
    offset = log.stat().st_size if log.exists() else 0
    proc, startup, _ = start_agent(code, cp, root, log)

    def ready() -> bool:
        if all_ready(cp, apps):
            return True
        with log.open("rb") as f:
            f.seek(offset)
            refusal = next((line for line in f.read().decode(errors="replace").splitlines()
                            if "unknown field" in line), None)
        if refusal is not None:
            raise Refused(refusal.strip()[-160:])
        return False

    try:
        wait(ready, 900, f"{apps} apps Ready under the {code.label} agent")
        time.sleep(SETTLE_SECONDS)
        return {"startup_s": startup, **proc_stats(proc.pid)}
    finally:
        stop_process(proc, 120)


def measure_operator(code: Code, cp: ControlPlane, log: Path) -> dict[str, float]:
    url = f"http://127.0.0.1:{free_port()}/healthz"
    argv = code.argv("operator", "--kubeconfig", str(cp.kubeconfig_path), "--namespace", NAMESPACE + "-op",
                     "--liveness", url)
    started = time.monotonic()
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env=code.env(cp), start_new_session=True)
    try:
        while not http_ok(url):
            if proc.poll() is not None or time.monotonic() - started > 120:
                raise RuntimeError(f"operator did not come up; see {log}")
            time.sleep(0.05)
        startup = time.monotonic() - started
        time.sleep(SETTLE_SECONDS)
        return {"startup_s": startup, **proc_stats(proc.pid)}
    finally:
        stop_process(proc, 30)


def app_name(i: int) -> str:
    return f"fp{i:02d}"


def remove_apps(code: Code, cp: ControlPlane, root: Path, apps: int, log: Path) -> None:
    """Delete the HostReleases while an agent runs: it removes each app from the host, accounts
    included (its finalizer), as when an app leaves a host in production."""
    proc, _, _ = start_agent(code, cp, root, log)
    try:
        cp.kubectl("delete", "hostreleases", "--all", "-n", NAMESPACE, "--wait=false")
        try:
            wait(lambda: not json.loads(cp.kubectl("get", "hostreleases", "-n", NAMESPACE, "-o", "json").stdout)["items"],
                 REMOVAL_SECONDS, f"the agent removing {apps} apps")
        except RuntimeError as exc:
            print(f"# clean-up: {exc}; their accounts are deleted directly", file=sys.stderr)
    finally:
        stop_process(proc, 120)


def delete_accounts(apps: int) -> None:
    """The accounts of the bench's apps still on the host (a no-op after `remove_apps`)."""
    left = [name for i in range(apps) for name in users.remove_accounts(NAMESPACE, app_name(i))]
    if left:
        print(f"# clean-up: deleted {len(left)} account(s) the agent had not: {' '.join(left)}", file=sys.stderr)


def create_apps(cp: ControlPlane, index_url: str, apps: int) -> None:
    cp.kubectl("create", "namespace", NAMESPACE, check=False)
    port = free_port()
    docs = []
    for i in range(apps):
        release = release_for(index_url, "1.0.0", port=port, node=NODE, name=app_name(i), namespace=NAMESPACE,
                              serverNames=[f"{app_name(i)}.test"], server={"workers": 1, "threads": 1})
        docs.append(release.wire())
    if docs:
        cp.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--apps", type=int, default=20, help="apps on the measured host (default 20)")
    parser.add_argument("--before", default=BEFORE_REF, help=f"git ref of the 'before' code (default {BEFORE_REF})")
    args = parser.parse_args()

    with ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="fp-", dir="/tmp"))
        tmp.chmod(0o755)  # app users traverse the agent root
        stack.callback(shutil.rmtree, tmp, True)
        before = Code(f"before ({args.before})", export_tree(args.before, Path(tempfile.mkdtemp(dir=tmp))))
        after = Code("after (this checkout)", None)
        cp = control_plane_with_crds(stack, tmp / "cp")
        cp.kubectl("create", "namespace", NAMESPACE + "-op", check=False)

        root = tmp / "host"
        # Last of all (after circusd stopped their processes: userdel refuses a user's running
        # ones): whatever accounts of the bench's apps are still there.
        stack.callback(delete_accounts, args.apps)
        # The agent starts the host's circusd and nginx and leaves them running when it exits
        # (as on a real host): stopped here, before the temp dir goes.
        stack.callback(lambda: subprocess.run(
            [sys.executable, "-m", "apprelease.cli", "agent", "stop", "--root", str(root)], capture_output=True))
        results: dict[str, dict[str, dict[str, float]]] = {}
        for code in (before, after):
            results[code.label] = {
                "operator": measure_operator(code, cp, tmp / "operator.log"),
                "agent idle": measure_agent(code, cp, root, 0, tmp / "agent.log"),
            }
        if args.apps:
            index = start_webxample_index(tmp / "pypi")
            stack.callback(index.stop)
            create_apps(cp, index.url, args.apps)
            built = time.monotonic()
            measure_agent(after, cp, root, args.apps, tmp / "agent.log")  # the set-up agent builds and starts them
            print(f"# set-up: {args.apps} apps built and Ready in {time.monotonic() - built:.1f} s", file=sys.stderr)
            for code in (before, after):
                try:
                    results[code.label][f"agent, {args.apps} apps"] = measure_agent(code, cp, root, args.apps,
                                                                                   tmp / "agent.log")
                except Refused as exc:  # e.g. a "before" older than today's CRD fields
                    print(f"# {code.label}: its agent cannot read today's HostReleases: {exc}", file=sys.stderr)
            remove_apps(after, cp, root, args.apps, tmp / "agent.log")
            cp.kubectl("delete", "namespace", NAMESPACE, "--wait=false", check=False)

    print_table(results, args.apps)
    return 0


def print_table(results: dict[str, dict[str, dict[str, float]]], apps: int) -> None:
    labels = list(results)
    rows = ["operator", "agent idle"] + ([f"agent, {apps} apps"] if apps else [])
    print("\nfootprint (RSS from /proc after a 5 s settle; start-up = exec until ready/live)")
    print(f"{'process':<18} {'':<9} " + " ".join(f"{label:>26}" for label in labels) + f" {'after/before':>13}")
    for row in rows:
        for metric, unit in (("rss_mb", "MB"), ("startup_s", "s")):
            values = [results[label].get(row, {}).get(metric) for label in labels]
            ratio = f"{values[-1] / values[0]:>12.2f}x" if None not in values else f"{'n/a':>13}"
            print(f"{row:<18} {metric.split('_')[0] + ' ' + unit:<9} "
                  + " ".join(f"{v:>26.2f}" if v is not None else f"{'n/a (see above)':>26}" for v in values)
                  + f" {ratio}")
    print("targets: agent RSS <= 60 MB steady with 20 apps (issue 15); the operator's, <= 200 MB at 500 Nodes x 2,000 apps, "
          "is measured under load by bench/fleet.py")


if __name__ == "__main__":
    sys.exit(main())
