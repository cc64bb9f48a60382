"""watcher_for: the gunicorn watcher of one revision, as a pure function of the spec.

Covers: the argv (python -m gunicorn, socket, workers/threads/timeouts, extra args before
the entrypoint), the name from layout.watcher_name, the environment (spec env only, PATH
led by the venv's bin, a spec PATH kept behind it), the user/group, the cwd, the logs under
logs/, and the stop timing (gunicorn's graceful timeout plus a margin, SIGTERM).
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from apprelease.host.layout import HostLayout, watcher_name
from apprelease.host.watchers import STOP_MARGIN_SECONDS, watcher_for
from apprelease.api.models import HostReleaseSpec

pytestmark = pytest.mark.unit

ROOT = Path("/var/lib/apprelease")
KEY = "shop_web"


def host_spec(**overrides: object) -> HostReleaseSpec:
    fields: dict[str, object] = {
        "version": "1.0.0",
        "source": {"requirements": ["webxample==1.0.0"]},
        "entrypoint": "webxample.app:application",
        "user": "web",
        "proxy": {"serverNames": ["web.example"]},
        "app": "web",
        "node": "node-1",
        "buildId": "b0123456789abcde",
        "revision": "r0123456789a",
    }
    fields.update(overrides)
    return HostReleaseSpec.model_validate(fields)


def test_argv_runs_gunicorn_through_the_venv_interpreter_on_the_revision_socket() -> None:
    spec = host_spec(
        server={"workers": 3, "threads": 8, "timeoutSeconds": 20, "gracefulTimeoutSeconds": 7, "extraArgs": ["--max-requests=1000"]}
    )
    watcher = watcher_for(HostLayout(ROOT), KEY, spec)
    app = ROOT / "apps" / KEY
    assert watcher.argv == (
        f"{app}/releases/b0123456789abcde/venv/bin/python",
        "-m",
        "gunicorn",
        "--bind",
        f"unix:{app}/run/r0123456789a.sock",
        "--workers",
        "3",
        "--threads",
        "8",
        "--worker-class",
        "gthread",
        "--timeout",
        "20",
        "--graceful-timeout",
        "7",
        "--no-control-socket",
        "--max-requests=1000",
        "webxample.app:application",
    )


def test_identity_user_cwd_and_logs() -> None:
    watcher = watcher_for(HostLayout(ROOT), KEY, host_spec())
    app = ROOT / "apps" / KEY
    assert watcher.name == watcher_name(KEY, "r0123456789a") == "ar_shop_web_r0123456789a"
    assert (watcher.user, watcher.group) == ("web", "web")
    assert watcher.cwd == app / "releases" / "b0123456789abcde"
    assert watcher.stdout_log == app / "logs" / "r0123456789a.stdout.log"
    assert watcher.stderr_log == app / "logs" / "r0123456789a.stderr.log"
    assert watcher.max_bytes > 0 and watcher.backup_count > 0


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        pytest.param([], {}, id="no-env"),
        pytest.param([{"name": "A", "value": "1"}, {"name": "EMPTY"}], {"A": "1", "EMPTY": ""}, id="spec-env"),
        pytest.param([{"name": "PATH", "value": "/opt/bin"}], {}, id="spec-path-kept-after-venv"),
    ],
)
def test_env_is_the_spec_env_plus_path(env: list[dict[str, str]], expected: dict[str, str]) -> None:
    watcher = watcher_for(HostLayout(ROOT), KEY, host_spec(env=env))
    venv_bin = ROOT / "apps" / KEY / "releases" / "b0123456789abcde" / "venv" / "bin"
    path = dict(watcher.env).pop("PATH")
    given = {e["name"]: e.get("value", "") for e in env}
    assert path == f"{venv_bin}:{given.get('PATH', '/usr/local/bin:/usr/bin:/bin')}"
    assert {k: v for k, v in watcher.env.items() if k != "PATH"} == expected


def test_nothing_from_the_agent_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", "/root/.kube/config")
    watcher = watcher_for(HostLayout(ROOT), KEY, host_spec(env=[{"name": "A", "value": "1"}]))
    assert set(watcher.env) == {"A", "PATH"}


def test_stop_is_sigterm_with_room_for_gunicorns_own_graceful_timeout() -> None:
    watcher = watcher_for(HostLayout(ROOT), KEY, host_spec(server={"gracefulTimeoutSeconds": 12}))
    assert watcher.stop_signal == signal.SIGTERM
    assert watcher.graceful_timeout == 12 + STOP_MARGIN_SECONDS
