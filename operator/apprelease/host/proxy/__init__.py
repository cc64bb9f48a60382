"""The proxy backend of the host agent: the host's one nginx in front of every app.

`render` builds config text (pure); `nginx.Nginx` applies it: validates with `nginx -t`,
swaps files atomically, reloads gracefully and rolls back on failure. The agent's core calls
`Nginx` only when an app's proxy spec changes; rotations switch `run/live.sock` instead.
"""

from .nginx import Nginx, ProxyConfigRejected, ProxyError, ProxyReloadFailed
from .render import (
    MainInputs,
    SiteConfigError,
    SiteInputs,
    StaticLocation,
    render_main,
    render_site,
    site_claims,
    site_inputs,
)

__all__ = [
    "MainInputs",
    "Nginx",
    "ProxyConfigRejected",
    "ProxyError",
    "ProxyReloadFailed",
    "SiteConfigError",
    "SiteInputs",
    "StaticLocation",
    "render_main",
    "render_site",
    "site_claims",
    "site_inputs",
]
