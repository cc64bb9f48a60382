"""Builds run no package code as root, and one app's build cannot touch another app.

Covers, with a real hostile source distribution served from a local index and built by the
real builder (uv, then pip): its build backend runs with the app's build user (non-zero uid
and gid, no supplementary groups); every write it tries outside its own build dir fails
(/etc, root's home, another app's venv and cache, the agent's supervisor and nginx configs);
what it writes to /tmp stays in a private tmpfs; a daemon it forks does not outlive the
build; the other app's venv and cache are byte-identical afterwards; the sealed release is
root-owned and read-only for everyone else; and the same package is installed and works.
Also: `source.onlyBinary` refuses that sdist with an error naming it, and installs wheels; links
the build plants in its build dir under the names root writes afterwards (release.json,
bytecode.json) are replaced, never followed; an agent umask of 077 still builds (agent root under
/var/lib and under /tmp).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pwd
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import pytest
from support.pypi import LocalIndex, WebxampleIndex

from apprelease.api import identity
from apprelease.api.models import HostReleaseSpec, Proxy, ReleaseTemplate, Source
from apprelease.host.builder import BuildFailed, ensure_release
from apprelease.host.executor import LocalExecutor
from apprelease.host.layout import HostLayout, app_key
from apprelease.host.users import build_user_name, ensure_build_user

pytestmark = pytest.mark.integration

UV = str(Path(sys.executable).with_name("uv"))
NAMESPACE = "sandbox"

# A PEP 517 backend of its own (no setuptools needed): build_wheel is where an attacker's
# code runs at install time. It tries every target, records what happened, leaves a
# daemon behind, and still produces a working wheel whose report.json tells the test.
BACKEND = r'''
import base64, hashlib, json, os, time, zipfile

TARGETS = json.loads(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "targets.json")).read())


def _attempt(path, mode):
    try:
        if mode == "mkdir":
            os.makedirs(path)
        else:
            with open(path, mode) as f:
                f.write("pwned by evilpkg\n")
        return "written"
    except OSError as exc:
        return type(exc).__name__


def _record(files):
    lines = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        lines.append(f"{name},sha256={digest},{len(data)}")
    lines.append("evilpkg-1.0.dist-info/RECORD,,")
    return "\n".join(lines) + "\n"


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    # Links planted in the build dir (HOME is <build dir>/.home) where root writes after the build.
    for name, target in TARGETS.get("links", []):
        try:
            os.symlink(target, os.path.join(os.path.dirname(os.environ["HOME"]), name))
        except OSError:
            pass
    report = {
        "uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(), "groups": os.getgroups(),
        "writes": {path: _attempt(path, mode) for path, mode in TARGETS["writes"]},
        "tmp_visible": sorted(os.listdir("/tmp")),
    }
    if os.fork() == 0:  # a daemon that would rewrite the venv once the agent sealed it
        os.setsid()
        time.sleep(TARGETS["linger_seconds"])
        _attempt(TARGETS["late_target"], "a")
        os._exit(0)
    files = {
        "evilpkg/__init__.py": b"VALUE = 42\n",
        "evilpkg/report.json": json.dumps(report, indent=1).encode(),
        "evilpkg-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: evilpkg\nVersion: 1.0\n",
        "evilpkg-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: evil\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    name = "evilpkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as whl:
        for path, data in files.items():
            whl.writestr(path, data)
        whl.writestr("evilpkg-1.0.dist-info/RECORD", _record(files))
    return name


def build_sdist(sdist_directory, config_settings=None):
    raise NotImplementedError
'''

PYPROJECT = """[build-system]
requires = []
build-backend = "evil_backend"
backend-path = ["."]

[project]
name = "evilpkg"
version = "1.0"
"""


def evil_sdist(directory: Path, targets: dict) -> Path:
    files = {
        "pyproject.toml": PYPROJECT,
        "evil_backend.py": BACKEND,
        "targets.json": json.dumps(targets),
        "PKG-INFO": "Metadata-Version: 2.1\nName: evilpkg\nVersion: 1.0\n",
    }
    path = directory / "evilpkg-1.0.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"evilpkg-1.0/{name}")
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return path


def spec_for(app: str, requirements: list[str], index_url: str, **source: object) -> HostReleaseSpec:
    template = ReleaseTemplate(
        version="1.0",
        source=Source.model_validate({"requirements": requirements, "index_url": index_url, **source}),
        entrypoint="webxample.app:application",
        user=app,
        proxy=Proxy(server_names=[f"{app}.test"]),
    )
    return HostReleaseSpec(**template.model_dump(), app=app, node="host-1",
                           build_id=identity.build_id(template), revision=identity.revision(template))


def tree_digest(top: Path) -> dict[str, str]:
    """path -> sha256 of content (or link target), owner and mode, for every entry under `top`."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath, name)
            st = path.lstat()
            body = os.readlink(path).encode() if path.is_symlink() else (path.read_bytes() if path.is_file() else b"")
            out[str(path.relative_to(top))] = f"{hashlib.sha256(body).hexdigest()} {st.st_uid}:{st.st_gid} {oct(st.st_mode)}"
    return out


def build(layout: HostLayout, spec: HostReleaseSpec, *, uv: str | None = UV):
    identity_ = ensure_build_user(NAMESPACE, spec.app)
    return ensure_release(layout, app_key(NAMESPACE, spec.app), spec, LocalExecutor(), uv=uv, identity=identity_)


@pytest.fixture(params=["var-lib", "tmp"])
def root(request: pytest.FixtureRequest, short_tmp: Path):
    """An agent root where production has it (outside the private temp dirs: other apps'
    files are visible to a build and only permissions stop it), or under /tmp as in most
    tests (the sandbox carries the build's own paths into its private /tmp: the rest of
    the agent root is not even visible)."""
    if request.param == "tmp":
        yield short_tmp / "agent"
        return
    parent = Path("/var/lib/apprelease-tests")
    parent.mkdir(mode=0o755, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="sandbox-", dir=parent))
    path.chmod(0o755)
    yield path / "agent"
    shutil.rmtree(path, ignore_errors=True)


def agent_root(root: Path) -> HostLayout:
    """An agent root with the daemons' config dirs a hostile build would like to write into."""
    (root / "supervisor").mkdir(parents=True)
    (root / "nginx" / "conf.d").mkdir(parents=True)
    return HostLayout(root)


def refused(root: Path) -> set[str]:
    """What a write into another part of the agent root may fail with, wherever the root is
    (under /tmp only the build's own paths exist, beneath directories root made for them)."""
    return {"FileNotFoundError", "PermissionError"} if Path("/tmp") in root.parents else {"PermissionError"}


@pytest.fixture
def evil_index(tmp_path: Path, package_index: WebxampleIndex, root: Path):
    """The webxample index plus evilpkg's sdist, whose targets point into `root`."""
    victim = HostLayout(root).app(app_key(NAMESPACE, "victim"))
    directory = tmp_path / "index"
    shutil.copytree(package_index.index.directory, directory)
    marker = f"/tmp/apprelease-evil-{os.getpid()}"
    targets = {
        "writes": [
            ["/etc/apprelease-pwned", "w"],
            ["/root/apprelease-pwned", "w"],
            [str(victim.base / "releases" / "planted"), "mkdir"],
            [str(victim.base / "cache" / "uv" / "planted"), "w"],
            [str(root / "supervisor" / "evil.ini"), "w"],
            [str(root / "nginx" / "conf.d" / "evil.conf"), "w"],
            [str(root / "apps" / "planted"), "mkdir"],
            [marker, "w"],
        ],
        "late_target": str(root / "late-write"),
        "linger_seconds": 3,
    }
    evil_sdist(directory, targets)
    with LocalIndex(directory) as index:
        yield index, targets, marker


def test_a_hostile_sdist_builds_as_the_build_user_and_touches_nothing_else(root: Path, evil_index, package_index):
    index, targets, marker = evil_index
    layout = agent_root(root)

    victim = build(layout, spec_for("victim", ["webxample==1.0.0"], index.url))
    victim_cache = layout.app(app_key(NAMESPACE, "victim")).build_cache
    before = {"venv": tree_digest(victim.path), "cache": tree_digest(victim_cache)}
    assert before["cache"], "the victim's build filled its own cache"

    evil_spec = spec_for("evil", ["evilpkg==1.0", "webxample==1.0.0"], index.url)
    result = build(layout, evil_spec)

    report = json.loads((result.path / "site-packages" / "evilpkg" / "report.json").read_text())
    build_user = build_user_name(NAMESPACE, "evil")
    entry = pwd.getpwnam(build_user)
    assert (report["uid"], report["euid"], report["gid"]) == (entry.pw_uid, entry.pw_uid, entry.pw_gid)
    assert report["uid"] != 0 and report["groups"] == []
    assert entry.pw_gecos == f"apprelease build {NAMESPACE}/evil"
    # Every write outside its build dir failed, except its private /tmp (gone afterwards).
    writes = dict(report["writes"])
    assert writes.pop(marker) == "written"
    assert not Path(marker).exists(), "the build's /tmp was the host's"
    assert {writes.pop("/etc/apprelease-pwned"), writes.pop("/root/apprelease-pwned")} == {"PermissionError"}
    assert writes and set(writes.values()) <= refused(root), report["writes"]
    carried = [root.relative_to("/tmp").parts[0]] if Path("/tmp") in root.parents else []
    assert sorted(report["tmp_visible"]) == sorted([Path(marker).name, *carried]), "the host's /tmp was visible"
    for path, _mode in targets["writes"]:
        assert not Path(path).exists(), path
    # The daemon it forked died with the build: nothing runs as the build user.
    assert subprocess.run(["pgrep", "-u", build_user], capture_output=True).returncode == 1
    time.sleep(targets["linger_seconds"] + 0.5)
    assert not Path(targets["late_target"]).exists()
    # The other app's venv and cache are byte-identical.
    assert tree_digest(victim.path) == before["venv"]
    assert tree_digest(victim_cache) == before["cache"]
    # The release is sealed: root-owned, nobody else can write, and it works.
    for path, stamp in tree_digest(result.path).items():
        owner, mode = stamp.split()[1], int(stamp.split()[2], 8)
        assert owner == "0:0", path
        assert mode & 0o022 == 0 or (result.path / path).is_symlink(), path
    record = json.loads((result.path / "release.json").read_text())
    assert record["builtAs"] == build_user
    run = subprocess.run([str(result.path / "venv" / "bin" / "python"), "-c", "import evilpkg, webxample; print(evilpkg.VALUE)"],
                         capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert run.stdout.strip() == "42", run.stderr


def test_the_pip_fallback_is_confined_too(root: Path, evil_index):
    index, targets, marker = evil_index
    layout = agent_root(root)
    build(layout, spec_for("victim", ["webxample==1.0.0"], index.url), uv=None)
    result = build(layout, spec_for("evil", ["evilpkg==1.0", "webxample==1.0.0"], index.url), uv=None)
    report = json.loads((result.path / "site-packages" / "evilpkg" / "report.json").read_text())
    assert report["uid"] != 0 and report["euid"] != 0
    writes = dict(report["writes"])
    writes.pop(marker)
    assert writes and set(writes.values()) <= refused(root), report["writes"]


def test_only_binary_refuses_the_sdist_and_names_it(root: Path, evil_index):
    index, _targets, _marker = evil_index
    layout = HostLayout(root)
    with pytest.raises(BuildFailed) as failed:
        build(layout, spec_for("evil", ["evilpkg==1.0", "webxample==1.0.0"], index.url, only_binary=True))
    assert "evilpkg" in failed.value.reason and "onlyBinary" in failed.value.reason, failed.value
    # Wheels-only still installs wheels.
    result = build(layout, spec_for("wheels", ["webxample==1.0.0"], index.url, only_binary=True))
    assert (result.path / "venv" / "bin" / "python").exists()


@pytest.mark.parametrize("tool", ["uv", "pip"])
def test_links_planted_where_root_writes_its_records_are_replaced_not_followed(root: Path, tmp_path: Path,
                                                                               package_index, tool: str):
    """release.json and bytecode.json are written by root into what was the build user's dir:
    a link planted under either name is replaced, and the file it names stays untouched."""
    victims = {name: tmp_path / f"victim-{name}" for name in ("release.json", "bytecode.json")}
    for victim in victims.values():
        victim.write_text("root's file\n")
        victim.chmod(0o600)
    directory = tmp_path / "index"
    shutil.copytree(package_index.index.directory, directory)
    evil_sdist(directory, {"writes": [], "late_target": str(tmp_path / "late"), "linger_seconds": 0,
                           "links": [[name, str(victim)] for name, victim in victims.items()]})
    with LocalIndex(directory) as index:
        result = build(HostLayout(root), spec_for("links", ["evilpkg==1.0", "webxample==1.0.0"], index.url),
                       uv=UV if tool == "uv" else None)
    for victim in victims.values():
        assert victim.read_text() == "root's file\n" and victim.stat().st_mode & 0o777 == 0o600, victim
    record = result.path / "release.json"
    assert not record.is_symlink() and json.loads(record.read_text())["tool"] == tool
    if tool == "pip":
        assert not (result.path / "bytecode.json").is_symlink()


def test_a_build_never_runs_as_root(root: Path, package_index):
    with pytest.raises(ValueError, match="build identity"):
        ensure_release(HostLayout(root), "x_y", spec_for("y", ["webxample==1.0.0"], package_index.url), LocalExecutor(),
                       uv=UV, identity=None)


def test_a_restrictive_agent_umask_still_builds(root: Path, package_index):
    """The agent's umask (077 here) must not decide whether the build user reaches its own dirs:
    under /tmp the sandbox makes their parents inside its private /tmp."""
    old_umask = os.umask(0o077)
    try:
        result = build(HostLayout(root), spec_for("umask", ["webxample==1.0.0"], package_index.url))
    finally:
        os.umask(old_umask)
    assert (result.path / "venv" / "bin" / "python").exists()
