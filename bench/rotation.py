"""Benchmark: what a rotation costs, and what the usual alternatives cost, measured in one run.

Run by a developer (`.venv/bin/python bench/rotation.py [--rotations 100]`), not by the tests.
One host (circusd + nginx on loopback) under a temporary root, webxample served from a local
index. It prints:
  - switch latency: from the live-socket rename to the first response from the new revision
    through nginx (a client polling /version on fresh connections), p50/p99;
  - rollback time: a reconcile to a release still on disk (no build), app boot and health gate
    included, p50/p99, and its steps;
  - failed requests during N rotations under wrk at the highest rate it reaches here, vs a
    naive supervisor `restart` of the serving watcher, vs gunicorn HUP after swapping a
    `current` symlink (the classic way, which also keeps the old venv's code serving).
"""

from __future__ import annotations

import argparse
import http.client
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from support.hosts import SERVER_NAME, make_host, release_for, stop_host  # noqa: E402
from support.nginx import free_port  # noqa: E402
from support.pypi import start_webxample_index  # noqa: E402

from apprelease.host import core  # noqa: E402
from apprelease.host.layout import app_key, watcher_name  # noqa: E402

KEY = app_key("default", "webxample")
VERSIONS = ("1.0.0", "2.0.0")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def version_now(port: int) -> tuple[float, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/version", headers={"Host": SERVER_NAME})
        resp = conn.getresponse()
        body = resp.read()
        return time.monotonic(), (resp.getheader("X-Served-By", "") or body.decode()[:40]).partition("/")[2]
    finally:
        conn.close()


class Poller:
    """Polls /version through nginx on fresh connections, recording (completion time, version)."""

    def __init__(self, port: int):
        self.port, self.seen, self.stop = port, [], threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                self.seen.append(version_now(self.port))
            except OSError:
                pass

    def __enter__(self) -> Poller:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def wrk(port: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["wrk", "-t2", "-c32", "-d3600s", "-H", f"Host: {SERVER_NAME}", f"http://127.0.0.1:{port}/"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def wrk_result(proc: subprocess.Popen[str]) -> dict[str, float]:
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    total = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = sum(int(x) for x in sock.groups()) if sock else 0
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    return {"requests": total, "non2xx": non2xx, "socket_errors": errors, "rps": rps}


def switch_latency_and_rollback(host, index, port: int, rotations: int) -> None:
    latencies, walls, serving_after, breakdown = [], [], [], {}
    for i in range(rotations):
        target = VERSIONS[(i + 1) % 2]
        with Poller(port) as poller:
            started = time.monotonic()
            result = core.reconcile(host, release_for(index.url, target, port=port))
            walls.append(time.monotonic() - started)
            time.sleep(0.2)
        assert result.status.phase == "Ready", result.status.message
        assert result.status.last_build.reused or i < 1
        switch = next(s for s in result.steps if s.action.startswith("switch-live"))
        switched_at = switch.started + switch.seconds
        first_new = next(t for t, v in poller.seen if v == target and t >= switch.started)
        latencies.append(max(0.0, first_new - switched_at))
        serving_after.append(first_new - started)
        for step in result.steps:
            breakdown.setdefault(step.action.split("(")[0], []).append(step.seconds)
    latencies_ms = [x * 1000 for x in latencies]
    print(f"switch latency (rename -> first new response via nginx), {rotations} rotations: "
          f"p50 {pct(latencies_ms, .5):.1f} ms, p99 {pct(latencies_ms, .99):.1f} ms (target <= 100 ms p99)")
    rollback, serving = walls[1:], serving_after[1:]  # from the 2nd on, every target release is on disk
    print(f"rollback to a retained release, until it serves (app boot + health gate included): "
          f"p50 {pct(serving, .5) * 1000:.0f} ms, p99 {pct(serving, .99) * 1000:.0f} ms (target <= 1000 ms)")
    print(f"  ... until the reconcile is done (old revision drained and stopped too): "
          f"p50 {pct(rollback, .5) * 1000:.0f} ms, p99 {pct(rollback, .99) * 1000:.0f} ms")
    print("  steps p50: " + ", ".join(f"{k} {statistics.median(v) * 1000:.0f} ms" for k, v in breakdown.items()))


def rotations_under_wrk(host, index, port: int, rotations: int) -> dict[str, float]:
    proc = wrk(port)
    try:
        time.sleep(1)
        for i in range(rotations):
            result = core.reconcile(host, release_for(index.url, VERSIONS[(i + 1) % 2], port=port))
            assert result.status.phase == "Ready", result.status.message
        time.sleep(1)
    finally:
        stats = wrk_result(proc)
    return stats


def naive_restarts_under_wrk(host, index, port: int, restarts: int) -> dict[str, float]:
    result = core.reconcile(host, release_for(index.url, VERSIONS[0], port=port))
    name = watcher_name(KEY, result.status.serving_revision)
    proc = wrk(port)
    try:
        time.sleep(1)
        for _ in range(restarts):
            host.supervisor._call("restart", name=name, waiting=True)  # noqa: SLF001 - the baseline on purpose
            time.sleep(2)
    finally:
        stats = wrk_result(proc)
    return stats


def hup_after_symlink_swap(host, index, port: int, preload: bool) -> tuple[dict[str, float], str, str]:
    """gunicorn started from `current/venv`, then `current` swapped to v2 and the master HUPed."""
    base = host.layout.app(KEY)
    releases = {v: core.reconcile(host, release_for(index.url, v, port=port)).status.serving_build_id for v in VERSIONS}
    core.reconcile(host, release_for(index.url, VERSIONS[0], port=port))
    classic = base.base / "classic"
    classic.unlink(missing_ok=True)
    classic.symlink_to(base.release(releases["1.0.0"]))
    sock = base.run / "classic.sock"
    gunicorn = subprocess.Popen(
        [str(classic / "venv" / "bin" / "python"), "-m", "gunicorn", "--bind", f"unix:{sock}", "--workers", "2",
         "--threads", "8", "--worker-class", "gthread", "--no-control-socket", *(["--preload"] if preload else []),
         "webxample.app:application"],
        cwd=str(classic), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            if sock.exists():
                break
            time.sleep(0.1)
        live = base.live_socket
        previous = Path(live.readlink())
        tmp = base.run / ".swap"
        tmp.symlink_to("classic.sock")
        tmp.replace(live)  # nginx now reaches the classic gunicorn
        proc = wrk(port)
        time.sleep(1)
        before = version_now(port)[1]
        tmp2 = base.base / ".classic.tmp"
        tmp2.symlink_to(base.release(releases["2.0.0"]))
        tmp2.replace(classic)
        gunicorn.send_signal(signal.SIGHUP)
        time.sleep(3)
        after = version_now(port)[1]
        stats = wrk_result(proc)
        tmp.symlink_to(previous.name)
        tmp.replace(live)
        sock.unlink(missing_ok=True)
        return stats, before, after
    finally:
        gunicorn.terminate()
        gunicorn.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rotations", type=int, default=100)
    parser.add_argument("--latency-rotations", type=int, default=20)
    parser.add_argument("--restarts", type=int, default=5)
    parser.add_argument("--backend", default="circus", choices=("circus",))
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("bench/rotation.py needs wrk (apt-get install wrk)")
    root = Path(tempfile.mkdtemp(prefix="ar-bench-", dir="/tmp"))
    root.chmod(0o755)
    index = start_webxample_index(root / "pypi", versions=VERSIONS)
    host = make_host(root / "host", args.backend)
    host.start()
    port = free_port()
    try:
        core.reconcile(host, release_for(index.url, VERSIONS[0], port=port))
        switch_latency_and_rollback(host, index, port, args.latency_rotations)
        ours = rotations_under_wrk(host, index, port, args.rotations)
        print(f"apprelease: {args.rotations} rotations under wrk at {ours['rps']:.0f} req/s: "
              f"{ours['requests']:.0f} requests, {ours['non2xx']:.0f} non-2xx, {ours['socket_errors']:.0f} socket errors")
        naive = naive_restarts_under_wrk(host, index, port, args.restarts)
        print(f"baseline, supervisor restart of the watcher: {args.restarts} restarts at {naive['rps']:.0f} req/s: "
              f"{naive['requests']:.0f} requests, {naive['non2xx']:.0f} non-2xx, {naive['socket_errors']:.0f} socket errors "
              f"= {(naive['non2xx'] + naive['socket_errors']) / args.restarts:.0f} failed per restart")
        for preload in (False, True):
            hup, before, after = hup_after_symlink_swap(host, index, port, preload)
            print(f"baseline, swap `current` + gunicorn HUP{' (--preload)' if preload else ''}: "
                  f"{hup['non2xx']:.0f} non-2xx, {hup['socket_errors']:.0f} socket errors; "
                  f"serving {before} before, {after or '?'} after the swap to 2.0.0")
    finally:
        core.remove(host, "default", "webxample")  # as the agent removes an app: its accounts go too
        stop_host(host)
        index.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
