"""Benchmark: the operator at fleet scale — N Nodes, M AppReleases of k hosts each, simulated agents.

Run by a developer or `make bench` (`.venv/bin/python bench/fleet.py [--nodes 100 --apps 500 --hosts 4]`),
not by the tests. Starts a local control plane (hack/controlplane.py), creates N Nodes in N/k
label groups and M AppReleases (app i selects group i mod N/k, so k hosts each, maxUnavailable
25%), then starts the operator (`apprelease operator`, of this checkout or of `--code REF`) and one
process of simulated agents (`bench/fleet.py --simulate-agents`, the same file): a load generator
playing every host's agent through the API. It watches all HostReleases and, `--ready-delay`
seconds after a HostRelease's spec changes, writes the status an agent writes when the new
revision serves (phase Ready, observedGeneration, servingRevision, ...). It is not a test double
of the operator: it only answers what the operator asks of hosts.

Prints, in one run:
  - cold start: seconds from the operator's exec until every HostRelease exists, and until
    every one is Ready (the simulated agents answered);
  - apiserver requests per reconcile pass: `apiserver_request_total` deltas (the apiserver's
    /metrics) over the operator's `apprelease_operator_reconcile_seconds_count` delta, during
    the cold start and during an idle resync window (by verb and resource);
  - one app's new version across its k hosts with maxUnavailable 25% (k batches): total seconds,
    and the operator's lag: from the Ready of one batch to the spec update of the next, the max;
  - operator RSS (now and peak) and CPU seconds, from /proc.
Everything it starts is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "hack"))
sys.path.insert(0, str(REPO / "bench"))

from _benchkit import control_plane_with_crds, export_tree, free_port, proc_stats, stop_process, wait  # noqa: E402
from apprelease.kubeclient import ApiError, Client, load_config  # noqa: E402

GROUP_LABEL = "fleet.bench.apprelease.dev/group"
NAMESPACE = "fleet"
GROUP, VERSION = "apprelease.dev", "v1alpha1"
HR_PATH = f"/apis/{GROUP}/{VERSION}/hostreleases"


def app_path(namespace: str, name: str = "") -> str:
    return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/appreleases" + (f"/{name}" if name else "")


def app_release(name: str, group: int, version: str) -> dict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "AppRelease",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "version": version,
            "source": {"requirements": [f"webxample=={version}"], "indexUrl": "http://127.0.0.1:9/simple/"},
            "entrypoint": "webxample.app:application",
            "proxy": {"serverNames": [f"{name}.fleet.test"], "listenPort": 8080},
            "hosts": {"nodeSelector": {GROUP_LABEL: f"g{group}"}},
            "strategy": {"maxUnavailable": "25%"},
        },
    }


# -- the simulated agents (a separate process) -------------------------------------------


def simulate_agents(kubeconfig: str, delay: float, log_path: str) -> int:
    """Watch every HostRelease; `delay` s after a spec generation is new, report it Ready.

    Appends one JSON line per event of interest to `log_path`: {"t", "kind": "spec"|"ready",
    "name", "generation"} (wall clock, so the bench can line them up with its own times)."""
    client = Client(load_config(kubeconfig), pool_size=16)
    answered: dict[str, int] = {}  # namespace/name -> generation reported Ready
    timers = ThreadPoolExecutor(max_workers=16)
    log = open(log_path, "a", buffering=1)  # noqa: SIM115 - lives as long as the process
    lock = threading.Lock()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def record(kind: str, name: str, generation: int) -> None:
        with lock:
            log.write(json.dumps({"t": time.time(), "kind": kind, "name": name, "generation": generation}) + "\n")

    def answer(obj: dict, due: float) -> None:
        meta, spec = obj["metadata"], obj.get("spec") or {}
        # The delay counts from the spec's arrival, not from a free worker: a burst of
        # thousands of specs must not queue one delay after another.
        time.sleep(max(0.0, due - time.monotonic()))
        status = {"phase": "Ready", "observedGeneration": meta["generation"], "servingRevision": spec.get("revision"),
                  "servingBuildId": spec.get("buildId"), "servingVersion": spec.get("version"),
                  "message": "simulated agent"}
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{meta['namespace']}/hostreleases/{meta['name']}/status"
        for _ in range(5):
            try:
                client.request("PATCH", path, body={"status": status}, content_type="application/merge-patch+json")
                record("ready", meta["name"], meta["generation"])
                return
            except ApiError as exc:
                if exc.status == 404:
                    return
            except OSError:
                pass
            time.sleep(0.5)

    def consider(obj: dict) -> None:
        meta = obj["metadata"]
        key = f"{meta['namespace']}/{meta['name']}"
        if meta.get("deletionTimestamp") or answered.get(key) == meta["generation"]:
            return
        answered[key] = meta["generation"]
        record("spec", meta["name"], meta["generation"])
        timers.submit(answer, obj, time.monotonic() + delay)

    version = "0"
    while not stop.is_set():
        try:
            if version == "0":
                listed = client.request("GET", HR_PATH, timeout=(10, 120))
                version = listed["metadata"]["resourceVersion"]
                for item in listed["items"]:
                    consider(item)
            for kind, obj in client.watch(HR_PATH, query={"resourceVersion": version, "allowWatchBookmarks": True,
                                                          "timeoutSeconds": 60}, timeout=(10, 90)):
                version = obj["metadata"].get("resourceVersion", version)
                if kind in ("ADDED", "MODIFIED"):
                    consider(obj)
                if stop.is_set():
                    break
        except ApiError as exc:
            if exc.status == 410:
                version = "0"
            else:
                time.sleep(1)
        except OSError:
            time.sleep(1)
    timers.shutdown(wait=False, cancel_futures=True)
    return 0


# -- measuring -----------------------------------------------------------------------------


def scrape(text: str, metric: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Samples of one metric from Prometheus text: labels (sorted pairs) -> value."""
    samples = {}
    for line in text.splitlines():
        if not line.startswith(metric):
            continue
        name_labels, _, value = line.rpartition(" ")
        if "{" in name_labels:
            name, _, rest = name_labels.partition("{")
            labels = tuple(sorted(tuple(p.split("=", 1)) for p in _split_labels(rest.rstrip("}"))))
        else:
            name, labels = name_labels, ()
        if name == metric:
            samples[tuple((k, v.strip('"')) for k, v in labels)] = float(value)
    return samples


def _split_labels(text: str) -> list[str]:
    parts, current, quoted = [], "", False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            parts.append(current)
            current = ""
        else:
            current += ch
    if current:
        parts.append(current)
    return parts


class Meter:
    """apiserver requests (by verb/resource) and the operator's reconcile passes, as deltas."""

    def __init__(self, client: Client, operator_metrics_url: str):
        self.client, self.operator_url = client, operator_metrics_url

    def snapshot(self) -> tuple[Counter, float]:
        resp = self.client.pool.request("GET", "/metrics", headers=self.client._headers(None), retries=False)
        requests: Counter = Counter()
        for labels, value in scrape(resp.data.decode(), "apiserver_request_total").items():
            d = dict(labels)
            requests[(d.get("verb", ""), d.get("resource", ""), d.get("subresource", ""))] += value
        passes = 0.0
        try:
            with urllib.request.urlopen(self.operator_url, timeout=5) as r:
                passes = sum(scrape(r.read().decode(), "apprelease_operator_reconcile_seconds_count").values())
        except (urllib.error.URLError, OSError):
            pass
        return requests, passes


    def apiserver_seconds(self) -> Counter:
        """Seconds the apiserver spent serving requests, by (verb, resource, subresource), watches
        left out: where its CPU goes (what the operator's requests cost, roughly)."""
        resp = self.client.pool.request("GET", "/metrics", headers=self.client._headers(None), retries=False)
        seconds: Counter = Counter()
        for labels, value in scrape(resp.data.decode(), "apiserver_request_duration_seconds_sum").items():
            d = dict(labels)
            if d.get("verb") != "WATCH":
                seconds[(d.get("verb", ""), d.get("resource", ""), d.get("subresource", ""))] += value
        return seconds


def delta(a: tuple[Counter, float], b: tuple[Counter, float]) -> tuple[Counter, float]:
    requests = Counter({k: v - a[0].get(k, 0) for k, v in b[0].items() if v - a[0].get(k, 0) > 0})
    return requests, b[1] - a[1]


# Requests that are not the operator's: the simulated agents' status writes, watches (long-lived).
NOT_OPERATOR = {("PATCH", "hostreleases", "status")}


def operator_requests(requests: Counter) -> Counter:
    return Counter({k: v for k, v in requests.items() if k[0] != "WATCH" and k not in NOT_OPERATOR})


def describe_requests(requests: Counter, passes: float) -> str:
    """Requests of the operator (and the control plane's own housekeeping, a few per second)."""
    requests = operator_requests(requests)
    total = sum(requests.values())
    per = total / passes if passes else float("nan")
    top = sorted(((v, k) for k, v in requests.items()), reverse=True)[:6]
    parts = ", ".join(f"{verb} {res}{'/' + sub if sub else ''} {v:.0f}" for v, (verb, res, sub) in top)
    return f"{total:.0f} requests / {passes:.0f} passes = {per:.1f} per pass ({parts})"


def read_events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run(args: argparse.Namespace) -> dict:
    nodes, apps, hosts = args.nodes, args.apps, args.hosts
    groups = max(1, nodes // hosts)
    total_hrs = apps * hosts
    results: dict = {"size": f"{nodes} Nodes x {apps} apps x {hosts} hosts", "code": args.code or "this checkout"}
    with ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="fleet-", dir="/tmp"))
        stack.callback(shutil.rmtree, tmp, True)
        cp = control_plane_with_crds(stack, tmp / "cp")
        cp.kubectl("create", "namespace", NAMESPACE)
        client = Client(load_config(str(cp.kubeconfig_path)), pool_size=8)

        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda i: client.request("POST", "/api/v1/nodes", body={
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": f"node-{i:04d}", "labels": {GROUP_LABEL: f"g{i // hosts % groups}"}}}),
                range(nodes)))
            list(pool.map(lambda i: client.request("POST", app_path(NAMESPACE), body=app_release(
                f"app-{i:04d}", i % groups, "1.0.0")), range(apps)))
        print(f"# created {nodes} Nodes and {apps} AppReleases", file=sys.stderr)

        env = {**cp.env(), "PYTHONUNBUFFERED": "1"}
        if args.code:
            env["PYTHONPATH"] = str(export_tree(args.code, Path(tempfile.mkdtemp(dir=tmp))))
        events_path = tmp / "agents.jsonl"
        sim = subprocess.Popen(["setpriv", "--pdeathsig", "KILL", "--", sys.executable, __file__, "--simulate-agents",
                                "--kubeconfig", str(cp.kubeconfig_path), "--ready-delay", str(args.ready_delay),
                                "--events", str(events_path)],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=(tmp / "agents.log").open("ab"), env={**env, "PYTHONPATH": ""})
        stack.callback(stop_process, sim)
        metrics_port, live = free_port(), f"http://127.0.0.1:{free_port()}/healthz"
        meter = Meter(client, f"http://127.0.0.1:{metrics_port}/metrics")
        before_start = meter.snapshot()
        op_log = tmp / "operator.log"
        t0 = time.time()
        operator = subprocess.Popen(
            ["setpriv", "--pdeathsig", "KILL", "--", sys.executable, "-m", "apprelease.cli", "operator",
             "--kubeconfig", str(cp.kubeconfig_path), "--all-namespaces", "--liveness", live,
             "--metrics-port", str(metrics_port), "--metrics-address", "127.0.0.1"],
            stdin=subprocess.DEVNULL, stdout=op_log.open("ab"), stderr=subprocess.STDOUT, env=env)
        stack.callback(stop_process, operator)

        def count(kind: str) -> int:
            return len({e["name"] for e in read_events(events_path) if e["kind"] == kind})

        def check_alive() -> None:
            if operator.poll() is not None:
                raise RuntimeError(f"operator exited with {operator.returncode}; see {op_log}")

        seconds_start = meter.apiserver_seconds()
        cpu_start = {name: proc_stats(pid)["cpu_s"] for name, pid in {**cp.pids(), "simulated agents": sim.pid}.items()}
        wait(lambda: (check_alive(), count("spec") >= total_hrs)[1], args.timeout, f"{total_hrs} HostReleases created")
        results["all_created_s"] = max(e["t"] for e in read_events(events_path) if e["kind"] == "spec") - t0
        wait(lambda: (check_alive(), count("ready") >= total_hrs)[1], args.timeout, f"{total_hrs} HostReleases Ready")
        results["all_ready_s"] = time.time() - t0
        # ... and the operator has written every AppRelease's status (its last passes of the cold start)
        time.sleep(3)
        cold = delta(before_start, meter.snapshot())
        results["cold_requests"] = describe_requests(*cold)
        results["after_cold_start"] = proc_stats(operator.pid)
        spent = meter.apiserver_seconds()
        results["apiserver_seconds"] = Counter({k: v - seconds_start.get(k, 0.0) for k, v in spent.items()})
        # Where the cores went during the cold start (2 here): what the operator waits on.
        results["others_cpu_s"] = {name: proc_stats(pid)["cpu_s"] - cpu_start[name]
                                   for name, pid in {**cp.pids(), "simulated agents": sim.pid}.items()}

        # idle: a resync window with nothing to do
        idle_start = meter.snapshot()
        time.sleep(args.idle_window)
        idle = delta(idle_start, meter.snapshot())
        results["idle_requests"] = describe_requests(*idle)
        results["idle_requests_per_s"] = sum(operator_requests(idle[0]).values()) / args.idle_window

        # one app's new version across its hosts, maxUnavailable 25%
        name = "app-0000"
        first = len(read_events(events_path))
        t_change = time.time()
        client.request("PATCH", app_path(NAMESPACE, name), body={"spec": {
            "version": "2.0.0", "source": {"requirements": ["webxample==2.0.0"]}}},
            content_type="application/merge-patch+json")

        def rolled() -> list[dict] | None:
            mine = [e for e in read_events(events_path)[first:] if e["name"].startswith(name + "-")]
            return mine if len([e for e in mine if e["kind"] == "ready"]) >= hosts else None

        mine = wait(rolled, 120, f"{name} rolled to 2.0.0 on {hosts} hosts", interval=0.1)
        results["rollout_s"] = max(e["t"] for e in mine if e["kind"] == "ready") - t_change
        specs = sorted(e["t"] for e in mine if e["kind"] == "spec")
        readies = sorted(e["t"] for e in mine if e["kind"] == "ready")
        results["first_spec_lag_s"] = specs[0] - t_change
        lags = [s - r for s, r in zip(specs[1:], readies[:-1])]
        results["batch_lag_max_s"] = max(lags) if lags else 0.0
        results["end"] = proc_stats(operator.pid)
        stop_process(operator)
        results["floor_s"] = floor(client, cp, total_hrs, events_path, args.timeout)
    return results


def floor(client: Client, cp, count: int, events_path: Path, timeout: float) -> float:
    """The machine's floor for the cold start: seconds for 8 threads of a plain client to create
    `count` HostReleases (copies of one the operator made, in a namespace of their own) and for
    the simulated agents to answer them, with no operator at work. What no operator can beat
    here: its own cold start also makes every request of a pass and posts Events."""
    cp.kubectl("create", "namespace", "floor")
    template = client.request("GET", HR_PATH, query={"limit": 1})["items"][0]
    meta = template["metadata"]

    def body(i: int) -> dict:
        return {"apiVersion": template["apiVersion"], "kind": template["kind"], "spec": template["spec"],
                "metadata": {"name": f"floor-{i:05d}", "namespace": "floor", "labels": meta.get("labels") or {}}}

    t0 = time.time()
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda i: client.request("POST", f"/apis/{GROUP}/{VERSION}/namespaces/floor/hostreleases",
                                                body=body(i)), range(count)))

    def answered() -> bool:
        return len({e["name"] for e in read_events(events_path) if e["kind"] == "ready"
                    and e["name"].startswith("floor-")}) >= count

    wait(answered, timeout, f"{count} floor HostReleases Ready")
    return time.time() - t0


def print_results(r: dict, args: argparse.Namespace) -> None:
    print(f"\nfleet: {r['size']}, operator code: {r['code']}, simulated agents answer after {args.ready_delay:g} s")
    print(f"  every HostRelease created      {r['all_created_s']:8.1f} s from the operator's start (target <= 60 s at 500x2,000)")
    print(f"  every HostRelease Ready        {r['all_ready_s']:8.1f} s")
    print(f"  cold start                     {r['cold_requests']}")
    print(f"  idle ({args.idle_window:g} s)                  {r['idle_requests']}; {r['idle_requests_per_s']:.1f} requests/s")
    print(f"  one app, new version           {r['rollout_s']:8.2f} s over {args.hosts} hosts in batches of 25%; "
          f"first spec update {r['first_spec_lag_s']:.2f} s after the edit; max lag Ready -> next batch "
          f"{r['batch_lag_max_s']:.2f} s (target <= 2 s)")
    c, e = r["after_cold_start"], r["end"]
    print(f"  operator RSS                   {c['rss_mb']:8.0f} MB after cold start, {e['rss_mb']:.0f} MB at the end, "
          f"peak {e['peak_rss_mb']:.0f} MB (target <= 200 MB); CPU {c['cpu_s']:.1f} s cold start, {e['cpu_s']:.1f} s in all")
    others = ", ".join(f"{name} {cpu:.1f} s" for name, cpu in r["others_cpu_s"].items())
    print(f"  CPU of the others, cold start  {others} (the machine has {os.cpu_count()} cores)")
    top = ", ".join(f"{verb} {res}{'/' + sub if sub else ''} {v:.0f} s"
                    for (verb, res, sub), v in r["apiserver_seconds"].most_common(6))
    print(f"  floor: {args.apps * args.hosts} HostReleases created by 8 threads of a plain client, and Ready "
          f"{r['floor_s']:8.1f} s (no operator; the cold start above is {r['all_ready_s'] / r['floor_s']:.2f}x it)")
    print(f"  apiserver time, cold start     {sum(r['apiserver_seconds'].values()):.0f} s of requests ({top})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--apps", type=int, default=500)
    parser.add_argument("--hosts", type=int, default=4, help="hosts per app (Nodes per label group)")
    parser.add_argument("--ready-delay", type=float, default=0.5, help="seconds a simulated agent takes to be Ready")
    parser.add_argument("--idle-window", type=float, default=35.0, help="seconds of idle measured (> one resync)")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--code", help="git ref whose operator/ to run (default: this checkout)")
    parser.add_argument("--simulate-agents", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--kubeconfig", help=argparse.SUPPRESS)
    parser.add_argument("--events", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.simulate_agents:
        return simulate_agents(args.kubeconfig, args.ready_delay, args.events)
    print_results(run(args), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
