"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager.

Who calls it:
- the e2e test fixtures (tests/support/cluster.py: `ControlPlane(tmpdir, durable=False)`),
- people, through `hack/controlplane up|down|status|kubeconfig|env` (the `main()` below),
  with a persistent state dir under the repo (`.demo/controlplane/`, gitignored).

The binaries come from `hack/build-controlplane` (built from Go modules, cached per version).
Everything listens on 127.0.0.1 on ports picked free at start. The state dir holds the data,
keys, certificates, kubeconfigs, one log per component and `state.json` (ports and pids), so
`down` in another shell can stop what `up` started. Only the standard library is used, so the
command runs with any Python 3.11.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

REPO = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = REPO / "hack" / "build-controlplane"
DEMO_STATE_DIR = REPO / ".demo" / "controlplane"
# Components in start order; stop goes in reverse.
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager")
LOG_TAIL_LINES = 40
# Logged by kube-controller-manager v1.36 once the garbage collector's monitors have synced.
GC_READY_MARKER = b"Proceeding to collect garbage"


class ControlPlaneError(RuntimeError):
    """A component did not start, did not become ready, or did not stop."""


class KubectlError(subprocess.CalledProcessError):
    """kubectl exited non-zero; unlike CalledProcessError, str() includes its stderr."""

    def __str__(self) -> str:
        return f"{super().__str__()}\nstderr: {(self.stderr or '').strip()}"


@dataclass
class Ports:
    """The loopback ports of one control plane, picked free at start."""

    etcd_client: int
    etcd_peer: int
    apiserver: int


@dataclass
class ProcessRecord:
    """What `state.json` keeps about a running component, enough to stop it from elsewhere.

    `start_ticks` (field 22 of /proc/PID/stat) guards against signalling an unrelated process
    that got the same pid after ours exited.
    """

    pid: int
    start_ticks: int


@dataclass
class State:
    """The contents of `state.json`: written at every start/stop of a component.

    Also the state of hack/argocd.py, whose `ports` are of its own dataclass (`ports_type`).
    """

    ports: Any
    bin_dir: str
    processes: dict[str, ProcessRecord] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path, ports_type: type = Ports) -> State:
        raw = json.loads(path.read_text())
        return cls(
            ports=ports_type(**raw["ports"]),
            bin_dir=raw["bin_dir"],
            processes={k: ProcessRecord(**v) for k, v in raw["processes"].items()},
        )

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        tmp.replace(path)  # atomic: `status` in another shell never reads half a file


# ---------------------------------------------------------------- processes (via /proc)


def process_start_ticks(pid: int) -> int | None:
    """The start time of a live (non-zombie) process in clock ticks, or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":  # exited; its parent (maybe init in a container) has not reaped it yet
        return None
    return int(fields[19])


def is_alive(record: ProcessRecord) -> bool:
    """Whether the recorded process still runs (same pid and the same start time)."""
    return process_start_ticks(record.pid) == record.start_ticks


def processes_using(path: Path) -> list[int]:
    """Pids of live processes whose command line mentions `path` (used to prove none remain)."""
    needle = str(path).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue  # gone meanwhile, or not ours to read
        if needle in cmdline and process_start_ticks(int(entry.name)) is not None:
            found.append(int(entry.name))
    return found


def signal_group(pid: int, sig: int) -> None:
    """Send `sig` to the process group led by `pid` (each component is started as a leader)."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass  # already gone: exactly what stopping wants


# ---------------------------------------------------------------- small helpers


def pick_free_ports(count: int, preferred: Sequence[int] = ()) -> list[int]:
    """`count` distinct free loopback ports; position i reuses `preferred[i]` if still free.

    Reuse keeps a demo's server URL stable across `down`/`up`. SO_REUSEADDR as the Go servers
    use it, so a port whose old connections linger in TIME_WAIT still counts as free. The
    sockets stay open until all ports are chosen so that no port is handed out twice.
    """
    held: list[socket.socket] = []
    try:
        for i in range(count):
            want = preferred[i] if i < len(preferred) else 0
            held.append(bind_loopback(want) if want else bind_loopback(0))
        return [s.getsockname()[1] for s in held]
    finally:
        for sock in held:
            sock.close()


def bind_loopback(port: int) -> socket.socket:
    """A socket bound to 127.0.0.1:port, or to a free port if `port` is 0 or taken."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        if port == 0:
            sock.close()
            raise
        sock.bind(("127.0.0.1", 0))  # the preferred port is in use: any free one will do
    return sock


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a component log, for error messages."""
    if not path.exists():
        return f"(no log at {path})"
    text = path.read_text(errors="replace").splitlines()[-lines:]
    return "\n".join(text)


def run_checked(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """Run a short helper command (openssl); fail with its stderr."""
    proc = subprocess.run(list(argv), text=True, capture_output=True)
    if proc.returncode != 0:
        raise ControlPlaneError(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr.strip()}")
    return proc


def build_binaries() -> Path:
    """Run hack/build-controlplane (a no-op when the binaries are cached); return their dir."""
    # stderr is passed through: a cold build takes minutes and prints its progress there.
    proc = subprocess.run([str(BUILD_SCRIPT)], stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise ControlPlaneError(f"{BUILD_SCRIPT} failed ({proc.returncode}); see its output above")
    return Path(proc.stdout.strip().splitlines()[-1])


def yaml_scalar(value: str) -> str:
    """A YAML scalar for any string: JSON strings are valid YAML (no pyyaml needed)."""
    return json.dumps(value)


def render_kubeconfig(server: str, ca_file: Path, user: str, token: str) -> str:
    """A kubeconfig with one cluster, one token user and one context named `apprelease`."""
    return "\n".join(
        [
            "apiVersion: v1",
            "kind: Config",
            "clusters:",
            "- name: apprelease",
            "  cluster:",
            f"    server: {yaml_scalar(server)}",
            f"    certificate-authority: {yaml_scalar(str(ca_file))}",
            "users:",
            f"- name: {yaml_scalar(user)}",
            "  user:",
            f"    token: {yaml_scalar(token)}",
            "contexts:",
            "- name: apprelease",
            "  context:",
            "    cluster: apprelease",
            f"    user: {yaml_scalar(user)}",
            "current-context: apprelease",
            "",
        ]
    )


# ---------------------------------------------------------------- the control plane


class ControlPlane:
    """One etcd + kube-apiserver + kube-controller-manager, all state in `state_dir`.

    `durable=False` (tests) runs etcd with --unsafe-no-fsync; `die_with_parent=True` (tests)
    makes the kernel kill the components if the Python process dies without running its
    finalizers (e.g. killed by a timeout; needs util-linux `setpriv`). `hack/controlplane up`
    uses neither: its components must outlive the command and keep the user's data.
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        durable: bool = True,
        die_with_parent: bool = False,
        bin_dir: Path | None = None,
        ready_timeout: float = 90.0,
        stop_timeout: float = 15.0,
    ) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.durable = durable
        self.die_with_parent = die_with_parent
        self._bin_dir = bin_dir
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self.last_probe_error = ""
        self._state: State | None = None
        if self.state_file.exists():
            self._state = State.load(self.state_file)

    # ----- paths and views

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    @property
    def pki_dir(self) -> Path:
        return self.state_dir / "pki"

    @property
    def kubeconfig_path(self) -> Path:
        """The admin kubeconfig (group system:masters)."""
        return self.state_dir / "admin.kubeconfig"

    @property
    def controller_manager_kubeconfig_path(self) -> Path:
        return self.state_dir / "controller-manager.kubeconfig"

    @property
    def ca_file(self) -> Path:
        # Written by kube-apiserver (--cert-dir): its self-signed serving cert followed by the
        # CA that signed it, for 127.0.0.1, localhost and kubernetes.default.svc.
        return self.pki_dir / "serving" / "apiserver.crt"

    @property
    def bin_dir(self) -> Path:
        if self._bin_dir is None:
            if self._state is None:
                raise ControlPlaneError("bin_dir is known once start() has run")
            return Path(self._state.bin_dir)
        return self._bin_dir

    @property
    def ports(self) -> Ports:
        return self._require_state().ports

    @property
    def server_url(self) -> str:
        return f"https://127.0.0.1:{self.ports.apiserver}"

    def pids(self) -> dict[str, int]:
        """The running components' pids, by name (etcd, kube-apiserver, ...)."""
        return {name: child.pid for name, child in self._children.items() if child.poll() is None}

    def log_path(self, component: str) -> Path:
        return self.state_dir / "logs" / f"{component}.log"

    def env(self) -> dict[str, str]:
        """os.environ plus KUBECONFIG, the built binaries first on PATH and a private kubectl cache."""
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.kubeconfig_path)
        env["PATH"] = f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}"
        env["KUBECACHEDIR"] = str(self.state_dir / "kubectl-cache")
        return env

    def records(self) -> dict[str, ProcessRecord]:
        """The recorded process of each component (live or not)."""
        return dict(self._state.processes) if self._state else {}

    def running_components(self) -> list[str]:
        return [name for name, rec in self.records().items() if is_alive(rec)]

    # ----- lifecycle

    def start(self) -> None:
        """Build or find the binaries, prepare keys and config, start all three, wait for ready.

        On any failure the components started so far are stopped again before the error rises.
        """
        if self.running_components():
            raise ControlPlaneError(f"already running from {self.state_dir}: {self.running_components()}")
        if self._bin_dir is None:
            self._bin_dir = build_binaries()
        previous = self._state.ports if self._state else None
        etcd_client, etcd_peer, apiserver = pick_free_ports(
            3, [previous.etcd_client, previous.etcd_peer, previous.apiserver] if previous else ()
        )
        self._state = State(Ports(etcd_client, etcd_peer, apiserver), str(self._bin_dir))
        self._prepare_state_dir()
        try:
            self._start_etcd()
            self.start_apiserver()
            self._start_controller_manager()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the components in reverse order: SIGTERM, wait, SIGKILL after stop_timeout.

        A component that cannot be stopped does not keep the others running: all are tried,
        then the first failure is raised.
        """
        failures: list[ControlPlaneError] = []
        for name in reversed(COMPONENTS):
            try:
                self._stop_component(name)
            except ControlPlaneError as err:
                failures.append(err)
        if failures:
            raise failures[0]

    def start_apiserver(self) -> None:
        """Start kube-apiserver (again) on the same port and etcd data; wait for /readyz."""
        self._spawn("kube-apiserver", self._apiserver_argv())
        self._wait_until(
            "kube-apiserver", lambda: self.readyz() == 200, f"{self.server_url}/readyz did not answer 200"
        )
        self._write_kubeconfigs()

    def stop_apiserver(self) -> None:
        """Stop only kube-apiserver (for outage tests); etcd and the controller manager stay."""
        self._stop_component("kube-apiserver")

    # ----- probes and clients

    def readyz(self) -> int | None:
        """The HTTP status of GET /readyz (TLS checked against the apiserver's CA), or None
        if nothing answers (yet); `last_probe_error` then says why."""
        try:
            # The apiserver writes its CA on start (not atomically): absent or half-written
            # early on, which only means "not yet".
            context = ssl.create_default_context(cafile=self.ca_file)
        except (FileNotFoundError, ssl.SSLError) as err:
            self.last_probe_error = f"CA {self.ca_file}: {err}"
            return None
        return self._http_status(f"{self.server_url}/readyz", context)

    def etcd_healthy(self) -> bool:
        return self._http_status(f"http://127.0.0.1:{self.ports.etcd_client}/health", None) == 200

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run the built kubectl (the server's version) with the admin kubeconfig."""
        argv = [str(self.bin_dir / "kubectl"), *args]
        proc = subprocess.run(argv, input=input, text=True, capture_output=True, env=self.env(), timeout=timeout)
        if check and proc.returncode != 0:
            raise KubectlError(proc.returncode, argv, proc.stdout, proc.stderr)
        return proc

    # ----- internals: preparation

    def _require_state(self) -> State:
        if self._state is None:
            raise ControlPlaneError(f"no control plane state in {self.state_dir}; run start() first")
        return self._state

    def _prepare_state_dir(self) -> None:
        """Create dirs, keys and tokens once; a restarted demo keeps them (and so its data)."""
        for sub in ("logs", "etcd", "pki/serving"):
            (self.state_dir / sub).mkdir(parents=True, exist_ok=True)
        # Keys, tokens and data are readable by whoever can read these: only their owner.
        os.chmod(self.pki_dir, 0o700)
        os.chmod(self.state_dir / "etcd", 0o700)
        self._ensure_service_account_keys()
        self._ensure_tokens()
        self._require_state().save(self.state_file)

    def _ensure_service_account_keys(self) -> None:
        key, pub = self.pki_dir / "sa.key", self.pki_dir / "sa.pub"
        if key.exists() and pub.exists():
            return
        run_checked(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(key)])
        run_checked(["openssl", "pkey", "-in", str(key), "-pubout", "-out", str(pub)])

    def _ensure_tokens(self) -> None:
        """The static token file: an admin and the controller manager's own identity.

        The controller manager's user is the one its bootstrap RBAC role is bound to; with
        --use-service-account-credentials each controller then acts as its own ServiceAccount,
        as in a real cluster, so RBAC mistakes are not hidden behind system:masters.
        """
        path = self.pki_dir / "tokens.csv"
        if path.exists():
            return
        lines = [
            f"{secrets.token_hex(24)},admin,admin,system:masters",
            f"{secrets.token_hex(24)},system:kube-controller-manager,system:kube-controller-manager",
        ]
        path.touch(mode=0o600)
        path.write_text("\n".join(lines) + "\n")

    def _token(self, user: str) -> str:
        for line in (self.pki_dir / "tokens.csv").read_text().splitlines():
            token, name, *_ = line.split(",")
            if name == user:
                return token
        raise ControlPlaneError(f"no token for {user} in {self.pki_dir / 'tokens.csv'}")

    def _write_kubeconfigs(self) -> None:
        for path, user in (
            (self.kubeconfig_path, "admin"),
            (self.controller_manager_kubeconfig_path, "system:kube-controller-manager"),
        ):
            tmp = path.with_suffix(".tmp")
            tmp.touch(mode=0o600)
            tmp.write_text(render_kubeconfig(self.server_url, self.ca_file, user, self._token(user)))
            tmp.replace(path)

    # ----- internals: command lines

    def _etcd_argv(self) -> list[str]:
        p = self.ports
        peer = f"http://127.0.0.1:{p.etcd_peer}"
        client = f"http://127.0.0.1:{p.etcd_client}"
        argv = [
            str(self.bin_dir / "etcd"),
            "--name=apprelease",
            f"--data-dir={self.state_dir / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=apprelease={peer}",
        ]
        if not self.durable:
            argv.append("--unsafe-no-fsync")  # tests only: a crash may lose data, which tests never keep
        return argv

    def _apiserver_argv(self) -> list[str]:
        pki = self.pki_dir
        return [
            str(self.bin_dir / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{self.ports.etcd_client}",
            f"--cert-dir={pki / 'serving'}",
            f"--secure-port={self.ports.apiserver}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            "--service-cluster-ip-range=10.0.0.0/24",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--token-auth-file={pki / 'tokens.csv'}",
            "--authorization-mode=RBAC",
            "--allow-privileged=true",
            # Without it the apiserver complains that 127.0.0.1 "may not be in the loopback
            # range" while maintaining the endpoints of the `kubernetes` Service.
            "--endpoint-reconciler-type=none",
            # Without it, SIGTERM while clients hold watches (the controller manager during
            # stop_apiserver, an operator) leaves the process waiting ~60s for those streams
            # to end; with it the watches are closed and it exits in ~1s (measured here).
            "--shutdown-watch-termination-grace-period=2s",
        ]

    def _controller_manager_argv(self) -> list[str]:
        return [
            str(self.bin_dir / "kube-controller-manager"),
            f"--kubeconfig={self.controller_manager_kubeconfig_path}",
            # Only what the project relies on: ownerReference cascades and namespace deletion.
            "--controllers=garbagecollector,namespace",
            "--use-service-account-credentials=true",
            "--leader-elect=false",
            "--secure-port=0",
        ]

    # ----- internals: processes

    def _spawn(self, name: str, argv: list[str]) -> None:
        """Start one component as its own process group, output appended to its log."""
        state = self._require_state()
        if name in state.processes and is_alive(state.processes[name]):
            raise ControlPlaneError(f"{name} is already running (pid {state.processes[name].pid})")
        if self.die_with_parent:
            # setpriv execs the component, so the pid stays the component's; the kernel
            # signals it when this Python process dies (even by SIGKILL). KILL, not TERM: all
            # three get it at once, and a kube-apiserver whose etcd is already gone hangs in
            # its graceful shutdown (seen here). The data is a test's throwaway anyway.
            argv = ["setpriv", "--pdeathsig", "KILL", "--", *argv]
        log = self.log_path(name)
        with log.open("ab") as out:
            out.write(f"\n==== {time.strftime('%Y-%m-%dT%H:%M:%S')} starting: {' '.join(argv)}\n".encode())
            out.flush()
            child = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self._children[name] = child
        ticks = process_start_ticks(child.pid)
        if ticks is None:
            child.wait()
            raise ControlPlaneError(f"{name} exited at once ({child.returncode}):\n{log_tail(log)}")
        state.processes[name] = ProcessRecord(child.pid, ticks)
        state.save(self.state_file)

    def _start_etcd(self) -> None:
        self._spawn("etcd", self._etcd_argv())
        self._wait_until("etcd", self.etcd_healthy, f"etcd on port {self.ports.etcd_client} did not report healthy")

    def _start_controller_manager(self) -> None:
        """Start it and wait until its garbage collector collects (seen in its log).

        It serves nothing (--secure-port=0), so its log is the only sign of readiness. The
        garbage collector says so once its informers synced; waiting for that means a test's
        first cascade does not race the controller's own startup.
        """
        log = self.log_path("kube-controller-manager")
        offset = log.stat().st_size if log.exists() else 0
        self._spawn("kube-controller-manager", self._controller_manager_argv())

        def gc_collecting() -> bool:
            with log.open("rb") as f:
                f.seek(offset)  # only this start's lines: a restarted demo appends to the log
                return GC_READY_MARKER in f.read()

        self._wait_until("kube-controller-manager", gc_collecting, "the garbage collector did not start")

    def _wait_until(self, name: str, ready: Callable[[], bool], what: str) -> None:
        """Poll `ready` until true; fail early if the component exits, with its log tail."""
        deadline = time.monotonic() + self.ready_timeout
        child = self._children[name]
        self.last_probe_error = ""
        while not ready():
            if child.poll() is not None:
                raise ControlPlaneError(
                    f"{name} exited with {child.returncode} while starting; "
                    f"last lines of {self.log_path(name)}:\n{log_tail(self.log_path(name))}"
                )
            if time.monotonic() > deadline:
                raise ControlPlaneError(
                    f"{what} within {self.ready_timeout:.0f}s (last probe: {self.last_probe_error or 'none'}); "
                    f"last lines of {self.log_path(name)}:\n{log_tail(self.log_path(name))}"
                )
            time.sleep(0.1)

    def _stop_component(self, name: str) -> None:
        """SIGTERM the component's group, wait, SIGKILL after stop_timeout; reap if our child."""
        if self._state is None or name not in self._state.processes:
            return
        record = self._state.processes[name]
        if is_alive(record):
            signal_group(record.pid, signal.SIGTERM)
            if not self._wait_gone(name, record, self.stop_timeout):
                signal_group(record.pid, signal.SIGKILL)
                if not self._wait_gone(name, record, 5.0):
                    raise ControlPlaneError(f"{name} (pid {record.pid}) survived SIGKILL")
        child = self._children.pop(name, None)
        if child is not None:
            child.wait()  # reap: no zombie left behind by our own children
        del self._state.processes[name]
        self._state.save(self.state_file)

    def _wait_gone(self, name: str, record: ProcessRecord, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        child = self._children.get(name)
        while time.monotonic() < deadline:
            if child is not None:
                if child.poll() is not None:
                    return True
            elif not is_alive(record):
                return True
            time.sleep(0.05)
        return False

    def _http_status(self, url: str, context: ssl.SSLContext | None) -> int | None:
        """The status of GET url, or None when nothing answers (not listening yet, restarting).

        Why it did not answer is kept in `last_probe_error` for the timeout message: a TLS
        failure would otherwise look like a slow start.
        """
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as err:
            return err.code
        except (urllib.error.URLError, ConnectionError, TimeoutError, ssl.SSLError) as err:
            self.last_probe_error = f"GET {url}: {err}"
            return None


# ---------------------------------------------------------------- command line (hack/controlplane)


def shell_exports(cp: ControlPlane) -> str:
    return f"export KUBECONFIG={cp.kubeconfig_path}\nexport PATH={cp.bin_dir}:$PATH\n"


def cmd_up(cp: ControlPlane) -> int:
    running = cp.running_components()
    if len(running) == len(COMPONENTS):
        print(f"control plane already running from {cp.state_dir} ({', '.join(running)})")
        print(shell_exports(cp), end="")
        return 0
    if running:
        # Half a control plane (one component crashed): say so rather than guess what to keep.
        print(f"only {', '.join(running)} running from {cp.state_dir}; see its logs/, then: hack/controlplane down",
              file=sys.stderr)
        return 1
    started = time.monotonic()
    cp.start()
    print(f"control plane up in {time.monotonic() - started:.1f}s: {cp.server_url}")
    print(f"state and logs: {cp.state_dir}")
    print(f"kubeconfig:     {cp.kubeconfig_path}")
    print("to use it in this shell (or: eval \"$(hack/controlplane env)\"):")
    print(shell_exports(cp), end="")
    return 0


def stop_and_report(group: ControlPlane | Any) -> int:
    """`down` of this script and of hack/argocd.py: stop the group, say what was running."""
    running = group.running_components()
    group.stop()
    print(f"stopped {', '.join(running)}" if running else f"nothing running from {group.state_dir}")
    return 0


def report_components(group: ControlPlane | Any, components: Sequence[str], width: int) -> bool:
    """`status` of this script and of hack/argocd.py: one line per component; False if none recorded."""
    records = group.records()
    if not records:
        print(f"not running (state dir {group.state_dir})")
        return False
    for name in components:
        rec = records.get(name)
        state = "stopped" if rec is None else (f"pid {rec.pid}" if is_alive(rec) else f"pid {rec.pid} DEAD")
        print(f"{name:{width}} {state}")
    return True


def cmd_down(cp: ControlPlane) -> int:
    return stop_and_report(cp)


def cmd_status(cp: ControlPlane) -> int:
    if not report_components(cp, COMPONENTS, 24):
        return 1
    print(f"etcd /health:            {'ok' if cp.etcd_healthy() else 'no answer'}")
    print(f"{cp.server_url}/readyz: {cp.readyz() or 'no answer'}")
    return 0 if len(cp.running_components()) == len(COMPONENTS) else 1


def cmd_kubeconfig(cp: ControlPlane) -> int:
    print(cp.kubeconfig_path)
    return 0


def cmd_env(cp: ControlPlane) -> int:
    print(shell_exports(cp), end="")
    return 0


COMMANDS: dict[str, Callable[[ControlPlane], int]] = {
    "up": cmd_up,
    "down": cmd_down,
    "status": cmd_status,
    "kubeconfig": cmd_kubeconfig,
    "env": cmd_env,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hack/controlplane", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=list(COMMANDS))
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path(os.environ.get("APPRELEASE_CONTROLPLANE_DIR", DEMO_STATE_DIR)),
        help="where data, keys, logs and kubeconfig live (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    cp = ControlPlane(args.state_dir, durable=True, die_with_parent=False)
    if args.command in ("kubeconfig", "env") and not cp.records():
        print(f"not running (state dir {cp.state_dir}); run: hack/controlplane up", file=sys.stderr)
        return 1
    try:
        return COMMANDS[args.command](cp)
    except ControlPlaneError as err:
        print(f"hack/controlplane {args.command}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
