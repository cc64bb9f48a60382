"""`make demo`: apprelease on this machine, from nothing, with real parts only.

    hack/demo up [--gitops]   control plane, CRDs, index, two hosts, the operator; v1 -> v2 -> back to v1;
                              with --gitops (make demo GITOPS=1) the story again, driven by git commits
                              through a real Argo CD
    hack/demo down            stop everything `up` started (also what Ctrl-C during `up` does)

What runs, all on loopback, all state under `.demo/` (gitignored):
- etcd + kube-apiserver + kube-controller-manager built from Go modules (hack/controlplane.py);
- a PEP 503 index on 127.0.0.1:8765 serving webxample's wheels, built here (tests/support/pypi.py);
- two hosts, `host-a` and `host-b`: Node objects, and one agent each (`apprelease agent run`)
  with its own root (under .demo/hosts/, or /var/lib/apprelease-demo/<hash>/ when the
  checkout is out of the app users' reach: see `host_roots_base`), its own circusd, and its
  own nginx listening on 127.0.0.2 and 127.0.0.3 respectively;
- the operator (`apprelease operator`);
- with --gitops: Argo CD v3.2.11 built from Go modules (hack/argocd.py: redis, repo-server,
  application-controller), an Application on a local git repository under .demo/gitops-repo;
- `kubectl` is the one built with the control plane, same version as the server.

While it waits, the demo watches what it started: when an agent, the operator or the index
exits, it prints that process's last log lines, stops everything and exits non-zero, rather
than waiting minutes for a rollout that cannot happen. Progress lines show each host's live
phase (Building with the build's stage, HealthChecking, Draining, ...).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
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
LOG_TAIL_LINES = 20
WATCHED = ("index", *(f"agent-{host}" for host in HOSTS), "operator")  # what must stay up while the demo runs

# Where the hosts' roots go when the checkout is out of the app users' reach. Not /tmp: a
# predictable name in a world-writable directory can be taken first by another user (the
# demo runs as root), and tmp cleaners delete files under a demo left running for days.
# /var/lib is where a real agent keeps its root (/var/lib/apprelease), 0755 on Debian, and
# root-owned all the way down. The hash of the checkout's path keeps two checkouts apart.
OUTSIDE_BASE = Path(os.environ.get("APPRELEASE_DEMO_OUTSIDE_BASE", "/var/lib/apprelease-demo"))
# Unix socket paths hold at most 107 bytes; under a root the longest the demo makes is
# apps/default_webxample/run/r<11 hex>.sock (44): a base longer than this leaves no room.
MAX_BASE_LENGTH = 48
HOST_ROOTS_FILE = STATE / "host-roots"  # the base `up` chose, for `down` and people


class DemoFailed(Exception):
    """Something the demo needs stopped or never came: say why, show its log, stop everything."""

    def __init__(self, reason: str, logs: Iterable[str] = ()):
        super().__init__(reason)
        self.logs = tuple(logs)


def traversable_by_others(path: Path) -> bool:
    """Whether a user other than the owner may pass through `path` and each of its parents."""
    return all(d.stat().st_mode & stat.S_IXOTH for d in [path, *path.parents] if d.exists())


def host_roots_base(checkout: Path, checkout_traversable: bool, override: str | None = None,
                    outside: Path = OUTSIDE_BASE) -> Path:
    """Where the demo's hosts keep their roots (each host under `<base>/<host>`).

    Each app runs as its own user and reaches its venv and socket through its host's root,
    so every directory above a root must be traversable by others. A checkout in root's home
    (0700 on Debian) or in `mktemp -d` is not: its hosts go to `outside/<hash of the path>`.
    """
    if override:
        return Path(override)
    inside = checkout / ".demo" / "hosts"
    if checkout_traversable and len(str(inside)) <= MAX_BASE_LENGTH:
        return inside
    return outside / hashlib.sha256(str(checkout).encode()).hexdigest()[:12]


def make_reachable_dirs(path: Path) -> None:
    """mkdir -p with 0755 for each directory made (and for `path`): a umask of 077 must not
    lock the app users out."""
    missing = [d for d in [path, *path.parents] if not d.exists()]
    for directory in reversed(missing):
        directory.mkdir()
        directory.chmod(0o755)
    path.chmod(0o755)


def chosen_host_roots_base() -> Path:
    """The base `up` chose (recorded), else what it would choose now."""
    if HOST_ROOTS_FILE.exists():
        return Path(HOST_ROOTS_FILE.read_text().strip())
    return host_roots_base(REPO, traversable_by_others(REPO), os.environ.get("APPRELEASE_DEMO_HOSTS_DIR"))


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
        check_alive()
        if time.monotonic() > deadline:
            raise DemoFailed(f"timed out after {timeout:.0f}s waiting for {what}", WATCHED)
        time.sleep(0.3)


def _pid_alive(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


# Processes this run of `up` started: polled for their exit codes (a child that exited stays
# a zombie, which `kill -0` still finds). Ones a previous `up` started are checked by pid.
STARTED: dict[str, subprocess.Popen[bytes]] = {}
LOG_OFFSETS: dict[str, int] = {}  # name -> size of its log when this run started it


def log_path(name: str) -> Path:
    return STATE / "index.log" if name == "index" else STATE / "logs" / f"{name}.log"


def log_tail(name: str, lines: int = LOG_TAIL_LINES) -> list[str]:
    """The last lines of a demo process's log, of this run when it started the process (agent
    and operator logs are appended to across runs)."""
    path = log_path(name)
    if not path.exists():
        return []
    text = path.read_bytes()[LOG_OFFSETS.get(name, 0):].decode(errors="replace")
    return text.splitlines()[-lines:]


def exited(name: str) -> str | None:
    """How a watched process ended ("exited with 1", "was killed by SIGKILL"), None while it runs."""
    proc = STARTED.get(name)
    if proc is not None:
        code = proc.poll()
        if code is None:
            return None
        return f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with {code}"
    if not (STATE / f"{name}.pid").exists():
        return None  # not started (yet) by any run
    return None if running(name) else "is not running"


def check_alive(names: Iterable[str] = WATCHED) -> None:
    for name in names:
        how = exited(name)
        if how:
            raise DemoFailed(f"{name} {how}", [name])


def start_process(name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
    """A background process of the demo, in its own session, with a pid file and a log."""
    pid_file = STATE / f"{name}.pid"
    if _pid_alive(pid_file):
        print(f"{name} already running")
        return
    (STATE / "logs").mkdir(parents=True, exist_ok=True)
    log = (STATE / "logs" / f"{name}.log").open("a")
    LOG_OFFSETS[name] = log.tell()
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO,
                            env={**os.environ, **(env or {})})
    STARTED[name] = proc
    pid_file.write_text(str(proc.pid))
    print(f"{name}: pid {proc.pid}, log .demo/logs/{name}.log")


def running(name: str) -> int | None:
    """The pid of a demo process that still runs (a child of ours that exited is reaped, not
    mistaken for a live one because `kill -0` finds its zombie)."""
    proc = STARTED.get(name)
    if proc is not None and proc.poll() is not None:
        return None
    return _pid_alive(STATE / f"{name}.pid")


def stop_process(name: str, grace: float = 30) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds. Never checks the others: down() runs when
    the demo already failed."""
    pid_file = STATE / f"{name}.pid"
    pid = running(name)
    if pid:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while running(name) and time.monotonic() < deadline:
            time.sleep(0.2)
        if running(name):
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
    STARTED["index"] = proc
    wait_for(lambda: "serving" in (STATE / "index.log").read_text(), 300,
             "the package index to build webxample's wheels")  # wait_for notices if it exits
    print((STATE / "index.log").read_text().strip())


def stop_index() -> None:
    stop_process("index", grace=20)


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


def host_summary(hr: dict) -> str:
    """`host-a: 1.0.0 (Building -> 2.0.0: installing 2 packages)`: what it serves, its live
    phase, where it is going, and for a build the build's stage."""
    status = hr.get("status") or {}
    if status.get("observedGeneration") != hr["metadata"].get("generation"):
        phase = "Pending"  # the agent has not seen this spec yet: its phase is about the last one
    else:
        phase = status.get("phase") or "Pending"
    serving, wanted = status.get("servingVersion"), hr["spec"]["version"]
    moving = "" if wanted == serving and phase in ("Ready", "Failed") else f" -> {wanted}"
    stage = ""
    if phase == "Building" and "): " in (status.get("message") or ""):
        stage = ": " + status["message"].split("): ", 1)[1]  # "building the venv of X (buildId Y): <stage>"
    return f"{hr['spec']['node']}: {serving or '-'} ({phase}{moving}{stage})"


def progress_line(cp: controlplane.ControlPlane) -> tuple[str, bool]:
    # One kubectl call a poll, so the line keeps up with phases that last half a second.
    items = get_json(cp, "appreleases,hostreleases")["items"]
    (ar,) = [o for o in items if o["kind"] == "AppRelease" and o["metadata"]["name"] == "webxample"]
    hrs = [o for o in items if o["kind"] == "HostRelease"
           and (o["metadata"].get("labels") or {}).get("apprelease.dev/app") == "webxample"]
    status = ar.get("status") or {}
    hosts = "  ".join(host_summary(h) for h in sorted(hrs, key=lambda h: h["spec"]["node"]))
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
        check_alive()
        if time.monotonic() - started > timeout:
            raise DemoFailed(f"the rollout of {version} was not complete after {timeout:.0f}s", WATCHED)
        time.sleep(0.15)


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
    base = host_roots_base(REPO, traversable_by_others(REPO), os.environ.get("APPRELEASE_DEMO_HOSTS_DIR"))
    if not str(base).startswith(str(STATE)):
        print(f"host roots in {base}: the apps' users cannot reach into {REPO} (or its path is too long "
              "for unix sockets)")
    make_reachable_dirs(base)
    HOST_ROOTS_FILE.write_text(f"{base}\n")
    for host, address in HOSTS.items():
        node = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": host, "labels": {"apprelease.dev/host": "true"}}}
        cp.kubectl("apply", "-f", "-", input=json.dumps(node))
        root = base / host
        make_reachable_dirs(root)
        start_process(f"agent-{host}", [str(APPRELEASE), "agent", "run", "--node", host, "--root", str(root),
                                        "--listen-address", address, "--resync-seconds", "10"], kube_env)
    for host in HOSTS:
        if f"agent-{host}" not in STARTED:
            continue  # left running by an earlier `up`
        # Logged once its circusd and nginx run: an agent that cannot run its host exits before.
        wait_for(lambda: b"agent for node" in log_path(f"agent-{host}").read_bytes()[LOG_OFFSETS[f"agent-{host}"]:],
                 120, f"agent-{host} to start its host")
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
    print("  kubectl get hr -o wide -w    # the hosts' live phases during the next change")
    print(f"  .demo/logs/ (operator, agents);  .venv/bin/apprelease agent status --root {base / 'host-a'}")
    print("  make demo-down    # stop everything")
    return 0


def down() -> int:
    stop_process("operator")
    base = chosen_host_roots_base()
    for host in HOSTS:
        stop_process(f"agent-{host}")
        root = base / host
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
    outside = "" if str(base).startswith(str(STATE)) else f" and {base}"
    print(f"demo: stopped; state kept in .demo/{outside} (rm -rf .demo{outside} to forget it)")
    return 0


def report_failure(failure: DemoFailed) -> None:
    """What a newcomer needs to see: the reason, and the last lines of the log that tells why."""
    print(f"\ndemo: {failure}", file=sys.stderr, flush=True)
    for name in failure.logs:
        lines = log_tail(name)
        if lines:
            rel = log_path(name).relative_to(REPO)
            print(f"\n--- last {len(lines)} lines of {rel} ---", file=sys.stderr)
            print("\n".join(lines), file=sys.stderr, flush=True)
    print("\ndemo: stopping everything it started (logs stay in .demo/logs/)", file=sys.stderr, flush=True)


def main(argv: list[str]) -> int:
    if argv[1:2] == ["up"] and set(argv[2:]) <= {"--gitops"}:
        try:
            return up(gitops="--gitops" in argv[2:])
        except KeyboardInterrupt:
            print("\ndemo: interrupted, stopping what was started", file=sys.stderr)
            down()
            return 130
        except DemoFailed as failure:
            report_failure(failure)
            down()
            print(f"demo: failed: {failure}", file=sys.stderr)
            return 1
    if argv[1:] == ["down"]:
        return down()
    print("usage: hack/demo up [--gitops] | down", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
