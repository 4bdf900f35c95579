"""The command line as a user types it (README "Configuration", "Command line"): the real
`ocpp-appliance` in a subprocess, its output and its exit status."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from appliance import __version__
from conftest import run_cli

#: the subcommands of README "Command line"
SUBCOMMANDS = [
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
