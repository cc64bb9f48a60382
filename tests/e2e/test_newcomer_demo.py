"""First contact: `make demo` as a newcomer runs it, from a fresh clone in a private directory.

Covers: a `git clone` of this checkout's HEAD under a 0700 directory (as root's home is on
Debian, or `mktemp -d`), where `make demo` builds its own .venv and runs the whole story to
completion, the hosts' roots outside the clone (under /var/lib/apprelease-demo/<hash>, 0755
down to each root), the example served through each host's nginx, live phases in its
progress lines; `make demo-down` then stops everything (no process of the clone or of its
host roots is left, the demo's addresses are free again). And fail fast: with the host
roots put where the apps' users cannot reach (APPRELEASE_DEMO_HOSTS_DIR inside the private
directory), the agents exit at once; the demo says which one, shows its last log lines with
the reason, stops what it started and exits non-zero, within seconds rather than the
rollout's 300 s timeout.

The demo's addresses are fixed (its index on 127.0.0.1:8765, its hosts' nginx on
127.0.0.2:8080 and 127.0.0.3:8080): these tests take a machine-wide lock so no two run at
once, from any checkout, and fail if something else (a person's demo) holds the addresses.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import demo  # hack/demo.py
from support.manifests import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.demo]

LOCK = Path("/tmp/apprelease-demo.lock")
ADDRESSES = (("127.0.0.1", demo.INDEX_PORT), ("127.0.0.2", demo.APP_PORT), ("127.0.0.3", demo.APP_PORT))
MAKE_DEMO_TIMEOUT = 1200  # a fresh .venv (pip, uv, the package and its test extra) and the whole story


def listening(address: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((address, port)) == 0


def processes_mentioning(*paths: Path) -> list[str]:
    """Command lines of running processes that name any of `paths` (the clone, its host roots)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if (proc / "stat").read_text().split(") ", 1)[1].startswith("Z"):
                continue
        except OSError:
            continue
        if any(str(p) in cmdline for p in paths):
            found.append(f"{proc.name}: {cmdline.strip()}")
    return found


@pytest.fixture(scope="module")
def demo_turn() -> Iterator[None]:
    """The machine's one demo slot, for this module."""
    with LOCK.open("w") as lock:
        deadline = time.monotonic() + 1200
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"another demo test held {LOCK} for 20 minutes")
                time.sleep(2)
        busy = [f"{a}:{p}" for a, p in ADDRESSES if listening(a, p)]
        if busy:
            pytest.fail(f"the demo's addresses are in use ({', '.join(busy)}): is a demo running? `make demo-down` it")
        yield


@pytest.fixture(scope="module")
def newcomer(demo_turn) -> Iterator[Path]:
    """A clone of HEAD at <0700 dir>/apprelease; afterwards `make demo-down`, and the clone and
    its host roots removed."""
    private = Path(tempfile.mkdtemp(prefix="ar-newcomer-"))
    assert private.stat().st_mode & 0o777 == 0o700  # what mktemp -d gives, like root's home
    clone = private / "apprelease"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=120)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert subprocess.run(["git", "rev-parse", "HEAD"], cwd=clone, capture_output=True, text=True).stdout.strip() == head
    try:
        yield clone
    finally:
        if (clone / ".venv" / "bin" / "python").exists():
            subprocess.run(["make", "demo-down"], cwd=clone, env=newcomer_env(), capture_output=True, timeout=300)
        base = demo.host_roots_base(clone, False)
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(private, ignore_errors=True)
        try:
            base.parent.rmdir()  # /var/lib/apprelease-demo, if no other checkout's demo keeps hosts there
        except OSError:
            pass


def newcomer_env() -> dict[str, str]:
    """A login shell's environment: nothing of this test run (its venv, a KUBECONFIG) leaks in."""
    drop = ("KUBECONFIG", "VIRTUAL_ENV", "PYTHONPATH", "APPRELEASE_DEMO_HOSTS_DIR", "PYTEST_CURRENT_TEST")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    venv_bin = str(ROOT / ".venv" / "bin")
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    return env


def run_logged(argv: list[str], cwd: Path, log: Path, timeout: float, env: dict[str, str] | None = None) -> tuple[int, str, float]:
    started = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.run(argv, cwd=cwd, env=env or newcomer_env(), stdout=out, stderr=subprocess.STDOUT,
                              timeout=timeout)
    return proc.returncode, log.read_text(errors="replace"), time.monotonic() - started


@pytest.mark.timeout(MAKE_DEMO_TIMEOUT + 360)
def test_make_demo_from_a_clone_in_a_private_directory(newcomer, tmp_path):
    code, out, seconds = run_logged(["make", "demo"], newcomer, tmp_path / "make-demo.log", MAKE_DEMO_TIMEOUT)
    assert code == 0, out[-6000:]

    base = demo.host_roots_base(newcomer, False)
    assert f"host roots in {base}" in out
    for directory in (base, base / "host-a", base / "host-b"):
        assert directory.stat().st_mode & 0o777 == 0o755, directory
    assert demo.traversable_by_others(base / "host-a")
    assert not (newcomer / ".demo" / "hosts").exists()

    # Served through each host's nginx, by the demo (every act) and still now (the rollback's 1.0.0).
    assert re.search(r'# host-a\n  200 \{"version": "2\.0\.0"', out) and re.search(r'# host-b\n  200 \{"version": "2\.0\.0"', out)
    for address in ("127.0.0.2", "127.0.0.3"):
        assert demo.curl(address).startswith('200 {"version": "1.0.0"'), address

    progress = [line for line in out.splitlines() if re.match(r"  \[ *\d+\.\d+s\] ", line)]
    live = sorted({p for line in progress for p in re.findall(r"host-\w: \S+ \((\w+)", line)} - {"Pending", "Ready"})
    assert "Draining" in live, "\n".join(progress)  # 0.8 s per host per rotation: the demo's poll sees it
    print(f"\nmake demo from a fresh clone in a 0700 directory: {seconds:.0f}s (its .venv included); "
          f"live phases in its progress lines: {live}\n" + "\n".join(progress))

    code, down, _ = run_logged(["make", "demo-down"], newcomer, tmp_path / "demo-down.log", 300)
    assert code == 0, down
    assert f"and {base}" in down  # it says where the hosts' state is kept
    left = processes_mentioning(newcomer, base)
    assert not left, "\n".join(left)
    assert not [f"{a}:{p}" for a, p in ADDRESSES if listening(a, p)]


@pytest.mark.timeout(MAKE_DEMO_TIMEOUT)
def test_demo_fails_fast_when_an_agent_dies_at_start(newcomer, tmp_path):
    """The issue's first contact, on purpose: host roots where the apps' users cannot reach."""
    subprocess.run(["make", "venv"], cwd=newcomer, env=newcomer_env(), check=True, capture_output=True, timeout=600)
    unreachable = newcomer.parent / "hosts"  # inside the 0700 directory
    env = {**newcomer_env(), "APPRELEASE_DEMO_HOSTS_DIR": str(unreachable)}
    code, out, seconds = run_logged(["hack/demo", "up"], newcomer, tmp_path / "demo-up.log", 300, env)

    assert code == 1, out[-4000:]
    assert re.search(r"demo: agent-host-[ab] exited with 1", out), out[-4000:]
    assert re.search(r"--- last \d+ lines of \.demo/logs/agent-host-[ab]\.log ---", out), out[-4000:]
    assert f"{newcomer.parent} is not traversable by other users" in out, out[-4000:]
    assert "demo: stopping everything it started" in out and "demo: stopped" in out
    assert "webxample 1.0.0, applied" not in out, "it went on to the rollout"
    left = processes_mentioning(newcomer, unreachable)
    assert not left, "\n".join(left)
    assert not [f"{a}:{p}" for a, p in ADDRESSES if listening(a, p)]
    print(f"\nfailed fast after {seconds:.1f}s (control plane start and the index's wheels included):\n"
          + out[out.index("demo: agent-host"):])
