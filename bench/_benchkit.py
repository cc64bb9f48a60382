"""What the benchmarks share: a local control plane with the CRDs, process numbers from /proc,
the code of another git ref, and small waits. Not a benchmark itself (`make bench` skips `_*`)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "hack"))

from controlplane import ControlPlane  # noqa: E402


def control_plane_with_crds(stack: ExitStack, state: Path) -> ControlPlane:
    """A throwaway control plane under `state` with apprelease's CRDs listable; stopped by `stack`."""
    cp = ControlPlane(state, durable=False, die_with_parent=True)
    cp.start()
    stack.callback(cp.stop)
    cp.kubectl("apply", "-f", str(REPO / "crds"))
    for plural in ("appreleases", "hostreleases"):
        cp.kubectl("wait", "--for=condition=Established", f"crd/{plural}.apprelease.dev", "--timeout=60s")
    wait(lambda: cp.kubectl("get", "hostreleases", "-A", check=False).returncode == 0, 60, "CRDs listable")
    return cp


def proc_stats(pid: int) -> dict[str, float]:
    """RSS now and at its peak (MB), and CPU seconds (user + system) of a live process."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return {"rss_mb": int(status["VmRSS"].split()[0]) / 1024, "peak_rss_mb": int(status["VmHWM"].split()[0]) / 1024,
            "cpu_s": (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")}


def export_tree(ref: str, into: Path) -> Path:
    """The `operator/` directory of git REF, for PYTHONPATH (it wins over the editable install)."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref, "operator"], capture_output=True, check=True).stdout
    (into / "tree.tar").write_bytes(archive)
    with tarfile.open(into / "tree.tar") as tar:
        tar.extractall(into, filter="data")
    return into / "operator"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def wait(predicate, timeout: float, what: str, interval: float = 0.5):
    """The predicate's first true result; RuntimeError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g} s: {what}")
        time.sleep(interval)


def stop_process(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGTERM, then SIGKILL after `timeout` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
