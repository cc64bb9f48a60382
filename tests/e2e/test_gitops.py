"""GitOps for real: Argo CD syncs an AppRelease from a git repository; rollback is `git revert`.

A real Argo CD (application-controller + repo-server + redis, the `argocd` fixture) watches a
local git repository that this module creates (`repoURL: file:///…`), through an Application
made from manifests/argocd/application.yaml (automated sync, selfHeal, CreateNamespace=true)
with the health check of manifests/argocd/health.lua. Two hosts (agents on 127.0.0.2 and
127.0.0.3) and the operator run as processes, as in test_hosts_rollout.py: the same story,
driven by commits instead of kubectl. After each commit the Application gets the
`argocd.argoproj.io/refresh=normal` annotation instead of waiting for Argo CD's polling.
The tests run in file order and share the repository and hosts.

Covers: commit v1 -> Argo CD syncs, both hosts serve v1, the AppRelease's health in Argo CD
goes Progressing -> Healthy and the Application is Healthy; commit v2 -> hosts move one at a
time while load on both sees only 200s; a failing v3 halts after the first host, Argo CD shows
the AppRelease Degraded with the operator's message, the other host keeps v2; `git revert` of
v3 then of v2 -> back to v2 then v1 with no venv build (the package index gets no request),
Healthy; a kubectl edit of the AppRelease is undone by self-heal and the hosts converge;
committing `paused: true` shows Suspended and moves no host. Commit->serving and
revert->serving times are printed.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from argocd import NAMESPACE as ARGOCD_NAMESPACE
from controlplane import ControlPlane
from support.agents import AgentProcess
from support.argocd import application, refresh, resource_health, sync_failure, synced_revision
from support.cluster import wait_for
from support.hosts import SERVER_NAME, app_release
from support.load import LoadProcess, assert_no_failed_requests, finish
from support.manifests import ROOT
from support.nginx import free_port
from support.operator import OperatorProcess
from support.twohosts import HostsView, two_hosts
from support.pypi import WebxampleIndex

pytestmark = pytest.mark.e2e

SUFFIX = uuid.uuid4().hex[:6]
ADDRESSES = {f"gitops-a-{SUFFIX}": "127.0.0.2", f"gitops-b-{SUFFIX}": "127.0.0.3"}
HOST_A, HOST_B = sorted(ADDRESSES)
SELECTOR = {"e2e.apprelease.dev/gitops": SUFFIX}
APP = "webxample"
NAMESPACE = f"gitops-{SUFFIX}"
APPLICATION = f"gitops-{SUFFIX}"
# Inside the git repository. JSON (which is YAML too): PyYAML leaves a value like `2156e6`
# (a possible SUFFIX) unquoted, which Argo CD's YAML parser then reads as a number.
MANIFEST = Path("apps") / f"{APP}.json"
# Git must not read the machine's or the user's config (identity, hooks, signing).
GIT_ENV = {"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_AUTHOR_NAME": "apprelease e2e",
           "GIT_AUTHOR_EMAIL": "e2e@apprelease.invalid", "GIT_COMMITTER_NAME": "apprelease e2e",
           "GIT_COMMITTER_EMAIL": "e2e@apprelease.invalid", "PATH": "/usr/local/bin:/usr/bin:/bin"}


def application_manifest(repo: Path) -> dict[str, Any]:
    """manifests/argocd/application.yaml, pointed at the test's repository and namespace.

    Its finalizer is dropped: teardown deletes the namespace itself and must not wait on
    Argo CD's cascading delete (which the finalizer exists for) when a test has failed.
    """
    app = yaml.safe_load((ROOT / "manifests" / "argocd" / "application.yaml").read_text())
    app["metadata"] = {"name": APPLICATION, "namespace": ARGOCD_NAMESPACE}
    app["spec"]["source"].update(repoURL=f"file://{repo}", targetRevision="main", path=str(MANIFEST.parent))
    app["spec"]["destination"]["namespace"] = NAMESPACE
    return app


class GitOps(HostsView):
    """What the tests share: the repository, the Application, the hosts and the operator."""

    def __init__(self, cp: ControlPlane, index: WebxampleIndex, repo: Path, port: int,
                 agents: dict[str, AgentProcess], operator: OperatorProcess) -> None:
        super().__init__(cp, NAMESPACE, port, ADDRESSES, APP)
        self.index, self.repo, self.agents, self.operator = index, repo, agents, operator
        self.commits: dict[str, str] = {}  # version label -> commit that introduced it

    # ----- git

    def git(self, *args: str) -> str:
        proc = subprocess.run(["git", "-C", str(self.repo), *args], env=GIT_ENV, capture_output=True, text=True)
        if proc.returncode != 0:
            raise AssertionError(f"git {' '.join(args)} failed: {proc.stderr}")
        return proc.stdout.strip()

    def commit(self, version: str, message: str, *, refresh: bool = True, **options: Any) -> str:
        """Write the AppRelease of `version` into the repository, commit, refresh; the commit's sha."""
        doc = app_release(self.index.url, version, port=self.port, name=APP, namespace=NAMESPACE, **options).wire()
        doc["spec"]["hosts"] = {"nodeSelector": SELECTOR}
        self.write_manifest(doc)
        self.git("add", str(MANIFEST))
        self.git("commit", "-q", "-m", message)
        return self.pushed() if refresh else self.git("rev-parse", "HEAD")

    def write_manifest(self, doc: dict[str, Any]) -> None:
        (self.repo / MANIFEST).write_text(json.dumps(doc, indent=2) + "\n")

    def read_manifest(self) -> dict[str, Any]:
        return json.loads((self.repo / MANIFEST).read_text())

    def revert(self, sha: str) -> str:
        self.git("revert", "--no-edit", sha)
        return self.pushed()

    def pushed(self) -> str:
        """HEAD's sha, after telling Argo CD to look (a push webhook would do that in real life)."""
        sha = self.git("rev-parse", "HEAD")
        refresh(self.cp, APPLICATION)
        return sha

    # ----- Argo CD

    def application(self) -> dict[str, Any]:
        return application(self.cp, APPLICATION)

    def health(self) -> dict[str, str]:
        """The AppRelease's health as Argo CD shows it (from health.lua)."""
        return resource_health(self.application(), "AppRelease", APP)

    def app_health(self) -> str:
        return ((self.application().get("status") or {}).get("health") or {}).get("status", "")

    def wait_synced(self, sha: str, timeout: float = 60) -> None:
        def synced() -> bool:
            app = self.application()
            assert not (failed := sync_failure(app)), f"sync failed: {failed}"  # no point waiting
            return synced_revision(app) == sha

        wait_for(synced, timeout,
                 lambda: f"Application not synced to {sha}: {json.dumps(self.application().get('status'))[:3000]}")

    def wait_health(self, status: str, timeout: float = 60) -> dict[str, str]:
        return wait_for(lambda: (h := self.health()).get("status") == status and self.app_health() == status and h,
                        timeout, lambda: f"AppRelease health {self.health()}, Application {self.app_health()}, "
                        f"not {status}; AppRelease status: {json.dumps(self.app_release().get('status'))}")

    # ----- the cluster and the hosts

    def wait_serving(self, version: str, timeout: float = 180) -> None:
        """Until both hosts serve `version` and the AppRelease says the rollout is complete;
        tracks how many hosts were in flight at once."""
        self.max_in_flight = 0

        def done() -> bool:
            hrs = self.host_releases()
            in_flight = [n for n, hr in hrs.items() if hr["spec"]["version"] == version
                         and (hr.get("status") or {}).get("servingVersion") != version]
            self.max_in_flight = max(self.max_in_flight, len(in_flight))
            app = self.app_release()
            status = app.get("status") or {}
            progressing = self.conditions().get("Progressing", {})
            return (bool(app) and status.get("observedGeneration") == app["metadata"]["generation"]
                    and len(hrs) == status.get("readyHosts") == 2
                    and progressing.get("reason") == "RolloutComplete"
                    and all(self.served(n) == version for n in ADDRESSES))

        wait_for(done, timeout, lambda: f"rollout to {version} incomplete: "
                 f"{json.dumps(self.app_release().get('status'), indent=1)}\n{self.operator.logs()[-3000:]}")

    def loads(self, expect: list[str]) -> list[LoadProcess]:
        return [LoadProcess(self.port, host_header=SERVER_NAME, expect=expect, address=a, max_seconds=300,
                            keepalive=2, fresh=1, fresh_post=1, slow=1) for a in ADDRESSES.values()]


def show_argo(gitops: GitOps, step: str) -> None:
    """Argo CD's own view after a step, printed for a person (and the README)."""
    app = gitops.application()
    status = app.get("status") or {}
    sync = status.get("sync") or {}
    health = resource_health(app, "AppRelease", APP)
    print(f"\n[{step}] Application: sync {sync.get('status')} @ {(sync.get('revision') or '')[:7]}, "
          f"health {(status.get('health') or {}).get('status')} | AppRelease {APP}: {health.get('status')}"
          + (f" ({health['message']})" if health.get("message") else ""))


@pytest.fixture(scope="module")
def gitops(cluster, argocd, package_index, tmp_path_factory):
    repo = tmp_path_factory.mktemp("gitops-repo")
    # The namespace does not exist yet (Argo CD creates it): Kopf watches it all the same.
    with two_hosts(cluster, namespace=NAMESPACE, addresses=ADDRESSES, selector=SELECTOR,
                   logs=tmp_path_factory.mktemp("gitops-logs"), roots=Path(f"/tmp/ar-gitops-{SUFFIX}"),
                   create_namespace=False, before_teardown=lambda: cluster.kubectl(
                       "delete", "application", APPLICATION, "-n", ARGOCD_NAMESPACE, "--ignore-not-found",
                       check=False)) as world:
        story = GitOps(cluster, package_index, repo, free_port(), world.agents, world.operator)
        story.git("init", "-q", "-b", "main")
        (repo / MANIFEST.parent).mkdir()
        yield story


def test_commit_v1_is_synced_and_served_progressing_then_healthy(gitops):
    started = time.monotonic()
    sha = gitops.commit("1.0.0", "webxample 1.0.0", refresh=False)  # no Application to refresh yet
    gitops.commits["1.0.0"] = sha
    gitops.cp.kubectl("apply", "-f", "-", input=json.dumps(application_manifest(gitops.repo)))
    seen: list[str] = []

    def healthy() -> bool:  # records each health Argo CD shows on the way
        app = gitops.application()
        assert not (failed := sync_failure(app)), f"sync failed: {failed}"  # no point waiting
        status = resource_health(app, "AppRelease", APP).get("status")
        if status and (not seen or seen[-1] != status):
            seen.append(status)
        return status == "Healthy"

    wait_for(healthy, 180, lambda: f"AppRelease health went {seen}; {gitops.app_release().get('status')}",
             interval=0.1)
    gitops.wait_serving("1.0.0")
    print(f"\ncommit v1 -> serving on 2 hosts (Application created, venv builds included): "
          f"{time.monotonic() - started:.1f}s; health seen: {seen}")
    assert synced_revision(gitops.application()) == sha
    # Missing: Argo CD has compared but not yet applied it.
    assert [s for s in seen if s != "Missing"] == ["Progressing", "Healthy"], seen
    gitops.wait_health("Healthy")
    show_argo(gitops, "commit v1")


def test_commit_v2_moves_hosts_one_at_a_time_with_no_failed_request(gitops):
    loads = gitops.loads(["1.0.0", "2.0.0"])
    started = time.monotonic()
    gitops.commits["2.0.0"] = sha = gitops.commit("2.0.0", "webxample 2.0.0")
    gitops.wait_synced(sha)
    gitops.wait_serving("2.0.0")
    print(f"\ncommit v2 -> serving on 2 hosts (venv builds included): {time.monotonic() - started:.1f}s")
    assert_no_failed_requests(finish(loads))
    assert gitops.max_in_flight <= 1
    gitops.wait_health("Healthy")
    show_argo(gitops, "commit v2")


def test_failing_v3_halts_after_the_first_host_and_argo_shows_degraded(gitops):
    loads = gitops.loads(["2.0.0"])
    gitops.commits["3.0.0"] = sha = gitops.commit("3.0.0", "webxample 3.0.0 (fails its health check)",
                                                  fail_health=True, health_timeout=5)
    gitops.wait_synced(sha)

    def halted() -> bool:
        degraded = gitops.conditions().get("Degraded", {})
        return degraded.get("status") == "True" and degraded.get("reason") == "HostFailed"

    wait_for(halted, 120, lambda: json.dumps(gitops.app_release().get("status"), indent=1))
    health = gitops.wait_health("Degraded")
    show_argo(gitops, "commit failing v3")
    tallies = finish(loads)
    degraded = gitops.conditions()["Degraded"]
    assert health["message"] == degraded["message"], (health, degraded)  # the operator's words
    assert HOST_A in degraded["message"], degraded
    hrs = gitops.host_releases()
    assert hrs[HOST_A]["status"]["phase"] == "Failed"
    assert hrs[HOST_B]["spec"]["version"] == "2.0.0"  # the rollout stopped before host-b
    assert gitops.served(HOST_A) == gitops.served(HOST_B) == "2.0.0"
    assert_no_failed_requests(tallies)


def test_git_revert_rolls_back_without_building(gitops):
    for reverted, back_to in (("3.0.0", "2.0.0"), ("2.0.0", "1.0.0")):
        gitops.index.index.clear_requests()
        started = time.monotonic()
        sha = gitops.revert(gitops.commits[reverted])
        gitops.wait_synced(sha)
        gitops.wait_serving(back_to)
        print(f"\ngit revert of {reverted} -> {back_to} serving on 2 hosts: {time.monotonic() - started:.1f}s")
        assert gitops.index.index.requests == []  # no resolver, no download: nothing was built
        gitops.wait_health("Healthy")
        show_argo(gitops, f"git revert {reverted}")
    assert gitops.app_release()["spec"]["version"] == "1.0.0"


def test_drift_is_self_healed_and_hosts_converge(gitops):
    git_spec = gitops.app_release()["spec"]
    drift = {"spec": {"version": "2.0.0", "source": {**git_spec["source"], "requirements": ["webxample==2.0.0"]}}}
    patched = gitops.cp.kubectl("patch", "ar", APP, "-n", NAMESPACE, "--type", "merge", "-p", json.dumps(drift))
    assert "no change" not in patched.stdout, patched.stdout
    started = time.monotonic()
    wait_for(lambda: gitops.app_release()["spec"] == git_spec, 60,
             lambda: f"self-heal did not restore git's spec: {gitops.app_release()['spec']}")
    print(f"\nkubectl edit -> git's version restored by self-heal: {time.monotonic() - started:.1f}s")
    gitops.wait_serving("1.0.0")
    gitops.wait_health("Healthy")
    show_argo(gitops, "kubectl edit, self-healed")


def test_paused_commit_is_suspended_and_moves_no_host(gitops):
    before = {node: hr["spec"]["version"] for node, hr in gitops.host_releases().items()}
    # support.hosts.app_release has no `paused` option: edit the committed manifest, as a person would.
    doc = gitops.read_manifest()
    doc["spec"].update(version="2.0.0", source={**doc["spec"]["source"], "requirements": ["webxample==2.0.0"]},
                       paused=True)
    gitops.write_manifest(doc)
    gitops.git("commit", "-q", "-am", "webxample 2.0.0, paused")
    sha = gitops.pushed()
    gitops.wait_synced(sha)
    health = gitops.wait_health("Suspended")
    show_argo(gitops, "commit paused")
    assert "paused" in health["message"], health
    time.sleep(3)  # give a wrong operator time to move a host
    assert {node: hr["spec"]["version"] for node, hr in gitops.host_releases().items()} == before
    assert all(gitops.served(node) == "1.0.0" for node in ADDRESSES)
