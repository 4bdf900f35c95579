"""The command line as a user types it (README "Configuration", "Command line"): the real
`ocpp-appliance` in a subprocess, its output and its exit status."""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from appliance import __version__
from conftest import Site, appliance_command, run_cli, start_appliance_process, wait_for

#: the subcommands of README "Command line"
SUBCOMMANDS = [
    # issue 14: API tokens for the web API, stored hashed in the config
    "web-token",
    "serve",
    "check-config",
    "example-config",
    "status",
    "get",
    "set",
    "call",
    "hash-password",
    "simulate",
]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without a config of the caller's; `extra` added."""
    env = {k: v for k, v in os.environ.items() if k != "OCPP_APPLIANCE_CONFIG"}
    env.update(extra)
    return env


def effective(result: subprocess.CompletedProcess) -> dict:
    """check-config's output read back as TOML (comments and all)."""
    assert result.returncode == 0, result.stderr
    return tomllib.loads(result.stdout)


def check_config(text: str, folder: Path) -> subprocess.CompletedProcess:
    path = folder / "bad.toml"
    path.write_text(text)
    return run_cli("check-config", "--config", str(path), cwd=folder, env=clean_env())


# ----------------------------------------------------------------------------- version


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0
    assert re.fullmatch(
        rf"ocpp-appliance {re.escape(__version__)}( \(commit \w+\))?\n", result.stdout
    )


def test_python_dash_m_version():
    result = subprocess.run(
        [sys.executable, "-m", "appliance", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"ocpp-appliance {__version__}")


# ------------------------------------------------------------------------------ config


def test_example_config_is_accepted_by_check_config(tmp_path):
    example = run_cli("example-config", env=clean_env())
    assert example.returncode == 0, example.stderr
    assert "#" in example.stdout, "the example config has no comments"
    path = tmp_path / "appliance.toml"
    path.write_text(example.stdout)
    result = run_cli("check-config", "--config", str(path), cwd=tmp_path, env=clean_env())
    values = effective(result)
    assert values["port"] == 9000
    assert values["host"] == "0.0.0.0"
    assert values["limits"]["max_frame_bytes"] == 1048576
    assert values["storage"]["commit_interval_ms"] == 1000


def test_check_config_prints_the_effective_values(tmp_path):
    path = tmp_path / "appliance.toml"
    path.write_text(
        'port = 9123\nidentity_allowlist = ["CP-1", "CP-2"]\nvalidation = "strict"\n'
        "[limits]\nmax_connections = 7\n"
    )
    values = effective(run_cli("check-config", "--config", str(path), env=clean_env()))
    assert values["port"] == 9123
    assert values["identity_allowlist"] == ["CP-1", "CP-2"]
    assert values["validation"] == "strict"
    assert values["limits"]["max_connections"] == 7
    # keys left out show their defaults
    assert values["limits"]["max_json_depth"] == 64
    assert values["heartbeat_interval_sec"] == 300
    assert values["enable16"] is True


@pytest.mark.parametrize(
    ("text", "key", "line"),
    [
        ('host = "127.0.0.1"\nport = 9000\nprot = 1\n', "prot", 3),
        ('port = "x"\n', "port", 1),
        ("port = 70000\n", "port", 1),
        ("[limits]\nmax_frame_bytes = 0\n", "limits.max_frame_bytes", 2),
        ("[limits]\nmax_frame_byte = 10\n", "limits.max_frame_byte", 2),
        ('validation = "picky"\n', "validation", 1),
        ("enable16 = 1\n", "enable16", 1),
    ],
)
def test_bad_config_exits_2_naming_the_key(tmp_path, text, key, line):
    result = check_config(text, tmp_path)
    assert result.returncode == 2, result.stdout
    assert key in result.stderr
    assert f"line {line}" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_bad_toml_exits_2(tmp_path):
    result = check_config("port = 9000\n[limits\nmax_connections = 3\n", tmp_path)
    assert result.returncode == 2
    assert "TOML" in result.stderr
    assert "line 2" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_config_file_exits_2(tmp_path):
    result = run_cli("check-config", "--config", str(tmp_path / "nope.toml"), env=clean_env())
    assert result.returncode == 2
    assert "nope.toml" in result.stderr
    assert "Traceback" not in result.stderr


def test_config_lookup_order(tmp_path):
    if Path("/etc/ocpp-appliance/appliance.toml").exists():
        pytest.skip("a system config exists on this machine")
    local = tmp_path / "here"
    local.mkdir()
    (local / "appliance.toml").write_text("port = 1111\n")
    elsewhere = tmp_path / "env.toml"
    elsewhere.write_text("port = 2222\n")
    empty = tmp_path / "empty"
    empty.mkdir()

    def port(cwd: Path, **env: str) -> int:
        return effective(run_cli("check-config", cwd=cwd, env=clean_env(**env)))["port"]

    assert port(local, OCPP_APPLIANCE_CONFIG=str(elsewhere)) == 2222
    assert port(local) == 1111
    assert port(empty) == 9000
    # --config beats them all
    explicit = tmp_path / "explicit.toml"
    explicit.write_text("port = 3333\n")
    result = run_cli(
        "check-config",
        "--config",
        str(explicit),
        cwd=local,
        env=clean_env(OCPP_APPLIANCE_CONFIG=str(elsewhere)),
    )
    assert effective(result)["port"] == 3333


# ------------------------------------------------------------------------------- serve


def test_serve_with_bad_config_exits_2_without_listening(tmp_path):
    path = tmp_path / "appliance.toml"
    path.write_text('host = "127.0.0.1"\nport = 0\nprot = 1\n')
    result = run_cli("serve", "--config", str(path), cwd=tmp_path, env=clean_env())
    assert result.returncode == 2
    assert "prot" in result.stderr
    assert "listening" not in result.stdout + result.stderr
    assert not (tmp_path / "appliance.db").exists()


def test_serve_on_a_port_in_use_exits_1(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = tmp_path / "appliance.toml"
        path.write_text(f'host = "127.0.0.1"\nport = {port}\n')
        result = run_cli("serve", "--config", str(path), cwd=tmp_path, env=clean_env())
    assert result.returncode == 1
    assert str(port) in result.stderr
    assert "in use" in result.stderr.lower()
    assert "Traceback" not in result.stderr


# -------------------------------------------------------------------------------- help


def listed_subcommands() -> list[str]:
    """The subcommands `ocpp-appliance --help` lists (indented under COMMAND)."""
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    return re.findall(r"^    ([a-z][a-z-]*)", result.stdout, re.M)


def test_every_subcommand_listed_is_one_of_the_spec():
    # set, call, hash-password and simulate arrive with their issues; none may be invented
    listed = listed_subcommands()
    assert {"serve", "check-config", "example-config"} <= set(listed)
    assert [c for c in listed if c not in SUBCOMMANDS] == []


def test_help_of_every_subcommand_shows_an_example():
    listed = listed_subcommands()
    assert {"serve", "check-config", "example-config"} <= set(listed), listed
    for command in listed:
        result = run_cli(command, "--help")
        assert result.returncode == 0, result.stderr
        assert f"usage: ocpp-appliance {command}" in result.stdout
        # an example line: the command as a user would type it
        example = re.search(rf"example.*\n?.*ocpp-appliance {command}\b", result.stdout, re.I)
        assert example, f"no example in `ocpp-appliance {command} --help`:\n{result.stdout}"


def test_unknown_subcommand_exits_2():
    result = run_cli("frobnicate")
    assert result.returncode == 2
    assert "frobnicate" in result.stderr


# ------------------------------------------------------------- database problems (#13.10)


def _config(folder: Path, database: str, port: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "appliance.toml"
    path.write_text(f'host = "127.0.0.1"\nport = {port}\ndatabase = "{database}"\n')
    return path


#: every command that opens the database, as a user types it
DATABASE_COMMANDS = [
    ["status"],
    ["get", "*"],
    ["set", "CP1.control.availability", "false"],
    ["call", "CP1", "Reset", '{"type": "Soft"}'],
]


def assert_named_problem(result: subprocess.CompletedProcess, path: str, *words: str) -> None:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert path in result.stderr, result.stderr
    assert "cannot listen" not in result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


def test_a_database_in_proc_is_a_database_problem(tmp_path):
    config = _config(tmp_path, "/proc/app.db")
    served = run_cli("serve", "--config", str(config), env=clean_env())
    assert_named_problem(served, "/proc/app.db", "database", "cannot create")
    for command in DATABASE_COMMANDS:
        result = run_cli(*command, "--config", str(config), env=clean_env())
        assert_named_problem(result, "/proc/app.db", "no database")


def test_a_missing_folder_is_an_error_not_created(tmp_path):
    config = _config(tmp_path, "data/app.db")
    for command in ("check-config", "serve"):
        result = run_cli(command, "--config", str(config), env=clean_env())
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert "'database' (line 3)" in result.stderr
        assert f"{tmp_path / 'data'} does not exist" in result.stderr
        assert "mkdir" in result.stderr
        assert "listening" not in result.stderr
    assert not (tmp_path / "data").exists()
    for command in DATABASE_COMMANDS:
        result = run_cli(*command, "--config", str(config), env=clean_env())
        assert_named_problem(result, str(tmp_path / "data"), "does not exist")


def test_a_file_where_the_folder_should_be(tmp_path):
    (tmp_path / "data").write_text("not a folder")
    config = _config(tmp_path, "data/app.db")
    result = run_cli("check-config", "--config", str(config), env=clean_env())
    assert result.returncode == 2
    assert f"{tmp_path / 'data'} is not a folder" in result.stderr
    result = run_cli("status", "--config", str(config), env=clean_env())
    assert_named_problem(result, str(tmp_path / "data"), "is not a folder")


def test_the_packaged_database_folder_may_be_missing(tmp_path):
    # systemd's StateDirectory makes /var/lib/ocpp-appliance for the service
    config = _config(tmp_path, "/var/lib/ocpp-appliance/appliance.db")
    result = run_cli("check-config", "--config", str(config), env=clean_env())
    assert result.returncode == 0, result.stderr
    # and for the processes of a big site (ocpp-appliance@N): appliance-N.db beside it
    result = run_cli("check-config", "--config", str(config), "--instance", "3", env=clean_env())
    assert result.returncode == 0, result.stderr
    assert 'database = "/var/lib/ocpp-appliance/appliance-3.db"' in result.stdout


def test_a_file_that_is_not_a_database(tmp_path):
    (tmp_path / "app.db").write_text("these are my notes, not a database\n" * 100)
    config = _config(tmp_path, "app.db")
    for command in [["serve"], *DATABASE_COMMANDS]:
        result = run_cli(*command, "--config", str(config), env=clean_env())
        assert_named_problem(result, str(tmp_path / "app.db"), "not an SQLite database")


@pytest.fixture
def read_only_mount(tmp_path):
    """A tmpfs that can be switched to read-only (root only, as in test_durability)."""
    mount = tmp_path / "mnt"
    mount.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def _remount_read_only(mount: Path) -> None:
    done = subprocess.run(["mount", "-o", "remount,ro", str(mount)], capture_output=True)
    assert done.returncode == 0, done.stderr


def test_a_read_only_file_system_is_named(read_only_mount, start_appliance):
    appliance = start_appliance(name="mnt/appliance")  # its folder is on the tmpfs
    assert appliance.folder.parent == read_only_mount
    assert appliance.stop() == 0
    fresh = read_only_mount / "fresh"
    fresh.mkdir()
    _remount_read_only(read_only_mount)
    config = str(appliance.folder / "appliance.toml")
    for command in [["serve"], *DATABASE_COMMANDS]:
        result = run_cli(*command, "--config", config, env=clean_env())
        assert_named_problem(result, str(appliance.db), "read-only file system")
    # a new database there: the same, for the file it would create
    config = str(_config(fresh.parent.parent / "cfg", str(fresh / "app.db")))
    result = run_cli("serve", "--config", config, env=clean_env())
    assert_named_problem(result, str(fresh / "app.db"), "cannot create", "read-only")


def _as_nobody() -> tuple[list[str], dict[str, str]] | None:
    """`python -m appliance` as the unprivileged user `nobody` (command and environment),
    or None where that cannot be had: not root, or no interpreter of this version that
    `nobody` may run (a pyenv build under /root is not one; the system's may be)."""
    if os.geteuid() != 0:
        return None
    import sysconfig

    root = Path(__file__).resolve().parents[1]
    env = {**clean_env(), "PYTHONPATH": f"{root}:{sysconfig.get_paths()['purelib']}"}
    check = f"import sys, appliance.cli; assert sys.version_info[:2] == {sys.version_info[:2]}"
    for interpreter in dict.fromkeys([sys.executable, "/usr/bin/python3"]):
        try:
            probe = subprocess.run(
                [interpreter, "-c", check], user="nobody", env=env, capture_output=True, timeout=60
            )
        except OSError:
            continue
        if probe.returncode == 0:
            return [interpreter, "-m", "appliance"], env
    return None


def test_permission_denied_names_the_group_to_join(tmp_path):
    import grp

    nobody = _as_nobody()
    if nobody is None:
        pytest.skip("needs root and an interpreter of this version that nobody may run")
    command, env = nobody
    folder = Path(tempfile.mkdtemp(prefix="ocpp-perm-"))  # not under pytest's 0700 tmp
    try:
        folder.chmod(0o755)
        appliance = start_appliance_process(folder / "box")
        assert appliance.stop() == 0
        box = appliance.folder
        box.chmod(0o775)
        (box / "appliance.toml").chmod(0o644)
        group = grp.getgrgid(100).gr_name  # "users" on Debian: nobody is not a member
        for path in (box, appliance.db):
            os.chown(path, 0, 100)
        assert oct(appliance.db.stat().st_mode & 0o777) == "0o660"
        config = str(box / "appliance.toml")
        for args in DATABASE_COMMANDS:
            result = subprocess.run(
                [*command, *args, "--config", config],
                user="nobody",
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert_named_problem(result, str(appliance.db), "permission denied")
            assert f"belongs to the group {group}" in result.stderr
            assert f"sudo adduser $USER {group}" in result.stderr
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_the_port_is_checked_before_the_database_is_created(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = _config(tmp_path, "app.db", port)
        result = run_cli("serve", "--config", str(config), env=clean_env())
    assert result.returncode == 1
    assert f"127.0.0.1:{port}" in result.stderr and "in use" in result.stderr.lower()
    assert "--port" in result.stderr
    assert not (tmp_path / "app.db").exists()


# ------------------------------------------------------- the appliance is down (#13.11)


def test_set_and_call_know_at_once_that_the_appliance_was_stopped(start_appliance):
    appliance = start_appliance()
    config = str(appliance.folder / "appliance.toml")
    assert appliance.stop() == 0
    queued = appliance.query("SELECT count(*) FROM control_queue")
    for command in (["set", "CP1.control.availability", "false"], ["call", "CP1", "Reset"]):
        started = time.monotonic()
        result = run_cli(*command, "--config", config, env=clean_env())
        assert time.monotonic() - started < 10, "waited instead of knowing"
        assert result.returncode == 1
        assert "the appliance is not running" in result.stderr
        assert "stopped" in result.stderr and "nothing was written" in result.stderr
        assert f"ocpp-appliance serve --config {config}" in result.stderr
        assert "Traceback" not in result.stderr
    assert appliance.query("SELECT count(*) FROM control_queue") == queued
    assert appliance.query("SELECT count(*) FROM states WHERE id LIKE 'CP1.%'") == [(0,)]
    # status still shows the table, and says that it is history
    status = run_cli("status", "--config", config, env=clean_env())
    assert status.returncode == 0
    assert "the appliance is not running (it stopped" in status.stderr


def test_set_knows_that_the_appliance_died(start_appliance):
    appliance = start_appliance()
    config = str(appliance.folder / "appliance.toml")
    alive = wait_for(
        lambda: appliance.query("SELECT value FROM meta WHERE key = 'appliance_alive_ms'"),
        what="the heartbeat",
    )
    assert abs(alive[0][0] - time.time() * 1000) < 10_000
    appliance.proc.kill()  # no clean stop: only the heartbeat's age can tell
    appliance.proc.wait()
    # a crash a minute ago
    with sqlite3.connect(appliance.db) as db:
        db.execute("UPDATE meta SET value = value - 60000 WHERE key = 'appliance_alive_ms'")
    started = time.monotonic()
    result = run_cli("set", "CP1.control.availability", "false", "--config", config)
    assert time.monotonic() - started < 10
    assert result.returncode == 1
    assert "not running (no sign of life for 1 min" in result.stderr


def test_the_heartbeat_is_refreshed_while_the_appliance_runs(start_appliance):
    appliance = start_appliance()
    sql = "SELECT value FROM meta WHERE key = 'appliance_alive_ms'"
    first = wait_for(lambda: appliance.query(sql), what="the heartbeat")[0][0]
    wait_for(lambda: appliance.query(sql)[0][0] > first, timeout=10, what="a newer beat")


# ------------------------------------------------------------ the first minute (#13.12)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _serving_on(port: int, config: Path, log: Path) -> Iterator[subprocess.Popen]:
    """`serve --port PORT` with `config`, listening; stopped (exit 0) at the end."""
    with log.open("w") as out:
        proc = subprocess.Popen(
            [*appliance_command(), "serve", "--config", str(config), "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: f"127.0.0.1:{port}/" in log.read_text(), 30, "listening")
        yield proc
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


def test_serve_port_overrides_the_config(start_appliance, tmp_path):
    port = _free_port()
    config = _config(tmp_path, "app.db", 9000)
    with (
        _serving_on(port, config, tmp_path / "serve.log"),
        socket.create_connection(("127.0.0.1", port), timeout=5),
    ):
        pass
    bad = run_cli("serve", "--config", str(config), "--port", "70000", env=clean_env())
    assert bad.returncode == 2 and "--port" in bad.stderr


def test_serve_port_stays_in_force_across_a_sighup(tmp_path):
    port = _free_port()
    config = _config(tmp_path, "app.db", 9000)
    log = tmp_path / "serve.log"
    with _serving_on(port, config, log) as proc:
        config.write_text(config.read_text() + 'log_level = "debug"\n')
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "config reloaded" in log.read_text(), 10, "the reload")
        assert "port changed" not in log.read_text()


# ------------------------------------------------------ one config, N processes (#23)


def _boot(url: str, identity: str) -> None:
    with connect(f"{url}/{identity}", subprotocols=["ocpp1.6"]) as ws:
        ws.send(json.dumps([2, "b", "BootNotification", {"chargePointVendor": "V",
                                                         "chargePointModel": "M"}]))  # fmt: skip
        assert json.loads(ws.recv())[0] == 3


def _identities(site: Site, *options: str) -> list[str]:
    result = run_cli("status", "--config", str(site.config), "--json", *options, env=clean_env())
    assert result.returncode == 0, result.stderr
    return [row["identity"] for row in json.loads(result.stdout)]


def test_instances_of_one_config_serve_on_their_ports_with_their_databases(site):
    """README "A big site on several processes": `serve --instance N` listens on the
    config's port + N and web port + N and writes appliance-N.db beside the config's
    database; `status --instance N` reads that process's file."""
    one, two = site.start(1), site.start(2)
    assert (one.port, two.port) == (site.port + 1, site.port + 2)
    assert (one.web_port, two.web_port) == (site.web_port + 1, site.web_port + 2)
    assert "(instance 2) listening on" in two.log()
    _boot(one.url, "CP-ONE")
    _boot(two.url, "CP-TWO")
    one.wait_rows("SELECT 1 FROM messages WHERE action = 'BootNotification'")
    two.wait_rows("SELECT 1 FROM messages WHERE action = 'BootNotification'")
    assert one.db == site.folder / "appliance-1.db" and two.db == site.folder / "appliance-2.db"
    assert not (site.folder / "appliance.db").exists()
    assert _identities(site, "--instance", "1") == ["CP-ONE"]
    assert _identities(site, "--instance", "2") == ["CP-TWO"]
    got = run_cli("get", "CP-TWO.*", "--config", str(site.config), "--instance", "1")
    assert got.returncode == 1  # not process 1's charge point
    got = run_cli("get", "CP-TWO.*", "--config", str(site.config), "--instance", "2")
    assert got.returncode == 0 and "CP-TWO.info.connected" in got.stdout
    # the dashboard of each process shows its own charge points
    api = httpx.get(f"http://127.0.0.1:{two.web_port}/api/charge-points", timeout=10).json()
    assert [row["identity"] for row in api] == ["CP-TWO"]
    # a process that is not running: its file, and the command that starts it
    down = run_cli("status", "--config", str(site.config), "--instance", "3", env=clean_env())
    assert down.returncode == 1 and str(site.folder / "appliance-3.db") in down.stderr
    assert two.stop() == 0
    stopped = run_cli("set", "CP-TWO.control.availability", "false",
                      "--config", str(site.config), "--instance", "2")  # fmt: skip
    assert stopped.returncode == 1
    assert f"serve --config {site.config} --instance 2`" in stopped.stderr
    assert one.stop() == 0


def test_an_instance_reloads_the_shared_config_and_keeps_its_ports(site):
    """A SIGHUP re-reads the one file and applies the instance rule again: what the
    file changes is in force, the instance's ports and database are not "changed"."""
    two = site.start(2)
    with connect(f"{two.url}/CP-GONE", subprotocols=["ocpp1.6"]) as gone:
        site.config.write_text('identity_allowlist = ["CP-KEPT"]\n' + site.config.read_text())
        two.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "config reloaded" in two.log(), 10, "the reload")
        # the new allowlist is in force: the charge point it no longer admits is closed
        with pytest.raises(ConnectionClosed):
            gone.recv(timeout=10)
    assert "takes a restart" not in two.log()
    _boot(two.url, "CP-KEPT")  # still on port + 2, writing appliance-2.db
    two.wait_rows("SELECT 1 FROM messages WHERE identity = 'CP-KEPT'")
    assert two.web_port == site.web_port + 2
    assert two.stop() == 0


def test_simulate_takes_its_url_from_the_config(start_appliance, tmp_path):
    appliance = start_appliance()
    # the config a user has: the appliance's own, with the port it listens on
    config = tmp_path / "sim.toml"
    config.write_text(f'host = "0.0.0.0"\nport = {appliance.port}\n')
    result = run_cli("simulate", "--config", str(config), "--duration", "2", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["url"] == f"ws://127.0.0.1:{appliance.port}"
    appliance.wait_rows("SELECT 1 FROM connection_log WHERE identity = 'SIM001'")
    with_tls = tmp_path / "tls.toml"
    with_tls.write_text(f'port = {appliance.port}\n[tls]\ncert = "c.pem"\nkey = "k.pem"\n')
    result = run_cli("simulate", "--config", str(with_tls), "--duration", "1")
    assert result.returncode == 1  # a ws:// server: the TLS handshake fails
    assert "TLS" in result.stderr
    any_port = tmp_path / "zero.toml"
    any_port.write_text("port = 0\n")
    result = run_cli("simulate", "--config", str(any_port), "--duration", "1")
    assert result.returncode == 2 and "--url" in result.stderr


def _simulator(url: str, folder: Path, *args: str) -> tuple[subprocess.Popen, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    err = folder / "sim.err"
    proc = subprocess.Popen(
        [*appliance_command(), "simulate", "--url", url, *args],
        stdout=(folder / "sim.out").open("w"),
        stderr=err.open("w"),
    )
    return proc, err


def test_plain_simulate_says_when_it_connects_disconnects_and_cannot_reach(
    start_appliance, tmp_path
):
    appliance = start_appliance()
    proc, err = _simulator(appliance.url, tmp_path / "sim", "--speed", "60")
    try:
        wait_for(lambda: "SIM001 connected to " in err.read_text(), 20, "a connect line")
        assert appliance.stop() == 0  # the server goes away
        wait_for(lambda: "SIM001 disconnected" in err.read_text(), 20, "a disconnect line")
        wait_for(lambda: "Connection refused" in err.read_text(), 20, "a cannot-reach line")
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
    text = err.read_text()
    assert "server closed it (1001" in text, text
    assert "Traceback" not in text


def test_remote_start_without_an_id_token_says_how_to_set_one(start_appliance, tmp_path):
    appliance = start_appliance()
    config = str(appliance.folder / "appliance.toml")
    proc, err = _simulator(appliance.url, tmp_path / "sim", "--speed", "1")
    try:
        wait_for(lambda: "SIM001 connected" in err.read_text(), 20, "the charge point")
        appliance.wait_rows("SELECT 1 FROM states WHERE id = 'SIM001.info.connected' AND val = 1")
        trigger = "SIM001.control.requestStartTransaction.trigger"
        result = run_cli("set", trigger, "true", "--config", config)
        assert result.returncode == 1, result.stdout
        token = "SIM001.control.requestStartTransaction.idToken"
        assert f"ocpp-appliance set {token} " in result.stderr, result.stderr
        # and with one, it starts
        assert run_cli("set", token, "TAG0001", "--config", config).returncode == 0
        started = run_cli("set", trigger, "true", "--config", config)
        assert started.returncode == 0, started.stderr
        assert "Accepted" in started.stdout
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(20)


@pytest.mark.parametrize(
    ("payload", "where"),
    [
        ('{"type": "Hard",}', "column 17"),
        ("{'type': 'Hard'}", "column 2"),
        ('{"type": "Hard"', "column 16"),
        ('{\n  "type": "Hard"\n  "x": 1\n}', "line 3 column 3"),
    ],
)
def test_call_with_malformed_json_says_where(tmp_path, payload, where):
    result = run_cli("call", "CP1", "Reset", payload, cwd=tmp_path, env=clean_env())
    assert result.returncode == 2
    assert "not JSON" in result.stderr and where in result.stderr, result.stderr
    assert "^" in result.stderr
    assert "Traceback" not in result.stderr


def test_call_with_json_that_is_not_an_object(tmp_path):
    result = run_cli("call", "CP1", "Reset", '["Hard"]', cwd=tmp_path, env=clean_env())
    assert result.returncode == 2
    assert "JSON object" in result.stderr and "array" in result.stderr


# ------------------------------------------------------------- the README, as written

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_section(title: str) -> str:
    return README.read_text().split(f"\n## {title}", 1)[1].split("\n## ", 1)[0]


def shell_blocks(text: str) -> list[list[str]]:
    return [block.strip().splitlines() for block in re.findall(r"```sh\n(.*?)```", text, re.S)]


def test_the_readme_first_minute_runs_in_the_virtual_environment():
    """`ocpp-appliance` is in .venv/bin: the set-up shows the activation, and each
    terminal of "Try it in one minute" starts with it."""
    setup = shell_blocks(readme_section("Set-up"))
    assert [". .venv/bin/activate" in line for block in setup for line in block].count(True) == 1
    install = setup[0]
    assert all(".venv/bin/" in line for line in install if line and not line.startswith("#"))
    first_minute = readme_section("Try it in one minute").split("\n### ", 1)[0]
    terminals = [b for b in shell_blocks(first_minute) if any("ocpp-appliance" in x for x in b)]
    starters = [b for b in terminals if b[0] == ". .venv/bin/activate"]
    assert len(starters) == 3, terminals


def test_the_readme_activation_line_works():
    activate = Path(sys.prefix) / "bin" / "activate"
    if sys.prefix == sys.base_prefix or not activate.exists():
        pytest.skip("the tests do not run in a virtual environment")
    done = subprocess.run(
        ["bash", "-c", f". {activate} && cd / && ocpp-appliance --version"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/")},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ocpp-appliance ")


def test_the_readme_heartbeat_query_tells_the_age(start_appliance):
    line = next(
        line
        for block in shell_blocks(readme_section("Command line"))
        for line in block
        if "heartbeat_age_s" in line
    )
    sql = re.search(r'sqlite3 appliance.db "(.*)"', line).group(1)
    appliance = start_appliance()
    wait_for(lambda: appliance.query("SELECT 1 FROM meta WHERE key = 'appliance_alive_ms'"))
    [(age,)] = appliance.query(sql)
    assert 0 <= age < 10


def descriptor_limit(soft: int, hard: int) -> Callable[[], None]:
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def soft_descriptors(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no Max open files in /proc/<pid>/limits")


def test_serve_has_the_descriptors_its_connections_need_or_says_so(tmp_path):
    """README "Bad peers": `[limits] max_connections` charge points need as many file
    descriptors, and the database and the dashboard some more: `serve` raises its soft
    limit as far as the hard one allows, and says at start when that is not enough."""
    roomy = start_appliance_process(tmp_path / "roomy", preexec_fn=descriptor_limit(512, 4096))
    try:
        assert soft_descriptors(roomy.proc.pid) == 1000 + 256
        assert "file descriptors" not in roomy.log()
    finally:
        assert roomy.stop() == 0
    tight = start_appliance_process(tmp_path / "tight", preexec_fn=descriptor_limit(512, 512))
    try:
        assert (
            "only 512 file descriptors: [limits] max_connections = 1000 needs about 1256"
            in tight.log()
        )
    finally:
        assert tight.stop() == 0
