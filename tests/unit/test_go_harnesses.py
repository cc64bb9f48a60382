"""The Go test harnesses under tests/go, run from pytest so `make test` covers them.

Aspects: `go vet` and `go test ./...` pass in tests/go, which holds
- argocdhealth: manifests/argocd/health.lua run in gopher-lua (Argo CD's Lua engine) on
  AppRelease objects captured from real runs (tests/testdata/argocd), and
- kindconfig: kind-config.yaml decoded strictly with kind's own v1alpha4 types.
Go's module downloads come from the module proxy on the first run (a few MB).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

GO_TESTS = Path(__file__).resolve().parents[1] / "go"
GO = shutil.which("go")


def run_go(*args: str) -> subprocess.CompletedProcess[str]:
    # -mod=readonly: a go.mod or go.sum that needs changing fails here instead of being
    # rewritten by the test run.
    assert GO, "Go >= 1.26 is required (README); `make test` builds the control plane with it too"
    return subprocess.run([GO, *args], cwd=GO_TESTS, capture_output=True, text=True, timeout=600,
                          check=False)


@pytest.mark.parametrize("command", [
    pytest.param(("vet", "-mod=readonly", "./..."), id="go-vet"),
    # -count=1: Go's test cache would skip a run whose inputs it does not track.
    pytest.param(("test", "-mod=readonly", "-count=1", "./..."), id="go-test"),
])
def test_go(command: tuple[str, ...]) -> None:
    result = run_go(*command)
    assert result.returncode == 0, f"go {' '.join(command)} in {GO_TESTS}:\n{result.stdout}\n{result.stderr}"
