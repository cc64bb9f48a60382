"""The WSGI application (`webxample.app:application`), served by gunicorn under apprelease.

Plain WSGI, no framework, so the sample's only dependency is its server. Each route exists
for a test: `/version` tells which release and process answered (rotations), `/healthz` can
be made to fail (health gate) or to hang in workers started before a given moment (liveness:
a deadlock after the switch), `/slow` holds a request open (graceful stops), `/hog?mb=N`
holds N MiB for a moment (memory limits), `/echo` checks request bodies arrive whole (POSTs
during rotations), `/page` names this release's hashed stylesheet, which nginx serves (static
files that must match the code during rotations).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from . import __version__

SERVED_BY = f"webxample/{__version__}"
STATIC_URL = "/static/"  # where the example AppRelease's proxy.static serves webxample/static/
MAX_SLOW_SECONDS = 10.0
HANG_SECONDS = 120.0
# This worker's start: the app is imported in each gunicorn worker (no --preload).
WORKER_STARTED = time.time()
CHUNK = 64 * 1024

StartResponse = Callable[..., Any]
Response = tuple[str, str, bytes]  # status line, content type, body

REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 500: "Internal Server Error"}


def _text(status: int, body: str) -> Response:
    return f"{status} {REASONS[status]}", "text/plain; charset=utf-8", body.encode()


def _json(status: int, payload: dict[str, Any]) -> Response:
    return f"{status} {REASONS[status]}", "application/json", json.dumps(payload).encode()


def index(environ: dict[str, Any]) -> Response:
    return _text(200, f"webxample {__version__}\n")


def _static_names() -> dict[str, str]:
    """name -> hashed name, from the manifest the build wrote (setup.py); a source checkout has none."""
    manifest = Path(__file__).with_name("static") / "manifest.json"
    return json.loads(manifest.read_text()) if manifest.exists() else {}


STATIC_NAMES = _static_names()  # read once: a release's files never change


def page(environ: dict[str, Any]) -> Response:
    stylesheet = STATIC_URL + STATIC_NAMES.get("app.css", "app.css")
    body = (f'<!doctype html>\n<html><head><link rel="stylesheet" href="{stylesheet}"></head>\n'
            f"<body>webxample {__version__}</body></html>\n")
    return "200 OK", "text/html; charset=utf-8", body.encode()


def version(environ: dict[str, Any]) -> Response:
    return _json(200, {"version": __version__, "pid": os.getpid()})


def _hangs() -> bool:
    """WEBXAMPLE_HANG_FILE names a file; while it exists, workers started before it was last
    touched hang on /healthz (a deadlock); workers started after it (a restart) do not."""
    path = os.environ.get("WEBXAMPLE_HANG_FILE")
    try:
        return bool(path) and os.stat(path).st_mtime >= WORKER_STARTED
    except OSError:
        return False


def healthz(environ: dict[str, Any]) -> Response:
    if _hangs():
        print(f"webxample: /healthz hanging on purpose (WEBXAMPLE_HANG_FILE, worker {os.getpid()})",
              file=sys.stderr, flush=True)
        time.sleep(HANG_SECONDS)
    # Read per request, so a test can start a revision whose health check fails.
    if os.environ.get("WEBXAMPLE_FAIL_HEALTH") == "1":
        print("webxample: /healthz failing on purpose (WEBXAMPLE_FAIL_HEALTH=1)", file=sys.stderr, flush=True)
        return _text(500, "unhealthy (WEBXAMPLE_FAIL_HEALTH=1)\n")
    return _text(200, "ok\n")


def slow(environ: dict[str, Any]) -> Response:
    query = parse_qs(environ.get("QUERY_STRING", ""))
    try:
        seconds = float(query.get("seconds", ["1"])[0])
    except ValueError:
        return _text(400, "seconds must be a number\n")
    seconds = min(max(seconds, 0.0), MAX_SLOW_SECONDS)
    time.sleep(seconds)
    return _text(200, f"slept {seconds:g}s\n")


def hog(environ: dict[str, Any]) -> Response:
    """Hold `mb` MiB (touched, so resident) for half a second: over a memory limit the kernel kills this worker."""
    query = parse_qs(environ.get("QUERY_STRING", ""))
    try:
        mb = int(query.get("mb", ["1"])[0])
    except ValueError:
        return _text(400, "mb must be an integer\n")
    held = b"x" * (min(max(mb, 0), 4096) << 20)
    time.sleep(0.5)
    return _text(200, f"held {len(held) >> 20} MiB\n")


def echo(environ: dict[str, Any]) -> Response:
    stream = environ["wsgi.input"]
    digest = hashlib.sha256()
    count = 0
    length = environ.get("CONTENT_LENGTH") or ""
    # Without a Content-Length (chunked upload) gunicorn's input reads to the end of the body.
    remaining = int(length) if length.isdigit() else None
    while remaining is None or remaining > 0:
        chunk = stream.read(CHUNK if remaining is None else min(CHUNK, remaining))
        if not chunk:
            break
        digest.update(chunk)
        count += len(chunk)
        if remaining is not None:
            remaining -= len(chunk)
    return _json(200, {"bytes": count, "sha256": digest.hexdigest()})


ROUTES: dict[str, tuple[tuple[str, ...], Callable[[dict[str, Any]], Response]]] = {
    "/": (("GET", "HEAD"), index),
    "/page": (("GET", "HEAD"), page),
    "/version": (("GET", "HEAD"), version),
    "/healthz": (("GET", "HEAD"), healthz),
    "/slow": (("GET", "HEAD"), slow),
    "/echo": (("POST",), echo),
    "/hog": (("GET",), hog),
}


def application(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    path = environ.get("PATH_INFO") or "/"
    method = environ.get("REQUEST_METHOD", "GET")
    headers = [("X-Served-By", SERVED_BY)]
    route = ROUTES.get(path)
    if route is None:
        status, content_type, body = _text(404, f"no route for {path}\n")
    elif method not in route[0]:
        status, content_type, body = _text(405, f"{path} accepts {', '.join(route[0])}\n")
        headers.append(("Allow", ", ".join(route[0])))
    else:
        status, content_type, body = route[1](environ)
    headers += [("Content-Type", content_type), ("Content-Length", str(len(body)))]
    start_response(status, headers)
    return [b"" if method == "HEAD" else body]
