"""Interoperability: third-party charge points against the real `ocpp-appliance serve`.

The `ocpp` package from PyPI plays the charge point for 1.6, 2.0.1 and 2.1 (it validates
what it sends and what it receives against its own copy of the official schemas), the
pure-Python `jsonschema` package judges every answer, and the database is read through a
connection of our own, as a user's script would.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import signal
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import websockets
from websockets.sync.client import connect

from appliance.versions.tables import FROM_CHARGE_POINT, SEND_ONLY
from conftest import (
    FOLDERS,
    SCHEMAS,
    VERSIONS,
    request_schema_name,
    response_schema_name,
    schema_errors,
)

DEFAULT_HEARTBEAT_SEC = (
    300  # heartbeat_interval_sec default (README "Configuration"); TEST_CONFIG keeps it
)

MESSAGES_SQL = (
    "SELECT direction, message_type, message_id, action, protocol, payload, violation"
    " FROM messages WHERE identity = ? ORDER BY seq"
)
TRANSACTIONS_SQL = (
    "SELECT transaction_id, evse_id, connector_id, id_token, started_at, stopped_at,"
    " meter_start_wh, meter_stop_wh, energy_wh, stop_reason FROM transactions"
    " WHERE identity = ? ORDER BY seq"
)


def stamp(offset_sec: float = 0) -> str:
    """A charge point's timestamp: ISO 8601 UTC with milliseconds, near the real clock."""
    when = datetime.now(UTC) + timedelta(seconds=offset_sec)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def parse_time(text: str) -> datetime:
    when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    assert when.tzinfo is not None, f"{text!r} carries no time zone"
    return when


def assert_now(text: str) -> None:
    """A `currentTime` from the appliance: parseable, UTC-aware, and about now."""
    assert abs((parse_time(text) - datetime.now(UTC)).total_seconds()) < 60, text


# ------------------------------------------------------------ the `ocpp` package


class Recorder:
    """Wraps the client WebSocket the `ocpp` ChargePoint uses and keeps every text frame
    exactly as it crossed the wire, in both directions."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.sent: list[str] = []
        self.received: list[str] = []

    async def send(self, message: str) -> None:
        self.sent.append(message)
        await self.ws.send(message)

    async def recv(self) -> str:
        message = await self.ws.recv()
        assert isinstance(message, str), f"binary frame from the appliance: {message!r}"
        self.received.append(message)
        return message


async def run_ocpp_charge_point(url: str, version: str, charge_point_class: Any, scenario: Any):
    """Connect as `charge_point_class` (an `ocpp` ChargePoint), run `scenario(cp)` and
    return (what the scenario returned, the recorder, the negotiated subprotocol)."""
    async with websockets.connect(url, subprotocols=[version]) as ws:
        recorder = Recorder(ws)
        cp = charge_point_class(url.rsplit("/", 1)[-1], recorder, response_timeout=10)
        reader = asyncio.create_task(cp.start())
        try:
            result = await scenario(cp)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, websockets.ConnectionClosed):
                await reader
        return result, recorder, ws.subprotocol


def check_messages(appliance: Any, identity: str, version: str, recorder: Recorder, calls: int):
    """Every frame of the conversation is in `messages`, verbatim and in order per
    direction, and each of our CALLs has its 'in' CALL row and one 'out' CALLRESULT row
    with the same id and action. (A CALL the appliance may send after the boot, and the
    library's answer to it, must be there as well.)"""
    ours = [json.loads(text) for text in recorder.sent if json.loads(text)[0] == 2]
    assert len(ours) == calls
    total = len(recorder.sent) + len(recorder.received)
    rows = appliance.wait_rows(MESSAGES_SQL, identity, count=total)
    assert len(rows) == total, rows

    assert [r[5] for r in rows if r[0] == "in"] == recorder.sent
    assert [r[5] for r in rows if r[0] == "out"] == recorder.received
    for direction, message_type, message_id, action, protocol, text, violation in rows:
        frame = json.loads(text)
        assert protocol == version
        assert message_type == frame[0] and message_id == frame[1], (message_type, text)
        assert action is not None, text
        if direction == "in":
            assert violation is None, (action, violation)

    for frame in ours:
        message_id, action = frame[1], frame[2]
        mine = [(seq, r) for seq, r in enumerate(rows) if r[2] == message_id]
        assert [(r[0], r[1], r[3]) for _, r in mine] == [("in", 2, action), ("out", 3, action)]
        (call_seq, call_row), (result_seq, result_row) = mine
        assert call_seq < result_seq
        assert json.loads(call_row[5]) == frame
        answer = json.loads(result_row[5])
        assert len(answer) == 3
        assert schema_errors(version, response_schema_name(version, action), answer[2]) == []


def test_ocpp_library_charge_point_16(appliance):
    from ocpp.v16 import ChargePoint, call

    identity = "OCPPLIB-16"
    t_start, t_meter, t_stop = stamp(-120), stamp(-60), stamp(-1)
    meter_value = {
        "timestamp": t_meter,
        "sampled_value": [
            {"value": "2500", "measurand": "Energy.Active.Import.Register", "unit": "Wh"},
            {"value": "7.4", "measurand": "Power.Active.Import", "unit": "kW"},
        ],
    }

    async def scenario(cp):
        answers = {}
        answers["boot"] = await cp.call(
            call.BootNotification(
                charge_point_vendor="Interop", charge_point_model="OcppLib", firmware_version="1"
            ),
            suppress=False,
        )
        answers["heartbeat"] = await cp.call(call.Heartbeat(), suppress=False)
        answers["status"] = await cp.call(
            call.StatusNotification(connector_id=2, error_code="NoError", status="Available"),
            suppress=False,
        )
        answers["authorize"] = await cp.call(call.Authorize(id_tag="TAG-16"), suppress=False)
        start = await cp.call(
            call.StartTransaction(
                connector_id=2, id_tag="TAG-16", meter_start=1000, timestamp=t_start
            ),
            suppress=False,
        )
        answers["start"] = start
        answers["meter"] = await cp.call(
            call.MeterValues(
                connector_id=2, transaction_id=start.transaction_id, meter_value=[meter_value]
            ),
            suppress=False,
        )
        answers["stop"] = await cp.call(
            call.StopTransaction(
                meter_stop=4500,
                timestamp=t_stop,
                transaction_id=start.transaction_id,
                reason="Local",
                id_tag="TAG-16",
            ),
            suppress=False,
        )
        return answers

    answers, recorder, subprotocol = asyncio.run(
        run_ocpp_charge_point(f"{appliance.url}/{identity}", "ocpp1.6", ChargePoint, scenario)
    )
    assert subprotocol == "ocpp1.6"
    assert answers["boot"].status == "Accepted"
    assert answers["boot"].interval == DEFAULT_HEARTBEAT_SEC
    assert_now(answers["boot"].current_time)
    assert_now(answers["heartbeat"].current_time)
    assert answers["authorize"].id_tag_info["status"] == "Accepted"
    transaction_id = answers["start"].transaction_id
    assert type(transaction_id) is int and transaction_id > 0
    assert answers["start"].id_tag_info["status"] == "Accepted"
    assert answers["stop"].id_tag_info["status"] == "Accepted"

    check_messages(appliance, identity, "ocpp1.6", recorder, calls=7)

    # started, then stopped in the same or a later commit
    appliance.wait_rows(
        "SELECT 1 FROM transactions WHERE identity = ? AND stopped_at IS NOT NULL", identity
    )
    rows = appliance.query(TRANSACTIONS_SQL, identity)
    assert rows == [
        (str(transaction_id), 2, 1, "TAG-16", t_start, t_stop, 1000.0, 4500.0, 3500.0, "Local")
    ]
    assert appliance.stop() == 0


def _scenario_2x(call: Any, version: str, t0: float) -> Any:
    """Boot, Heartbeat, StatusNotification, Authorize and a Started / Updated / Ended
    transaction, written once for the 2.0.1 and 2.1 `call` modules (same field names)."""
    token = {"id_token": f"TAG-{version}", "type": "ISO14443"}
    evse = {"id": 1, "connector_id": 1}

    def energy(wh: float, when: str) -> list[dict[str, Any]]:
        return [
            {
                "timestamp": when,
                "sampled_value": [
                    {"value": wh, "measurand": "Energy.Active.Import.Register"},
                    {"value": 7400.0, "measurand": "Power.Active.Import"},
                ],
            }
        ]

    async def scenario(cp):
        answers = {}
        answers["boot"] = await cp.call(
            call.BootNotification(
                charging_station={"model": "OcppLib", "vendor_name": "Interop"},
                reason="PowerUp",
            ),
            suppress=False,
        )
        answers["heartbeat"] = await cp.call(call.Heartbeat(), suppress=False)
        answers["status"] = await cp.call(
            call.StatusNotification(
                timestamp=stamp(t0), connector_status="Available", evse_id=1, connector_id=1
            ),
            suppress=False,
        )
        answers["authorize"] = await cp.call(call.Authorize(id_token=token), suppress=False)
        answers["started"] = await cp.call(
            call.TransactionEvent(
                event_type="Started",
                timestamp=stamp(t0 + 1),
                trigger_reason="Authorized",
                seq_no=0,
                transaction_info={"transaction_id": f"tx-{version}", "charging_state": "Charging"},
                evse=evse,
                id_token=token,
                meter_value=energy(1000.0, stamp(t0 + 1)),
            ),
            suppress=False,
        )
        answers["updated"] = await cp.call(
            call.TransactionEvent(
                event_type="Updated",
                timestamp=stamp(t0 + 2),
                trigger_reason="MeterValuePeriodic",
                seq_no=1,
                transaction_info={"transaction_id": f"tx-{version}"},
                meter_value=energy(2500.0, stamp(t0 + 2)),
            ),
            suppress=False,
        )
        answers["ended"] = await cp.call(
            call.TransactionEvent(
                event_type="Ended",
                timestamp=stamp(t0 + 3),
                trigger_reason="StopAuthorized",
                seq_no=2,
                transaction_info={"transaction_id": f"tx-{version}", "stopped_reason": "Local"},
                id_token=token,
                meter_value=energy(4500.0, stamp(t0 + 3)),
            ),
            suppress=False,
        )
        return answers

    return scenario


@pytest.mark.parametrize("version", ["ocpp2.0.1", "ocpp2.1"])
def test_ocpp_library_charge_point_2x(appliance, version):
    if version == "ocpp2.0.1":
        from ocpp.v201 import ChargePoint, call
    else:
        from ocpp.v21 import ChargePoint, call

    identity = f"OCPPLIB-{version.removeprefix('ocpp').replace('.', '')}"
    answers, recorder, subprotocol = asyncio.run(
        run_ocpp_charge_point(
            f"{appliance.url}/{identity}", version, ChargePoint, _scenario_2x(call, version, -60)
        )
    )
    assert subprotocol == version
    assert answers["boot"].status == "Accepted"
    assert answers["boot"].interval == DEFAULT_HEARTBEAT_SEC
    assert_now(answers["boot"].current_time)
    assert_now(answers["heartbeat"].current_time)
    for name in ("authorize", "started", "ended"):
        assert (answers[name].id_token_info or {}).get("status") == "Accepted", answers[name]

    check_messages(appliance, identity, version, recorder, calls=7)
    assert appliance.stop() == 0


# ------------------------------------------------- every action, from its schema


def _resolve(node: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        reference = node["$ref"]
        assert reference.startswith("#/"), reference
        target: Any = root
        for part in reference[2:].split("/"):
            target = target[part]
        node = target
    return node


def minimal_instance(
    node: dict[str, Any], root: dict[str, Any] | None = None, *, full: bool = False
) -> Any:
    """The smallest instance of a schema node: required fields only, the first enum
    value, strings of legal length (date-times and URIs where the format says so),
    numbers at their minimum, arrays of `minItems` items. With `full`, every optional
    field too and at least one item per array (as far as `maxItems` allows)."""
    root = node if root is None else root
    node = _resolve(node, root)
    if "enum" in node:
        return node["enum"][0]
    kind = node.get("type", "object" if "properties" in node else None)
    if kind == "object":
        properties = node.get("properties", {})
        names = list(properties) if full else node.get("required", [])
        return {name: minimal_instance(properties[name], root, full=full) for name in names}
    if kind == "array":
        items = node.get("items", {})
        count = node.get("minItems", 0)
        if full:
            count = min(max(count, 1), node.get("maxItems", count + 1))
        return [minimal_instance(items, root, full=full) for _ in range(count)]
    if kind == "string":
        if node.get("format") == "date-time":
            return stamp()
        if node.get("format") == "uri":
            return "https://example.com/"
        length = max(node.get("minLength", 1), 1)
        return "x" * min(length, node.get("maxLength", length))
    if kind in ("integer", "number"):
        value = node.get("minimum", 1)
        if "maximum" in node:
            value = min(value, node["maximum"])
        return int(value) if kind == "integer" or float(value).is_integer() else value
    if kind == "boolean":
        return False
    if kind is None:  # "any JSON" (DataTransfer data): a string is as good as anything
        return "x"
    raise AssertionError(f"no generator for schema node {node!r}")


def charge_point_actions(version: str) -> list[str]:
    return sorted(FROM_CHARGE_POINT[version] - SEND_ONLY[version])


def load_schema(version: str, name: str) -> dict[str, Any]:
    return json.loads((SCHEMAS / FOLDERS[version] / f"{name}.json").read_text())


def test_generator_knows_schema_keywords():
    """The generator's own checks: it follows $ref, respects bounds, and every schema
    file of every charge-point action exists (a missing one would hide an action)."""
    root = {
        "definitions": {"E": {"type": "string", "enum": ["B", "A"]}},
        "type": "object",
        "properties": {
            "e": {"$ref": "#/definitions/E"},
            "s": {"type": "string", "minLength": 3, "maxLength": 5},
            "n": {"type": "integer", "minimum": 7},
            "a": {"type": "array", "minItems": 2, "items": {"type": "number", "minimum": 0.5}},
            "t": {"type": "string", "format": "date-time"},
            "optional": {"type": "string"},
        },
        "required": ["e", "s", "n", "a", "t"],
    }
    made = minimal_instance(root)
    assert set(made) == {"e", "s", "n", "a", "t"}
    assert (made["e"], made["s"], made["n"], made["a"]) == ("B", "xxx", 7, [0.5, 0.5])
    assert_now(made["t"])
    for version in VERSIONS:
        actions = charge_point_actions(version)
        assert "BootNotification" in actions and "Heartbeat" in actions
        for action in actions:
            for name in (
                request_schema_name(version, action),
                response_schema_name(version, action),
            ):
                assert (SCHEMAS / FOLDERS[version] / f"{name}.json").is_file(), (version, name)


def exchange(ws: Any, frame: list[Any]) -> list[Any]:
    """Send a CALL and return the reply, which must carry its id; a CALL from the
    appliance in between is answered NotImplemented, as a charge point without that
    feature would."""
    ws.send(json.dumps(frame))
    while True:
        reply = json.loads(ws.recv(timeout=10))
        if reply[0] == 2:
            ws.send(json.dumps([4, reply[1], "NotImplemented", "not in this test", {}]))
            continue
        assert reply[1] == frame[1], f"{reply} while waiting for the answer to {frame}"
        return reply


@pytest.mark.parametrize("full", [False, True], ids=["required-only", "every-field"])
@pytest.mark.parametrize("version", VERSIONS)
def test_every_charge_point_action_gets_a_schema_valid_result(appliance, version, full):
    actions = charge_point_actions(version)
    requests = {}
    for action in actions:
        name = request_schema_name(version, action)
        request = minimal_instance(load_schema(version, name), full=full)
        # the generator is proven on every schema before the appliance is judged
        assert schema_errors(version, name, request) == [], (action, request)
        requests[action] = request

    identity = f"WALK-{version.removeprefix('ocpp').replace('.', '')}"
    problems: dict[str, Any] = {}
    answers: dict[str, Any] = {}
    with connect(f"{appliance.url}/{identity}", subprotocols=[version]) as ws:
        assert ws.subprotocol == version
        for number, action in enumerate(actions, 1):
            message_id = f"walk-{number}"
            reply = exchange(ws, [2, message_id, action, requests[action]])
            if reply[0] != 3 or len(reply) != 3:
                problems[action] = reply
                continue
            errors = schema_errors(version, response_schema_name(version, action), reply[2])
            if errors:
                problems[action] = errors
            answers[action] = reply[2]
        if SEND_ONLY[version]:
            # SEND [6] is never answered: the next thing back is the Heartbeat's result
            for action in sorted(SEND_ONLY[version]):
                payload = minimal_instance(load_schema(version, action))
                assert schema_errors(version, action, payload) == []
                ws.send(json.dumps([6, f"send-{action}", action, payload]))
            reply = exchange(ws, [2, "after-send", "Heartbeat", {}])
            assert reply[:2] == [3, "after-send"]

    assert problems == {}
    assert set(answers) == set(actions)
    assert answers["BootNotification"]["status"] == "Accepted"
    assert answers["BootNotification"]["interval"] == DEFAULT_HEARTBEAT_SEC
    rows = appliance.wait_rows(
        "SELECT message_id FROM messages WHERE identity = ? AND direction = 'out'"
        " AND message_type = 3 AND message_id LIKE 'walk-%'",
        identity,
        count=len(actions),
    )
    assert len(rows) == len(actions)
    assert appliance.stop() == 0  # flushes the database: everything is in now
    sends = appliance.query(
        "SELECT direction, message_type, action FROM messages WHERE identity = ?"
        " AND message_id LIKE 'send-%' ORDER BY seq",
        identity,
    )
    assert sends == [("in", 6, action) for action in sorted(SEND_ONLY[version])]


# ------------------------------------------------------------------ 1.6 specifics


class Raw:
    """A bare-bones 1.6 charge point over a synchronous WebSocket."""

    _ids = itertools.count(1)

    def __init__(self, ws: Any) -> None:
        self.ws = ws

    def call(self, action: str, payload: dict[str, Any]) -> list[Any]:
        return exchange(self.ws, [2, f"raw-{next(self._ids)}", action, payload])

    def result(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        reply = self.call(action, payload)
        assert reply[0] == 3, reply
        assert schema_errors("ocpp1.6", response_schema_name("ocpp1.6", action), reply[2]) == []
        return reply[2]


def start_16(cp: Raw, connector: int, tag: str, meter: int, when: str) -> int:
    answer = cp.result(
        "StartTransaction",
        {"connectorId": connector, "idTag": tag, "meterStart": meter, "timestamp": when},
    )
    assert answer["idTagInfo"]["status"] == "Accepted"
    transaction_id = answer["transactionId"]
    assert type(transaction_id) is int and transaction_id > 0
    return transaction_id


def all_transaction_ids(box: Any) -> list[int]:
    rows = box.query("SELECT transaction_id FROM transactions ORDER BY seq")
    return [int(r[0]) for r in rows]


def test_16_transaction_ids_repeat_unique_and_survive_restart(start_appliance):
    identity, other = "IDS-16", "IDS-16-OTHER"
    t_first, t_second, t_third = stamp(-300), stamp(-200), stamp(-100)
    first_box = start_appliance(name="box")
    with (
        connect(f"{first_box.url}/{identity}", subprotocols=["ocpp1.6"]) as ws,
        connect(f"{first_box.url}/{other}", subprotocols=["ocpp1.6"]) as ws_other,
    ):
        cp = Raw(ws)
        first = start_16(cp, 1, "TAG-A", 100, t_first)
        # the same start again (its answer was lost): the same id
        assert start_16(cp, 1, "TAG-A", 100, t_first) == first
        # any difference makes it a new transaction with a bigger id
        second = start_16(cp, 1, "TAG-A", 101, t_second)
        third = start_16(cp, 2, "TAG-B", 100, t_first)
        assert first < second < third
        # the same fields from another charge point are another session: ids are unique
        # per appliance, not per charge point
        from_other = start_16(Raw(ws_other), 1, "TAG-A", 100, t_first)
        assert from_other > third
    first_box.wait_rows("SELECT 1 FROM transactions", count=4)
    assert first_box.stop() == 0
    assert sorted(all_transaction_ids(first_box)) == [first, second, third, from_other]

    second_box = start_appliance(name="box")
    assert second_box.db == first_box.db
    with connect(f"{second_box.url}/{identity}", subprotocols=["ocpp1.6"]) as ws:
        cp = Raw(ws)
        after_restart = start_16(cp, 1, "TAG-C", 500, t_third)
        assert after_restart > from_other
        # a start repeated across the restart still finds its id
        assert start_16(cp, 1, "TAG-A", 101, t_second) == second
        later = start_16(cp, 1, "TAG-C", 600, stamp(-50))
        assert later > after_restart
    second_box.wait_rows("SELECT 1 FROM transactions", count=6)
    # a crash is a restart too: ids handed out before it are never handed out again
    assert second_box.stop(signal.SIGKILL) == -signal.SIGKILL

    third_box = start_appliance(name="box")
    with connect(f"{third_box.url}/{identity}", subprotocols=["ocpp1.6"]) as ws:
        after_crash = start_16(Raw(ws), 1, "TAG-D", 700, stamp())
        assert after_crash > later
    third_box.wait_rows("SELECT 1 FROM transactions", count=7)
    ids = all_transaction_ids(third_box)
    assert len(ids) == len(set(ids)) == 7, ids
    assert ids == [first, second, third, from_other, after_restart, later, after_crash]
    assert third_box.stop() == 0


def test_16_stop_of_unknown_transactions_is_acknowledged_and_recorded(appliance):
    identity = "STOP-16"
    t_start, t_offline, t_unknown, t_stop = stamp(-40), stamp(-30), stamp(-20), stamp(-10)
    with connect(f"{appliance.url}/{identity}", subprotocols=["ocpp1.6"]) as ws:
        cp = Raw(ws)
        cp.result("BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"})
        # -1: what some firmware sends for a transaction started offline
        offline = cp.result(
            "StopTransaction",
            {
                "transactionId": -1,
                "meterStop": 1200,
                "timestamp": t_offline,
                "idTag": "TAG-OFF",
                "reason": "EVDisconnected",
            },
        )
        assert offline["idTagInfo"]["status"] == "Accepted"
        unknown = cp.result(
            "StopTransaction",
            {"transactionId": 987654, "meterStop": 3400, "timestamp": t_unknown},
        )
        assert "idTagInfo" not in unknown or unknown["idTagInfo"]["status"] == "Accepted"
        # a known transaction stopped twice (the first answer was lost): still one session
        known = start_16(cp, 3, "TAG-K", 50, t_start)
        stop = {"transactionId": known, "meterStop": 850, "timestamp": t_stop, "reason": "Remote"}
        assert cp.result("StopTransaction", stop) == cp.result("StopTransaction", stop)
    appliance.wait_rows(
        "SELECT 1 FROM transactions WHERE identity = ? AND stopped_at IS NOT NULL",
        identity,
        count=3,
    )
    rows = appliance.query(
        "SELECT transaction_id, started_at, stopped_at, meter_start_wh, meter_stop_wh,"
        " energy_wh, stop_reason FROM transactions WHERE identity = ? ORDER BY transaction_id",
        identity,
    )
    assert rows == [
        # no start known: no start time, no energy
        ("-1", None, t_offline, None, 1200.0, None, "EVDisconnected"),
        (str(known), t_start, t_stop, 50.0, 850.0, 800.0, "Remote"),
        ("987654", None, t_unknown, None, 3400.0, None, "Local"),
    ]
    errors = appliance.query(
        "SELECT payload FROM messages WHERE identity = ? AND direction = 'out'"
        " AND message_type = 4",
        identity,
    )
    assert errors == []
    assert appliance.stop() == 0


# ------------------------------------------------------------------ 2.x specifics


@pytest.mark.parametrize("version", ["ocpp2.0.1", "ocpp2.1"])
def test_2x_transaction_event_for_unknown_transaction_is_acknowledged(appliance, version):
    identity = f"UNKNOWN-TX-{version.removeprefix('ocpp').replace('.', '')}"
    name = request_schema_name(version, "TransactionEvent")
    token = {"idToken": "TAG-LATE", "type": "ISO14443"}
    events = [
        {
            "eventType": "Updated",
            "timestamp": stamp(-20),
            "triggerReason": "MeterValuePeriodic",
            "seqNo": 7,
            "transactionInfo": {"transactionId": "never-started"},
            "meterValue": [
                {
                    "timestamp": stamp(-20),
                    "sampledValue": [{"value": 3000, "measurand": "Energy.Active.Import.Register"}],
                }
            ],
        },
        {
            "eventType": "Ended",
            "timestamp": stamp(-10),
            "triggerReason": "EVCommunicationLost",
            "seqNo": 8,
            "transactionInfo": {
                "transactionId": "never-started",
                "stoppedReason": "EVDisconnected",
            },
            "idToken": token,
            "offline": True,
        },
    ]
    with connect(f"{appliance.url}/{identity}", subprotocols=[version]) as ws:
        answers = []
        for number, event in enumerate(events):
            assert schema_errors(version, name, event) == []
            reply = exchange(ws, [2, f"late-{number}", "TransactionEvent", event])
            assert reply[:2] == [3, f"late-{number}"], reply
            errors = schema_errors(
                version, response_schema_name(version, "TransactionEvent"), reply[2]
            )
            assert errors == []
            answers.append(reply[2])
    assert answers[1]["idTokenInfo"]["status"] == "Accepted"
    rows = appliance.wait_rows(
        "SELECT direction, message_type, action FROM messages WHERE identity = ?"
        " AND message_id LIKE 'late-%' ORDER BY seq",
        identity,
        count=4,
    )
    assert rows == [("in", 2, "TransactionEvent"), ("out", 3, "TransactionEvent")] * 2
    assert appliance.stop() == 0
