"""A buildId's lock as text (host/locks.py), no processes or files.

Aspects covered:
- uv's `pip compile --generate-hashes` output (captured from uv 0.13.9) parses into pins
  with their sha256, comments and continuations dropped;
- the canonical form is one line per distribution, sorted, hashes sorted: the same set gives
  the same text and digest whatever order or layout it came in, and it parses back;
- what could install other bytes is refused: unpinned or ranged requirements, no hash,
  another hash algorithm, options (an index URL), URLs and paths, a name locked twice;
- the resolve and sync command lines: config ignored, the venv's interpreter, the app's cache,
  hashes required, copies (never hardlinks from the build user's cache), no bytecode, offline
  only when asked, the index URL also offline (uv's cache is keyed by it), wheels-only.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from apprelease.host.locks import (
    BadLock,
    LockedDistribution,
    format_lock,
    lock_digest,
    parse_lock,
    pins,
    resolve_command,
    sync_command,
)

pytestmark = pytest.mark.unit

H1, H2, H3 = "a" * 64, "b" * 64, "c" * 64
UV_OUTPUT = f"""gunicorn==27.0.1 \\
    --hash=sha256:{H2} \\
    --hash=sha256:{H1}
    # via webxample
Web_Xample==1.0.0 \\
    --hash=sha256:{H3}
"""


def test_uv_output_parses_into_pins_with_hashes() -> None:
    assert parse_lock(UV_OUTPUT) == (
        LockedDistribution("gunicorn", "27.0.1", (H1, H2)),
        LockedDistribution("web-xample", "1.0.0", (H3,)),
    )
    assert pins(parse_lock(UV_OUTPUT)) == ["gunicorn==27.0.1", "web-xample==1.0.0"]


def test_the_canonical_form_is_stable_and_parses_back() -> None:
    text = format_lock(parse_lock(UV_OUTPUT))
    assert text == f"gunicorn==27.0.1 --hash=sha256:{H1} --hash=sha256:{H2}\nweb-xample==1.0.0 --hash=sha256:{H3}\n"
    reordered = f"web-xample==1.0.0 --hash=sha256:{H3}\n# a comment\ngunicorn==27.0.1 --hash=sha256:{H2} --hash=sha256:{H1}\n"
    assert format_lock(parse_lock(reordered)) == text
    assert format_lock(parse_lock(text)) == text
    assert lock_digest(text) == lock_digest(format_lock(parse_lock(reordered))) and lock_digest(text).startswith("sha256:")


def test_a_marker_survives_the_round_trip() -> None:
    text = f"tomli==2.0.1 ; python_full_version < '3.11' --hash=sha256:{H1}\n"
    (dist,) = parse_lock(text)
    assert dist.marker == "python_full_version < '3.11'"
    assert format_lock([dist]) == text


@pytest.mark.parametrize("text", [
    f"webxample>=1.0 --hash=sha256:{H1}",
    "webxample==1.0.0",
    f"webxample==1.0.0 --hash=md5:{'a' * 32}",
    f"webxample==1.0.0 --hash=sha256:{H1} --index-url http://elsewhere/simple/",
    f"--index-url http://elsewhere/simple/\nwebxample==1.0.0 --hash=sha256:{H1}",
    f"webxample @ https://elsewhere/webxample-1.0.0-py3-none-any.whl --hash=sha256:{H1}",
    f"./webxample-1.0.0-py3-none-any.whl --hash=sha256:{H1}",
    f"webxample==1.0.0 --hash=sha256:{H1}\nWebXample==1.0.0 --hash=sha256:{H2}",
    "# nothing\n",
    "",
], ids=["range", "no-hash", "md5", "option", "index-line", "url", "path", "twice", "comment-only", "empty"])
def test_what_could_install_other_bytes_is_refused(text: str) -> None:
    with pytest.raises(BadLock):
        parse_lock(text)


def test_resolve_command() -> None:
    argv = resolve_command("/bin/uv", Path("/r/.tmp-b1-x/venv"), cache_dir=Path("/r/cache/uv"),
                           index_url="http://127.0.0.1:1/simple/", requirements_file=Path("/r/locks/.tmp-b1.in"),
                           output=Path("/r/.tmp-b1-x/.home/resolved.txt"))
    assert argv[:3] == ["/bin/uv", "pip", "compile"]
    assert "--no-config" in argv and "--generate-hashes" in argv and "--no-header" in argv
    assert argv[argv.index("--python") + 1] == "/r/.tmp-b1-x/venv/bin/python"
    assert argv[argv.index("--cache-dir") + 1] == "/r/cache/uv"
    assert argv[argv.index("--output-file") + 1] == "/r/.tmp-b1-x/.home/resolved.txt"
    assert argv[-1] == "/r/locks/.tmp-b1.in"


@pytest.mark.parametrize("offline", [True, False])
@pytest.mark.parametrize("only_binary", [True, False])
def test_sync_command(offline: bool, only_binary: bool) -> None:
    argv = sync_command("/bin/uv", Path("/v"), cache_dir=Path("/c"), index_url="http://127.0.0.1:1/simple/",
                        lock_file=Path("/r/locks/b1.txt"), offline=offline, only_binary=only_binary)
    assert argv[:3] == ["/bin/uv", "pip", "sync"] and argv[-1] == "/r/locks/b1.txt"
    assert "--no-config" in argv and "--require-hashes" in argv and "--compile-bytecode" not in argv
    assert argv[argv.index("--link-mode") + 1] == "copy"
    assert argv[argv.index("--index-url") + 1] == "http://127.0.0.1:1/simple/"
    assert ("--offline" in argv) == offline
    assert (argv[argv.index("--only-binary") + 1] == ":all:") if only_binary else "--only-binary" not in argv
    no_index = sync_command("/bin/uv", Path("/v"), cache_dir=Path("/c"), index_url=None, lock_file=Path("/l"),
                            offline=True)
    assert "--index-url" not in no_index
