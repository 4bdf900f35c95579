"""After a reconnect the database still tells the truth (issue 25): the state follows the
connection without a new StatusNotification, a charge point that booted before is sent
controls after a short grace, the energy register and a session's energy take the stop's
value, a disconnect keeps readings' times, `in_force` follows what the charge point
reports, and a charge limit goes out in the unit the charger takes — each driven by
`ocpp`-package charge points that behave like MicroOcpp, against the real appliance
process and its SQLite file, also across an appliance restart."""

from __future__ import annotations

import contextlib
import json
import re
import time
from typing import Any

import pytest
from test_controls import (
    V16,
    V201,
    Station,
    booted,
    cli,
    outcome,
    state,
    top_level,
    wait_done,
    write,
)

import conftest

FETCH = "[device_model]\nfetch_on_boot = true\n"
TIMEOUT = "call_timeout_sec = 10\n"
NEVER_SENT = "not sent within 10 s: the charge point has sent no message yet"


def at(second: int) -> str:
    """A charge point's timestamp: explicit, plausible, `second` s after a fixed moment."""
    minutes, seconds = divmod(second, 60)
    return f"2026-01-15T10:{minutes:02d}:{seconds:02d}.000Z"


# ------------------------------------------------------------------------ reading


def status(appliance: Any, cp: str, *columns: str) -> tuple | None:
    """Columns of the charge point's row of charge_point_status."""
    rows = appliance.query(
        f"SELECT {', '.join(columns)} FROM charge_point_status WHERE identity = ?", cp
    )
    return rows[0] if rows else None


def wait_status(appliance: Any, cp: str, timeout: float = 10, **expected: Any) -> None:
    """Until charge_point_status shows `expected` (column = value); else what it shows."""
    columns = list(expected)
    settle(lambda: status(appliance, cp, *columns) == tuple(expected.values()), timeout)
    shown = dict(zip(columns, status(appliance, cp, *columns) or (), strict=False))
    assert shown == expected, f"{cp}: charge_point_status shows {shown}"


def outcome_row(appliance: Any, state_id: str) -> tuple:
    rows = appliance.query(
        "SELECT value, ok, error, in_force FROM control_outcomes WHERE id = ?", state_id
    )
    return rows[0] if rows else ()


def settle(check: Any, timeout: float = 3) -> None:
    """Wait up to `timeout` for `check`; the assertion that follows says what is wrong."""
    with contextlib.suppress(AssertionError):
        conftest.wait_for(check, timeout)


def wait_disconnected(appliance: Any, cp: str) -> None:
    appliance.wait_rows("SELECT 1 FROM states WHERE id = ? AND val = 0", f"{cp}.info.connected")


def restart(
    appliance: conftest.Appliance, start_appliance: Any, extra: str = "", kill: bool = False
) -> Any:
    """Stop the appliance (cleanly, or with kill -9: no disconnect is written) and start
    it again on the same folder and database."""
    if kill:
        appliance.proc.kill()
        appliance.proc.wait()
    else:
        assert appliance.stop() == 0, appliance.log()[-3000:]
    return start_appliance(extra)


# ----------------------------------------------------------------- what is sent


def status_notification(station: Station, status_16: str, status_2x: str) -> None:
    if station.version == V16:
        station.send(
            station.call.StatusNotification(
                connector_id=1, error_code="NoError", status=status_16, timestamp=at(0)
            )
        )
    else:
        station.send(
            station.call.StatusNotification(
                timestamp=at(0), connector_status=status_2x, evse_id=1, connector_id=1
            )
        )


def sample_16(value: float, measurand: str, unit: str, phase: str | None = None) -> dict:
    sampled = {"value": str(value), "measurand": measurand, "unit": unit}
    return sampled if phase is None else {**sampled, "phase": phase}


def register_16(wh: float, when: str) -> dict:
    return {
        "timestamp": when,
        "sampled_value": [sample_16(wh, "Energy.Active.Import.Register", "Wh")],
    }


def start_16(station: Station, when: str) -> int:
    """A 1.6 StartTransaction on connector 1 from register 0; its transaction id."""
    answer = station.send(
        station.call.StartTransaction(connector_id=1, id_tag="TAG", meter_start=0, timestamp=when)
    )
    return answer.transaction_id


def values_16(station: Station, when: str, *sampled: dict, tid: int | None = None) -> None:
    station.send(
        station.call.MeterValues(
            connector_id=1,
            transaction_id=tid,
            meter_value=[{"timestamp": when, "sampled_value": list(sampled)}],
        )
    )


def transaction_event(
    station: Station, kind: str, seq: int, when: str, tid: str, values: list | None = None
) -> None:
    trigger = {"Started": "Authorized", "Updated": "MeterValuePeriodic"}.get(kind, "StopAuthorized")
    info: dict[str, Any] = {"transaction_id": tid}
    if kind != "Ended":
        info["charging_state"] = "Charging"
    station.send(
        station.call.TransactionEvent(
            event_type=kind,
            timestamp=when,
            trigger_reason=trigger,
            seq_no=seq,
            transaction_info=info,
            evse={"id": 1, "connector_id": 1} if kind == "Started" else None,
            meter_value=values,
        )
    )


def register_2x(wh: float, when: str, context: str) -> dict:
    return {
        "timestamp": when,
        "sampled_value": [
            {
                "value": wh,
                "measurand": "Energy.Active.Import.Register",
                "context": context,
                "unit_of_measure": {"unit": "Wh"},
            }
        ],
    }


# ============================================== 1. the state follows the connection


@pytest.mark.parametrize("version", [V16, V201])
def test_state_follows_a_reconnect_without_status_notification(start_appliance, version):
    """Available, a network blip, a reconnect without any StatusNotification (MicroOcpp
    sends one only at boot): `state` is `available` again at once, not `offline` while
    `connected = 1` (issue 25, point 1)."""
    appliance = start_appliance()
    cp = f"BLIP-{version[4:].replace('.', '')}"
    with booted(Station(appliance, cp, version).open()) as station:
        status_notification(station, "Available", "Available")
        wait_status(appliance, cp, connected=1, state="available")
    wait_status(appliance, cp, connected=0, state="offline")

    with Station(appliance, cp, version).open():  # sends nothing at all
        wait_status(appliance, cp, timeout=3, connected=1, state="available", status="Available")


@pytest.mark.parametrize("version", [V16, V201])
@pytest.mark.parametrize("kill", [False, True], ids=["stopped", "killed"])
def test_state_follows_a_reconnect_after_an_appliance_restart(start_appliance, version, kill):
    """A session runs at 11 kW, the appliance restarts (after a clean stop, or kill -9,
    which writes no disconnect): while the charge point is away its state is `offline`
    and its power NULL (nothing is known then, also after a restart); it reconnects
    without a StatusNotification: `charging` at once, from the last status in the
    database (issue 25, point 1)."""
    appliance = start_appliance()
    cp = f"RESTART-{version[4:].replace('.', '')}"
    power = {"value": 11040, "measurand": "Power.Active.Import", "unit_of_measure": {"unit": "W"}}
    with booted(Station(appliance, cp, version).open()) as station:
        if version == V16:
            status_notification(station, "Charging", "")
            tid = start_16(station, at(1))
            values_16(station, at(2), sample_16(11040, "Power.Active.Import", "W"), tid=tid)
            raw = "Charging"
        else:
            status_notification(station, "", "Occupied")
            transaction_event(station, "Started", 0, at(1), "tx-restart")
            transaction_event(
                station,
                "Updated",
                1,
                at(2),
                "tx-restart",
                [{"timestamp": at(2), "sampled_value": [power]}],
            )
            raw = "Occupied"
        wait_status(appliance, cp, state="charging", tx_active=1, power_w=11040)
        appliance = restart(appliance, start_appliance, kill=kill)

    wait_status(appliance, cp, timeout=3, connected=0, state="offline", power_w=None)
    with Station(appliance, cp, version).open():  # no StatusNotification, no CALL
        wait_status(
            appliance, cp, timeout=3, connected=1, state="charging", tx_active=1, status=raw
        )


# ========================================= 2. controls after a silent reconnect


def test_a_booted_charge_point_that_reconnects_silently_gets_controls_after_a_grace(
    start_appliance, monkeypatch
):
    """A charge point that booted before reconnects and stays silent (MicroOcpp until
    its next Heartbeat): `ocpp-appliance call` reaches it about 5 s after the reconnect
    and succeeds. One that never sent a BootNotification still gets nothing before its
    first CALL: the control fails "has sent no message yet" (issue 25, point 2)."""
    top_level(monkeypatch, TIMEOUT)
    appliance = start_appliance()
    cp, mute = "SILENT-16", "NEVER-BOOTED"
    keys = [{"key": "HeartbeatInterval", "readonly": False, "value": "300"}]
    with booted(Station(appliance, cp, V16).open()):
        pass
    wait_disconnected(appliance, cp)

    station = Station(appliance, cp, V16)
    station.answers["GetConfiguration"] = {"configuration_key": keys}
    never = Station(appliance, mute, V16)
    with station.open(), never.open():
        reconnected = time.monotonic()
        conftest.wait_for(lambda: state(appliance, f"{mute}.control.availability"), 10, "controls")
        write(appliance, (f"{mute}.control.availability", 0))  # waits for a first CALL

        result = cli(appliance, "call", cp, "GetConfiguration")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == {"configurationKey": keys}
        [received] = station.take(1)
        assert (received.action, received.payload) == ("GetConfiguration", {})
        assert 4.0 <= received.at - reconnected <= 9.0, received.at - reconnected
        assert station.sent == []  # it never said a word on this connection
        assert outcome_row(appliance, f"{cp}.control.rpc.execute")[1:3] == (1, None)

        assert wait_done(appliance, f"{mute}.control.availability", timeout=15) == (1, 1)
        assert state(appliance, f"{mute}.control.lastError") == (NEVER_SENT, 1)
        assert outcome_row(appliance, f"{mute}.control.availability") == (0, 0, NEVER_SENT, 1)
        assert never.calls == []


def test_a_booted_charge_point_gets_controls_after_an_appliance_restart(
    start_appliance, monkeypatch
):
    """Booted before the appliance restarted (its boot is in the database), reconnects
    and sends nothing: a control written now reaches it about 5 s after the reconnect
    and is in force (issue 25, point 2)."""
    top_level(monkeypatch, TIMEOUT)
    appliance = start_appliance()
    cp = "SILENT-201"
    with booted(Station(appliance, cp, V201).open()):
        appliance = restart(appliance, start_appliance)

    with Station(appliance, cp, V201).open() as station:
        reconnected = time.monotonic()
        conftest.wait_for(lambda: state(appliance, f"{cp}.info.connected") == (1, 1), 5, "up")
        write(appliance, (f"{cp}.control.availability", 0))
        done = wait_done(appliance, f"{cp}.control.availability", timeout=15)
        assert outcome(appliance, f"{cp}.control") == ({"status": "Accepted"}, "")
        assert done == (0, 1)
        [received] = station.take(1)
        assert (received.action, received.payload) == (
            "ChangeAvailability",
            {"operationalStatus": "Inoperative"},
        )
        assert 4.0 <= received.at - reconnected <= 9.0, received.at - reconnected
        assert station.sent == []
        assert outcome_row(appliance, f"{cp}.control.availability") == (0, 1, None, 0)


# ========================================= 3. the 1.6 register follows meterStop


def test_16_energy_register_takes_meter_stop_unless_the_clock_says_older(start_appliance):
    """StopTransaction's meterStop is the newest reading of the register (78 after a
    MeterValues of 74); a meterStop whose timestamp is older than the last MeterValues
    (80) does not take it back (issue 25, point 3)."""
    appliance = start_appliance()

    def session(cp: str, sample: tuple[int, str], stop: tuple[int, str]) -> None:
        with booted(Station(appliance, cp, V16).open()) as station:
            tid = start_16(station, at(0))
            station.send(
                station.call.MeterValues(
                    connector_id=1, transaction_id=tid, meter_value=[register_16(*sample)]
                )
            )
            wait_status(appliance, cp, energy_wh=sample[0])
            station.send(
                station.call.StopTransaction(
                    meter_stop=stop[0], timestamp=stop[1], transaction_id=tid
                )
            )
            appliance.wait_rows(
                "SELECT 1 FROM transactions WHERE identity = ? AND stopped_at IS NOT NULL", cp
            )
            station.heartbeat()
            assert appliance.query(
                "SELECT meter_stop_wh, energy_wh FROM transactions WHERE identity = ?", cp
            ) == [(stop[0], stop[0])]

    session("STOP-NEWER", (74, at(10)), (78, at(20)))
    wait_status(appliance, "STOP-NEWER", timeout=3, energy_wh=78, energy_kwh=0.078, tx_active=0)
    assert state(appliance, "STOP-NEWER.meterValues.energyWh") == (78, 1)

    session("STOP-OLDER", (80, at(20)), (78, at(10)))
    time.sleep(0.3)
    assert status(appliance, "STOP-OLDER", "energy_wh", "energy_kwh", "tx_active") == (
        80,
        0.08,
        0,
    )


# ==================================== 4. a disconnect does not move readings' times


def test_a_disconnect_keeps_the_time_of_every_reading(start_appliance):
    """A register and a power reported, two seconds pass, the charge point goes away:
    power is NULL, but the register keeps its value and its `ts`, and `last_reading` /
    `reading_age_s` still say when the charge point last reported (issue 25, point 4)."""
    appliance = start_appliance()
    cp = "KEEP-TS"
    energy = f"{cp}.meterValues.energyWh"
    with booted(Station(appliance, cp, V16).open()) as station:
        tid = start_16(station, at(0))
        energy_sample = sample_16(106, "Energy.Active.Import.Register", "Wh")
        values_16(
            station, at(5), energy_sample, sample_16(7200, "Power.Active.Import", "W"), tid=tid
        )
        wait_status(appliance, cp, energy_wh=106, power_w=7200)
        [(value, ts)] = appliance.query("SELECT val, ts FROM states WHERE id = ?", energy)
        last_reading = status(appliance, cp, "last_reading")[0]
        assert last_reading >= ts
        waited = 2
        time.sleep(waited + 0.2)
    wait_status(appliance, cp, connected=0, power_w=None)
    assert appliance.query("SELECT val, ts FROM states WHERE id = ?", energy) == [(value, ts)], (
        "the disconnect rewrote the register's ts"
    )
    now_last, age = status(appliance, cp, "last_reading", "reading_age_s")
    assert now_last == last_reading
    assert age is not None and age >= waited, age


# ================================================= 5. one session, one energy


@pytest.mark.parametrize("across", ["same connection", "restart, Heartbeat", "restart, boot"])
def test_2x_session_ended_without_a_register_takes_the_last_one(start_appliance, across):
    """Started at 0 Wh, Updated at 106 Wh, Ended without any meter value (the charger
    rebooted mid-session; or the appliance restarted before the Ended): the
    transactions row, `transactions.last.energyWh` and `tx_energy_kwh` all say 106 Wh
    (issue 25, point 5)."""
    appliance = start_appliance()
    cp = "ONE-ENERGY"
    tid = "tx-one-energy"
    with booted(Station(appliance, cp, V201).open()) as station:
        transaction_event(
            station, "Started", 0, at(0), tid, [register_2x(0, at(0), "Transaction.Begin")]
        )
        transaction_event(
            station, "Updated", 1, at(30), tid, [register_2x(106, at(30), "Sample.Periodic")]
        )
        wait_status(appliance, cp, tx_energy_kwh=0.106, tx_active=1)
        if across == "same connection":
            transaction_event(station, "Ended", 2, at(40), tid)
        else:
            appliance = restart(appliance, start_appliance)  # mid-session
    if across != "same connection":
        with Station(appliance, cp, V201).open() as station:
            if across == "restart, boot":
                station.boot()
            else:
                station.heartbeat()
            transaction_event(station, "Ended", 2, at(40), tid)
            station.heartbeat()

    appliance.wait_rows(
        "SELECT 1 FROM transactions WHERE identity = ? AND stopped_at IS NOT NULL", cp
    )
    time.sleep(0.2)
    assert appliance.query(
        "SELECT transaction_id, meter_start_wh, meter_stop_wh, energy_wh FROM transactions"
        " WHERE identity = ?",
        cp,
    ) == [(tid, 0, 106, 106)]
    assert state(appliance, f"{cp}.transactions.last.energyWh") == (106, 1)
    assert status(appliance, cp, "tx_energy_kwh", "tx_active") == (0.106, 0)


# ======================================= 6. in_force follows the charge point


def notify_variable(
    station: Station,
    request_id: int,
    component: str,
    variable: str,
    value: str,
    mutability: str,
    **characteristics: Any,
) -> None:
    """A NotifyReport of one variable's Actual value."""
    station.send(
        station.call.NotifyReport(
            request_id=request_id,
            generated_at=at(0),
            seq_no=0,
            tbc=False,
            report_data=[
                {
                    "component": {"name": component},
                    "variable": {"name": variable},
                    "variable_attribute": [
                        {"type": "Actual", "value": value, "mutability": mutability}
                    ],
                    "variable_characteristics": {**characteristics, "supports_monitoring": False},
                }
            ],
        )
    )


def notify_interval(station: Station, request_id: int, value: str) -> None:
    notify_variable(
        station, request_id, "SampledDataCtrlr", "TxUpdatedInterval", value, "ReadWrite",
        data_type="integer",
    )  # fmt: skip


def test_2x_in_force_follows_a_value_the_charge_point_resets(start_appliance):
    """TxUpdatedInterval 0 → the appliance sets 5 (accepted, in force 5) → the charger
    reboots and reports 0 again: the state shows 0 and so does `control_outcomes.in_force`
    (issue 25, point 6)."""
    appliance = start_appliance(FETCH)
    cp = "INFORCE-201"
    interval = f"{cp}.dm.SampledDataCtrlr.TxUpdatedInterval.Actual.value"

    def boot_and_report(station: Station) -> None:
        booted(station)
        action, payload = station.take_one()
        assert action == "GetBaseReport"
        notify_interval(station, payload["requestId"], "0")

    with Station(appliance, cp, V201).open() as station:
        boot_and_report(station)
        appliance.wait_rows("SELECT 1 FROM states WHERE id = ? AND val = 0", interval)
        station.answers["SetVariables"] = lambda request: {
            "set_variable_result": [
                {
                    "attribute_status": "Accepted",
                    "component": {"name": "SampledDataCtrlr"},
                    "variable": {"name": "TxUpdatedInterval"},
                }
            ]
        }
        write(appliance, (interval, 5))
        assert wait_done(appliance, interval) == (5, 1)
        action, payload = station.take_one()
        assert action == "SetVariables"
        assert payload["setVariableData"][0]["attributeValue"] == "5"
        assert outcome_row(appliance, interval) == (5, 1, None, 5)
    wait_disconnected(appliance, cp)

    with Station(appliance, cp, V201).open() as station:  # the charger rebooted
        boot_and_report(station)
        appliance.wait_rows("SELECT 1 FROM states WHERE id = ? AND val = 0", interval)
        settle(lambda: outcome_row(appliance, interval)[3:] == (0,))
        assert state(appliance, interval) == (0, 1)
        assert outcome_row(appliance, interval) == (5, 1, None, 0)


def test_16_in_force_follows_a_value_the_charge_point_resets(start_appliance):
    """MeterValueSampleInterval '0' → ChangeConfiguration '5' accepted → the charger
    reboots and its GetConfiguration answers '0' again: state and `in_force` '0'
    (issue 25, point 6)."""
    appliance = start_appliance(FETCH)
    cp = "INFORCE-16"
    key = f"{cp}.config.MeterValueSampleInterval"
    keys = [{"key": "MeterValueSampleInterval", "readonly": False, "value": "0"}]

    def boot(station: Station) -> None:
        station.answers["GetConfiguration"] = {"configuration_key": keys}
        booted(station.open())
        assert station.take_one()[0] == "GetConfiguration"
        appliance.wait_rows("SELECT 1 FROM states WHERE id = ? AND val = '0'", key)

    with Station(appliance, cp, V16) as station:
        boot(station)
        write(appliance, (key, "5"))
        assert wait_done(appliance, key) == ("5", 1)
        assert station.take_one() == (
            "ChangeConfiguration",
            {"key": "MeterValueSampleInterval", "value": "5"},
        )
        assert outcome_row(appliance, key) == ("5", 1, None, "5")
    wait_disconnected(appliance, cp)

    with Station(appliance, cp, V16) as station:  # the charger rebooted
        boot(station)
        settle(lambda: outcome_row(appliance, key)[3:] == ("0",))
        assert state(appliance, key) == ("0", 1)
        assert outcome_row(appliance, key) == ("5", 1, None, "0")


# =========================================== 7. a limit in the unit the charger takes


def rate_unit_station(appliance: Any, cp: str, allowed: str) -> Station:
    """A 1.6 charge point after boot whose GetConfiguration reports
    ChargingScheduleAllowedChargingRateUnit = `allowed`."""
    station = Station(appliance, cp, V16)
    station.answers["GetConfiguration"] = {
        "configuration_key": [
            {"key": "ChargingScheduleAllowedChargingRateUnit", "readonly": True, "value": allowed}
        ]
    }
    booted(station.open())
    assert station.take_one()[0] == "GetConfiguration"
    appliance.wait_rows(
        "SELECT 1 FROM states WHERE id = ?", f"{cp}.config.ChargingScheduleAllowedChargingRateUnit"
    )
    return station


def schedule_sent(station: Station) -> tuple[str, Any, Any]:
    """(rate unit, limit, numberPhases) of the SetChargingProfile the charge point got."""
    action, payload = station.take_one()
    assert action == "SetChargingProfile"
    if station.version == V16:
        schedule = payload["csChargingProfiles"]["chargingSchedule"]
    else:
        [schedule] = payload["chargingProfile"]["chargingSchedule"]
    [period] = schedule["chargingSchedulePeriod"]
    return schedule["chargingRateUnit"], period["limit"], period.get("numberPhases")


def note(appliance: Any, state_id: str) -> str:
    rows = appliance.query("SELECT note FROM control_outcomes WHERE id = ?", state_id)
    return rows[0][0] if rows and rows[0][0] is not None else ""


def limit_in_force(appliance: Any, cp: str, value: Any) -> None:
    """The write took: ok, the state keeps what the user wrote."""
    limit = f"{cp}.control.chargeLimit"
    assert state(appliance, limit) == (value, 1)
    assert outcome(appliance, f"{cp}.control") == ({"status": "Accepted"}, "")
    assert outcome_row(appliance, limit) == (value, 1, None, value)


def test_16_amps_go_out_as_watts_to_a_charger_that_takes_only_power(start_appliance):
    """ChargingScheduleAllowedChargingRateUnit = Power (MicroOcpp): a 16 A limit is sent
    as 16 A × 230 V × 3 = 11040 W, and the outcome says so; a charger that takes both
    units gets the amps (issue 25, point 7)."""
    appliance = start_appliance(FETCH)
    cp = "POWER-ONLY"
    with rate_unit_station(appliance, cp, "Power") as station:
        write(appliance, (f"{cp}.control.chargeLimit", 16))
        assert wait_done(appliance, f"{cp}.control.chargeLimit") == (16, 1)
        assert schedule_sent(station) == ("W", 11040, 3)
        limit_in_force(appliance, cp, 16)
        assert "11040 W" in note(appliance, f"{cp}.control.chargeLimit")

    cp = "BOTH-UNITS"
    with rate_unit_station(appliance, cp, "Current,Power") as station:
        write(appliance, (f"{cp}.control.chargeLimit", 16))
        assert wait_done(appliance, f"{cp}.control.chargeLimit") == (16, 1)
        assert schedule_sent(station) == ("A", 16, 3)
        limit_in_force(appliance, cp, 16)


def test_16_amps_to_watts_with_the_reported_voltage(start_appliance):
    """The charge point reported 240 V on L1: 16 A × 240 V × 3 = 11520 W (point 7)."""
    appliance = start_appliance(FETCH)
    cp = "POWER-240V"
    with rate_unit_station(appliance, cp, "Power") as station:
        values_16(station, at(0), sample_16(240, "Voltage", "V", phase="L1"))
        wait_status(appliance, cp, voltage_l1=240)
        write(appliance, (f"{cp}.control.chargeLimit", 16))
        assert wait_done(appliance, f"{cp}.control.chargeLimit") == (16, 1)
        assert schedule_sent(station) == ("W", 11520, 3)
        limit_in_force(appliance, cp, 16)
        assert "11520 W" in note(appliance, f"{cp}.control.chargeLimit")


def test_16_watts_go_out_as_amps_to_a_charger_that_takes_only_current(start_appliance):
    """chargeLimitType W, 11040 W, the charger takes only Current: 16 A (point 7)."""
    appliance = start_appliance(FETCH)
    cp = "CURRENT-ONLY"
    with rate_unit_station(appliance, cp, "Current") as station:
        write(appliance, (f"{cp}.control.chargeLimitType", "W"))
        assert wait_done(appliance, f"{cp}.control.chargeLimitType") == ("W", 1)
        write(appliance, (f"{cp}.control.chargeLimit", 11040))
        assert wait_done(appliance, f"{cp}.control.chargeLimit") == (11040, 1)
        assert schedule_sent(station) == ("A", 16, 3)
        limit_in_force(appliance, cp, 11040)
        assert re.search(r"\b16(\.0+)? A\b", note(appliance, f"{cp}.control.chargeLimit"))


def rate_unit_report(station: Station, request_id: int, unit: str) -> None:
    notify_variable(
        station, request_id, "SmartChargingCtrlr", "RateUnit", unit, "ReadOnly",
        data_type="MemberList", values_list="A,W",
    )  # fmt: skip


def test_2x_amps_go_out_as_watts_when_the_rate_unit_is_w(start_appliance):
    """SmartChargingCtrlr.RateUnit = W: a 16 A limit is sent as 11040 W; RateUnit "A,W":
    as 16 A (point 7)."""
    appliance = start_appliance(FETCH)
    for cp, unit, sent in (("RATE-W", "W", ("W", 11040, 3)), ("RATE-AW", "A,W", ("A", 16, 3))):
        with Station(appliance, cp, V201).open() as station:
            booted(station)
            action, payload = station.take_one()
            assert action == "GetBaseReport"
            rate_unit_report(station, payload["requestId"], unit)
            appliance.wait_rows(
                "SELECT 1 FROM states WHERE id = ?",
                f"{cp}.dm.SmartChargingCtrlr.RateUnit.Actual.value",
            )
            write(appliance, (f"{cp}.control.chargeLimit", 16))
            assert wait_done(appliance, f"{cp}.control.chargeLimit") == (16, 1)
            assert schedule_sent(station) == sent, cp
            limit_in_force(appliance, cp, 16)
            if unit == "W":
                assert "11040 W" in note(appliance, f"{cp}.control.chargeLimit")


def test_charge_point_status_has_the_limit_unit(start_appliance):
    """`charge_point_status.charge_limit_unit` is `chargeLimitType`: A by default, W
    once written (point 7)."""
    appliance = start_appliance()
    cp = "LIMIT-UNIT"
    with booted(Station(appliance, cp, V201).open()) as station:
        wait_status(appliance, cp, timeout=3, charge_limit_unit="A")
        write(appliance, (f"{cp}.control.chargeLimitType", "W"))
        assert wait_done(appliance, f"{cp}.control.chargeLimitType") == ("W", 1)
        wait_status(appliance, cp, timeout=3, charge_limit_unit="W")
        station.assert_quiet(0.3)
