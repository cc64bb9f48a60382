"""A tiny WSGI app in a real venv, and HTTP over a unix socket: for supervisor tests.

`build_tiny_venv` makes a venv from Debian's /usr/bin/python3.11 (the app user must be able
to exec it) with gunicorn and a one-file app module `tinyapp` in its site-packages, in a
directory every user can read: the test's app user imports it from there.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

APP_PYTHON = "/usr/bin/python3.11"
GUNICORN = "gunicorn==27.0.1"
ENTRYPOINT = "tinyapp:app"

TINYAPP = '''
"""/ answers ok and the pid; /slow?s=N sleeps N seconds first."""
import os
import time


def app(environ, start_response):
    if environ["PATH_INFO"] == "/slow":
        time.sleep(float(environ.get("QUERY_STRING", "s=2").split("=")[1]))
    body = f"ok {os.getpid()}\\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
'''


def build_tiny_venv(target: Path) -> Path:
    """A venv at `target` with gunicorn and tinyapp; readable by every user."""
    uv = Path(sys.executable).parent / "uv"
    subprocess.run([str(uv), "venv", "--quiet", "--python", APP_PYTHON, str(target)], check=True)
    subprocess.run(
        [str(uv), "pip", "install", "--quiet", "--python", str(target / "bin" / "python"), GUNICORN],
        check=True,
    )
    [site] = (target / "lib").glob("python3.*/site-packages")
    (site / "tinyapp.py").write_text(TINYAPP)
    for path in [target, *target.rglob("*")]:
        if not path.is_symlink():
            os.chmod(path, path.stat().st_mode | 0o444 | (0o111 if path.is_dir() else 0))
    return target


def http_get(sock: Path, path: str = "/", timeout: float = 10.0) -> tuple[int, str]:
    """(status, body) of one HTTP/1.0 GET through a unix socket."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        conn.connect(str(sock))
        conn.sendall(f"GET {path} HTTP/1.0\r\nHost: tiny\r\n\r\n".encode())
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    head, _, body = data.decode().partition("\r\n\r\n")
    return int(head.split()[1]), body


def wait_serving(sock: Path, timeout: float = 20.0) -> str:
    """Body of the first 200 from `sock`, retrying while the app boots."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            status, body = http_get(sock, timeout=5)
            if status == 200:
                return body
            last = status
        except OSError as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"{sock} did not answer 200 within {timeout}s (last: {last!r})")


def proc_uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for pid {pid}")


def proc_environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.decode().split("=", 1) for item in raw.split(b"\0") if item)


def pids_of_uid(uid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if proc_uid(int(entry.name)) == uid:
                    pids.append(int(entry.name))
            except (FileNotFoundError, ProcessLookupError):
                continue  # exited while we looked
    return pids
