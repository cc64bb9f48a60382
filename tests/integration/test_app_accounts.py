"""App users belong to one (namespace, app), on a real host (circusd, gunicorn, nginx, useradd).

Covers: the same app name in two namespaces gets two users, each recorded for its own
(namespace, app) in GECOS, and both serve; refused with Failed and a message naming the
user and why, with nothing started: the proxy's user (www-data), nobody, an existing system
account apprelease did not create, and a user apprelease created for another namespace; an
account an older apprelease made for this app (no owner record, the app ran as it) is adopted
and recorded, while another app may not take it; an account the host's admin allowed for a
namespace is used there; removing an app from the host deletes its app and build accounts;
agents creating the same user at once end with one uid.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import threading
from pathlib import Path

import pytest

from apprelease.api.identity import default_user
from apprelease.host import core, users
from apprelease.host.layout import app_key
from apprelease.host.users import build_user_name
from support.hosts import SERVER_NAME, release_for, running_host
from support.nginx import free_port, http_get

pytestmark = pytest.mark.integration

PREEXISTING = "ar-preexisting"  # an account someone made by hand, without apprelease's record


@pytest.fixture(scope="module")
def preexisting_account():
    if subprocess.run(["getent", "passwd", PREEXISTING], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PREEXISTING],
                       check=True)
    yield PREEXISTING
    subprocess.run(["userdel", PREEXISTING], capture_output=True)


@pytest.fixture
def host(short_tmp: Path):
    with running_host(short_tmp / "host-a") as host:
        yield host
        for namespace in ("team-a", "team-b", "team-c", "team-d"):
            core.remove(host, namespace, "webxample")


def reconcile(host, index, namespace: str, port: int, user: str | None = None):
    return core.reconcile(host, release_for(index.url, "1.0.0", port=port, namespace=namespace, user=user))


def served_by(port: int) -> int:
    resp = http_get(port, "/version", SERVER_NAME)
    assert resp.status == 200, resp
    return resp.status


def test_two_namespaces_get_two_users_and_each_is_recorded(host, package_index):
    ports = {"team-a": free_port(), "team-b": free_port()}
    for namespace, port in ports.items():
        result = reconcile(host, package_index, namespace, port)
        assert result.status.phase == "Ready", result.status.message
        served_by(port)
    users = {ns: default_user(ns, "webxample") for ns in ports}
    assert users["team-a"] != users["team-b"]
    for namespace, user in users.items():
        assert pwd.getpwnam(user).pw_gecos == f"apprelease app {namespace}/webxample"
        assert pwd.getpwnam(build_user_name(namespace, "webxample")).pw_gecos == f"apprelease build {namespace}/webxample"


@pytest.mark.parametrize(
    ("user", "why"),
    [
        pytest.param("www-data", "is the proxy's", id="proxy-user"),
        pytest.param("nobody", "not created by apprelease", id="nobody"),
        pytest.param(PREEXISTING, "not created by apprelease", id="existing-system-account"),
        pytest.param(default_user("team-a", "webxample"), "belongs to team-a/webxample", id="another-namespaces-user"),
    ],
)
def test_accounts_that_are_not_the_apps_are_refused(host, package_index, preexisting_account, user: str, why: str):
    first = free_port()
    assert reconcile(host, package_index, "team-a", first).status.phase == "Ready"

    result = reconcile(host, package_index, "team-c", free_port(), user=user)

    assert result.status.phase == "Failed"
    assert repr(user) in result.status.message and why in result.status.message, result.status.message
    assert [step.action for step in result.steps] == [], "something ran for a refused user"
    assert not core.app_watchers(host.supervisor, app_key("team-c", "webxample"))
    served_by(first)  # the other app is untouched


def test_an_admin_may_allow_an_existing_account_for_a_namespace(host, package_index, preexisting_account):
    host.allowed_users = {"team-d": frozenset({PREEXISTING})}
    refused = reconcile(host, package_index, "team-c", free_port(), user=PREEXISTING)
    assert refused.status.phase == "Failed"  # allowed for team-d only
    port = free_port()
    allowed = reconcile(host, package_index, "team-d", port, user=PREEXISTING)
    assert allowed.status.phase == "Ready", allowed.status.message
    served_by(port)


def test_removing_the_app_deletes_its_accounts(host, package_index):
    assert reconcile(host, package_index, "team-b", free_port()).status.phase == "Ready"
    accounts = [default_user("team-b", "webxample"), build_user_name("team-b", "webxample")]
    for name in accounts:
        pwd.getpwnam(name)
    core.remove(host, "team-b", "webxample")
    for name in accounts:
        with pytest.raises(KeyError):
            pwd.getpwnam(name)


def test_an_account_an_older_apprelease_made_for_this_app_is_adopted(host, package_index):
    """Before owner records, apprelease made app users with `useradd --system` and no GECOS: the
    app that already ran as one (its socket dir is the account's) keeps it, now recorded."""
    legacy = "ar-legacy-app"
    subprocess.run(["userdel", legacy], capture_output=True)
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "--user-group", legacy],
                   check=True)
    try:
        elsewhere = reconcile(host, package_index, "team-c", free_port(), user=legacy)
        assert elsewhere.status.phase == "Failed"  # no sign that team-c ever ran as it
        run_dir = host.layout.app(app_key("team-d", "webxample")).run
        run_dir.mkdir(parents=True)
        account = pwd.getpwnam(legacy)
        os.chown(run_dir, account.pw_uid, account.pw_gid)  # what the older agent left

        port = free_port()
        adopted = reconcile(host, package_index, "team-d", port, user=legacy)

        assert adopted.status.phase == "Ready", adopted.status.message
        served_by(port)
        assert pwd.getpwnam(legacy).pw_gecos == "apprelease app team-d/webxample"
    finally:
        core.remove(host, "team-d", "webxample")
        subprocess.run(["userdel", legacy], capture_output=True)


def test_concurrent_agents_asking_for_one_new_user_get_one_uid():
    """Two agents on one machine (as in the tests) creating the same user at once: useradd's own
    check let both through and one was left with a uid the other replaced (its socket dir then
    belonged to a dead uid). Account creation is serialized and re-checked."""
    name = "ar-race-test"
    subprocess.run(["userdel", name], capture_output=True)
    results: dict[int, object] = {}

    def ask(i: int) -> None:
        try:
            results[i] = users.ensure_user(name, namespace="race", app="web")
        except Exception as exc:  # noqa: BLE001 - recorded for the assertion
            results[i] = exc

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        entry = pwd.getpwnam(name)
        assert set(results.values()) == {(entry.pw_uid, entry.pw_gid)}, results
    finally:
        subprocess.run(["userdel", name], capture_output=True)
