"""`make demo`: apprelease on this machine, from nothing, with real parts only.

    hack/demo up      control plane, CRDs, package index, the example applied, the story told
    hack/demo down    stop everything `up` started (also what Ctrl-C during `up` does)

What runs, all on loopback, all state under `.demo/` (gitignored):
- etcd + kube-apiserver + kube-controller-manager built from Go modules (hack/controlplane.py);
- a PEP 503 index on 127.0.0.1:8765 serving webxample's wheels, built here (tests/support/pypi.py);
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
        if any(x["type"] == "Established" and x["status"] == "True" for x in c.get("status", {}).get("conditions", []))
    }
    return names <= established and cp.kubectl("get", "appreleases", "-A", check=False).returncode == 0


def up() -> int:
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

    say("4. The example AppRelease, applied with kubectl")
    show(cp, "apply", "--dry-run=server", "-f", str(EXAMPLE))
    show(cp, "apply", "-f", str(EXAMPLE))
    show(cp, "get", "ar")
    print("\nAn invalid manifest is refused by the apiserver with the field named:")
    bad = EXAMPLE.read_text().replace("user: webxample", "user: root")
    result = cp.kubectl("apply", "--dry-run=server", "-f", "-", input=bad, check=False)
    print(result.stderr.strip())

    say(f"Done in {time.monotonic() - started:.1f}s. Look around:")
    print(f"  export KUBECONFIG={cp.kubeconfig_path} PATH={cp.bin_dir}:$PATH")
    print("  kubectl get ar,hr -A")
    print("  kubectl explain apprelease.spec.proxy")
    print("  make demo-down    # stop everything")
    return 0


def down() -> int:
    stop_index()
    cp = controlplane.ControlPlane(controlplane.DEMO_STATE_DIR, durable=True)
    if cp.records():
        cp.stop()
    print("demo: stopped; state kept in .demo/ (rm -rf .demo to forget it)")
    return 0


def main(argv: list[str]) -> int:
    if argv[1:] == ["up"]:
        try:
            return up()
        except KeyboardInterrupt:
            print("\ndemo: interrupted, stopping what was started", file=sys.stderr)
            down()
            return 130
    if argv[1:] == ["down"]:
        return down()
    print("usage: hack/demo up|down", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
