"""What the agent does about the host's systemd units (host/units.py), without a systemd.

Covers: the plan as a matrix (first install, converged, drift of the text, disabled, stopped,
failed, starting) and that a running unit is never restarted; rendered units: ExecStart
that systemd splits back into the argv (%, $, spaces, quotes), the supervisor unit's kill
mode and restart policy, the nginx unit's reload and graceful stop; the executor's pid
translation is the identity without a target; the scope command line of a revision with
resources, and that such a watcher is not given a user by the supervisor (systemd-run drops
to it).
"""

from __future__ import annotations

import pytest

from apprelease.host import units
from apprelease.host.executor import LocalExecutor
from apprelease.host.units import ObservedUnit, plan_units

pytestmark = pytest.mark.unit

TEXT = "[Service]\nExecStart=/bin/true\n"
NAME = units.SUPERVISOR_UNIT


@pytest.mark.parametrize(
    ("observed", "expected"),
    [
        pytest.param(None, ["write-unit", "daemon-reload", "enable-unit", "start-unit"], id="first-install"),
        pytest.param(ObservedUnit(TEXT, True, "active"), [], id="converged"),
        pytest.param(ObservedUnit(TEXT + "#x\n", True, "active"), ["write-unit", "daemon-reload"],
                     id="edited-running-no-restart"),
        pytest.param(ObservedUnit(TEXT, False, "active"), ["enable-unit"], id="disabled-running"),
        pytest.param(ObservedUnit(TEXT, True, "inactive"), ["start-unit"], id="stopped"),
        pytest.param(ObservedUnit(TEXT, True, "failed"), ["start-unit"], id="failed"),
        pytest.param(ObservedUnit(TEXT, True, "activating"), [], id="starting"),
        pytest.param(ObservedUnit(None, False, "inactive"), ["write-unit", "daemon-reload", "enable-unit",
                                                             "start-unit"], id="file-removed"),
    ],
)
def test_plan_units(observed, expected):
    actions = plan_units({NAME: TEXT}, {NAME: observed} if observed else {})
    assert [a.kind for a in actions] == expected
    assert all(a.unit == NAME for a in actions if a.kind != units.DAEMON_RELOAD)


def test_one_daemon_reload_for_several_units():
    actions = plan_units({"a.service": TEXT, "b.service": TEXT}, {})
    assert [str(a) for a in actions] == [
        "write-unit(a.service)", "write-unit(b.service)", "daemon-reload",
        "enable-unit(a.service)", "enable-unit(b.service)", "start-unit(a.service)", "start-unit(b.service)",
    ]


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["/usr/bin/python3", "-m", "circus.circusd", "/var/lib/apprelease/supervisor/circus.ini"],
         "/usr/bin/python3 -m circus.circusd /var/lib/apprelease/supervisor/circus.ini"),
        (["nginx", "-p", "/r/nginx/"], "nginx -p /r/nginx/"),
        (["echo", "50%", "$HOME"], 'echo "50%%" "$$HOME"'),
        (["echo", 'a "b" c\\d'], 'echo "a \\"b\\" c\\\\d"'),
    ],
)
def test_exec_line(argv, line):
    assert units.exec_line(argv) == line


def test_supervisor_unit():
    text = units.render_supervisor_unit(root="/var/lib/apprelease", kind="circus",
                                        argv=["/py", "-m", "circus.circusd", "/r/circus.ini"],
                                        pidfile="/r/circusd.pid", forking=False,
                                        environment={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
    assert "Type=simple\n" in text and "PIDFile" not in text
    assert "ExecStart=/py -m circus.circusd /r/circus.ini\n" in text
    assert "Environment=LANG=C.UTF-8 PATH=/usr/bin:/bin\n" in text
    # stop: the daemon drains its watchers itself; a crashed daemon comes back
    assert "KillMode=mixed\n" in text and "Restart=always\n" in text
    assert text.endswith("[Install]\nWantedBy=multi-user.target\n")


def test_nginx_unit():
    text = units.render_nginx_unit(root="/r", argv=["nginx", "-p", "/r/nginx/", "-c", "/r/nginx/nginx.conf"],
                                   pidfile="/r/nginx/run/nginx.pid", stop_seconds=30)
    assert "Type=forking\nPIDFile=/r/nginx/run/nginx.pid\n" in text
    assert "ExecReload=/bin/kill -s HUP $MAINPID\n" in text
    assert "KillSignal=SIGQUIT\n" in text and "TimeoutStopSec=30\n" in text


def test_pids_are_the_hosts_without_a_target():
    assert LocalExecutor().visible_pid(4242) == 4242


def test_scope_argv_puts_a_revision_in_its_apps_slice_with_its_limits():
    argv = units.scope_argv(watcher="ar_shop_web_r1", key="shop_web", user="u", group="g", memory_max="256M",
                            cpu_weight=50)
    assert argv == ("/usr/bin/systemd-run", "--scope", "--quiet", "--collect", "--unit=ar_shop_web_r1.scope",
                    "--slice=apprelease-shop_web.slice", "-p", "MemoryMax=256M", "-p", "CPUWeight=50",
                    "--uid=u", "--gid=g", "--")
    only_cpu = units.scope_argv(watcher="w", key="k", user="u", group="u", memory_max=None, cpu_weight=10)
    assert "-p" in only_cpu and not any(a.startswith("MemoryMax") for a in only_cpu)


def test_every_apps_slice_is_a_direct_child_of_apprelease_slice():
    # systemd nests slices at '-': without the mapping, team-a_web-x would sit in team-a_web's slice.
    slices = {key: units.app_slice(key) for key in ("team-a_web", "team-a_web-x", "team_a-web")}
    assert all(name.count("-") == 1 and name.startswith("apprelease-") for name in slices.values()), slices
    assert len(set(slices.values())) == len(slices)


def test_a_scoped_watcher_is_started_as_root_and_drops_to_the_app_user_in_systemd_run():
    from pathlib import Path

    from apprelease.host.supervisors.circus import render_watcher, watcher_options
    from apprelease.host.supervisors.supervisord import render_program
    from apprelease.host.watchers import WatcherSpec

    plain = WatcherSpec(name="ar_k_r1", argv=("/v/bin/python", "-m", "gunicorn"), cwd=Path("/r"), user="u", group="u")
    scoped = WatcherSpec(name="ar_k_r1", argv=plain.argv, cwd=plain.cwd, user="u", group="u",
                         scope=units.scope_argv(watcher="ar_k_r1", key="k", user="u", group="u", memory_max="1G",
                                                cpu_weight=None))
    assert watcher_options(plain)["uid"] == "u" and "uid" not in watcher_options(scoped)
    assert watcher_options(scoped)["cmd"].startswith("'/usr/bin/systemd-run' '--scope'")
    assert "\nuid = u\n" in render_watcher(plain) and "uid =" not in render_watcher(scoped)
    assert "\nuser = u\n" in render_program(plain) and "user =" not in render_program(scoped)


def test_resources_are_part_of_the_revision_only_when_set():
    from apprelease.api import identity
    from apprelease.api.models import Resources
    from support.hosts import app_release

    plain = app_release("http://index.invalid/simple", "1.0.0", port=8080).spec
    limited = plain.model_copy(update={"resources": Resources(memory_max="256M")})
    assert identity.revision(limited) != identity.revision(plain)
    assert "resources" not in plain.wire()  # an existing spec keeps its revision
