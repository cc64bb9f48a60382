"""Pure rendering of the host's nginx configuration: builders return text, nothing is written.

`site_inputs` turns one app's validated `Proxy` spec into `SiteInputs` (absolute paths under the
agent root), `render_site` renders that app's server block (`conf.d/<key>.conf`), `render_main`
renders the host's `nginx.conf`. The `Nginx` applier (`nginx.py`) and the agent's core call
these; unit tests check their output statement by statement.

Every value reaching a template is checked again here, although the pydantic models already
refuse quotes, braces, semicolons and whitespace: a value that nginx would read as more than
one token, a variable (`$`), a comment (`#`) or a block would let a spec inject directives into
the host's proxy. Nothing is quoted; anything outside a plain character set is refused with
`SiteConfigError`, so the rendered text never depends on nginx's quoting rules.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import jinja2

from ...api import models, rules
from ...api.claims import Claims
from ..layout import HostLayout

SITE_TEMPLATE = "nginx_site.conf.j2"
MAIN_TEMPLATE = "nginx.conf.j2"

# Characters allowed in an absolute filesystem path that reaches nginx unquoted: no
# whitespace, quotes, ';', '{', '}', '$' (variables), '#' (comments), '\\' (escapes).
_SAFE_PATH = re.compile(r"^(/[A-Za-z0-9._~+@,=-]+)+/?$")
APP_KEY = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?_[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_POSIX_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


class SiteConfigError(ValueError):
    """A value cannot be rendered safely into an nginx config (a bug or a bypassed model)."""


@dataclass(frozen=True)
class StaticLocation:
    """A URL prefix served by nginx from the first of `directories` that holds the file.

    `directories` are relative to `root` (an absolute directory) and, like `url_path`, begin
    and end with '/': the rest of the request's path after `url_path` is appended to each in
    turn (nginx `try_files`), so the first one with that file answers. A 404 is tried once
    more in reverse order (a named location), since a link renamed between nginx's check and
    its open makes a file that is there a 404 (the template says what was measured).
    """

    url_path: str
    root: str
    directories: tuple[str, ...]

    @property
    def url_pattern(self) -> str:
        """`url_path` as an anchored regex. `check_site` holds it to `rules.URL_PATH_PREFIX`,
        whose only regex character is '.', written `[.]` so the text holds no backslash."""
        return "^" + self.url_path.replace(".", "[.]")


@dataclass(frozen=True)
class SiteInputs:
    """Everything one app's server block depends on; equal inputs render equal text."""

    key: str
    listen_port: int
    server_names: tuple[str, ...]
    live_socket: str
    static: tuple[StaticLocation, ...] = ()
    client_max_body_size: str = "1m"
    tls_certificate: str | None = None
    tls_certificate_key: str | None = None
    # A host-level setting of the nginx backend, not part of the app's spec.
    listen_address: str = "0.0.0.0"


@dataclass(frozen=True)
class MainInputs:
    """The host's nginx.conf: prefix-relative state, the workers' identity and the includes."""

    prefix: str
    worker_user: str = "www-data"
    worker_group: str | None = None
    worker_processes: int | None = None  # None: one per core ("auto")
    worker_shutdown_timeout_seconds: int = 30
    # Glob or files holding the sites: the live config includes `conf.d/*.conf`; a candidate
    # checked by `nginx -t` names the other live files and the staged one explicitly.
    site_includes: tuple[str, ...] = ()
    # Address and ports where a catch-all server answers unknown Host headers (404) and
    # refuses TLS handshakes for unknown SNI names, so no app is ever served by accident.
    listen_address: str = "0.0.0.0"
    default_http_ports: tuple[int, ...] = ()
    default_https_ports: tuple[int, ...] = ()

    @property
    def pid_file(self) -> str:
        return f"{self.prefix}/run/nginx.pid"

    @property
    def error_log(self) -> str:
        return f"{self.prefix}/logs/error.log"

    @property
    def access_log(self) -> str:
        return f"{self.prefix}/logs/access.log"

    @property
    def temp_dir(self) -> str:
        return f"{self.prefix}/temp"


def site_inputs(
    layout: HostLayout,
    key: str,
    proxy: models.Proxy,
    tls_files: tuple[Path, Path] | None = None,
    *,
    listen_address: str = "0.0.0.0",
) -> SiteInputs:
    """What `render_site` needs for app `key`, from its validated proxy spec.

    Static files resolve through two links in `apps/<key>/`: `static-live/site-packages/<dir>/`
    first, then `static-previous/site-packages/<dir>/`. The agent points `static-live` at the
    new build just before the switch and `static-previous` at the build it named before
    (host/plan.py `point-static`), so during and after a rotation a page rendered by either
    revision finds its hashed assets; nginx resolves the links per request, so a rotation never
    needs a reload. `tls_files` are the (certificate, key) paths from `Nginx.write_tls`.
    """
    if (proxy.tls is None) != (tls_files is None):
        raise SiteConfigError(
            f"{key}: proxy.tls is {'set' if proxy.tls else 'unset'} but TLS files were "
            f"{'not ' if tls_files is None else ''}given"
        )
    app = layout.app(key)
    slots = [app.static_live.relative_to(app.base), app.static_previous.relative_to(app.base)]
    static = []
    for entry in proxy.static:
        _check_rule(rules.RELATIVE_DIR, entry.directory, "static directory")
        directories = tuple(f"/{slot}/site-packages/{entry.directory}/" for slot in slots)
        static.append(StaticLocation(entry.url_path, str(app.base), directories))
    cert, cert_key = (str(tls_files[0]), str(tls_files[1])) if tls_files else (None, None)
    return SiteInputs(
        key=key,
        listen_port=proxy.listen_port,
        server_names=tuple(proxy.server_names),
        live_socket=str(app.live_socket),
        static=tuple(static),
        client_max_body_size=proxy.client_max_body_size,
        tls_certificate=cert,
        tls_certificate_key=cert_key,
        listen_address=listen_address,
    )


def render_site(inputs: SiteInputs) -> str:
    """One app's server block; raises `SiteConfigError` on any value unsafe for nginx."""
    check_site(inputs)
    # Regex locations are tried in the order written and the first match wins: longest prefix
    # first keeps prefix semantics (/static/img/ before /static/) whatever the spec's order.
    static = sorted(inputs.static, key=lambda location: -len(location.url_path))
    return _template(SITE_TEMPLATE).render(
        site=inputs,
        static=static,
        listen=_listen(inputs.listen_address, inputs.listen_port),
        tls=inputs.tls_certificate is not None,
    )


def render_main(inputs: MainInputs) -> str:
    """The host's nginx.conf; raises `SiteConfigError` on any value unsafe for nginx."""
    check_main(inputs)
    return _template(MAIN_TEMPLATE).render(
        main=inputs,
        worker_processes=inputs.worker_processes or "auto",
        default_http=[_listen(inputs.listen_address, p) for p in inputs.default_http_ports],
        default_https=[_listen(inputs.listen_address, p) for p in inputs.default_https_ports],
    )


_LISTEN = re.compile(r"^\s*listen\s+(\S+?)((?:\s+[a-z_=0-9]+)*)\s*;", re.MULTILINE)
_SERVER_NAME = re.compile(r"^\s*server_name\s+([^;]+);", re.MULTILINE)


def site_claims(text: str) -> Claims | None:
    """What a live site file claims on the host: its port, server names and TLS mode.

    The inverse of `render_site` for the directives that matter to other apps (tested as a
    round trip); a file this agent did not write is read the same way, as far as it goes.
    None when the file holds no listen or no server_name (it claims nothing nginx would route).
    """
    listens = _LISTEN.findall(text)
    names = [n for found in _SERVER_NAME.findall(text) for n in found.split()]
    if not listens or not names:
        return None
    address, options = listens[0]
    port = address.rsplit(":", 1)[-1]
    if not port.isdigit():
        return None
    return Claims(port=int(port), names=frozenset(names), tls="ssl" in options.split())


def check_site(inputs: SiteInputs) -> None:
    """Refuse anything nginx would read as more than one plain token."""
    if not APP_KEY.fullmatch(inputs.key):
        raise SiteConfigError(f"app key {inputs.key!r} is not '<namespace>_<app>' of DNS labels")
    _check_port(inputs.listen_port, "listen port")
    _listen(inputs.listen_address, inputs.listen_port)
    if not inputs.server_names:
        raise SiteConfigError(f"{inputs.key}: at least one server name is needed")
    for name in inputs.server_names:
        _check_rule(rules.SERVER_NAME, name, "server name")
    _check_path(inputs.live_socket, "live socket")
    _check_rule(rules.BODY_SIZE, inputs.client_max_body_size, "client_max_body_size")
    if (inputs.tls_certificate is None) != (inputs.tls_certificate_key is None):
        raise SiteConfigError(f"{inputs.key}: TLS needs both a certificate and a key")
    for path in (inputs.tls_certificate, inputs.tls_certificate_key):
        if path is not None:
            _check_path(path, "TLS file")
    seen: set[str] = set()
    for location in inputs.static:
        _check_rule(rules.URL_PATH_PREFIX, location.url_path, "static url path")
        # `location /` is the app itself; two equal prefixes are a duplicate location.
        # The models do not (yet) refuse these, so say clearly why nginx would.
        if location.url_path == "/":
            raise SiteConfigError(f"{inputs.key}: static url path '/' would hide the app")
        if location.url_path in seen:
            raise SiteConfigError(f"{inputs.key}: static url path {location.url_path!r} given twice")
        seen.add(location.url_path)
        _check_path(location.root, "static root")
        if not location.directories:
            raise SiteConfigError(f"{inputs.key}: static url path {location.url_path!r} has no directory")
        for directory in location.directories:
            _check_path(directory, "static directory")
            # Prefix and directory both end with '/': the asset is appended as it was after the prefix.
            if not directory.endswith("/"):
                raise SiteConfigError(f"static directory {directory!r} must end with '/'")


def check_main(inputs: MainInputs) -> None:
    _check_path(inputs.prefix, "nginx prefix")
    if not _POSIX_NAME.fullmatch(inputs.worker_user):
        raise SiteConfigError(f"worker user {inputs.worker_user!r} is not a POSIX user name")
    if inputs.worker_group is not None and not _POSIX_NAME.fullmatch(inputs.worker_group):
        raise SiteConfigError(f"worker group {inputs.worker_group!r} is not a POSIX group name")
    if inputs.worker_processes is not None and not 1 <= inputs.worker_processes <= 256:
        raise SiteConfigError(f"worker_processes {inputs.worker_processes} is out of range")
    if not 1 <= inputs.worker_shutdown_timeout_seconds <= 3600:
        raise SiteConfigError("worker_shutdown_timeout must be 1..3600 seconds")
    for include in inputs.site_includes:
        # A glob is allowed here ('*'); the prefix check covers the rest.
        _check_path(include.replace("*", "x"), "site include")
    for port in (*inputs.default_http_ports, *inputs.default_https_ports):
        _listen(inputs.listen_address, port)


def _check_rule(rule: rules.StringRule, value: object, what: str) -> None:
    if not isinstance(value, str):
        raise SiteConfigError(f"{what} must be a string, not {type(value).__name__}")
    try:
        rule.check(value)
    except ValueError as exc:
        raise SiteConfigError(f"{what}: {exc}") from None


def _check_path(value: object, what: str) -> None:
    if not isinstance(value, str) or not _SAFE_PATH.fullmatch(value):
        raise SiteConfigError(
            f"{what} {value!r} must be an absolute path of letters, digits and '._~+@,=-'"
        )
    if any(part in (".", "..") for part in value.split("/")):
        raise SiteConfigError(f"{what} {value!r} must not contain '.' or '..' segments")


def _check_port(port: object, what: str) -> None:
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise SiteConfigError(f"{what} {port!r} must be an integer from 1 to 65535")


def _listen(address: str, port: int) -> str:
    """`listen` argument for an IP literal and port: 0.0.0.0:80, [::]:443."""
    _check_port(port, "listen port")
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise SiteConfigError(f"listen address {address!r} is not an IP address") from None
    return f"[{ip.compressed}]:{port}" if ip.version == 6 else f"{ip.compressed}:{port}"


@cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("apprelease", "templates"),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # nginx syntax, not HTML: values are validated above instead
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _template(name: str) -> jinja2.Template:
    return _environment().get_template(name)

