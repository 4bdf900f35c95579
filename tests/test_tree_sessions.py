"""The object tree as a user reads it: whole charging sessions from a third-party charge
point (the `ocpp` package) for 1.6, 2.0.1 and 2.1, then the messy reality of real
chargers (late, repeated and out-of-order events, clockless chargers, registers that
restart at 0, VIN look-alikes) through a raw WebSocket. Everything is read back through
a second SQLite connection, by the ids the README documents.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import pytest
import websockets
from websockets.sync.client import connect

from conftest import start_appliance_process, wait_for

NO_FETCH = "[device_model]\nfetch_on_boot = false\n"
MISSING = object()


def stamp(offset_sec: float = 0) -> str:
    """A charge point's timestamp near the real clock: ISO 8601 UTC with milliseconds."""
    when = datetime.now(UTC) + timedelta(seconds=offset_sec)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


# ----------------------------------------------------------------- reading the tree


def state(appliance: Any, state_id: str) -> Any:
    """`val` of one state, MISSING if there is no such row."""
    rows = appliance.query("SELECT val FROM states WHERE id = ?", state_id)
    return rows[0][0] if rows else MISSING


def wait_state(appliance: Any, state_id: str, expected: Any, timeout: float = 10) -> None:
    try:
        wait_for(lambda: state(appliance, state_id) == expected, timeout, f"{state_id}")
    except AssertionError:
        got = state(appliance, state_id)
        raise AssertionError(f"{state_id} is {got!r}, not {expected!r}") from None


def tree(appliance: Any, prefix: str) -> dict[str, Any]:
    """Every state of one charge point except the raw capture, by id without the prefix."""
    rows = appliance.query(
        "SELECT id, val FROM states WHERE id GLOB ? AND id NOT GLOB ?",
        f"{prefix}.*",
        f"{prefix}.ocpp.*",
    )
    return {i.removeprefix(f"{prefix}."): v for i, v in rows}


def described(appliance: Any, state_id: str) -> tuple | None:
    rows = appliance.query("SELECT type, unit, writable FROM objects WHERE id = ?", state_id)
    return rows[0] if rows else None


def disconnected(appliance: Any, prefix: str) -> None:
    """The disconnect is written after everything the charge point sent: once it shows,
    the whole session is committed."""
    wait_state(appliance, f"{prefix}.info.connected", 0)


TRANSACTION_COLUMNS = (
    "transaction_id, evse_id, connector_id, id_token, started_at, stopped_at,"
    " meter_start_wh, meter_stop_wh, energy_wh, stop_reason, time_suspect, seq_no, offline"
)
METER_COLUMNS = (
    "evse_id, connector_id, transaction_id, measurand, phase, location, context, unit, value,"
    " time_suspect"
)


def transactions(appliance: Any, identity: str) -> list[tuple]:
    return appliance.query(
        f"SELECT {TRANSACTION_COLUMNS} FROM transactions WHERE identity = ? ORDER BY seq",
        identity,
    )


def session_rows(appliance: Any, identity: str) -> list[dict[str, Any]]:
    """The `transactions` rows of one charge point, as column → value."""
    names = [c.strip() for c in TRANSACTION_COLUMNS.split(",")]
    return [dict(zip(names, row, strict=True)) for row in transactions(appliance, identity)]


def meter_rows(appliance: Any, identity: str) -> list[tuple]:
    return appliance.query(
        f"SELECT {METER_COLUMNS} FROM meter_values WHERE identity = ? ORDER BY seq", identity
    )


def status_row(appliance: Any, identity: str) -> dict[str, Any]:
    rows = appliance.query("SELECT * FROM charge_point_status WHERE identity = ?", identity)
    assert len(rows) == 1, rows
    names = [
        r[1] for r in appliance.query("SELECT * FROM pragma_table_info('charge_point_status')")
    ]
    return dict(zip(names, rows[0], strict=True))


# ------------------------------------------------------------------- charge points


async def ocpp_session(url: str, identity: str, version: str, cls: Any, scenario: Any) -> Any:
    """`scenario(cp)` with `cls`, a ChargePoint of the `ocpp` package, connected as
    `identity`; the connection is closed when it returns."""
    async with websockets.connect(
        f"{url}/{quote(identity, safe='')}", subprotocols=[version]
    ) as ws:
        assert ws.subprotocol == version
        cp = cls(identity, ws, response_timeout=10)
        reader = asyncio.create_task(cp.start())
        try:
            return await scenario(cp)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, websockets.ConnectionClosed):
                await reader


class Station:
    """A raw charge point: sends exactly the JSON it is given."""

    def __init__(self, url: str, identity: str, version: str = "ocpp1.6") -> None:
        self.identity = identity
        self._stack = contextlib.ExitStack()
        self.ws = self._stack.enter_context(
            connect(f"{url}/ocpp/{quote(identity, safe='')}", subprotocols=[version])
        )
        assert self.ws.subprotocol == version
        self._ids = itertools.count(1)

    def call(self, action: str, payload: dict[str, Any]) -> list:
        """Send a CALL, return the appliance's answer frame (CALLRESULT or CALLERROR)."""
        message_id = f"m{next(self._ids)}"
        self.ws.send(json.dumps([2, message_id, action, payload]))
        while True:
            frame = json.loads(self.ws.recv(timeout=10))
            if frame[0] == 2:  # a CALL of the appliance's: not what these tests are about
                self.ws.send(json.dumps([4, frame[1], "NotImplemented", "", {}]))
            elif frame[1] == message_id:
                return frame

    def ok(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        frame = self.call(action, payload)
        assert frame[0] == 3, frame
        return frame[2]

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> Station:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def settle(appliance: Any, cp: Station) -> None:
    """Everything the charge point sent so far is in the database: its next frame is."""
    message_id = cp.call("Heartbeat", {})[1]
    appliance.wait_rows(
        "SELECT 1 FROM messages WHERE identity = ? AND message_id = ? AND direction = 'in'",
        cp.identity,
        message_id,
    )


def boot16(cp: Station, serial: str = "SN-1") -> None:
    cp.ok(
        "BootNotification",
        {"chargePointVendor": "Raw", "chargePointModel": "R1", "chargePointSerialNumber": serial},
    )


def boot2x(cp: Station) -> None:
    cp.ok(
        "BootNotification",
        {"chargingStation": {"model": "R2", "vendorName": "Raw"}, "reason": "PowerUp"},
    )


def sv16(value: str, measurand: str, unit: str, **extra: str) -> dict[str, str]:
    return {"value": value, "measurand": measurand, "unit": unit, **extra}


def sv2x(value: float, measurand: str, unit: str, multiplier: int = 0, **extra: Any) -> dict:
    uom: dict[str, Any] = {"unit": unit}
    if multiplier:
        uom["multiplier"] = multiplier
    return {"value": value, "measurand": measurand, "unitOfMeasure": uom, **extra}


# =================================================== whole sessions, `ocpp` package

VIN_EU = "WVWZZZE1ZMP012345"
VIN_US = "1M8GDM9AXKP042788"  # check digit X is right


def test_session_16_with_the_ocpp_package(start_appliance):
    from ocpp.v16 import ChargePoint, call

    appliance = start_appliance(NO_FETCH)
    identity = "GARAGE"
    t_start, t_m1, t_m2, t_stop = stamp(-300), stamp(-200), stamp(-100), stamp(-10)
    seen: dict[str, Any] = {}

    def sampled(at: str, values: list[dict]) -> list[dict]:
        return [{"timestamp": at, "sampled_value": values}]

    def periodic(value: str, measurand: str, unit: str, **extra: str) -> dict:
        return {
            "value": value,
            "measurand": measurand,
            "unit": unit,
            "context": "Sample.Periodic",
            **extra,
        }

    async def scenario(cp):
        boot = await cp.call(
            call.BootNotification(
                charge_point_vendor="Wallbe",
                charge_point_model="Eco 2.0",
                charge_point_serial_number="WB-16-0001",
                charge_box_serial_number="CB-0001",
                firmware_version="1.6.42",
                iccid="89490200001234567890",
                imsi="262011234567890",
                meter_type="EEM-350-D-MCB",
                meter_serial_number="M-0042",
            ),
            suppress=False,
        )
        assert boot.status == "Accepted"
        wait_state(appliance, f"{identity}.info.connected", 1)
        for connector, status in ((0, "Available"), (1, "Available"), (1, "Preparing")):
            await cp.call(
                call.StatusNotification(
                    connector_id=connector, error_code="NoError", status=status
                ),
                suppress=False,
            )
        await cp.call(call.Authorize(id_tag="04A2B3C4"), suppress=False)
        start = await cp.call(
            call.StartTransaction(
                connector_id=1, id_tag="04A2B3C4", meter_start=12000, timestamp=t_start
            ),
            suppress=False,
        )
        tid = start.transaction_id
        seen["tid"] = tid
        await cp.call(
            call.StatusNotification(connector_id=1, error_code="NoError", status="Charging"),
            suppress=False,
        )
        await cp.call(
            call.MeterValues(
                connector_id=1,
                transaction_id=tid,
                meter_value=sampled(
                    t_m1,
                    [
                        periodic("12500", "Energy.Active.Import.Register", "Wh"),
                        periodic("7200", "Power.Active.Import", "W"),
                        periodic("10.1", "Current.Import", "A", phase="L1"),
                        periodic("10.2", "Current.Import", "A", phase="L2"),
                        periodic("10.3", "Current.Import", "A", phase="L3"),
                        periodic("230.5", "Voltage", "V", phase="L1-N"),
                        periodic("42", "SoC", "Percent", location="EV"),
                    ],
                ),
            ),
            suppress=False,
        )
        await cp.call(
            call.MeterValues(
                connector_id=1,
                transaction_id=tid,
                meter_value=sampled(
                    t_m2,
                    [
                        periodic("13.2", "Energy.Active.Import.Register", "kWh"),
                        periodic("11.04", "Power.Active.Import", "kW"),
                        periodic("16", "Current.Import", "A", phase="L1"),
                        periodic("16.1", "Current.Import", "A", phase="L2"),
                        periodic("15.9", "Current.Import", "A", phase="L3"),
                        periodic("231", "Voltage", "V", phase="L1-N"),
                        periodic("45", "SoC", "Percent", location="EV"),
                    ],
                ),
            ),
            suppress=False,
        )
        # while it charges: the live session energy and the view
        wait_state(appliance, f"{identity}.transactions.last.energyWh", 1200)
        seen["charging"] = status_row(appliance, identity)
        answer = await cp.call(
            call.DataTransfer(
                vendor_id="com.example.ev",
                message_id="VehicleInfo",
                data=json.dumps({"vin": VIN_EU, "soc": 45}),
            ),
            suppress=False,
        )
        assert answer.status == "Accepted"
        await cp.call(
            call.StopTransaction(
                meter_stop=14000,
                timestamp=t_stop,
                transaction_id=tid,
                reason="EVDisconnected",
                id_tag="04A2B3C4",
            ),
            suppress=False,
        )
        for status in ("Finishing", "Available"):
            await cp.call(
                call.StatusNotification(connector_id=1, error_code="NoError", status=status),
                suppress=False,
            )
        wait_state(appliance, f"{identity}.info.state", "available")
        seen["ended"] = status_row(appliance, identity)

    asyncio.run(ocpp_session(appliance.url, identity, "ocpp1.6", ChargePoint, scenario))
    disconnected(appliance, identity)
    tid = str(seen["tid"])
    got = tree(appliance, identity)

    assert {k: got.get(k, MISSING) for k in INFO_16} == INFO_16
    assert got["info.protocol"] == "ocpp1.6"
    assert got["info.remoteAddress"].startswith("127.0.0.1")
    assert got["info.vin"] == VIN_EU
    assert isinstance(got["info.lastSeen"], int)
    assert got["info.status"] == "Available"  # connector 0: the station
    assert got["evse.1.connector.1.status"] == "Available"
    assert got["evse.1.connector.1.errorCode"] == "NoError"
    assert "evse.0.connector.1.status" not in got

    # kW → W, kWh → Wh; the latest sample wins, and StopTransaction's meterStop is the
    # newest register (issue 25). Disconnected now: power and current are not known
    # (NULL, README "Readings"); registers and the rest keep their value
    expect_meter = {
        "powerW": None,
        "energyWh": 14000,
        "energyKWh": 14.0,
        "soc": 45,
        "currentL1": None,
        "currentL2": None,
        "currentL3": None,
        "voltageL1": 231,
    }
    for name, value in expect_meter.items():
        assert got[f"meterValues.{name}"] == pytest.approx(value), name
        if name != "energyKWh":  # a derived aggregate, only under meterValues
            assert got[f"evse.1.connector.1.{name}"] == pytest.approx(value), name
    units = {
        "powerW": "W",
        "energyWh": "Wh",
        "energyKWh": "kWh",
        "soc": "Percent",
        "currentL1": "A",
        "voltageL1": "V",
    }
    for name, unit in units.items():
        assert described(appliance, f"{identity}.meterValues.{name}") == ("number", unit, 0)
    assert described(appliance, f"{identity}.info.connected") == ("boolean", None, 0)
    assert described(appliance, f"{identity}.info.vendor")[0] == "string"

    assert session_rows(appliance, identity) == [
        {
            "transaction_id": tid,
            "evse_id": 1,
            "connector_id": 1,
            "id_token": "04A2B3C4",
            "started_at": t_start,
            "stopped_at": t_stop,
            "meter_start_wh": 12000.0,
            "meter_stop_wh": 14000.0,
            "energy_wh": 2000.0,
            "stop_reason": "EVDisconnected",
            "time_suspect": 0,
            "seq_no": None,
            "offline": 0,
        }
    ]
    assert {k: v for k, v in got.items() if k.startswith("transactions.last.")} == {
        "transactions.last.id": tid,
        "transactions.last.idToken": "04A2B3C4",
        "transactions.last.evseId": 1,
        "transactions.last.startedAt": t_start,
        "transactions.last.stoppedAt": t_stop,
        "transactions.last.meterStartWh": 12000,
        "transactions.last.energyWh": 2000,
        "transactions.last.energyKWh": 2.0,
        "transactions.last.stopReason": "EVDisconnected",
    }
    assert got["transactions.active"] == 0
    assert json.loads(got["transactions.lastEvent"])["meterStop"] == 14000

    rows = meter_rows(appliance, identity)
    assert len(rows) == 14
    periodic_row = (1, 1, tid)
    assert rows[0] == (
        *periodic_row,
        "Energy.Active.Import.Register",
        None,
        None,
        "Sample.Periodic",
        "Wh",
        12500.0,
        0,
    )
    assert rows[7][:8] == (
        *periodic_row,
        "Energy.Active.Import.Register",
        None,
        None,
        "Sample.Periodic",
        "Wh",
    )
    assert rows[7][8] == pytest.approx(13200)
    assert rows[8][3:8] == ("Power.Active.Import", None, None, "Sample.Periodic", "W")
    assert rows[8][8] == pytest.approx(11040)
    assert [(r[3], r[4], r[7], r[8]) for r in rows[9:14]] == [
        ("Current.Import", "L1", "A", 16.0),
        ("Current.Import", "L2", "A", 16.1),
        ("Current.Import", "L3", "A", 15.9),
        ("Voltage", "L1-N", "V", 231.0),
        ("SoC", None, "Percent", 45.0),
    ]
    assert rows[13][5] == "EV"

    charging = seen["charging"]
    assert charging["connected"] == 1
    assert charging["status"] == "Charging"
    assert charging["state"] == "charging"
    assert charging["power_w"] == pytest.approx(11040)
    ended = seen["ended"]  # the session ended, the car unplugged, still connected
    assert (ended["state"], ended["power_w"], ended["current_l1"]) == ("available", 0, 0)
    assert ended["energy_wh"] == pytest.approx(14000)  # meterStop: the newest register
    assert charging["tx_active"] == 1
    assert charging["rfid"] == "04A2B3C4"
    assert charging["tx_energy_kwh"] == pytest.approx(1.2)
    row = status_row(appliance, identity)
    assert row["connected"] == 0
    assert row["status"] == "Available"
    assert row["protocol"] == "ocpp1.6"
    assert row["tx_active"] == 0
    assert row["tx_energy_kwh"] == pytest.approx(2.0)
    assert row["state"] == "offline"
    assert (row["power_w"], row["energy_wh"], row["energy_kwh"], row["soc"]) == (
        None,
        pytest.approx(14000),
        pytest.approx(14.0),
        45,
    )
    assert (row["voltage_l1"], row["current_l1"], row["current_l2"], row["current_l3"]) == (
        pytest.approx(231),
        None,
        None,
        None,
    )
    assert row["last_seen"] == got["info.lastSeen"]
    assert appliance.stop() == 0


INFO_16 = {
    "info.vendor": "Wallbe",
    "info.model": "Eco 2.0",
    "info.serialNumber": "WB-16-0001",
    "info.chargeBoxSerialNumber": "CB-0001",
    "info.firmwareVersion": "1.6.42",
    "info.iccid": "89490200001234567890",
    "info.imsi": "262011234567890",
    "info.meterType": "EEM-350-D-MCB",
    "info.meterSerialNumber": "M-0042",
    "info.connected": 0,
}


def report_part(seq_no: int, tbc: bool, report_data: list[dict]) -> dict[str, Any]:
    return {
        "request_id": 7,
        "generated_at": stamp(),
        "seq_no": seq_no,
        "tbc": tbc,
        "report_data": report_data,
    }


REPORT_1 = [
    {
        "component": {"name": "EVSE", "evse": {"id": 1}},
        "variable": {"name": "Power"},
        "variable_attribute": [
            {"type": "MaxSet", "value": "22000", "mutability": "ReadWrite"},
            {"type": "Actual", "value": "0", "mutability": "ReadOnly"},
        ],
        "variable_characteristics": {
            "unit": "W",
            "data_type": "decimal",
            "supports_monitoring": True,
        },
    },
    {
        "component": {"name": "OCPPCommCtrlr"},
        "variable": {"name": "MessageTimeout", "instance": "Default"},
        "variable_attribute": [{"value": "30", "mutability": "ReadWrite"}],
        "variable_characteristics": {
            "unit": "s",
            "data_type": "integer",
            "supports_monitoring": False,
        },
    },
]
REPORT_2 = [
    {
        "component": {"name": "Connector", "evse": {"id": 1, "connector_id": 1}},
        "variable": {"name": "AvailabilityState"},
        "variable_attribute": [{"type": "Actual", "value": "Occupied", "mutability": "ReadOnly"}],
        "variable_characteristics": {
            "data_type": "OptionList",
            "values_list": "Available,Occupied,Reserved,Unavailable,Faulted",
            "supports_monitoring": True,
        },
    },
    {
        "component": {"name": "AuthCtrlr"},
        "variable": {"name": "Enabled"},
        "variable_attribute": [{"type": "Actual", "value": "true"}],
        "variable_characteristics": {"data_type": "boolean", "supports_monitoring": False},
    },
]
#: id under `<identity>.` → (value, type, unit, writable), exactly as the README spells them
DEVICE_MODEL = {
    "dm.EVSE@1.Power.MaxSet.value": (22000, "number", "W", 1),
    "dm.EVSE@1.Power.Actual.value": (0, "number", "W", 0),
    "dm.OCPPCommCtrlr.MessageTimeout#Default.Actual.value": (30, "number", "s", 1),
    "dm.Connector@1-1.AvailabilityState.Actual.value": ("Occupied", "string", None, 0),
    "dm.AuthCtrlr.Enabled.Actual.value": (1, "boolean", None, 1),
}


@pytest.mark.parametrize("version", ["ocpp2.0.1", "ocpp2.1"])
def test_session_2x_with_the_ocpp_package(start_appliance, version):
    import importlib

    module = importlib.import_module({"ocpp2.0.1": "ocpp.v201", "ocpp2.1": "ocpp.v21"}[version])
    call = module.call
    appliance = start_appliance(NO_FETCH)
    identity = f"WB-{version[4:].replace('.', '')}"
    tid = f"TX-{identity}-1"
    token = {"id_token": "04A2B3C4", "type": "ISO14443"}
    t = {
        name: stamp(offset)
        for name, offset in (("start", -300), ("tx_mv", -200), ("mv", -100), ("stop", -10))
    }

    def periodic(value: float, measurand: str, unit: str, multiplier: int = 0, **extra: Any):
        uom: dict[str, Any] = {"unit": unit}
        if multiplier:
            uom["multiplier"] = multiplier
        return {
            "value": value,
            "measurand": measurand,
            "unit_of_measure": uom,
            "context": "Sample.Periodic",
            **extra,
        }

    async def scenario(cp):
        boot = await cp.call(
            call.BootNotification(
                charging_station={
                    "model": "Pulsar Plus",
                    "vendor_name": "Wallbox",
                    "serial_number": "PP-2X-0001",
                    "firmware_version": "6.1.7",
                    "modem": {"iccid": "89490200001234567891", "imsi": "262011234567891"},
                },
                reason="PowerUp",
            ),
            suppress=False,
        )
        assert boot.status == "Accepted"

        async def status(value: str) -> None:
            await cp.call(
                call.StatusNotification(
                    timestamp=stamp(), connector_status=value, evse_id=1, connector_id=1
                ),
                suppress=False,
            )

        await status("Available")
        await cp.call(call.NotifyReport(**report_part(0, True, REPORT_1)), suppress=False)
        await cp.call(call.NotifyReport(**report_part(1, False, REPORT_2)), suppress=False)
        await cp.call(call.Authorize(id_token=token), suppress=False)
        await status("Occupied")

        async def event(kind: str, seq_no: int, trigger: str, info: dict, **extra: Any):
            return await cp.call(
                call.TransactionEvent(
                    event_type=kind,
                    timestamp=extra.pop("timestamp"),
                    trigger_reason=trigger,
                    seq_no=seq_no,
                    transaction_info={"transaction_id": tid, **info},
                    **extra,
                ),
                suppress=False,
            )

        started = await event(
            "Started",
            0,
            "Authorized",
            {"charging_state": "EVConnected"},
            timestamp=t["start"],
            evse={"id": 1, "connector_id": 1},
            id_token=token,
            meter_value=[
                {
                    "timestamp": t["start"],
                    "sampled_value": [
                        {
                            "value": 10000,
                            "measurand": "Energy.Active.Import.Register",
                            "context": "Transaction.Begin",
                            "unit_of_measure": {"unit": "Wh"},
                        }
                    ],
                }
            ],
        )
        assert started.id_token_info["status"] == "Accepted"
        await event(
            "Updated",
            1,
            "MeterValuePeriodic",
            {"charging_state": "Charging"},
            timestamp=t["tx_mv"],
            meter_value=[
                {
                    "timestamp": t["tx_mv"],
                    "sampled_value": [
                        periodic(10.5, "Energy.Active.Import.Register", "kWh"),
                        periodic(7.2, "Power.Active.Import", "W", 3),
                        periodic(10.1, "Current.Import", "A", phase="L1"),
                        periodic(10.2, "Current.Import", "A", phase="L2"),
                        periodic(10.3, "Current.Import", "A", phase="L3"),
                        periodic(230.5, "Voltage", "V", phase="L1-N"),
                        periodic(42, "SoC", "Percent", location="EV"),
                    ],
                }
            ],
        )
        wait_state(appliance, f"{identity}.transactions.last.energyWh", 500)
        assert state(appliance, f"{identity}.transactions.active") == 1
        await cp.call(
            call.MeterValues(
                evse_id=1,
                meter_value=[
                    {
                        "timestamp": t["mv"],
                        "sampled_value": [
                            periodic(11, "Energy.Active.Import.Register", "Wh", 3),
                            periodic(11.04, "Power.Active.Import", "kW"),
                            periodic(16, "Current.Import", "A", phase="L1"),
                            periodic(16.1, "Current.Import", "A", phase="L2"),
                            periodic(15.9, "Current.Import", "A", phase="L3"),
                            periodic(231, "Voltage", "V", phase="L1-N"),
                            periodic(45, "SoC", "Percent", location="EV"),
                        ],
                    }
                ],
            ),
            suppress=False,
        )
        await cp.call(
            call.DataTransfer(
                vendor_id="com.example.ev",
                message_id="VehicleInfo",
                data=json.dumps({"vin": VIN_US}),
            ),
            suppress=False,
        )
        await event(
            "Ended",
            2,
            "EVCommunicationLost",
            {"charging_state": "Idle", "stopped_reason": "EVDisconnected"},
            timestamp=t["stop"],
            meter_value=[
                {
                    "timestamp": t["stop"],
                    "sampled_value": [
                        {
                            "value": 12.0,
                            "measurand": "Energy.Active.Import.Register",
                            "context": "Transaction.End",
                            "unit_of_measure": {"unit": "kWh"},
                        }
                    ],
                }
            ],
        )
        await status("Available")

    asyncio.run(ocpp_session(appliance.url, identity, version, module.ChargePoint, scenario))
    disconnected(appliance, identity)
    got = tree(appliance, identity)

    assert {k: got.get(k, MISSING) for k in INFO_2X} == INFO_2X
    assert got["info.protocol"] == version
    assert got["info.vin"] == VIN_US
    assert got["evse.1.connector.1.status"] == "Available"

    # the MeterValues named only EVSE 1: its readings are at evse.1, the transaction's
    # at evse.1.connector.1; the aggregate has the latest of either
    # (disconnected now: power and current NULL, registers kept; README "Readings")
    expect_meter = {
        "powerW": None,
        "energyWh": 12000,  # the Transaction.End register, sampled last
        "energyKWh": 12.0,
        "soc": 45,
        "currentL1": None,
        "currentL2": None,
        "currentL3": None,
        "voltageL1": 231,
    }
    for name, value in expect_meter.items():
        assert got[f"meterValues.{name}"] == pytest.approx(value), name
    assert got["evse.1.powerW"] is None
    assert got["evse.1.energyWh"] == pytest.approx(11000)
    assert got["evse.1.connector.1.powerW"] is None
    assert got["evse.1.connector.1.currentL3"] is None
    assert got["evse.1.connector.1.energyWh"] == pytest.approx(12000)
    assert described(appliance, f"{identity}.meterValues.powerW") == ("number", "W", 0)
    assert described(appliance, f"{identity}.meterValues.energyKWh") == ("number", "kWh", 0)

    for sid, (value, kind, unit, writable) in DEVICE_MODEL.items():
        assert got.get(sid, MISSING) == value, sid
        assert described(appliance, f"{identity}.{sid}") == (kind, unit, writable), sid
    assert sorted(k for k in got if k.startswith("dm.")) == sorted(DEVICE_MODEL)

    assert session_rows(appliance, identity) == [
        {
            "transaction_id": tid,
            "evse_id": 1,
            "connector_id": 1,
            "id_token": "04A2B3C4",
            "started_at": t["start"],
            "stopped_at": t["stop"],
            "meter_start_wh": 10000.0,
            "meter_stop_wh": 12000.0,
            "energy_wh": 2000.0,
            "stop_reason": "EVDisconnected",
            "time_suspect": 0,
            "seq_no": 2,
            "offline": 0,
        }
    ]
    assert {k: v for k, v in got.items() if k.startswith("transactions.")} == {
        "transactions.active": 0,
        "transactions.lastEvent": got["transactions.lastEvent"],
        "transactions.last.id": tid,
        "transactions.last.idToken": "04A2B3C4",
        "transactions.last.evseId": 1,
        "transactions.last.startedAt": t["start"],
        "transactions.last.stoppedAt": t["stop"],
        "transactions.last.meterStartWh": 10000,
        "transactions.last.energyWh": 2000,
        "transactions.last.energyKWh": 2.0,
        "transactions.last.stopReason": "EVDisconnected",
    }
    assert json.loads(got["transactions.lastEvent"])["eventType"] == "Ended"

    rows = meter_rows(appliance, identity)
    assert len(rows) == 1 + 7 + 7 + 1
    assert rows[0] == (
        1,
        1,
        tid,
        "Energy.Active.Import.Register",
        None,
        None,
        "Transaction.Begin",
        "Wh",
        10000.0,
        0,
    )
    # the Updated event named no EVSE: its session's is known from the Started one
    assert rows[1][:3] == (1, 1, tid) and rows[1][7] == "Wh"
    assert rows[1][8] == pytest.approx(10500)
    assert rows[2][3] == "Power.Active.Import" and rows[2][7:9] == ("W", pytest.approx(7200))
    assert [(r[4], r[7]) for r in rows[3:7]] == [
        ("L1", "A"),
        ("L2", "A"),
        ("L3", "A"),
        ("L1-N", "V"),
    ]
    # the MeterValues: EVSE 1, no connector, no transaction
    assert {r[:3] for r in rows[8:15]} == {(1, None, None)}
    assert rows[8][7:9] == ("Wh", pytest.approx(11000))
    assert rows[9][7:9] == ("W", pytest.approx(11040))
    assert rows[15][6:9] == ("Transaction.End", "Wh", pytest.approx(12000))

    row = status_row(appliance, identity)
    assert row["connected"] == 0
    assert row["status"] == "Available"
    assert row["protocol"] == version
    assert row["rfid"] == "04A2B3C4"
    assert row["tx_active"] == 0
    assert row["tx_energy_kwh"] == pytest.approx(2.0)
    assert row["state"] == "offline"
    assert (row["power_w"], row["energy_wh"], row["energy_kwh"], row["soc"]) == (
        None,
        pytest.approx(12000),
        pytest.approx(12.0),
        45,
    )
    assert appliance.stop() == 0


INFO_2X = {
    "info.vendor": "Wallbox",
    "info.model": "Pulsar Plus",
    "info.serialNumber": "PP-2X-0001",
    "info.firmwareVersion": "6.1.7",
    "info.iccid": "89490200001234567891",
    "info.imsi": "262011234567891",
    "info.bootReason": "PowerUp",
    "info.connected": 0,
}


# ========================================================== messy reality, raw frames


@pytest.fixture(scope="module")
def appliance(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One appliance for all the raw-frame tests of this module (the whole-session tests
    above start their own): each test uses identities of its own."""
    appliance = start_appliance_process(tmp_path_factory.mktemp("shared"), NO_FETCH)
    yield appliance
    if appliance.proc.poll() is None:
        appliance.proc.kill()
        appliance.proc.wait()


def tx_event(
    kind: str,
    seq_no: int,
    when: str,
    tid: str,
    readings: list[dict] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "eventType": kind,
        "timestamp": when,
        "triggerReason": {"Started": "Authorized", "Updated": "MeterValuePeriodic"}.get(
            kind, "StopAuthorized"
        ),
        "seqNo": seq_no,
        "transactionInfo": {"transactionId": tid},
        **extra,
    }
    if readings:
        payload["meterValue"] = [{"timestamp": when, "sampledValue": readings}]
    return payload


def offline_session(tid: str, t0: str, t1: str, t2: str) -> dict[str, dict[str, Any]]:
    """A session a charger queued while offline: Started at 5 kWh, Updated at 9 kWh,
    Ended at 15 kWh."""
    token = {"idToken": "CAFE0001", "type": "ISO14443"}
    return {
        "Started": tx_event(
            "Started",
            0,
            t0,
            tid,
            [sv2x(5000, "Energy.Active.Import.Register", "Wh", context="Transaction.Begin")],
            evse={"id": 1, "connectorId": 1},
            idToken=token,
            offline=True,
        ),
        "Updated": tx_event(
            "Updated",
            1,
            t1,
            tid,
            [sv2x(9, "Energy.Active.Import.Register", "kWh", context="Sample.Periodic")],
            offline=True,
        ),
        "Ended": tx_event(
            "Ended",
            2,
            t2,
            tid,
            [sv2x(15, "Energy.Active.Import.Register", "kWh", context="Transaction.End")],
            offline=True,
            transactionInfo={"transactionId": tid, "stoppedReason": "Local"},
        ),
    }


def wait_last_event(appliance: Any, prefix: str, seq_no: int) -> None:
    """Sync point: `transactions.lastEvent` shows the event with this seqNo."""
    wait_for(
        lambda: (
            (v := state(appliance, f"{prefix}.transactions.lastEvent")) is not MISSING
            and json.loads(v).get("seqNo") == seq_no
        ),
        what=f"lastEvent seqNo {seq_no}",
    )


@pytest.mark.parametrize("version", ["ocpp2.0.1", "ocpp2.1"])
def test_late_and_repeated_events_never_reopen_a_session(appliance, version):
    identity, tid = f"LATE-{version.replace('.', '')}", "tx-late-1"
    t0, t1, t2 = stamp(-3600), stamp(-1800), stamp(-60)
    events = offline_session(tid, t0, t1, t2)
    events["Started"]["offline"] = False
    with Station(appliance.url, identity, version) as cp:
        boot2x(cp)
        assert cp.ok("TransactionEvent", events["Started"]) == {
            "idTokenInfo": {"status": "Accepted"}
        }
        wait_state(appliance, f"{identity}.transactions.active", 1)
        assert cp.ok("TransactionEvent", events["Ended"]) == {}
        wait_state(appliance, f"{identity}.transactions.active", 0)
        # the Updated the charger kept in its queue arrives after the Ended; then the
        # Ended and the Started again (a lost answer): answered again, applied once
        assert cp.ok("TransactionEvent", events["Updated"]) == {}
        wait_last_event(appliance, identity, 1)
        assert state(appliance, f"{identity}.transactions.active") == 0
        assert cp.ok("TransactionEvent", events["Ended"]) == {}
        assert cp.ok("TransactionEvent", events["Started"])["idTokenInfo"]["status"] == "Accepted"
        cp.ok("Heartbeat", {})
        appliance.wait_rows(
            "SELECT 1 FROM messages WHERE identity = ? AND action = 'Heartbeat'", identity, count=2
        )
    disconnected(appliance, identity)
    assert transactions(appliance, identity) == [
        (tid, 1, 1, "CAFE0001", t0, t2, 5000.0, 15000.0, 10000.0, "Local", 0, 2, 1)
    ]
    got = tree(appliance, identity)
    assert got["transactions.active"] == 0
    assert got["transactions.last.stoppedAt"] == t2
    assert got["transactions.last.energyWh"] == 10000
    # the late 9 kWh sample is history, not the latest reading
    assert got["meterValues.energyWh"] == 15000
    # each sample once: the repeated Ended and Started were retries (README "Sessions")
    assert [(r[2], r[6], r[8]) for r in meter_rows(appliance, identity)] == [
        (tid, "Transaction.Begin", 5000.0),
        (tid, "Transaction.End", 15000.0),
        (tid, "Sample.Periodic", 9000.0),
    ]
    assert state(appliance, f"{identity}.transactions.lastEvent") is not MISSING


@pytest.mark.parametrize("version", ["ocpp2.0.1", "ocpp2.1"])
def test_offline_queue_delivered_backwards_and_twice_gives_one_row(appliance, version):
    identity, tid = f"BACKWARDS-{version.replace('.', '')}", "tx-back-1"
    t0, t1, t2 = stamp(-3600), stamp(-1800), stamp(-60)
    events = offline_session(tid, t0, t1, t2)
    with Station(appliance.url, identity, version) as cp:
        boot2x(cp)
        for kind in ("Ended", "Updated", "Started", "Ended", "Updated", "Started"):
            cp.ok("TransactionEvent", events[kind])
            if kind == "Ended":
                wait_state(appliance, f"{identity}.transactions.active", 0)
        wait_last_event(appliance, identity, 0)
    disconnected(appliance, identity)
    assert transactions(appliance, identity) == [
        (tid, 1, 1, "CAFE0001", t0, t2, 5000.0, 15000.0, 10000.0, "Local", 0, 2, 1)
    ]
    assert state(appliance, f"{identity}.transactions.active") == 0
    assert state(appliance, f"{identity}.transactions.last.id") == tid
    assert state(appliance, f"{identity}.transactions.last.stoppedAt") == t2
    assert state(appliance, f"{identity}.meterValues.energyWh") == 15000


def test_backwards_session_fills_transactions_last(appliance):
    """Once all three events are in, `transactions.last.*` says what the row says."""
    identity, tid = "BACKWARDS-LAST", "tx-back-2"
    t0, t1, t2 = stamp(-3600), stamp(-1800), stamp(-60)
    events = offline_session(tid, t0, t1, t2)
    with Station(appliance.url, identity, "ocpp2.0.1") as cp:
        boot2x(cp)
        for kind in ("Ended", "Updated", "Started"):
            cp.ok("TransactionEvent", events[kind])
        wait_last_event(appliance, identity, 0)
    disconnected(appliance, identity)
    assert transactions(appliance, identity)[0][6:9] == (5000.0, 15000.0, 10000.0)
    got = tree(appliance, identity)
    assert {k: got.get(k, MISSING) for k in LAST_BACKWARDS} == {
        **LAST_BACKWARDS,
        "transactions.last.startedAt": t0,
        "transactions.last.stoppedAt": t2,
    }


LAST_BACKWARDS = {
    "transactions.active": 0,
    "transactions.last.id": "tx-back-2",
    "transactions.last.idToken": "CAFE0001",
    "transactions.last.evseId": 1,
    "transactions.last.startedAt": None,
    "transactions.last.stoppedAt": None,
    "transactions.last.meterStartWh": 5000,
    "transactions.last.energyWh": 10000,
    "transactions.last.energyKWh": 10.0,
    "transactions.last.stopReason": "Local",
}


def test_transaction_begin_register_beside_a_periodic_one_does_not_go_back(appliance):
    identity = "BEGIN-ZERO"
    with Station(appliance.url, identity) as cp:
        boot16(cp)
        cp.ok(
            "MeterValues",
            {
                "connectorId": 1,
                "meterValue": [
                    {
                        "timestamp": stamp(-60),
                        "sampledValue": [
                            sv16(
                                "5000",
                                "Energy.Active.Import.Register",
                                "Wh",
                                context="Sample.Periodic",
                            )
                        ],
                    }
                ],
            },
        )
        wait_state(appliance, f"{identity}.meterValues.energyWh", 5000)
        now = stamp()
        cp.ok(
            "MeterValues",
            {
                "connectorId": 1,
                "transactionId": 7,
                "meterValue": [
                    {
                        "timestamp": now,
                        "sampledValue": [
                            sv16(
                                "5.1",
                                "Energy.Active.Import.Register",
                                "kWh",
                                context="Sample.Periodic",
                            ),
                            # a charger that counts per session: its Begin register is 0
                            sv16(
                                "0",
                                "Energy.Active.Import.Register",
                                "Wh",
                                context="Transaction.Begin",
                            ),
                        ],
                    }
                ],
            },
        )
    disconnected(appliance, identity)
    assert state(appliance, f"{identity}.meterValues.energyWh") == pytest.approx(5100)
    assert state(appliance, f"{identity}.meterValues.energyKWh") == pytest.approx(5.1)
    assert state(appliance, f"{identity}.evse.1.connector.1.energyWh") == pytest.approx(5100)
    assert [(r[2], r[6], r[7], r[8]) for r in meter_rows(appliance, identity)] == [
        (None, "Sample.Periodic", "Wh", 5000.0),
        ("7", "Sample.Periodic", "Wh", pytest.approx(5100)),
        ("7", "Transaction.Begin", "Wh", 0.0),
    ]


def test_implausible_charge_point_clock_is_marked_time_suspect(appliance):
    identity = "CLOCKLESS"

    def reading(when: str, wh: str) -> dict[str, Any]:
        return {
            "connectorId": 1,
            "meterValue": [
                {
                    "timestamp": when,
                    "sampledValue": [sv16(wh, "Energy.Active.Import.Register", "Wh")],
                }
            ],
        }

    with Station(appliance.url, identity) as cp:
        boot16(cp)
        cp.ok("MeterValues", reading(stamp(), "1000"))
        cp.ok("MeterValues", reading("1970-01-01T00:00:42.000Z", "1100"))
        cp.ok("MeterValues", reading(stamp(2 * 86400), "1200"))  # two days ahead
        cp.ok("MeterValues", reading("2099-06-01T12:00:00Z", "1300"))
        cp.ok("MeterValues", reading(stamp(3600), "1400"))  # an hour ahead: a sloppy clock
        started = cp.ok(
            "StartTransaction",
            {
                "connectorId": 1,
                "idTag": "T",
                "meterStart": 1400,
                "timestamp": "1970-01-01T00:01:00Z",
            },
        )
    disconnected(appliance, identity)
    rows = appliance.query(
        "SELECT value, time_suspect FROM meter_values WHERE identity = ? ORDER BY seq", identity
    )
    assert rows == [(1000.0, 0), (1100.0, 1), (1200.0, 1), (1300.0, 1), (1400.0, 0)]
    assert appliance.query(
        "SELECT transaction_id, started_at, time_suspect FROM transactions WHERE identity = ?",
        identity,
    ) == [(str(started["transactionId"]), "1970-01-01T00:01:00Z", 1)]
    # ordered by receive time: the 1970 reading did not hide behind today's
    assert state(appliance, f"{identity}.meterValues.energyWh") == 1400


def test_a_clockless_reading_is_not_hidden_by_an_earlier_one(appliance):
    identity = "CLOCKLESS-2"
    with Station(appliance.url, identity) as cp:
        boot16(cp)
        for when, wh in ((stamp(-5), "2000"), ("1970-01-01T00:00:42Z", "2100")):
            cp.ok(
                "MeterValues",
                {
                    "connectorId": 1,
                    "meterValue": [
                        {"timestamp": when, "sampledValue": [sv16(wh, "Power.Active.Import", "W")]}
                    ],
                },
            )
        # the 1970 sample arrived last: it is the latest (not hidden by the earlier one)
        wait_state(appliance, f"{identity}.meterValues.powerW", 2100)
    disconnected(appliance, identity)
    assert state(appliance, f"{identity}.meterValues.powerW") is None  # not known now


def test_2x_readings_without_a_connector_stay_at_the_evse(appliance):
    identity = "NO-CONNECTOR"
    with Station(appliance.url, identity, "ocpp2.0.1") as cp:
        boot2x(cp)
        cp.ok(
            "MeterValues",
            {
                "evseId": 1,
                "meterValue": [
                    {
                        "timestamp": stamp(-30),
                        "sampledValue": [
                            sv2x(3.7, "Power.Active.Import", "kW"),
                            sv2x(16, "Current.Import", "A", phase="L1"),
                        ],
                    }
                ],
            },
        )
        cp.ok(
            "TransactionEvent",
            tx_event(
                "Started",
                0,
                stamp(-10),
                "tx-evse-2",
                [
                    sv2x(2000, "Energy.Active.Import.Register", "Wh", context="Transaction.Begin"),
                    sv2x(11, "Power.Active.Import", "W", 3),
                ],
                evse={"id": 2},
                idToken={"idToken": "X", "type": "Central"},
            ),
        )
        cp.ok(
            "TransactionEvent",
            tx_event(
                "Updated",
                1,
                stamp(-5),
                "tx-evse-2",
                [sv2x(2500, "Energy.Active.Import.Register", "Wh", context="Sample.Periodic")],
            ),
        )
        settle(appliance, cp)
        got = tree(appliance, identity)
    disconnected(appliance, identity)
    assert got["evse.1.powerW"] == pytest.approx(3700)
    assert got["evse.1.currentL1"] == 16
    assert got["evse.2.powerW"] == 11000
    assert got["evse.2.energyWh"] == 2500
    assert [k for k in got if ".connector." in k] == []
    assert {(r[0], r[1]) for r in meter_rows(appliance, identity)} == {(1, None), (2, None)}
    assert [r[1:3] for r in transactions(appliance, identity)] == [(2, None)]
    assert got["transactions.last.evseId"] == 2
    assert got["transactions.last.energyWh"] == 500


def test_registers_restarting_at_zero_give_each_session_its_energy(appliance):
    identity = "PER-SESSION"
    ids = []
    with Station(appliance.url, identity) as cp:
        boot16(cp)
        for n, (stop_wh, mid_wh) in enumerate(((7000, 3000), (5000, 2500))):
            start = cp.ok(
                "StartTransaction",
                {
                    "connectorId": 1,
                    "idTag": f"TAG{n}",
                    "meterStart": 0,
                    "timestamp": stamp(-600 + n * 200),
                },
            )
            tid = start["transactionId"]
            ids.append(str(tid))
            cp.ok(
                "MeterValues",
                {
                    "connectorId": 1,
                    "transactionId": tid,
                    "meterValue": [
                        {
                            "timestamp": stamp(-550 + n * 200),
                            "sampledValue": [
                                sv16(str(mid_wh), "Energy.Active.Import.Register", "Wh")
                            ],
                        }
                    ],
                },
            )
            wait_state(appliance, f"{identity}.transactions.last.energyWh", mid_wh)
            assert state(appliance, f"{identity}.meterValues.energyWh") == mid_wh
            cp.ok(
                "StopTransaction",
                {"transactionId": tid, "meterStop": stop_wh, "timestamp": stamp(-500 + n * 200)},
            )
            wait_state(appliance, f"{identity}.transactions.last.energyWh", stop_wh)
    disconnected(appliance, identity)
    assert ids[1] != ids[0]
    assert [(r[0], r[3], r[6], r[7], r[8], r[9]) for r in transactions(appliance, identity)] == [
        (ids[0], "TAG0", 0.0, 7000.0, 7000.0, "Local"),
        (ids[1], "TAG1", 0.0, 5000.0, 5000.0, "Local"),
    ]
    assert state(appliance, f"{identity}.transactions.last.id") == ids[1]
    assert state(appliance, f"{identity}.transactions.last.energyKWh") == 5.0


def test_16_stop_for_an_unknown_transaction_is_acknowledged_and_recorded(appliance):
    identity = "UNKNOWN-STOP"
    with Station(appliance.url, identity) as cp:
        boot16(cp)
        assert (
            cp.call(
                "StopTransaction",
                {"transactionId": 424242, "meterStop": 9000, "timestamp": stamp(-5), "idTag": "T"},
            )[0]
            == 3
        )
        for ago in (10, 0):  # two offline starts: never merged
            assert (
                cp.ok(
                    "StopTransaction",
                    {
                        "transactionId": -1,
                        "meterStop": 100,
                        "timestamp": stamp(-ago),
                        "reason": "PowerLoss",
                    },
                )
                == {}
            )
    disconnected(appliance, identity)
    rows = transactions(appliance, identity)
    assert [(r[0], r[5] is not None, r[6], r[7], r[8], r[9]) for r in rows] == [
        ("424242", True, None, 9000.0, None, "Local"),
        ("-1", True, None, 100.0, None, "PowerLoss"),
        ("-1", True, None, 100.0, None, "PowerLoss"),
    ]
    assert state(appliance, f"{identity}.transactions.active") == 0


#: 17-character strings a VIN search must not take
NOT_VINS = [
    "1M8GDM9AXKP042789",  # North American maker, check digit wrong (X is right)
    json.dumps({"vin": "1M8GDM9AXKP042789"}),
    json.dumps({"vin": "WVWZZZ1KZAW0O1234"}),  # O is not in the VIN alphabet
    json.dumps({"vin": "WVWZZZIKZAW001234"}),  # nor is I
    json.dumps({"vin": "WVWZZZQKZAW001234"}),  # nor Q
    json.dumps({"vin": "12345678901234567"}),  # all digits: a serial number
    json.dumps({"vin": "WVWZZZE1ZMP01234"}),  # 16 characters
]


@pytest.mark.parametrize(("n", "data"), list(enumerate(NOT_VINS)))
def test_vin_look_alikes_are_not_taken(appliance, n, data):
    identity = f"NOT-A-VIN-{n}"
    with Station(appliance.url, identity) as cp:
        boot16(cp)
        assert cp.ok("DataTransfer", {"vendorId": "com.example", "data": data}) == {
            "status": "Accepted"
        }
    disconnected(appliance, identity)
    assert state(appliance, f"{identity}.ocpp.ocpp1_6.in.DataTransfer.data.data") == data
    assert state(appliance, f"{identity}.info.vin") is MISSING


def test_vin_under_a_vin_key_wins_and_customdata_counts(appliance):
    with Station(appliance.url, "VIN-16") as cp:
        boot16(cp)
        data = {"meter": "ABCDEFGH123456789", "ev": {"evVin": VIN_EU}}
        cp.ok(
            "DataTransfer", {"vendorId": "com.example", "messageId": "ev", "data": json.dumps(data)}
        )
    with Station(appliance.url, "VIN-201", "ocpp2.0.1") as cp:
        boot2x(cp)
        cp.ok(
            "StatusNotification",
            {
                "timestamp": stamp(),
                "connectorStatus": "Occupied",
                "evseId": 1,
                "connectorId": 1,
                "customData": {"vendorId": "com.example", "vehicleVin": VIN_US},
            },
        )
    disconnected(appliance, "VIN-16")
    disconnected(appliance, "VIN-201")
    assert state(appliance, "VIN-16.info.vin") == VIN_EU
    assert state(appliance, "VIN-201.info.vin") == VIN_US


def test_nearly_compliant_message_in_lenient_mode_sets_last_violation(appliance):
    identity = "SLOPPY"
    serial = "S" * 26  # one character more than the 1.6 schema allows
    with Station(appliance.url, identity) as cp:
        answer = cp.ok(
            "BootNotification",
            {
                "chargePointVendor": "Sloppy",
                "chargePointModel": "M",
                "chargePointSerialNumber": serial,
            },
        )
        assert answer["status"] == "Accepted"
        cp.ok(
            "StatusNotification",
            {"connectorId": "1", "errorCode": "NoError", "status": "Available"},
        )
    disconnected(appliance, identity)
    got = tree(appliance, identity)
    assert got["info.serialNumber"] == serial
    assert got["evse.1.connector.1.status"] == "Available"  # "1" taken as 1
    last = got["info.lastViolation"]
    assert last.startswith("StatusNotification: TypeConstraintViolation: connectorId"), last
    violations = appliance.query(
        "SELECT action, violation FROM messages WHERE identity = ? AND violation IS NOT NULL"
        " ORDER BY seq",
        identity,
    )
    assert [a for a, _ in violations] == ["BootNotification", "StatusNotification"]
    assert violations[0][1].startswith("PropertyConstraintViolation: chargePointSerialNumber")
    assert last == f"StatusNotification: {violations[1][1]}"


def test_updated_before_started_still_gives_live_session_energy(appliance):
    """The offline queue delivers an Updated before its Started (no Ended yet): once the
    Started is in, the session's start register is known and the energy follows."""
    identity, tid = "UPDATED-FIRST", "tx-uf-1"
    events = offline_session(tid, stamp(-600), stamp(-300), stamp(-10))
    with Station(appliance.url, identity, "ocpp2.0.1") as cp:
        boot2x(cp)
        cp.ok("TransactionEvent", events["Updated"])
        cp.ok("TransactionEvent", events["Started"])
        wait_last_event(appliance, identity, 0)
        later = tx_event(
            "Updated",
            3,
            stamp(-5),
            tid,
            [sv2x(9.5, "Energy.Active.Import.Register", "kWh", context="Sample.Periodic")],
        )
        cp.ok("TransactionEvent", later)
        wait_last_event(appliance, identity, 3)
    disconnected(appliance, identity)
    assert transactions(appliance, identity)[0][6] == 5000.0
    got = tree(appliance, identity)
    assert {k: got.get(k, MISSING) for k in UPDATED_FIRST} == UPDATED_FIRST


UPDATED_FIRST = {
    "transactions.active": 1,
    "transactions.last.id": "tx-uf-1",
    "transactions.last.meterStartWh": 5000,
    "transactions.last.energyWh": 4500,
    "transactions.last.energyKWh": 4.5,
}


def late_reading_16(when: str, wh: str) -> dict[str, Any]:
    return {
        "connectorId": 1,
        "meterValue": [
            {"timestamp": when, "sampledValue": [sv16(wh, "Energy.Active.Import.Register", "Wh")]}
        ],
    }


def test_a_late_reading_does_not_replace_the_latest_of_its_connector(appliance):
    """A queued reading delivered after a newer one is history: neither
    `meterValues.*` nor the connector's latest readings go back to it."""
    identity = "LATE-READING"
    with Station(appliance.url, identity) as cp:
        boot16(cp)
        cp.ok("MeterValues", late_reading_16(stamp(-10), "15000"))
        wait_state(appliance, f"{identity}.meterValues.energyWh", 15000)
        cp.ok("MeterValues", late_reading_16(stamp(-1800), "9000"))  # from the offline queue
    disconnected(appliance, identity)
    assert [r[8] for r in meter_rows(appliance, identity)] == [15000.0, 9000.0]
    assert state(appliance, f"{identity}.meterValues.energyWh") == 15000
    assert state(appliance, f"{identity}.evse.1.connector.1.energyWh") == 15000


def test_a_late_reading_in_the_same_commit_as_a_newer_one(start_appliance, monkeypatch):
    """With the default commit interval (1 s) a live reading and a queued older one often
    land in the same commit: the live one is still the latest."""
    import conftest

    monkeypatch.setattr(
        conftest,
        "TEST_CONFIG",
        conftest.TEST_CONFIG.replace("commit_interval_ms = 50", "commit_interval_ms = 1000"),
    )
    slow = start_appliance(NO_FETCH)
    identity = "SAME-COMMIT"
    with Station(slow.url, identity) as cp:
        boot16(cp)
        cp.ok("MeterValues", late_reading_16(stamp(-10), "15000"))
        cp.ok("MeterValues", late_reading_16(stamp(-1800), "9000"))  # from the offline queue
    disconnected(slow, identity)
    assert [r[8] for r in meter_rows(slow, identity)] == [15000.0, 9000.0]
    assert state(slow, f"{identity}.meterValues.energyWh") == 15000
    assert state(slow, f"{identity}.meterValues.energyKWh") == 15.0


def test_reading_names_and_units_come_from_the_table(appliance):
    identity = "READINGS"
    with Station(appliance.url, identity, "ocpp2.1") as cp:
        boot2x(cp)
        cp.ok(
            "MeterValues",
            {
                "evseId": 1,
                "meterValue": [
                    {
                        "timestamp": stamp(),
                        "sampledValue": [
                            sv2x(400, "Voltage", "V", phase="L1-L2"),
                            sv2x(2.3, "Power.Active.Import", "kW", phase="L2"),
                            sv2x(212, "Temperature", "Fahrenheit", location="Body"),
                            sv2x(308.15, "Temperature", "K", location="Outlet"),
                            sv2x(1.5, "Energy.Active.Setpoint.Interval", "kWh"),
                            sv2x(32, "Current.Offered", "A"),
                            sv2x(50, "Frequency", "Hz"),
                            sv2x(99999, "Energy.Active.Import.Register", "Wh", location="Inlet"),
                            {"value": 4200},  # no measurand: the energy register, in Wh
                        ],
                    }
                ],
            },
        )
    with Station(appliance.url, "SIGNED") as cp:
        boot16(cp)
        cp.ok(
            "MeterValues",
            {
                "connectorId": 1,
                "meterValue": [
                    {
                        "timestamp": stamp(),
                        "sampledValue": [
                            {"value": "0A1B2C3D", "format": "SignedData"},
                            {"value": "5000", "format": "Raw"},
                        ],
                    }
                ],
            },
        )
    disconnected(appliance, identity)
    disconnected(appliance, "SIGNED")
    got = {k: v for k, v in tree(appliance, identity).items() if k.startswith("meterValues.")}
    # disconnected: power and current are not known (README "Readings")
    assert got == {
        "meterValues.voltageL1L2": 400,
        "meterValues.powerL2": None,
        "meterValues.temperature": pytest.approx(35),
        "meterValues.energyActiveSetpointInterval": pytest.approx(1500),
        "meterValues.currentOffered": None,
        "meterValues.frequency": 50,
        "meterValues.energyWh": 4200,
        "meterValues.energyKWh": 4.2,
    }
    assert described(appliance, f"{identity}.meterValues.temperature") == ("number", "Celsius", 0)
    assert described(appliance, f"{identity}.meterValues.powerL2") == ("number", "W", 0)
    rows = [(r[3], r[4], r[5], r[7], r[8]) for r in meter_rows(appliance, identity)]
    assert rows == [
        ("Voltage", "L1-L2", None, "V", 400.0),
        ("Power.Active.Import", "L2", None, "W", pytest.approx(2300)),
        ("Temperature", None, "Body", "Celsius", pytest.approx(100)),
        ("Temperature", None, "Outlet", "Celsius", pytest.approx(35)),
        ("Energy.Active.Setpoint.Interval", None, None, "Wh", pytest.approx(1500)),
        ("Current.Offered", None, None, "A", 32.0),
        ("Frequency", None, None, "Hz", 50.0),
        ("Energy.Active.Import.Register", None, "Inlet", "Wh", 99999.0),
        ("Energy.Active.Import.Register", None, None, "Wh", 4200.0),
    ]
    assert [(r[3], r[7], r[8]) for r in meter_rows(appliance, "SIGNED")] == [
        ("Energy.Active.Import.Register", "Wh", 5000.0)
    ]
    raw = json.loads(state(appliance, "SIGNED.ocpp.ocpp1_6.in.MeterValues.raw"))
    assert raw["meterValue"][0]["sampledValue"][0]["value"] == "0A1B2C3D"
