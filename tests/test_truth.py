"""The database tells the truth (issue 13, points 1-8), driven by a third-party charge
point (the `ocpp` package) where a charge point speaks, read back as Home Assistant,
Grafana or a script reads it: no secret anywhere, no power after the fact, one clock
compared with itself, the schemas' defaults, controls that show what is in force, writes
that can never work refused, one status vocabulary."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from typing import Any

import pytest
from test_controls import (
    V16,
    V201,
    Station,
    booted,
    state,
    wait_done,
    write,
)
from test_tree_sessions import stamp

import conftest

SECRET_16 = "0A1B2C3D4E5F60718293A4B5C6D7E8F9"  # MicroOcpp answers AuthorizationKey in hex
SECRET_2X = "a-very-long-basic-auth-password-42"
NEW_SECRET = "N3W-S3CRET-authorization-key-0001"
FETCH = "[device_model]\nfetch_on_boot = true\n"


def everything_stored(db: Any) -> str:
    """Every value of every table, as one text: what a backup or a curious script sees."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as connection:
        return "\n".join(connection.iterdump())


# ================================================================= 1. secrets


def test_16_authorization_key_never_reaches_the_database(start_appliance):
    """GetConfiguration answered with AuthorizationKey in clear, then a user's
    ChangeConfiguration of it: the charge point gets the real value, the database
    only "***" — in the frames (marked redacted), the config state, the raw capture."""
    appliance = start_appliance(FETCH)
    cp = "SECRET-16"
    station = Station(appliance, cp, V16)
    station.answers["GetConfiguration"] = {
        "configuration_key": [
            {"key": "AuthorizationKey", "readonly": False, "value": SECRET_16},
            {"key": "HeartbeatInterval", "readonly": False, "value": "300"},
        ]
    }
    with station.open():
        booted(station)
        assert station.take_one()[0] == "GetConfiguration"
        appliance.wait_rows("SELECT 1 FROM states WHERE id = ?", f"{cp}.config.AuthorizationKey")
        assert state(appliance, f"{cp}.config.AuthorizationKey") == ("***", 1)

        write(appliance, (f"{cp}.config.AuthorizationKey", NEW_SECRET))
        assert wait_done(appliance, f"{cp}.config.AuthorizationKey") == ("***", 1)
        assert station.take_one() == (
            "ChangeConfiguration",
            {"key": "AuthorizationKey", "value": NEW_SECRET},  # the wire: the real value
        )
        # the mask written back (copied from the database) is refused: nothing is sent
        write(appliance, (f"{cp}.config.AuthorizationKey", "***"))
        assert wait_done(appliance, f"{cp}.config.AuthorizationKey") == ("***", 1)
        station.assert_quiet()
        assert appliance.query(
            "SELECT ok, error FROM control_outcomes WHERE id = ?", f"{cp}.config.AuthorizationKey"
        ) == [(0, "config.AuthorizationKey: *** is the mask, not a secret")]
        station.heartbeat()
    stored = everything_stored(appliance.db)
    assert SECRET_16 not in stored
    assert NEW_SECRET not in stored
    redacted = appliance.query(
        "SELECT direction, action FROM messages WHERE identity = ? AND redacted = 1 ORDER BY seq",
        cp,
    )
    assert redacted == [("in", "GetConfiguration"), ("out", "ChangeConfiguration")]
    assert state(appliance, f"{cp}.config.HeartbeatInterval") == ("300", 1)


def test_2x_basic_auth_password_never_reaches_the_database(start_appliance):
    """BasicAuthPassword in a NotifyReport, then written through `dm.*`: SetVariables
    carries it, the database does not."""
    appliance = start_appliance(FETCH)
    cp = "SECRET-2X"
    variable = "dm.SecurityCtrlr.BasicAuthPassword.Actual.value"
    with Station(appliance, cp, V201).open() as station:
        booted(station)
        action, payload = station.take_one()
        assert action == "GetBaseReport"
        station.send(
            station.call.NotifyReport(
                request_id=payload["requestId"],
                generated_at=stamp(),
                seq_no=0,
                tbc=False,
                report_data=[
                    {
                        "component": {"name": "SecurityCtrlr"},
                        "variable": {"name": "BasicAuthPassword"},
                        "variable_attribute": [
                            {"type": "Actual", "value": SECRET_2X, "mutability": "WriteOnly"}
                        ],
                        "variable_characteristics": {
                            "data_type": "string",
                            "supports_monitoring": False,
                        },
                    }
                ],
            )
        )
        appliance.wait_rows("SELECT 1 FROM objects WHERE id = ?", f"{cp}.{variable}")
        assert state(appliance, f"{cp}.{variable}") == ("***", 1)

        station.answers["SetVariables"] = lambda request: {
            "set_variable_result": [
                {
                    "attribute_status": "Accepted",
                    "component": {"name": "SecurityCtrlr"},
                    "variable": {"name": "BasicAuthPassword"},
                }
            ]
        }
        write(appliance, (f"{cp}.{variable}", NEW_SECRET))
        assert wait_done(appliance, f"{cp}.{variable}") == ("***", 1)
        action, payload = station.take_one()
        assert action == "SetVariables"
        assert payload["setVariableData"][0]["attributeValue"] == NEW_SECRET
        station.heartbeat()
    stored = everything_stored(appliance.db)
    assert SECRET_2X not in stored
    assert NEW_SECRET not in stored
    assert appliance.query(
        "SELECT count(*) FROM messages WHERE identity = ? AND redacted = 1", cp
    ) == [(2,)]


# ====================================================== 2-4. readings that are true


def power(appliance: Any, identity: str) -> Any:
    rows = appliance.query("SELECT power_w FROM charge_point_status WHERE identity = ?", identity)
    return rows[0][0] if rows else None


def wait_power(appliance: Any, identity: str, expected: Any) -> None:
    conftest.wait_for(lambda: power(appliance, identity) == expected, 10, f"power_w {expected}")


def test_power_ends_with_the_session_and_a_late_sample_does_not_bring_it_back(start_appliance):
    """A session at 11 kW ends: power and current are 0 at once (the energy register
    keeps its value); a sample from during the session delivered late does not revive
    them; while disconnected they are NULL (issue 13, point 2)."""
    appliance = start_appliance()
    cp = "POWER"
    t_charge, t_stop = stamp(), None
    with Station(appliance, cp, V16).open() as station:
        booted(station)
        start = station.send(
            station.call.StartTransaction(
                connector_id=1, id_tag="TAG", meter_start=1000, timestamp=t_charge
            )
        )
        sample = {
            "timestamp": t_charge,
            "sampled_value": [
                {"value": "11040", "measurand": "Power.Active.Import", "unit": "W"},
                {"value": "16", "measurand": "Current.Import", "unit": "A", "phase": "L1"},
                {"value": "5000", "measurand": "Energy.Active.Import.Register", "unit": "Wh"},
            ],
        }
        station.send(
            station.call.MeterValues(
                connector_id=1, transaction_id=start.transaction_id, meter_value=[sample]
            )
        )
        wait_power(appliance, cp, 11040)
        time.sleep(0.01)
        t_stop = stamp()
        station.send(
            station.call.StopTransaction(
                meter_stop=5000, timestamp=t_stop, transaction_id=start.transaction_id
            )
        )
        wait_power(appliance, cp, 0)
        row = appliance.query(
            "SELECT current_l1, energy_wh, tx_active FROM charge_point_status WHERE identity = ?",
            cp,
        )[0]
        assert row == (0, 5000, 0)
        # the charger's queue delivers a sample from during the session
        station.send(
            station.call.MeterValues(
                connector_id=1, transaction_id=start.transaction_id, meter_value=[sample]
            )
        )
        station.heartbeat()
        time.sleep(0.3)
        assert power(appliance, cp) == 0
        ts_zero = appliance.query("SELECT ts FROM states WHERE id = ?", f"{cp}.meterValues.powerW")[
            0
        ][0]
        assert ts_zero > 0
    wait_power(appliance, cp, None)
    assert appliance.query(
        "SELECT energy_wh, state FROM charge_point_status WHERE identity = ?", cp
    ) == [(5000, "offline")]


def test_16_session_energy_grows_without_a_transaction_id(start_appliance):
    """1.6 makes MeterValues' transactionId optional and some chargers leave it out: the
    register of the connector a session runs on is still that session's energy (README
    "`transactions`"); the rows keep what the charger sent. A reading of another
    connector, or of connector 0 (the main meter), is not the session's."""
    appliance = start_appliance()
    cp = "NO-TX-ID"

    def register(connector: int, wh: int) -> None:
        reading = {"value": str(wh), "measurand": "Energy.Active.Import.Register", "unit": "Wh"}
        station.send(
            station.call.MeterValues(
                connector_id=connector,
                meter_value=[{"timestamp": stamp(), "sampled_value": [reading]}],
            )
        )

    def session_kwh() -> Any:
        return appliance.query(
            "SELECT tx_energy_kwh FROM charge_point_status WHERE identity = ?", cp
        )[0][0]

    with Station(appliance, cp, V16).open() as station:
        booted(station)
        station.send(
            station.call.StartTransaction(
                connector_id=1, id_tag="TAG", meter_start=1000, timestamp=stamp()
            )
        )
        register(1, 1500)
        conftest.wait_for(lambda: session_kwh() == pytest.approx(0.5), 10, "0.5 kWh")
        register(0, 900_000)  # the main meter
        register(2, 70_000)  # another connector, no session there
        appliance.wait_rows("SELECT 1 FROM meter_values WHERE value = 70000")
        assert session_kwh() == pytest.approx(0.5)
        register(1, 3250)
        conftest.wait_for(lambda: session_kwh() == pytest.approx(2.25), 10, "2.25 kWh")
        rows = appliance.query(
            "SELECT connector_id, transaction_id, value FROM meter_values"
            " WHERE identity = ? ORDER BY rowid",
            cp,
        )
        assert [r[1] for r in rows] == [None] * 4, rows


def test_available_means_nothing_flows(start_appliance):
    """A charger that reports Available (the car left) without any meter value after
    the session: power 0."""
    appliance = start_appliance()
    cp = "AVAILABLE"
    with Station(appliance, cp, V16).open() as station:
        booted(station)
        station.send(
            station.call.MeterValues(
                connector_id=1,
                meter_value=[
                    {
                        "timestamp": stamp(),
                        "sampled_value": [
                            {"value": "7200", "measurand": "Power.Active.Import", "unit": "W"}
                        ],
                    }
                ],
            )
        )
        wait_power(appliance, cp, 7200)
        station.send(
            station.call.StatusNotification(
                connector_id=1, error_code="NoError", status="Available", timestamp=stamp()
            )
        )
        wait_power(appliance, cp, 0)


def test_a_charge_point_clock_is_compared_only_with_itself(start_appliance):
    """First a sample with an implausible time (ordered by arrival), then one whose
    clock runs 30 s behind the appliance's: the fresh one is shown (issue 13, point 3)."""
    appliance = start_appliance()
    cp = "CLOCKS"
    with Station(appliance, cp, V16).open() as station:
        booted(station)
        for when, watts in (("2000-01-01T00:00:00Z", "1000"), (stamp(-30), "2000")):
            station.send(
                station.call.MeterValues(
                    connector_id=1,
                    meter_value=[
                        {
                            "timestamp": when,
                            "sampled_value": [
                                {"value": watts, "measurand": "Power.Active.Import", "unit": "W"}
                            ],
                        }
                    ],
                )
            )
        wait_power(appliance, cp, 2000)


def test_2x_schema_defaults_and_a_repeated_sample(start_appliance):
    """TransactionEvent Ended without stoppedReason: Local. A sampled value without
    context: Sample.Periodic. The Transaction.Begin sample repeated in the Ended event:
    stored once (issue 13, point 4)."""
    appliance = start_appliance()
    cp = "DEFAULTS"
    t0, t1 = stamp(), None
    begin = {
        "timestamp": t0,
        "sampled_value": [
            {
                "value": 1000,
                "measurand": "Energy.Active.Import.Register",
                "context": "Transaction.Begin",
                "unit_of_measure": {"unit": "Wh"},
            }
        ],
    }
    with Station(appliance, cp, V201).open() as station:
        booted(station)

        def event(kind: str, seq: int, when: str, values: list, **extra: Any) -> None:
            station.send(
                station.call.TransactionEvent(
                    event_type=kind,
                    timestamp=when,
                    trigger_reason="Authorized" if kind == "Started" else "EVCommunicationLost",
                    seq_no=seq,
                    transaction_info={"transaction_id": "tx-def", **extra},
                    evse={"id": 1, "connector_id": 1},
                    meter_value=values,
                )
            )

        event("Started", 0, t0, [begin], charging_state="Charging")
        time.sleep(0.01)
        t1 = stamp()
        periodic = {
            "timestamp": t1,
            "sampled_value": [{"value": 3000, "measurand": "Energy.Active.Import.Register"}],
        }
        event("Ended", 1, t1, [begin, periodic])
        station.heartbeat()
        appliance.wait_rows(
            "SELECT 1 FROM transactions WHERE identity = ? AND stopped_at IS NOT NULL", cp
        )
    assert appliance.query(
        "SELECT stop_reason, energy_wh FROM transactions WHERE identity = ?", cp
    ) == [("Local", 2000.0)]
    rows = appliance.query(
        "SELECT context, value FROM meter_values WHERE identity = ? ORDER BY seq", cp
    )
    assert rows == [("Transaction.Begin", 1000.0), ("Sample.Periodic", 3000.0)]


def transaction_event(station: Any, transaction_id: str, kind: str, seq: int, values: list) -> None:
    """A 2.x TransactionEvent on EVSE 1 now, with `values` as its meter values."""
    station.send(
        station.call.TransactionEvent(
            event_type=kind,
            timestamp=stamp(),
            trigger_reason={"Started": "Authorized", "Ended": "EVCommunicationLost"}.get(
                kind, "MeterValuePeriodic"
            ),
            seq_no=seq,
            transaction_info={"transaction_id": transaction_id},
            evse={"id": 1, "connector_id": 1},
            meter_value=values,
        )
    )


def test_a_repeated_sample_is_stored_once_after_many_others(start_appliance):
    """MicroOcpp repeats the Transaction.Begin sample in the Ended event, however long the
    session ran: after 1 500 other samples it gives no second row, nor do the newest 100
    samples repeated with it (the memory of the others is bounded, README "Readings")."""
    appliance = start_appliance()
    cp = "MANYSAMPLES"
    begin = {
        "timestamp": stamp(),
        "sampled_value": [
            {
                "value": 0.5,
                "measurand": "Energy.Active.Import.Register",
                "context": "Transaction.Begin",
            }
        ],
    }
    with Station(appliance, cp, V201).open() as station:
        booted(station)

        def event(kind: str, seq: int, values: list) -> None:
            transaction_event(station, "tx-many", kind, seq, values)

        event("Started", 0, [begin])
        periodic: list[dict] = []
        for seq in range(1, 16):
            values = [
                {"value": seq * 1000 + n, "measurand": "Energy.Active.Import.Register"}
                for n in range(100)
            ]
            periodic.append({"timestamp": stamp(), "sampled_value": values})
            event("Updated", seq, [periodic[-1]])
        event("Ended", 16, [begin, periodic[-1]])
        station.heartbeat()
        appliance.wait_rows(
            "SELECT 1 FROM transactions WHERE identity = ? AND stopped_at IS NOT NULL", cp
        )
    assert appliance.query(
        "SELECT count(*), count(DISTINCT value) FROM meter_values WHERE identity = ?", cp
    ) == [(1501, 1501)]
    assert appliance.query(
        "SELECT count(*) FROM meter_values WHERE identity = ? AND context = 'Transaction.Begin'",
        cp,
    ) == [(1,)]


def test_samples_of_one_moment_are_remembered_together(start_appliance):
    """A later event repeating part of an earlier moment's samples with a new one of that
    moment stores only the new one; a sample twice in one message gives one row (the
    samples memory keeps them by transaction and timestamp, README "Readings")."""
    appliance = start_appliance()
    cp = "MOMENTS"
    moment = stamp()

    def values(*numbers: float) -> list:
        return [
            {
                "timestamp": moment,
                "sampled_value": [
                    {"value": n, "measurand": "Energy.Active.Import.Register"} for n in numbers
                ],
            }
        ]

    with Station(appliance, cp, V201).open() as station:
        booted(station)
        for seq, (kind, numbers) in enumerate(
            [("Started", (1.0, 2.0)), ("Updated", (2.0, 3.0, 3.0)), ("Ended", (1.0, 3.0))]
        ):
            transaction_event(station, "tx-moments", kind, seq, values(*numbers))
        station.heartbeat()
        appliance.wait_rows(
            "SELECT 1 FROM transactions WHERE identity = ? AND stopped_at IS NOT NULL", cp
        )
    assert appliance.query(
        "SELECT value FROM meter_values WHERE identity = ? ORDER BY seq", cp
    ) == [(1.0,), (2.0,), (3.0,)]


# =========================================================== 5-7. controls in force


def outcome_row(appliance: Any, state_id: str) -> tuple:
    rows = appliance.query(
        "SELECT value, ok, error, in_force FROM control_outcomes WHERE id = ?", state_id
    )
    return rows[0] if rows else ()


def test_a_refused_limit_is_not_shown_in_force(start_appliance):
    """SetChargingProfile answered NotImplemented, then Rejected: chargeLimit goes back
    to what is in force (NULL, then the accepted 16 A), charge_point_status says so, and
    the refusal stays readable per control while another control succeeds (point 5)."""
    from ocpp.exceptions import NotImplementedError as OcppNotImplemented

    appliance = start_appliance()
    cp = "LIMIT"
    limit = f"{cp}.control.chargeLimit"
    with booted(Station(appliance, cp, V16).open()) as station:
        station.errors["SetChargingProfile"] = OcppNotImplemented()
        write(appliance, (limit, 11))
        assert wait_done(appliance, limit) == (None, 1)
        assert station.take_one()[0] == "SetChargingProfile"
        value, ok, error, in_force = outcome_row(appliance, limit)
        assert (value, ok, in_force) == (11, 0, None) and "NotImplemented" in error
        assert appliance.query(
            "SELECT charge_limit FROM charge_point_status WHERE identity = ?", cp
        ) == [(None,)]

        del station.errors["SetChargingProfile"]
        write(appliance, (limit, 16))
        assert wait_done(appliance, limit) == (16, 1)
        station.take_one()
        station.answers["SetChargingProfile"] = {"status": "Rejected"}
        write(appliance, (limit, 20))
        assert wait_done(appliance, limit) == (16, 1)
        station.take_one()

        # another control succeeds: the limit's refusal is still there
        write(appliance, (f"{cp}.control.softReset.trigger", 1))
        wait_done(appliance, f"{cp}.control.softReset.trigger")
        station.take_one()
        assert state(appliance, f"{cp}.control.lastError") == ("", 1)
        value, ok, error, in_force = outcome_row(appliance, limit)
        assert (value, ok, in_force) == (20, 0, 16) and "Rejected" in error


def test_writes_that_can_never_work_leave_no_trace(start_appliance):
    """An unknown charge point, a control that does not exist: SQLite refuses the write
    itself (the trigger), no row is left (point 6)."""
    appliance = start_appliance()
    with booted(Station(appliance, "SIM001", V16).open()):
        for state_id in ("NOPE.control.chargeLimit", "SIM001.chargeLimit"):
            with pytest.raises(sqlite3.IntegrityError, match="not a writable state"):
                write(appliance, (state_id, 8))
            assert state(appliance, state_id) is None
        assert appliance.query("SELECT count(*) FROM control_queue") == [(0,)]


@pytest.mark.parametrize(
    ("name", "value", "error"),
    [
        ("chargeLimit", -5, "0..500 A"),
        ("chargeLimit", 7000, "0..500 A"),
        ("chargeLimitType", "kW", "A or W"),
        ("numberOfPhases", 5, "1, 2 or 3"),
    ],
)
def test_values_are_checked_before_anything_is_sent(start_appliance, name, value, error):
    """A limit out of range, a unit or phase count that does not exist: refused when
    written, nothing sent, the value in force restored (point 7)."""
    appliance = start_appliance()
    cp = "CHECKS"
    with booted(Station(appliance, cp, V16).open()) as station:
        before = state(appliance, f"{cp}.control.{name}")
        write(appliance, (f"{cp}.control.{name}", value))
        assert wait_done(appliance, f"{cp}.control.{name}") == before
        assert error in state(appliance, f"{cp}.control.lastError")[0]
        assert error in outcome_row(appliance, f"{cp}.control.{name}")[2]
        station.assert_quiet()


# ========================================================= 8. one status vocabulary


@pytest.mark.parametrize("version", [V16, V201])
def test_one_state_for_charging_whatever_the_version(start_appliance, version):
    """1.6 says Charging, 2.x Occupied with chargingState Charging: `state` is
    `charging` for both; the raw status stays; the age of the last reading is there
    (point 8)."""
    appliance = start_appliance()
    cp = f"STATE-{version[4:].replace('.', '')}"
    with booted(Station(appliance, cp, version).open()) as station:
        if version == V16:
            station.send(
                station.call.StatusNotification(
                    connector_id=1, error_code="NoError", status="Charging"
                )
            )
            raw = "Charging"
        else:
            station.send(
                station.call.StatusNotification(
                    timestamp=stamp(), connector_status="Occupied", evse_id=1, connector_id=1
                )
            )
            station.send(
                station.call.TransactionEvent(
                    event_type="Started",
                    timestamp=stamp(),
                    trigger_reason="ChargingStateChanged",
                    seq_no=0,
                    transaction_info={"transaction_id": "tx-state", "charging_state": "Charging"},
                    evse={"id": 1, "connector_id": 1},
                    meter_value=[
                        {
                            "timestamp": stamp(),
                            "sampled_value": [{"value": 7200, "measurand": "Power.Active.Import"}],
                        }
                    ],
                )
            )
            raw = "Occupied"
        conftest.wait_for(
            lambda: (
                appliance.query("SELECT state FROM charge_point_status WHERE identity = ?", cp)
                == [("charging",)]
            ),
            10,
            "state charging",
        )
        status, connector_state = appliance.query(
            "SELECT s.val, (SELECT val FROM states WHERE id = ?) FROM states s WHERE s.id = ?",
            f"{cp}.evse.1.connector.1.state",
            f"{cp}.evse.1.connector.1.status",
        )[0]
        assert (status, connector_state) == (raw, "charging")
        if version != V16:
            age = appliance.query(
                "SELECT reading_age_s FROM charge_point_status WHERE identity = ?", cp
            )[0][0]
            assert age is not None and 0 <= age < 60


def test_set_says_why_a_write_can_never_work_and_writes_nothing(start_appliance):
    """`ocpp-appliance set` on an unknown charge point, a control that does not exist,
    a read-only key, a parameter out of its range: one line saying which, exit 1, no row
    (points 6 and 7)."""
    appliance = start_appliance()
    config = str(appliance.folder / "appliance.toml")
    with booted(Station(appliance, "SIM001", V16).open()) as station:
        cases = {
            "NOPE.control.chargeLimit": ("8", "unknown charge point"),
            "SIM001.chargeLimit": ("8", "no such control"),
            "SIM001.control.chargeLimitType": ("kW", "must be A or W"),
            "SIM001.control.numberOfPhases": ("5", "must be 1, 2 or 3"),
        }
        for state_id, (value, words) in cases.items():
            before = state(appliance, state_id)
            result = conftest.run_cli("set", state_id, value, "--config", config)
            assert result.returncode == 1, result
            assert words in result.stderr, result.stderr
            assert "Traceback" not in result.stderr
            assert state(appliance, state_id) == before
        result = conftest.run_cli("set", "SIM001.control.chargeLimit", "7000", "--config", config)
        assert result.returncode == 1 and "0..500 A" in result.stderr, result
        assert state(appliance, "SIM001.control.chargeLimit") == (None, 1)
        station.assert_quiet()
