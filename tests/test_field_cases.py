"""Nearly-compliant payloads that real chargers sent to real central systems (issue 4,
item 6), replayed frame by frame against `ocpp-appliance serve`.

Each case cites the public issue thread it comes from; the payloads follow what those
threads show (serial numbers and tags kept in shape, not necessarily in value). For every
case the test checks what a user sees:

- lenient (the default): a schema-valid CALLRESULT, the frame's `messages.violation`
  naming the OCPP-J error code of its version, `<identity>.info.lastViolation`, and the
  data landing where it belongs (the over-long serial in `info.serialNumber`, the readings
  in `meter_values`, one `transactions` row for a replayed start);
- strict (`[charge_points."FIELD-STRICT"] validation = "strict"`): the same frame gets the
  CALLERROR with that code.

A schema-valid quirk (a 1970 clock, the errata's `Celcius`, an empty value) must not be
called a violation at all.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from websockets.sync.client import connect

from conftest import (
    Appliance,
    request_schema_name,
    response_schema_name,
    schema_errors,
    start_appliance_process,
    wait_for,
)

STRICT = "FIELD-STRICT"
CONFIG = f'[charge_points."{STRICT}"]\nvalidation = "strict"\n'

# OCPP-J error codes as each version spells them (OCPP-J 1.6 §4.2.3; 2.x Part 4 §4.3)
CODES = {
    "ocpp1.6": {
        "occurrence": "OccurenceConstraintViolation",  # sic, the 1.6 spelling
        "type": "TypeConstraintViolation",
        "property": "PropertyConstraintViolation",
    },
    "ocpp2.0.1": {
        "occurrence": "OccurrenceConstraintViolation",
        "type": "TypeConstraintViolation",
        "property": "PropertyConstraintViolation",
    },
}
CODES["ocpp2.1"] = CODES["ocpp2.0.1"]

MISSING = object()
_ids = itertools.count(1)


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    """One appliance for the module, lenient by default and strict for FIELD-STRICT; each
    test talks through identities of its own."""
    running = start_appliance_process(tmp_path_factory.mktemp("field"), CONFIG)
    yield running
    if running.proc.poll() is None:
        running.proc.kill()
        running.proc.wait()


# ----------------------------------------------------------------------- helpers


def stamp(offset_sec: float = 0) -> str:
    when = datetime.now(UTC) + timedelta(seconds=offset_sec)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


class Peer:
    """A charge point on a raw WebSocket: sends exactly the frames a test writes."""

    def __init__(self, ws: Any, version: str) -> None:
        self.ws = ws
        self.version = version

    def call(self, action: str, payload: Any, message_id: str | None = None) -> list[Any]:
        message_id = message_id or f"field-{next(_ids)}"
        self.ws.send(json.dumps([2, message_id, action, payload]))
        while True:
            reply = json.loads(self.ws.recv(timeout=10))
            if reply[0] == 2:  # a CALL of the appliance's: a charger without the feature
                self.ws.send(json.dumps([4, reply[1], "NotImplemented", "", {}]))
                continue
            assert reply[1] == message_id, reply
            return reply

    def result(self, action: str, payload: Any, message_id: str | None = None) -> dict:
        """The CALLRESULT payload, which must be valid per the official response schema."""
        reply = self.call(action, payload, message_id)
        assert reply[0] == 3, f"{action} in lenient mode got {reply}"
        name = response_schema_name(self.version, action)
        assert schema_errors(self.version, name, reply[2]) == [], reply
        return reply[2]


@contextlib.contextmanager
def peer(box: Appliance, identity: str, version: str) -> Iterator[Peer]:
    with connect(f"{box.url}/{identity}", subprotocols=[version]) as ws:
        assert ws.subprotocol == version
        yield Peer(ws, version)


def state(box: Appliance, state_id: str) -> Any:
    rows = box.query("SELECT val FROM states WHERE id = ?", state_id)
    return rows[0][0] if rows else MISSING


def wait_state(box: Appliance, state_id: str, expected: Any) -> None:
    try:
        wait_for(lambda: state(box, state_id) == expected, 10, state_id)
    except AssertionError:
        raise AssertionError(f"{state_id} is {state(box, state_id)!r}, not {expected!r}") from None


def violation_of(box: Appliance, identity: str, message_id: str) -> str | None:
    """`messages.violation` of the CALL frame the charge point sent."""
    rows = box.wait_rows(
        "SELECT violation FROM messages WHERE identity = ? AND message_id = ?"
        " AND direction = 'in' AND message_type = 2",
        identity,
        message_id,
    )
    return rows[-1][0]


def assert_recorded(
    box: Appliance,
    identity: str,
    version: str,
    action: str,
    message_id: str,
    kind: str,
    last: bool = True,
) -> None:
    """Lenient mode: the frame's row names the code, and so does info.lastViolation
    (when `last`: the latest violation of that charge point)."""
    code = CODES[version][kind]
    recorded = violation_of(box, identity, message_id)
    assert recorded is not None and recorded.startswith(f"{code}: "), recorded
    if not last:
        return
    wait_for(
        lambda: str(state(box, f"{identity}.info.lastViolation")).startswith(f"{action}: {code}"),
        10,
        f"{identity}.info.lastViolation naming {action}: {code}",
    )


def assert_clean(box: Appliance, identity: str, message_id: str) -> None:
    """A schema-valid quirk is no violation: nothing recorded, no lastViolation."""
    assert violation_of(box, identity, message_id) is None
    assert state(box, f"{identity}.info.lastViolation") is MISSING


def strict_reply(box: Appliance, version: str, action: str, payload: Any) -> list[Any]:
    """The same frame from the strict charge point."""
    with peer(box, STRICT, version) as cp:
        return cp.call(action, payload)


def assert_strict_refuses(
    box: Appliance, version: str, action: str, payload: Any, kind: str
) -> None:
    reply = strict_reply(box, version, action, payload)
    assert reply[0] == 4 and reply[2] == CODES[version][kind], reply
    assert isinstance(reply[3], str) and isinstance(reply[4], dict), reply


def assert_is_invalid(version: str, action: str, payload: Any) -> None:
    """The independent oracle agrees the field payload breaks the official schema."""
    assert schema_errors(version, request_schema_name(version, action), payload) != []


# RFC 3339 date-time, which the schemas' `format: date-time` means (JSON Schema draft 4
# §7.3.1); the oracle's FormatChecker skips it without the optional rfc3339 package
RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")


def meter_rows(box: Appliance, identity: str, count: int = 1) -> list[tuple]:
    sql = (
        "SELECT transaction_id, measurand, phase, context, unit, value, sampled_at,"
        " time_suspect FROM meter_values WHERE identity = ? ORDER BY seq"
    )
    return box.wait_rows(sql, identity, count=count)


# ====================================================================== OCPP 1.6

# lbbrhzn/ocpp#1622 (Schneider EVlink Wallbox G4, https://github.com/lbbrhzn/ocpp/issues/1622)
# and lbbrhzn/ocpp#1155, mobilityhouse/ocpp#122/#128: chargePointSerialNumber of 26
# characters (CiString25) beside a chargeBoxSerialNumber of 33.
SCHNEIDER_BOOT = {
    "chargeBoxSerialNumber": "EVB1A22P2KI3N12345678901234567890",
    "chargePointModel": "EVlink Smart Wallbox",
    "chargePointSerialNumber": "3N123456789F2S1B1234567890",
    "chargePointVendor": "Schneider Electric",
    "firmwareVersion": "3.4.0.9",
}
# lbbrhzn/ocpp#213 and mobilityhouse/ocpp#273 (Schneider/Siemens EVlink Smart Wallbox):
# chargeBoxSerialNumber of 33 characters (CiString25).
EVLINK_BOOT = {
    "chargeBoxSerialNumber": "EVB1A22P2RI3N182341200100350795E5",
    "chargePointModel": "EVlink Smart Wallbox",
    "chargePointSerialNumber": "3N18310641B55",
    "chargePointVendor": "Schneider Electric",
    "firmwareVersion": "3.4.0.2",
}
# lbbrhzn/ocpp#899 (United Chargers Grizzl-E Smart): chargePointModel of 22 characters
# (CiString20).
GRIZZLE_BOOT = {
    "chargePointModel": "Grizzl-E Smart Connect",
    "chargePointVendor": "United Chargers",
    "firmwareVersion": "05.653",
}


@pytest.mark.parametrize(
    ("name", "payload", "kept"),
    [
        ("1622", SCHNEIDER_BOOT, {"serialNumber": "3N123456789F2S1B1234567890"}),
        ("213", EVLINK_BOOT, {"chargeBoxSerialNumber": "EVB1A22P2RI3N182341200100350795E5"}),
        ("899", GRIZZLE_BOOT, {"model": "Grizzl-E Smart Connect"}),
    ],
)
def test_16_boot_with_over_long_strings_is_accepted_and_kept_whole(box, name, payload, kept):
    identity = f"BOOT16-{name}"
    assert_is_invalid("ocpp1.6", "BootNotification", payload)
    with peer(box, identity, "ocpp1.6") as cp:
        answer = cp.result("BootNotification", payload, "boot-1")
        assert answer["status"] == "Accepted" and answer["interval"] > 0
        # the charger reboots and says the same again: recorded again, logged once
        cp.result("BootNotification", payload, "boot-2")
    assert_recorded(box, identity, "ocpp1.6", "BootNotification", "boot-1", "property")
    assert_recorded(box, identity, "ocpp1.6", "BootNotification", "boot-2", "property")
    for leaf, value in kept.items():
        wait_state(box, f"{identity}.info.{leaf}", value)
    wait_state(box, f"{identity}.info.vendor", payload["chargePointVendor"])
    lines = [line for line in box.log().splitlines() if f"{identity}: BootNotification" in line]
    assert len(lines) == 1, lines
    assert_strict_refuses(box, "ocpp1.6", "BootNotification", payload, "property")


# lbbrhzn/ocpp#1248 (Legrand GreenUp, https://github.com/lbbrhzn/ocpp/issues/1248):
# errorCode "Error" is no ChargePointErrorCode.
def test_16_status_with_an_error_code_outside_the_enum(box):
    identity = "STATUS16-1248"
    payload = {
        "connectorId": 0,
        "errorCode": "Error",
        "status": "Faulted",
        "timestamp": stamp(),
    }
    assert_is_invalid("ocpp1.6", "StatusNotification", payload)
    with peer(box, identity, "ocpp1.6") as cp:
        assert cp.result("StatusNotification", payload, "status-1") == {}
    assert_recorded(box, identity, "ocpp1.6", "StatusNotification", "status-1", "property")
    # connector 0 is the station
    wait_state(box, f"{identity}.info.status", "Faulted")
    wait_state(box, f"{identity}.info.errorCode", "Error")
    assert_strict_refuses(box, "ocpp1.6", "StatusNotification", payload, "property")


# lbbrhzn/ocpp#987 (https://github.com/lbbrhzn/ocpp/issues/987): StatusNotification `info`
# longer than its CiString50.
def test_16_status_info_longer_than_50_is_kept_whole(box):
    identity = "STATUS16-987"
    info = "User didn't disconnect vehicle within 00:10:00 minutes after charging has ended."
    payload = {"connectorId": 1, "status": "Finishing", "errorCode": "NoError", "info": info}
    assert_is_invalid("ocpp1.6", "StatusNotification", payload)
    with peer(box, identity, "ocpp1.6") as cp:
        assert cp.result("StatusNotification", payload, "status-1") == {}
    assert_recorded(box, identity, "ocpp1.6", "StatusNotification", "status-1", "property")
    wait_state(box, f"{identity}.evse.1.connector.1.info", info)
    wait_state(box, f"{identity}.evse.1.connector.1.status", "Finishing")
    assert_strict_refuses(box, "ocpp1.6", "StatusNotification", payload, "property")


# lbbrhzn/ocpp#210 (OpenEVSE, https://github.com/lbbrhzn/ocpp/issues/210), also
# OpenEVSE/openevse_esp32_firmware#335 and mobilityhouse/ocpp#377: sampledValue.value as
# a JSON number where 1.6 wants a string.
def test_16_meter_values_as_json_numbers_land(box):
    identity = "MV16-210"
    t1, t2 = stamp(-120), stamp(-60)
    payload = {
        "connectorId": 1,
        "meterValue": [
            {
                "timestamp": t1,
                "sampledValue": [
                    {"value": 604.213, "measurand": "Energy.Active.Import.Register", "unit": "Wh"},
                    {"value": 0, "measurand": "Power.Active.Import", "unit": "W"},
                ],
            },
            {
                "timestamp": t2,
                "sampledValue": [
                    {"value": 605.5, "measurand": "Energy.Active.Import.Register", "unit": "Wh"},
                    {"value": 7200, "measurand": "Power.Active.Import", "unit": "W"},
                ],
            },
        ],
    }
    assert_is_invalid("ocpp1.6", "MeterValues", payload)
    with peer(box, identity, "ocpp1.6") as cp:
        assert cp.result("MeterValues", payload, "mv-1") == {}
        # while connected (afterwards power is not known: README "Readings")
        wait_state(box, f"{identity}.meterValues.energyWh", 605.5)
        wait_state(box, f"{identity}.meterValues.powerW", 7200.0)
    assert_recorded(box, identity, "ocpp1.6", "MeterValues", "mv-1", "type")
    rows = meter_rows(box, identity, 4)
    assert [(r[1], r[4], r[5], r[6]) for r in rows] == [
        ("Energy.Active.Import.Register", "Wh", 604.213, t1),
        ("Power.Active.Import", "W", 0.0, t1),
        ("Energy.Active.Import.Register", "Wh", 605.5, t2),
        ("Power.Active.Import", "W", 7200.0, t2),
    ]
    assert_strict_refuses(box, "ocpp1.6", "MeterValues", payload, "type")


# Unit spellings seen in the field, each with its measurand:
# - "Hz": ChargeAmps Halo, lbbrhzn/ocpp#1576 (https://github.com/lbbrhzn/ocpp/issues/1576);
#   not in the 1.6 enum.
# - "Hertz": Viridian/Evnex firmware, mobilityhouse/ocpp#70 (1.6 errata v4.0 adds it; the
#   official schema has it).
# - "Celcius": the schema's own misspelling, which the errata asks central systems to
#   accept beside "Celsius" (mobilityhouse/ocpp#57, dallmann-consulting/OCPP.Core#81).
# - "C": OpenEVSE before OpenEVSE/openevse_esp32_firmware#726; not in the enum.
# The README promises units normalised to `Hz` and `Celsius`.
@pytest.mark.parametrize(
    ("sent", "measurand", "value", "normalised", "kind"),
    [
        ("Hz", "Frequency", "50.02", "Hz", "property"),
        ("Hertz", "Frequency", "49.98", "Hz", None),
        ("Celcius", "Temperature", "31.5", "Celsius", None),
        ("C", "Temperature", "30.0", None, "property"),
    ],
)
def test_16_unit_spellings_from_the_field(box, sent, measurand, value, normalised, kind):
    identity = f"UNIT16-{sent}"
    when = stamp(-5)
    payload = {
        "connectorId": 1,
        "meterValue": [
            {
                "timestamp": when,
                "sampledValue": [
                    {"value": value, "measurand": measurand, "unit": sent},
                ],
            }
        ],
    }
    with peer(box, identity, "ocpp1.6") as cp:
        assert cp.result("MeterValues", payload, "mv-1") == {}
    if kind is None:
        assert schema_errors("ocpp1.6", "MeterValues", payload) == []
        assert_clean(box, identity, "mv-1")
        assert strict_reply(box, "ocpp1.6", "MeterValues", payload)[0] == 3
    else:
        assert_is_invalid("ocpp1.6", "MeterValues", payload)
        assert_recorded(box, identity, "ocpp1.6", "MeterValues", "mv-1", kind)
        assert_strict_refuses(box, "ocpp1.6", "MeterValues", payload, kind)
    (row,) = meter_rows(box, identity)
    assert row[1] == measurand and row[5] == float(value), row
    if normalised is not None:
        assert row[4] == normalised, f"unit {sent!r} stored as {row[4]!r}, not {normalised!r}"


# Alfen Eve: lbbrhzn/ocpp#361 (https://github.com/lbbrhzn/ocpp/issues/361) and
# steve-community/steve#448 (context "CurrentMax", not a ReadingContext), with the
# transactionId 9223372036854775807 (int64 max) of steve-community/steve#740 and
# lorenzodonini/ocpp-go#188; the sampled values carry no measurand.
ALFEN_METER_VALUES = {
    "connectorId": 1,
    "transactionId": 9223372036854775807,
    "meterValue": [
        {
            "timestamp": "2020-09-19T15:14:23Z",
            "sampledValue": [
                {"value": "15.630", "context": "Sample.Periodic", "unit": "A"},
                {"value": "16.000", "context": "CurrentMax", "unit": "A"},
            ],
        }
    ],
}


def test_16_alfen_context_and_int64_transaction_id(box):
    identity = "MV16-ALFEN"
    assert_is_invalid("ocpp1.6", "MeterValues", ALFEN_METER_VALUES)
    with peer(box, identity, "ocpp1.6") as cp:
        assert cp.result("MeterValues", ALFEN_METER_VALUES, "mv-1") == {}
    assert_recorded(box, identity, "ocpp1.6", "MeterValues", "mv-1", "property")
    rows = meter_rows(box, identity, 2)
    assert [(r[0], r[3], r[4], r[5]) for r in rows] == [
        ("9223372036854775807", "Sample.Periodic", "A", 15.63),
        ("9223372036854775807", "CurrentMax", "A", 16.0),
    ]
    assert_strict_refuses(box, "ocpp1.6", "MeterValues", ALFEN_METER_VALUES, "property")


def test_16_a_reading_in_amperes_without_measurand_is_not_the_energy_register(box):
    # The same Alfen frame (lbbrhzn/ocpp#361): OCPP's default measurand is the energy
    # register, but a value in amperes cannot be one. Taking it as such shows 15.63 "Wh"
    # as the charger's meter reading (meterValues.energyWh, charge_point_status.energy_wh).
    identity = "MV16-ALFEN-ENERGY"
    with peer(box, identity, "ocpp1.6") as cp:
        assert cp.result("MeterValues", ALFEN_METER_VALUES, "mv-1") == {}
    rows = meter_rows(box, identity, 2)
    energy_in_amperes = [r for r in rows if r[1].startswith("Energy.") and r[4] == "A"]
    assert energy_in_amperes == [], "an ampere reading stored as an energy register"
    assert state(box, f"{identity}.meterValues.energyWh") is MISSING


# Huawei SCharger, lbbrhzn/ocpp#1144 (https://github.com/lbbrhzn/ocpp/issues/1144): one
# MeterValue sent as an object instead of an array of them.
def test_16_meter_value_object_instead_of_array_still_lands(box):
    identity = "MV16-1144"
    when = stamp(-10)
    payload = {
        "connectorId": 1,
        "transactionId": 1,
        "meterValue": {
            "timestamp": when,
            "sampledValue": [
                {
                    "value": "12.34",
                    "context": "Sample.Periodic",
                    "measurand": "Energy.Active.Import.Register",
                    "unit": "kWh",
                }
            ],
        },
    }
    assert_is_invalid("ocpp1.6", "MeterValues", payload)
    with peer(box, identity, "ocpp1.6") as cp:
        assert cp.result("MeterValues", payload, "mv-1") == {}
    assert_recorded(box, identity, "ocpp1.6", "MeterValues", "mv-1", "type")
    assert_strict_refuses(box, "ocpp1.6", "MeterValues", payload, "type")
    # the one reading is perfectly usable: 12.34 kWh is 12340 Wh
    wait_for(
        lambda: box.query("SELECT 1 FROM meter_values WHERE identity = ?", identity),
        3,
        "the reading of a MeterValue sent as an object in meter_values",
    )
    rows = meter_rows(box, identity)
    assert [(r[0], r[4], r[5]) for r in rows] == [("1", "Wh", 12340.0)]


# lbbrhzn/ocpp#466 (https://github.com/lbbrhzn/ocpp/issues/466): after a firmware update
# the charger sends MeterValues whose sampledValue is an empty array (minItems 1).
def test_16_empty_sampled_value_is_acknowledged(box):
    identity = "MV16-466"
    payload = {"connectorId": 1, "meterValue": [{"timestamp": stamp(), "sampledValue": []}]}
    assert_is_invalid("ocpp1.6", "MeterValues", payload)
    with peer(box, identity, "ocpp1.6") as cp:
        assert cp.result("MeterValues", payload, "mv-1") == {}
        # the connection lives on
        assert cp.result("Heartbeat", {})["currentTime"]
    assert_recorded(box, identity, "ocpp1.6", "MeterValues", "mv-1", "occurrence")
    assert box.query("SELECT 1 FROM meter_values WHERE identity = ?", identity) == []
    assert_strict_refuses(box, "ocpp1.6", "MeterValues", payload, "occurrence")


# Heidelberg Amperfied connect.business, evcc-io/evcc#17836
# (https://github.com/evcc-io/evcc/issues/17836): triggered MeterValues whose values are
# empty strings. Schema-valid (a string), but no number: acknowledged, nothing stored.
def test_16_empty_string_values_are_no_violation_and_no_reading(box):
    identity = "MV16-17836"
    payload = {
        "connectorId": 1,
        "meterValue": [
            {
                "timestamp": stamp(),
                "sampledValue": [
                    {"context": "Trigger", "measurand": "Power.Active.Import", "value": ""},
                    {
                        "context": "Trigger",
                        "measurand": "Energy.Active.Import.Register",
                        "value": "",
                    },
                    {"context": "Trigger", "measurand": "Current.Import", "value": ""},
                ],
            }
        ],
    }
    assert schema_errors("ocpp1.6", "MeterValues", payload) == []
    with peer(box, identity, "ocpp1.6") as cp:
        assert cp.result("MeterValues", payload, "mv-1") == {}
        assert cp.result("Heartbeat", {})["currentTime"]
    assert_clean(box, identity, "mv-1")
    assert box.query("SELECT 1 FROM meter_values WHERE identity = ?", identity) == []
    assert state(box, f"{identity}.meterValues.energyWh") is MISSING


# Timestamps that are ISO 8601 but not RFC 3339 (the schema's date-time):
# - Growatt THOR, evcc-io/evcc#10399 (https://github.com/evcc-io/evcc/issues/10399) and
#   lorenzodonini/ocpp-go#237: local time without a zone in StartTransaction;
# - monta-app/ocpp-emulator#5 and #53: an offset without minutes ("+02").
def test_16_start_transaction_in_local_time_without_a_zone(box):
    identity = "TIME16-10399"
    payload = {
        "connectorId": 1,
        "idTag": "evcc",
        "meterStart": 0,
        "reservationId": 0,
        "timestamp": "2023-10-19T15:28:07",
    }
    assert not RFC3339.fullmatch(payload["timestamp"])
    with peer(box, identity, "ocpp1.6") as cp:
        answer = cp.result("StartTransaction", payload, "start-1")
    assert answer["idTagInfo"]["status"] == "Accepted"
    assert type(answer["transactionId"]) is int
    assert_recorded(box, identity, "ocpp1.6", "StartTransaction", "start-1", "property")
    rows = box.wait_rows(
        "SELECT transaction_id, id_token, started_at, meter_start_wh FROM transactions"
        " WHERE identity = ?",
        identity,
    )
    assert rows == [(str(answer["transactionId"]), "evcc", "2023-10-19T15:28:07", 0.0)]
    assert_strict_refuses(box, "ocpp1.6", "StartTransaction", payload, "property")


def test_16_status_timestamp_with_an_hour_only_offset(box):
    identity = "TIME16-MONTA"
    payload = {
        "connectorId": 2,
        "errorCode": "NoError",
        "status": "Preparing",
        "timestamp": "2024-04-26T14:35:02+02",
    }
    assert not RFC3339.fullmatch(payload["timestamp"])
    with peer(box, identity, "ocpp1.6") as cp:
        assert cp.result("StatusNotification", payload, "status-1") == {}
    assert_recorded(box, identity, "ocpp1.6", "StatusNotification", "status-1", "property")
    wait_state(box, f"{identity}.evse.2.connector.1.status", "Preparing")
    wait_state(box, f"{identity}.evse.2.connector.1.statusTimestamp", "2024-04-26T14:35:02+02")
    assert_strict_refuses(box, "ocpp1.6", "StatusNotification", payload, "property")


# Clockless chargers: MicroOcpp sends 1970-01-01 timestamps before its clock is set
# (matth-x/MicroOcpp#311 against SteVe, #230, and the MeterValues of PR #354), also for
# transactions started before the boot was accepted (PreBoot transactions). Valid
# date-times, so no violation; the rows are marked time_suspect and the receive time
# orders them, so today's reading is not hidden behind an older one.
def test_16_clockless_charger_reporting_1970(box):
    identity = "CLOCK16-311"
    with peer(box, identity, "ocpp1.6") as cp:
        status = {
            "connectorId": 1,
            "errorCode": "NoError",
            "status": "Available",
            "timestamp": "1970-01-01T00:00:00.750Z",
        }
        assert cp.result("StatusNotification", status, "status-1") == {}
        start = {
            "connectorId": 1,
            "idTag": "PREBOOT",
            "meterStart": 1000,
            "timestamp": "1970-01-01T00:01:10.932Z",
        }
        answer = cp.result("StartTransaction", start, "start-1")
        transaction = answer["transactionId"]
        # a reading with a real clock, then one from before the clock was set
        for number, (when, wh) in enumerate(
            [(stamp(-30), "1500"), ("1970-01-01T00:02:00.000Z", "1600")], 1
        ):
            payload = {
                "connectorId": 1,
                "transactionId": transaction,
                "meterValue": [
                    {
                        "timestamp": when,
                        "sampledValue": [
                            {"value": wh, "measurand": "Energy.Active.Import.Register"}
                        ],
                    }
                ],
            }
            assert cp.result("MeterValues", payload, f"mv-{number}") == {}
    for message_id in ("status-1", "start-1", "mv-1", "mv-2"):
        assert_clean(box, identity, message_id)
    wait_state(box, f"{identity}.evse.1.connector.1.statusTimestamp", "1970-01-01T00:00:00.750Z")
    rows = box.wait_rows(
        "SELECT transaction_id, started_at, time_suspect FROM transactions WHERE identity = ?",
        identity,
    )
    assert rows == [(str(transaction), "1970-01-01T00:01:10.932Z", 1)]
    readings = meter_rows(box, identity, 2)
    assert [(r[5], r[7]) for r in readings] == [(1500.0, 0), (1600.0, 1)]
    wait_state(box, f"{identity}.meterValues.energyWh", 1600.0)


# StopTransaction with transactionId -1 and without the optional idTag, after a start
# the charger never got an id for: EVerest/libocpp#495 (against SteVe,
# https://github.com/EVerest/libocpp/issues/495), dallmann-consulting/OCPP.Core#55 (Hager
# Witty Park after a ConcurrentTx), matth-x/MicroOcpp#50.
def test_16_stop_with_minus_one_and_no_id_tag_is_acknowledged(box):
    identity = "STOP16-495"
    t1, t2 = stamp(-600), stamp(-300)
    stops = [
        {"transactionId": -1, "meterStop": 2400, "timestamp": t1, "reason": "EVDisconnected"},
        {"transactionId": -1, "meterStop": 5100, "timestamp": t2},
    ]
    with peer(box, identity, "ocpp1.6") as cp:
        for number, stop in enumerate(stops, 1):
            # no idTag sent, so no idTagInfo answered
            assert cp.result("StopTransaction", stop, f"stop-{number}") == {}
    for number in (1, 2):
        assert_clean(box, identity, f"stop-{number}")
    rows = box.wait_rows(
        "SELECT transaction_id, stopped_at, meter_stop_wh, stop_reason FROM transactions"
        " WHERE identity = ? ORDER BY seq",
        identity,
        count=2,
    )
    # two offline sessions: two rows, never merged
    assert rows == [("-1", t1, 2400.0, "EVDisconnected"), ("-1", t2, 5100.0, "Local")]
    errors = box.query(
        "SELECT payload FROM messages WHERE identity = ? AND message_type = 4", identity
    )
    assert errors == []


# A StartTransaction repeated because its answer was lost:
# - matth-x/MicroOcpp#237: the same payload under a new message id (the central system
#   answered transactionId 113 both times);
# - matth-x/MicroOcpp#50: the same frame resent with the same message id;
# - steve-community/steve#1294: the same StartTransaction again after its StopTransaction.
# One session, one id, one row; the replay after the stop does not reopen it.
def test_16_replayed_start_transaction_gets_the_same_id_and_one_row(box):
    identity = "START16-237"
    start = {
        "connectorId": 1,
        "idTag": "0000001012951691",
        "meterStart": 1,
        "timestamp": stamp(-60),
    }
    stop = {"meterStop": 1801, "timestamp": stamp(-10), "reason": "DeAuthorized"}
    with peer(box, identity, "ocpp1.6") as cp:
        first = cp.result("StartTransaction", start, "1000005")["transactionId"]
        assert cp.result("StartTransaction", start, "1000006")["transactionId"] == first
        assert cp.result("StartTransaction", start, "1000006")["transactionId"] == first
        assert cp.result("StopTransaction", {**stop, "transactionId": first}, "1000008") == {}
        assert cp.result("StartTransaction", start, "1000010")["transactionId"] == first
    rows = box.wait_rows(
        "SELECT transaction_id, started_at, stopped_at, energy_wh FROM transactions"
        " WHERE identity = ?",
        identity,
    )
    assert rows == [(str(first), start["timestamp"], stop["timestamp"], 1800.0)]
    wait_state(box, f"{identity}.transactions.active", 0)
    wait_state(box, f"{identity}.transactions.last.stoppedAt", stop["timestamp"])


# DataTransfer whose data is a JSON object, not the string 1.6 defines:
# matth-x/MicroOcpp#395 (OCTT TC_062 fails it), mobilityhouse/ocpp#462.
def test_16_data_transfer_with_an_object_as_data(box):
    identity = "DT16-462"
    payload = {
        "vendorId": "btc",
        "messageId": "stationMode",
        "data": {"StationMode": "paymentMode"},
    }
    assert_is_invalid("ocpp1.6", "DataTransfer", payload)
    with peer(box, identity, "ocpp1.6") as cp:
        assert cp.result("DataTransfer", payload, "dt-1")["status"] == "Accepted"
    assert_recorded(box, identity, "ocpp1.6", "DataTransfer", "dt-1", "type")
    wait_state(box, f"{identity}.ocpp.ocpp1_6.in.DataTransfer.data.data.StationMode", "paymentMode")
    assert_strict_refuses(box, "ocpp1.6", "DataTransfer", payload, "type")


# A real charger under CitrineOS, citrineos/citrineos#166
# (https://github.com/citrineos/citrineos/issues/166): a remotely started StartTransaction
# without `timestamp`. Everything the session needs is there (connector, idTag,
# meterStart); an error answer leaves the charger without a transaction id.
def test_16_start_transaction_without_timestamp_still_gets_an_id(box):
    identity = "START16-166"
    payload = {"connectorId": 1, "idTag": "CE5626C2", "meterStart": 0}
    assert_is_invalid("ocpp1.6", "StartTransaction", payload)
    assert_strict_refuses(box, "ocpp1.6", "StartTransaction", payload, "occurrence")
    with peer(box, identity, "ocpp1.6") as cp:
        reply = cp.call("StartTransaction", payload, "start-1")
    assert reply[0] == 3, f"lenient mode refused a usable StartTransaction: {reply}"
    assert schema_errors("ocpp1.6", "StartTransactionResponse", reply[2]) == []
    assert_recorded(box, identity, "ocpp1.6", "StartTransaction", "start-1", "occurrence")
    rows = box.wait_rows(
        "SELECT transaction_id, id_token, meter_start_wh FROM transactions WHERE identity = ?",
        identity,
    )
    assert rows == [(str(reply[2]["transactionId"]), "CE5626C2", 0.0)]


# ===================================================================== OCPP 2.0.1


# citrineos/citrineos#131 (https://github.com/citrineos/citrineos/issues/131): CitrineOS
# crashed on a 2.0.1 BootNotification whose serialNumber, model, firmwareVersion, iccid
# run over their maxLength, or whose firmwareVersion is an object.
@pytest.mark.parametrize(
    ("name", "station", "kind", "kept"),
    [
        (
            "lengths",
            {
                "vendorName": "ACME",
                "model": "AC Wallbox 22kW Three Phase",  # 27 > 20
                "serialNumber": "SN-2024-0001-0002-0003-0004",  # 27 > 25
                "firmwareVersion": "v1.2.3+build.4567.gabcdef0-dirty.2024-05-01T10:00:00",
                "modem": {"iccid": "8949" + "0" * 18, "imsi": "262011234567890"},  # 22 > 20
            },
            "property",
            {
                "model": "AC Wallbox 22kW Three Phase",
                "serialNumber": "SN-2024-0001-0002-0003-0004",
                "firmwareVersion": "v1.2.3+build.4567.gabcdef0-dirty.2024-05-01T10:00:00",
                "iccid": "8949" + "0" * 18,
            },
        ),
        (
            "object",
            {"vendorName": "ACME", "model": "AC1", "firmwareVersion": {"main": "1.2"}},
            "type",
            {"vendor": "ACME", "model": "AC1"},
        ),
    ],
)
def test_201_boot_with_over_long_or_mistyped_station_fields(box, name, station, kind, kept):
    identity = f"BOOT201-{name}"
    payload = {"reason": "PowerUp", "chargingStation": station}
    assert_is_invalid("ocpp2.0.1", "BootNotification", payload)
    with peer(box, identity, "ocpp2.0.1") as cp:
        answer = cp.result("BootNotification", payload, "boot-1")
        assert answer["status"] == "Accepted"
        assert cp.result("Heartbeat", {})["currentTime"]
    assert_recorded(box, identity, "ocpp2.0.1", "BootNotification", "boot-1", kind)
    for leaf, value in kept.items():
        wait_state(box, f"{identity}.info.{leaf}", value)
    wait_state(box, f"{identity}.info.bootReason", "PowerUp")
    assert_strict_refuses(box, "ocpp2.0.1", "BootNotification", payload, kind)


# An idToken of 2.1's length on a 2.0.1 connection: 2.0.1 allows 36 characters, 2.1
# allows 255 (citrineos/citrineos-core#966,
# https://github.com/citrineos/citrineos-core/pull/966). A 41-character token (a UUID
# with a prefix) is a violation in 2.0.1 and none in 2.1.
LONG_TOKEN = "EMSP-" + "3f2a9c4e-1b7d-4e8a-9c0f-5d6e7a8b9c0d"  # 41 characters


@pytest.mark.parametrize("version", ["ocpp2.0.1", "ocpp2.1"])
def test_2x_id_token_of_the_2_1_length(box, version):
    identity = f"TOKEN-{version.removeprefix('ocpp').replace('.', '')}"
    token = {"idToken": LONG_TOKEN, "type": "Central"}
    authorize = {"idToken": token}
    started = {
        "eventType": "Started",
        "timestamp": stamp(-5),
        "triggerReason": "Authorized",
        "seqNo": 0,
        "transactionInfo": {"transactionId": "tx-966"},
        "idToken": token,
        "evse": {"id": 1, "connectorId": 1},
    }
    with peer(box, identity, version) as cp:
        answer = cp.result("Authorize", authorize, "auth-1")
        assert answer["idTokenInfo"]["status"] == "Accepted"
        event = cp.result("TransactionEvent", started, "tx-1")
        assert event["idTokenInfo"]["status"] == "Accepted"
    if version == "ocpp2.0.1":
        assert_is_invalid(version, "Authorize", authorize)
        assert_recorded(box, identity, version, "Authorize", "auth-1", "property", last=False)
        assert_recorded(box, identity, version, "TransactionEvent", "tx-1", "property")
        assert_strict_refuses(box, version, "Authorize", authorize, "property")
    else:
        assert schema_errors(version, "AuthorizeRequest", authorize) == []
        assert_clean(box, identity, "auth-1")
        assert_clean(box, identity, "tx-1")
    rows = box.wait_rows(
        "SELECT transaction_id, id_token FROM transactions WHERE identity = ?", identity
    )
    assert rows == [("tx-966", LONG_TOKEN)]
    wait_state(box, f"{identity}.transactions.last.idToken", LONG_TOKEN)


# lbbrhzn/ocpp#2135 (https://github.com/lbbrhzn/ocpp/issues/2135, fixed by #2141): a
# charger replaying its offline queue after a reconnect resurrected an ended transaction
# and moved its meter backwards. Here: Started, Updated, Ended, then the queue again.
def test_201_offline_queue_replayed_after_ended_does_not_reopen(box):
    identity = "TX201-2135"
    evse = {"id": 1, "connectorId": 1}
    token = {"idToken": "04A2B3C4D5E6F7", "type": "ISO14443"}
    t0, t1, t2 = stamp(-900), stamp(-600), stamp(-300)

    def event(kind: str, seq: int, when: str, wh: float, **extra: Any) -> dict[str, Any]:
        return {
            "eventType": kind,
            "timestamp": when,
            "triggerReason": {"Started": "Authorized", "Updated": "MeterValuePeriodic"}.get(
                kind, "EVCommunicationLost"
            ),
            "seqNo": seq,
            "transactionInfo": {"transactionId": "TX-2135", **extra},
            "meterValue": [
                {
                    "timestamp": when,
                    "sampledValue": [{"value": wh, "measurand": "Energy.Active.Import.Register"}],
                }
            ],
        }

    started = {**event("Started", 0, t0, 10000), "idToken": token, "evse": evse}
    updated = event("Updated", 1, t1, 13000)
    ended = event("Ended", 2, t2, 16000, stoppedReason="EVDisconnected")
    with peer(box, identity, "ocpp2.0.1") as cp:
        for number, payload in enumerate([started, updated, ended]):
            cp.result("TransactionEvent", payload, f"live-{number}")
    with peer(box, identity, "ocpp2.0.1") as cp:  # reconnect, replay the queue
        for number, payload in enumerate([started, updated]):
            cp.result("TransactionEvent", {**payload, "offline": True}, f"replay-{number}")
    for message_id in ("live-0", "live-1", "live-2", "replay-0", "replay-1"):
        assert_clean(box, identity, message_id)
    wait_state(box, f"{identity}.transactions.active", 0)
    rows = box.wait_rows(
        "SELECT transaction_id, started_at, stopped_at, meter_start_wh, meter_stop_wh,"
        " energy_wh, stop_reason, seq_no FROM transactions WHERE identity = ?",
        identity,
    )
    assert rows == [("TX-2135", t0, t2, 10000.0, 16000.0, 6000.0, "EVDisconnected", 2)]
    wait_state(box, f"{identity}.transactions.last.stoppedAt", t2)
    wait_state(box, f"{identity}.transactions.last.energyWh", 6000.0)
    wait_state(box, f"{identity}.meterValues.energyWh", 16000.0)


# Autel MaxiCharger on 2.0.1, lbbrhzn/ocpp#1989
# (https://github.com/lbbrhzn/ocpp/issues/1989): sampled values without the optional
# unitOfMeasure. The default units apply: W for power, A for current.
def test_201_sampled_values_without_unit_of_measure(box):
    identity = "MV201-1989"
    payload = {
        "evseId": 1,
        "meterValue": [
            {
                "timestamp": stamp(-2),
                "sampledValue": [
                    {
                        "context": "Sample.Periodic",
                        "measurand": "Power.Active.Import",
                        "value": 500.37957763671875,
                    },
                    {
                        "context": "Sample.Periodic",
                        "measurand": "Current.Import",
                        "phase": "L1",
                        "value": 2.1050000190734863,
                    },
                ],
            }
        ],
    }
    assert schema_errors("ocpp2.0.1", "MeterValuesRequest", payload) == []
    with peer(box, identity, "ocpp2.0.1") as cp:
        assert cp.result("MeterValues", payload, "mv-1") == {}
        wait_state(box, f"{identity}.meterValues.powerW", 500.37957763671875)
        wait_state(box, f"{identity}.meterValues.currentL1", 2.1050000190734863)
    assert_clean(box, identity, "mv-1")
    rows = meter_rows(box, identity, 2)
    assert [(r[1], r[2], r[4], r[5]) for r in rows] == [
        ("Power.Active.Import", None, "W", 500.37957763671875),
        ("Current.Import", "L1", "A", 2.1050000190734863),
    ]
