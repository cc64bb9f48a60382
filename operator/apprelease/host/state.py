"""The little an agent remembers per app that the host itself cannot show.

Everything else (which venvs exist, what runs, what nginx serves) is observed afresh on each
reconcile. What is kept here: which revision failed its boot (so it is not retried in a
loop), the order releases were served in (for GC and "previous"), the last build, the
switch history reported in HostRelease status, and which revisions ran their release
command (so a rollback does not run it again). Written atomically (temp file + rename).
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

from pydantic import Field

from ..api.models import BuildRecord, Model, ReleaseCommandRecord, RevisionEvent

HISTORY_KEPT = 20
RELEASED_KEPT = 50


class FailedRevision(Model):
    revision: str
    message: str
    log_tail: str = ""
    at: datetime


class AppState(Model):
    failed: FailedRevision | None = None
    served_builds: list[str] = Field(default_factory=list)  # most recent first
    last_build: BuildRecord | None = None
    history: list[RevisionEvent] = Field(default_factory=list)  # oldest first
    released: list[str] = Field(default_factory=list)  # revisions whose release command succeeded here, newest last
    release_command: ReleaseCommandRecord | None = None  # the last one run, for status

    def ran_release_command(self, revision: str) -> None:
        self.released = [*[r for r in self.released if r != revision], revision][-RELEASED_KEPT:]

    def served(self, build_id: str, revision: str, version: str) -> None:
        self.served_builds = [build_id, *[b for b in self.served_builds if b != build_id]]
        self.history = [*self.history, RevisionEvent(revision=revision, version=version, at=now())][-HISTORY_KEPT:]

    def previous_build(self) -> str | None:
        return self.served_builds[1] if len(self.served_builds) > 1 else None


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def load(path: Path) -> AppState:
    if not path.exists():
        return AppState()
    return AppState.model_validate_json(path.read_text())


def save(path: Path, state: AppState) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(state.wire(), indent=2))
    os.replace(tmp, path)
