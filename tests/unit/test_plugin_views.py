"""`kubectl apprelease`'s pure decisions: `apprelease.plugin.views`.

Covers: the verdict of `status -w` for every state a rollout can be in (waiting for the
operator, in progress, complete, a failed host, an invalid spec, a passed progress deadline,
paused, a Degraded left over from an older generation); the per-host rows and tables;
`history` from the AppRelease's history and the hosts' switch history and retained venvs
(v1 -> v2 -> a failed v3 -> revert to v2); which revision `undo` goes back to (previous,
after a failed one, by version, by revision prefix, unknown, ambiguous, recorded without a
template) and the JSON patch it applies; Argo CD's tracking label and annotation and the
git advice; `diff` on each host for a build change, an env change, a proxy-only change, a
version-label-only change, no change, a venv still on disk, a new host, a deselected host,
a host failed on the spec, a paused rollout and the operator's batch order; restartedAt
enters the revision, not the buildId, and leaves revisions without it unchanged; the
operator records each completed revision's template in its history.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta

import pytest

from apprelease.api import identity, resolve
from apprelease.api.models import AppRelease, AppReleaseStatus, RetainedRelease
from apprelease.controller.plan import HostView
from apprelease.controller.status import Rollout, compute_status
from apprelease.plugin import views
from support.hosts import app_release

pytestmark = pytest.mark.unit

T0 = datetime(2026, 12, 1, 10, 0, 0, tzinfo=UTC)
INDEX = "http://127.0.0.1:1/simple/"
NS, APP = "shop", "webxample"


def ts(minutes: float) -> str:
    return (T0 + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")


def app_model(version: str = "1.0.0", **options) -> AppRelease:
    return app_release(INDEX, version, port=8080, name=APP, namespace=NS, **options)


def app_obj(model: AppRelease, *, gen: int = 2, status: dict | None = None, meta: dict | None = None) -> dict:
    doc = model.wire()
    doc["metadata"] = {**doc["metadata"], "generation": gen, "resourceVersion": "77", **(meta or {})}
    if status is not None:
        doc["status"] = status
    return doc


def cond(type_: str, status: str, reason: str, message: str = "", gen: int = 2) -> dict:
    return {"type": type_, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": ts(0), "observedGeneration": gen}


def hr_obj(node: str, model: AppRelease | None, *, gen: int = 3, observed: int | None = 3, phase: str = "Ready",
           serving: AppRelease | None = None, retained: tuple[AppRelease, ...] = (), history=(), message: str = "",
           deleting: bool = False) -> dict:
    spec = resolve.host_release_spec(NS, APP, node, model.spec).wire() if model else {}
    served = resolve.host_release_spec(NS, APP, node, serving.spec) if serving else None
    status = {
        "observedGeneration": observed, "phase": phase, "message": message,
        "retainedBuildIds": sorted({resolve.host_release_spec(NS, APP, node, m.spec).build_id for m in retained}),
        "history": [{"revision": resolve.host_release_spec(NS, APP, node, m.spec).revision, "version": m.spec.version,
                     "at": ts(at)} for m, at in history],
    }
    if served:
        status |= {"servingRevision": served.revision, "servingBuildId": served.build_id,
                   "servingVersion": served.version}
    meta = {"name": f"{APP}-{node}", "namespace": NS, "generation": gen,
            "labels": {"apprelease.dev/node": node, "apprelease.dev/app": APP}}
    if deleting:
        meta["deletionTimestamp"] = ts(0)
    return {"metadata": meta, "spec": spec, "status": status}


def revision_of(model: AppRelease) -> str:
    return identity.revision(identity.with_user(model.spec, NS, APP))


# ----- status -w


VERDICTS = [
    pytest.param({}, 2, (False, 0, "waiting for the operator to observe generation 2"), id="no-status-yet"),
    pytest.param({"observedGeneration": 1, "conditions": [cond("Progressing", "True", "RolloutComplete", gen=1)]}, 2,
                 (False, 0, "waiting for the operator"), id="older-generation-complete-is-not-done"),
    pytest.param({"observedGeneration": 2, "conditions": [cond("Progressing", "True", "RolloutInProgress", "1/2 updated")]},
                 2, (False, 0, "1/2 updated"), id="in-progress"),
    pytest.param({"observedGeneration": 2, "conditions": [cond("Progressing", "True", "RolloutComplete", "ready on 2/2"),
                                                          cond("Degraded", "False", "NoHostFailed")]},
                 2, (True, 0, "rollout complete: ready on 2/2"), id="complete"),
    pytest.param({"observedGeneration": 2, "conditions": [cond("Progressing", "True", "RolloutInProgress"),
                                                          cond("Degraded", "True", "HostFailed", "host a failed")]},
                 2, (True, 1, "rollout failed (HostFailed): host a failed"), id="host-failed"),
    pytest.param({"observedGeneration": 2, "conditions": [cond("Degraded", "True", "InvalidSpec", "spec is invalid")]},
                 2, (True, 1, "rollout failed (InvalidSpec)"), id="invalid-spec"),
    pytest.param({"observedGeneration": 2, "conditions": [cond("Progressing", "False", "ProgressDeadlineExceeded", "stuck")]},
                 2, (True, 1, "rollout failed (ProgressDeadlineExceeded): stuck"), id="deadline-passed"),
    pytest.param({"observedGeneration": 2, "conditions": [cond("Progressing", "Unknown", "RolloutPaused", "paused")]},
                 2, (True, 1, "kubectl apprelease resume webxample"), id="paused-cannot-complete"),
    pytest.param({"observedGeneration": 2, "conditions": [cond("Progressing", "True", "RolloutInProgress", "moving"),
                                                          cond("Degraded", "True", "HostFailed", "old", gen=1)]},
                 2, (False, 0, "moving"), id="degraded-of-an-older-generation-is-ignored"),
]


@pytest.mark.parametrize(("status", "gen", "want"), VERDICTS)
def test_rollout_verdict(status, gen, want):
    verdict = views.rollout_verdict(app_obj(app_model(), gen=gen, status=status))
    assert (verdict.done, verdict.exit_code) == want[:2]
    assert want[2] in verdict.message


def test_host_rows_and_tables():
    v1, v2 = app_model("1.0.0"), app_model("2.0.0")
    hrs = [hr_obj("b", v2, observed=2, serving=v1), hr_obj("a", v2, serving=v2, message="serving 2.0.0"),
           hr_obj("c", v2, phase="Failed", serving=v1, message="health\ncheck failed", deleting=True)]
    rows = views.host_rows(hrs)
    assert [(r.node, r.phase) for r in rows] == [("a", "Ready"), ("b", "Pending"), ("c", "Terminating")]
    assert rows[2].message == "health check failed"
    table = views.status_table(rows, T0).splitlines()
    assert table[0].split() == ["NODE", "PHASE", "SERVING", "DESIRED", "SINCE", "MESSAGE"]
    assert table[1].split()[:5] == ["a", "Ready", "2.0.0", f"({revision_of(v2)})", "="]
    assert f"2.0.0 ({revision_of(v2)})" in table[2]
    doc = views.status_document(app_obj(v2, status={"ready": "1/3"}), hrs)
    assert doc["ready"] == "1/3" and [h["node"] for h in doc["hosts"]] == ["a", "b", "c"]


@pytest.mark.parametrize(("seconds", "want"), [(5, "5s"), (119, "119s"), (120, "2m"), (7200, "2h"), (90000, "1d")],
                         ids=lambda v: str(v))
def test_age_reads_like_kubectl(seconds, want):
    assert views.age(T0, T0 + timedelta(seconds=seconds)) == want


# ----- history

V1, V2, V3 = app_model("1.0.0"), app_model("2.0.0"), app_model("3.0.0", fail_health=True)


def retained(model: AppRelease, minutes: float) -> dict:
    return RetainedRelease(version=model.spec.version, revision=revision_of(model),
                           build_id=identity.build_id(model.spec), first_deployed=T0 + timedelta(minutes=minutes),
                           template=resolve.release_template(model.spec)).wire()


def reverted_story() -> tuple[dict, list[dict]]:
    """v1 (minute 0) -> v2 (minute 10) -> v3 failed on host a (minute 20) -> revert to v2 (minute 30).

    Host b's disk lost v1 to a limit of 1; host a keeps every venv, v3's included."""
    status = {"observedGeneration": 4, "currentRevision": revision_of(V2), "previousRevision": revision_of(V1),
              "history": [retained(V1, 0), retained(V2, 10)]}
    app = app_obj(V2, gen=4, status=status)
    hrs = [hr_obj("a", V2, serving=V2, retained=(V1, V2, V3), history=[(V1, 0), (V2, 10)]),
           hr_obj("b", V2, serving=V2, retained=(V2,), history=[(V1, 1), (V2, 11)])]
    return app, hrs


def test_history_after_v1_v2_failed_v3_revert():
    app, hrs = reverted_story()
    rows = views.history_rows(app, hrs)
    assert [(r.version, r.current) for r in rows] == [("1.0.0", False), ("2.0.0", True)]
    v1, v2 = rows
    assert v1.first_served == T0 and v1.last_served == T0 + timedelta(minutes=11)  # b left it last
    assert v1.retained_on == ("a",) and v1.serving_on == ()
    assert v2.serving_on == ("a", "b") and v2.last_served is None and v2.retained_on == ("a", "b")
    table = views.history_table(rows, T0 + timedelta(minutes=40)).splitlines()
    assert table[1].split()[:7] == [revision_of(V1), "1.0.0", identity.build_id(V1.spec), "40m", "ago", "29m", "ago"]
    assert table[2].split()[0:2] == [revision_of(V2), "*"] and " now " in table[2]


# ----- undo


def history_status(*models: AppRelease, template: bool = True) -> dict:
    entries = [retained(m, i) for i, m in enumerate(models)]
    if not template:
        for e in entries:
            e.pop("template")
    return {"observedGeneration": 2, "history": entries}


UNDO = [
    pytest.param(V2, (V1, V2), None, "1.0.0", id="previous-of-a-completed-rollout"),
    pytest.param(V3, (V1, V2), None, "2.0.0", id="after-a-failed-rollout-the-last-that-completed"),
    pytest.param(V2, (V1, V2), "1.0.0", "1.0.0", id="by-version"),
    pytest.param(V1, (V1, V2), revision_of(V2)[:6], "2.0.0", id="by-revision-prefix"),
    pytest.param(V1, (V1, V2), "9.9.9", "no revision '9.9.9' in the history", id="unknown"),
    pytest.param(V1, (V1,), None, "no earlier revision", id="nothing-earlier"),
    pytest.param(V1, (V1, V2), "r", "names several revisions", id="ambiguous-prefix"),
]


@pytest.mark.parametrize(("spec", "history", "to", "want"), UNDO)
def test_undo_target(spec, history, to, want):
    app = app_obj(spec, status=history_status(*history))
    try:
        got = views.undo_target(app, to).version
    except views.UndoError as exc:
        got = str(exc)
    assert want in got


def test_undo_needs_a_recorded_template():
    app = app_obj(V2, status=history_status(V1, V2, template=False))
    with pytest.raises(views.UndoError, match="revert the manifest to 1.0.0"):
        views.undo_target(app)


def test_undo_patch_sets_the_release_fields_only():
    current = app_obj(app_model("2.0.0", user="shopuser"))
    current["spec"]["restartedAt"] = "2026-12-01T10:00:00Z"
    current["spec"]["paused"] = True
    ops = views.undo_patch(current, resolve.release_template(V1.spec))
    assert ops[0] == {"op": "test", "path": "/metadata/resourceVersion", "value": "77"}
    paths = {op["path"]: op for op in ops[1:]}
    assert paths["/spec/version"]["value"] == "1.0.0"
    assert paths["/spec/user"] == {"op": "remove", "path": "/spec/user"}  # v1 had it derived
    assert paths["/spec/restartedAt"] == {"op": "remove", "path": "/spec/restartedAt"}
    assert not {"/spec/hosts", "/spec/strategy", "/spec/paused"} & set(paths)


# ----- Argo CD

TRACKING = [
    pytest.param({"annotations": {"argocd.argoproj.io/tracking-id": "shop-app:apprelease.dev/AppRelease:shop/webxample"}},
                 ("shop-app", "annotation"), id="tracking-annotation"),
    pytest.param({"labels": {"app.kubernetes.io/instance": "shop-app"}}, ("shop-app", "label"), id="instance-label"),
    pytest.param({"labels": {"app": "x"}}, None, id="not-managed"),
]


@pytest.mark.parametrize(("meta", "want"), TRACKING)
def test_argocd_tracking(meta, want):
    got = views.argocd_tracking(app_obj(V2, meta=meta))
    assert (None if got is None else (got.application, got.by.split()[0])) == want


def test_argocd_advice_names_the_commits_to_revert():
    app = app_obj(V2, meta={"labels": {"app.kubernetes.io/instance": "shop-app"}})
    application = {"spec": {"source": {"repoURL": "https://git.example/shop.git", "path": "deploy"}},
                   "status": {"sync": {"revision": "b" * 40},
                              "history": [{"revision": "a" * 40}, {"revision": "b" * 40}]}}
    text = views.argocd_advice(app, views.argocd_tracking(app), views.undo_target(
        app_obj(V2, status=history_status(V1, V2))), application)
    assert f"git log --oneline {'a' * 12}..{'b' * 12} -- deploy" in text
    assert "managed by Argo CD (Application shop-app" in text and "--force" in text
    generic = views.argocd_advice(app, views.argocd_tracking(app), RetainedRelease(
        version="1.0.0", revision="r1", build_id="b1"), None)
    assert "git revert" in generic


# ----- diff

PROXY_CHANGED = {"clientMaxBodySize": "5m"}

DIFF = [
    # (new AppRelease, the host as it is) -> action
    pytest.param(app_model("2.0.0"), dict(model=V1, serving=V1, retained=(V1,)), views.BUILD, id="new-build"),
    pytest.param(app_model("2.0.0"), dict(model=V1, serving=V1, retained=(V1, V2)), views.REUSE,
                 id="build-still-on-disk-is-reused"),
    pytest.param(app_model("1.0.0", graceful=3), dict(model=V1, serving=V1, retained=(V1,)), views.NEW_WORKERS,
                 id="env-or-server-change-new-workers"),
    pytest.param(app_model("1.0.0", **PROXY_CHANGED), dict(model=V1, serving=V1, retained=(V1,)), views.NGINX_ONLY,
                 id="proxy-only-change"),
    pytest.param(app_model("1.0.0"), dict(model=V1, serving=V1, retained=(V1,)), views.NOTHING, id="no-change"),
    pytest.param(app_model("1.0.0", limit=3), dict(model=V1, serving=V1, retained=(V1,)), views.NOTHING,
                 id="history-limit-only-is-spec-only"),
    pytest.param(app_model("1.0.0"), dict(model=V3, serving=V1, retained=(V1, V3), phase="Failed"), views.NOTHING,
                 id="revert-to-the-serving-revision-after-a-failure"),
    pytest.param(app_model("3.0.0", fail_health=True), dict(model=V1, serving=V1, retained=(V1,)), views.BUILD,
                 id="failing-release-builds-first"),
]


@pytest.mark.parametrize(("new", "host", "want"), DIFF)
def test_diff_action_per_host(new, host, want):
    model = host.pop("model")
    rows = views.diff_rows(new, ["a"], [hr_obj("a", model, **host)])
    assert [r.action for r in rows] == [want], rows


def test_diff_marks_spec_only_changes_and_unchanged_hosts():
    rows = views.diff_rows(app_model("1.0.0", limit=3), ["a"], [hr_obj("a", V1, serving=V1, retained=(V1,))])
    assert rows[0].detail == "spec only: revisionHistoryLimit" and rows[0].changes
    same = views.diff_rows(V1, ["a"], [hr_obj("a", V1, serving=V1, retained=(V1,))])
    assert same[0].detail == "spec unchanged" and not same[0].changes


def test_diff_new_and_deselected_hosts_and_batches():
    hrs = [hr_obj(n, V1, serving=V1, retained=(V1,)) for n in ("a", "b", "c")]
    rows = {r.node: r for r in views.diff_rows(V2, ["a", "b", "d"], hrs)}
    assert rows["a"].when == "first batch" and rows["b"].when == "after earlier hosts"  # maxUnavailable 1
    assert rows["c"].action == views.REMOVE
    assert rows["d"].action == views.CREATE and rows["d"].current == "-"
    table = views.diff_table(list(rows.values()))
    assert table.splitlines()[0].split() == ["NODE", "ACTION", "FROM", "TO", "WHEN", "DETAIL"]


def test_diff_of_a_paused_app_says_so():
    paused = app_model("2.0.0")
    paused = paused.model_copy(update={"spec": paused.spec.model_copy(update={"paused": True})})
    rows = views.diff_rows(paused, ["a"], [hr_obj("a", V1, serving=V1, retained=(V1,))])
    assert (rows[0].action, rows[0].when) == (views.BUILD, "paused")


# ----- restart and the operator's records


def test_restarted_at_makes_a_new_revision_of_the_same_build():
    spec = identity.with_user(V1.spec, NS, APP)
    restarted = spec.model_copy(update={"restarted_at": "2026-12-01T10:00:00Z"})
    assert identity.build_id(restarted) == identity.build_id(spec)
    assert identity.revision(restarted) != identity.revision(spec)
    # Without restartedAt the revision is the hash it was before the field existed.
    runtime = {"buildId": identity.build_id(spec), "entrypoint": spec.entrypoint, "server": identity.server_identity(spec),
               "env": [e.wire() for e in spec.env], "user": spec.user, "healthCheck": spec.health_check.wire()}
    canonical = json.dumps(runtime, sort_keys=True, separators=(",", ":"))
    assert identity.revision(spec) == "r" + hashlib.sha256(canonical.encode()).hexdigest()[:11]


def test_operator_keeps_each_completed_revision_template():
    def done(model: AppRelease, previous: AppReleaseStatus | None, minutes: int) -> AppReleaseStatus:
        spec = resolve.host_release_spec(NS, APP, "a", model.spec).wire()
        host = HostView(name="x-a", node="a", spec=spec, generation=1, observed_generation=1, phase="Ready",
                        serving_revision=spec["revision"])
        rollout = Rollout(generation=1, version=model.spec.version, revision=spec["revision"],
                          build_id=spec["buildId"], desired={"a": spec}, hosts=[host],
                          template=resolve.release_template(model.spec))
        return compute_status(rollout, previous, T0 + timedelta(minutes=minutes))

    first = done(V1, None, 0)
    legacy = first.model_copy(update={"history": [first.history[0].model_copy(update={"template": None})]})
    again = done(V1, legacy, 1)  # recorded before templates were kept: filled in
    assert again.history[0].template == resolve.release_template(V1.spec)
    second = done(V2, again, 2)
    assert [h.template["version"] for h in second.history] == ["1.0.0", "2.0.0"]
    assert "hosts" not in second.history[1].template and "user" not in second.history[1].template


def test_diff_shows_the_release_command_on_the_first_host_only_and_then_the_others():
    migrating = app_model("2.0.0", extra={"release": {"command": ["python", "-m", "webxample.migrate"]},
                                          "processes": {"worker": {"command": ["python", "-m", "w"], "replicas": 2}},
                                          "strategy": {"maxUnavailable": 2}})
    hrs = [hr_obj(n, V1, serving=V1, retained=(V1,)) for n in ("a", "b")]
    rows = {r.node: r for r in views.diff_rows(migrating, ["a", "b"], hrs)}
    assert "run-release-command" in " ".join(rows["a"].plan) and "start-processes" in " ".join(rows["a"].plan)
    assert "run-release-command" not in " ".join(rows["b"].plan)
    # The first host's release command gates the rest, whatever maxUnavailable allows.
    assert rows["a"].when == "first batch" and rows["b"].when == "after earlier hosts"


def test_diff_and_undo_use_the_values_digest_the_operator_wrote_for_referenced_values():
    """The plugin never reads Secrets: for a spec whose env references one, the desired revision
    takes the digest from the app's HostReleases, so an unchanged spec diffs as unchanged."""
    from apprelease.api import resolve as resolve_
    from apprelease.api.models import AppRelease as AppReleaseModel
    from apprelease.plugin import views as v

    import copy

    from support.manifests import EXAMPLE

    doc = {**copy.deepcopy(EXAMPLE), "metadata": {"name": "webxample", "namespace": "default"}}
    doc["spec"]["env"] = [{"name": "DATABASE_URL", "valueFrom": {"secretKeyRef": {"name": "db", "key": "url"}}}]
    app = AppReleaseModel.model_validate(doc)
    spec = resolve_.host_release_spec("default", "webxample", "n1", app.spec, values_digest="v" + "a" * 20)
    hr = {"metadata": {"name": "webxample-n1", "namespace": "default", "generation": 1,
                       "labels": {"apprelease.dev/node": "n1", "apprelease.dev/app": "webxample"}},
          "spec": spec.wire(), "status": {"observedGeneration": 1, "phase": "Ready", "servingRevision": spec.revision}}
    assert v.values_digest([hr]) == "v" + "a" * 20
    assert v.desired_revision(doc, v.values_digest([hr])) == spec.revision
    (row,) = v.diff_rows(app, ["n1"], [hr])
    assert row.detail == "spec unchanged", row
