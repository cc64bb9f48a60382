"""`make demo`: apprelease on this machine, from nothing, with real parts only.

    hack/demo up [--gitops]   control plane, CRDs, index, two hosts, the operator; v1 -> v2 -> back to v1;
                              with --gitops (make demo GITOPS=1) the story again, driven by git commits
                              through a real Argo CD
    hack/demo down            stop everything `up` started (also what Ctrl-C during `up` does)

What runs, all on loopback, all state under `.demo/` (gitignored):
- etcd + kube-apiserver + kube-controller-manager built from Go modules (hack/controlplane.py);
- a PEP 503 index on 127.0.0.1:8765 serving webxample's wheels, built here (tests/support/pypi.py);
- two hosts, `host-a` and `host-b`: Node objects, and one agent each (`apprelease agent run`)
  with its own root under .demo/hosts/, its own circusd, and its own nginx listening on
  127.0.0.2 and 127.0.0.3 respectively;
- the operator (`apprelease operator`);
- with --gitops: Argo CD v3.2.11 built from Go modules (hack/argocd.py: redis, repo-server,
  application-controller), an Application on a local git repository under .demo/gitops-repo;
- `kubectl` is the one built with the control plane, same version as the server.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import controlplane  # noqa: E402

REPO = controlplane.REPO
STATE = REPO / ".demo"
INDEX_PORT = int(os.environ.get("APPRELEASE_DEMO_INDEX_PORT", "8765"))
EXAMPLE = REPO / "manifests" / "examples" / "webxample.yaml"
PYTHON = REPO / ".venv" / "bin" / "python"
APPRELEASE = REPO / ".venv" / "bin" / "apprelease"
HOSTS = {"host-a": "127.0.0.2", "host-b": "127.0.0.3"}
SERVER_NAME = "webxample.local"
APP_PORT = 8080


def say(message: str) -> None:
    print(f"\n\033[1m==> {message}\033[0m", flush=True)


def show(cp: controlplane.ControlPlane, *args: str) -> str:
    print(f"$ kubectl {' '.join(args)}", flush=True)
    out = cp.kubectl(*args).stdout
    print(out.rstrip(), flush=True)
    return out


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"demo: timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.3)


def _pid_alive(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def start_process(name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
    """A background process of the demo, in its own session, with a pid file and a log."""
    pid_file = STATE / f"{name}.pid"
    if _pid_alive(pid_file):
        print(f"{name} already running")
        return
    (STATE / "logs").mkdir(parents=True, exist_ok=True)
    log = (STATE / "logs" / f"{name}.log").open("a")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO,
                            env={**os.environ, **(env or {})})
    pid_file.write_text(str(proc.pid))
    print(f"{name}: pid {proc.pid}, log .demo/logs/{name}.log")


def stop_process(name: str) -> None:
    pid_file = STATE / f"{name}.pid"
    pid = _pid_alive(pid_file)
    if pid:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while _pid_alive(pid_file) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _pid_alive(pid_file):
            os.kill(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)


def start_index() -> None:
    pid_file = STATE / "index.pid"
    if _pid_alive(pid_file):
        print(f"package index already serving on 127.0.0.1:{INDEX_PORT}")
        return
    log = (STATE / "index.log").open("w")
    proc = subprocess.Popen(
        [str(PYTHON), "-P", str(REPO / "tests" / "support" / "pypi.py"), "--dir", str(STATE / "wheels"),
         "--port", str(INDEX_PORT)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO,
    )
    pid_file.write_text(str(proc.pid))
    wait_for(lambda: "serving" in (STATE / "index.log").read_text() or proc.poll() is not None, 300,
             "the package index to build webxample's wheels")
    if proc.poll() is not None:
        raise SystemExit(f"demo: the package index failed:\n{(STATE / 'index.log').read_text()[-2000:]}")
    print((STATE / "index.log").read_text().strip())


def stop_index() -> None:
    pid = _pid_alive(STATE / "index.pid")
    if pid:
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: _pid_alive(STATE / "index.pid") is None, 20, "the package index to stop")
    (STATE / "index.pid").unlink(missing_ok=True)


def crds_ready(cp: controlplane.ControlPlane) -> bool:
    out = cp.kubectl("get", "crd", "-o", "json").stdout
    names = {"appreleases.apprelease.dev", "hostreleases.apprelease.dev"}
    established = {
        c["metadata"]["name"] for c in json.loads(out)["items"]
        if any(x["type"] == "Established" and x["status"] == "True" for x in (c.get("status") or {}).get("conditions") or [])
    }
    return names <= established and cp.kubectl("get", "appreleases", "-A", check=False).returncode == 0


def get_json(cp: controlplane.ControlPlane, *args: str) -> dict:
    return json.loads(cp.kubectl("get", *args, "-o", "json").stdout)


def curl(address: str, path: str = "/version") -> str:
    import http.client

    conn = http.client.HTTPConnection(address, APP_PORT, timeout=5)
    try:
        conn.request("GET", path, headers={"Host": SERVER_NAME})
        resp = conn.getresponse()
        return f"{resp.status} {resp.read().decode(errors='replace').strip()}"
    except OSError as exc:
        return f"error: {exc}"
    finally:
        conn.close()


def show_curls(path: str = "/version") -> None:
    for host, address in HOSTS.items():
        print(f"$ curl -H 'Host: {SERVER_NAME}' http://{address}:{APP_PORT}{path}    # {host}")
        print(f"  {curl(address, path)}")


def progress_line(cp: controlplane.ControlPlane) -> tuple[str, bool]:
    ar = get_json(cp, "ar", "webxample")
    hrs = get_json(cp, "hr", "-l", "apprelease.dev/app=webxample")["items"]
    status = ar.get("status") or {}
    hosts = "  ".join(
        f"{h['spec']['node']}: {(h.get('status') or {}).get('servingVersion') or '-'}"
        f" ({(h.get('status') or {}).get('phase') or 'Pending'}{'' if h['spec']['version'] == (h.get('status') or {}).get('servingVersion') else ' -> ' + h['spec']['version']})"
        for h in sorted(hrs, key=lambda h: h["spec"]["node"])
    )
    conditions = {c["type"]: c for c in status.get("conditions", [])}
    done = (
        status.get("observedGeneration") == ar["metadata"]["generation"]
        and status.get("readyHosts") == status.get("desiredHosts") == len(HOSTS)
        and conditions.get("Progressing", {}).get("reason") == "RolloutComplete"
    )
    line = f"{ar['spec']['version']}  ready {status.get('ready', '0/0')}  |  {hosts}"
    return line, done


def wait_rollout(cp: controlplane.ControlPlane, version: str, timeout: float = 300) -> float:
    """Prints a live progress line until the rollout of `version` is complete; returns its duration."""
    started = time.monotonic()
    last = ""
    while True:
        line, done = progress_line(cp)
        done = done and line.startswith(f"{version} ")
        if line != last:
            print(f"  [{time.monotonic() - started:5.1f}s] {line}", flush=True)
            last = line
        if done:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise SystemExit(f"demo: rollout not complete after {timeout:.0f}s; see .demo/logs/")
        time.sleep(0.3)


def apply_version(cp: controlplane.ControlPlane, version: str) -> None:
    """The example at `version` (it names 1.0.0), applied as a user would."""
    if version == "1.0.0":
        show(cp, "apply", "-f", str(EXAMPLE))
        return
    print(f"$ sed 's/1.0.0/{version}/' {EXAMPLE.relative_to(REPO)} | kubectl apply -f -")
    print(cp.kubectl("apply", "-f", "-", input=EXAMPLE.read_text().replace("1.0.0", version)).stdout.rstrip())


GITOPS_REPO = STATE / "gitops-repo"
GITOPS_APP = "webxample-gitops"


def git(*args: str) -> str:
    out = subprocess.run(["git", "-c", "user.name=apprelease demo", "-c", "user.email=demo@localhost", *args],
                         cwd=GITOPS_REPO, check=True, capture_output=True, text=True)
    return out.stdout.strip()


def argo_view(cp: controlplane.ControlPlane) -> tuple[str, str | None, str | None]:
    """(a line for people, the commit synced and applied, the AppRelease's health) as Argo CD reports them."""
    app = json.loads(cp.kubectl("get", "application", GITOPS_APP, "-n", "argocd", "-o", "json").stdout)
    status = app.get("status") or {}
    sync = status.get("sync") or {}
    health = next((r.get("health") or {} for r in status.get("resources", []) if r.get("kind") == "AppRelease"), {})
    line = (f"Argo CD: {GITOPS_APP} sync {sync.get('status')} @ {(sync.get('revision') or '')[:7]}, "
            f"AppRelease health {health.get('status')}" + (f" ({health['message']})" if health.get("message") else ""))
    operation = status.get("operationState") or {}
    applied = (sync.get("status") == "Synced" and operation.get("phase") == "Succeeded"
               and (operation.get("syncResult") or {}).get("revision") == sync.get("revision"))
    return line, sync.get("revision") if applied else None, health.get("status")


def commit_and_sync(cp: controlplane.ControlPlane, message: str, revert: bool = False, version: str = "") -> None:
    if revert:
        git("revert", "--no-edit", "HEAD")
        print("$ git revert --no-edit HEAD")
    else:
        (GITOPS_REPO / "apps" / "webxample.yaml").write_text(EXAMPLE.read_text().replace("1.0.0", version))
        git("add", "-A")
        git("commit", "-q", "-m", message)
        print(f"$ git commit -am '{message}'")
    head = git("rev-parse", "HEAD")
    cp.kubectl("annotate", "application", GITOPS_APP, "-n", "argocd", "argocd.argoproj.io/refresh=normal",
               "--overwrite", check=False)
    wait_for(lambda: argo_view(cp)[1] == head, 120, f"Argo CD to sync {head[:7]}")


def gitops_act(cp: controlplane.ControlPlane) -> None:
    sys.path.insert(0, str(REPO / "hack"))
    import argocd  # hack/argocd.py

    say("9. GitOps: a real Argo CD (built from Go modules) syncs the AppRelease from a local git repository")
    argo = argocd.ArgoCD(argocd.DEMO_STATE_DIR, cp)
    if len(argo.running_components()) != len(argocd.COMPONENTS):
        argo.start()
    print(f"Argo CD running; state and logs in {argo.state_dir.relative_to(REPO)}")
    if not (GITOPS_REPO / ".git").exists():
        (GITOPS_REPO / "apps").mkdir(parents=True)
        git("init", "-q", "-b", "main")
    if not (GITOPS_REPO / "apps" / "webxample.yaml").exists():
        (GITOPS_REPO / "apps" / "webxample.yaml").write_text(EXAMPLE.read_text())
        git("add", "-A")
        git("commit", "-q", "-m", "webxample 1.0.0")
    import yaml

    app = yaml.safe_load((REPO / "manifests" / "argocd" / "application.yaml").read_text())
    app["metadata"] = {"name": GITOPS_APP, "namespace": "argocd"}  # no finalizer: demo-down must not wait
    app["spec"]["source"].update(repoURL=f"file://{GITOPS_REPO}", path="apps", targetRevision="main")
    print(f"$ kubectl apply -f manifests/argocd/application.yaml   # repoURL file://{GITOPS_REPO.relative_to(REPO)}")
    print(cp.kubectl("apply", "-f", "-", input=json.dumps(app)).stdout.rstrip())
    head = git("rev-parse", "HEAD")
    wait_for(lambda: argo_view(cp)[1] == head and argo_view(cp)[2] == "Healthy", 120,
             "Argo CD to sync the repository and report the AppRelease Healthy")
    print(argo_view(cp)[0])

    print("\nCommit 2.0.0; Argo CD syncs it; the hosts move one at a time:")
    started = time.monotonic()
    commit_and_sync(cp, "webxample 2.0.0", version="2.0.0")
    wait_rollout(cp, "2.0.0")
    wait_for(lambda: argo_view(cp)[2] == "Healthy", 60, "Argo CD to report Healthy")
    print(f"commit -> served on both hosts in {time.monotonic() - started:.1f}s")
    print(argo_view(cp)[0])
    show_curls()

    print("\nRollback is `git revert`; nothing is rebuilt:")
    started = time.monotonic()
    commit_and_sync(cp, "", revert=True)
    wait_rollout(cp, "1.0.0")
    wait_for(lambda: argo_view(cp)[2] == "Healthy", 60, "Argo CD to report Healthy")
    print(f"revert -> served on both hosts in {time.monotonic() - started:.1f}s")
    print(argo_view(cp)[0])
    show_curls()
    print(f"  git -C {GITOPS_REPO.relative_to(REPO)} log --oneline;  kubectl -n argocd get applications")


def up(gitops: bool = False) -> int:
    STATE.mkdir(exist_ok=True)
    cp = controlplane.ControlPlane(controlplane.DEMO_STATE_DIR, durable=True)
    started = time.monotonic()
    say("1. A real Kubernetes control plane on loopback (etcd, kube-apiserver, kube-controller-manager)")
    if cp.running_components() != list(controlplane.COMPONENTS):
        cp.start()
    print(f"apiserver {cp.server_url}, kubeconfig {cp.kubeconfig_path}")
    show(cp, "version")

    say("2. The CRDs, generated from the pydantic models (crds/)")
    show(cp, "apply", "-f", str(REPO / "crds"))
    wait_for(lambda: crds_ready(cp), 60, "the CRDs to be established")

    say(f"3. A local package index with webxample's wheels on 127.0.0.1:{INDEX_PORT}")
    start_index()

    say("4. Two hosts: Node objects, and an agent each with its own root, circusd and nginx")
    kube_env = {"KUBECONFIG": str(cp.kubeconfig_path)}
    for host, address in HOSTS.items():
        node = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": host, "labels": {"apprelease.dev/host": "true"}}}
        cp.kubectl("apply", "-f", "-", input=json.dumps(node))
        root = STATE / "hosts" / host
        root.mkdir(parents=True, exist_ok=True)
        start_process(f"agent-{host}", [str(APPRELEASE), "agent", "run", "--node", host, "--root", str(root),
                                        "--listen-address", address, "--resync-seconds", "10"], kube_env)
    show(cp, "get", "nodes", "-L", "apprelease.dev/host")

    say("5. The operator")
    start_process("operator", [str(APPRELEASE), "operator"], kube_env)

    say("6. webxample 1.0.0, applied with kubectl, rolled onto both hosts")
    show(cp, "apply", "-f", str(EXAMPLE))
    took = wait_rollout(cp, "1.0.0")
    print(f"served on both hosts {took:.1f}s after the apply (venv builds included)")
    show(cp, "get", "ar,hr")
    show_curls()
    show_curls("/static/hello.txt")

    say("7. webxample 2.0.0: the hosts move one at a time (maxUnavailable: 1), zero downtime")
    apply_version(cp, "2.0.0")
    took = wait_rollout(cp, "2.0.0")
    print(f"rollout complete in {took:.1f}s")
    show_curls()

    say("8. Rollback = revert the manifest: 1.0.0 is still on disk, nothing is rebuilt")
    apply_version(cp, "1.0.0")
    took = wait_rollout(cp, "1.0.0")
    print(f"rolled back in {took:.1f}s")
    for hr in get_json(cp, "hr", "-l", "apprelease.dev/app=webxample")["items"]:
        build = (hr.get("status") or {}).get("lastBuild") or {}
        print(f"  {hr['spec']['node']}: buildId {build.get('buildId')} reused={build.get('reused')}")
    show_curls()
    show(cp, "get", "ar")

    if gitops:
        gitops_act(cp)

    say(f"Done in {time.monotonic() - started:.1f}s. Look around:")
    print(f"  export KUBECONFIG={cp.kubeconfig_path} PATH={cp.bin_dir}:$PATH")
    print("  kubectl get ar,hr -A;  kubectl describe ar webxample")
    print(f"  curl -H 'Host: {SERVER_NAME}' http://127.0.0.2:{APP_PORT}/")
    print("  .demo/logs/ (operator, agents);  .venv/bin/apprelease agent status --root .demo/hosts/host-a")
    print("  make demo-down    # stop everything")
    return 0


def down() -> int:
    stop_process("operator")
    for host in HOSTS:
        stop_process(f"agent-{host}")
        root = STATE / "hosts" / host
        if root.exists():  # the host's supervisor, its apps and nginx outlive the agent by design
            subprocess.run([str(APPRELEASE), "agent", "stop", "--root", str(root)], check=False,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stop_index()
    cp = controlplane.ControlPlane(controlplane.DEMO_STATE_DIR, durable=True)
    sys.path.insert(0, str(REPO / "hack"))
    import argocd  # hack/argocd.py

    argo = argocd.ArgoCD(argocd.DEMO_STATE_DIR, cp)
    if argo.running_components():
        argo.stop()
    if cp.records():
        cp.stop()
    print("demo: stopped; state kept in .demo/ (rm -rf .demo to forget it)")
    return 0


def main(argv: list[str]) -> int:
    if argv[1:2] == ["up"] and set(argv[2:]) <= {"--gitops"}:
        try:
            return up(gitops="--gitops" in argv[2:])
        except KeyboardInterrupt:
            print("\ndemo: interrupted, stopping what was started", file=sys.stderr)
            down()
            return 130
    if argv[1:] == ["down"]:
        return down()
    print("usage: hack/demo up [--gitops] | down", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
