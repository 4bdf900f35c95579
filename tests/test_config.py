"""The config file as a user writes it (README "Configuration"): strict types for every
key — a string is never a list, a number is never a string — errors that name the key
and the line, the nearest known key for a typo, and check-config's output read back.
Through the real `ocpp-appliance check-config` in a subprocess."""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from conftest import run_cli


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "OCPP_APPLIANCE_CONFIG"}


def check(text: str, folder: Path) -> subprocess.CompletedProcess:
    path = folder / "appliance.toml"
    path.write_text(text)
    return run_cli("check-config", "--config", str(path), cwd=folder, env=clean_env())


def example() -> dict[str, Any]:
    result = run_cli("example-config", env=clean_env())
    assert result.returncode == 0, result.stderr
    return tomllib.loads(result.stdout)


def keys_of(table: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[tuple, Any]]:
    """(key path, value) of every key of the example config, tables flattened."""
    found = []
    for name, value in table.items():
        if isinstance(value, dict):
            found += keys_of(value, (*prefix, name))
        else:
            found.append(((*prefix, name), value))
    return found


EXAMPLE_KEYS = keys_of(example())


def toml_line(path: tuple, value: str) -> str:
    """The TOML text that sets `path` to the literal `value`, in its table."""
    *table, name = path
    header = f"[{'.'.join(table)}]\n" if table else ""
    return f"{header}{name} = {value}\n"


def assert_rejected(result: subprocess.CompletedProcess, key: str, line: int) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert f"'{key}'" in result.stderr, result.stderr
    assert f"line {line}" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


# ----------------------------------------------------------------- no silent coercion


LIST_KEYS = [path for path, value in EXAMPLE_KEYS if isinstance(value, list)]


def test_the_example_config_has_list_keys():
    assert ("identity_allowlist",) in LIST_KEYS
    assert ("authorization", "id_tokens") in LIST_KEYS


@pytest.mark.parametrize("path", LIST_KEYS, ids=[".".join(p) for p in LIST_KEYS])
def test_a_string_where_a_list_is_expected_is_rejected(tmp_path, path):
    # `identity_allowlist = "SIM001"` once became ["S", "I", "M", "0", "0", "1"]
    text = toml_line(path, '"SIM001"')
    result = check(text, tmp_path)
    assert_rejected(result, ".".join(path), text.count("\n"))
    assert '["SIM001"]' in result.stderr, "the message shows how a list of one is written"


@pytest.mark.parametrize("path", LIST_KEYS, ids=[".".join(p) for p in LIST_KEYS])
def test_a_list_of_one_is_taken(tmp_path, path):
    # a measurand's name, an address
    one = {("readings", "measurands"): "SoC", ("limits", "proxy_from"): "192.0.2.1"}.get(
        path, "SIM001"
    )
    result = check(toml_line(path, f'["{one}"]'), tmp_path)
    assert result.returncode == 0, result.stderr
    value: Any = tomllib.loads(result.stdout)
    for name in path:
        value = value[name]
    assert value == [one]


WRONG_TYPE = [
    # a number or a bool written as a string, a string written as a number, a list item
    # of the wrong type: every key of the example config
    (path, '"1"' if not isinstance(value, str | list) else ("[1]" if value == [] else "1"))
    for path, value in EXAMPLE_KEYS
]


@pytest.mark.parametrize(("path", "literal"), WRONG_TYPE, ids=[".".join(p) for p, _ in WRONG_TYPE])
def test_every_key_rejects_a_value_of_another_type(tmp_path, path, literal):
    text = toml_line(path, literal)
    result = check(text, tmp_path)
    assert_rejected(result, ".".join(path), text.count("\n"))


def test_a_bool_is_not_a_number_nor_a_number_a_bool(tmp_path):
    assert_rejected(check("port = true\n", tmp_path), "port", 1)
    result = check("[device_model]\nfetch_on_boot = 0\n", tmp_path)
    assert_rejected(result, "device_model.fetch_on_boot", 2)
    # a whole number is a number of seconds as good as any
    assert check("call_timeout_sec = 5\n", tmp_path).returncode == 0


# ------------------------------------------------------------------- typos and places


@pytest.mark.parametrize(
    ("text", "key", "line", "hint"),
    [
        ('host = "127.0.0.1"\nprot = 9100\n', "prot", 2, "did you mean 'port'"),
        ("[limits]\nmax_frame_byte = 10\n", "limits.max_frame_byte", 2, "'max_frame_bytes'"),
        (
            "[storage]\ncommit_intervall_ms = 10\n",
            "storage.commit_intervall_ms",
            2,
            "'commit_interval_ms'",
        ),
        ("max_connections = 5\n", "max_connections", 1, "[limits]"),
        ("[limitz]\nmax_connections = 5\n", "limitz", 1, "'limits'"),
        ('[charge_points."CP1"]\npasword = "x"\n', 'charge_points."CP1".pasword', 2, "'password'"),
    ],
)
def test_an_unknown_key_names_the_nearest_known_one(tmp_path, text, key, line, hint):
    result = check(text, tmp_path)
    assert_rejected(result, key, line)
    assert "unknown key" in result.stderr
    assert hint in result.stderr


def test_the_line_is_the_one_in_the_right_table(tmp_path):
    # `validation` twice: the bad one is in the charge point's table, on line 4
    text = 'validation = "strict"\n\n[charge_points."CP1"]\nvalidation = "picky"\n'
    result = check(text, tmp_path)
    assert_rejected(result, 'charge_points."CP1".validation', 4)
    assert "'lenient', 'strict'" in result.stderr


def test_every_unknown_key_is_named_at_once(tmp_path):
    result = check("prot = 1\n[limits]\nmax_frame_byte = 10\n", tmp_path)
    assert result.returncode == 2
    assert "'prot' (line 1)" in result.stderr
    assert "'limits.max_frame_byte' (line 3)" in result.stderr


def test_a_range_error_names_the_key_the_line_and_the_value(tmp_path):
    text = "\n" * 13 + "[limits]\nmax_frame_bytes = 0\n"
    result = check(text, tmp_path)
    assert_rejected(result, "limits.max_frame_bytes", 15)
    assert "not 0" in result.stderr


@pytest.mark.parametrize(
    ("entry", "said"),
    [
        ("localhost", 'expected an IP address or a network ("10.0.0.5", "10.0.0.0/24", "::1"),'
         ' not "localhost"'),
        ("10.0.0.300", 'expected an IP address or a network ("10.0.0.5", "10.0.0.0/24",'
         ' "::1"), not "10.0.0.300"'),
        ("10.0.0.5/24", '"10.0.0.5/24" is neither one address nor a network: write "10.0.0.5"'
         ' or "10.0.0.0/24"'),
    ],
)  # fmt: skip
def test_a_proxy_from_entry_that_is_no_address_names_the_key_the_line_and_the_item(
    tmp_path, entry, said
):
    text = f'[limits]\nproxy_from = ["127.0.0.1",\n  "{entry}"]\n'
    result = check(text, tmp_path)
    assert_rejected(result, "limits.proxy_from", 2)
    assert f"item 2: {said}" in result.stderr


def test_proxy_from_takes_addresses_and_networks_of_both_families(tmp_path):
    entries = ["127.0.0.1", "10.0.0.0/8", "::1", "fd00::/8"]
    result = check(f"[limits]\nproxy_from = {entries!r}\n".replace("'", '"'), tmp_path)
    assert result.returncode == 0, result.stderr
    assert tomllib.loads(result.stdout)["limits"]["proxy_from"] == entries


def test_a_secret_in_a_bad_value_is_not_shown(tmp_path):
    result = check('[charge_points."CP1"]\npassword = ["hunter2-hunter2-hunter2"]\n', tmp_path)
    assert_rejected(result, 'charge_points."CP1".password', 2)
    assert "hunter2" not in result.stderr


# ---------------------------------------------------------------------- check-config


def test_check_config_output_reads_back_as_the_same_config(tmp_path):
    text = (
        'port = 9100\nidentity_allowlist = ["CP-1", "CP 2"]\n'
        '[authorization]\nid_tokens = ["04A2B3C4"]\n'
        '[charge_points."CP 2"]\nvalidation = "strict"\n'
    )
    first = check(text, tmp_path)
    assert first.returncode == 0, first.stderr
    again = check(first.stdout, tmp_path)
    assert again.returncode == 0, again.stderr
    assert tomllib.loads(again.stdout) == tomllib.loads(first.stdout)
    values = tomllib.loads(first.stdout)
    assert values["identity_allowlist"] == ["CP-1", "CP 2"]
    assert values["charge_points"]["CP 2"] == {"validation": "strict"}


# ------------------------------------------------------------------- the README's word

README = Path(__file__).resolve().parents[1] / "README.md"
#: what produces each message the README shows, as the lines of a file
README_CAUSES = {
    "limits.max_frame_bytes": ["[limits]", "max_frame_bytes = 0"],
    "identity_allowlist": ['identity_allowlist = "SIM001"'],
    "prot": ["prot = 9000"],
    "max_connections": ["max_connections = 5"],
}


def readme_config_messages() -> list[str]:
    section = README.read_text().split("\n## Configuration", 1)[1].split("\n## ", 1)[0]
    prefix = "ocpp-appliance: /etc/ocpp-appliance/appliance.toml: "
    return [line[len(prefix) :] for line in section.splitlines() if line.startswith(prefix)]


def test_the_readme_shows_config_messages():
    assert len(readme_config_messages()) == len(README_CAUSES)


@pytest.mark.parametrize("message", readme_config_messages())
def test_the_readme_config_messages_are_what_check_config_says(tmp_path, message):
    key, line = re.match(r".*?'([^']+)' \(line (\d+)\)", message).groups()
    cause = README_CAUSES[key]
    text = "\n" * (int(line) - len(cause)) + "\n".join(cause) + "\n"
    result = check(text, tmp_path)
    assert result.returncode == 2
    assert result.stderr == f"ocpp-appliance: {tmp_path / 'appliance.toml'}: {message}\n"


# ---------------------------------------------------------- --instance N (issue 23)


def test_an_instance_adds_its_number_to_the_ports_and_to_the_database_name(tmp_path):
    """README "A big site on several processes": one file, process N on port + N, the
    web port + N, the database <name>-N<suffix> in the same folder."""
    (tmp_path / "data").mkdir()
    path = tmp_path / "appliance.toml"
    path.write_text('port = 9000\ndatabase = "data/site.db"\n[web]\nport = 9080\n')
    result = run_cli("check-config", "--config", str(path), "--instance", "7", env=clean_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"# effective config ({path}; instance 7;")
    effective = tomllib.loads(result.stdout)
    assert (effective["port"], effective["web"]["port"]) == (9007, 9087)
    assert effective["database"] == "data/site-7.db"
    assert "instance" not in effective  # not a key of the file
    # port 0 (any free port) stays 0
    path.write_text("port = 0\n[web]\nport = 0\n")
    result = run_cli("check-config", "--config", str(path), "--instance", "2", env=clean_env())
    effective = tomllib.loads(result.stdout)
    assert (effective["port"], effective["web"]["port"], effective["database"]) == (
        0,
        0,
        "appliance-2.db",
    )


@pytest.mark.parametrize(
    ("number", "said"),
    [
        ("0", "--instance 0: an instance is numbered 1-99"),
        ("100", "--instance 100: an instance is numbered 1-99"),
        ("-1", "--instance -1: an instance is numbered 1-99"),
        ("two", "argument --instance: not a whole number: 'two'"),
    ],
)
def test_a_bad_instance_number_exits_2(tmp_path, number, said):
    path = tmp_path / "appliance.toml"
    path.write_text("port = 9000\n")
    for command in (["check-config"], ["serve"], ["status"]):
        result = run_cli(*command, "--config", str(path), f"--instance={number}", env=clean_env())
        assert result.returncode == 2, (command, result.stderr)
        assert said in result.stderr
        assert "listening" not in result.stderr


def test_an_instance_beyond_the_last_port_exits_2_naming_the_key(tmp_path):
    result = check("log_level = 'info'\nport = 65530\n", tmp_path)
    assert result.returncode == 0
    path = tmp_path / "appliance.toml"
    result = run_cli("check-config", "--config", str(path), "--instance", "6", env=clean_env())
    assert result.returncode == 2
    assert result.stderr == (
        f"ocpp-appliance: {path}: bad value for 'port' (line 2): 65530 + instance 6 is"
        " beyond 65535: lower it\n"
    )
    path.write_text("[web]\nport = 65535\n")
    result = run_cli("check-config", "--config", str(path), "--instance", "1", env=clean_env())
    assert result.returncode == 2 and "'web.port' (line 2): 65535 + instance 1" in result.stderr
