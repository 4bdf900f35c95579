"""A big site behind a real HAProxy (README "A big site on several processes"): two
`serve --instance N` of one config behind Debian's haproxy running the sample
packaging/haproxy.cfg (tests/haproxy.py), `ocpp-appliance simulate` as the charge
points: spread by identity, each back on its process when it reconnects, and none sent
to a process whose /healthz fails."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from conftest import Appliance, Site, appliance_command, end, run_cli, wait_for

if TYPE_CHECKING:
    from haproxy import HAProxy

ROOT = Path(__file__).resolve().parents[1]


def simulate(url: str, prefix: str, count: int, seconds: float) -> dict:
    result = run_cli(
        "simulate", "--url", url, "--identity-prefix", prefix, "--count", str(count),
        "--duration", str(seconds), "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def names(prefix: str, count: int) -> set[str]:
    return {f"{prefix}{n:03d}" for n in range(1, count + 1)}


def booted(process: Appliance) -> set[str]:
    rows = process.query(
        "SELECT DISTINCT identity FROM messages"
        " WHERE action = 'BootNotification' AND direction = 'in'"
    )
    return {identity for (identity,) in rows}


def connects(process: Appliance) -> dict[str, int]:
    rows = process.query(
        "SELECT identity, count(*) FROM connection_log WHERE event = 'connect' GROUP BY identity"
    )
    return dict(rows)


def behind_haproxy(
    site: Site, haproxy: Callable[..., HAProxy]
) -> tuple[Appliance, Appliance, HAProxy]:
    """Processes 1 and 2 of the site (HAProxy's address in their proxy_from), and
    HAProxy in front of them with both up."""
    from haproxy import PROXY_FROM

    with site.config.open("a") as config:
        config.write(PROXY_FROM)
    one, two = site.start(1), site.start(2)
    proxy = haproxy([(one.port, one.web_port), (two.port, two.web_port)])
    proxy.wait_for("p1", "UP")
    proxy.wait_for("p2", "UP")
    return one, two, proxy


def test_charge_points_spread_over_the_processes_and_come_back_to_theirs(site, haproxy):
    one, two, proxy = behind_haproxy(site, haproxy)
    summary = simulate(proxy.url, "SIM", 20, 4)
    assert summary["errors"] == {}, summary
    everyone = names("SIM", 20)
    wait_for(lambda: booted(one) | booted(two) == everyone, 15, "all 20 booted")
    first, second = booted(one), booted(two)
    # spread by the hash of the identity: both have some, none is on both
    assert first and second, (first, second)
    assert not first & second
    # the same identities again: each lands on the process it was on
    simulate(proxy.url, "SIM", 20, 2)
    wait_for(
        lambda: sum(connects(one).values()) + sum(connects(two).values()) == 40,
        15,
        "the second connections",
    )
    assert connects(one) == dict.fromkeys(first, 2)
    assert connects(two) == dict.fromkeys(second, 2)


def test_a_process_whose_healthz_fails_gets_no_new_charge_points(site, haproxy):
    one, two, proxy = behind_haproxy(site, haproxy)
    # 20 charge points living their sessions (speed 60) all along
    load = subprocess.Popen(
        [*appliance_command(), "simulate", "--url", proxy.url, "--count", "20",
         "--speed", "60", "--duration", "120"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(lambda: booted(one) | booted(two) == names("SIM", 20), 20, "all 20 booted")
        on_one = booted(one)
        assert on_one
        # process 1's database is held by another program: its writer fails, /healthz
        # answers 503, HAProxy takes it out of the ring and cuts its charge points
        locker = sqlite3.connect(one.db, isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")
        proxy.wait_for("p1", "DOWN", 30)
        answer = httpx.get(f"http://127.0.0.1:{one.web_port}/healthz", timeout=10)
        assert (answer.status_code, answer.text) == (
            503,
            "database writer failing: database is locked",
        )
        # new charge points all land on process 2
        simulate(proxy.url, "NEW", 10, 2)
        wait_for(lambda: names("NEW", 10) <= booted(two), 15, "the new ones on process 2")
        # and process 1's charge points reconnected there at once (shutdown-sessions)
        wait_for(lambda: on_one <= booted(two), 20, "process 1's charge points on process 2")
        locker.execute("COMMIT")
        locker.close()
        proxy.wait_for("p1", "UP", 30)
        # /healthz is 200 again once a commit went through: what process 1 kept in memory
        # meanwhile is in its file now, and no new charge point came to it
        assert httpx.get(f"http://127.0.0.1:{one.web_port}/healthz", timeout=10).text == "ok"
        assert not {identity for identity in connects(one) if identity.startswith("NEW")}
        assert booted(one) == on_one
    finally:
        end(load, signal.SIGINT)


def test_the_sample_config_is_valid_as_shipped(haproxy):
    from haproxy import BIN, SAMPLE

    assert BIN is not None
    checked = subprocess.run(
        [BIN, "-c", "-f", str(SAMPLE)], capture_output=True, text=True, timeout=30
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def unit_lines(name: str) -> list[str]:
    text = (ROOT / "packaging" / name).read_text()
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def test_the_template_unit_is_the_plain_service_per_instance():
    """ocpp-appliance@N: the packaged service's hardening and limits, line for line; only
    its name and `--instance %i` differ."""
    plain, template = unit_lines("ocpp-appliance.service"), unit_lines("ocpp-appliance@.service")
    different = [(a, b) for a, b in zip(plain, template, strict=True) if a != b]
    assert different == [
        (
            "Description=OCPP central system for charge points (ocpp-appliance)",
            "Description=OCPP central system for charge points, process %i (ocpp-appliance)",
        ),
        (
            "ExecStart=/usr/bin/ocpp-appliance serve --config /etc/ocpp-appliance/appliance.toml",
            "ExecStart=/usr/bin/ocpp-appliance serve --config /etc/ocpp-appliance/appliance.toml"
            " --instance %i",
        ),
    ]
    build = (ROOT / "packaging" / "build-deb.sh").read_text()
    assert "packaging/ocpp-appliance@.service" in build


def test_the_readme_shows_the_sample_as_it_is():
    """README "HAProxy" quotes the sample's lines that matter: each is in the file."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n### HAProxy\n", 1)[1].split("\n### ", 1)[0]
    quoted = section.split("\n```\n", 1)[1].split("\n```", 1)[0]
    lines = (ROOT / "packaging" / "haproxy.cfg").read_text().splitlines()
    sample = {line.strip() for line in lines}
    missing = [line for line in quoted.splitlines() if line.strip() not in sample]
    assert missing == []
