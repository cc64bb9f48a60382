"""Which account an app may run as, and the names apprelease gives its accounts. Pure.

Covers: a new account, or one recorded for this (namespace, app), is fine; one recorded for
another app (or as a build user), one apprelease did not create (www-data, nobody, postgres),
and the proxy's account are refused with a message naming the user and saying why; an admin
allowance lets a pre-existing account through for its namespace only, never the proxy's;
default users are valid POSIX names, distinct across namespaces; build user names too.
"""

from __future__ import annotations

import pytest

from apprelease.api import rules
from apprelease.api.identity import default_user
from apprelease.host.users import build_user_name, owner_comment, refusal

pytestmark = pytest.mark.unit

NS, APP = "shop", "web"
PROXY = frozenset({"www-data"})


@pytest.mark.parametrize(
    ("name", "gecos", "allowed", "expect"),
    [
        pytest.param("web", None, frozenset(), None, id="new-account"),
        pytest.param("web", "apprelease app shop/web", frozenset(), None, id="recorded-for-this-app"),
        pytest.param("web", "apprelease app other/web", frozenset(), "belongs to other/web", id="other-namespace"),
        pytest.param("web", "apprelease app shop/api", frozenset(), "belongs to shop/api", id="other-app"),
        pytest.param("arb-1", "apprelease build shop/web", frozenset(), "belongs to shop/web", id="own-build-user"),
        pytest.param("www-data", "www-data", frozenset(), "is the proxy's", id="proxy-user"),
        pytest.param("www-data", "www-data", frozenset({"www-data"}), "is the proxy's", id="proxy-user-allowed"),
        pytest.param("nobody", "nobody", frozenset(), "not created by apprelease", id="nobody"),
        pytest.param("postgres", "PostgreSQL administrator,,,", frozenset(), "not created by apprelease", id="postgres"),
        pytest.param("postgres", "PostgreSQL administrator,,,", frozenset({"postgres"}), None, id="allowed-by-admin"),
        pytest.param("legacy", "", frozenset({"other"}), "not created by apprelease", id="allowance-is-per-user"),
    ],
)
def test_which_account_an_app_may_use(name: str, gecos: str | None, allowed: frozenset[str], expect: str | None):
    why = refusal(name, gecos, namespace=NS, app=APP, allowed_existing=allowed, reserved=PROXY)
    if expect is None:
        assert why is None
    else:
        assert why and expect in why and repr(name) in why


def test_refusals_say_what_to_do():
    why = refusal("nobody", "nobody", namespace=NS, app=APP, reserved=PROXY)
    assert "leave spec.user empty" in why and f"namespace {NS}" in why


def test_records_have_no_passwd_separators():
    comment = owner_comment("app", "a-b", "c-d")
    assert ":" not in comment and "," not in comment and comment == "apprelease app a-b/c-d"


@pytest.mark.parametrize("app", ["web", "0day", "a" * 63, "x-" * 20 + "y"], ids=["short", "digit-first", "longest", "dashes"])
def test_default_users_are_posix_names_distinct_per_namespace(app: str):
    one, two = default_user("team-a", app), default_user("team-b", app)
    assert one != two
    for name in (one, two):
        rules.POSIX_USER.check(name)
        assert len(name) <= 31 and name.startswith("ar-")


def test_build_users_are_distinct_and_short():
    names = {build_user_name(ns, app) for ns in ("a", "b") for app in ("x", "y")}
    assert len(names) == 4 and all(len(n) == 16 and n.startswith("arb-") for n in names)
