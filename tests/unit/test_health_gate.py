"""The health gate's decisions when the revision's process ends, and the words used for it.

Covers: the gate stops at the first poll after the process has exited (not at the deadline)
and says how it ended; without an exit it waits out the deadline; the Failed message names
the exit code (or signal) and the last non-empty log line that is not gunicorn's progress
(a restarted successor's start-up lines), and keeps the old wording for an
app that runs but answers wrong; supervisord's log lines are read for the exits its API
forgets (BACKOFF, FATAL). No processes: a socket path that does not exist, strings.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from apprelease.host import health
from apprelease.host.core import health_failure_message, last_words
from apprelease.host.supervisors.base import ProcessExit
from apprelease.host.supervisors.supervisord import logged_exit

pytestmark = pytest.mark.unit

NOWHERE = Path("/nonexistent/apprelease/r1.sock")


def test_gate_stops_when_the_process_has_exited() -> None:
    calls = iter([None, None, ProcessExit(2)])
    started = time.monotonic()
    result = health.wait_healthy(NOWHERE, "/healthz", expected=200, deadline_seconds=30, exited=lambda: next(calls))
    assert time.monotonic() - started < 5
    assert not result.healthy and result.exited == ProcessExit(2)
    assert "FileNotFoundError" in result.detail  # what the last poll saw, kept for the record


def test_gate_waits_out_the_deadline_while_the_process_runs() -> None:
    result = health.wait_healthy(NOWHERE, "/healthz", expected=200, deadline_seconds=0.3)
    assert not result.healthy and result.exited is None and result.seconds >= 0.3


@pytest.mark.parametrize(
    ("ended", "output", "message"),
    [
        pytest.param(ProcessExit(2), "usage: gunicorn [OPTIONS]\ngunicorn: error: unrecognized arguments: --x\n\n",
                     "revision r1 (1.0.0) exited with code 2 before it became healthy: gunicorn: error: unrecognized arguments: --x",
                     id="exit-code"),
        pytest.param(ProcessExit(-9), "booting\n", "revision r1 (1.0.0) was killed by signal 9 before it became healthy: booting",
                     id="signal"),
        pytest.param(ProcessExit(None, "Exited too quickly"), "",
                     "revision r1 (1.0.0) exited (Exited too quickly) before it became healthy: (no output)", id="unknown"),
        pytest.param(None, "whatever\n", "revision r1 (1.0.0) failed its health check: /healthz answered 500, expected 200",
                     id="running-but-unhealthy"),
    ],
)
def test_failed_message(ended: ProcessExit | None, output: str, message: str) -> None:
    result = health.HealthResult(False, "/healthz answered 500, expected 200", 1.0, exited=ended)
    assert health_failure_message("r1", "1.0.0", result, output) == message


@pytest.mark.parametrize(
    ("output", "words"),
    [
        pytest.param(
            "[2026-12-01 07:39:41 +0000] [20293] [ERROR] Reason: Worker failed to boot.\n"
            "[2026-12-01 07:39:45 +0000] [20435] [INFO] Starting gunicorn 27.0.1\n"
            "[2026-12-01 07:39:45 +0000] [20435] [INFO] Listening at: unix:/r/x.sock (20435)\n\n",
            "[2026-12-01 07:39:41 +0000] [20293] [ERROR] Reason: Worker failed to boot.", id="successor-started-already",
        ),
        pytest.param("Traceback (most recent call last):\nRuntimeError: no DATABASE_URL\n", "RuntimeError: no DATABASE_URL",
                     id="app-output"),
        pytest.param("[2026-12-01 07:39:45 +0000] [1] [INFO] Starting gunicorn 23.0.0\n", "", id="progress-only"),
        pytest.param(
            "[2026-12-04 04:46:40 +0000] [124] [ERROR] connection to /r/x.sock failed: [Errno 13] Permission denied\n"
            "[2026-12-04 04:46:41 +0000] [124] [ERROR] connection to /r/x.sock failed: [Errno 13] Permission denied\n"
            "[2026-12-04 04:46:45 +0000] [124] [ERROR] Can't connect to /r/x.sock\n",
            "[2026-12-04 04:46:45 +0000] [124] [ERROR] Can't connect to /r/x.sock "
            "(connection to /r/x.sock failed: [Errno 13] Permission denied)", id="bind-failed-with-its-reason",
        ),
    ],
)
def test_last_words_skip_gunicorn_progress_lines(output: str, words: str) -> None:
    assert last_words(output) == words


LOG = """\
2026-12-01 07:25:04,101 INFO spawned: 'ar_a_r1' with pid 101
2026-12-01 07:25:04,301 WARN exited: ar_a_r1 (exit status 2; not expected)
2026-12-01 07:25:05,101 INFO spawned: 'ar_a_r1' with pid 102
2026-12-01 07:25:05,301 WARN exited: ar_a_r1 (exit status 3; not expected)
2026-12-01 07:25:05,401 WARN exited: ar_a_r10 (terminated by SIGKILL; not expected)
2026-12-01 07:25:05,501 WARN exited: ar_b_r2 (terminated by SIGKILL; not expected)
"""


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        pytest.param("ar_a_r1", ProcessExit(3), id="last-exit-wins"),
        pytest.param("ar_b_r2", ProcessExit(-9), id="signal"),
        pytest.param("ar_a_r", None, id="prefix-of-another-name"),
        pytest.param("ar_c_r3", None, id="never-exited"),
    ],
)
def test_supervisord_log_exits(name: str, expected: ProcessExit | None) -> None:
    assert logged_exit(LOG, name) == expected
