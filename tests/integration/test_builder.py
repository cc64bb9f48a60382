"""The release store and venv builder against real uv, pip and Debian's python3.11.

Wheels come from a PEP 503 index served on 127.0.0.1 (tests/support/pypi.py).

Aspects covered:
- a uv build from the local index over HTTP gives a venv where `python -m gunicorn --version`
  works and `import webxample` gives the requested version; release.json, the relative
  site-package link and the interpreter (from the search path, not $PATH) are right;
- a build reports its stages as uv prints them (finding python, creating the venv,
  resolving, resolved N, installing N, installed N, checking gunicorn), in that order;
- an existing buildId is reused: no command runs, the index gets no request, no stage is reported;
- the pip fallback (uv=None) builds a working venv too, reporting pip's stages;
- a wheel by URL with the right sha256 installs; with a wrong one the build fails naming
  both digests and leaves nothing in releases/;
- an unsatisfiable requirement fails with the resolver's message, leaving no temp dir and
  no release dir;
- a missing interpreter is a clear failure, and so are requirements that bring no gunicorn;
- leftovers of a crashed build (`.tmp-*`) are removed by `remove_temp_builds` and never
  listed as releases;
- GC on disk: list, choose, remove (never the current release);
- the venv is root-owned and not writable by an unprivileged user, who can still run it;
- the executor's streaming mode (what carries the stages): lines arrive as printed, output,
  exit code and a timeout behave as without it, and a timeout kills a silent command on time.
"""

from __future__ import annotations

import functools
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.pypi import LocalIndex, WebxampleIndex

from apprelease.host import builder
from apprelease.host.builder import BuildFailed, ensure_release
from apprelease.host.executor import LocalExecutor
from apprelease.host.layout import HostLayout
from apprelease.host.sandbox import BuildIdentity
from apprelease.host.users import ensure_build_user
from apprelease.api import identity
from apprelease.api.models import HostReleaseSpec, Proxy, ReleaseTemplate, Source

pytestmark = pytest.mark.integration

UV = str(Path(sys.executable).with_name("uv"))
KEY = "default_webxample"


@functools.cache
def build_identity() -> BuildIdentity:
    return ensure_build_user("default", "webxample")


def host_spec(**source: object) -> HostReleaseSpec:
    template = ReleaseTemplate(
        version="test",
        source=Source.model_validate(source),
        entrypoint="webxample.app:application",
        user="webxample",
        proxy=Proxy(server_names=["webxample.test"]),
    )
    return HostReleaseSpec(
        **template.model_dump(),
        app="webxample",
        node="host-1",
        build_id=identity.build_id(template),
        revision=identity.revision(template),
    )


def release_entries(layout: HostLayout) -> list[str]:
    releases = layout.app(KEY).releases
    return sorted(p.name for p in releases.iterdir()) if releases.exists() else []


def venv_python(result: builder.BuildResult) -> str:
    return str(result.path / "venv" / "bin" / "python")


def webxample_version(result: builder.BuildResult) -> str:
    out = subprocess.run(
        [venv_python(result), "-c", "import webxample; print(webxample.__version__)"],
        capture_output=True, text=True, check=True, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    return out.stdout.strip()


@pytest.fixture
def layout(tmp_path: Path) -> HostLayout:
    return HostLayout(tmp_path / "agent")


def test_uv_build_gives_a_working_venv(layout: HostLayout, package_index: WebxampleIndex) -> None:
    spec = host_spec(requirements=["webxample==2.0.0"], index_url=package_index.url)
    stages: list[str] = []
    result = ensure_release(layout, KEY, spec, LocalExecutor(), uv=UV, identity=build_identity(), on_stage=stages.append)

    assert (result.build_id, result.reused, result.tool) == (spec.build_id, False, "uv")
    assert stages[:2] == ["finding python3.11", stages[1]] and stages[1].startswith("creating the venv (Python 3.11.")
    assert stages[2:] == ["resolving the requirements", "resolved 2 packages; downloading what the cache lacks",
                          "installing 2 packages", "installed 2 packages", "checking the server packages"]
    assert result.path == layout.app(KEY).release(spec.build_id)
    assert release_entries(layout) == [spec.build_id]  # no temp dir left
    version = subprocess.run([venv_python(result), "-m", "gunicorn", "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and "27.0.1" in version.stdout + version.stderr
    assert webxample_version(result) == "2.0.0"
    # The venv's interpreter is Debian's, found in the search path, not the pyenv one on $PATH.
    assert os.path.realpath(venv_python(result)).startswith("/usr/bin/python3.11")

    record = json.loads((result.path / "release.json").read_text())
    assert record["buildId"] == spec.build_id
    assert record["inputs"] == identity.build_inputs(spec)
    assert record["tool"] == "uv" and record["python"].startswith("3.11.")
    assert record["startedAt"] <= record["finishedAt"]
    assert "webxample==2.0.0" in record["logTail"]
    link = result.path / "site-packages"
    assert os.readlink(link) == "venv/lib/python3.11/site-packages"
    assert "2.0.0" in (link / "webxample" / "static" / "hello.txt").read_text()


def test_existing_release_is_reused_without_running_anything(
    layout: HostLayout,
    package_index: WebxampleIndex,
) -> None:
    spec = host_spec(requirements=["webxample==1.0.0"], index_url=package_index.url)
    first = ensure_release(layout, KEY, spec, LocalExecutor(), uv=UV, identity=build_identity())

    package_index.index.clear_requests()
    executor = LocalExecutor()
    stages: list[str] = []
    again = ensure_release(layout, KEY, spec, executor, uv=UV, identity=build_identity(), on_stage=stages.append)

    assert again.reused and again.tool is None and again.path == first.path
    assert executor.log == [] and stages == []
    assert package_index.index.requests == []
    assert again.seconds < 0.5


def test_pip_fallback_builds_a_working_venv(layout: HostLayout, package_index: WebxampleIndex) -> None:
    spec = host_spec(requirements=["webxample==3.0.0"], index_url=package_index.url)
    stages: list[str] = []
    result = ensure_release(layout, KEY, spec, LocalExecutor(), uv=None, identity=build_identity(), on_stage=stages.append)

    assert result.tool == "pip" and not result.reused
    assert "resolving: webxample==3.0.0" in stages and "checking the server packages" in stages
    assert any(s.startswith("installing ") for s in stages), stages
    assert webxample_version(result) == "3.0.0"
    assert subprocess.run([venv_python(result), "-m", "gunicorn", "--version"], capture_output=True).returncode == 0
    assert json.loads((result.path / "release.json").read_text())["tool"] == "pip"
    assert release_entries(layout) == [spec.build_id]


def test_wheel_url_with_matching_sha256_installs(layout: HostLayout, package_index: WebxampleIndex) -> None:
    # gunicorn, which the wheel requires, still comes from the index.
    spec = host_spec(
        wheel={"url": package_index.wheel_url("2.0.0"), "sha256": package_index.wheel_sha256("2.0.0")},
        index_url=package_index.url,
    )
    result = ensure_release(layout, KEY, spec, LocalExecutor(), uv=UV, identity=build_identity())

    assert webxample_version(result) == "2.0.0"
    assert not (result.path / builder.DOWNLOAD_DIR).exists()


def test_wheel_url_with_wrong_sha256_fails_and_leaves_nothing(
    layout: HostLayout,
    package_index: WebxampleIndex,
) -> None:
    wrong = "0" * 64
    spec = host_spec(wheel={"url": package_index.wheel_url("2.0.0"), "sha256": wrong}, index_url=package_index.url)
    executor = LocalExecutor()
    with pytest.raises(BuildFailed) as failure:
        ensure_release(layout, KEY, spec, executor, uv=UV, identity=build_identity())

    assert f"expected {wrong}" in str(failure.value)
    assert f"got {package_index.wheel_sha256('2.0.0')}" in str(failure.value)
    assert release_entries(layout) == []
    assert not any("install" in argv for argv in executor.log)  # refused before installing


def test_unsatisfiable_requirement_fails_with_the_resolver_message(
    layout: HostLayout,
    package_index: WebxampleIndex,
) -> None:
    spec = host_spec(requirements=["webxample==9.9.9"], index_url=package_index.url)
    with pytest.raises(BuildFailed) as failure:
        ensure_release(layout, KEY, spec, LocalExecutor(), uv=UV, identity=build_identity())

    assert "webxample==9.9.9" in failure.value.log_tail
    assert "unsatisfiable" in failure.value.log_tail
    assert len(failure.value.log_tail.splitlines()) <= builder.LOG_TAIL_LINES
    assert release_entries(layout) == []


def test_missing_interpreter_is_a_clear_failure(layout: HostLayout, package_index: WebxampleIndex) -> None:
    spec = host_spec(requirements=["webxample==1.0.0"], index_url=package_index.url).model_copy(
        update={"python": "3.99"}
    )
    with pytest.raises(BuildFailed, match=r"python3\.99 not found in /usr/local/bin:/usr/bin:/bin"):
        ensure_release(layout, KEY, spec, LocalExecutor(), uv=UV, identity=build_identity())
    assert release_entries(layout) == []


def write_wheel_without_gunicorn(directory: Path) -> Path:
    """A minimal pure-Python wheel, `nogunicorn`, that depends on nothing."""
    directory.mkdir(parents=True, exist_ok=True)
    wheel = directory / "nogunicorn-1.0-py3-none-any.whl"
    info = "nogunicorn-1.0.dist-info"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("nogunicorn.py", "VALUE = 1\n")
        zf.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: nogunicorn\nVersion: 1.0\n")
        zf.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{info}/RECORD", f"nogunicorn.py,,\n{info}/METADATA,,\n{info}/WHEEL,,\n{info}/RECORD,,\n")
    return wheel


def test_requirements_without_gunicorn_fail(layout: HostLayout, tmp_path: Path) -> None:
    write_wheel_without_gunicorn(tmp_path / "index")
    with LocalIndex(tmp_path / "index") as index:
        spec = host_spec(requirements=["nogunicorn==1.0"], index_url=index.url)
        with pytest.raises(BuildFailed, match="the requirements must bring gunicorn"):
            ensure_release(layout, KEY, spec, LocalExecutor(), uv=UV, identity=build_identity())
    assert release_entries(layout) == []


def test_crashed_build_leftovers_are_removed(layout: HostLayout, package_index: WebxampleIndex) -> None:
    spec = host_spec(requirements=["webxample==1.0.0"], index_url=package_index.url)
    ensure_release(layout, KEY, spec, LocalExecutor(), uv=UV, identity=build_identity())
    app = layout.app(KEY)
    # What a build killed half-way leaves: a temp dir with a partial venv, maybe a record.
    crashed = app.releases / f".tmp-{spec.build_id}-deadbeef"
    (crashed / "venv" / "lib").mkdir(parents=True)
    (crashed / "release.json").write_text("{}")

    assert [r.build_id for r in builder.list_releases(app)] == [spec.build_id]
    assert builder.remove_temp_builds(app) == [crashed.name]
    assert release_entries(layout) == [spec.build_id]
    assert builder.remove_temp_builds(app) == []


def test_gc_removes_old_releases_but_never_current(layout: HostLayout, package_index: WebxampleIndex) -> None:
    app = layout.app(KEY)
    built = [
        ensure_release(layout, KEY, host_spec(requirements=[f"webxample=={v}"], index_url=package_index.url),
                       LocalExecutor(), uv=UV, identity=build_identity()).build_id
        for v in ("1.0.0", "2.0.0", "3.0.0")
    ]  # fmt: skip
    os.symlink(Path("releases") / built[0], app.current)  # rolled back to the oldest

    records = builder.list_releases(app)
    assert sorted(r.build_id for r in records) == sorted(built)
    assert builder.remove_release(app, built[1]) is True
    assert builder.remove_release(app, built[1]) is False  # idempotent
    with pytest.raises(ValueError, match="current"):
        builder.remove_release(app, built[0])
    assert release_entries(layout) == sorted([built[0], built[2]])


@pytest.fixture
def world_readable_root() -> Iterator[Path]:
    """An agent root an unprivileged user can traverse (pytest's tmp dirs are mode 700)."""
    path = Path(tempfile.mkdtemp(prefix="apprelease-perm-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to build root-owned venvs and switch users")
def test_venv_is_root_owned_and_read_only_for_the_app_user(
    world_readable_root: Path,
    package_index: WebxampleIndex,
) -> None:
    layout = HostLayout(world_readable_root)
    spec = host_spec(requirements=["webxample==1.0.0"], index_url=package_index.url)
    old_umask = os.umask(0o000)  # the builder must not depend on the agent's umask
    try:
        result = ensure_release(layout, KEY, spec, LocalExecutor(), uv=UV, identity=build_identity())
    finally:
        os.umask(old_umask)

    for dirpath, dirnames, filenames in os.walk(result.path):
        for name in [*dirnames, *filenames, "."]:
            st = os.lstat(os.path.join(dirpath, name))
            assert st.st_uid == 0, os.path.join(dirpath, name)
            if not os.path.islink(os.path.join(dirpath, name)):
                assert st.st_mode & 0o022 == 0, f"{os.path.join(dirpath, name)} is {oct(st.st_mode)}"

    nobody = pwd.getpwnam("nobody")
    as_nobody = {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": [], "env": {"PATH": "/usr/bin:/bin"}}
    target = result.path / "site-packages" / "webxample" / "app.py"
    write = subprocess.run(
        [venv_python(result), "-c", f"open({str(target)!r}, 'a')"], capture_output=True, text=True, **as_nobody
    )
    assert write.returncode != 0 and "PermissionError" in write.stderr
    run = subprocess.run(
        [venv_python(result), "-c", "import webxample.app, gunicorn; print(webxample.__version__)"],
        capture_output=True, text=True, **as_nobody,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "1.0.0"


def test_streaming_hands_over_lines_as_they_are_printed() -> None:
    seen: list[tuple[str, float]] = []
    started = time.monotonic()
    proc = LocalExecutor().run(["sh", "-c", "echo one; sleep 1; echo two >&2; exit 3"], check=False,
                               on_line=lambda line: seen.append((line, time.monotonic() - started)))
    assert [line for line, _ in seen] == ["one", "two"]
    assert seen[0][1] < 0.8 <= seen[1][1], "the first line waited for the command to end"
    assert (proc.returncode, proc.stdout) == (3, "one\ntwo\n")
    with pytest.raises(builder.CommandFailed, match="exited with 3"):
        LocalExecutor().run(["sh", "-c", "exit 3"], on_line=lambda _: None)


def test_streaming_timeout_kills_a_silent_command() -> None:
    started = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired) as expired:
        # sh waits for its child: the child holds the pipe too, and is killed with its group.
        LocalExecutor().run(["sh", "-c", "echo before; sleep 30; true"], timeout=0.5, on_line=lambda _: None)
    assert time.monotonic() - started < 5
    assert expired.value.output == "before\n"
