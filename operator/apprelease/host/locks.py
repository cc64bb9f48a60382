"""A buildId's lock: the exact distributions (name==version and sha256 of each file) its venv holds.

Called by `builder`: the first uv build of a buildId on a host resolves the requirements once
(`uv pip compile --generate-hashes`, confined as the app's build user), the agent parses and
rewrites the answer in one canonical form (`parse_lock`, `format_lock`), keeps it root-owned
under `apps/<key>/locks/<buildId>.txt` (it outlives the release: GC, a rebuild) and records it
in release.json with its digest (`lock_digest`). Every later build of that buildId installs
exactly that set (`uv pip sync --require-hashes`), offline first: no resolution, no index
request when the app's cache holds the files. The digest reaches the HostRelease status
(`lastBuild.lockDigest`), so hosts of one buildId that resolved differently (an index that
changed between their first builds) can be told apart.

Pure: text in, text or argv out; nothing here touches the filesystem or runs anything.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
_PIN = re.compile(rf"^({_NAME})(\[[^\]]*\])?==([A-Za-z0-9.+!_-]+)(?:\s*;\s*(.+?))?$")
_HASH = re.compile(r"^--hash=sha256:([0-9a-f]{64})$")
# Locks are small (a few lines per distribution); anything far bigger is not one of ours.
MAX_LOCK_BYTES = 1 << 20


class BadLock(ValueError):
    """Text that is not a lock this module wrote or can trust to install the same bytes."""


@dataclass(frozen=True, order=True)
class LockedDistribution:
    name: str  # PEP 503 normalized
    version: str
    hashes: tuple[str, ...]  # sha256 hex digests of the files allowed for it (wheels, sdist)
    marker: str = ""  # an environment marker uv wrote (rare: the venv's interpreter is known)


def normalize(name: str) -> str:
    """PEP 503 normalized project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _logical_lines(text: str) -> list[str]:
    """Requirement lines with comments dropped and backslash continuations joined."""
    lines, current = [], ""
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        if current.strip():
            lines.append(current.strip())
        current = ""
    if current.strip():
        lines.append(current.strip())
    return lines


def parse_lock(text: str) -> tuple[LockedDistribution, ...]:
    """The distributions of a lock: `uv pip compile --generate-hashes` output or `format_lock`'s.

    Every entry must pin one version (`==`) and carry at least one sha256; options, URLs,
    paths and unpinned entries are refused (`BadLock`): such a lock could install different
    bytes on the next build.
    """
    if len(text.encode()) > MAX_LOCK_BYTES:
        raise BadLock("the lock is larger than any lock this agent writes")
    found: dict[str, LockedDistribution] = {}
    for line in _logical_lines(text):
        requirement, *options = line.split()
        # A marker may hold spaces: everything up to the first --hash belongs to the requirement.
        while options and not options[0].startswith("--"):
            requirement += " " + options.pop(0)
        pin = _PIN.match(requirement)
        if pin is None:
            raise BadLock(f"not a pinned requirement: {requirement!r}")
        hashes = []
        for option in options:
            matched = _HASH.match(option)
            if matched is None:
                raise BadLock(f"unexpected option {option!r} for {requirement}")
            hashes.append(matched.group(1))
        if not hashes:
            raise BadLock(f"{requirement} has no sha256")
        name = normalize(pin.group(1))
        if name in found:
            raise BadLock(f"{name} is locked twice")
        found[name] = LockedDistribution(name, pin.group(3), tuple(sorted(set(hashes))), (pin.group(4) or "").strip())
    if not found:
        raise BadLock("the lock names no distribution")
    return tuple(sorted(found.values()))


def format_lock(distributions: Sequence[LockedDistribution]) -> str:
    """One canonical text per set: sorted by name, one line each, hashes sorted.

    Two hosts that resolved the same set write byte-identical locks, so their digests match.
    """
    lines = []
    for dist in sorted(distributions):
        marker = f" ; {dist.marker}" if dist.marker else ""
        lines.append(f"{dist.name}=={dist.version}{marker} " + " ".join(f"--hash=sha256:{h}" for h in dist.hashes))
    return "\n".join(lines) + "\n"


def lock_digest(text: str) -> str:
    """What status shows of a lock: 'sha256:<hex>' of its canonical text."""
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def pins(distributions: Sequence[LockedDistribution]) -> list[str]:
    """`name==version` of each distribution, for release.json and logs."""
    return [f"{d.name}=={d.version}" for d in sorted(distributions)]


def _uv_common(venv: Path, cache_dir: Path, index_url: str | None, only_binary: bool) -> list[str]:
    argv = ["--no-config", "--python", str(venv / "bin" / "python"), "--cache-dir", str(cache_dir), "--no-progress"]
    if only_binary:
        argv += ["--only-binary", ":all:"]
    if index_url:
        argv += ["--index-url", index_url]
    return argv


def resolve_command(
    uv: str, venv: Path, *, cache_dir: Path, index_url: str | None, requirements_file: Path, output: Path,
    only_binary: bool = False,
) -> list[str]:
    """Resolve once, for the venv's interpreter: every pin with the sha256 of its files, into `output`."""
    return [
        uv, "pip", "compile", *_uv_common(venv, cache_dir, index_url, only_binary),
        "--generate-hashes", "--no-header", "--no-annotate", "--output-file", str(output), str(requirements_file),
    ]  # fmt: skip


def sync_command(
    uv: str, venv: Path, *, cache_dir: Path, index_url: str | None, lock_file: Path, offline: bool,
    only_binary: bool = False,
) -> list[str]:
    """Install exactly the lock's set, refusing any file whose sha256 it does not name.

    `--link-mode copy`: hardlinks would share inodes with the cache, which the build user
    owns and could rewrite after the agent sealed the venv. No `--compile-bytecode`: bytecode
    is compiled after the release serves (`bytecode.compile_release`). The index URL is given
    offline too: uv's cache is keyed by it.
    """
    argv = [uv, "pip", "sync", *_uv_common(venv, cache_dir, index_url, only_binary)]
    argv += ["--link-mode", "copy", "--require-hashes"]
    if offline:
        argv.append("--offline")
    return [*argv, str(lock_file)]
