"""`kubectl apprelease` against a real apiserver, with the operator and two agents as processes.

The plugin runs as kubectl runs it: the built kubectl with the venv's bin on PATH finds
`kubectl-apprelease` there. The tests run in file order on one app in one namespace:

- `status -w` exits 0 when v1 completes; `status` shows both hosts Ready, `-o json` the same;
- `diff -f` on no change (exit 0, nothing), a proxy-only change (nginx only), an env change
  (new workers, venv reused) and a build change (build venv), each time compared with what
  the agents then do: their logged plan, the HostRelease's lastBuild, the package index;
- a failing v3: `status -w` exits 1 naming the host; `undo` goes back to the last revision
  that completed, with no build; `history` after v1 -> env -> v2 -> failed v3 -> undo;
- `undo` of an AppRelease Argo CD tracks is refused with the git advice, `--force` applies it;
- `pause` (and `status -w` exits 1 on a paused rollout), `restart` refused while paused,
  `resume`, `restart`: new workers of the same build on every host, nothing built;
- `status -w` exits 1 once the progress deadline passes (an agent stopped mid-rollout);
- `logs`: a ServiceAccount bound to `apprelease-view` in the namespace reads both hosts'
  logs; one bound in another namespace is refused by the agent (403, its SubjectAccessReview),
  a bad token gets 401, a wrong certificate digest is never sent a token; `-f` streams a new
  access-log line written after it started; `--process release` shows the release command's
  output from each host, `--process ticker-0` a process type's, and status shows `ticker 1/1`.
Times are printed with each step.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from apprelease.plugin import logclient
from support.cluster import wait_for
from support.hosts import SERVER_NAME, app_release
from support.identities import service_account_token, write_kubeconfig
from support.install import MANIFESTS
from support.nginx import free_port, http_get
from support.twohosts import HostsView, two_hosts

pytestmark = pytest.mark.e2e

SUFFIX = uuid.uuid4().hex[:6]
ADDRESSES = {f"plug-a-{SUFFIX}": "127.0.0.2", f"plug-b-{SUFFIX}": "127.0.0.3"}
HOST_A, HOST_B = sorted(ADDRESSES)
SELECTOR = {"e2e.apprelease.dev/plugin": SUFFIX}
APP = "webxample"
VENV_BIN = Path(sys.executable).parent


class Story(HostsView):
    def __init__(self, cp, index, namespace, port, agents, operator, tmp: Path):
        super().__init__(cp, namespace, port, ADDRESSES, APP)
        self.index, self.agents, self.operator, self.tmp = index, agents, operator, tmp

    def manifest(self, version: str, *, env: str = "hi", body: str = "1m", deadline: int = 600, **options) -> dict:
        doc = app_release(self.index.url, version, port=self.port, name=APP, namespace=self.namespace,
                          **options).wire()
        doc["spec"]["hosts"] = {"nodeSelector": SELECTOR}
        doc["spec"]["server"]["extraArgs"] = ["--access-logfile=-"]  # a log line per request (logs -f)
        doc["spec"]["env"][0]["value"] = env
        doc["spec"]["proxy"]["clientMaxBodySize"] = body
        doc["spec"]["strategy"] = {"progressDeadlineSeconds": deadline}
        return doc

    def write(self, doc: dict) -> Path:
        path = self.tmp / f"{uuid.uuid4().hex[:8]}.yaml"
        path.write_text(yaml.safe_dump(doc))
        return path

    def apply(self, doc: dict) -> None:
        self.cp.kubectl("apply", "-f", str(self.write(doc)))

    def plugin(self, *args: str, kubeconfig: Path | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
        """`kubectl apprelease ...` through the real kubectl, which finds the plugin on PATH."""
        env = self.cp.env()
        env["PATH"] = f"{self.cp.bin_dir}{os.pathsep}{VENV_BIN}{os.pathsep}{env['PATH']}"
        if kubeconfig:
            env["KUBECONFIG"] = str(kubeconfig)
        argv = [str(self.cp.bin_dir / "kubectl"), "apprelease", *args, "-n", self.namespace]
        return subprocess.run(argv, text=True, capture_output=True, env=env, timeout=timeout)

    def status_w(self, timeout: float = 240) -> subprocess.CompletedProcess:
        started = time.monotonic()
        out = self.plugin("status", APP, "-w", "--timeout", str(timeout), timeout=timeout + 30)
        print(f"\n$ kubectl apprelease status {APP} -w   ({time.monotonic() - started:.1f}s, exit {out.returncode})\n"
              f"{out.stdout}{out.stderr}")
        return out

    def agent_plans(self, since: dict[str, int]) -> dict[str, list[str]]:
        """Each agent's logged plans for this app's HostRelease since the offsets in `since`."""
        return {node: [line.split(": ", 2)[-1] for line in agent.log_matches(rf"{self.namespace}/{APP}-{node}: .* -> ",
                                                                             since[node])]
                for node, agent in self.agents.items()}

    def log_offsets(self) -> dict[str, int]:
        return {node: len(agent.log_text()) for node, agent in self.agents.items()}


@pytest.fixture(scope="module")
def story(cluster, package_index, tmp_path_factory):
    logs = tmp_path_factory.mktemp("plugin-logs")
    with two_hosts(cluster, namespace=f"plugin-{SUFFIX}", addresses=ADDRESSES, selector=SELECTOR, logs=logs,
                   roots=Path(f"/tmp/ar-plug-{SUFFIX}"), agent_args=["--logs-port", "0", "--logs-address", "127.0.0.1"]) as world:
        yield Story(cluster, package_index, world.namespace, free_port(), world.agents, world.operator, logs)


def test_status_w_exits_0_when_the_rollout_completes(story):
    story.apply(story.manifest("1.0.0"))
    out = story.status_w()
    assert out.returncode == 0, out.stderr
    assert "rollout complete" in out.stdout
    table = story.plugin("status", APP)
    print(f"$ kubectl apprelease status {APP}\n{table.stdout}")
    rows = {line.split()[0]: line.split() for line in table.stdout.splitlines() if line.startswith("plug-")}
    assert {n: r[1] for n, r in rows.items()} == {HOST_A: "Ready", HOST_B: "Ready"}
    doc = json.loads(story.plugin("status", APP, "-o", "json").stdout)
    assert doc["ready"] == "2/2" and {h["servingVersion"] for h in doc["hosts"]} == {"1.0.0"}
    assert {c["type"] for c in doc["conditions"]} == {"Available", "Progressing", "Degraded"}


def _diff(story, doc: dict) -> tuple[int, dict[str, str], str]:
    out = story.plugin("diff", "-f", str(story.write(doc)))
    print(f"$ kubectl apprelease diff -f app.yaml   (exit {out.returncode})\n{out.stdout}{out.stderr}")
    report = json.loads(story.plugin("diff", "-f", str(story.write(doc)), "-o", "json").stdout)
    return out.returncode, {h["node"]: h["action"] for h in report[0]["hosts"]}, out.stdout


def _apply_and_watch(story, doc: dict) -> dict[str, list[str]]:
    since = story.log_offsets()
    story.index.index.clear_requests()
    story.apply(doc)
    assert story.status_w().returncode == 0
    return story.agent_plans(since)


def test_diff_matches_what_the_agents_then_do(story):
    code, actions, _ = _diff(story, story.manifest("1.0.0"))
    assert (code, set(actions.values())) == (0, {"nothing"})

    proxy_only = story.manifest("1.0.0", body="5m")
    code, actions, _ = _diff(story, proxy_only)
    assert (code, set(actions.values())) == (1, {"nginx only"})
    plans = _apply_and_watch(story, proxy_only)
    for node, lines in plans.items():  # nginx re-rendered, no worker started
        assert any("write-site" in line for line in lines) and not any("start-watcher" in line for line in lines), plans

    env_change = story.manifest("1.0.0", body="5m", env="hello")
    code, actions, _ = _diff(story, env_change)
    assert (code, set(actions.values())) == (1, {"new workers"})
    plans = _apply_and_watch(story, env_change)
    assert story.index.index.requests == []  # the venv was reused: nothing downloaded
    for node, lines in plans.items():
        assert any("start-watcher" in line for line in lines), plans

    build = story.manifest("2.0.0", body="5m", env="hello")
    code, actions, _ = _diff(story, build)
    assert (code, set(actions.values())) == (1, {"build venv"})
    _apply_and_watch(story, build)
    for node, hr in story.host_releases().items():
        assert hr["status"]["lastBuild"]["reused"] is False, (node, hr["status"]["lastBuild"])
        assert story.served(node) == "2.0.0"


def test_failed_v3_then_undo_then_history(story):
    story.apply(story.manifest("3.0.0", body="5m", env="hello", fail_health=True, health_timeout=5))
    out = story.status_w()
    assert out.returncode == 1 and "HostFailed" in out.stderr and HOST_A in out.stderr, out

    story.index.index.clear_requests()
    undo = story.plugin("undo", APP)
    print(f"$ kubectl apprelease undo {APP}\n{undo.stdout}{undo.stderr}")
    assert undo.returncode == 0 and "rolled back to 2.0.0" in undo.stdout, undo.stderr
    assert story.status_w().returncode == 0
    assert story.index.index.requests == []
    assert all(story.served(node) == "2.0.0" for node in ADDRESSES)

    history = story.plugin("history", APP)
    print(f"$ kubectl apprelease history {APP}\n{history.stdout}")
    rows = json.loads(story.plugin("history", APP, "-o", "json").stdout)
    assert [r["version"] for r in rows] == ["1.0.0", "1.0.0", "2.0.0"]  # v1, its env change, v2; v3 never completed
    assert rows[-1]["current"] and rows[-1]["servingOn"] == sorted(ADDRESSES) and rows[-1]["lastServed"] is None
    assert all(r["retainedOn"] == sorted(ADDRESSES) for r in rows)  # every venv still on both disks
    assert rows[0]["lastServed"] is not None and rows[0]["firstServed"] < rows[1]["firstServed"]


def test_undo_refuses_an_app_argocd_manages_unless_forced(story):
    before = story.app_release()["spec"]
    story.cp.kubectl("annotate", "ar", APP, "-n", story.namespace,
                     f"argocd.argoproj.io/tracking-id=shop:apprelease.dev/AppRelease:{story.namespace}/{APP}")
    refused = story.plugin("undo", APP)
    print(f"$ kubectl apprelease undo {APP}   (exit {refused.returncode})\n{refused.stderr}")
    assert refused.returncode == 1 and "managed by Argo CD (Application shop" in refused.stderr
    assert "git revert" in refused.stderr
    assert story.app_release()["spec"] == before

    forced = story.plugin("undo", APP, "--to-revision", "1.0.0", "--force")
    assert forced.returncode == 1 and "several revisions" in forced.stderr  # v1 and its env change
    revision = json.loads(story.plugin("history", APP, "-o", "json").stdout)[1]["revision"]
    forced = story.plugin("undo", APP, "--to-revision", revision, "--force")
    assert forced.returncode == 0, forced.stderr
    assert story.status_w().returncode == 0
    assert all(story.served(node) == "1.0.0" for node in ADDRESSES)
    story.cp.kubectl("annotate", "ar", APP, "-n", story.namespace, "argocd.argoproj.io/tracking-id-")


def _pid(story, node: str) -> int:
    return http_get(story.port, "/version", SERVER_NAME, address=ADDRESSES[node]).json()["pid"]


def test_pause_resume_and_restart(story):
    def verb(*args: str) -> subprocess.CompletedProcess:
        out = story.plugin(*args)
        print(f"$ kubectl apprelease {' '.join(args)}   (exit {out.returncode})\n{out.stdout}{out.stderr}", end="")
        return out

    assert verb("pause", APP).stdout.strip() == f"apprelease.apprelease.dev/{APP} paused"
    assert story.app_release()["spec"]["paused"] is True
    again = verb("pause", APP)
    assert again.returncode == 1 and "already paused" in again.stderr
    refused = verb("restart", APP)
    assert refused.returncode == 1 and "paused" in refused.stderr
    wait_for(lambda: story.conditions().get("Progressing", {}).get("reason") == "RolloutComplete", 30,
             "a paused, complete rollout stays complete")
    while_paused = story.manifest("1.0.0", body="5m", env="paused")
    while_paused["spec"]["paused"] = True  # as the plugin left it (apply would otherwise set false)
    story.apply(while_paused)
    paused = story.status_w(timeout=60)
    assert paused.returncode == 1 and "paused" in paused.stderr
    assert verb("resume", APP).stdout.strip() == f"apprelease.apprelease.dev/{APP} resumed"
    assert story.status_w().returncode == 0

    pids = {node: _pid(story, node) for node in ADDRESSES}
    revisions = {n: hr["status"]["servingRevision"] for n, hr in story.host_releases().items()}
    story.index.index.clear_requests()
    restarted = verb("restart", APP)
    assert restarted.stdout.strip() == f"apprelease.apprelease.dev/{APP} restarted"
    assert story.status_w().returncode == 0
    after = story.host_releases()
    for node in ADDRESSES:
        assert after[node]["status"]["servingRevision"] != revisions[node]  # new workers ...
        assert after[node]["status"]["servingBuildId"] == after[node]["spec"]["buildId"]
        assert _pid(story, node) != pids[node]
    assert story.index.index.requests == []  # ... of the same build


def test_status_w_exits_1_when_the_progress_deadline_passes(story):
    story.agents[HOST_A].stop()
    try:
        story.apply(story.manifest("2.0.0", body="5m", env="deadline", deadline=10))
        out = story.status_w(timeout=120)
        assert out.returncode == 1 and "ProgressDeadlineExceeded" in out.stderr, out
    finally:
        story.agents[HOST_A].start()
    # Like a Deployment's, the condition stays ProgressDeadlineExceeded (and -w exits 1) until
    # a host settles again: the agent is back, so the rollout goes on and completes.
    wait_for(lambda: story.conditions().get("Progressing", {}).get("reason") == "RolloutComplete", 180,
             lambda: json.dumps(story.app_release().get("status"), indent=1))
    assert story.status_w().returncode == 0


# ----- logs


def _identity(story, namespace: str, name: str, bind_in: str) -> tuple[str, Path]:
    story.cp.kubectl("create", "serviceaccount", name, "-n", namespace)
    story.cp.kubectl("create", "rolebinding", f"{name}-view", "-n", bind_in, "--clusterrole", "apprelease-view",
                     f"--serviceaccount={namespace}:{name}")
    token = service_account_token(story.cp, namespace, name)
    return token, write_kubeconfig(story.cp, story.tmp / f"{name}.kubeconfig", name, token)


@pytest.fixture(scope="module")
def readers(story):
    story.cp.kubectl("apply", "-f", str(MANIFESTS / "user-rbac.yaml"))
    other = f"plugin-other-{SUFFIX}"
    story.cp.kubectl("create", "namespace", other)
    try:
        yield {"reader": _identity(story, story.namespace, "reader", story.namespace),
               "outsider": _identity(story, other, "outsider", other)}
    finally:
        story.cp.kubectl("delete", "namespace", other, "--wait=false", check=False)


def _targets(story) -> dict[str, logclient.Target]:
    out = {}
    for node, hr in story.host_releases().items():
        endpoint = wait_for(lambda n=node: story.host_releases()[n]["status"].get("logs"), 30,
                            f"{node} publishes no log endpoint")
        out[node] = logclient.Target(node=node, url=endpoint["url"], cert_sha256=endpoint["certSha256"])
    return out


def test_logs_for_a_user_allowed_in_the_namespace(story, readers):
    http_get(story.port, "/version", SERVER_NAME, address=ADDRESSES[HOST_A])
    _, kubeconfig = readers["reader"]
    out = story.plugin("logs", APP, "--tail", "3", kubeconfig=kubeconfig, timeout=60)
    print(f"$ kubectl apprelease logs {APP} --tail 3\n{out.stdout}{out.stderr}")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert {line.split("]")[0] + "]" for line in lines} == {f"[{HOST_A}]", f"[{HOST_B}]"}
    assert any("GET /version" in line for line in lines if line.startswith(f"[{HOST_A}]")), out.stdout


def test_logs_refused_in_another_namespace_and_for_bad_tokens(story, readers):
    token, kubeconfig = readers["outsider"]
    via_plugin = story.plugin("logs", APP, kubeconfig=kubeconfig, timeout=60)
    assert via_plugin.returncode == 2 and "403" in via_plugin.stderr  # the apiserver: may not read the app
    targets = _targets(story)
    query = logclient.Query(namespace=story.namespace, app=APP, tail=1)
    with pytest.raises(logclient.LogError, match=r'HTTP 403: .*outsider cannot get resource "hostreleases/log"'):
        list(logclient.read_lines(targets[HOST_A], token, query))  # the agent's own SubjectAccessReview
    with pytest.raises(logclient.LogError, match="HTTP 401"):
        list(logclient.read_lines(targets[HOST_A], "not-a-token", query))
    forged = logclient.Target(HOST_A, targets[HOST_A].url, hashlib.sha256(b"another").hexdigest())
    with pytest.raises(logclient.LogError, match="not sending a token"):
        list(logclient.read_lines(forged, token, query))
    assert story.agents[HOST_A].log_matches(r"logs: refused system:serviceaccount:plugin-other-.*:outsider")


def test_logs_follow_streams_a_new_line(story, readers):
    _, kubeconfig = readers["reader"]
    env = story.cp.env()
    env["PATH"] = f"{story.cp.bin_dir}{os.pathsep}{VENV_BIN}{os.pathsep}{env['PATH']}"
    env["KUBECONFIG"] = str(kubeconfig)
    argv = [str(story.cp.bin_dir / "kubectl"), "apprelease", "logs", APP, "-n", story.namespace,
            "--host", HOST_B, "-f", "--tail", "0"]
    agent = story.agents[HOST_B]
    since = len(agent.log_text())
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        # Until the agent follows for it (the plugin's own start takes a second or two).
        wait_for(lambda: agent.log_matches(r"logs: .*:reader reads .*following", since), 30,
                 lambda: f"the agent is not following for the plugin: {proc.poll()} {agent.log_tail(5)}")
        marker = f"/version?marker={uuid.uuid4().hex[:8]}"
        started = time.monotonic()
        http_get(story.port, marker, SERVER_NAME, address=ADDRESSES[HOST_B])
        readable, _, _ = select.select([proc.stdout], [], [], 15)
        assert readable, "no line streamed within 15s"
        line = proc.stdout.readline()
        print(f"$ kubectl apprelease logs {APP} --host {HOST_B} -f --tail 0\n{line}"
              f"(streamed {time.monotonic() - started:.2f}s after the request)")
        assert marker in line
    finally:
        proc.terminate()
        proc.wait(10)


def test_logs_of_the_release_command_and_of_a_process_type(story, readers):
    doc = story.manifest("2.0.0", env="with-processes")
    doc["spec"]["release"] = {"command": ["python", "-m", "timeit", "-n", "1", "-r", "1", "pass"], "runOn": "everyHost"}
    # Any long-running program of the venv will do as a worker; unbuffered, so its line is written at once.
    doc["spec"]["processes"] = {"ticker": {"command": ["python", "-m", "http.server", "--bind", "127.0.0.1", "0"]}}
    doc["spec"]["env"].append({"name": "PYTHONUNBUFFERED", "value": "1"})
    story.apply(doc)
    wait_for(lambda: [h.get("processes") for h in (story.app_release().get("status") or {}).get("hosts", [])]
             == ["ticker 1/1", "ticker 1/1"], 240,
             lambda: json.dumps((story.app_release().get("status") or {}).get("hosts"), indent=1))
    _, kubeconfig = readers["reader"]
    release = story.plugin("logs", APP, "--process", "release", kubeconfig=kubeconfig, timeout=60)
    print(f"$ kubectl apprelease logs {APP} --process release\n{release.stdout}{release.stderr}")
    assert release.returncode == 0, release.stderr
    assert {line.split("]")[0] + "]" for line in release.stdout.splitlines() if "loop" in line} == {
        f"[{HOST_A}]", f"[{HOST_B}]"}, release.stdout  # timeit's "1 loop, best of 1: ..." from both hosts
    ticker = story.plugin("logs", APP, "--process", "ticker-0", "--host", HOST_A, kubeconfig=kubeconfig, timeout=60)
    print(f"$ kubectl apprelease logs {APP} --process ticker-0 --host {HOST_A}\n{ticker.stdout}{ticker.stderr}")
    assert ticker.returncode == 0 and "Serving HTTP on 127.0.0.1 port" in ticker.stdout, ticker
    bad = story.plugin("logs", APP, "--process", "ticker", kubeconfig=kubeconfig, timeout=60)
    assert bad.returncode != 0 and "process: 'ticker' is not 'release' or a process type replica" in bad.stderr, bad
