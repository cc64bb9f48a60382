"""The WSGI app (`celery_app.web:application`): `POST /enqueue?n=N` queues `record(N)`,
`/version`, `/healthz`; every answer carries `X-Served-By: celery-app/<version>`."""

import json
from urllib.parse import parse_qs

from . import __version__
from .tasks import record

HEADERS = [("X-Served-By", f"celery-app/{__version__}")]


def application(environ, start_response):
    path, method = environ.get("PATH_INFO", "/"), environ.get("REQUEST_METHOD", "GET")
    if path == "/healthz":
        status, body = "200 OK", {"ok": True}
    elif path == "/version":
        status, body = "200 OK", {"version": __version__}
    elif path == "/enqueue" and method == "POST":
        n = int(parse_qs(environ.get("QUERY_STRING", "")).get("n", ["0"])[0])
        record.delay(n)
        status, body = "200 OK", {"queued": n}
    else:
        status, body = "404 Not Found", {"error": "not found"}
    data = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data))), *HEADERS])
    return [data]
