"""A load generator for zero-downtime tests: a separate process hitting nginx on loopback.

Workers of four kinds run until SIGTERM (then finish their in-flight request) or until
`--max-seconds`: keep-alive clients (GET /, POST /echo with a body on one connection), fresh
connection clients (a new TCP connection per request), slow clients (/slow, ~2 s each, so
a request that started on the old revision has to be drained, not cut) and page clients
(`--page`: GET /page, then at once the hashed stylesheet it names, served by nginx, as a
browser does). Every response that is not a 200 from one of the expected app versions (for an
asset: not the file of the page's version), and every socket error, is counted by kind and kept.
Prints one JSON object on stdout at the end. Loopback only; bounded in time and count.

    python load.py --port P --host-header webxample.local --expect 1.0.0 --expect 2.0.0
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

BODY = os.urandom(4096)
BODY_SHA = hashlib.sha256(BODY).hexdigest()
# webxample's /page links its stylesheet; the file names the version that built it.
STYLESHEET = re.compile(rb'<link rel="stylesheet" href="(/[A-Za-z0-9._/-]+)">')


@dataclass
class Tally:
    ok: int = 0
    by_kind: Counter = field(default_factory=Counter)
    versions: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    failed_by_kind: Counter = field(default_factory=Counter)
    errors: int = 0
    bad_status: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fail(self, what: str, is_error: bool, kind: str) -> None:
        with self.lock:
            if is_error:
                self.errors += 1
            else:
                self.bad_status += 1
            self.failed_by_kind[kind] += 1
            if len(self.failures) < 50:
                self.failures.append(what)

    def good(self, kind: str, version: str) -> None:
        with self.lock:
            self.ok += 1
            self.by_kind[kind] += 1
            self.versions[version] += 1


class Load:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.stop = threading.Event()
        self.tally = Tally()
        self.requests = 0
        self.count_lock = threading.Lock()

    def _budget(self) -> bool:
        with self.count_lock:
            self.requests += 1
            return self.requests <= self.args.max_requests

    def _one(self, conn: http.client.HTTPConnection, kind: str) -> None:
        method, path, body = {
            "get": ("GET", "/", None),
            "post": ("POST", "/echo", BODY),
            "slow": ("GET", f"/slow?seconds={self.args.slow_seconds}", None),
        }[kind]
        headers = {"Host": self.args.host_header}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        served_by = resp.getheader("X-Served-By", "")
        version = served_by.partition("/")[2]
        if resp.status != 200:
            self.tally.fail(f"{kind} {path}: HTTP {resp.status} {data[:200]!r}", False, kind)
        elif self.args.expect and version not in self.args.expect:
            self.tally.fail(f"{kind} {path}: served by {served_by!r}, expected {self.args.expect}", False, kind)
        elif kind == "post" and BODY_SHA.encode() not in data:
            self.tally.fail(f"post: body digest not echoed: {data[:200]!r}", False, kind)
        else:
            self.tally.good(kind, version)

    def _page_and_asset(self, conn: http.client.HTTPConnection) -> None:
        """A page, then at once the asset it names, on the same connection: a browser's order.
        The page comes from the app (through live.sock), the asset from nginx (proxy.static);
        during a rotation they must still belong to the same release."""
        headers = {"Host": self.args.host_header}
        conn.request("GET", "/page", headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        version = resp.getheader("X-Served-By", "").partition("/")[2]
        found = STYLESHEET.search(data)
        if resp.status != 200:
            self.tally.fail(f"page /page: HTTP {resp.status} {data[:200]!r}", False, "page")
            return
        if (self.args.expect and version not in self.args.expect) or found is None:
            self.tally.fail(f"page /page: version {version!r}, expected {self.args.expect}: {data[:200]!r}", False, "page")
            return
        self.tally.good("page", version)
        asset = found.group(1).decode()
        conn.request("GET", asset, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            self.tally.fail(f"asset {asset} of a {version} page: HTTP {resp.status}", False, "asset")
        elif f"webxample {version}:".encode() not in data:
            self.tally.fail(f"asset {asset} of a {version} page is another version's: {data[:100]!r}", False, "asset")
        else:
            self.tally.good("asset", version)

    def worker(self, kind: str, keepalive: bool) -> None:
        conn = None
        while not self.stop.is_set() and self._budget():
            if conn is None:
                conn = http.client.HTTPConnection(self.args.address, self.args.port, timeout=30)
            try:
                if kind == "page":
                    self._page_and_asset(conn)
                else:
                    self._one(conn, kind)
            except (OSError, http.client.HTTPException) as exc:
                self.tally.fail(f"{kind}: {type(exc).__name__}: {exc}", True, kind)
                conn.close()
                conn = None
                continue
            if not keepalive:
                conn.close()
                conn = None
            if kind == "post" and keepalive:
                kind = "get"  # keep-alive clients alternate GET and POST on one connection
            elif keepalive and kind == "get":
                kind = "post"
        if conn is not None:
            conn.close()

    def run(self) -> dict:
        plan = [("get", True)] * self.args.keepalive + [("get", False)] * self.args.fresh
        plan += [("post", False)] * self.args.fresh_post + [("slow", False)] * self.args.slow
        plan += [("page", True)] * self.args.page
        threads = [threading.Thread(target=self.worker, args=p, daemon=True) for p in plan]
        started = time.monotonic()
        for t in threads:
            t.start()
        self.stop.wait(self.args.max_seconds)
        self.stop.set()
        for t in threads:
            t.join(timeout=self.args.slow_seconds + 35)
        t = self.tally
        return {
            "ok": t.ok, "errors": t.errors, "badStatus": t.bad_status, "byKind": dict(t.by_kind),
            "failedByKind": dict(t.failed_by_kind),
            "versions": dict(t.versions), "failures": t.failures, "seconds": round(time.monotonic() - started, 2),
        }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--address", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host-header", default="localhost")
    p.add_argument("--expect", action="append", default=[], help="app versions allowed to answer")
    p.add_argument("--keepalive", type=int, default=4)
    p.add_argument("--fresh", type=int, default=2)
    p.add_argument("--fresh-post", type=int, default=2)
    p.add_argument("--slow", type=int, default=2)
    p.add_argument("--slow-seconds", type=float, default=2.0)
    p.add_argument("--page", type=int, default=0, help="page + hashed asset clients (webxample's /page)")
    p.add_argument("--max-seconds", type=float, default=300)
    p.add_argument("--max-requests", type=int, default=2_000_000)
    return p.parse_args(argv)


def main() -> None:
    args = parse_args()
    if not args.address.startswith("127.") and args.address not in ("::1", "localhost"):
        sys.exit("load.py only targets loopback addresses")
    load = Load(args)
    signal.signal(signal.SIGTERM, lambda *_: load.stop.set())
    print(json.dumps(load.run()), flush=True)


class LoadProcess:
    """Runs load.py as a child process; `finish()` stops it and returns its tally."""

    def __init__(self, port: int, *, host_header: str, expect: list[str], address: str = "127.0.0.1", **options):
        argv = [sys.executable, "-P", str(Path(__file__).resolve()), "--address", address, "--port", str(port),
                "--host-header", host_header]
        for version in expect:
            argv += ["--expect", version]
        for name, value in options.items():
            argv += [f"--{name.replace('_', '-')}", str(value)]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)

    def finish(self, timeout: float = 60) -> dict:
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=timeout)
        if self.proc.returncode != 0:
            raise RuntimeError(f"load generator exited with {self.proc.returncode}")
        return json.loads(out)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def finish(loads: list[LoadProcess]) -> list[dict]:
    """Stop every load generator and return their tallies (none is left running, even on error)."""
    try:
        return [load.finish() for load in loads]
    finally:
        for load in loads:
            load.kill()


def rotate_under_load(port: int, rotate: Callable[[int], object], rotations: int, *, label: str,
                      host_header: str, expect: list[str], **options) -> dict:
    """Call `rotate(1..rotations)` while a load process hits nginx; its tally, after printing one
    line of numbers (`label`: rotations, requests, failures) for the README."""
    load = LoadProcess(port, host_header=host_header, expect=expect, **options)
    try:
        time.sleep(1)
        for rotation in range(1, rotations + 1):
            rotate(rotation)
        time.sleep(0.5)
        tally = load.finish()
    finally:
        load.kill()
    failed = tally["errors"] + tally["badStatus"]
    print(f"\n{label}: {rotations} rotations, {tally['ok'] + failed} requests "
          f"({tally['byKind'].get('slow', 0)} of 2 s), {failed} failed")
    return tally


def assert_no_failed_requests(tallies: list[dict]) -> None:
    for tally in tallies:
        assert tally["errors"] == 0 and tally["badStatus"] == 0, tally["failures"]
        assert tally["ok"] > 50, tally


if __name__ == "__main__":
    main()
