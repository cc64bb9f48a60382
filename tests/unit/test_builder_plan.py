"""The release store's pure decisions (host/builder.py), no processes or files.

Aspects covered:
- the build environment drops the host's pip/uv/Python settings and blinds pip's config files;
- the interpreter is looked for only in the given directories, in order (never $PATH);
- the uv and pip command lines: config ignored, explicit cache, optional index, wheel first;
- a wheel URL must name a .whl file;
- uv copies into the venv (never hardlinks from the build user's cache); wheels-only installs;
- the packages uv names when only a source distribution exists under --only-binary;
- the sandbox's command line: the build user, no groups or capabilities, no_new_privs, fresh
  PID and mount namespaces, and the paths carried into its private /tmp; never uid 0;
- the log shows the command the build ran, not the sandbox around it;
- the build's stage read from uv's and pip's output lines (captured from uv 0.13.9 and pip).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from apprelease.host.builder import (
    build_stage,
    clean_build_env,
    install_command,
    interpreter_candidates,
    sdist_only_packages,
    unconfined,
    venv_command,
    wheel_filename,
)
from apprelease.host.sandbox import BuildIdentity, carried, confine

pytestmark = pytest.mark.unit


def test_build_env_drops_host_settings() -> None:
    host = {
        "PATH": "/usr/bin",
        "HOME": "/root",
        "https_proxy": "http://proxy:3128",
        "PIP_FIND_LINKS": "/opt/wheels",
        "PIP_INDEX_URL": "http://elsewhere/simple",
        "UV_INDEX_URL": "http://elsewhere/simple",
        "PYTHONPATH": "/somewhere",
        "VIRTUAL_ENV": "/work/.venv",
    }
    assert clean_build_env(host) == {
        "PATH": "/usr/bin",
        "HOME": "/root",
        "https_proxy": "http://proxy:3128",
        "PIP_CONFIG_FILE": "/dev/null",
    }


def test_interpreter_is_looked_for_only_in_the_search_path() -> None:
    assert interpreter_candidates("3.11", ["/usr/local/bin", "/usr/bin"]) == [
        Path("/usr/local/bin/python3.11"),
        Path("/usr/bin/python3.11"),
    ]


@pytest.mark.parametrize("tool", ["uv", "pip"])
@pytest.mark.parametrize("index_url", [None, "http://127.0.0.1:1/simple/"], ids=["default-index", "own-index"])
def test_install_command(tool: str, index_url: str | None) -> None:
    argv = install_command(
        tool,  # type: ignore[arg-type]
        Path("/r/.tmp-b1-x/venv"),
        uv="/bin/uv",
        cache_dir=Path("/r/cache"),
        index_url=index_url,
        wheel_file=Path("/r/.tmp-b1-x/download/w-1-py3-none-any.whl"),
        requirements=["webxample==1.0.0"],
    )
    assert argv[-2:] == ["/r/.tmp-b1-x/download/w-1-py3-none-any.whl", "webxample==1.0.0"]
    assert ("--index-url" in argv) == (index_url is not None)
    assert argv[argv.index("--cache-dir") + 1] == "/r/cache"
    if tool == "uv":
        assert argv[:3] == ["/bin/uv", "pip", "install"]
        # Bytecode is compiled after the switch (host/bytecode.py), not on the build's critical path.
        assert "--no-config" in argv and "--compile-bytecode" not in argv
        assert argv[argv.index("--python") + 1] == "/r/.tmp-b1-x/venv/bin/python"
    else:
        assert argv[:4] == ["/r/.tmp-b1-x/venv/bin/python", "-m", "pip", "install"]
        assert "--isolated" in argv and "--no-input" in argv


@pytest.mark.parametrize("tool", ["uv", "pip"])
def test_venv_command_uses_the_found_interpreter(tool: str) -> None:
    argv = venv_command(tool, Path("/usr/bin/python3.11"), Path("/r/v"), uv="/bin/uv", cache_dir=Path("/c"))  # type: ignore[arg-type]
    assert "/usr/bin/python3.11" in argv and argv[-1] == "/r/v"
    if tool == "uv":
        assert "--relocatable" in argv and "--no-config" in argv


@pytest.mark.parametrize(
    ("url", "name"),
    [
        pytest.param("http://h/files/webxample-1.0.0-py3-none-any.whl", "webxample-1.0.0-py3-none-any.whl", id="plain"),
        pytest.param(
            "https://h/a/b/x-1.0%2Blocal-py3-none-any.whl?token=1", "x-1.0+local-py3-none-any.whl", id="quoted-query"
        ),
        pytest.param("http://h/files/webxample-1.0.0.tar.gz", None, id="sdist-refused"),
        pytest.param("http://h/files/", None, id="no-file"),
    ],
)
def test_wheel_filename(url: str, name: str | None) -> None:
    if name is None:
        with pytest.raises(ValueError, match="does not name a .whl"):
            wheel_filename(url)
    else:
        assert wheel_filename(url) == name


def test_uv_copies_files_into_the_venv_and_may_refuse_sdists() -> None:
    common = dict(uv="/bin/uv", cache_dir=Path("/c"), index_url=None, wheel_file=None, requirements=["a"])
    argv = install_command("uv", Path("/v"), **common)
    assert argv[argv.index("--link-mode") + 1] == "copy"
    assert "--only-binary" not in argv
    strict = install_command("uv", Path("/v"), only_binary=True, **common)
    assert strict[strict.index("--only-binary") + 1] == ":all:"
    pip = install_command("pip", Path("/v"), only_binary=True, **{**common, "uv": None})
    assert pip[pip.index("--only-binary") + 1] == ":all:"


@pytest.mark.parametrize(("output", "names"), [
    ("Because evilpkg==1.0 has no usable wheels and you require evilpkg==1.0, we can conclude ...", ["evilpkg"]),
    ("hint: Wheels are required for `evil-pkg` because building from source is disabled", ["evil-pkg"]),
    ("Because a.b has no wheels and ...\nhint: Wheels are required for `a.b` because ...", ["a.b"]),
    ("No solution found: Because webxample==9 was not found in the package registry ...", []),
], ids=["because", "hint", "both-once", "not-found"])
def test_packages_without_wheels_are_named(output: str, names: list[str]) -> None:
    assert sdist_only_packages(output) == names


IDENTITY = BuildIdentity("arb-0123456789ab", 990, 991)


def test_the_sandbox_drops_to_the_build_user_in_fresh_namespaces() -> None:
    argv = confine(["/bin/uv", "pip", "install", "x"], IDENTITY, [Path("/var/lib/a/b"), Path("/tmp/r/x")])
    assert argv[:1] == ["unshare"] and {"--pid", "--fork", "--kill-child", "--mount-proc"} <= set(argv)
    setpriv = argv[argv.index("setpriv"):]
    assert {"--reuid=990", "--regid=991", "--clear-groups", "--no-new-privs", "--inh-caps=-all"} <= set(setpriv)
    # Only what a private tmpfs would hide is carried, and it comes as an argument, not as script text.
    script_args = argv[argv.index("apprelease-build") + 1:argv.index("setpriv")]
    assert script_args == ["/tmp/r/x", "--"]
    assert "/tmp/r/x" not in argv[argv.index("-c") + 1]
    assert unconfined(argv) == ["/bin/uv", "pip", "install", "x"]
    assert unconfined(["/bin/uv", "venv"]) == ["/bin/uv", "venv"]


@pytest.mark.parametrize("identity", [BuildIdentity("root", 0, 0), BuildIdentity("x", 990, 0)], ids=["uid0", "gid0"])
def test_the_sandbox_never_runs_as_root(identity: BuildIdentity) -> None:
    with pytest.raises(ValueError, match="uid/gid 0"):
        confine(["true"], identity)


def test_carried_paths() -> None:
    assert carried([Path("/var/lib/x"), Path("/tmp"), Path("/var/tmp/a/b"), Path("/tmpfoo")]) == ["/tmp", "/var/tmp/a/b"]
    with pytest.raises(ValueError, match="/dev/shm"):
        carried([Path("/dev/shm/x")])


# Lines as uv 0.13.9 printed them here (`uv pip install --no-progress`), and pip 23's.
@pytest.mark.parametrize(("tool", "line", "stage"), [
    ("uv", "Using Python 3.11.2 environment at: v1", None),
    ("uv", "Resolved 2 packages in 12ms", "resolved 2 packages; downloading what the cache lacks"),
    ("uv", "Resolved 1 package in 3ms", "resolved 1 package; downloading what the cache lacks"),
    ("uv", "Prepared 2 packages in 11ms", "installing 2 packages"),
    ("uv", "Installed 2 packages in 9ms", "installed 2 packages"),
    ("uv", "Audited 2 packages in 1ms", "nothing to install"),
    ("uv", "Bytecode compiled 72 files in 364ms", None),
    ("uv", " + gunicorn==27.0.1", None),
    ("uv", "WARN Range requests not supported for `webxample-1.0.0-py3-none-any.whl`; streaming wheel", None),
    ("pip", "Collecting webxample==1.0.0", "resolving: webxample==1.0.0"),
    ("pip", "  Downloading http://127.0.0.1:8765/files/gunicorn-27.0.1-py3-none-any.whl (85 kB)",
     "downloading gunicorn-27.0.1-py3-none-any.whl"),
    ("pip", "  Downloading gunicorn-27.0.1-py3-none-any.whl (85 kB)", "downloading gunicorn-27.0.1-py3-none-any.whl"),
    ("pip", "Installing collected packages: packaging, gunicorn, webxample", "installing 3 packages"),
    ("pip", "Successfully installed gunicorn-27.0.1 webxample-1.0.0", None),
])
def test_build_stage_from_output(tool, line, stage) -> None:
    assert build_stage(tool, line) == stage


def test_index_credentials_go_into_the_url_quoted_and_are_scrubbed_from_build_logs():
    from apprelease.host.builder import _BuildLog, index_url_with_credentials, redact

    url = index_url_with_credentials("http://old:x@127.0.0.1:8080/simple/", "bob", "p@ss:w/rd")
    assert url == "http://bob:p%40ss%3Aw%2Frd@127.0.0.1:8080/simple/"
    assert redact(f"GET {url} failed; password p@ss:w/rd", ["p@ss:w/rd"]) == \
        "GET http://bob:****@127.0.0.1:8080/simple/ failed; password ****"
    log = _BuildLog(secrets=("p@ss:w/rd",))
    log.add(["uv", "pip", "install"], f"error: {url}\n")
    log.note("used p@ss:w/rd")
    assert "p@ss" not in log.tail() and "p%40ss" not in log.tail()
