"""The release store's pure decisions (agent/builder.py), no processes or files.

Aspects covered:
- garbage collection choice (`releases_to_collect`): the `limit` newest survive, the serving
  and previous builds (`keep`) always survive whatever their age, ties are ordered stably,
  unknown ids in `keep` change nothing, a negative limit is refused;
- the build environment drops the host's pip/uv/Python settings and blinds pip's config files;
- the interpreter is looked for only in the given directories, in order (never $PATH);
- the uv and pip command lines: config ignored, explicit cache, optional index, wheel first;
- a wheel URL must name a .whl file.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from apprelease.agent.builder import (
    ReleaseRecord,
    clean_build_env,
    install_command,
    interpreter_candidates,
    releases_to_collect,
    venv_command,
    wheel_filename,
)

pytestmark = pytest.mark.unit

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def records(*ids: str) -> list[ReleaseRecord]:
    """Records created one minute apart: the first id is the oldest."""
    return [ReleaseRecord(build_id, T0 + timedelta(minutes=i)) for i, build_id in enumerate(ids)]


@pytest.mark.parametrize(
    ("existing", "keep", "limit", "expected"),
    [
        pytest.param([], set(), 5, [], id="nothing-on-disk"),
        pytest.param(["a", "b", "c"], set(), 5, [], id="under-the-limit"),
        pytest.param(["a", "b", "c"], set(), 3, [], id="exactly-the-limit"),
        pytest.param(["a", "b", "c", "d"], set(), 2, ["b", "a"], id="oldest-collected-newest-first"),
        pytest.param(["a", "b", "c", "d"], {"d", "c"}, 2, ["b", "a"], id="keep-is-the-newest"),
        pytest.param(["a", "b", "c", "d"], {"a"}, 1, ["c", "b"], id="old-serving-build-survives"),
        pytest.param(["a", "b", "c", "d"], {"a", "b"}, 1, ["c"], id="rolled-back-serving-and-previous-survive"),
        pytest.param(["a", "b", "c"], {"a", "b", "c"}, 0, [], id="limit-zero-keeps-only-keep"),
        pytest.param(["a", "b", "c"], set(), 0, ["c", "b", "a"], id="limit-zero-nothing-kept"),
        pytest.param(["a", "b"], {"zzz"}, 1, ["a"], id="unknown-keep-id-ignored"),
    ],
)
def test_releases_to_collect(existing: list[str], keep: set[str], limit: int, expected: list[str]) -> None:
    assert releases_to_collect(records(*existing), keep, limit) == expected


def test_releases_to_collect_ignores_input_order() -> None:
    shuffled = list(reversed(records("a", "b", "c", "d")))
    assert releases_to_collect(shuffled, {"c"}, 1) == ["b", "a"]


def test_releases_created_at_the_same_time_are_ordered_by_build_id() -> None:
    same = [ReleaseRecord(b, T0) for b in ("b2", "b1", "b3")]
    assert releases_to_collect(same, set(), 1) == ["b2", "b1"]


def test_negative_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="limit"):
        releases_to_collect(records("a"), set(), -1)


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
        assert "--no-config" in argv and "--compile-bytecode" in argv
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
