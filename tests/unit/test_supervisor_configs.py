"""The circus and supervisord configs a watcher is persisted as, read back by each daemon's
own parser (circus.config.get_config; supervisor's ServerOptions.realize).

Covers: the watcher/program appears exactly once, with exactly the expected sections; the
command the daemon will run is exactly the launcher + the WatcherSpec argv; the environment
the launcher rebuilds is exactly the spec env, for any names and values the API rules allow
(hypothesis, with hostile values: ini comments ' ;' ' #', section headers, '%' and
'%(here)s', '$NAME', '$(circus.x)', quotes, spaces at either end, '""'); the main configs
bind control sockets inside the supervisor dir only; paths too long for a unix socket and
values the formats would alter are refused; the rendered gunicorn argv survives circus's
variable expansion.
"""

from __future__ import annotations

import configparser
import shlex
import string
from pathlib import Path

import pytest
from supervisor.datatypes import RestartUnconditionally
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apprelease.host.supervisors.base import (
    SupervisorError,
    decode_env,
    launch_argv,
    quote_arg,
)
from apprelease.host.supervisors.circus import CircusSupervisor, render_watcher, watcher_options
from apprelease.host.supervisors.supervisord import SupervisordSupervisor, render_program
from apprelease.host.watchers import WatcherSpec
from apprelease.api import rules

pytestmark = pytest.mark.unit

HOSTILE = [
    "",
    '""',
    "  padded  ",
    "a ;comment",
    "a #comment",
    "x\t;y",
    "]\n"[:1] + "[watcher:evil]",
    "[program:evil]",
    "100%",
    "%(here)s",
    "%(ENV_HOME)s",
    "$HOME",
    "$(circus.env.HOME)",
    "((circus.wid))",
    "it's \"quoted\"",
    "'",
    '"',
    "key=value,OTHER=1",
    "ünïcødé ☃",
    "\\",
]
env_names = st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_]{0,20}\Z")
env_values = st.one_of(
    st.sampled_from(HOSTILE),
    st.text(st.characters(blacklist_characters="\x00\r\n", blacklist_categories=("Cs",)), max_size=40),
    st.lists(st.sampled_from(HOSTILE), max_size=4).map(" ".join),
)
envs = st.dictionaries(env_names, env_values, max_size=6)
args = st.lists(
    st.one_of(st.sampled_from(HOSTILE), st.text(st.characters(blacklist_characters="\x00\r\n", blacklist_categories=("Cs",)), max_size=20)),
    max_size=4,
)


def watcher(tmp: Path, env: dict[str, str], extra: list[str] | None = None, name: str = "ar_shop_web_r1") -> WatcherSpec:
    return WatcherSpec(
        name=name,
        argv=(str(tmp / "venv/bin/python"), "-m", "gunicorn", "--bind", f"unix:{tmp}/run/r1.sock", *(extra or []), "app:application"),
        cwd=tmp,
        user="nobody",
        group="nogroup",
        env=env,
        stdout_log=tmp / "r1.stdout.log",
        stderr_log=tmp / "r1.stderr.log",
        graceful_timeout=35,
    )


def test_hostile_values_pass_the_api_rules() -> None:
    for value in HOSTILE:
        rules.ENV_VALUE.check(value)


# -- circus ---------------------------------------------------------------------------


def circus_read(tmp: Path, spec: WatcherSpec) -> tuple[list[str], dict[str, object]]:
    """Write the configs and read them back as circusd does; (sections of the watcher file, watcher)."""
    from circus.config import get_config
    from circus.util import parse_env_dict, replace_gnu_args

    backend = CircusSupervisor(tmp / "supervisor")
    backend._write_main_config()
    text = render_watcher(spec)
    backend.watcher_file(spec.name).write_text(text)
    parser = configparser.RawConfigParser(interpolation=None, strict=True)
    parser.read_string(text)
    [loaded] = get_config(str(backend.config))["watchers"]
    # What Watcher.load_from_config and Process.format_args then do with them.
    loaded["env"] = parse_env_dict(loaded["env"])
    loaded["argv"] = shlex.split(replace_gnu_args(loaded["cmd"], env=loaded["env"], wid=1))
    return parser.sections(), loaded


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(env=envs, extra=args)
def test_circus_watcher_file_round_trips(tmp_path: Path, env: dict[str, str], extra: list[str]) -> None:
    spec = watcher(tmp_path, env, extra)
    sections, loaded = circus_read(tmp_path, spec)
    expected_sections = [f"watcher:{spec.name}"] + ([f"env:{spec.name}"] if env else [])
    assert sections == expected_sections
    assert loaded["name"] == spec.name
    assert loaded["argv"] == launch_argv(spec)
    assert decode_env(loaded["env"]) == env
    assert (loaded["uid"], loaded["gid"], loaded["working_dir"]) == ("nobody", "nogroup", str(tmp_path))
    assert loaded["graceful_timeout"] == 35 and loaded["stop_signal"] == 15
    assert loaded["copy_env"] is False
    assert loaded["stdout_stream"] == {
        "class": "FileStream",
        "filename": str(tmp_path / "r1.stdout.log"),
        "max_bytes": str(spec.max_bytes),
        "backup_count": str(spec.backup_count),
    }


def test_circus_live_options_match_the_file(tmp_path: Path) -> None:
    spec = watcher(tmp_path, {"A": "1"})
    _, loaded = circus_read(tmp_path, spec)
    options = watcher_options(spec)
    assert options["cmd"] == loaded["cmd"]
    assert options["env"] == {k: v for k, v in loaded["env"].items() if k != "__name__"}
    assert options["stop_signal"] == 15 and isinstance(options["stop_signal"], int)


def test_circus_main_config_binds_ipc_sockets_in_its_private_dir(tmp_path: Path) -> None:
    from circus.config import get_config

    backend = CircusSupervisor(tmp_path / "supervisor")
    backend._write_main_config()
    config = get_config(str(backend.config))
    assert not config["statsd"]  # no circusd-stats process, no stats socket
    for key in ("endpoint", "pubsub_endpoint"):
        assert config[key].startswith(f"ipc://{tmp_path}/supervisor/"), key
    assert not config["multicast_endpoint"]  # no UDP discovery socket
    assert not config["httpd"]
    assert config["watchers"] == []
    assert (tmp_path / "supervisor").stat().st_mode & 0o777 == 0o700


# -- supervisord ----------------------------------------------------------------------


def supervisord_read(tmp: Path, spec: WatcherSpec) -> tuple[list[str], object]:
    from supervisor.options import ServerOptions

    backend = SupervisordSupervisor(tmp / "supervisor")
    backend._write_main_config()
    text = render_program(spec)
    backend.program_file(spec.name).write_text(text)
    parser = configparser.RawConfigParser(interpolation=None, strict=True)
    parser.read_string(text)
    options = ServerOptions()
    options.realize(args=["-c", str(backend.config)])
    [group] = options.process_group_configs
    [process] = group.process_configs
    return parser.sections(), process


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(env=envs, extra=args)
def test_supervisord_program_file_round_trips(tmp_path: Path, env: dict[str, str], extra: list[str]) -> None:
    spec = watcher(tmp_path, env, extra)
    sections, process = supervisord_read(tmp_path, spec)
    assert sections == [f"program:{spec.name}"]
    assert process.name == spec.name
    assert shlex.split(process.command) == launch_argv(spec)
    assert decode_env(process.environment or {}) == env
    assert set(process.environment or {}) == {f"APPRELEASE_ENV_{i}" for i in range(len(env))}
    assert process.directory == str(tmp_path)
    assert process.stopsignal == 15 and process.stopwaitsecs == 35
    assert (process.stopasgroup, process.killasgroup, process.autostart) == (False, True, True)
    assert process.autorestart is RestartUnconditionally
    assert process.stdout_logfile == str(tmp_path / "r1.stdout.log")
    assert process.stdout_logfile_maxbytes == spec.max_bytes


def test_supervisord_main_config_has_only_a_private_unix_socket(tmp_path: Path) -> None:
    backend = SupervisordSupervisor(tmp_path / "supervisor")
    backend._write_main_config()
    parser = configparser.RawConfigParser(interpolation=None, strict=True)
    parser.read(backend.config)
    assert "inet_http_server" not in parser.sections()
    assert parser["unix_http_server"]["file"] == str(tmp_path / "supervisor" / "supervisord.sock")
    assert parser["unix_http_server"]["chmod"] == "0700"


# -- refusals -------------------------------------------------------------------------


@pytest.mark.parametrize("backend", [CircusSupervisor, SupervisordSupervisor], ids=["circus", "supervisord"])
def test_socket_path_too_long_is_a_clear_error(tmp_path: Path, backend: type) -> None:
    deep = tmp_path / ("d" * 100) / "supervisor"
    with pytest.raises(SupervisorError, match="longer than the 107"):
        backend(deep)._write_main_config()


@pytest.mark.parametrize("render", [render_watcher, render_program], ids=["circus", "supervisord"])
@pytest.mark.parametrize("bad", ["/srv/my app", "/srv/a;b", "/srv/$(circus.env.x)", "/srv/%(here)s"])
def test_values_the_formats_would_alter_are_refused(tmp_path: Path, render: object, bad: str) -> None:
    spec = watcher(tmp_path, {})
    spec = WatcherSpec(**{**spec.__dict__, "cwd": Path(bad)})
    with pytest.raises(ValueError, match="cannot be written into a supervisor config"):
        render(spec)  # type: ignore[operator]


@given(st.text(st.characters(blacklist_characters="\x00\r\n", blacklist_categories=("Cs",))))
def test_quote_arg_is_read_back_by_shlex(arg: str) -> None:
    quoted = quote_arg(arg)
    assert shlex.split(quoted) == [arg]
    assert "$(" not in quoted and "((" not in quoted
    assert not any(quoted[i] in ";#" and quoted[i - 1] in string.whitespace for i in range(1, len(quoted)))


class FakeGetent:
    """An executor whose getent knows one passwd entry; nothing else runs."""

    def __init__(self, entry: str) -> None:
        self.entry = entry
        self.log: list[list[str]] = []

    def run(self, argv: list[str], **_: object) -> object:
        import subprocess

        self.log.append(list(argv))
        if argv[:2] == ["getent", "passwd"] and argv[2] == self.entry.split(":")[0]:
            return subprocess.CompletedProcess(argv, 0, self.entry + "\n")
        return subprocess.CompletedProcess(argv, 2, "")


@pytest.mark.parametrize(
    ("name", "entry"),
    [
        pytest.param("root", "root:x:0:0::/root:/bin/sh", id="root-by-name"),
        pytest.param("toor", "toor:x:0:0::/root:/bin/sh", id="uid-0-alias"),
        pytest.param("toor", "toor:x:0:0:apprelease app ns/web:/root:/bin/sh", id="uid-0-recorded-as-ours"),
    ],
)
def test_apps_never_run_as_root(name: str, entry: str) -> None:
    from apprelease.host.users import UnsafeUser, ensure_user

    executor = FakeGetent(entry)
    with pytest.raises(UnsafeUser):
        # even when an admin allowed the account for the namespace
        ensure_user(name, executor, namespace="ns", app="web", allowed_existing=frozenset({name}))  # type: ignore[arg-type]
    assert not any(argv[0] == "useradd" for argv in executor.log)
