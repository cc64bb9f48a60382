"""A local package index for tests and the demo: example apps' wheels plus real registry releases.

There is no internet here but the package registries, and the sample app is not published,
so tests build webxample wheels at any version (`build_webxample_wheel`), fetch gunicorn's
wheel once into a cache (`fetch_registry_wheels`), and serve both as a PEP 503 "simple"
index over HTTP on 127.0.0.1 (`LocalIndex`), which logs every request so a test can tell
whether a build downloaded anything. `start_webxample_index` does all three; the session
fixture `package_index` wraps it for pytest. `start_real_index` serves real releases (gunicorn
20.1 to the newest, FastAPI + uvicorn + uvicorn-worker, Django, Celery with redis-py;
`REAL_REQUIREMENT_SETS`, fetched once into the same cache) with the example apps built against
them (`examples/fastapi-app`, `examples/django-app`, `examples/celery-app`, webxample without
its gunicorn pin): the session fixture `real_index`.
Nothing but the fixtures needs pytest, so the demo script (`hack/`) can use the same functions.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

REPO = Path(__file__).resolve().parents[2]
WEBXAMPLE_SOURCE = REPO / "examples" / "webxample"
GUNICORN_REQUIREMENT = "gunicorn==27.0.1"
DEFAULT_WHEEL_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "apprelease" / "wheels"
WEBXAMPLE_VERSIONS = ("1.0.0", "2.0.0", "3.0.0")
FASTAPI_SOURCE = REPO / "examples" / "fastapi-app"
DJANGO_SOURCE = REPO / "examples" / "django-app"
CELERY_SOURCE = REPO / "examples" / "celery-app"

# Real releases from the registry for the real-app tests (`start_real_index`), downloaded once
# into the wheel cache and reused offline after that. Each set is resolved on its own: one pip
# resolution cannot hold two gunicorn pins. "Newest" is pinned too, so a new upload never
# changes what a test run installs; bump it on purpose.
GUNICORN_MATRIX = ("20.1.0", "21.2.0", "22.0.0", "23.0.0", "27.0.1")
# gunicorn 20.x imports pkg_resources, which setuptools 82 removed (host/servers.py).
GUNICORN_EXTRA = {"20.1.0": ("setuptools<82",)}
FASTAPI_REQUIREMENTS = ("fastapi==0.165.0", "uvicorn==0.54.0", "uvicorn-worker==0.4.0", "gunicorn==23.0.0")
DJANGO_REQUIREMENTS = ("Django==5.2.19", "gunicorn==23.0.0")
# redis-py needs async-timeout on Pythons before 3.11.3 (Debian 12's is 3.11.2), which the
# downloading interpreter may not be: fetched explicitly so the hosts' resolution finds it.
CELERY_REQUIREMENTS = ("celery[redis]==5.7.0", "async-timeout==5.0.1", "gunicorn==23.0.0")
REAL_REQUIREMENT_SETS: tuple[tuple[str, ...], ...] = (
    *((f"gunicorn=={version}", *GUNICORN_EXTRA.get(version, ())) for version in GUNICORN_MATRIX),
    FASTAPI_REQUIREMENTS,
    DJANGO_REQUIREMENTS,
    CELERY_REQUIREMENTS,
)

_SOURCE_VERSION = re.compile(r'^__version__ = "([^"]+)"$', re.MULTILINE)
_DEPENDENCIES = re.compile(r"^dependencies = \[.*\]$", re.MULTILINE)


def _uv() -> str:
    """The uv installed next to this interpreter (the dev venv), else one on PATH."""
    beside = Path(sys.executable).with_name("uv")
    found = str(beside) if beside.exists() else shutil.which("uv")
    if found is None:
        raise RuntimeError("uv is needed to build the webxample wheel: install the 'test' extra")
    return found


def _registry_env() -> dict[str, str]:
    # Building needs setuptools from the registry (build isolation); the machine's pip
    # settings (PIP_FIND_LINKS, ...) mean nothing to uv, and uv config files are ignored.
    return {k: v for k, v in os.environ.items() if not k.startswith("UV_")}


def build_example_wheel(
    source: Path,
    version: str,
    out_dir: Path,
    *,
    version_files: Sequence[str] = (),
    dependencies: Sequence[str] | None = None,
) -> Path:
    """Build the example package at `source` as a wheel at `version` into `out_dir`.

    The source is copied to a temp dir and its one version string rewritten (the package's
    `__version__`, read by setuptools, and `version_files`, relative paths that mention it), so
    wheels at different versions differ in name, metadata and content. `dependencies`, when
    given, replaces the one-line `dependencies = [...]` of its pyproject.toml.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"{source.name}-src-") as tmp:
        src = Path(tmp) / source.name
        shutil.copytree(source, src, ignore=shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__"))
        inits = [p for p in src.glob("*/__init__.py") if _SOURCE_VERSION.search(p.read_text())]
        if len(inits) != 1:
            raise RuntimeError(f"expected one package with a __version__ line under {source}, found {inits}")
        old = _SOURCE_VERSION.search(inits[0].read_text()).group(1)  # type: ignore[union-attr]
        for path in [inits[0], *(src / f for f in version_files)]:
            path.write_text(path.read_text().replace(old, version))
        if dependencies is not None:
            pyproject = src / "pyproject.toml"
            text, count = _DEPENDENCIES.subn(f"dependencies = {json.dumps(list(dependencies))}", pyproject.read_text())
            if count != 1:
                raise RuntimeError(f"no one-line dependencies = [...] in {pyproject}")
            pyproject.write_text(text)
        dist = Path(tmp) / "dist"
        proc = subprocess.run(
            [_uv(), "build", "--wheel", "--no-config", "--python", sys.executable, "--out-dir", str(dist), str(src)],
            env=_registry_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=300,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"building {source.name} {version} failed:\n{proc.stdout[-3000:]}")
        (wheel,) = dist.glob("*.whl")
        target = out_dir / wheel.name
        shutil.move(str(wheel), target)
    return target


def build_webxample_wheel(version: str, out_dir: Path, dependencies: Sequence[str] | None = None) -> Path:
    """Build examples/webxample as a wheel at `version` into `out_dir`; return the wheel's path."""
    return build_example_wheel(
        WEBXAMPLE_SOURCE, version, out_dir, version_files=["webxample/static/hello.txt", "webxample/static/app.css"],
        dependencies=dependencies,
    )


def fetch_registry_wheels(
    requirements: Sequence[str] = (GUNICORN_REQUIREMENT,), cache_dir: Path = DEFAULT_WHEEL_CACHE
) -> list[Path]:
    """Wheels of `requirements` and their dependencies, downloaded once into `cache_dir`.

    Uses pip with the machine's own settings: that is how this machine reaches the registry.
    A manifest per requirement set records the files, so later calls touch no network.
    """
    cache_dir = Path(cache_dir)
    key = hashlib.sha256("\n".join(sorted(requirements)).encode()).hexdigest()[:16]
    manifest = cache_dir / f"manifest-{key}.json"
    if manifest.exists():
        names = json.loads(manifest.read_text())["files"]
        paths = [cache_dir / name for name in names]
        if all(p.exists() for p in paths):
            return paths
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="download-", dir=cache_dir) as tmp:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--dest", tmp, *requirements],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=600,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"pip download {' '.join(requirements)} failed:\n{proc.stdout[-3000:]}")
        names = sorted(p.name for p in Path(tmp).iterdir())
        for name in names:
            os.replace(Path(tmp) / name, cache_dir / name)
    # Written whole then renamed: a parallel test run may be reading it.
    partial = manifest.with_suffix(f".{os.getpid()}.tmp")
    partial.write_text(json.dumps({"requirements": sorted(requirements), "files": names}))
    os.replace(partial, manifest)
    return [cache_dir / name for name in names]


def normalize(name: str) -> str:
    """PEP 503 project name normalization."""
    return re.sub(r"[-_.]+", "-", name).lower()


def project_of(filename: str) -> str:
    """Normalized project name of a wheel or sdist file name."""
    return normalize(filename.split("-", 1)[0])


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class IndexRequest:
    method: str
    path: str
    status: int


class LocalIndex:
    """A PEP 503 simple index over HTTP on 127.0.0.1, serving the wheels in `directory`.

    Pages are computed per request, so wheels copied in later are served too.
    `/simple/` lists projects, `/simple/<project>/` links files with `#sha256=` fragments,
    `/files/<name>` serves a file. Every request is appended to `requests`. `delay_seconds`
    makes each answer wait, like an index across the internet (a build that takes a while).
    """

    def __init__(self, directory: Path, port: int = 0, delay_seconds: float = 0.0,
                 basic_auth: tuple[str, str] | None = None):
        self.directory = Path(directory)
        # (user, password): every request without them is answered 401, as a private index does.
        self.basic_auth = basic_auth
        self.port_wanted = port
        self.delay_seconds = delay_seconds
        self._lock = threading.Lock()
        self._requests: list[IndexRequest] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle
    def start(self) -> LocalIndex:
        index = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                index._serve(self, head=False)

            def do_HEAD(self) -> None:  # noqa: N802
                index._serve(self, head=True)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass  # the request log below replaces stderr lines

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port_wanted), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="local-index", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            assert self._thread is not None
            self._thread.join(timeout=10)
            self._server = None

    def __enter__(self) -> LocalIndex:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- addresses
    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the index is not running")
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        """The index URL for `--index-url` / `source.indexUrl`."""
        return f"http://127.0.0.1:{self.port}/simple/"

    def file_url(self, wheel: Path | str) -> str:
        """Direct URL of one file of the index (for `source.wheel.url`)."""
        return f"http://127.0.0.1:{self.port}/files/{Path(wheel).name}"

    # -- request log
    @property
    def requests(self) -> list[IndexRequest]:
        with self._lock:
            return list(self._requests)

    def downloads(self) -> list[str]:
        """Names of files served (not index pages)."""
        return [r.path.rsplit("/", 1)[-1] for r in self.requests if r.path.startswith("/files/") and r.status == 200]

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    # -- serving
    def _files(self) -> list[Path]:
        return sorted(p for p in self.directory.iterdir() if p.is_file() and p.name.endswith((".whl", ".tar.gz")))

    def _page(self, title: str, links: list[tuple[str, str]]) -> bytes:
        body = "".join(f'<a href="{html.escape(href)}">{html.escape(text)}</a><br/>\n' for href, text in links)
        head = f"<!DOCTYPE html>\n<html><head><title>{html.escape(title)}</title></head><body>\n"
        return f"{head}{body}</body></html>\n".encode()

    def _respond(self, path: str) -> tuple[int, str, bytes | Path]:
        parts = [unquote(p) for p in path.split("?", 1)[0].split("/") if p]
        files = self._files()
        if parts == ["simple"]:
            projects = sorted({project_of(f.name) for f in files})
            return 200, "text/html", self._page("Simple index", [(f"{p}/", p) for p in projects])
        if len(parts) == 2 and parts[0] == "simple":
            wanted = normalize(parts[1])
            mine = [f for f in files if project_of(f.name) == wanted]
            if not mine:
                return 404, "text/plain", b"no such project\n"
            links = [(f"/files/{f.name}#sha256={sha256_of(f)}", f.name) for f in mine]
            return 200, "text/html", self._page(f"Links for {wanted}", links)
        if len(parts) == 2 and parts[0] == "files":
            match = [f for f in files if f.name == parts[1]]
            if match:
                return 200, "application/octet-stream", match[0]
        return 404, "text/plain", b"not found\n"

    def _serve(self, handler: BaseHTTPRequestHandler, *, head: bool) -> None:
        if self.delay_seconds:
            time.sleep(self.delay_seconds)
        if self.basic_auth is not None:
            expected = "Basic " + base64.b64encode(":".join(self.basic_auth).encode()).decode()
            if handler.headers.get("Authorization") != expected:
                with self._lock:
                    self._requests.append(IndexRequest(handler.command, handler.path, 401))
                handler.send_response(HTTPStatus.UNAUTHORIZED)
                handler.send_header("WWW-Authenticate", 'Basic realm="private index"')
                handler.send_header("Content-Length", "0")
                handler.end_headers()
                return
        status, content_type, body = self._respond(handler.path)
        with self._lock:
            self._requests.append(IndexRequest(handler.command, handler.path, status))
        data = body.read_bytes() if isinstance(body, Path) else body
        handler.send_response(HTTPStatus(status))
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        if not head:
            handler.wfile.write(data)


@dataclass
class WebxampleIndex:
    """A running LocalIndex with webxample at several versions and gunicorn's wheels."""

    index: LocalIndex
    wheels: dict[str, Path] = field(default_factory=dict)  # webxample version -> wheel

    @property
    def url(self) -> str:
        return self.index.url

    def wheel_url(self, version: str) -> str:
        return self.index.file_url(self.wheels[version])

    def wheel_sha256(self, version: str) -> str:
        return sha256_of(self.wheels[version])

    def stop(self) -> None:
        self.index.stop()


def start_webxample_index(
    directory: Path, versions: Sequence[str] = WEBXAMPLE_VERSIONS, cache_dir: Path = DEFAULT_WHEEL_CACHE,
    port: int = 0,
) -> WebxampleIndex:
    """Build webxample at `versions` into `directory`, add gunicorn's wheels, serve it all."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for wheel in fetch_registry_wheels(cache_dir=cache_dir):
        shutil.copy2(wheel, directory / wheel.name)
    wheels = {version: build_webxample_wheel(version, directory) for version in versions}
    return WebxampleIndex(index=LocalIndex(directory, port).start(), wheels=wheels)


@dataclass
class RealIndex:
    """A running LocalIndex with real registry releases and the example apps built against them.

    `webxample` here depends on `gunicorn>=20.1` (not the pin of the default index), so a spec
    chooses its gunicorn by adding `gunicorn==X` to its requirements, as an app that pins
    its server does.
    """

    index: LocalIndex
    wheels: dict[str, Path] = field(default_factory=dict)  # "<project>-<version>" -> wheel

    @property
    def url(self) -> str:
        return self.index.url

    def stop(self) -> None:
        self.index.stop()


def start_real_index(
    directory: Path,
    *,
    fastapi_versions: Sequence[str] = ("1.0.0", "2.0.0"),
    cache_dir: Path = DEFAULT_WHEEL_CACHE,
    port: int = 0,
) -> RealIndex:
    """Fetch REAL_REQUIREMENT_SETS once (cached), build the example apps, serve it all."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for requirements in REAL_REQUIREMENT_SETS:
        for wheel in fetch_registry_wheels(requirements, cache_dir=cache_dir):
            if not (directory / wheel.name).exists():
                shutil.copy2(wheel, directory / wheel.name)
    wheels = {"webxample-1.0.0": build_webxample_wheel("1.0.0", directory, dependencies=["gunicorn>=20.1"])}
    for version in fastapi_versions:
        wheels[f"fastapi-app-{version}"] = build_example_wheel(FASTAPI_SOURCE, version, directory)
    for version in ("1.0.0", "2.0.0"):
        wheels[f"django-app-{version}"] = build_example_wheel(DJANGO_SOURCE, version, directory)
        wheels[f"celery-app-{version}"] = build_example_wheel(CELERY_SOURCE, version, directory)
    return RealIndex(index=LocalIndex(directory, port).start(), wheels=wheels)


def main() -> None:
    """`python tests/support/pypi.py --dir D --port P`: build and serve until SIGTERM (the demo)."""
    import argparse
    import signal

    parser = argparse.ArgumentParser(description="serve webxample's wheels as a local PEP 503 index")
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--version", action="append", dest="versions")
    args = parser.parse_args()
    served = start_webxample_index(args.dir, args.versions or WEBXAMPLE_VERSIONS, port=args.port)
    print(f"serving {served.url} ({', '.join(served.wheels)})", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    served.stop()


if __name__ == "__main__":
    main()
