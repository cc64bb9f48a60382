"""watcher_for: the gunicorn watcher of one revision, as a pure function of the spec.

Covers: the argv (python -m gunicorn, socket, workers/threads/timeouts, extra args before
the entrypoint), the options by gunicorn version x worker class x what the venv holds
(--no-control-socket from 25.1 on only, --threads for gthread only, the uvicorn worker's
import path, refusals naming what is missing or too old, gunicorn 20 without pkg_resources), the name from layout.watcher_name, the environment (spec env only, PATH
led by the venv's bin, a spec PATH kept behind it), the user/group, the cwd, the logs under
logs/, and the stop timing (gunicorn's graceful timeout plus a margin, SIGTERM); process
types: one watcher per replica, the program from the venv only, their stop signal and timeout.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from apprelease.host.layout import HostLayout, watcher_name
from apprelease.host.servers import ServerSoftware, UnsupportedServer
from apprelease.host.watchers import STOP_MARGIN_SECONDS, gunicorn_argv, watcher_for
from apprelease.api.models import HostReleaseSpec

pytestmark = pytest.mark.unit

ROOT = Path("/var/lib/apprelease")
KEY = "shop_web"
GUNICORN_27 = ServerSoftware(gunicorn="27.0.1")


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
    watcher = watcher_for(HostLayout(ROOT), KEY, spec, GUNICORN_27)
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
    watcher = watcher_for(HostLayout(ROOT), KEY, host_spec(), GUNICORN_27)
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
    watcher = watcher_for(HostLayout(ROOT), KEY, host_spec(env=env), GUNICORN_27)
    venv_bin = ROOT / "apps" / KEY / "releases" / "b0123456789abcde" / "venv" / "bin"
    path = dict(watcher.env).pop("PATH")
    given = {e["name"]: e.get("value", "") for e in env}
    assert path == f"{venv_bin}:{given.get('PATH', '/usr/local/bin:/usr/bin:/bin')}"
    assert {k: v for k, v in watcher.env.items() if k != "PATH"} == expected


def test_nothing_from_the_agent_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", "/root/.kube/config")
    watcher = watcher_for(HostLayout(ROOT), KEY, host_spec(env=[{"name": "A", "value": "1"}]), GUNICORN_27)
    assert set(watcher.env) == {"A", "PATH"}


def test_stop_is_sigterm_with_room_for_gunicorns_own_graceful_timeout() -> None:
    watcher = watcher_for(HostLayout(ROOT), KEY, host_spec(server={"gracefulTimeoutSeconds": 12}), GUNICORN_27)
    assert watcher.stop_signal == signal.SIGTERM
    assert watcher.graceful_timeout == 12 + STOP_MARGIN_SECONDS


PY, SOCK = Path("/v/bin/python"), Path("/r/x.sock")


def options_of(argv: tuple[str, ...]) -> tuple[str, ...]:
    """The argv between the socket and the entrypoint, minus the timeouts every version gets."""
    middle = argv[5:-1]
    assert argv[3:5] == ("--bind", f"unix:{SOCK}")
    out, i = [], 0
    while i < len(middle):
        if middle[i] in ("--timeout", "--graceful-timeout"):
            i += 2
            continue
        out.append(middle[i])
        i += 1
    return tuple(out)


@pytest.mark.parametrize(
    ("gunicorn", "control_socket_flag"),
    [
        pytest.param("20.1.0", False, id="20.1-with-setuptools-81"),
        pytest.param("21.2.0", False, id="21.2"),
        pytest.param("22.0.0", False, id="22.0"),
        pytest.param("23.0.0", False, id="23.0"),
        pytest.param("25.0.3", False, id="25.0-no-flag-yet"),
        pytest.param("25.1.0", True, id="25.1-added-it"),
        pytest.param("25.1.0rc1", True, id="25.1-prerelease"),
        pytest.param("26.1.0", True, id="26.1"),
        pytest.param("27.0.1", True, id="27.0"),
    ],
)
@pytest.mark.parametrize(
    ("worker_class", "software", "worker_options"),
    [
        pytest.param("gthread", {}, ("--threads", "8", "--worker-class", "gthread"), id="gthread"),
        pytest.param("sync", {}, ("--worker-class", "sync"), id="sync-no-threads"),
        pytest.param(
            "uvicorn", {"uvicorn": "0.54.0", "uvicorn_worker": "0.4.0"},
            ("--worker-class", "uvicorn_worker.UvicornWorker"), id="uvicorn-worker-package",
        ),
        pytest.param(
            "uvicorn", {"uvicorn": "0.29.0"}, ("--worker-class", "uvicorn.workers.UvicornWorker"), id="uvicorn-own-worker"
        ),
    ],
)
def test_options_by_gunicorn_version_and_worker_class(
    gunicorn: str, control_socket_flag: bool, worker_class: str, software: dict[str, str], worker_options: tuple[str, ...]
) -> None:
    spec = host_spec(server={"workers": 3, "threads": 8, "workerClass": worker_class, "extraArgs": ["--max-requests=9"]})
    argv = gunicorn_argv(PY, SOCK, spec, ServerSoftware(gunicorn=gunicorn, setuptools="81.0.0", **software))
    expected = ("--workers", "3", *worker_options, *(("--no-control-socket",) if control_socket_flag else ()), "--max-requests=9")
    assert options_of(argv) == expected
    assert argv[:3] == (str(PY), "-m", "gunicorn") and argv[-1] == "webxample.app:application"


@pytest.mark.parametrize(
    ("software", "worker_class", "words"),
    [
        pytest.param(ServerSoftware(gunicorn=None), "gthread", "gunicorn is not installed", id="no-gunicorn"),
        pytest.param(ServerSoftware(gunicorn="19.9.0"), "gthread", "gunicorn 19.9.0 found", id="gunicorn-19.9"),
        pytest.param(ServerSoftware(gunicorn="20.0.4"), "sync", "needs gunicorn 20.1 or newer", id="gunicorn-20.0"),
        pytest.param(ServerSoftware(gunicorn="23.0.0"), "uvicorn", "neither uvicorn-worker nor uvicorn", id="uvicorn-missing"),
        pytest.param(
            ServerSoftware(gunicorn="20.1.0", setuptools="84.2.1"), "gthread", "setuptools 84.2.1: add setuptools<82",
            id="gunicorn-20-without-pkg-resources",
        ),
        pytest.param(ServerSoftware(gunicorn="20.1.0"), "gthread", "no setuptools", id="gunicorn-20-no-setuptools"),
    ],
)
def test_refusals_name_what_is_missing(software: ServerSoftware, worker_class: str, words: str) -> None:
    with pytest.raises(UnsupportedServer, match=words):
        gunicorn_argv(PY, SOCK, host_spec(server={"workerClass": worker_class}), software)


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        pytest.param({"buildId": "b1"}, None, id="built-before-the-field"),
        pytest.param({"gunicorn": "23.0.0"}, ServerSoftware("23.0.0"), id="gunicorn-only"),
        pytest.param(
            {"gunicorn": "23.0.0", "uvicorn": "0.54.0", "uvicornWorker": "0.4.0", "setuptools": None},
            ServerSoftware("23.0.0", "0.54.0", "0.4.0"), id="with-uvicorn",
        ),
        pytest.param({"gunicorn": None}, ServerSoftware(None), id="recorded-missing"),
    ],
)
def test_release_record_round_trip(record: dict[str, object], expected: ServerSoftware | None) -> None:
    assert ServerSoftware.from_record(record) == expected
    if expected is not None:
        assert ServerSoftware.from_record(expected.record()) == expected


# -- process types ---------------------------------------------------------------------------

def fake_venv(root: Path, spec: HostReleaseSpec, scripts: dict[str, int]) -> Path:
    """The venv of `spec` under `root` with bin/ holding `scripts` (name -> mode)."""
    venv = HostLayout(root).app(KEY).venv(spec.build_id)
    (venv / "bin").mkdir(parents=True)
    for name, mode in scripts.items():
        (venv / "bin" / name).write_text("#!/bin/sh\n")
        (venv / "bin" / name).chmod(mode)
    return venv


def test_process_watchers_one_per_replica_with_the_venv_env_and_their_stop_signal(tmp_path: Path) -> None:
    from apprelease.host.layout import parse_process_watcher_name
    from apprelease.host.watchers import process_watchers

    spec = host_spec(env=[{"name": "DATABASE", "value": "x"}], processes={
        "worker": {"command": ["celery", "-A", "proj", "worker"], "replicas": 2, "stopSignal": "QUIT",
                   "gracefulTimeoutSeconds": 12},
        "beat": {"command": ["python", "-m", "proj.beat"]},
    })
    venv = fake_venv(tmp_path, spec, {"celery": 0o755, "python": 0o755})
    watchers = process_watchers(HostLayout(tmp_path), KEY, spec)
    assert [w.name for w in watchers] == [f"ar_{KEY}_{spec.revision}_{i}" for i in ("beat-0", "worker-0", "worker-1")]
    assert [parse_process_watcher_name(w.name) for w in watchers][1] == (KEY, spec.revision, "worker-0")
    beat, worker0, worker1 = watchers
    assert beat.argv == (str(venv / "bin" / "python"), "-m", "proj.beat")
    # a console script is run as a file by the venv's interpreter: no shebang, no PATH lookup
    assert worker0.argv == (str(venv / "bin" / "python"), str(venv / "bin" / "celery"), "-A", "proj", "worker")
    assert (worker0.stop_signal, worker0.graceful_timeout) == (int(signal.SIGQUIT), 12)
    assert (beat.stop_signal, beat.graceful_timeout) == (int(signal.SIGTERM), 30)
    assert worker1.env["APPRELEASE_REPLICA"] == "1" and worker1.env["APPRELEASE_PROCESS"] == "worker"
    assert worker1.env["DATABASE"] == "x" and worker1.env["PATH"].startswith(f"{venv / 'bin'}:")
    assert (worker1.user, worker1.group, worker1.cwd) == ("web", "web", venv.parent)
    assert worker1.stderr_log.name == f"{spec.revision}.worker-1.stderr.log"


def test_a_program_the_venv_lacks_is_refused_naming_the_field_and_what_is_there(tmp_path: Path) -> None:
    from apprelease.host.watchers import ProgramNotFound, process_watchers

    spec = host_spec(processes={"worker": {"command": ["celery", "worker"]}})
    fake_venv(tmp_path, spec, {"gunicorn": 0o755, "python": 0o755, "activate": 0o644})
    with pytest.raises(ProgramNotFound) as info:
        process_watchers(HostLayout(tmp_path), KEY, spec)
    assert str(info.value) == ("processes.worker.command[0]: 'celery' is not a program in the release's venv bin/ "
                               "(it has: gunicorn, python); add the package that provides it to source.requirements")
