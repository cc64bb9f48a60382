"""What an app claims on a host's nginx, and which claims conflict. Pure.

Called by the host agent (`host/core.py`: this app's spec against the sites live on the
host) and by the operator (`controller/conflicts.py`: AppReleases whose hosts overlap).
nginx itself never refuses two apps claiming the same name: `nginx -t` passes with a warning
and the file that sorts first wins, so the refusal has to happen here.

A claim is one of:
- a **name claim** `(port, server name)`, one per server name. Two name claims conflict
  on the same port when some Host header matches both: equal names, a wildcard and a name
  it matches (`*.example.com` and `a.example.com`: nginx would silently give the exact name
  to the newcomer), or nested wildcards (`*.example.com` and `*.a.example.com`).
  `*.example.com` does not match `example.com` (nginx semantics), so those two coexist.
- a **TLS-mode claim** `(port, tls or plain)`: nginx makes a port TLS for every server block
  when one of them says `listen ... ssl` (seen with nginx 1.22: `nginx -t` passes and the
  plain app answers "400 The plain HTTP request was sent to HTTPS port"). Two apps on one
  port must agree on TLS, whatever their names.

Not claims: static locations live inside one app's server block, so two apps can only share
a location if they share a (port, name), which already conflicts; a TLS Secret's name is
namespaced and two apps may well use one wildcard certificate for different names.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .models import Proxy


@dataclass(frozen=True, order=True)
class Claims:
    """Everything one app holds on a host's nginx."""

    port: int
    names: frozenset[str]
    tls: bool

    @classmethod
    def of(cls, proxy: Proxy) -> Claims:
        return cls(port=proxy.listen_port, names=frozenset(proxy.server_names), tls=proxy.tls is not None)


@dataclass(frozen=True, order=True)
class Conflict:
    """`owner` (namespace/name) already holds what the newcomer asks for; `what` says what."""

    owner: str
    what: str  # 'a.example.com on port 80', 'port 443 with TLS (...)'

    def __str__(self) -> str:
        return f"{self.owner} already serves {self.what}"


def names_overlap(a: str, b: str) -> bool:
    """Whether one Host header could match both nginx server names (lowercase, as the models require)."""
    if a == b:
        return True
    wild_a, wild_b = a.startswith("*."), b.startswith("*.")
    if wild_a and wild_b:
        base_a, base_b = a[1:], b[1:]  # '.example.com'
        return base_a.endswith(base_b) or base_b.endswith(base_a)
    if wild_a:
        return b.endswith(a[1:])
    if wild_b:
        return a.endswith(b[1:])
    return False


def conflicts(mine: Claims, others: Mapping[str, Claims]) -> list[Conflict]:
    """What of `mine` the apps in `others` (owner -> their claims) already hold, in owner order."""
    found: list[Conflict] = []
    for owner, theirs in sorted(others.items()):
        if theirs.port != mine.port:
            continue
        pairs = sorted((m, t) for m in mine.names for t in theirs.names if names_overlap(m, t))
        if pairs:
            shown = ", ".join(m if m == t else f"{m} (as {t})" for m, t in pairs)
            found.append(Conflict(owner, f"{shown} on port {mine.port}"))
        elif theirs.tls != mine.tls:
            mode = "TLS" if theirs.tls else "plain HTTP"
            found.append(Conflict(owner, f"port {mine.port} with {mode} (nginx sets TLS per port, not per server name)"))
    return found


def describe(conflicts_found: Iterable[Conflict]) -> str:
    """One line for a status message: 'Conflict: ns/app already serves a.example.com on port 80'."""
    return "Conflict: " + "; ".join(str(c) for c in conflicts_found)
