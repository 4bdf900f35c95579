"""The station layer as a charge point and an operator meet it (issue 12): decide, then
do — a refused call leaves nothing but its frame and the error; an exact retry is
applied once; one connection's failure is that connection's alone; connection life is
published as events."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
import trio
from test_transport import assert_heartbeat_answered, closed_by_server, in_thread, open_client
from test_tree_sessions import Station, boot16, meter_rows, sv16
from websockets.sync.client import connect

from appliance.domain import VendorData
from appliance.station import Booted, Connected, Disconnected
from appliance.tree import Tree
from appliance.versions import VERSIONS
from conftest import in_process_server, query, wait_for

TRANSACTION_DATA = [
    {
        "timestamp": "2026-11-30T10:00:00Z",
        "sampledValue": [
            sv16("1234", "Energy.Active.Import.Register", "Wh", context="Transaction.End"),
            sv16("7000", "Power.Active.Import", "W"),
        ],
    }
]


def stop_payload(**extra: Any) -> dict[str, Any]:
    return {
        "transactionId": 7,
        "timestamp": "2026-11-30T10:00:00Z",
        "transactionData": TRANSACTION_DATA,
        **extra,
    }


def test_a_refused_stop_leaves_only_its_frames(appliance):
    """A StopTransaction without meterStop, sent three times: three CALLERRORs, and not
    one of its readings stored (issue 12, point 3)."""
    with Station(appliance.url, "REFUSED") as cp:
        boot16(cp)
        answers = [cp.call("StopTransaction", stop_payload()) for _ in range(3)]
        assert [a[0] for a in answers] == [4, 4, 4]
        assert {a[2] for a in answers} == {"OccurenceConstraintViolation"}
        cp.ok("Heartbeat", {})  # committed in order: the stops are in the database by now
        appliance.wait_rows(
            "SELECT 1 FROM messages WHERE identity = 'REFUSED' AND action = 'Heartbeat'", count=2
        )
    assert meter_rows(appliance, "REFUSED") == []
    errors = appliance.query(
        "SELECT count(*) FROM messages WHERE identity = 'REFUSED' AND message_type = 4"
    )
    assert errors == [(3,)]
    stored = appliance.query(
        "SELECT count(*) FROM transactions WHERE identity = 'REFUSED' AND stopped_at IS NOT NULL"
    )
    assert stored == [(0,)]


def test_an_exact_retry_is_answered_again_and_applied_once(appliance):
    """The same stop with meterStop three times (new message ids, as after a lost answer):
    three answers, its readings once; a different stop adds its own (issue 12, point 3)."""
    with Station(appliance.url, "RETRY") as cp:
        boot16(cp)
        for _ in range(3):
            cp.ok("StopTransaction", stop_payload(meterStop=1234))
        data = json.loads(json.dumps(TRANSACTION_DATA))
        data[0]["timestamp"] = "2026-11-30T10:05:00Z"
        cp.ok("StopTransaction", {**stop_payload(meterStop=1300), "transactionData": data})
        cp.ok("Heartbeat", {})
        appliance.wait_rows(
            "SELECT 1 FROM messages WHERE identity = 'RETRY' AND action = 'Heartbeat'", count=2
        )
    rows = wait_for(
        lambda: len(meter_rows(appliance, "RETRY")) >= 4 and meter_rows(appliance, "RETRY")
    )
    assert len(rows) == 4, rows
    frames = appliance.query(
        "SELECT count(*) FROM messages WHERE identity = 'RETRY' AND action = 'StopTransaction'"
        " AND direction = 'in'"
    )
    assert frames == [(4,)]  # every frame is kept, retries too


def heartbeats_answered(url: str, identity: str, count: int = 3) -> None:
    ws = open_client(f"{url}/{identity}", subprotocols=["ocpp1.6"])
    try:
        for n in range(count):
            assert_heartbeat_answered(ws, f"hb{n}")
    finally:
        ws.close()


async def test_a_handler_that_raises_gets_internal_error_and_the_connection_stays(
    tmp_path, monkeypatch
):
    """A version handler that raises: the peer gets InternalError, its connection and
    every other one carry on."""

    def broken(ctx: Any, payload: Any) -> Any:
        raise RuntimeError("a bug in a handler")

    monkeypatch.setitem(VERSIONS["ocpp1.6"].handlers, "DataTransfer", broken)
    with trio.fail_after(30):
        async with in_process_server(tmp_path) as running:
            ws = await in_thread(open_client, f"{running.url}/BROKEN", subprotocols=["ocpp1.6"])
            await in_thread(ws.send, json.dumps([2, "d1", "DataTransfer", {"vendorId": "x"}]))
            answer = json.loads(await in_thread(ws.recv, timeout=5))
            assert answer[:3] == [4, "d1", "InternalError"]
            await in_thread(assert_heartbeat_answered, ws, "after")
            await in_thread(heartbeats_answered, running.url, "OTHER")
            await in_thread(ws.close)


async def test_an_unexpected_error_closes_only_that_connection_with_1011(
    tmp_path, monkeypatch, caplog
):
    """Something fails after the answer (here: the tree, for one vendor's data): that
    connection is closed with 1011 and logged once with its identity and a traceback;
    its frame is in `messages`; the other charge point's heartbeats are answered on
    (issue 12, point 1)."""
    real = Tree._handlers[VendorData]

    def fails_for_one(tree: Tree, identity: str, update: VendorData) -> None:
        if identity == "FAILING":
            raise RuntimeError("the tree cannot take this")
        real(tree, identity, update)

    monkeypatch.setitem(Tree._handlers, VendorData, fails_for_one)
    caplog.set_level(logging.INFO, logger="appliance")
    with trio.fail_after(30):
        async with in_process_server(tmp_path) as running:
            other = await in_thread(open_client, f"{running.url}/STEADY", subprotocols=["ocpp1.6"])
            await in_thread(assert_heartbeat_answered, other, "before")
            ws = await in_thread(open_client, f"{running.url}/FAILING", subprotocols=["ocpp1.6"])
            frame = [2, "d1", "DataTransfer", {"vendorId": "x", "data": "vin"}]
            await in_thread(ws.send, json.dumps(frame))
            code = await in_thread(closed_by_server, ws)
            assert code == 1011
            await in_thread(assert_heartbeat_answered, other, "after")
            await wait_for_rows(running.db, "FAILING", "DataTransfer")
            await in_thread(other.close)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert "FAILING" in errors[0].getMessage()
    assert errors[0].exc_info is not None
    assert "RuntimeError: the tree cannot take this" in errors[0].getMessage()


async def wait_for_rows(db: Any, identity: str, action: str) -> None:
    sql = "SELECT count(*) FROM messages WHERE identity = ? AND action = ? AND direction = 'in'"
    for _ in range(200):
        if query(db, sql, identity, action)[0][0]:
            return
        await trio.sleep(0.05)
    pytest.fail(f"the {action} frame of {identity} is not in messages")


async def test_connection_life_is_published_as_events(tmp_path):
    """A subscriber (controls, a dashboard) hears Connected, Booted and Disconnected."""
    with trio.fail_after(30):
        async with in_process_server(tmp_path) as running:
            events = running.hub.subscribe()

            def charge_point() -> None:
                with connect(f"{running.url}/EVENTS", subprotocols=["ocpp1.6"]) as ws:
                    boot = {"chargePointVendor": "V", "chargePointModel": "M"}
                    ws.send(json.dumps([2, "b", "BootNotification", boot]))
                    assert json.loads(ws.recv(timeout=5))[0] == 3

            await in_thread(charge_point)
            seen = []
            while len(seen) < 3:
                event = await events.receive()
                seen.append((type(event), event.station.identity))
            assert seen == [
                (Connected, "EVENTS"),
                (Booted, "EVENTS"),
                (Disconnected, "EVENTS"),
            ]
            assert "EVENTS" not in running.stations


def test_a_retry_is_still_the_latest_call_in_the_raw_capture(appliance):
    """B, A, B again (a retry): readings of each once, and `.raw` shows B, the latest
    CALL of the action (README "`states` and `objects`")."""
    identity = "RECAPTURE"

    def sample(when: str, watts: str) -> dict[str, Any]:
        return {
            "connectorId": 1,
            "meterValue": [
                {"timestamp": when, "sampledValue": [sv16(watts, "Power.Active.Import", "W")]}
            ],
        }

    first, second = sample("2026-11-30T10:00:00Z", "100"), sample("2026-11-30T10:01:00Z", "200")
    with Station(appliance.url, identity) as cp:
        boot16(cp)
        for payload in (second, first, second):
            cp.ok("MeterValues", payload)
        cp.ok("Heartbeat", {})
        appliance.wait_rows(
            "SELECT 1 FROM messages WHERE identity = ? AND action = 'Heartbeat'", identity, count=2
        )
        raw = appliance.query(
            "SELECT val FROM states WHERE id = ?", f"{identity}.ocpp.ocpp1_6.in.MeterValues.raw"
        )[0][0]
    assert json.loads(raw) == second
    assert len(meter_rows(appliance, identity)) == 2
