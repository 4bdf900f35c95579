"""Commands from the centre and presence (issue 22, point 4; README "Commands from the
centre"): a row inserted into PostgreSQL's `commands` reaches the charge point through
the process that holds it, exactly as `ocpp-appliance set` would, and its outcome comes
back; never twice, also when two processes race for it. Real `serve` processes, Debian's
PostgreSQL, `ocpp`-package charge points of every version."""

from __future__ import annotations

import time
from typing import Any

import pytest
from pg import Postgres, needs_postgres
from test_central import central
from test_controls import ALL_VERSIONS, V16, Station, booted

import conftest

pytestmark = needs_postgres


def command(server: Postgres, database: str, site: str, identity: str, control: str,
            value: str | None, age_s: int = 0) -> int:  # fmt: skip
    """Insert a command as a fleet tool does (once the appliance made the table); its id."""
    server.made("commands", database)
    [(number,)] = server.sql(
        "INSERT INTO commands (site, identity, control, value, requested_at) VALUES"
        f" ('{site}', '{identity}', '{control}', {'NULL' if value is None else repr(value)},"
        f" now() - interval '{age_s} seconds') RETURNING id",
        database,
    )
    return number


def done(server: Postgres, database: str, number: int, timeout: float = 40) -> tuple:
    """(taken_by, ok, response, error) once the command is done."""
    query = (
        "SELECT taken_by, ok, response, error FROM commands"
        f" WHERE id = {number} AND done_at IS NOT NULL"
    )
    rows = conftest.wait_for(lambda: server.sql(query, database), timeout, f"command {number} done")
    return rows[0]


def presence(server: Postgres, database: str) -> list[tuple]:
    return server.sql("SELECT site, identity, process FROM presence ORDER BY 2", database)


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_a_command_from_the_centre_for_each_kind(start_appliance, postgres, version):
    """Availability, a charge limit with its parameters, a bad parameter, a reset and any
    OCPP call from the `commands` table: each reaches the charge point as its version's
    call and comes back with the outcome `set` would give."""
    database = postgres.database()
    site = "hq"
    appliance = start_appliance(central(postgres, database, site))
    cp = f"FLEET-{version[4:].replace('.', '')}"
    station = Station(appliance, cp, version)
    station.answers["GetConfiguration"] = {"configuration_key": []}
    with booted(station.open()):
        conftest.wait_for(lambda: presence(postgres, database), 15, "presence")
        [(_, identity, process)] = presence(postgres, database)
        assert (identity, process.endswith(f":{appliance.port}")) == (cp, True)

        number = command(postgres, database, site, cp, "control.availability", "0")
        taken_by, ok, response, error = done(postgres, database, number)
        assert (taken_by, ok, error) == (process, True, None)
        assert response == '{"status":"Accepted"}'
        action, _ = station.take_one()
        assert action == "ChangeAvailability"

        number = command(postgres, database, site, cp, "control.chargeLimitType", '"W"')
        assert done(postgres, database, number)[1:] == (True, None, None)
        number = command(postgres, database, site, cp, "control.chargeLimit", "11000")
        assert done(postgres, database, number)[1] is True
        action, payload = station.take_one()
        assert action == "SetChargingProfile"
        assert '"chargingRateUnit": "W"' in str(payload).replace("'", '"')

        number = command(postgres, database, site, cp, "control.numberOfPhases", "7")
        _, ok, _, error = done(postgres, database, number)
        assert ok is False and "numberOfPhases must be 1, 2 or 3" in error

        number = command(postgres, database, site, cp, "control.softReset.trigger", "1")
        assert done(postgres, database, number)[1] is True
        assert station.take_one()[0] == "Reset"

        method = "GetConfiguration" if version == V16 else "GetBaseReport"
        payload = "{}" if version == V16 else '{"requestId": 5, "reportBase": "FullInventory"}'
        for control, value in (
            ("control.rpc.method", f'"{method}"'),
            ("control.rpc.payload", payload),
            ("control.rpc.execute", "1"),
        ):
            number = command(postgres, database, site, cp, control, value)
            assert done(postgres, database, number)[1] is True
        assert station.take_one()[0] == method

    conftest.wait_for(lambda: presence(postgres, database) == [], 15, "presence gone")


def test_a_command_nobody_can_take_ends_not_connected(start_appliance, postgres):
    """A command for a charge point connected nowhere ends "not connected" once it has
    waited a minute (here: inserted as a minute old); nothing is sent anywhere."""
    database = postgres.database()
    start_appliance(central(postgres, database, "hq"))
    number = command(postgres, database, "hq", "NOBODY", "control.availability", "0", 61)
    assert done(postgres, database, number, 20) == ("", False, None, "not connected")
    fresh = command(postgres, database, "hq", "NOBODY", "control.availability", "0")
    time.sleep(5)
    [(taken,)] = postgres.sql(f"SELECT taken_by FROM commands WHERE id = {fresh}", database)
    assert taken is None  # still waiting for its charge point


def test_two_processes_racing_never_run_a_command_twice(start_appliance, postgres):
    """One charge point connected to two processes of a site at once (a failover in
    progress); 20 commands: each is taken by exactly one process, and the charge points
    receive 20 calls in all, none twice."""
    database = postgres.database()
    extra = central(postgres, database, "depot")
    first = start_appliance(extra, name="first")
    second = start_appliance(extra, name="second")
    both = [Station(first, "SHARED", V16), Station(second, "SHARED", V16)]
    for station in both:
        booted(station.open())
    try:
        numbers = [
            command(postgres, database, "depot", "SHARED", "control.availability", str(n % 2))
            for n in range(20)
        ]
        outcomes = [done(postgres, database, n) for n in numbers]
        assert all(ok for _, ok, *_ in outcomes), outcomes
        takers = {taken_by for taken_by, *_ in outcomes}
        assert len(takers) <= 2 and all(
            t.endswith((f":{first.port}", f":{second.port}")) for t in takers
        )
        time.sleep(1)
        calls: list[Any] = [c for s in both for c in s.calls if c.action == "ChangeAvailability"]
        assert len(calls) == 20
    finally:
        for station in both:
            station.close()


def test_a_dead_process_presence_expires(start_appliance, postgres):
    """A process killed with kill -9 says nothing more: its presence is gone within
    the expiry (30 s) once another process of the site refreshes its own."""
    database = postgres.database()
    extra = central(postgres, database, "yard")
    survivor = start_appliance(extra, name="survivor")
    doomed = start_appliance(extra, name="doomed")
    with booted(Station(doomed, "GONE", V16).open()):
        conftest.wait_for(lambda: len(presence(postgres, database)) == 1, 15, "presence")
        doomed.proc.kill()
        doomed.proc.wait()
    assert survivor.proc.poll() is None
    conftest.wait_for(lambda: presence(postgres, database) == [], 50, "expired")
