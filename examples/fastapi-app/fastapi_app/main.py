"""The ASGI application (`fastapi_app.main:app`), served by gunicorn with uvicorn workers.

Routes mirror webxample's so the same load generator checks both (tests/support/load.py):
`/` and every answer carry `X-Served-By: fastapi-app/<version>`, `POST /echo` returns the
body's sha256, `/slow?seconds=N` waits without blocking the event loop, `/version`,
`/healthz` (500 when FASTAPI_APP_FAIL_HEALTH=1). `/stream?seconds=N&interval=I` is the
long-lived request of the rotation tests: a streaming response whose every line names the
version and pid that serve it and whose last line is `done`, so a client can tell that it
was finished by the revision that started it, not cut off or taken over.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from . import __version__

SERVED_BY = f"fastapi-app/{__version__}"
HEADERS = {"X-Served-By": SERVED_BY}
MAX_SECONDS = 30.0

app = FastAPI(title="fastapi-app", version=__version__)


def _bounded(seconds: float) -> float:
    return min(max(seconds, 0.0), MAX_SECONDS)


@app.get("/")
async def index() -> PlainTextResponse:
    return PlainTextResponse(f"fastapi-app {__version__}\n", headers=HEADERS)


@app.get("/version")
async def version() -> JSONResponse:
    return JSONResponse({"version": __version__, "pid": os.getpid()}, headers=HEADERS)


@app.get("/healthz")
async def healthz() -> PlainTextResponse:
    # Read per request, so a test can start a revision whose health check fails.
    if os.environ.get("FASTAPI_APP_FAIL_HEALTH") == "1":
        print("fastapi-app: /healthz failing on purpose (FASTAPI_APP_FAIL_HEALTH=1)", file=sys.stderr, flush=True)
        return PlainTextResponse("unhealthy\n", status_code=500, headers=HEADERS)
    return PlainTextResponse("ok\n", headers=HEADERS)


@app.get("/slow")
async def slow(seconds: float = 1.0) -> PlainTextResponse:
    seconds = _bounded(seconds)
    await asyncio.sleep(seconds)
    return PlainTextResponse(f"slept {seconds:g}s\n", headers=HEADERS)


@app.post("/echo")
async def echo(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse({"bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()}, headers=HEADERS)


@app.get("/stream")
async def stream(seconds: float = 3.0, interval: float = 0.25) -> StreamingResponse:
    seconds, interval = _bounded(seconds), max(interval, 0.01)

    async def lines() -> AsyncIterator[bytes]:
        count = max(1, int(seconds / interval))
        for i in range(count):
            yield f"{i} {__version__} {os.getpid()}\n".encode()
            await asyncio.sleep(interval)
        yield f"done {count}\n".encode()

    return StreamingResponse(lines(), media_type="text/plain", headers=HEADERS)
