"""Build step of webxample: hashed copies of its static files, as Django's collectstatic makes.

Everything else is in pyproject.toml. Each file in webxample/static/ is also written to the
wheel as `<stem>.<first 12 hex digits of its SHA-256><suffix>` (`app.css` -> `app.3f9a1c0d2b4e.css`),
and `static/manifest.json` maps each name to its hashed name, as ManifestStaticFilesStorage's
staticfiles.json does. The app names the hashed file in its pages (`/page`); nginx serves it
from the release (proxy.static), so a page and its assets must come from the same release.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SOURCE_STATIC = Path(__file__).resolve().parent / "webxample" / "static"


def hashed_name(path: Path) -> str:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    return f"{path.stem}.{digest}{path.suffix}"


class BuildPyWithHashedStatic(build_py):
    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "webxample" / "static"
        manifest = {}
        for path in sorted(p for p in SOURCE_STATIC.iterdir() if p.is_file() and p.name != "manifest.json"):
            manifest[path.name] = hashed_name(path)
            (target / manifest[path.name]).write_bytes(path.read_bytes())
        (target / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


setup(cmdclass={"build_py": BuildPyWithHashedStatic})
