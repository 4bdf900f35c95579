"""The README's example queries run against a database the appliance really wrote."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from websockets.sync.client import connect

README = Path(__file__).resolve().parents[1] / "README.md"
QUERIES = re.findall(r"```sql\n(.*?)```", README.read_text(), re.DOTALL)


def test_readme_has_queries():
    assert len(QUERIES) >= 3


@pytest.fixture(scope="module")
def database(tmp_path_factory):
    from conftest import start_appliance_process

    appliance = start_appliance_process(tmp_path_factory.mktemp("readme"))
    try:
        with connect(f"{appliance.url}/GARAGE", subprotocols=["ocpp1.6"]) as ws:
            for message in (
                [
                    2,
                    "1",
                    "BootNotification",
                    {"chargePointVendor": "V" * 21, "chargePointModel": "M"},
                ],
                [
                    2,
                    "2",
                    "StartTransaction",
                    {
                        "connectorId": 1,
                        "idTag": "TAG",
                        "meterStart": 1000,
                        "timestamp": "2026-11-25T10:00:00Z",
                    },
                ],
                [
                    2,
                    "3",
                    "StopTransaction",
                    {"transactionId": 1, "meterStop": 8500, "timestamp": "2026-11-25T11:00:00Z"},
                ],
            ):
                ws.send(json.dumps(message))
                ws.recv()
        appliance.wait_rows("select 1 from messages", count=6)
        assert appliance.stop() == 0
    finally:
        appliance.proc.kill()
    return appliance


@pytest.mark.parametrize("sql", QUERIES, ids=[q.split("\n")[0][:50] for q in QUERIES])
def test_readme_query_runs(database, sql):
    import sqlite3

    with sqlite3.connect(database.db) as db:
        for statement in sql.split(";"):
            if statement.strip():
                db.execute(statement).fetchall()


def test_readme_queries_answer_what_they_say(database):
    import sqlite3

    with sqlite3.connect(database.db) as db:
        boots = db.execute(QUERIES[0].split(";")[0]).fetchall()
        assert [(row[1], row[2]) for row in boots] == [("GARAGE", "V" * 21)]
        violations = db.execute(QUERIES[0].split(";")[1]).fetchall()
        assert violations[0][:2] == ("GARAGE", "BootNotification")
        assert "PropertyConstraintViolation" in violations[0][3]
        sessions = db.execute(QUERIES[-1]).fetchall()
        assert sessions == [
            ("GARAGE", "1", "TAG", "2026-11-25T10:00:00Z", "2026-11-25T11:00:00Z", 7.5)
        ]
