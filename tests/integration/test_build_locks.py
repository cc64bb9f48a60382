"""A buildId's lock and the bytecode compiled after the switch, with real uv and python3.11.

Wheels come from a PEP 503 index on 127.0.0.1 (tests/support/pypi.py), a copy per test so a
test may stop it.

Aspects covered:
- the first build resolves once: release.json holds the lock (every pin with its sha256), its
  digest, `lockSource: resolved`; the lock is kept root-owned in `locks/<buildId>.txt`;
- a second build of the same buildId (after GC) installs the stored lock offline: with the
  index stopped it still succeeds, with the same digest and `installedOffline`;
- an emptied app cache falls back to the index with the same lock (same digest, online);
- an unusable stored lock (garbage) is resolved again and replaced by a canonical one;
- a stored lock whose hashes the index does not serve fails the build naming the lock,
  leaving nothing in releases/ (same buildId, same bytes: never silently something else);
- a freshly built venv holds no bytecode; `bytecode.compile_release` compiles it as the build
  user into root-owned 0644 `__pycache__` files, the venv stays root-owned and read-only, an
  unprivileged user's python loads the .pyc, and compiling again is not needed (`compiled`);
- a `__pycache__` symlink in the venv pointing out of it receives nothing;
- locks outlive releases but not forever: beyond LOCKS_KEPT the oldest go, never the new one;
- a release that cannot be compiled gets a failed bytecode.json (never retried, no temp dir left).
"""

from __future__ import annotations

import functools
import json
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.hosts import release_for, uv_binary
from support.pypi import LocalIndex, WebxampleIndex

from apprelease.api.models import HostReleaseSpec
from apprelease.host import builder, bytecode, locks
from apprelease.host.builder import BuildFailed, ensure_release
from apprelease.host.executor import LocalExecutor
from apprelease.host.layout import HostLayout
from apprelease.host.users import ensure_build_user

pytestmark = pytest.mark.integration

KEY = "locks_webxample"
BUILDER = functools.cache(lambda: ensure_build_user("locks", "webxample"))


def host_spec(index_url: str) -> HostReleaseSpec:
    """webxample 1.0.0 from `index_url` (port: the spec's, unused by a build)."""
    return release_for(index_url, "1.0.0", port=8080).spec


@pytest.fixture
def root() -> Iterator[Path]:
    """An agent root where production has it (/var/lib: the sandbox carries nothing into its
    private /tmp), that an unprivileged user can traverse (pytest's tmp dirs are mode 700)."""
    parent = Path("/var/lib/apprelease-tests")
    parent.mkdir(mode=0o755, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="locks-", dir=parent))
    path.chmod(0o755)
    yield path / "agent"
    shutil.rmtree(path)


@pytest.fixture
def index(tmp_path: Path, package_index: WebxampleIndex) -> Iterator[LocalIndex]:
    """A copy of the webxample index on a port of its own: a test may stop it."""
    directory = tmp_path / "index"
    shutil.copytree(package_index.index.directory, directory)
    with LocalIndex(directory) as served:
        yield served


def build(layout: HostLayout, spec: HostReleaseSpec, stages: list[str] | None = None) -> builder.BuildResult:
    return ensure_release(layout, KEY, spec, LocalExecutor(), uv=uv_binary(), identity=BUILDER(),
                          on_stage=(stages.append if stages is not None else None))


def record(result: builder.BuildResult) -> dict:
    return json.loads((result.path / "release.json").read_text())


def test_first_build_resolves_and_keeps_the_lock(root: Path, index: LocalIndex) -> None:
    layout = HostLayout(root)
    spec = host_spec(index.url)
    result = build(layout, spec)

    first = record(result)
    assert first["lockSource"] == "resolved" and first["installedOffline"] is False
    locked = locks.parse_lock("\n".join(first["lock"]))
    assert [f"{d.name}=={d.version}" for d in locked] == ["gunicorn==27.0.1", "webxample==1.0.0"]
    assert all(len(d.hashes) == 1 for d in locked)
    assert first["lockDigest"] == locks.lock_digest("\n".join(first["lock"]) + "\n")
    assert builder.recorded_lock_digest(result.path) == first["lockDigest"]
    stored = layout.app(KEY).lock(spec.build_id)
    assert stored.read_text() == "\n".join(first["lock"]) + "\n"
    st = stored.stat()
    assert (st.st_uid, st.st_mode & 0o777) == (0, 0o644)
    assert not list(layout.app(KEY).locks.glob(".tmp-*"))


def test_second_build_installs_the_lock_offline_with_the_index_down(root: Path, index: LocalIndex) -> None:
    layout = HostLayout(root)
    spec = host_spec(index.url)
    digest = record(build(layout, spec))["lockDigest"]
    builder.remove_release(layout.app(KEY), spec.build_id)  # GC, or the bench's warm rebuild
    index.stop()

    stages: list[str] = []
    again = build(layout, spec, stages)

    second = record(again)
    assert (second["lockSource"], second["installedOffline"], second["lockDigest"]) == ("stored", True, digest)
    assert "installing 2 locked packages from the cache" in stages
    assert not any(s.startswith("resolv") for s in stages), stages
    version = subprocess.run([str(again.path / "venv" / "bin" / "python"), "-c", "import webxample; print(webxample.__version__)"],
                             capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert version.stdout.strip() == "1.0.0", version.stderr


def test_an_empty_cache_installs_the_same_lock_from_the_index(root: Path, index: LocalIndex) -> None:
    layout = HostLayout(root)
    spec = host_spec(index.url)
    digest = record(build(layout, spec))["lockDigest"]
    builder.remove_release(layout.app(KEY), spec.build_id)
    shutil.rmtree(layout.app(KEY).build_cache)
    index.clear_requests()

    second = record(build(layout, spec))
    assert (second["lockSource"], second["installedOffline"], second["lockDigest"]) == ("stored", False, digest)
    assert index.downloads(), index.requests


def test_an_unusable_stored_lock_is_resolved_again(root: Path, index: LocalIndex) -> None:
    layout = HostLayout(root)
    spec = host_spec(index.url)
    digest = record(build(layout, spec))["lockDigest"]
    builder.remove_release(layout.app(KEY), spec.build_id)
    stored = layout.app(KEY).lock(spec.build_id)
    stored.write_text("webxample>=1\n--index-url http://elsewhere/simple/\n")

    second = record(build(layout, spec))
    assert (second["lockSource"], second["lockDigest"]) == ("resolved", digest)
    assert "not usable" in second["logTail"]
    assert locks.lock_digest(stored.read_text()) == digest


def test_a_stored_lock_the_index_does_not_serve_fails_naming_it(root: Path, index: LocalIndex) -> None:
    layout = HostLayout(root)
    spec = host_spec(index.url)
    build(layout, spec)
    app = layout.app(KEY)
    builder.remove_release(app, spec.build_id)
    stored = app.lock(spec.build_id)
    text = stored.read_text()
    wrong = locks.format_lock([d if d.name != "webxample" else locks.LockedDistribution(d.name, d.version, ("0" * 64,))
                               for d in locks.parse_lock(text)])
    stored.write_text(wrong)

    with pytest.raises(BuildFailed) as failed:
        build(layout, spec)
    assert str(stored) in failed.value.reason and "remove the file" in failed.value.reason
    assert "0" * 64 in failed.value.log_tail or "hash" in failed.value.log_tail.lower()
    assert sorted(p.name for p in app.releases.iterdir()) == []
    assert stored.read_text() == wrong  # kept: an admin decides


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to build root-owned venvs and switch users")
def test_bytecode_is_compiled_after_the_build_into_the_sealed_venv(root: Path, index: LocalIndex) -> None:
    layout = HostLayout(root)
    spec = host_spec(index.url)
    result = build(layout, spec)
    # The path the venv's python imports from (not through the release's site-packages link).
    pyc = result.path / "venv" / "lib" / "python3.11" / "site-packages" / "webxample" / "__pycache__" / "app.cpython-311.pyc"
    assert not list((result.path / "venv").rglob("*.pyc")), "the build compiled bytecode on its critical path"
    assert not bytecode.compiled(result.path)

    old_umask = os.umask(0o077)  # the agent's umask must not decide who reads the bytecode
    try:
        outcome = bytecode.compile_release(layout.app(KEY), spec.build_id, LocalExecutor(), BUILDER())
    finally:
        os.umask(old_umask)

    assert outcome["ok"] and outcome["files"] > 50, outcome
    assert bytecode.compiled(result.path)
    st = pyc.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, 0, 0o644)
    for dirpath, dirnames, filenames in os.walk(result.path):
        for name in [*dirnames, *filenames, "."]:
            path = os.path.join(dirpath, name)
            entry = os.lstat(path)
            assert entry.st_uid == 0, path
            assert os.path.islink(path) or entry.st_mode & 0o022 == 0, f"{path} is {oct(entry.st_mode)}"
            assert os.path.islink(path) or entry.st_mode & 0o004, f"{path} is not readable by the app"
    assert not list(layout.app(KEY).releases.glob(".tmp-*"))
    nobody = pwd.getpwnam("nobody")
    run = subprocess.run([str(result.path / "venv" / "bin" / "python"), "-v", "-c", "import webxample.app, gunicorn"],
                         capture_output=True, text=True, user=nobody.pw_uid, group=nobody.pw_gid, extra_groups=[],
                         env={"PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr[-2000:]
    assert f"code object from '{pyc}'" in run.stderr


def test_a_planted_pycache_link_receives_nothing(root: Path, index: LocalIndex, tmp_path: Path) -> None:
    layout = HostLayout(root)
    spec = host_spec(index.url)
    result = build(layout, spec)
    outside = tmp_path / "outside"
    outside.mkdir()
    # What a hostile build could leave in its venv (sealed, so root-owned now): a link out of it.
    os.symlink(outside, result.path / "site-packages" / "webxample" / "__pycache__")

    outcome = bytecode.compile_release(layout.app(KEY), spec.build_id, LocalExecutor(), BUILDER())

    assert outcome["files"] > 0, outcome  # gunicorn's bytecode still arrived
    assert list(outside.iterdir()) == []


def test_the_oldest_locks_go_beyond_the_limit(root: Path, index: LocalIndex, monkeypatch: pytest.MonkeyPatch) -> None:
    layout = HostLayout(root)
    app = layout.app(KEY)
    app.locks.mkdir(parents=True)
    for i in range(3):  # locks of builds long gone, oldest first
        (app.locks / f"old{i}.txt").write_text("x")
        os.utime(app.locks / f"old{i}.txt", ns=(i * 10**9, i * 10**9))
    monkeypatch.setattr(builder, "LOCKS_KEPT", 2)

    spec = host_spec(index.url)
    build(layout, spec)

    assert sorted(p.name for p in app.locks.iterdir()) == sorted(["old2.txt", f"{spec.build_id}.txt"])


def test_a_release_that_cannot_be_compiled_is_recorded_and_not_retried(root: Path) -> None:
    """Bytecode never fails a revision: a release without its site-packages link (one from long
    ago, say) gets a failed bytecode.json, and `compiled` then says there is nothing left to do."""
    app = HostLayout(root).app(KEY)
    (app.release("b-old") / "venv").mkdir(parents=True)

    outcome = bytecode.compile_release(app, "b-old", LocalExecutor(), BUILDER())

    assert outcome["ok"] is False and "site-packages" in outcome["error"]
    assert bytecode.compiled(app.release("b-old"))
    assert sorted(p.name for p in app.releases.iterdir()) == ["b-old"]  # no temp dir left
