"""Searching for secret values where they must not be: files under agent roots, text, API objects.

Used by the secrets tests (integration and e2e). A value is searched as is, and also in the
encodings a careless writer would produce (base64, hex as the supervisor configs carry env),
so "not found" means not there in any form we know of.
"""

from __future__ import annotations

import base64
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


def forms(value: str) -> list[bytes]:
    raw = value.encode()
    return [raw, base64.b64encode(raw), raw.hex().encode()]


def contains(data: bytes, values: Iterable[str]) -> list[str]:
    return [v for v in values if any(f in data for f in forms(v))]


@dataclass(frozen=True)
class Hit:
    path: Path
    mode: int
    uid: int
    values: tuple[str, ...]

    @property
    def private(self) -> bool:
        """root-owned and 0600 (the only files allowed to hold a value)."""
        return self.uid == 0 and self.mode == 0o600


def scan_tree(root: Path, values: Iterable[str]) -> list[Hit]:
    """Every regular file under `root` holding one of `values` (sockets, links, fifos skipped)."""
    values = list(values)
    hits = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            try:
                st = path.lstat()
                if not stat.S_ISREG(st.st_mode):
                    continue
                found = contains(path.read_bytes(), values)
            except OSError:
                continue
            if found:
                hits.append(Hit(path, stat.S_IMODE(st.st_mode), st.st_uid, tuple(found)))
    return hits


def process_environment(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.decode().split("=", 1) for item in raw.split(b"\0") if b"=" in item)
