"""Host claims and conflicts (api/claims.py), and reading claims back from live sites.

Covers: which server names overlap (exact, wildcard vs name, nested wildcards, a wildcard and
its own base name, look-alike suffixes, nginx's '_'); the conflict matrix between one app's
claims and the other apps' on a host (same name, different ports, TLS and plain on one port,
same TLS Secret for different names, several owners named in order); the status message;
`site_claims` reading back exactly what `render_site` wrote (plain, TLS, IPv6, several names)
and claiming nothing for a file without listen or server_name.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from apprelease.api import models
from apprelease.api.claims import Claims, Conflict, conflicts, describe, names_overlap
from apprelease.host.layout import HostLayout
from apprelease.host.proxy import render_site, site_claims, site_inputs

pytestmark = pytest.mark.unit

OVERLAP = [
    # (id, a, b, overlap)
    ("same-name", "a.example.com", "a.example.com", True),
    ("different-names", "a.example.com", "b.example.com", False),
    ("wildcard-covers-name", "*.example.com", "a.example.com", True),
    ("name-covered-by-wildcard", "a.example.com", "*.example.com", True),
    ("wildcard-covers-deeper-name", "*.example.com", "x.a.example.com", True),
    ("wildcard-not-its-base-name", "*.example.com", "example.com", False),
    ("same-wildcard", "*.example.com", "*.example.com", True),
    ("nested-wildcards", "*.example.com", "*.a.example.com", True),
    ("sibling-wildcards", "*.a.example.com", "*.b.example.com", False),
    ("look-alike-suffix-is-not-a-subdomain", "*.example.com", "a.badexample.com", False),
    ("look-alike-wildcards", "*.example.com", "*.myexample.com", False),
    ("catch-all-underscore-twice", "_", "_", True),
    ("catch-all-underscore-vs-name", "_", "a.example.com", False),
]


@pytest.mark.parametrize(("a", "b", "expected"), [c[1:] for c in OVERLAP], ids=[c[0] for c in OVERLAP])
def test_names_overlap(a, b, expected):
    assert names_overlap(a, b) is expected
    assert names_overlap(b, a) is expected  # symmetric


def claims(port: int, *names: str, tls: bool = False) -> Claims:
    return Claims(port=port, names=frozenset(names), tls=tls)


WEB = claims(80, "shop.example.com")
CONFLICTS = [
    # (id, mine, others, expected conflicts)
    ("alone-on-the-host", WEB, {}, []),
    ("same-name-same-port", WEB, {"a/first": claims(80, "shop.example.com")},
     [Conflict("a/first", "shop.example.com on port 80")]),
    ("same-name-other-namespace-too", WEB, {"b/first": claims(80, "shop.example.com")},
     [Conflict("b/first", "shop.example.com on port 80")]),
    ("same-name-different-port", WEB, {"a/first": claims(8080, "shop.example.com")}, []),
    ("different-name-same-port", WEB, {"a/first": claims(80, "blog.example.com")}, []),
    ("their-wildcard-covers-my-name", WEB, {"a/first": claims(80, "*.example.com")},
     [Conflict("a/first", "shop.example.com (as *.example.com) on port 80")]),
    ("my-wildcard-covers-their-name", claims(80, "*.example.com"), {"a/first": claims(80, "shop.example.com")},
     [Conflict("a/first", "*.example.com (as shop.example.com) on port 80")]),
    ("wildcard-and-its-base-name-coexist", claims(80, "example.com"), {"a/first": claims(80, "*.example.com")}, []),
    ("one-of-several-names", claims(80, "a.example.com", "b.example.com"),
     {"a/first": claims(80, "b.example.com", "c.example.com")}, [Conflict("a/first", "b.example.com on port 80")]),
    ("tls-same-name-port-443", claims(443, "shop.example.com", tls=True),
     {"a/first": claims(443, "shop.example.com", tls=True)}, [Conflict("a/first", "shop.example.com on port 443")]),
    # Same certificate (e.g. a wildcard one) for different names: no claim on the Secret.
    ("tls-different-names-same-port", claims(443, "a.example.com", tls=True),
     {"b/first": claims(443, "b.example.com", tls=True)}, []),
    ("plain-on-a-tls-port", claims(443, "a.example.com"), {"a/first": claims(443, "b.example.com", tls=True)},
     [Conflict("a/first", "port 443 with TLS (nginx sets TLS per port, not per server name)")]),
    ("tls-on-a-plain-port", claims(80, "a.example.com", tls=True), {"a/first": claims(80, "b.example.com")},
     [Conflict("a/first", "port 80 with plain HTTP (nginx sets TLS per port, not per server name)")]),
    ("tls-and-plain-on-different-ports", claims(443, "a.example.com", tls=True), {"a/first": claims(80, "a.example.com")},
     []),
    ("several-owners-in-name-order", WEB,
     {"z/last": claims(80, "shop.example.com"), "a/wild": claims(80, "*.example.com"), "m/other": claims(80, "x.org")},
     [Conflict("a/wild", "shop.example.com (as *.example.com) on port 80"),
      Conflict("z/last", "shop.example.com on port 80")]),
]


@pytest.mark.parametrize(("mine", "others", "expected"), [c[1:] for c in CONFLICTS], ids=[c[0] for c in CONFLICTS])
def test_conflicts(mine, others, expected):
    assert conflicts(mine, others) == expected


def test_message_names_the_owner_as_namespace_slash_name():
    found = conflicts(WEB, {"shop/web": claims(80, "shop.example.com"), "blog/wild": claims(80, "*.example.com")})
    assert describe(found) == ("Conflict: blog/wild already serves shop.example.com (as *.example.com) on port 80; "
                               "shop/web already serves shop.example.com on port 80")


def test_claims_of_a_proxy_spec():
    proxy = models.Proxy.model_validate({"serverNames": ["a.example.com", "*.b.example.com"], "listenPort": 443,
                                         "tls": {"secretName": "cert"}})
    assert Claims.of(proxy) == claims(443, "a.example.com", "*.b.example.com", tls=True)
    assert Claims.of(models.Proxy.model_validate({"serverNames": ["x.org"]})) == claims(80, "x.org")


LAYOUT = HostLayout(Path("/var/lib/apprelease"))
TLS_FILES = (Path("/var/lib/apprelease/secrets/tls/ns_app.0.crt"), Path("/var/lib/apprelease/secrets/tls/ns_app.0.key"))
ROUND_TRIP = [
    ("plain", {"serverNames": ["a.example.com"], "listenPort": 8080}, "0.0.0.0"),
    ("tls", {"serverNames": ["a.example.com", "*.a.example.com"], "listenPort": 443, "tls": {"secretName": "c"}},
     "0.0.0.0"),
    ("ipv6-listen-address", {"serverNames": ["a.example.com"], "listenPort": 80}, "::"),
    ("with-static", {"serverNames": ["_"], "listenPort": 80,
                     "static": [{"urlPath": "/static/", "directory": "app/static"}]}, "127.0.0.2"),
]


@pytest.mark.parametrize(("spec", "address"), [c[1:] for c in ROUND_TRIP], ids=[c[0] for c in ROUND_TRIP])
def test_site_claims_reads_back_what_render_site_wrote(spec, address):
    proxy = models.Proxy.model_validate(spec)
    text = render_site(site_inputs(LAYOUT, "ns_app", proxy, TLS_FILES if proxy.tls else None, listen_address=address))
    assert site_claims(text) == Claims.of(proxy)


@pytest.mark.parametrize("text", ["", "# nothing\n", "server {\n    listen 80;\n}\n",
                                  "server {\n    server_name a.example.com;\n}\n"],
                         ids=["empty", "comment", "no-server-name", "no-listen"])
def test_a_file_without_listen_or_server_name_claims_nothing(text):
    assert site_claims(text) is None


def test_a_hand_written_site_is_read_as_far_as_it_goes():
    text = "server {\n  listen 80 default_server;\n  server_name  legacy.example.com www.legacy.example.com ;\n}\n"
    assert site_claims(text) == claims(80, "legacy.example.com", "www.legacy.example.com")
