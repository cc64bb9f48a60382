"""A real Argo CD on loopback, against a local control plane: redis, repo-server, application-controller.

Who calls it:
- the e2e GitOps tests (tests/support/argocd.py: `ArgoCD(tmpdir, control_plane, die_with_parent=True)`),
- people, through `hack/argocd up|down|status` (the `main()` below), next to the control plane
  of `hack/controlplane up`, with a state dir under the repo (`.demo/argocd/`, gitignored).

The binary comes from `hack/build-argocd` (Argo CD built from Go modules, cached per version);
redis comes from Debian. The components run out of cluster, as Argo CD's developers run them
(TOOLING.md): `ARGOCD_FAKE_IN_CLUSTER=true` makes `https://kubernetes.default.svc` mean the
kubeconfig's cluster. `install()` puts into the cluster what Argo CD's manifests would: its CRDs
and the ConfigMaps/Secrets of `manifests/install.yaml`, both read from the Go module cache at
run time (nothing of Argo CD is copied into this repo), an AppProject `default`, and
apprelease's health check for AppRelease (`manifests/argocd/health.lua`) in `argocd-cm`.
Only the standard library is used, so the command runs with any Python 3.11.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from controlplane import (
    ControlPlane,
    ProcessRecord,
    State,
    is_alive,
    log_tail,
    pick_free_ports,
    process_start_ticks,
    report_components,
    signal_group,
    stop_and_report,
)

REPO = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = REPO / "hack" / "build-argocd"
WRAPPER_MODULE = REPO / "hack" / "go" / "argocd"
ARGOCD_MODULE = "github.com/argoproj/argo-cd/v3"
HEALTH_LUA = REPO / "manifests" / "argocd" / "health.lua"
HEALTH_KEY = "resource.customizations.health.apprelease.dev_AppRelease"
DEMO_STATE_DIR = REPO / ".demo" / "argocd"
DEMO_CONTROLPLANE_DIR = REPO / ".demo" / "controlplane"
NAMESPACE = "argocd"
CRDS = ("applications.argoproj.io", "appprojects.argoproj.io", "applicationsets.argoproj.io")
# Components in start order; stop goes in reverse.
COMPONENTS = ("redis", "argocd-repo-server", "argocd-application-controller")
# What argocd-server would create; the project every Application of the tests and demo uses.
DEFAULT_PROJECT = {
    "apiVersion": "argoproj.io/v1alpha1",
    "kind": "AppProject",
    "metadata": {"name": "default", "namespace": NAMESPACE},
    "spec": {
        "sourceRepos": ["*"],
        "destinations": [{"server": "*", "namespace": "*"}],
        "clusterResourceWhitelist": [{"group": "*", "kind": "*"}],
    },
}


class ArgoCDError(RuntimeError):
    """A component did not start, did not become ready, or the install into the cluster failed."""


@dataclass
class Ports:
    """The loopback ports of one Argo CD, picked free at start."""

    redis: int
    repo_server: int
    repo_server_metrics: int
    controller_metrics: int


# ---------------------------------------------------------------- inputs: binary and manifests


def build_binaries() -> Path:
    """Run hack/build-argocd (a no-op when the binary is cached); return its dir."""
    # stderr is passed through: a cold build takes minutes and prints its progress there.
    proc = subprocess.run([str(BUILD_SCRIPT)], stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise ArgoCDError(f"{BUILD_SCRIPT} failed ({proc.returncode}); see its output above")
    return Path(proc.stdout.strip().splitlines()[-1])


def argocd_module_dir() -> Path:
    """Argo CD's source tree in the Go module cache, at the wrapper module's pinned version.

    `go mod download` is a no-op when the build already fetched it; its manifests are the
    upstream ones of exactly the version that runs.
    """
    proc = subprocess.run(
        ["go", "mod", "download", "-json", ARGOCD_MODULE],
        cwd=WRAPPER_MODULE, capture_output=True, text=True,
    )
    if proc.returncode != 0:
        raise ArgoCDError(f"go mod download {ARGOCD_MODULE} failed:\n{proc.stdout}{proc.stderr}")
    return Path(json.loads(proc.stdout)["Dir"])


def yaml_documents(text: str) -> list[str]:
    """The documents of a multi-document YAML stream (split on `---` lines, empty ones dropped)."""
    docs, current = [], []
    for line in text.splitlines():
        if line.rstrip() == "---":
            docs.append("\n".join(current))
            current = []
        else:
            current.append(line)
    docs.append("\n".join(current))
    return [d + "\n" for d in docs if d.strip()]


def top_level_kind(document: str) -> str | None:
    """The value of a document's top-level `kind:` line (no YAML parser needed for that)."""
    for line in document.splitlines():
        if line.startswith("kind:"):
            return line.partition(":")[2].strip()
    return None


def config_documents(install_yaml: str) -> str:
    """The ConfigMap and Secret documents of Argo CD's install.yaml, as one YAML stream.

    Everything else in it (Deployments, Services, RBAC) is what this module replaces by
    processes on loopback.
    """
    keep = [d for d in yaml_documents(install_yaml) if top_level_kind(d) in ("ConfigMap", "Secret")]
    if not any("name: argocd-cm\n" in d for d in keep):
        raise ArgoCDError("install.yaml has no argocd-cm ConfigMap: has its layout changed?")
    return "---\n".join(keep)


# ---------------------------------------------------------------- Argo CD


class ArgoCD:
    """redis + argocd-repo-server + argocd-application-controller for one control plane.

    `die_with_parent=True` (tests) makes the kernel kill the components if the Python process
    dies without running its finalizers (setpriv --pdeathsig). `hack/argocd up` does not:
    its components must outlive the command.
    """

    def __init__(
        self,
        state_dir: Path,
        control_plane: ControlPlane,
        *,
        die_with_parent: bool = False,
        bin_dir: Path | None = None,
        health_lua: Path = HEALTH_LUA,
        ready_timeout: float = 90.0,
        stop_timeout: float = 15.0,
    ) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.control_plane = control_plane
        self.die_with_parent = die_with_parent
        self._bin_dir = bin_dir
        self.health_lua = health_lua
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._state: State | None = State.load(self.state_file, Ports) if self.state_file.exists() else None

    # ----- paths and views

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    @property
    def bin_dir(self) -> Path:
        if self._bin_dir is not None:
            return self._bin_dir
        if self._state is None:
            raise ArgoCDError("bin_dir is known once start() has run")
        return Path(self._state.bin_dir)

    @property
    def ports(self) -> Ports:
        return self._require_state().ports

    def log_path(self, component: str) -> Path:
        return self.state_dir / "logs" / f"{component}.log"

    def records(self) -> dict[str, ProcessRecord]:
        return dict(self._state.processes) if self._state else {}

    def running_components(self) -> list[str]:
        return [name for name, rec in self.records().items() if is_alive(rec)]

    # ----- lifecycle

    def start(self) -> None:
        """Build or find the binary, install Argo CD's objects, start the three, wait for ready.

        On any failure the components started so far are stopped again before the error rises.
        """
        if self.running_components():
            raise ArgoCDError(f"already running from {self.state_dir}: {self.running_components()}")
        if self._bin_dir is None:
            self._bin_dir = build_binaries()
        self._state = State(Ports(*pick_free_ports(4)), str(self._bin_dir))
        for sub in ("logs", "tmp", "tls", "ssh", "gnupg", "gpg"):
            (self.state_dir / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.state_dir / "gnupg", 0o700)  # gpg refuses a home others can read
        self._state.save(self.state_file)
        try:
            self.install()
            self._spawn("redis", self._redis_argv())
            self._wait_until("redis", self.redis_ready, "redis did not answer PING")
            self._spawn("argocd-repo-server", self._repo_server_argv())
            # ?full=true: the repo-server dials its own gRPC port, so ready means serving.
            self._wait_until("argocd-repo-server", lambda: self._healthz(self.ports.repo_server_metrics, "?full=true"),
                             "argocd-repo-server /healthz did not answer 200")
            self._spawn("argocd-application-controller", self._controller_argv())
            self._wait_until("argocd-application-controller", lambda: self._healthz(self.ports.controller_metrics),
                             "argocd-application-controller /healthz did not answer 200")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the components in reverse order (SIGTERM, then SIGKILL after stop_timeout).

        All are tried even if one fails; the first failure is raised then.
        """
        failures: list[ArgoCDError] = []
        for name in reversed(COMPONENTS):
            try:
                self._stop_component(name)
            except ArgoCDError as err:
                failures.append(err)
        if failures:
            raise failures[0]

    # ----- what goes into the cluster

    def install(self) -> None:
        """Argo CD's CRDs, namespace, ConfigMaps/Secrets, secret key, project and health check.

        Idempotent: a second `up` against the same cluster re-applies and keeps the secret key.
        """
        kubectl = self.control_plane.kubectl
        module = argocd_module_dir()
        # Server-side: the Application CRD is too large for the last-applied annotation. The
        # files one by one: the directory also holds a kustomization.yaml, no object.
        crd_files = sorted((module / "manifests" / "crds").glob("*-crd.yaml"))
        if len(crd_files) != len(CRDS):
            raise ArgoCDError(f"expected {len(CRDS)} CRD files in {module / 'manifests' / 'crds'}, found {crd_files}")
        kubectl("apply", "--server-side", "--force-conflicts", "--field-manager", "apprelease-argocd",
                *(a for f in crd_files for a in ("-f", str(f))), timeout=120)
        kubectl("apply", "-f", "-", input=json.dumps(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}))
        install_yaml = (module / "manifests" / "install.yaml").read_text()
        kubectl("apply", "-n", NAMESPACE, "-f", "-", input=config_documents(install_yaml))
        self._ensure_server_secret_key()
        self.set_health_check(self.health_lua.read_text())
        for crd in CRDS:
            self._wait_crd_usable(crd)
        kubectl("apply", "-f", "-", input=json.dumps(DEFAULT_PROJECT))

    def set_health_check(self, lua: str) -> None:
        """Put the AppRelease health check into argocd-cm (the controller watches it)."""
        patch = {"data": {HEALTH_KEY: lua}}
        self.control_plane.kubectl("patch", "configmap", "argocd-cm", "-n", NAMESPACE, "--type", "merge",
                                   "-p", json.dumps(patch))

    def _ensure_server_secret_key(self) -> None:
        """argocd-server would create `server.secretkey`; without it the controller ignores
        edits to argocd-cm (TOOLING.md). Kept once set."""
        current = self.control_plane.kubectl(
            "get", "secret", "argocd-secret", "-n", NAMESPACE, "-o", r"jsonpath={.data.server\.secretkey}")
        if current.stdout.strip():
            return
        patch = {"stringData": {"server.secretkey": secrets.token_urlsafe(32)}}
        self.control_plane.kubectl("patch", "secret", "argocd-secret", "-n", NAMESPACE, "--type", "merge",
                                   "-p", json.dumps(patch))

    def _wait_crd_usable(self, name: str) -> None:
        """Established and listable: right after Established a list can still answer 429."""
        deadline = time.monotonic() + self.ready_timeout
        while True:
            listed = self.control_plane.kubectl("get", name, "-A", "-o", "name", check=False)
            if listed.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise ArgoCDError(f"CRD {name} not usable: {listed.stderr.strip()}")
            time.sleep(0.2)

    # ----- probes

    def redis_ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.ports.redis), timeout=1) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False  # not listening yet

    def _healthz(self, port: int, query: str = "") -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz{query}", timeout=5) as resp:
                return resp.status == 200
        except urllib.error.HTTPError:
            return False  # answering, not healthy yet
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False  # not listening yet

    # ----- command lines and environment

    def _redis_argv(self) -> list[str]:
        # A cache only (Argo CD refills it): no snapshots, no append-only file, no protected
        # mode fuss (it binds loopback only).
        return ["redis-server", "--bind", "127.0.0.1", "--port", str(self.ports.redis), "--save", "",
                "--appendonly", "no", "--dir", str(self.state_dir / "tmp")]

    def _repo_server_argv(self) -> list[str]:
        p = self.ports
        return [str(self.bin_dir / "argocd-repo-server"), "--address", "127.0.0.1", "--port", str(p.repo_server),
                "--metrics-address", "127.0.0.1", "--metrics-port", str(p.repo_server_metrics),
                "--redis", f"127.0.0.1:{p.redis}", "--logformat", "text"]

    def _controller_argv(self) -> list[str]:
        p = self.ports
        # Its metrics/healthz listener binds all interfaces: v3.2 has no flag for the address.
        return [str(self.bin_dir / "argocd-application-controller"), "--namespace", NAMESPACE,
                "--redis", f"127.0.0.1:{p.redis}", "--repo-server", f"127.0.0.1:{p.repo_server}",
                "--metrics-port", str(p.controller_metrics),
                # Without it v3 leaves status.resources[].health empty (health lives in redis only).
                "--persist-resource-health", "--logformat", "text"]

    def env(self, component: str) -> dict[str, str]:
        """The environment of an Argo CD component: out-of-cluster settings, private dirs."""
        env = dict(os.environ)
        d = self.state_dir
        env.update({
            "KUBECONFIG": str(self.control_plane.kubeconfig_path),
            "ARGOCD_FAKE_IN_CLUSTER": "true",
            "ARGOCD_GPG_ENABLED": "false",
            "ARGOCD_TLS_DATA_PATH": str(d / "tls"),
            "ARGOCD_SSH_DATA_PATH": str(d / "ssh"),
            "ARGOCD_GNUPGHOME": str(d / "gnupg"),
            "ARGOCD_GPG_DATA_PATH": str(d / "gpg"),
            # The repo-server's git credential socket defaults to a fixed /tmp path, which two
            # Argo CDs on one machine would share.
            "ARGOCD_ASK_PASS_SOCK": str(d / "askpass.sock"),
            # Checkouts and manifest caches go here rather than into the machine's /tmp.
            "TMPDIR": str(d / "tmp"),
            # git runs GIT_ASKPASS=argocd: the multi-call binary, found on PATH.
            "PATH": f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}",
        })
        if component == "argocd-application-controller":
            env["HOSTNAME"] = "argocd-application-controller-0"  # its shard is read from the pod name
        return env

    # ----- internals: processes

    def _require_state(self) -> State:
        if self._state is None:
            raise ArgoCDError(f"no Argo CD state in {self.state_dir}; run start() first")
        return self._state

    def _spawn(self, name: str, argv: list[str]) -> None:
        """Start one component as its own process group, output appended to its log."""
        state = self._require_state()
        if self.die_with_parent:
            argv = ["setpriv", "--pdeathsig", "KILL", "--", *argv]
        log = self.log_path(name)
        with log.open("ab") as out:
            out.write(f"\n==== {time.strftime('%Y-%m-%dT%H:%M:%S')} starting: {' '.join(argv)}\n".encode())
            out.flush()
            child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                     env=self.env(name), cwd=self.state_dir, start_new_session=True)
        self._children[name] = child
        ticks = process_start_ticks(child.pid)
        if ticks is None:
            child.wait()
            raise ArgoCDError(f"{name} exited at once ({child.returncode}):\n{log_tail(log)}")
        state.processes[name] = ProcessRecord(child.pid, ticks)
        state.save(self.state_file)

    def _wait_until(self, name: str, ready: Callable[[], bool], what: str) -> None:
        """Poll `ready` until true; fail early if the component exits, with its log tail."""
        deadline = time.monotonic() + self.ready_timeout
        child = self._children[name]
        while not ready():
            if child.poll() is not None:
                raise ArgoCDError(f"{name} exited with {child.returncode} while starting; "
                                  f"last lines of {self.log_path(name)}:\n{log_tail(self.log_path(name))}")
            if time.monotonic() > deadline:
                raise ArgoCDError(f"{what} within {self.ready_timeout:.0f}s; "
                                  f"last lines of {self.log_path(name)}:\n{log_tail(self.log_path(name))}")
            time.sleep(0.1)

    def _stop_component(self, name: str) -> None:
        if self._state is None or name not in self._state.processes:
            return
        record = self._state.processes[name]
        if is_alive(record):
            signal_group(record.pid, signal.SIGTERM)
            if not self._wait_gone(name, record, self.stop_timeout):
                signal_group(record.pid, signal.SIGKILL)
                if not self._wait_gone(name, record, 5.0):
                    raise ArgoCDError(f"{name} (pid {record.pid}) survived SIGKILL")
        child = self._children.pop(name, None)
        if child is not None:
            child.wait()  # reap our own child
        del self._state.processes[name]
        self._state.save(self.state_file)

    def _wait_gone(self, name: str, record: ProcessRecord, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        child = self._children.get(name)
        while time.monotonic() < deadline:
            if (child.poll() is not None) if child is not None else not is_alive(record):
                return True
            time.sleep(0.05)
        return False


# ---------------------------------------------------------------- command line (hack/argocd)


def cmd_up(argo: ArgoCD) -> int:
    running = argo.running_components()
    if len(running) == len(COMPONENTS):
        print(f"Argo CD already running from {argo.state_dir}")
        return 0
    if running:
        print(f"only {', '.join(running)} running from {argo.state_dir}; see its logs/, then: hack/argocd down",
              file=sys.stderr)
        return 1
    started = time.monotonic()
    argo.start()
    print(f"Argo CD up in {time.monotonic() - started:.1f}s (namespace {NAMESPACE}, "
          f"repo-server 127.0.0.1:{argo.ports.repo_server}, redis 127.0.0.1:{argo.ports.redis})")
    print(f"state and logs: {argo.state_dir}")
    print(f"then: kubectl apply -f manifests/argocd/application.yaml (with your repoURL); "
          f"kubectl -n {NAMESPACE} get applications")
    return 0


def cmd_down(argo: ArgoCD) -> int:
    return stop_and_report(argo)


def cmd_status(argo: ArgoCD) -> int:
    if not report_components(argo, COMPONENTS, 32):
        return 1
    return 0 if len(argo.running_components()) == len(COMPONENTS) else 1


COMMANDS: dict[str, Callable[[ArgoCD], int]] = {"up": cmd_up, "down": cmd_down, "status": cmd_status}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hack/argocd", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=list(COMMANDS))
    parser.add_argument("--state-dir", type=Path, default=Path(os.environ.get("APPRELEASE_ARGOCD_DIR", DEMO_STATE_DIR)),
                        help="where logs and temp dirs live (default: %(default)s)")
    parser.add_argument("--controlplane-dir", type=Path,
                        default=Path(os.environ.get("APPRELEASE_CONTROLPLANE_DIR", DEMO_CONTROLPLANE_DIR)),
                        help="the state dir of `hack/controlplane up` (default: %(default)s)")
    args = parser.parse_args(argv)
    cp = ControlPlane(args.controlplane_dir)
    if args.command == "up" and len(cp.running_components()) != 3:
        print(f"no control plane running from {cp.state_dir}; first: hack/controlplane up", file=sys.stderr)
        return 1
    argo = ArgoCD(args.state_dir, cp, die_with_parent=False)
    try:
        return COMMANDS[args.command](argo)
    except ArgoCDError as err:
        print(f"hack/argocd {args.command}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
