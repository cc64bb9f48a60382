"""The layering of the package, held by import-linter's contracts in pyproject.toml.

Covers: every contract holds on the tree as it is; and each contract can fail: a copy of the
package with one forbidden import added (the host importing the Kubernetes client or the
metrics exporter, the operator importing the data plane, the agent importing the operator,
the api importing a layer above it, which the operator then reaches through it, the agent
importing the kubernetes package (directly or through host), a pure
decision spawning processes, a leaf importing the api, the kubectl plugin importing the data
plane's executors, the data plane importing the plugin) breaks exactly the contracts that
forbid it, and lint-imports exits non-zero.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "operator" / "apprelease"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(package_parent: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    # PYTHONPATH first: the package under package_parent wins over the editable install.
    env = {**os.environ, "PYTHONPATH": str(package_parent)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
    )


def contract_lines(output: str) -> dict[str, str]:
    """Contract name -> KEPT/BROKEN, from lint-imports' summary (long names wrap onto two lines)."""
    text = " ".join(output.split())
    names = [
        "cli | plugin > agent | controller > host > api",
        "api imports nothing else of apprelease",
        "host (the data plane) imports api only",
        "agent imports host and api, never the operator",
        "the agent never imports the kubernetes package",
        "controller (the operator) imports api only",
        "metrics and logs are leaves",
        "plugin (kubectl apprelease) imports api and the pure planners",
        "the pure decisions do no I/O",
    ]
    verdicts = {}
    for name in names:
        start = text.find(name)
        assert start >= 0, f"contract {name!r} not reported:\n{output}"
        rest = text[start:]
        kept, broken = rest.find(" KEPT"), rest.find(" BROKEN")
        candidates = [i for i in (kept, broken) if i >= 0]
        verdicts[name] = "KEPT" if min(candidates) == kept else "BROKEN"
    return verdicts


def test_every_contract_holds(tmp_path: Path):
    result = lint_imports(ROOT / "operator", tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert set(contract_lines(result.stdout).values()) == {"KEPT"}


BREAKS = [
    pytest.param("host/plan.py", "import kubernetes", ["host (the data plane)", "the pure decisions", "the agent never imports the kubernetes"],
                 id="host-imports-kubernetes"),
    pytest.param("agent/kube.py", "from kubernetes import client", ["the agent never imports the kubernetes"],
                 id="agent-imports-kubernetes"),
    pytest.param("kubeclient.py", "from .api import models", ["metrics and logs"], id="kubeclient-imports-api"),
    pytest.param("host/core.py", "from .. import metrics", ["host (the data plane)"], id="host-imports-metrics"),
    pytest.param("host/builder.py", "from ..agent import kube", ["host (the data plane)", "cli | plugin > agent"], id="host-imports-agent"),
    pytest.param("controller/reconcile.py", "from ..host import layout", ["controller (the operator)"], id="controller-imports-host"),
    pytest.param("agent/sync.py", "from ..controller import plan", ["agent imports host", "cli | plugin > agent"], id="agent-imports-controller"),
    pytest.param("api/models.py", "from ..host import layout", ["api imports nothing", "cli | plugin > agent", "controller (the operator)"], id="api-imports-host"),
    pytest.param("controller/plan.py", "import subprocess", ["the pure decisions"], id="pure-plan-spawns"),
    pytest.param("metrics.py", "from .api import models", ["metrics and logs"], id="leaf-imports-api"),
    pytest.param("plugin/views.py", "from ..host import core", ["plugin (kubectl apprelease)", "the pure decisions"],
                 id="plugin-imports-executors"),
    # the plugin reaches the operator's planner, so the agent (through host) would too
    pytest.param("host/plan.py", "from ..plugin import views",
                 ["host (the data plane)", "cli | plugin > agent", "agent imports host"], id="host-imports-plugin"),
]


@pytest.mark.parametrize(("module", "line", "broken"), BREAKS)
def test_a_forbidden_import_breaks_its_contract(tmp_path: Path, module: str, line: str, broken: list[str]):
    copy = tmp_path / "src"
    shutil.copytree(PACKAGE, copy / "apprelease", ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / "apprelease" / module
    target.write_text(target.read_text() + f"\n{line}  # broken on purpose by test_layers\n")

    result = lint_imports(copy, tmp_path)

    assert result.returncode != 0, result.stdout
    verdicts = contract_lines(result.stdout)
    got = sorted(name for name, verdict in verdicts.items() if verdict == "BROKEN")
    want = sorted(name for name in verdicts if any(name.startswith(prefix) for prefix in broken))
    assert got == want, result.stdout


def _rooms_in_code() -> set[str]:
    return {p.parent.name for p in PACKAGE.glob("*/__init__.py")}


def test_readme_layout_and_design_show_the_rooms_of_the_code():
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout"):]
    design = (ROOT / "docs" / "design.md").read_text()
    rooms = _rooms_in_code()
    assert rooms >= {"api", "host", "agent", "controller"}
    for room in rooms:
        assert f"operator/apprelease/{room}/" in layout, f"README's layout misses {room}/"
        assert f"| `{room}/` |" in design, f"docs/design.md's rooms table misses {room}/"
    listed = {line.split("/")[2] for line in layout.splitlines() if line.startswith("operator/apprelease/") and line.split("/")[2].isidentifier()}
    assert listed <= rooms | {"templates"}, "README lists a room the code does not have"


def test_readme_links_nothing_outside_the_repository():
    readme = (ROOT / "README.md").read_text()
    assert "../" not in readme.replace("](docs/", ""), "README links outside the repository"
