"""The operator's worker side (controller/handlers.py): which watch events wake which AppRelease,
and what one pass schedules next.

Covers: an AppRelease seen for the first time is woken, our own status writes do not wake it,
a new generation and a deletion do, DELETED forgets it; a HostRelease wakes its known owner
only; a Node whose labels changed wakes every known AppRelease, Kopf's first listing none; a
pass is followed by a resync (sooner at a progress deadline); a failed pass is retried with
growing backoff and events do not wake the key before it; a finalized AppRelease is dropped;
the finalizer is added on the first pass and removed once the HostReleases are gone.
"""

from __future__ import annotations

import copy

import pytest

from apprelease.controller import handlers
from apprelease.controller.cache import FleetCache
from apprelease.controller.handlers import (
    ERROR_BACKOFF, OperatorContext, handle_event_app_release, handle_event_host_release, handle_event_node, run_pass,
)
from apprelease.controller.reconcile import OPERATOR_FINALIZER, Outcome, reconcile_app_release
from apprelease.kubeclient import ApiError
from apprelease.workqueue import WorkQueue
from support.manifests import EXAMPLE

pytestmark = pytest.mark.unit

HOST = {"apprelease.dev/host": "true"}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def app(name: str = "web", generation: int = 1, observed: int | None = None, **meta) -> dict:
    return {"metadata": {"name": name, "namespace": "ns", "generation": generation, **meta},
            "spec": copy.deepcopy(EXAMPLE["spec"]),
            **({"status": {"observedGeneration": observed}} if observed is not None else {})}


@pytest.fixture
def ctx(monkeypatch) -> OperatorContext:
    clock = Clock()
    monkeypatch.setattr(handlers.time, "monotonic", clock)
    context = OperatorContext(config=None, api=None, queue=WorkQueue(clock=clock))  # type: ignore[arg-type]
    context.clock = clock  # type: ignore[attr-defined]
    context.cache.replace({"n1": HOST}, [])
    return context


def drain(queue: WorkQueue) -> list:
    keys = []
    while (key := queue.get(0)) is not None:
        keys.append(key)
        queue.done(key)
    return keys


def test_app_release_events_wake_only_what_needs_a_pass(ctx):
    handle_event_app_release(ctx, app(), "ns", "web", None)  # first seen (Kopf's listing)
    assert drain(ctx.queue) == [("ns", "web")]
    handle_event_app_release(ctx, app(observed=1), "ns", "web", "MODIFIED")  # our own status write
    assert drain(ctx.queue) == []
    handle_event_app_release(ctx, app(generation=2, observed=1), "ns", "web", "MODIFIED")
    assert drain(ctx.queue) == [("ns", "web")]
    handle_event_app_release(ctx, app(generation=2, observed=2, deletionTimestamp="now"), "ns", "web", "MODIFIED")
    assert drain(ctx.queue) == [("ns", "web")]
    ctx.queue.resync_after(("ns", "web"), 30)
    handle_event_app_release(ctx, app(generation=2, observed=2), "ns", "web", "DELETED")
    ctx.clock.now += 30
    assert drain(ctx.queue) == [] and ("ns", "web") not in ctx.known


def test_host_release_and_node_events(ctx):
    handle_event_app_release(ctx, app("a"), "ns", "a", None)
    handle_event_app_release(ctx, app("b"), "ns", "b", None)
    drain(ctx.queue)
    handle_event_host_release(ctx, {"metadata": {"labels": {"apprelease.dev/app": "a"}}}, "ns")
    handle_event_host_release(ctx, {"metadata": {"labels": {"apprelease.dev/app": "stranger"}}}, "ns")
    assert drain(ctx.queue) == [("ns", "a")]
    handle_event_node(ctx, None, "n1", HOST)  # Kopf's first listing: what the cache has
    assert drain(ctx.queue) == []
    handle_event_node(ctx, "MODIFIED", "n1", {})
    assert sorted(drain(ctx.queue)) == [("ns", "a"), ("ns", "b")]


def test_a_pass_is_followed_by_a_resync_or_a_retry(ctx, monkeypatch):
    outcomes: list = [Outcome(), Outcome(requeue_after=4.0), ApiError(503, "Service Unavailable", ""),
                      ApiError(503, "Service Unavailable", ""), Outcome(gone=True)]

    def fake_reconcile(*_args, **_kw):
        result = outcomes.pop(0)
        if isinstance(result, Exception):
            raise result
        return result

    monkeypatch.setattr(handlers, "reconcile_app_release", fake_reconcile)
    key = ("ns", "web")
    handle_event_app_release(ctx, app(), "ns", "web", None)

    def next_pass_in(seconds: float, *, woken: bool = False) -> None:
        """Passes `key`, then checks that the next pass is due after `seconds`, not before."""
        assert ctx.queue.get(0) == key
        run_pass(ctx, key, post=lambda *_: None)  # type: ignore[arg-type]
        ctx.queue.done(key)
        if woken:  # a HostRelease event: it does not cut a retry's backoff short
            handle_event_host_release(ctx, {"metadata": {"labels": {"apprelease.dev/app": "web"}}}, "ns")
        ctx.clock.now += seconds - 0.01
        assert ctx.queue.get(0) is None
        ctx.clock.now += 0.01

    next_pass_in(handlers.RESYNC_SECONDS)
    next_pass_in(4.5)  # the progress deadline, and a little after
    next_pass_in(ERROR_BACKOFF[0], woken=True)
    next_pass_in(ERROR_BACKOFF[1], woken=True)
    assert ctx.queue.get(0) == key
    run_pass(ctx, key, post=lambda *_: None)  # type: ignore[arg-type]  # finalized: gone
    ctx.queue.done(key)
    ctx.clock.now += 3600
    assert ctx.queue.get(0) is None and not ctx.failures


class FinalizingApi:
    def __init__(self, obj: dict, hosts: list[str]) -> None:
        self.obj, self.hosts, self.calls = obj, {h: {"finalizers": ["agent"]} for h in hosts}, []

    def get_app_release(self, namespace, name):
        return copy.deepcopy(self.obj)

    def set_finalizers(self, plural, namespace, name, seen, wanted, resource_version):
        self.calls.append(("finalizers", plural, list(seen), list(wanted)))
        self.obj["metadata"]["finalizers"] = list(wanted)

    def remove_finalizer(self, namespace, name, finalizers, finalizer, plural="hostreleases"):
        self.set_finalizers(plural, namespace, name, finalizers, [f for f in finalizers if f != finalizer], "")

    def list_host_releases(self, namespace, app):
        return [{"metadata": {"name": h, "labels": {"apprelease.dev/node": h}, "generation": 1,
                              **({"deletionTimestamp": "now"} if v.get("deleting") else {}),
                              "finalizers": v["finalizers"]}, "spec": {"node": h}}
                for h, v in self.hosts.items()]

    def delete_host_release(self, namespace, name):
        self.calls.append(("delete", name))
        self.hosts[name]["deleting"] = True

    def existing_nodes(self, names):
        return frozenset(names)


def test_a_deleted_app_release_waits_for_its_hosts_then_loses_the_finalizer():
    obj = app(finalizers=["someone-else", OPERATOR_FINALIZER], deletionTimestamp="now", resourceVersion="7")
    api = FinalizingApi(obj, ["web-n1"])
    outcome = reconcile_app_release(api, "ns", "web", None, lambda *_: None, cache=FleetCache())
    assert api.calls == [("delete", "web-n1")] and not outcome.gone and outcome.requeue_after
    api.hosts.clear()  # the agent released its host
    outcome = reconcile_app_release(api, "ns", "web", None, lambda *_: None, cache=FleetCache())
    assert outcome.gone and api.calls[-1] == ("finalizers", "appreleases", ["someone-else", OPERATOR_FINALIZER],
                                              ["someone-else"])
