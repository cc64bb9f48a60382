"""Rendering of the host's nginx config (host/proxy/render.py), checked statement by statement.

Covers:
- a site's key directives: listen (address is a host setting), server_name, body size,
  proxy_pass to run/live.sock with no keepalive pool, forwarded headers, buffering, timeouts,
  proxy_next_upstream never retrying non-idempotent requests;
- TLS on and off; static locations: a regex location per prefix (longest first, '.' written
  `[.]`) trying static-live/site-packages/<dir>/ then static-previous/... under the app's
  directory, then 404, retried once in a named location, static-previous first;
- defensive checks: hostile values bypassing the models are refused with SiteConfigError;
- the main config: user, pid/logs/temp under the prefix, includes, worker_shutdown_timeout,
  catch-all default servers;
- a hypothesis fuzz: whatever the models accept renders to exactly the expected statements,
  whatever they refuse render refuses too, and a sample passes a real `nginx -t`.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, currently_in_test_context, event, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from apprelease.host.layout import HostLayout
from apprelease.host.proxy import (
    MainInputs,
    SiteConfigError,
    SiteInputs,
    StaticLocation,
    render_main,
    render_site,
    site_inputs,
)
from apprelease.api import models, rules
from support.nginx import NGINX, Statement, nginx_t, parse_config, self_signed_cert

pytestmark = pytest.mark.unit

ROOT = Path("/var/lib/apprelease")
LAYOUT = HostLayout(ROOT)
KEY = "shop_web"
TLS_FILES = (ROOT / "secrets/tls/shop_web.0.crt", ROOT / "secrets/tls/shop_web.0.key")

SERVER_DIRECTIVES = {"listen", "server_name", "client_max_body_size", "location"}
TLS_DIRECTIVES = {"ssl_certificate", "ssl_certificate_key", "ssl_protocols", "ssl_prefer_server_ciphers"}
APP_LOCATION_DIRECTIVES = {
    "proxy_pass",
    "proxy_http_version",
    "proxy_set_header",
    "proxy_buffering",
    "proxy_connect_timeout",
    "proxy_send_timeout",
    "proxy_read_timeout",
    "proxy_next_upstream",
}


def proxy(**spec: object) -> models.Proxy:
    return models.Proxy.model_validate({"serverNames": ["shop.example.com"], **spec})


def server_of(text: str) -> Statement:
    statements = parse_config(text)
    assert [s.name for s in statements] == ["server"], "a site is exactly one server block"
    return statements[0]


def one(block: Statement, name: str) -> Statement:
    found = block.find(name)
    assert len(found) == 1, f"{name}: {found}"
    return found[0]


def app_location(server: Statement) -> Statement:
    (location,) = [loc for loc in server.find("location") if loc.args == ["/"]]
    return location


# -- a site ---------------------------------------------------------------------------


def test_site_key_directives() -> None:
    text = render_site(site_inputs(LAYOUT, KEY, proxy(listenPort=8080, clientMaxBodySize="20m")))
    server = server_of(text)
    assert {s.name for s in server.block} == SERVER_DIRECTIVES
    assert one(server, "listen").args == ["0.0.0.0:8080"]
    assert one(server, "server_name").args == ["shop.example.com"]
    assert one(server, "client_max_body_size").args == ["20m"]

    location = app_location(server)
    assert {s.name for s in location.block} == APP_LOCATION_DIRECTIVES
    assert one(location, "proxy_pass").args == [f"http://unix:{ROOT}/apps/{KEY}/run/live.sock:"]
    assert one(location, "proxy_buffering").args == ["on"]
    headers = {s.args[0]: s.args[1] for s in location.find("proxy_set_header")}
    assert headers == {
        "Connection": '"close"',
        "Host": "$host",
        "X-Real-IP": "$remote_addr",
        "X-Forwarded-For": "$proxy_add_x_forwarded_for",
        "X-Forwarded-Proto": "$scheme",
        "X-Forwarded-Host": "$host",
        "X-Forwarded-Port": "$server_port",
    }
    next_upstream = one(location, "proxy_next_upstream").args
    assert "non_idempotent" not in next_upstream and next_upstream == ["error", "timeout"]
    for timeout in ("proxy_connect_timeout", "proxy_send_timeout", "proxy_read_timeout"):
        assert one(location, timeout).args[0].endswith("s")


def test_no_upstream_keepalive_pool() -> None:
    """A fresh connect per request is what lets a live.sock rename switch the next request."""
    text = render_site(site_inputs(LAYOUT, KEY, proxy()))
    names = {s.name for s in server_of(text).walk()}
    assert "upstream" not in names and "keepalive" not in names


def test_listen_address_is_a_host_setting() -> None:
    inputs = site_inputs(LAYOUT, KEY, proxy(listenPort=80), listen_address="127.0.0.1")
    assert one(server_of(render_site(inputs)), "listen").args == ["127.0.0.1:80"]
    inputs = site_inputs(LAYOUT, KEY, proxy(listenPort=443), listen_address="::")
    assert one(server_of(render_site(inputs)), "listen").args == ["[::]:443"]


def test_tls_on() -> None:
    text = render_site(site_inputs(LAYOUT, KEY, proxy(listenPort=443, tls={"secretName": "shop-tls"}), TLS_FILES))
    server = server_of(text)
    assert {s.name for s in server.block} == SERVER_DIRECTIVES | TLS_DIRECTIVES
    assert one(server, "listen").args == ["0.0.0.0:443", "ssl"]
    assert one(server, "ssl_certificate").args == [str(TLS_FILES[0])]
    assert one(server, "ssl_certificate_key").args == [str(TLS_FILES[1])]
    assert one(server, "ssl_protocols").args == ["TLSv1.2", "TLSv1.3"]


def test_tls_needs_files_and_files_need_tls() -> None:
    with pytest.raises(SiteConfigError, match="TLS files"):
        site_inputs(LAYOUT, KEY, proxy(tls={"secretName": "shop-tls"}))
    with pytest.raises(SiteConfigError, match="TLS files"):
        site_inputs(LAYOUT, KEY, proxy(), TLS_FILES)


def test_static_locations_try_the_live_then_the_previous_build() -> None:
    spec = proxy(static=[
        {"urlPath": "/static/", "directory": "webxample/static"},
        {"urlPath": "/media/img/", "directory": "webxample/media/img"},
    ])
    server = server_of(render_site(site_inputs(LAYOUT, KEY, spec)))
    locations = {tuple(loc.args): loc for loc in server.find("location")}
    static, media = ("~", "^/static/(?<asset>.*)$"), ("~", "^/media/img/(?<asset>.*)$")
    assert set(locations) == {static, media, ("@static1",), ("@static2",), ("/",)}
    assert [s.name for s in locations[static].block] == ["root", "try_files", "error_page"]
    assert one(locations[static], "root").args == [f"{ROOT}/apps/{KEY}"]
    assert one(locations[static], "try_files").args == [
        "/static-live/site-packages/webxample/static/$asset",
        "/static-previous/site-packages/webxample/static/$asset",
        "=404",
    ]
    # A 404 (a link renamed between try_files and the open) is tried once more, static-previous first.
    retry = one(locations[static], "error_page").args
    assert retry[:2] == ["404", "="] and retry[2] in ("@static1", "@static2")
    assert [s.name for s in locations[retry[2],].block] == ["root", "try_files"]
    assert one(locations[retry[2],], "root").args == [f"{ROOT}/apps/{KEY}"]
    assert one(locations[retry[2],], "try_files").args == [
        "/static-previous/site-packages/webxample/static/$asset",
        "/static-live/site-packages/webxample/static/$asset",
        "=404",
    ]
    assert one(locations[media], "try_files").args[0] == "/static-live/site-packages/webxample/media/img/$asset"
    # The two links are the layout's: what the agent points is what nginx reads.
    app = LAYOUT.app(KEY)
    tried = [f"{ROOT}/apps/{KEY}/{a.split('/')[1]}" for a in one(locations[static], "try_files").args[:2]]
    assert tried == [str(app.static_live), str(app.static_previous)]


def test_static_locations_keep_longest_prefix_first_and_escape_dots() -> None:
    """Regex locations match in the order written: a shorter prefix first would take the longer one's URLs."""
    spec = proxy(static=[
        {"urlPath": "/static/", "directory": "a"},
        {"urlPath": "/static/v1.2/", "directory": "b"},
        {"urlPath": "/s/", "directory": "c"},
    ])
    server = server_of(render_site(site_inputs(LAYOUT, KEY, spec)))
    assert [loc.args[1] for loc in server.find("location") if loc.args[0] == "~"] == [
        "^/static/v1[.]2/(?<asset>.*)$", "^/static/(?<asset>.*)$", "^/s/(?<asset>.*)$"]
    assert "\\" not in render_site(site_inputs(LAYOUT, KEY, spec))


@pytest.mark.parametrize(
    "static, reason",
    [
        pytest.param([{"urlPath": "/", "directory": "x"}], "not allowed", id="root-path"),
        pytest.param(
            [{"urlPath": "/s/", "directory": "a"}, {"urlPath": "/s/", "directory": "b"}],
            "given twice",
            id="duplicate-path",
        ),
    ],
)
def test_static_paths_nginx_would_refuse_are_refused_twice(static: list, reason: str) -> None:
    """The models refuse them; rendering refuses them too when the models are bypassed."""
    with pytest.raises(ValidationError):
        proxy(static=static)
    bypassed = [static_location(s["urlPath"], f"/static-live/site-packages/{s['directory']}/") for s in static]
    with pytest.raises(SiteConfigError, match=reason):
        render_site(valid_inputs(static=tuple(bypassed)))


def static_location(url_path: str, *directories: str, root: str = f"{ROOT}/apps/{KEY}") -> StaticLocation:
    return StaticLocation(url_path, root, directories or ("/static-live/site-packages/x/",))


def valid_inputs(**overrides: object) -> SiteInputs:
    base = dict(
        key=KEY,
        listen_port=80,
        server_names=("shop.example.com",),
        live_socket=f"{ROOT}/apps/{KEY}/run/live.sock",
        static=(static_location("/static/", "/static-live/site-packages/x/", "/static-previous/site-packages/x/"),),
    )
    return SiteInputs(**{**base, **overrides})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"key": "shop_web;"}, id="key-semicolon"),
        pytest.param({"key": "../etc"}, id="key-traversal"),
        pytest.param({"listen_port": 0}, id="port-zero"),
        pytest.param({"listen_port": 70000}, id="port-high"),
        pytest.param({"listen_port": True}, id="port-bool"),
        pytest.param({"listen_port": "80; include /etc/passwd"}, id="port-string"),
        pytest.param({"listen_address": "0.0.0.0:80 ssl"}, id="address-extra"),
        pytest.param({"server_names": ()}, id="no-names"),
        pytest.param({"server_names": ("a.com; return 200",)}, id="name-semicolon"),
        pytest.param({"server_names": ("a.com\n}",)}, id="name-brace"),
        pytest.param({"server_names": ('"a.com"',)}, id="name-quote"),
        pytest.param({"server_names": ("$host",)}, id="name-variable"),
        pytest.param({"client_max_body_size": "1m;"}, id="size-semicolon"),
        pytest.param({"client_max_body_size": "1 m"}, id="size-space"),
        pytest.param({"live_socket": "/run/a b.sock"}, id="socket-space"),
        pytest.param({"live_socket": "/run/$x.sock"}, id="socket-variable"),
        pytest.param({"live_socket": "run/live.sock"}, id="socket-relative"),
        pytest.param({"live_socket": "/run/../etc/live.sock"}, id="socket-dotdot"),
        pytest.param({"static": (static_location("/s/", "/x/y#/"),)}, id="directory-comment"),
        pytest.param({"static": (static_location("/s/", "/x/$asset/"),)}, id="directory-variable"),
        pytest.param({"static": (static_location("/s/", "/x/y"),)}, id="directory-no-slash"),
        pytest.param({"static": (static_location("/s/", "x/y/"),)}, id="directory-relative"),
        pytest.param({"static": (static_location("/s/", "/x/../../y/"),)}, id="directory-dotdot"),
        pytest.param({"static": (static_location("/s/", "/x/", "/y z/"),)}, id="second-directory-space"),
        pytest.param({"static": (StaticLocation("/s/", f"{ROOT}/apps/{KEY}", ()),)}, id="no-directory"),
        pytest.param({"static": (static_location("/s/", root="/srv/a;b"),)}, id="root-semicolon"),
        pytest.param({"static": (static_location("/s/", root="srv"),)}, id="root-relative"),
        pytest.param({"static": (static_location("/s"),)}, id="location-no-slash"),
        pytest.param({"static": (static_location("/s/{/"),)}, id="location-brace"),
        pytest.param({"static": (static_location("/../"),)}, id="location-dotdot"),
        pytest.param({"static": (static_location("/s/(?<asset>.*)$/"),)}, id="location-regex"),
        pytest.param({"static": (static_location("/s/\\d/"),)}, id="location-backslash"),
        pytest.param({"tls_certificate": "/secrets/a.crt"}, id="cert-without-key"),
        pytest.param(
            {"tls_certificate": "/secrets/a.crt", "tls_certificate_key": "/secrets/a key"}, id="key-space"
        ),
    ],
)
def test_hostile_inputs_bypassing_the_models_are_refused(overrides: dict) -> None:
    render_site(valid_inputs())  # the base itself is fine
    with pytest.raises(SiteConfigError):
        render_site(valid_inputs(**overrides))


# -- the main config ------------------------------------------------------------------


def main_inputs(**overrides: object) -> MainInputs:
    base = dict(prefix=f"{ROOT}/nginx", site_includes=(f"{ROOT}/nginx/conf.d/*.conf",))
    return MainInputs(**{**base, **overrides})  # type: ignore[arg-type]


def test_main_config() -> None:
    statements = parse_config(render_main(main_inputs(worker_user="www-data", worker_shutdown_timeout_seconds=20)))
    top = {s.name: s for s in statements}
    assert set(top) == {"user", "worker_processes", "pid", "error_log", "worker_shutdown_timeout", "events", "http"}
    assert top["user"].args == ["www-data"]
    assert top["worker_processes"].args == ["auto"]
    assert top["pid"].args == [f"{ROOT}/nginx/run/nginx.pid"]
    assert top["error_log"].args[0] == f"{ROOT}/nginx/logs/error.log"
    assert top["worker_shutdown_timeout"].args == ["20s"]
    http = top["http"]
    assert one(http, "include").args == [f"{ROOT}/nginx/conf.d/*.conf"]
    for temp in ("client_body_temp_path", "proxy_temp_path", "fastcgi_temp_path", "uwsgi_temp_path", "scgi_temp_path"):
        assert one(http, temp).args[0].startswith(f"{ROOT}/nginx/temp/")
    assert one(http, "access_log").args[0] == f"{ROOT}/nginx/logs/access.log"
    assert http.find("server") == []  # no catch-all unless ports are given


def test_main_config_worker_group_and_default_servers() -> None:
    text = render_main(
        main_inputs(worker_user="nginx", worker_group="apps", worker_processes=2,
                    listen_address="127.0.0.1", default_http_ports=(8080,), default_https_ports=(8443,))
    )
    top = {s.name: s for s in parse_config(text)}
    assert top["user"].args == ["nginx", "apps"]
    assert top["worker_processes"].args == ["2"]
    (server,) = top["http"].find("server")
    assert [s.args for s in server.find("listen")] == [
        ["127.0.0.1:8080", "default_server"],
        ["127.0.0.1:8443", "ssl", "default_server"],
    ]
    assert one(server, "return").args == ["404"]
    assert one(server, "ssl_reject_handshake").args == ["on"]


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"prefix": "/var/lib/a b"}, id="prefix-space"),
        pytest.param({"worker_user": "www-data;"}, id="user-semicolon"),
        pytest.param({"worker_group": "a b"}, id="group-space"),
        pytest.param({"site_includes": ("/x/*.conf;",)}, id="include-semicolon"),
        pytest.param({"default_http_ports": (0,)}, id="port-zero"),
        pytest.param({"worker_shutdown_timeout_seconds": 0}, id="shutdown-zero"),
    ],
)
def test_main_config_refuses_hostile_values(overrides: dict) -> None:
    with pytest.raises(SiteConfigError):
        render_main(main_inputs(**overrides))


# -- fuzz -----------------------------------------------------------------------------

# Characters nginx treats specially, plus ordinary ones, so hostile strings are near-misses.
HOSTILE = st.text(alphabet="aZ09.-_*/~;{}\"'` \t\n\r$#\\:?&=%@!,()[]|<>^\x00é", max_size=30)


def _from(rule: rules.StringRule) -> st.SearchStrategy[str]:
    return st.from_regex(rule.pattern, fullmatch=True).filter(lambda s: len(s) <= rule.max_length)


# Specs the models should accept (from the rules' own patterns, at any length they allow).
valid_specs = st.fixed_dictionaries(
    {
        "serverNames": st.lists(_from(rules.SERVER_NAME), min_size=1, max_size=20),
        "listenPort": st.integers(1, 65535),
        # Unique and not '/': the models' known gap has its own test above.
        "static": st.lists(
            st.fixed_dictionaries({
                "urlPath": _from(rules.URL_PATH_PREFIX).filter(lambda p: p != "/"),
                "directory": _from(rules.RELATIVE_DIR),
            }),
            max_size=20,
            unique_by=lambda s: s["urlPath"],
        ),
        "clientMaxBodySize": st.one_of(_from(rules.BODY_SIZE), st.sampled_from(["1m", "0", "512k", "999999G"])),
        "tls": st.one_of(st.none(), st.just({"secretName": "tls"})),
    }
)
FIELDS = ("serverNames", "listenPort", "urlPath", "directory", "clientMaxBodySize")


def _inject(args: tuple[dict, str | None, str, int, int]) -> dict:
    """A valid spec with, sometimes, one hostile value put into one field."""
    raw, field, hostile, port, index = args
    raw = {**raw, "serverNames": list(raw["serverNames"]), "static": [dict(s) for s in raw["static"]]}
    if field == "serverNames":
        raw["serverNames"][index % len(raw["serverNames"])] = hostile
    elif field == "listenPort":
        raw["listenPort"] = port
    elif field in ("urlPath", "directory"):
        if not raw["static"]:
            raw["static"].append({"urlPath": "/s/", "directory": "d"})
        raw["static"][index % len(raw["static"])][field] = hostile
    elif field == "clientMaxBodySize":
        raw["clientMaxBodySize"] = hostile
    return raw


specs = st.tuples(
    valid_specs,
    st.one_of(st.none(), st.sampled_from(FIELDS)),
    HOSTILE,
    st.one_of(st.integers(-5, 0), st.integers(65536, 70000)),
    st.integers(0, 19),
).map(_inject)


def _note(outcome: str) -> None:
    """Count outcomes in `--hypothesis-show-statistics` (also called outside hypothesis)."""
    if currently_in_test_context():
        event(outcome)


def model_gap(spec: models.Proxy) -> bool:
    """Static paths the models accept today but no nginx can serve (see the report)."""
    paths = [s.url_path for s in spec.static]
    return "/" in paths or len(paths) != len(set(paths))


def render_spec(raw: dict, tls_files: tuple[Path, Path]) -> tuple[models.Proxy, str] | None:
    """(model, text) if the models accept `raw`; None (and checked refusals) if they refuse."""
    try:
        spec = models.Proxy.model_validate({k: v for k, v in raw.items() if v is not None})
    except ValidationError:
        _note("refused by the models")
        assert_render_refuses(raw)
        return None
    files = tls_files if spec.tls else None
    if model_gap(spec):
        _note("accepted by the models, refused by rendering (known gap)")
        with pytest.raises(SiteConfigError):
            render_site(site_inputs(LAYOUT, KEY, spec, files))
        return None
    _note("accepted and rendered")
    return spec, render_site(site_inputs(LAYOUT, KEY, spec, files))


def assert_render_refuses(raw: dict) -> None:
    """Each value the models refuse is refused by rendering too, when it bypasses the models."""
    for name in raw["serverNames"]:
        if not _accepts(rules.SERVER_NAME, name):
            with pytest.raises(SiteConfigError):
                render_site(valid_inputs(server_names=(name,)))
    if not _accepts(rules.BODY_SIZE, raw["clientMaxBodySize"]):
        with pytest.raises(SiteConfigError):
            render_site(valid_inputs(client_max_body_size=raw["clientMaxBodySize"]))
    if not 1 <= raw["listenPort"] <= 65535:
        with pytest.raises(SiteConfigError):
            render_site(valid_inputs(listen_port=raw["listenPort"]))
    for entry in raw["static"]:
        if not _accepts(rules.URL_PATH_PREFIX, entry["urlPath"]):
            with pytest.raises(SiteConfigError):
                render_site(valid_inputs(static=(static_location(entry["urlPath"]),)))
        if not _accepts(rules.RELATIVE_DIR, entry["directory"]):
            bypass = models.Proxy.model_construct(
                server_names=["a.com"], listen_port=80, tls=None, client_max_body_size="1m",
                static=[models.StaticPath.model_construct(url_path="/s/", directory=entry["directory"])],
            )
            with pytest.raises(SiteConfigError):
                site_inputs(LAYOUT, KEY, bypass)


def _accepts(rule: rules.StringRule, value: str) -> bool:
    try:
        rule.check(value)
    except ValueError:
        return False
    return True


def assert_exact_statements(spec: models.Proxy, text: str, tls_files: tuple[Path, Path]) -> None:
    server = server_of(text)
    expected = SERVER_DIRECTIVES | (TLS_DIRECTIVES if spec.tls else set())
    assert {s.name for s in server.block} == expected
    assert one(server, "listen").args == [f"0.0.0.0:{spec.listen_port}", *(["ssl"] if spec.tls else [])]
    assert one(server, "server_name").args == list(spec.server_names)
    assert one(server, "client_max_body_size").args == [spec.client_max_body_size]
    if spec.tls:
        assert one(server, "ssl_certificate").args == [str(tls_files[0])]
        assert one(server, "ssl_certificate_key").args == [str(tls_files[1])]
    locations = server.find("location")
    assert len(locations) == 1 + 2 * len(spec.static)
    named = {loc.args[0]: loc for loc in locations if loc.args[0].startswith("@")}
    by_length = sorted(spec.static, key=lambda s: -len(s.url_path))
    expected_static = [
        (["~", "^" + s.url_path.replace(".", "[.]") + "(?<asset>.*)$"], [f"{ROOT}/apps/{KEY}"],
         [f"/static-live/site-packages/{s.directory}/$asset", f"/static-previous/site-packages/{s.directory}/$asset",
          "=404"])
        for s in by_length
    ]
    regex = [loc for loc in locations if loc.args[0] == "~"]
    static = [(loc.args, one(loc, "root").args, one(loc, "try_files").args) for loc in regex]
    assert static == expected_static
    for loc in regex:
        assert [s.name for s in loc.block] == ["root", "try_files", "error_page"]
        retry = named.pop(one(loc, "error_page").args[2])
        assert one(retry, "root").args == one(loc, "root").args
        tried = one(loc, "try_files").args
        assert one(retry, "try_files").args == [tried[1], tried[0], "=404"]
    assert not named  # one retry per static location, no other
    assert {s.name for s in app_location(server).block} == APP_LOCATION_DIRECTIVES
    # Only the one constant header value is quoted; nothing from the spec ever is.
    quoted = [a for s in server.walk() for a in s.args if a[:1] in "\"'"]
    assert quoted == ['"close"']


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=specs)
def test_fuzz_accepted_specs_render_exactly_the_expected_statements(raw: dict) -> None:
    rendered = render_spec(raw, TLS_FILES)
    if rendered is not None:
        assert_exact_statements(*rendered, TLS_FILES)


@pytest.fixture(scope="module")
def nginx_check_dir() -> Path:
    if not Path(NGINX).exists():
        pytest.skip("nginx is not installed")
    directory = Path(tempfile.mkdtemp(prefix="nginx-render-"))
    for sub in ("logs", "run", "temp"):
        (directory / sub).mkdir()
    cert, key = self_signed_cert(directory, "fuzz.test")
    (directory / "tls.crt").write_bytes(cert)
    (directory / "tls.key").write_bytes(key)
    yield directory
    shutil.rmtree(directory)


# Few examples: each runs a real `nginx -t` (~50 ms); the structure test above runs many.
@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(raw=valid_specs)
def test_fuzz_accepted_specs_pass_nginx_t(raw: dict, nginx_check_dir: Path) -> None:
    tls_files = (nginx_check_dir / "tls.crt", nginx_check_dir / "tls.key")
    rendered = render_spec(raw, tls_files)
    assume(rendered is not None)
    _, text = rendered
    site = nginx_check_dir / "site.conf"
    site.write_text(text)
    main = nginx_check_dir / "nginx.conf"
    main.write_text(render_main(MainInputs(prefix=str(nginx_check_dir), site_includes=(str(site),))))
    result = nginx_t(main, nginx_check_dir)
    assert result.returncode == 0, result.stderr + "\n" + text


def _longest_name(i: int) -> str:
    label = "a" * 62 + f"{i % 10}"  # 63: the longest label
    return ".".join([label, label, label, "b" * 61])  # 253 characters


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(
            {
                "serverNames": [_longest_name(i) for i in range(19)] + ["*." + "c" * 63],
                "listenPort": 65535,
                "static": [
                    {"urlPath": f"/{i}" + "p" * 196 + "/", "directory": f"{i}/" + "d" * 190}
                    for i in range(10, 30)
                ],
                "clientMaxBodySize": "999999G",
                "tls": {"secretName": "tls"},
            },
            id="largest-everything",
        ),
        pytest.param(
            {"serverNames": ["_"], "listenPort": 1, "static": [], "clientMaxBodySize": "0", "tls": None},
            id="smallest-everything",
        ),
    ],
)
def test_boundary_specs_pass_nginx_t(raw: dict, nginx_check_dir: Path) -> None:
    tls_files = (nginx_check_dir / "tls.crt", nginx_check_dir / "tls.key")
    rendered = render_spec(raw, tls_files)
    assert rendered is not None, "the models accept the boundary spec"
    site = nginx_check_dir / "boundary.conf"
    site.write_text(rendered[1])
    main = nginx_check_dir / "boundary-main.conf"
    main.write_text(render_main(MainInputs(prefix=str(nginx_check_dir), site_includes=(str(site),))))
    result = nginx_t(main, nginx_check_dir)
    assert result.returncode == 0, result.stderr
