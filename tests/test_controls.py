"""Controls (README "Controls", "Command line" `set` / `call`), as a user drives them
against real charge points.

The charge points are the `ocpp` package from PyPI (1.6, 2.0.1, 2.1), each in a thread
with its own asyncio loop; every frame they receive is recorded as it comes off the wire,
so each test asserts the exact CALL a charge point got and when. Commands are written the
way a user writes them: with Python's `sqlite3` module through a connection of our own
(`UPDATE … ack = 0`, or an `INSERT` of a row that does not exist yet) and with the
`ocpp-appliance set` / `call` command line. The appliance is the real `ocpp-appliance
serve` subprocess.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sqlite3
import statistics
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
import websockets
from ocpp.exceptions import InternalError
from ocpp.exceptions import NotImplementedError as OcppNotImplemented
from ocpp.routing import on

import conftest
from conftest import request_schema_name, run_cli, schema_errors

V16, V201, V21 = "ocpp1.6", "ocpp2.0.1", "ocpp2.1"
ALL_VERSIONS = [V16, V201, V21]
V2X = [V201, V21]

#: what the charge points of this file handle (UnlockConnector with a NotImplemented
#: CALLERROR: the library answers an unhandled 2.1 action with nothing at all)
ACTIONS = {
    V16: [
        "ChangeAvailability",
        "ChangeConfiguration",
        "ClearChargingProfile",
        "DataTransfer",
        "GetConfiguration",
        "RemoteStartTransaction",
        "RemoteStopTransaction",
        "Reset",
        "SetChargingProfile",
        "TriggerMessage",
        "UnlockConnector",
    ],
    V201: [
        "ChangeAvailability",
        "ClearChargingProfile",
        "DataTransfer",
        "GetBaseReport",
        "RequestStartTransaction",
        "RequestStopTransaction",
        "Reset",
        "SetChargingProfile",
        "SetVariables",
        "TriggerMessage",
        "UnlockConnector",
    ],
}
ACTIONS[V21] = ACTIONS[V201]

#: every control state of README "Controls" (below `<identity>.control.`)
CONTROLS = [
    "availability",
    "hardReset.trigger",
    "softReset.trigger",
    "chargeLimit",
    "chargeLimitType",
    "numberOfPhases",
    "requestStartTransaction.idToken",
    "requestStartTransaction.idTokenType",
    "requestStartTransaction.evseId",
    "requestStartTransaction.remoteStartId",
    "requestStartTransaction.chargingProfile",
    "requestStartTransaction.trigger",
    "requestStopTransaction.transactionId",
    "requestStopTransaction.trigger",
    "rpc.method",
    "rpc.payload",
    "rpc.execute",
]
OUTCOME_FOLDERS = [
    "control",
    "control.requestStartTransaction",
    "control.requestStopTransaction",
    "control.rpc",
]


def stamp() -> str:
    now = datetime.now(UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def top_level(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    """Top-level config keys go before TEST_CONFIG, which ends inside [storage]."""
    monkeypatch.setattr(conftest, "TEST_CONFIG", text + conftest.TEST_CONFIG)


# ------------------------------------------------------------ the charge point


@dataclass(frozen=True)
class Received:
    """A CALL as it came off the wire at the charge point."""

    at: float  # time.monotonic()
    message_id: str
    action: str
    payload: dict[str, Any]


class Wire:
    """The connection the `ocpp` ChargePoint talks through. A pump reads the socket all
    the time, so a CALL is recorded when it arrives even while the library is busy in a
    handler that has not answered yet."""

    def __init__(self, station: Station, ws: Any) -> None:
        self.station = station
        self.ws = ws
        self.inbox: asyncio.Queue[str] = asyncio.Queue()

    async def pump(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for text in self.ws:
                frame = json.loads(text)
                if frame[0] == 2:
                    self.station.calls.append(
                        Received(time.monotonic(), frame[1], frame[2], frame[3])
                    )
                self.inbox.put_nowait(text)

    async def recv(self) -> str:
        return await self.inbox.get()

    async def send(self, text: str) -> None:
        frame = json.loads(text)
        if frame[0] in (3, 4):
            self.station.answered[frame[1]] = time.monotonic()
        elif frame[0] == 2:
            self.station.sent.append((time.monotonic(), frame[2]))
        await self.ws.send(text)


def _handler(action: str) -> Any:
    async def handle(self: Any, **kwargs: Any) -> Any:
        return await self.station.answer(action, kwargs)

    handle.__name__ = f"on_{action}"
    return on(action)(handle)


def _charge_point_class(version: str) -> Any:
    if version == V16:
        from ocpp.v16 import ChargePoint
    elif version == V201:
        from ocpp.v201 import ChargePoint
    else:
        from ocpp.v21 import ChargePoint
    handlers = {f"on_{action}": _handler(action) for action in ACTIONS[version]}
    return type(f"TestChargePoint_{version}", (ChargePoint,), handlers)


def _modules(version: str) -> tuple[Any, Any]:
    if version == V16:
        from ocpp.v16 import call, call_result
    elif version == V201:
        from ocpp.v201 import call, call_result
    else:
        from ocpp.v21 import call, call_result
    return call, call_result


class Station:
    """A charge point of the `ocpp` package on its own thread and asyncio loop.

    `answers[action]`: the answer's fields (snake_case, as the library takes them) or a
    function of the request's fields; `delays[action]`: seconds before answering;
    `errors[action]`: an OCPPError raised instead (the library sends it as CALLERROR).
    """

    def __init__(self, appliance: conftest.Appliance, identity: str, version: str) -> None:
        self.appliance = appliance
        self.identity = identity
        self.version = version
        self.call, self.call_result = _modules(version)
        self.calls: list[Received] = []
        self.answered: dict[str, float] = {}
        self.sent: list[tuple[float, str]] = []
        self.answers: dict[str, Any] = {}
        self.delays: dict[str, float] = {}
        self.errors: dict[str, Exception] = {"UnlockConnector": OcppNotImplemented()}
        self._seen = 0
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=identity, daemon=True)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    # --------------------------------------------------------------- life cycle

    def open(self) -> Station:
        """Connect (once); `with station:` does it too, and closes at the end."""
        if not self._thread.is_alive() and not self._ready.is_set():
            self._thread.start()
        assert self._ready.wait(15), f"{self.identity}: did not connect"
        if self._error is not None:
            raise AssertionError(f"{self.identity}: cannot connect: {self._error!r}")
        return self

    def __enter__(self) -> Station:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.loop is not None and self._stop is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)
        assert not self._thread.is_alive(), f"{self.identity}: did not stop"

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self._error = exc
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        url = f"{self.appliance.url}/{self.identity}"
        async with websockets.connect(url, subprotocols=[self.version], open_timeout=10) as ws:
            assert ws.subprotocol == self.version
            wire = Wire(self, ws)
            self.cp = _charge_point_class(self.version)(self.identity, wire, response_timeout=20)
            self.cp.station = self
            tasks = [asyncio.create_task(wire.pump()), asyncio.create_task(self.cp.start())]
            self._ready.set()
            await self._stop.wait()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------- the library's side

    async def answer(self, action: str, request: dict[str, Any]) -> Any:
        delay = self.delays.get(action)
        if delay:
            await asyncio.sleep(delay)
        error = self.errors.get(action)
        if error is not None:
            raise error
        fields = self.answers.get(action, {"status": "Accepted"})
        if callable(fields):
            fields = fields(request)
        return getattr(self.call_result, action)(**fields)

    def send(self, request: Any, timeout: float = 20) -> Any:
        """Send a CALL of ours (an `ocpp` call dataclass) and return the answer."""
        assert self.loop is not None
        future = asyncio.run_coroutine_threadsafe(self.cp.call(request), self.loop)
        return future.result(timeout)

    def boot(self) -> Any:
        if self.version == V16:
            request = self.call.BootNotification(
                charge_point_model="Model-T", charge_point_vendor="TestVendor"
            )
        else:
            request = self.call.BootNotification(
                charging_station={"model": "Model-T", "vendor_name": "TestVendor"},
                reason="PowerUp",
            )
        answer = self.send(request)
        assert answer.status == "Accepted"
        return answer

    def heartbeat(self) -> Any:
        return self.send(self.call.Heartbeat())

    # ----------------------------------------------------------- what arrived

    def take(self, count: int = 1, timeout: float = 10) -> list[Received]:
        """The next `count` CALLs not taken yet, waiting for them."""
        deadline = time.monotonic() + timeout
        while len(self.calls) < self._seen + count:
            if time.monotonic() > deadline:
                got = [(c.action, c.payload) for c in self.calls[self._seen :]]
                raise AssertionError(f"{self.identity}: expected {count} CALLs, got {got}")
            time.sleep(0.01)
        taken = self.calls[self._seen : self._seen + count]
        self._seen += count
        return taken

    def take_one(self, timeout: float = 10) -> tuple[str, dict[str, Any]]:
        [received] = self.take(1, timeout)
        return received.action, received.payload

    def assert_quiet(self, seconds: float = 0.8) -> None:
        """No CALL arrives (beyond those already taken) within `seconds`."""
        time.sleep(seconds)
        extra = [(c.action, c.payload) for c in self.calls[self._seen :]]
        assert extra == [], f"{self.identity}: unexpected CALLs {extra}"


# ------------------------------------------------------------------ the database


def write(appliance: conftest.Appliance, *pairs: tuple[str, Any]) -> float:
    """Write controls with ack = 0 in one transaction, as a user's script does: UPDATE
    the row, or INSERT it where it does not exist yet. Returns when it was committed."""
    with contextlib.closing(sqlite3.connect(appliance.db, timeout=10)) as db:
        with db:
            for state_id, value in pairs:
                cursor = db.execute(
                    "UPDATE states SET val = ?, ack = 0 WHERE id = ?", (value, state_id)
                )
                if cursor.rowcount == 0:
                    db.execute(
                        "INSERT INTO states (id, val, ack) VALUES (?, ?, 0)", (state_id, value)
                    )
        return time.monotonic()


def state(appliance: conftest.Appliance, state_id: str) -> tuple[Any, Any] | None:
    rows = appliance.query("SELECT val, ack FROM states WHERE id = ?", state_id)
    return rows[0] if rows else None


def wait_done(appliance: conftest.Appliance, state_id: str, timeout: float = 10) -> tuple:
    """(val, ack) of a control once the appliance has acknowledged it."""
    rows = appliance.wait_rows(
        "SELECT val, ack FROM states WHERE id = ? AND ack = 1"
        " AND NOT EXISTS (SELECT 1 FROM control_queue WHERE id = ?)",
        state_id,
        state_id,
        timeout=timeout,
    )
    return rows[0]


def outcome(appliance: conftest.Appliance, base: str) -> tuple[Any, str]:
    """(lastResponse parsed as JSON, or "" when empty; lastError) under `base`."""
    response = state(appliance, f"{base}.lastResponse")
    error = state(appliance, f"{base}.lastError")
    assert response is not None and error is not None, f"no outcome states under {base}"
    text = response[0]
    return (json.loads(text) if text else text), error[0]


def control(
    appliance: conftest.Appliance,
    identity: str,
    name: str,
    value: Any,
    folder: str = "control",
    timeout: float = 10,
) -> tuple[Any, str, tuple]:
    """Write `<identity>.control.<name>`, wait until it is done: (lastResponse, lastError,
    (val, ack) of the control)."""
    state_id = f"{identity}.control.{name}"
    write(appliance, (state_id, value))
    done = wait_done(appliance, state_id, timeout)
    response, error = outcome(appliance, f"{identity}.{folder}")
    return response, error, done


def connected(appliance: conftest.Appliance, identity: str) -> None:
    """Wait until the appliance has the charge point connected and its controls created."""
    appliance.wait_rows(
        "SELECT 1 FROM states WHERE id = ? AND val = 1", f"{identity}.info.connected"
    )
    appliance.wait_rows("SELECT 1 FROM states WHERE id = ?", f"{identity}.control.rpc.lastError")


def booted(station: Station) -> Station:
    station.boot()
    connected(station.appliance, station.identity)
    return station


def assert_valid_call(version: str, action: str, payload: dict[str, Any]) -> None:
    """The official schema (our own copy, judged by `jsonschema`) accepts the CALL."""
    assert schema_errors(version, request_schema_name(version, action), payload) == []


def cli(appliance: conftest.Appliance, *args: str) -> Any:
    return run_cli(*args[:1], "--config", str(appliance.folder / "appliance.toml"), *args[1:])


# =========================================================== every control of §6


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_availability_and_resets(start_appliance, version):
    appliance = start_appliance()
    cp = f"AV-{version[4:].replace('.', '')}"
    with Station(appliance, cp, version) as station:
        booted(station)

        response, error, done = control(appliance, cp, "availability", 0)
        action, payload = station.take_one()
        assert action == "ChangeAvailability"
        if version == V16:
            assert payload == {"connectorId": 0, "type": "Inoperative"}
        else:
            assert payload == {"operationalStatus": "Inoperative"}
        assert (response, error, done) == ({"status": "Accepted"}, "", (0, 1))

        response, error, done = control(appliance, cp, "availability", 1)
        action, payload = station.take_one()
        assert action == "ChangeAvailability"
        if version == V16:
            assert payload == {"connectorId": 0, "type": "Operative"}
        else:
            assert payload == {"operationalStatus": "Operative"}
        assert (response, error, done) == ({"status": "Accepted"}, "", (1, 1))

        # the resets: a trigger is any true value and goes back to 0 after the call
        hard, soft = ("Hard", "Soft") if version == V16 else ("Immediate", "OnIdle")
        response, error, done = control(appliance, cp, "hardReset.trigger", 1)
        assert station.take_one() == ("Reset", {"type": hard})
        assert (response, error, done) == ({"status": "Accepted"}, "", (0, 1))
        response, error, done = control(appliance, cp, "softReset.trigger", "true")
        assert station.take_one() == ("Reset", {"type": soft})
        assert (response, error, done) == ({"status": "Accepted"}, "", (0, 1))

        # rejected: the status in plain words, and the state goes back to what is in
        # force (operative); then a success clears lastError
        station.answers["ChangeAvailability"] = {"status": "Rejected"}
        response, error, done = control(appliance, cp, "availability", 0)
        assert station.take_one()[0] == "ChangeAvailability"
        assert response == {"status": "Rejected"}
        assert error == "rejected: Rejected"
        assert done == (1, 1)

        # a CALLERROR from the charge point: its code and description
        station.errors["Reset"] = InternalError("relay stuck")
        response, error, done = control(appliance, cp, "softReset.trigger", 1)
        assert station.take_one() == ("Reset", {"type": soft})
        assert "InternalError" in error and "relay stuck" in error, error
        assert done == (0, 1)

        del station.errors["Reset"]
        response, error, done = control(appliance, cp, "hardReset.trigger", 1)
        assert station.take_one() == ("Reset", {"type": hard})
        assert (response, error, done) == ({"status": "Accepted"}, "", (0, 1))


def _profile(version: str, payload: dict[str, Any]) -> tuple[dict, dict]:
    """(the charging profile, its schedule) of a SetChargingProfile payload."""
    if version == V16:
        profile = payload["csChargingProfiles"]
        return profile, profile["chargingSchedule"]
    profile = payload["chargingProfile"]
    [schedule] = profile["chargingSchedule"]
    return profile, schedule


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_charge_limit_in_watts_and_amps_then_removed(start_appliance, version):
    appliance = start_appliance()
    cp = f"CL-{version[4:].replace('.', '')}"
    purpose = "TxDefaultProfile" if version == V16 else "ChargingStationMaxProfile"
    id_key = "chargingProfileId" if version == V16 else "id"
    with Station(appliance, cp, version) as station:
        booted(station)
        profile_ids = []

        for unit, phases, limit in (("W", 1, 3680), ("A", 3, 16)):
            write(
                appliance,
                (f"{cp}.control.chargeLimitType", unit),
                (f"{cp}.control.numberOfPhases", phases),
            )
            response, error, done = control(appliance, cp, "chargeLimit", limit)
            action, payload = station.take_one()
            assert action == "SetChargingProfile"
            assert_valid_call(version, action, payload)
            if version == V16:
                assert payload["connectorId"] == 0
            else:
                assert payload["evseId"] == 0
            profile, schedule = _profile(version, payload)
            assert profile["chargingProfilePurpose"] == purpose
            assert schedule["chargingRateUnit"] == unit
            [period] = schedule["chargingSchedulePeriod"]
            assert period["startPeriod"] == 0
            assert period["limit"] == limit
            assert period["numberPhases"] == phases
            profile_ids.append(profile[id_key])
            assert (response, error, done) == ({"status": "Accepted"}, "", (limit, 1))

        # one fixed id: each new limit replaces the last
        assert profile_ids[0] == profile_ids[1]
        profile_id = profile_ids[0]
        assert isinstance(profile_id, int)

        # rejected: the status and what was sent, so that the user can try the other unit
        station.answers["SetChargingProfile"] = {"status": "Rejected"}
        write(appliance, (f"{cp}.control.chargeLimitType", "W"))
        response, error, done = control(appliance, cp, "chargeLimit", 7400)
        action, payload = station.take_one()
        profile, schedule = _profile(version, payload)
        assert schedule["chargingRateUnit"] == "W"
        assert "rejected: Rejected" in error, error
        assert purpose in error, error
        assert re.search(rf"stack level\D*{profile['stackLevel']}\b", error), error
        assert re.search(r"\bW\b", error), error
        assert response == {"status": "Rejected"}

        # NULL or empty: the limit is removed, exactly the appliance's profile
        clear = {"id": profile_id} if version == V16 else {"chargingProfileId": profile_id}
        for empty in (None, ""):
            response, error, done = control(appliance, cp, "chargeLimit", empty)
            assert station.take_one() == ("ClearChargingProfile", clear)
            assert (response, error) == ({"status": "Accepted"}, "")
            assert done == (None, 1)  # a cleared limit is NULL


START_PROFILE = {
    V16: {
        "chargingProfileId": 5,
        "stackLevel": 1,
        "chargingProfilePurpose": "TxProfile",
        "chargingProfileKind": "Relative",
        "chargingSchedule": {
            "chargingRateUnit": "A",
            "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 10.0}],
        },
    },
    V201: {
        "id": 5,
        "stackLevel": 1,
        "chargingProfilePurpose": "TxProfile",
        "chargingProfileKind": "Relative",
        "chargingSchedule": [
            {
                "id": 1,
                "chargingRateUnit": "A",
                "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 10.0}],
            }
        ],
    },
}
START_PROFILE[V21] = START_PROFILE[V201]


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_request_start_and_stop_transaction(start_appliance, version):
    appliance = start_appliance()
    cp = f"RS-{version[4:].replace('.', '')}"
    start = "RemoteStartTransaction" if version == V16 else "RequestStartTransaction"
    stop = "RemoteStopTransaction" if version == V16 else "RequestStopTransaction"
    start_folder = "control.requestStartTransaction"
    stop_folder = "control.requestStopTransaction"
    with Station(appliance, cp, version) as station:
        booted(station)
        base = f"{cp}.control.requestStartTransaction"

        # idToken, type, EVSE; remoteStartId 0: the appliance makes one up
        write(
            appliance,
            (f"{base}.idToken", "TAG-0001"),
            (f"{base}.idTokenType", "ISO14443"),
            (f"{base}.evseId", 2),
            (f"{base}.remoteStartId", 0),
        )
        generated = []
        for _ in range(2):
            response, error, done = control(
                appliance, cp, "requestStartTransaction.trigger", 1, start_folder
            )
            action, payload = station.take_one()
            assert action == start
            assert_valid_call(version, action, payload)
            if version == V16:
                assert payload == {"idTag": "TAG-0001", "connectorId": 2}
            else:
                remote_start_id = payload.pop("remoteStartId")
                assert isinstance(remote_start_id, int) and remote_start_id > 0
                generated.append(remote_start_id)
                assert payload == {
                    "idToken": {"idToken": "TAG-0001", "type": "ISO14443"},
                    "evseId": 2,
                }
            assert (response, error, done) == ({"status": "Accepted"}, "", (0, 1))
        if version != V16:
            assert generated[0] != generated[1], "a generated remoteStartId was reused"

        # an explicit remoteStartId, and a charging profile as JSON, passed through
        write(
            appliance,
            (f"{base}.remoteStartId", 77),
            (f"{base}.evseId", 1),
            (f"{base}.chargingProfile", json.dumps(START_PROFILE[version])),
        )
        response, error, done = control(
            appliance, cp, "requestStartTransaction.trigger", 1, start_folder
        )
        action, payload = station.take_one()
        assert action == start
        if version == V16:
            assert payload == {
                "idTag": "TAG-0001",
                "connectorId": 1,
                "chargingProfile": START_PROFILE[V16],
            }
        else:
            assert payload == {
                "idToken": {"idToken": "TAG-0001", "type": "ISO14443"},
                "evseId": 1,
                "remoteStartId": 77,
                "chargingProfile": START_PROFILE[version],
            }
        assert (response, error) == ({"status": "Accepted"}, "")

        # stop with an explicit id
        explicit = 4242 if version == V16 else "TX-EXPLICIT"
        write(appliance, (f"{cp}.control.requestStopTransaction.transactionId", str(explicit)))
        response, error, done = control(
            appliance, cp, "requestStopTransaction.trigger", 1, stop_folder
        )
        assert station.take_one() == (stop, {"transactionId": explicit})
        assert (response, error, done) == ({"status": "Accepted"}, "", (0, 1))

        # a real transaction; then an empty id stops `transactions.last.id`
        if version == V16:
            answer = station.send(
                station.call.StartTransaction(
                    connector_id=1, id_tag="TAG-0001", meter_start=1000, timestamp=stamp()
                )
            )
            transaction = answer.transaction_id
        else:
            transaction = "TX-REAL-9"
            station.send(
                station.call.TransactionEvent(
                    event_type="Started",
                    timestamp=stamp(),
                    trigger_reason="Authorized",
                    seq_no=0,
                    transaction_info={"transaction_id": transaction},
                    id_token={"id_token": "TAG-0001", "type": "ISO14443"},
                    evse={"id": 1, "connector_id": 1},
                )
            )
        appliance.wait_rows(
            "SELECT 1 FROM states WHERE id = ? AND val = ?",
            f"{cp}.transactions.last.id",
            str(transaction),
        )
        # parameter and trigger in one transaction: the parameter is applied first
        write(
            appliance,
            (f"{cp}.control.requestStopTransaction.transactionId", ""),
            (f"{cp}.control.requestStopTransaction.trigger", 1),
        )
        done = wait_done(appliance, f"{cp}.control.requestStopTransaction.trigger")
        assert station.take_one() == (stop, {"transactionId": transaction})
        assert outcome(appliance, f"{cp}.{stop_folder}") == ({"status": "Accepted"}, "")
        assert done == (0, 1)

        # rejected
        station.answers[stop] = {"status": "Rejected"}
        response, error, _ = control(
            appliance, cp, "requestStopTransaction.trigger", 1, stop_folder
        )
        assert station.take_one() == (stop, {"transactionId": transaction})
        assert (response, error) == ({"status": "Rejected"}, "rejected: Rejected")


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_rpc_any_action(start_appliance, version):
    appliance = start_appliance()
    cp = f"RPC-{version[4:].replace('.', '')}"
    with Station(appliance, cp, version) as station:
        booted(station)
        station.answers["DataTransfer"] = {"status": "Accepted", "data": "pong"}
        request = {"vendorId": "com.example", "messageId": "ping", "data": "hello"}
        write(
            appliance,
            (f"{cp}.control.rpc.method", "DataTransfer"),
            (f"{cp}.control.rpc.payload", json.dumps(request)),
        )
        response, error, done = control(appliance, cp, "rpc.execute", 1, "control.rpc")
        assert station.take_one() == ("DataTransfer", request)
        assert (response, error, done) == ({"status": "Accepted", "data": "pong"}, "", (0, 1))
        # the answer is the JSON text of the payload
        assert json.loads(state(appliance, f"{cp}.control.rpc.lastResponse")[0]) == response

        # a CALLERROR from the charge point (it does not implement UnlockConnector)
        unlock = {"connectorId": 1} if version == V16 else {"evseId": 1, "connectorId": 1}
        write(
            appliance,
            (f"{cp}.control.rpc.method", "UnlockConnector"),
            (f"{cp}.control.rpc.payload", json.dumps(unlock)),
        )
        response, error, done = control(appliance, cp, "rpc.execute", 1, "control.rpc")
        assert station.take_one() == ("UnlockConnector", unlock)
        assert "NotImplemented" in error, error
        assert done == (0, 1)

        # a payload that breaks the schema is not sent; lastError names the violation
        write(
            appliance,
            (f"{cp}.control.rpc.method", "Reset"),
            (f"{cp}.control.rpc.payload", json.dumps({"type": "Sideways"})),
        )
        response, error, done = control(appliance, cp, "rpc.execute", 1, "control.rpc")
        assert "Sideways" in error and "type" in error, error
        assert response == ""
        assert done == (0, 1)
        station.assert_quiet()

        # and a success clears lastError
        write(appliance, (f"{cp}.control.rpc.method", "DataTransfer"))
        write(appliance, (f"{cp}.control.rpc.payload", json.dumps(request)))
        response, error, done = control(appliance, cp, "rpc.execute", 1, "control.rpc")
        assert station.take_one() == ("DataTransfer", request)
        assert (response, error) == ({"status": "Accepted", "data": "pong"}, "")


# ------------------------------------------------------- Device Model, configuration


NOTIFY_REPORT = [
    {
        "component": {"name": "EVSE", "evse": {"id": 1}},
        "variable": {"name": "Power"},
        "variable_attribute": [{"type": "MaxSet", "value": "11000", "mutability": "ReadWrite"}],
        "variable_characteristics": {
            "data_type": "decimal",
            "unit": "W",
            "supports_monitoring": False,
        },
    },
    {
        "component": {"name": "SampledDataCtrlr"},
        "variable": {"name": "TxUpdatedInterval"},
        "variable_attribute": [{"type": "Actual", "value": "60"}],
        "variable_characteristics": {"data_type": "integer", "supports_monitoring": False},
    },
    {
        "component": {"name": "Connector", "evse": {"id": 1, "connector_id": 2}},
        "variable": {"name": "AvailabilityState"},
        "variable_attribute": [{"type": "Actual", "value": "Available", "mutability": "ReadOnly"}],
        "variable_characteristics": {"data_type": "string", "supports_monitoring": False},
    },
]
MAX_SET = "dm.EVSE@1.Power.MaxSet.value"
INTERVAL = "dm.SampledDataCtrlr.TxUpdatedInterval.Actual.value"
READ_ONLY = "dm.Connector@1-2.AvailabilityState.Actual.value"


def _variable_results(status: str) -> Any:
    def answer(request: dict[str, Any]) -> dict[str, Any]:
        return {
            "set_variable_result": [
                {
                    "attribute_type": data.get("attribute_type", "Actual"),
                    "attribute_status": status,
                    "component": data["component"],
                    "variable": data["variable"],
                }
                for data in request["set_variable_data"]
            ]
        }

    return answer


def _device_model_station(appliance: conftest.Appliance, cp: str, version: str) -> Station:
    """A 2.x station after boot: GetBaseReport arrives, its NotifyReport fills `dm.*`."""
    station = Station(appliance, cp, version).open()
    booted(station)
    action, payload = station.take_one()
    assert action == "GetBaseReport"
    assert payload["reportBase"] == "FullInventory"
    assert isinstance(payload["requestId"], int)
    station.send(
        station.call.NotifyReport(
            request_id=payload["requestId"],
            generated_at=stamp(),
            seq_no=0,
            tbc=False,
            report_data=NOTIFY_REPORT,
        )
    )
    appliance.wait_rows(
        "SELECT 1 FROM objects WHERE id IN (?, ?, ?)",
        f"{cp}.{MAX_SET}",
        f"{cp}.{INTERVAL}",
        f"{cp}.{READ_ONLY}",
        count=3,
    )
    return station


@pytest.mark.parametrize("version", V2X)
def test_device_model_write_becomes_set_variables(start_appliance, version):
    appliance = start_appliance("[device_model]\nfetch_on_boot = true\n")
    cp = f"DM-{version[4:].replace('.', '')}"
    with _device_model_station(appliance, cp, version) as station:
        writable = dict(
            appliance.query("SELECT id, writable FROM objects WHERE id LIKE ?", f"{cp}.dm.%")
        )
        assert writable[f"{cp}.{MAX_SET}"] == 1
        assert writable[f"{cp}.{INTERVAL}"] == 1
        assert writable[f"{cp}.{READ_ONLY}"] == 0
        assert float(state(appliance, f"{cp}.{MAX_SET}")[0]) == 11000

        # accepted: ack 1, the value kept
        station.answers["SetVariables"] = _variable_results("Accepted")
        write(appliance, (f"{cp}.{MAX_SET}", 7400))
        done = wait_done(appliance, f"{cp}.{MAX_SET}")
        action, payload = station.take_one()
        assert action == "SetVariables"
        assert payload == {
            "setVariableData": [
                {
                    "attributeType": "MaxSet",
                    "attributeValue": "7400",
                    "component": {"name": "EVSE", "evse": {"id": 1}},
                    "variable": {"name": "Power"},
                }
            ]
        }
        assert float(done[0]) == 7400 and done[1] == 1
        response, error = outcome(appliance, f"{cp}.control")
        assert error == ""
        assert response["setVariableResult"][0]["attributeStatus"] == "Accepted"

        # rejected: lastError names the status
        station.answers["SetVariables"] = _variable_results("Rejected")
        write(appliance, (f"{cp}.{INTERVAL}", 30))
        wait_done(appliance, f"{cp}.{INTERVAL}")
        assert station.take_one() == (
            "SetVariables",
            {
                "setVariableData": [
                    {
                        "attributeType": "Actual",
                        "attributeValue": "30",
                        "component": {"name": "SampledDataCtrlr"},
                        "variable": {"name": "TxUpdatedInterval"},
                    }
                ]
            },
        )
        response, error = outcome(appliance, f"{cp}.control")
        assert "Rejected" in error, error
        assert response["setVariableResult"][0]["attributeStatus"] == "Rejected"

        # a read-only variable is not written: SQLite itself refuses, nothing changes
        before = state(appliance, f"{cp}.{READ_ONLY}")
        with pytest.raises(sqlite3.IntegrityError, match="not a writable state"):
            write(appliance, (f"{cp}.{READ_ONLY}", "Unavailable"))
        assert state(appliance, f"{cp}.{READ_ONLY}") == before
        station.assert_quiet()

        # a success clears lastError
        station.answers["SetVariables"] = _variable_results("Accepted")
        write(appliance, (f"{cp}.{MAX_SET}", 3680.5))
        wait_done(appliance, f"{cp}.{MAX_SET}")
        action, payload = station.take_one()
        assert payload["setVariableData"][0]["attributeValue"] == "3680.5"
        assert outcome(appliance, f"{cp}.control")[1] == ""


CONFIGURATION = [
    {"key": "MeterValueSampleInterval", "readonly": False, "value": "0"},
    {"key": "HeartbeatInterval", "readonly": False, "value": "300"},
    {"key": "NumberOfConnectors", "readonly": True, "value": "1"},
]


def _configured_station(appliance: conftest.Appliance, cp: str) -> Station:
    """A 1.6 charge point after boot: GetConfiguration arrives, its keys fill `config.*`."""
    station = Station(appliance, cp, V16)
    station.answers["GetConfiguration"] = {"configuration_key": CONFIGURATION}
    station.open()
    booted(station)
    action, payload = station.take_one()
    assert action == "GetConfiguration"
    assert payload.get("key") in (None, [])  # all keys
    appliance.wait_rows(
        "SELECT 1 FROM objects WHERE id LIKE ?", f"{cp}.config.%", count=len(CONFIGURATION)
    )
    return station


def test_configuration_16_write_becomes_change_configuration(start_appliance):
    appliance = start_appliance("[device_model]\nfetch_on_boot = true\n")
    cp = "CFG-16"
    with _configured_station(appliance, cp) as station:
        rows = appliance.query(
            "SELECT s.id, s.val, o.writable FROM states s JOIN objects o ON o.id = s.id"
            " WHERE s.id LIKE ? ORDER BY s.id",
            f"{cp}.config.%",
        )
        assert rows == [
            (f"{cp}.config.HeartbeatInterval", "300", 1),
            (f"{cp}.config.MeterValueSampleInterval", "0", 1),
            (f"{cp}.config.NumberOfConnectors", "1", 0),
        ]

        # accepted (this is how a user makes a wallbox send meter values)
        write(appliance, (f"{cp}.config.MeterValueSampleInterval", 60))
        done = wait_done(appliance, f"{cp}.config.MeterValueSampleInterval")
        assert station.take_one() == (
            "ChangeConfiguration",
            {"key": "MeterValueSampleInterval", "value": "60"},
        )
        assert str(done[0]) == "60" and done[1] == 1
        assert outcome(appliance, f"{cp}.control") == ({"status": "Accepted"}, "")

        # RebootRequired is reported in control.lastResponse
        station.answers["ChangeConfiguration"] = {"status": "RebootRequired"}
        write(appliance, (f"{cp}.config.HeartbeatInterval", "120"))
        wait_done(appliance, f"{cp}.config.HeartbeatInterval")
        assert station.take_one() == (
            "ChangeConfiguration",
            {"key": "HeartbeatInterval", "value": "120"},
        )
        response, error = outcome(appliance, f"{cp}.control")
        assert response == {"status": "RebootRequired"}
        assert error == ""

        # rejected
        station.answers["ChangeConfiguration"] = {"status": "Rejected"}
        write(appliance, (f"{cp}.config.HeartbeatInterval", "5"))
        wait_done(appliance, f"{cp}.config.HeartbeatInterval")
        assert station.take_one()[0] == "ChangeConfiguration"
        assert outcome(appliance, f"{cp}.control") == ({"status": "Rejected"}, "rejected: Rejected")

        # a read-only key is not written, nothing is sent: SQLite itself refuses
        with pytest.raises(sqlite3.IntegrityError, match="not a writable state"):
            write(appliance, (f"{cp}.config.NumberOfConnectors", "2"))
        assert state(appliance, f"{cp}.config.NumberOfConnectors") != "2"
        station.assert_quiet()

        # the CLI writes a config key just the same
        station.answers["ChangeConfiguration"] = {"status": "Accepted"}
        result = cli(appliance, "set", f"{cp}.config.MeterValueSampleInterval", "15")
        assert result.returncode == 0, result.stderr
        assert station.take_one() == (
            "ChangeConfiguration",
            {"key": "MeterValueSampleInterval", "value": "15"},
        )
        assert json.loads(result.stdout) == {"status": "Accepted"}


@pytest.mark.parametrize("version", [V16, V201])
def test_rejected_write_does_not_leave_the_rejected_value_as_confirmed(start_appliance, version):
    """A `dm.*.value` / `config.*` state mirrors the charge point. The issue: "the value
    updated when accepted" — after a rejected write the state must not claim, with
    ack = 1, a value the charge point refused; it keeps the charge point's value."""
    appliance = start_appliance("[device_model]\nfetch_on_boot = true\n")
    if version == V16:
        cp, target, before = "REJ-16", "config.HeartbeatInterval", "300"
        station = _configured_station(appliance, cp)
        station.answers["ChangeConfiguration"] = {"status": "Rejected"}
    else:
        cp, target, before = "REJ-201", INTERVAL, "60"
        station = _device_model_station(appliance, cp, version)
        station.answers["SetVariables"] = _variable_results("Rejected")
    with station:
        write(appliance, (f"{cp}.{target}", 5))
        val, ack = wait_done(appliance, f"{cp}.{target}")
        assert station.take_one()[0] in ("ChangeConfiguration", "SetVariables")
        assert "Rejected" in outcome(appliance, f"{cp}.control")[1]
        assert ack == 1
        assert str(val) == before, (
            f"{target} reads {val!r} (ack 1) after the charge point rejected it; it still"
            f" has {before!r}"
        )


# ========================================================== parameters (§6)


def test_parameters_are_taken_at_once_without_a_call(start_appliance):
    appliance = start_appliance()
    stations = [Station(appliance, "PAR-16", V16), Station(appliance, "PAR-21", V21)]
    with stations[0] as s16, stations[1] as s21:
        for station in (s16, s21):
            booted(station)
        for station in (s16, s21):
            cp = station.identity
            # a previous outcome, which parameters must leave alone
            control(appliance, cp, "availability", 1)
            station.take_one()
            before = outcome(appliance, f"{cp}.control")
            parameters = [
                ("chargeLimitType", "W"),
                ("numberOfPhases", 1),
                ("requestStartTransaction.idToken", "TAG-PARAM"),
                ("requestStartTransaction.idTokenType", "eMAID"),
                ("requestStartTransaction.evseId", 2),
                ("requestStartTransaction.remoteStartId", 12),
                ("requestStartTransaction.chargingProfile", "{}"),
                ("requestStopTransaction.transactionId", "TX-PARAM"),
                ("rpc.method", "Reset"),
                ("rpc.payload", '{"type": "Hard"}'),
            ]
            # one by one, and every one acknowledged promptly
            for name, value in parameters:
                state_id = f"{cp}.control.{name}"
                started = time.monotonic()
                write(appliance, (state_id, value))
                assert wait_done(appliance, state_id, timeout=5) == (value, 1)
                assert time.monotonic() - started < 3
            # an INSERT of a row that does not exist yet is a command too
            state_id = f"{cp}.control.rpc.payload"
            with contextlib.closing(sqlite3.connect(appliance.db, timeout=10)) as db, db:
                db.execute("DELETE FROM states WHERE id = ?", (state_id,))
                db.execute(
                    "INSERT INTO states (id, val, ack) VALUES (?, ?, 0)",
                    (state_id, '{"type": "Soft"}'),
                )
            assert wait_done(appliance, state_id) == ('{"type": "Soft"}', 1)
            station.assert_quiet(0.6)
            assert outcome(appliance, f"{cp}.control") == before
            for folder in OUTCOME_FOLDERS[1:]:
                assert outcome(appliance, f"{cp}.{folder}") == ("", "")


# ================================================================= outcomes (§6)


def test_not_connected_fails_at_once(start_appliance):
    appliance = start_appliance()
    cp = "GONE-201"
    with Station(appliance, cp, V201) as station:
        booted(station)
    appliance.wait_rows("SELECT 1 FROM states WHERE id = ? AND val = 0", f"{cp}.info.connected")

    started = time.monotonic()
    response, error, done = control(appliance, cp, "hardReset.trigger", 1)
    assert time.monotonic() - started < 3
    assert (response, error, done) == ("", "not connected", (0, 1))

    response, error, done = control(appliance, cp, "rpc.execute", 1, "control.rpc")
    assert (error, done) == ("not connected", (0, 1))

    result = cli(appliance, "set", f"{cp}.control.availability", "false")
    assert result.returncode == 1
    assert "not connected" in result.stderr
    assert station.calls == []


def test_timeouts_no_answer_and_no_first_call(start_appliance, monkeypatch):
    top_level(monkeypatch, "call_timeout_sec = 1\n")
    appliance = start_appliance()

    # connected, has called, never answers in time
    cp = "SLOW-16"
    with Station(appliance, cp, V16) as station:
        booted(station)
        station.delays["Reset"] = 2.5
        started = time.monotonic()
        response, error, done = control(appliance, cp, "softReset.trigger", 1)
        elapsed = time.monotonic() - started
        assert station.take_one() == ("Reset", {"type": "Soft"})
        assert re.search(r"\b1 s\b", error), error
        assert response == ""
        assert done == (0, 1)
        assert 0.9 < elapsed < 4, elapsed

        # the late answer harms nothing; a success clears lastError
        station.delays.clear()
        conftest.wait_for(lambda: station.calls[-1].message_id in station.answered, 5)
        response, error, done = control(appliance, cp, "hardReset.trigger", 1)
        assert station.take_one() == ("Reset", {"type": "Hard"})
        assert (response, error, done) == ({"status": "Accepted"}, "", (0, 1))

    # connected, but no CALL of its own within call_timeout_sec: nothing is sent
    cp = "MUTE-201"
    with Station(appliance, cp, V201) as station:
        connected_wait = time.monotonic() + 10
        while state(appliance, f"{cp}.control.availability") is None:
            assert time.monotonic() < connected_wait, "controls never created"
            time.sleep(0.05)
        response, error, done = control(appliance, cp, "availability", 0)
        assert re.search(r"\b1 s\b", error), error
        assert re.search(r"no (message|call)|not (yet )?sent|first", error, re.I), error
        assert done == (1, 1)  # not in force: back to operative
        station.assert_quiet(0.5)


def test_nothing_is_sent_before_the_first_call_and_defaults(start_appliance):
    appliance = start_appliance()
    cp = "QUIET-21"
    with Station(appliance, cp, V21) as station:
        # control states with defaults, writable, on first connection (no CALL yet)
        connected(appliance, cp)
        rows = dict(
            (row[0].removeprefix(f"{cp}."), row[1:])
            for row in appliance.query(
                "SELECT s.id, s.val, s.ack, o.writable FROM states s"
                " LEFT JOIN objects o ON o.id = s.id WHERE s.id LIKE ?",
                f"{cp}.control.%",
            )
        )
        for name in CONTROLS:
            assert f"control.{name}" in rows, f"control.{name} not created"
            _, ack, writable = rows[f"control.{name}"]
            assert (ack, writable) == (1, 1), name
        for folder in OUTCOME_FOLDERS:
            assert rows[f"{folder}.lastError"][:2] == ("", 1)
            assert rows[f"{folder}.lastResponse"][:2] == ("", 1)
        for trigger in (
            "hardReset",
            "softReset",
            "requestStartTransaction",
            "requestStopTransaction",
        ):
            assert rows[f"control.{trigger}.trigger"][0] == 0
        assert rows["control.rpc.execute"][0] == 0
        assert rows["control.availability"][0] == 1
        assert rows["control.chargeLimit"][0] in (None, "")
        assert rows["control.chargeLimitType"][0] in ("A", "W")
        assert rows["control.numberOfPhases"][0] in (1, 2, 3)
        assert rows["control.requestStopTransaction.transactionId"][0] == ""

        # a control written now waits for the charge point's first CALL
        write(appliance, (f"{cp}.control.availability", 0))
        station.assert_quiet(1.2)
        assert state(appliance, f"{cp}.control.availability") == (0, 0)
        station.heartbeat()
        heartbeat_sent = station.sent[-1][0]
        [received] = station.take(1)
        assert (received.action, received.payload) == (
            "ChangeAvailability",
            {"operationalStatus": "Inoperative"},
        )
        assert received.at > heartbeat_sent
        assert wait_done(appliance, f"{cp}.control.availability") == (0, 1)
        assert outcome(appliance, f"{cp}.control") == ({"status": "Accepted"}, "")


def test_controls_written_while_stopped_are_not_run(start_appliance):
    appliance = start_appliance()
    cp = "STALE-16"
    with Station(appliance, cp, V16) as station:
        booted(station)
    assert appliance.stop() == 0

    write(
        appliance,
        (f"{cp}.control.availability", 0),
        (f"{cp}.control.hardReset.trigger", 1),
    )
    write(appliance, (f"{cp}.control.rpc.method", "Reset"))
    write(appliance, (f"{cp}.control.rpc.execute", 1))

    appliance = start_appliance()  # the same folder and database
    with Station(appliance, cp, V16) as station:
        booted(station)
        assert wait_done(appliance, f"{cp}.control.hardReset.trigger") == (0, 1)
        assert wait_done(appliance, f"{cp}.control.availability")[1] == 1
        assert wait_done(appliance, f"{cp}.control.rpc.execute") == (0, 1)
        assert outcome(appliance, f"{cp}.control")[1] == "not run: the appliance was not running"
        assert (
            outcome(appliance, f"{cp}.control.rpc")[1] == "not run: the appliance was not running"
        )
        station.assert_quiet(1.0)
        assert station.calls == []


def test_two_controls_in_one_transaction_run_one_after_the_other(start_appliance):
    appliance = start_appliance()
    cp = "PAIR-201"
    with Station(appliance, cp, V201) as station:
        booted(station)
        station.delays["ChangeAvailability"] = 1.0
        write(
            appliance,
            (f"{cp}.control.availability", 0),
            (f"{cp}.control.softReset.trigger", 1),
        )
        assert wait_done(appliance, f"{cp}.control.availability") == (0, 1)
        assert wait_done(appliance, f"{cp}.control.softReset.trigger") == (0, 1)
        first, second = station.take(2)
        assert (first.action, first.payload) == (
            "ChangeAvailability",
            {"operationalStatus": "Inoperative"},
        )
        assert (second.action, second.payload) == ("Reset", {"type": "OnIdle"})
        # one CALL in flight: the second left only after the first was answered
        assert second.at >= station.answered[first.message_id]
        assert second.at - first.at >= 0.9
        assert outcome(appliance, f"{cp}.control") == ({"status": "Accepted"}, "")
        station.assert_quiet(0.5)


# ======================================================================= CLI (§8)


def test_cli_set_and_call(start_appliance):
    appliance = start_appliance()
    cp = "CLI-201"
    with Station(appliance, cp, V201) as station:
        booted(station)

        result = cli(appliance, "set", f"{cp}.control.availability", "false")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == {"status": "Accepted"}
        assert station.take_one() == ("ChangeAvailability", {"operationalStatus": "Inoperative"})
        assert state(appliance, f"{cp}.control.availability") == (0, 1)

        # a parameter: taken, exit 0, no call
        result = cli(appliance, "set", f"{cp}.control.chargeLimitType", "W")
        assert result.returncode == 0, result.stderr
        assert state(appliance, f"{cp}.control.chargeLimitType") == ("W", 1)
        station.assert_quiet(0.5)

        # a failure: exit 1, the error on stderr
        station.answers["Reset"] = {"status": "Rejected"}
        result = cli(appliance, "set", f"{cp}.control.hardReset.trigger", "true")
        assert result.returncode == 1
        assert "rejected: Rejected" in result.stderr
        assert station.take_one() == ("Reset", {"type": "Immediate"})

        # call: the charge point's answer as JSON, exit 0
        station.answers["DataTransfer"] = {"status": "Accepted", "data": {"echo": [1, 2]}}
        request = {"vendorId": "com.example", "messageId": "m1", "data": "x"}
        result = cli(appliance, "call", cp, "DataTransfer", json.dumps(request))
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == {"status": "Accepted", "data": {"echo": [1, 2]}}
        assert station.take_one() == ("DataTransfer", request)

        # call: a CALLERROR → exit 1 with its code
        unlock = {"evseId": 1, "connectorId": 1}
        result = cli(appliance, "call", cp, "UnlockConnector", json.dumps(unlock))
        assert result.returncode == 1
        assert "NotImplemented" in result.stderr
        assert station.take_one() == ("UnlockConnector", unlock)


# ================================================================ latency (§6)


def test_pick_up_latency(start_appliance):
    appliance = start_appliance()
    cp = "FAST-201"
    with Station(appliance, cp, V201) as station:
        booted(station)
        latencies = []
        for i in range(6):
            value = i % 2
            written = write(appliance, (f"{cp}.control.availability", value))
            [received] = station.take(1, timeout=5)
            latencies.append(received.at - written)
            wait_done(appliance, f"{cp}.control.availability")
        print(
            f"write → CALL at the charge point: median {statistics.median(latencies) * 1000:.0f}"
            f" ms, max {max(latencies) * 1000:.0f} ms ({[round(x * 1000) for x in latencies]})"
        )
        assert max(latencies) < 2.0, latencies
