"""The object tree and the database around it, as a user meets them: ids that survive any
identity or component name, the raw capture of every action, retention, the `status` and
`get` commands, and a database written by the previous build migrated forward.

Whole charging sessions and the messy reality of real chargers are in
test_tree_sessions.py (whose raw charge point and readers are used here too).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from test_tree_sessions import (
    MISSING,
    NO_FETCH,
    Station,
    boot2x,
    boot16,
    described,
    disconnected,
    stamp,
    state,
    status_row,
    sv16,
    wait_state,
)

from appliance.store import SCHEMA_VERSION, Retention, Store, connect, now_ms
from conftest import ROOT, run_cli, start_appliance_process, wait_for

FIXTURES = ROOT / "tests" / "fixtures"


@pytest.fixture(scope="module")
def appliance(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One appliance for the tests of this module that only talk to it; each test uses
    identities of its own."""
    running = start_appliance_process(tmp_path_factory.mktemp("tree"), NO_FETCH)
    yield running
    if running.proc.poll() is None:
        running.proc.kill()
        running.proc.wait()


# ====================================================================== id escaping

#: identity → the first segment of its ids, as the README spells the escaping
IDENTITIES = {
    "CP.1": "CP%2E1",
    "CP%2E1": "CP%252E1",  # not the same charge point as CP.1
    "garage/left": "garage%2Fleft",
    "Box 1": "Box%201",
    "100%": "100%25",
    "Küche.Box 1": "K%C3%BCche%2EBox%201",
    "Wallbox_A-1~x": "Wallbox_A-1~x",
    "*?[x]": "%2A%3F%5Bx%5D",
}


def test_identities_become_unique_reversible_id_prefixes(appliance):
    for identity in IDENTITIES:
        with Station(appliance.url, identity) as cp:
            cp.ok(
                "BootNotification",
                {"chargePointVendor": identity[:20], "chargePointModel": "escaping"},
            )
    for prefix in IDENTITIES.values():
        disconnected(appliance, prefix)

    mapped = dict(
        appliance.query(
            "SELECT identity, prefix FROM charge_points WHERE identity IN"
            f" ({', '.join('?' * len(IDENTITIES))})",
            *IDENTITIES,
        )
    )
    assert mapped == IDENTITIES
    assert len(set(mapped.values())) == len(IDENTITIES)
    for identity, prefix in IDENTITIES.items():
        assert "." not in prefix
        assert unquote(prefix) == identity
        assert state(appliance, f"{prefix}.info.vendor") == identity[:20]
        assert state(appliance, f"{prefix}.info.protocol") == "ocpp1.6"
        # a glob over the prefix finds that charge point's states and no other's
        ids = [
            r[0] for r in appliance.query("SELECT id FROM states WHERE id GLOB ? || '.*'", prefix)
        ]
        assert f"{prefix}.info.connected" in ids
        assert {i.split(".")[0] for i in ids} == {prefix}
        # the tables that carry the identity carry it as sent
        assert appliance.query(
            "SELECT DISTINCT identity FROM messages WHERE identity = ?", identity
        ) == [(identity,)]
        assert status_row(appliance, identity)["protocol"] == "ocpp1.6"
    # every id of the tree starts with a known prefix
    firsts = {r[0].split(".")[0] for r in appliance.query("SELECT id FROM states")}
    known = {r[0] for r in appliance.query("SELECT prefix FROM charge_points")}
    assert firsts <= known


def test_device_model_names_with_dots_are_escaped(appliance):
    identity = "DM-DOTS"
    with Station(appliance.url, identity, "ocpp2.0.1") as cp:
        boot2x(cp)
        cp.ok(
            "NotifyReport",
            {
                "requestId": 1,
                "generatedAt": stamp(),
                "seqNo": 0,
                "tbc": False,
                "reportData": [
                    {
                        "component": {
                            "name": "Vendor.Meter",
                            "instance": "Main 1",
                            "evse": {"id": 1, "connectorId": 2},
                        },
                        "variable": {"name": "Energy.Total", "instance": "L1/N"},
                        "variableAttribute": [
                            {"type": "Actual", "value": "123.5", "mutability": "ReadOnly"}
                        ],
                        "variableCharacteristics": {
                            "unit": "kWh",
                            "dataType": "decimal",
                            "supportsMonitoring": False,
                        },
                    }
                ],
            },
        )
    disconnected(appliance, identity)
    sid = f"{identity}.dm.Vendor%2EMeter@1-2#Main%201.Energy%2ETotal#L1%2FN.Actual.value"
    assert state(appliance, sid) == 123.5
    assert described(appliance, sid) == ("number", "kWh", 0)
    segments = sid.split(".")
    assert len(segments) == 6
    component, variable = segments[2], segments[3]
    assert unquote(component.split("@")[0]) == "Vendor.Meter"
    assert unquote(component.split("#")[1]) == "Main 1"
    assert [unquote(part) for part in variable.split("#")] == ["Energy.Total", "L1/N"]


# ====================================================================== raw capture


def test_raw_capture_of_a_boot_per_protocol(appliance):
    boot_16 = {
        "chargePointVendor": "Capture",
        "chargePointModel": "C1",
        "firmwareVersion": "1.0",
    }
    boot_2x = {
        "chargingStation": {
            "model": "C2",
            "vendorName": "Capture",
            "modem": {"iccid": "8949000000000000001"},
        },
        "reason": "ScheduledReset",
        "customData": {"vendorId": "com.example", "a.b": [1, 2]},
    }
    answers = {}
    for identity, version, payload in (
        ("CAP-16", "ocpp1.6", boot_16),
        ("CAP-201", "ocpp2.0.1", boot_2x),
        ("CAP-21", "ocpp2.1", boot_2x),
    ):
        with Station(appliance.url, identity, version) as cp:
            answers[identity] = cp.ok("BootNotification", payload)
            cp.ok("Heartbeat", {})
        disconnected(appliance, identity)

    base = "CAP-16.ocpp.ocpp1_6.in.BootNotification"
    assert json.loads(state(appliance, f"{base}.raw")) == boot_16
    assert json.loads(state(appliance, f"{base}.response")) == answers["CAP-16"]
    assert answers["CAP-16"]["status"] == "Accepted"
    assert state(appliance, f"{base}.data.chargePointVendor") == "Capture"
    assert state(appliance, f"{base}.data.firmwareVersion") == "1.0"
    assert described(appliance, f"{base}.raw")[0] == "json"
    assert json.loads(state(appliance, "CAP-16.ocpp.ocpp1_6.in.Heartbeat.raw")) == {}
    assert "currentTime" in json.loads(
        state(appliance, "CAP-16.ocpp.ocpp1_6.in.Heartbeat.response")
    )
    assert state(appliance, "CAP-16.info.firmwareVersion") == "1.0"

    for identity, segment in (("CAP-201", "ocpp2_0_1"), ("CAP-21", "ocpp2_1")):
        base = f"{identity}.ocpp.{segment}.in.BootNotification"
        assert json.loads(state(appliance, f"{base}.raw")) == boot_2x
        assert json.loads(state(appliance, f"{base}.response")) == answers[identity]
        data = f"{base}.data"
        assert state(appliance, f"{data}.chargingStation.modem.iccid") == "8949000000000000001"
        assert state(appliance, f"{data}.reason") == "ScheduledReset"
        # a payload key with a dot is one escaped segment
        assert state(appliance, f"{data}.customData.a%2Eb.1") == 2
        assert state(appliance, f"{identity}.info.bootReason") == "ScheduledReset"


def meter_values_16(count: int, base: int) -> dict[str, Any]:
    return {
        "connectorId": 1,
        "meterValue": [
            {
                "timestamp": stamp(),
                "sampledValue": [
                    sv16(str(base + i), "Energy.Active.Import.Register", "Wh") for i in range(count)
                ],
            }
        ],
    }


def test_flattening_stops_at_32_items_while_raw_keeps_all(appliance):
    identity = "CAP-40"
    data = f"{identity}.ocpp.ocpp1_6.in.MeterValues.data.meterValue.0.sampledValue"
    big = meter_values_16(40, 1000)
    with Station(appliance.url, identity) as cp:
        boot16(cp)
        cp.ok("MeterValues", big)
        wait_for_state = f"{identity}.ocpp.ocpp1_6.in.MeterValues.raw"
        wait_state(appliance, wait_for_state, json.dumps(big, separators=(",", ":")))
        assert state(appliance, f"{data}.0.value") == "1000"
        assert state(appliance, f"{data}.31.value") == "1031"
        assert state(appliance, f"{data}.31.unit") == "Wh"
        assert state(appliance, f"{data}.32.value") is MISSING
        assert state(appliance, f"{data}.39.value") is MISSING
        raw = json.loads(state(appliance, wait_for_state))
        assert len(raw["meterValue"][0]["sampledValue"]) == 40
        assert raw["meterValue"][0]["sampledValue"][39]["value"] == "1039"
        # a later, shorter payload: its items replace, the ones it no longer has stay
        cp.ok("MeterValues", meter_values_16(3, 2000))
    disconnected(appliance, identity)
    assert state(appliance, f"{data}.2.value") == "2002"
    assert state(appliance, f"{data}.31.value") == "1031"
    raw = json.loads(state(appliance, f"{identity}.ocpp.ocpp1_6.in.MeterValues.raw"))
    assert len(raw["meterValue"][0]["sampledValue"]) == 3
    count = appliance.query("SELECT count(*) FROM meter_values WHERE identity = ?", identity)
    assert count == [(43,)]


# ======================================================================== retention

DAY_MS = 86_400_000


def test_prune_deletes_history_past_retention_and_gives_pages_back(tmp_path):
    path = tmp_path / "retention.db"
    store = Store(path, 50, Retention(1, 1))
    store.open()
    store.close()

    now = now_ms()
    old_ts, new_ts = now - 3 * DAY_MS, now - DAY_MS // 2
    payload = json.dumps([2, "x", "MeterValues", {"filler": "x" * 400}])
    with contextlib.closing(connect(path)) as db, db:
        assert db.execute("PRAGMA auto_vacuum").fetchone() == (2,)
        db.executemany(
            "INSERT INTO messages (ts, identity, protocol, direction, message_type,"
            " message_id, action, payload) VALUES (?, 'OLD', 'ocpp1.6', 'in', 2, ?, ?, ?)",
            [(old_ts + i, str(i), "MeterValues", payload) for i in range(10_600)]
            + [(new_ts + i, f"n{i}", "Heartbeat", '[2,"n","Heartbeat",{}]') for i in range(5)],
        )
        db.executemany(
            "INSERT INTO meter_values (identity, measurand, unit, value, received_at)"
            " VALUES ('OLD', 'Energy.Active.Import.Register', 'Wh', ?, ?)",
            [(i, old_ts + i) for i in range(1200)] + [(9999 + i, new_ts + i) for i in range(3)],
        )
    db = connect(path)
    try:
        pages_before = db.execute("PRAGMA page_count").fetchone()[0]
        store = Store(path, 50, Retention(1, 1))
        # at most 10 000 rows a pass, in batches: the rest waits for the next pass
        first = store.prune(db)
        assert first == 10_000 + 1200
        assert db.execute("SELECT count(*) FROM messages").fetchone() == (605,)
        assert store.prune(db) == 600
        assert store.prune(db) == 0
        assert db.execute("SELECT message_id FROM messages ORDER BY seq").fetchall() == [
            (f"n{i}",) for i in range(5)
        ]
        assert db.execute("SELECT value FROM meter_values ORDER BY seq").fetchall() == [
            (9999.0,),
            (10000.0,),
            (10001.0,),
        ]
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        # the freed pages went back to the file system, not onto the free list
        assert db.execute("PRAGMA freelist_count").fetchone() == (0,)
        assert db.execute("PRAGMA page_count").fetchone()[0] < pages_before // 4
    finally:
        db.close()


def test_retention_keeps_everything_younger_than_the_setting(tmp_path):
    path = tmp_path / "young.db"
    store = Store(path, 50)  # default retention: 30 days of messages, 365 of readings
    store.open()
    store.close()
    with contextlib.closing(connect(path)) as db, db:
        db.execute(
            "INSERT INTO messages (ts, identity, direction, payload) VALUES (?, 'A', 'in', '[]')",
            (now_ms() - 29 * DAY_MS,),
        )
        db.execute(
            "INSERT INTO meter_values (identity, measurand, value, received_at)"
            " VALUES ('A', 'SoC', 1, ?)",
            (now_ms() - 364 * DAY_MS,),
        )
    db = connect(path)
    try:
        assert Store(path, 50).prune(db) == 0
        assert db.execute("SELECT count(*) FROM messages").fetchone() == (1,)
        assert db.execute("SELECT count(*) FROM meter_values").fetchone() == (1,)
    finally:
        db.close()


# ============================================================================== CLI


def test_status_and_get_commands(start_appliance, tmp_path):
    running = start_appliance(NO_FETCH)
    config = running.folder / "appliance.toml"
    with Station(running.url, "Küche.Box 1") as other:
        boot16(other)
    disconnected(running, "K%C3%BCche%2EBox%201")
    with Station(running.url, "GARAGE") as cp:
        boot16(cp)
        cp.ok(
            "StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Charging"}
        )
        tid = cp.ok(
            "StartTransaction",
            {"connectorId": 1, "idTag": "04A2B3C4", "meterStart": 12000, "timestamp": stamp(-60)},
        )["transactionId"]
        cp.ok(
            "MeterValues",
            {
                "connectorId": 1,
                "transactionId": tid,
                "meterValue": [
                    {
                        "timestamp": stamp(),
                        "sampledValue": [
                            sv16("12.5", "Energy.Active.Import.Register", "kWh"),
                            sv16("7.2", "Power.Active.Import", "kW"),
                        ],
                    }
                ],
            },
        )
        wait_state(running, "GARAGE.transactions.last.energyWh", 500)

        table = run_cli("status", "--config", str(config))
        assert table.returncode == 0, table.stderr
        lines = table.stdout.splitlines()
        assert lines[0].split() == [
            "IDENTITY", "CONNECTED", "STATUS", "PROTOCOL", "POWER", "W", "ENERGY", "kWh",
            "SOC", "%", "CHARGING", "SESSION", "kWh", "LAST", "SEEN",
        ]  # fmt: skip
        rows = {line.split("  ")[0]: line.split() for line in lines[2:]}
        assert set(rows) == {"GARAGE", "Küche.Box 1"}
        assert rows["GARAGE"][:9] == [
            "GARAGE", "yes", "Charging", "ocpp1.6", "7200", "12.500", "-", "yes", "0.500",
        ]  # fmt: skip
        assert rows["GARAGE"][-1] == "ago"
        assert rows["Küche.Box 1"][2:4] == ["no", "-"]

        as_json = run_cli("status", "--config", str(config), "--json")
        assert as_json.returncode == 0, as_json.stderr
        parsed = {row["identity"]: row for row in json.loads(as_json.stdout)}
        assert set(parsed) == {"GARAGE", "Küche.Box 1"}
        row = status_row(running, "GARAGE")
        # read a moment apart: the age may have ticked over in between
        assert parsed["GARAGE"]["reading_age_s"] - row.pop("reading_age_s") in (-1, 0)
        assert {k: v for k, v in parsed["GARAGE"].items() if k != "reading_age_s"} == row
        assert list(parsed["GARAGE"]) == VIEW_COLUMNS
        assert parsed["GARAGE"]["connected"] == 1
        assert parsed["GARAGE"]["status"] == "Charging"
        assert parsed["GARAGE"]["rfid"] == "04A2B3C4"
        assert parsed["GARAGE"]["power_w"] == pytest.approx(7200)
        assert parsed["GARAGE"]["tx_energy_kwh"] == pytest.approx(0.5)
        assert parsed["Küche.Box 1"]["connected"] == 0

        got = run_cli("get", "GARAGE.meterValues.*", "--config", str(config))
        assert got.returncode == 0, got.stderr
        shown = {line.split()[0]: line.split()[1:3] for line in got.stdout.splitlines()[2:]}
        assert shown == {
            "GARAGE.meterValues.energyKWh": ["12.5", "kWh"],
            "GARAGE.meterValues.energyWh": ["12500.0", "Wh"],
            "GARAGE.meterValues.powerW": ["7200.0", "W"],
        }
        got = run_cli("get", "GARAGE.meterValues.*", "--json", "--config", str(config))
        assert got.returncode == 0, got.stderr
        assert {s["id"]: (s["val"], s["unit"], s["type"]) for s in json.loads(got.stdout)} == {
            "GARAGE.meterValues.energyKWh": (12.5, "kWh", "number"),
            "GARAGE.meterValues.energyWh": (12500.0, "Wh", "number"),
            "GARAGE.meterValues.powerW": (7200.0, "W", "number"),
        }
        escaped = run_cli("get", "K%C3%BCche%2EBox%201.info.vendor", "--config", str(config))
        assert escaped.returncode == 0, escaped.stderr
        assert escaped.stdout.splitlines()[2].split()[:2] == [
            "K%C3%BCche%2EBox%201.info.vendor",
            "Raw",
        ]

        nothing = run_cli("get", "NOPE.*", "--config", str(config))
        assert nothing.returncode == 1
        assert "NOPE.*" in nothing.stderr

    missing = tmp_path / "elsewhere"
    missing.mkdir()
    (missing / "appliance.toml").write_text('database = "not-here.db"\n')
    for args in (["status"], ["get", "*"]):
        result = run_cli(*args, "--config", str(missing / "appliance.toml"))
        assert result.returncode == 1, result
        assert "no database at" in result.stderr
        assert str(missing / "not-here.db") in result.stderr
        assert "Traceback" not in result.stderr
    assert not (missing / "not-here.db").exists()
    assert running.stop() == 0


VIEW_COLUMNS = [
    "identity", "connected", "status", "protocol", "rfid", "soc", "power_w", "energy_wh",
    "energy_kwh", "voltage_l1", "voltage_l2", "voltage_l3", "current_l1", "current_l2",
    "current_l3", "power_l1", "power_l2", "power_l3", "tx_active", "tx_energy_kwh",
    "charge_limit", "number_phases", "last_seen", "state", "last_reading", "reading_age_s",
    "charge_limit_unit", "upstreams",
]  # fmt: skip


# ======================================================================== migration


def fixture_rows(db: Path, table: str) -> list[tuple]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
        return c.execute(f"SELECT * FROM {table} ORDER BY rowid").fetchall()


def test_schema_v1_database_is_migrated_and_keeps_its_ids(tmp_path):
    fixture = FIXTURES / "schema-v1.db"
    folder = tmp_path / "old"
    folder.mkdir()
    shutil.copy(fixture, folder / "appliance.db")
    old = {t: fixture_rows(fixture, t) for t in ("messages", "connection_log", "transactions")}
    assert [r[2] for r in old["transactions"]] == ["1", "2"]

    running = start_appliance_process(folder, NO_FETCH)
    try:
        assert running.query("PRAGMA user_version") == [(SCHEMA_VERSION,)]
        tables = {r[0] for r in running.query("SELECT name FROM sqlite_schema")}
        assert {"states", "objects", "meter_values", "charge_points"} <= tables
        assert "charge_point_status" in tables
        # the old rows as they were; the columns added since hold their defaults
        migrated_messages = running.query("SELECT * FROM messages ORDER BY seq")
        assert [row[: len(old["messages"][0])] for row in migrated_messages] == old["messages"]
        # redacted 0; peer NULL (the charge point: README "A second backend")
        assert {row[len(old["messages"][0]) :] for row in migrated_messages} == {(0, None)}
        assert running.query("SELECT * FROM connection_log ORDER BY seq") == old["connection_log"]
        migrated = running.query(
            "SELECT seq, identity, transaction_id, evse_id, connector_id, id_token, started_at,"
            " stopped_at, meter_start_wh, meter_stop_wh, energy_wh, stop_reason, received_at,"
            " time_suspect, seq_no, offline, updated_at FROM transactions ORDER BY seq"
        )
        assert [r[:14] for r in migrated] == old["transactions"]
        assert [r[14:] for r in migrated] == [(None, 0, r[12]) for r in old["transactions"]]

        with Station(running.url, "OLD-CP") as cp:
            boot16(cp)
            started = cp.ok(
                "StartTransaction",
                {"connectorId": 2, "idTag": "TAG3", "meterStart": 100, "timestamp": stamp()},
            )
            # the session the previous build left open is closed by its stop
            cp.ok(
                "StopTransaction",
                {"transactionId": 2, "meterStop": 6500, "timestamp": stamp(), "reason": "Local"},
            )
        disconnected(running, "OLD-CP")
        assert started["transactionId"] > 2
        rows = running.query(
            "SELECT transaction_id, id_token, meter_start_wh, meter_stop_wh, energy_wh"
            " FROM transactions WHERE identity = 'OLD-CP' ORDER BY seq"
        )
        assert rows == [
            ("1", "TAG1", 1000.0, 5000.0, 4000.0),
            ("2", "TAG2", 5000.0, 6500.0, 1500.0),
            (str(started["transactionId"]), "TAG3", 100.0, None, None),
        ]
        assert state(running, "OLD-CP.transactions.active") == 1
        assert running.query("PRAGMA integrity_check") == [("ok",)]
    finally:
        assert running.stop() == 0


@pytest.mark.parametrize("journal_mode", ["delete", "wal"])
def test_database_from_a_newer_version_is_refused_untouched(tmp_path, journal_mode):
    folder = tmp_path / "newer"
    folder.mkdir()
    db = folder / "appliance.db"
    with sqlite3.connect(db) as c:
        c.execute(f"PRAGMA journal_mode = {journal_mode}")
        c.execute("CREATE TABLE from_the_future (x)")
        c.execute("INSERT INTO from_the_future VALUES (42)")
        c.execute("PRAGMA user_version = 99")
    c.close()
    before = db.read_bytes()
    files_before = sorted(p.name for p in folder.iterdir())

    try:
        running = start_appliance_process(folder, NO_FETCH)
    except AssertionError as exc:
        message = str(exc)
    else:
        running.proc.kill()
        running.proc.wait()
        pytest.fail("the appliance served a database of schema version 99")
    assert message.startswith("appliance exited 1:"), message
    assert "99" in message and "schema version" in message
    after = db.read_bytes()
    # bytes 18 and 19 of the header: 1 rollback journal, 2 WAL
    assert after[18:20] == before[18:20], "the refused file's journal mode was changed"
    assert after == before
    # no -wal or -shm left behind either
    expected = sorted([*files_before, "appliance.toml", "server.log"])
    assert sorted(p.name for p in folder.iterdir()) == expected


def test_connected_is_reset_after_a_crash(tmp_path):
    folder = tmp_path / "crash"
    first = start_appliance_process(folder, NO_FETCH)
    with Station(first.url, "CRASHED") as cp:
        boot16(cp)
        wait_state(first, "CRASHED.info.connected", 1)
        # the boot's own commit may come a commit interval after the connect's: what is
        # older than one interval survives kill -9 (README "Storage design")
        wait_state(first, "CRASHED.info.vendor", "Raw")
        first.stop(sig=9)
    second = start_appliance_process(folder, NO_FETCH)
    try:
        assert state(second, "CRASHED.info.connected") == 0
        assert state(second, "CRASHED.info.vendor") == "Raw"
    finally:
        assert second.stop() == 0


def test_a_session_running_across_an_appliance_restart(tmp_path):
    """The box restarts (an update, a power cut) while the car charges: the session goes
    on in `transactions.last.*` and ends there when the charger stops it."""
    folder = tmp_path / "restart"
    first = start_appliance_process(folder, NO_FETCH)
    with Station(first.url, "RESTART") as cp:
        boot16(cp)
        tid = cp.ok(
            "StartTransaction",
            {"connectorId": 1, "idTag": "TAG", "meterStart": 1000, "timestamp": stamp(-600)},
        )["transactionId"]
        wait_state(first, "RESTART.transactions.active", 1)
    assert first.stop() == 0

    second = start_appliance_process(folder, NO_FETCH)
    try:
        assert state(second, "RESTART.transactions.active") == 1
        t_stop = stamp(-5)
        with Station(second.url, "RESTART") as cp:
            boot16(cp)
            cp.ok(
                "MeterValues",
                {
                    "connectorId": 1,
                    "transactionId": tid,
                    "meterValue": [
                        {
                            "timestamp": stamp(-60),
                            "sampledValue": [sv16("3000", "Energy.Active.Import.Register", "Wh")],
                        }
                    ],
                },
            )
            wait_state(second, "RESTART.meterValues.energyWh", 3000)
            live = state(second, "RESTART.transactions.last.energyWh")
            cp.ok(
                "StopTransaction",
                {"transactionId": tid, "meterStop": 4000, "timestamp": t_stop},
            )
        disconnected(second, "RESTART")
        assert second.query(
            "SELECT energy_wh, stopped_at FROM transactions WHERE identity = 'RESTART'"
        ) == [(3000.0, t_stop)]
        got = {
            "live energyWh": live,
            "active": state(second, "RESTART.transactions.active"),
            "last.id": state(second, "RESTART.transactions.last.id"),
            "last.stoppedAt": state(second, "RESTART.transactions.last.stoppedAt"),
            "last.energyWh": state(second, "RESTART.transactions.last.energyWh"),
        }
        assert got == {
            "live energyWh": 2000,
            "active": 0,
            "last.id": str(tid),
            "last.stoppedAt": t_stop,
            "last.energyWh": 3000,
        }
    finally:
        assert second.stop() == 0


def test_lc_moves_only_when_the_value_changes(appliance):
    identity = "LAST-CHANGE"
    status_id = f"{identity}.evse.1.connector.1.status"

    def status(cp: Station, value: str) -> None:
        cp.ok("StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": value})

    def row() -> tuple:
        return appliance.query("SELECT val, ack, ts, lc FROM states WHERE id = ?", status_id)[0]

    with Station(appliance.url, identity) as cp:
        boot16(cp)
        status(cp, "Available")
        wait_state(appliance, status_id, "Available")
        first = row()
        time.sleep(0.2)
        status(cp, "Available")
        # sync point: lastSeen changes with every frame, so it is written with the status
        seen = state(appliance, f"{identity}.info.lastSeen")
        wait_for(lambda: state(appliance, f"{identity}.info.lastSeen") > seen + 150)
        again = row()
        time.sleep(0.2)
        status(cp, "Preparing")
        wait_state(appliance, status_id, "Preparing")
        changed = row()
    assert first[:2] == ("Available", 1) and first[2] == first[3]
    assert again[:2] == ("Available", 1)
    assert again[3] == first[3], "lc moved though the value did not change"
    assert again[2] > first[2], "ts is not the last write: the repeated status left it"
    assert changed[:2] == ("Preparing", 1)
    assert changed[3] == changed[2] > again[2]
