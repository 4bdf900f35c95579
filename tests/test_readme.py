"""The README's example queries run against a database the appliance really wrote, and
answer what their comment says."""

from __future__ import annotations

import json
import re
import sqlite3
import time
from pathlib import Path

import pytest
from websockets.sync.client import connect

from conftest import start_appliance_process

README = Path(__file__).resolve().parents[1] / "README.md"
QUERIES = re.findall(r"```sql\n(.*?)```", README.read_text(), re.DOTALL)


def query_about(words: str) -> str:
    """The README query whose opening comment mentions `words`."""
    matches = [q for q in QUERIES if any(words in line for line in q.split("\n") if "--" in line)]
    assert len(matches) == 1, f"one README query about {words!r}, found {len(matches)}"
    return matches[0]


def iso(seconds_ago: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - seconds_ago))


@pytest.fixture(scope="module")
def database(tmp_path_factory):
    appliance = start_appliance_process(tmp_path_factory.mktemp("readme"))
    sampled = {"connectorId": 1, "transactionId": 1}
    try:
        with connect(f"{appliance.url}/GARAGE", subprotocols=["ocpp1.6"]) as ws:
            power = {"value": "7.2", "measurand": "Power.Active.Import", "unit": "kW"}
            energy = {"value": "4.6", "measurand": "Energy.Active.Import.Register", "unit": "kWh"}
            for message in (
                ["BootNotification", {"chargePointVendor": "V" * 21, "chargePointModel": "M"}],
                ["StatusNotification", {"connectorId": 1, "errorCode": "NoError",
                                        "status": "Charging"}],
                ["StartTransaction", {"connectorId": 1, "idTag": "TAG", "meterStart": 1000,
                                      "timestamp": iso(3600)}],
                ["MeterValues", {**sampled, "meterValue": [{"timestamp": iso(1800),
                                                            "sampledValue": [power, energy]}]}],
                ["StopTransaction", {"transactionId": 1, "meterStop": 8500, "timestamp": iso(60)}],
            ):  # fmt: skip
                ws.send(json.dumps([2, message[0], *message]))
                assert json.loads(ws.recv())[0] == 3
        appliance.wait_rows("select 1 from messages", count=10)
        assert appliance.stop() == 0
    finally:
        appliance.proc.kill()
    return appliance.db


@pytest.mark.parametrize("sql", QUERIES, ids=[q.split("\n")[0][3:40] for q in QUERIES])
def test_every_readme_query_runs(database, sql):
    with sqlite3.connect(database) as db:
        for statement in sql.split(";"):
            if statement.strip():
                db.execute(statement).fetchall()


def rows(database: Path, sql: str) -> list:
    with sqlite3.connect(database) as db:
        return db.execute(sql).fetchall()


def test_boots_query(database):
    boots = rows(database, query_about("the last ten boots").split(";")[0])
    assert [(row[1], row[2]) for row in boots] == [("GARAGE", "V" * 21)]


def test_violations_query(database):
    violations = rows(database, query_about("nearly-compliant").split(";")[1])
    assert violations[0][:3] == ("GARAGE", "BootNotification", 1)
    assert violations[0][3].startswith("PropertyConstraintViolation: chargePointVendor")


def test_sessions_query(database):
    sessions = rows(database, query_about("energy per session"))
    assert [(s[0], s[1], s[2], s[5]) for s in sessions] == [("GARAGE", "1", "TAG", 7.5)]


def test_power_query(database):
    points = rows(database, query_about("power over the last hour"))
    assert [p[1] for p in points] == [7200.0]


def test_home_assistant_query(database):
    # the session ended and the charge point is gone: no power is claimed (NULL); the
    # register is the stop's meterStop, newer than the last MeterValues (issue 25)
    assert rows(database, query_about("Home Assistant")) == [("offline", None, 8.5, 0, 7.5)]


def test_key_value_query(database):
    found = dict(
        rows(database, query_about("everything about one charge point"))[i][:2] for i in range(3)
    )
    assert all(key.startswith("GARAGE.") for key in found)
    everything = {
        r[0]: r[1] for r in rows(database, query_about("everything about one charge point"))
    }
    assert everything["GARAGE.info.vendor"] == "V" * 21
    assert everything["GARAGE.transactions.last.energyWh"] == 7500.0
    assert not any(".ocpp." in key for key in everything)
