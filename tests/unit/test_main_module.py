"""`python -m apprelease` is the `apprelease` command.

Covers: it runs (a subprocess of this interpreter), shows the same subcommands as the
console script, and passes arguments and exit codes through (`crds --check` on the
checked-in CRDs exits 0; an unknown subcommand exits 2 with argparse's usage).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "apprelease", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_help_names_every_subcommand():
    out = run("--help")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: apprelease ")
    for command in ("crds", "validate", "agent", "operator"):
        assert command in out.stdout


def test_arguments_and_exit_codes_pass_through():
    checked = run("crds", "--out", str(ROOT / "crds"), "--check")
    assert checked.returncode == 0, checked.stderr
    assert "up to date" in checked.stdout
    unknown = run("no-such-command")
    assert unknown.returncode == 2 and "invalid choice" in unknown.stderr
