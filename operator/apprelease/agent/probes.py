"""/healthz and /readyz for the in-cluster agent, on a tiny stdlib HTTP server.

Started by `apprelease agent run --health-port N` (agent/cli.py) for the DaemonSet's
liveness and readiness probes. Each check is a callable returning (ok, message), so this
module knows nothing of the agent's threads: `cluster.Health` provides them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger(__name__)

Check = Callable[[], tuple[bool, str]]


class ProbeServer:
    """Serves GET /healthz and /readyz: 200 with "ok", or 503 with the reason."""

    def __init__(self, address: str, port: int, checks: dict[str, Check]):
        routes = {f"/{name}": check for name, check in checks.items()}

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                check = routes.get(self.path.split("?", 1)[0])
                if check is None:
                    self._answer(404, "not found")
                    return
                ok, message = check()
                self._answer(200 if ok else 503, message)

            def _answer(self, code: int, text: str) -> None:
                body = (text + "\n").encode()
                self.send_response(code)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
                log.debug("probe %s", format % args)

        self._server = ThreadingHTTPServer((address, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="probes", daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> None:
        self._thread.start()
        log.info("health probes on port %d: /healthz /readyz", self.port)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
