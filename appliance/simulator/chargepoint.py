"""One simulated charge point: a connection loop (connect, boot, live, reconnect) and a
wallbox's behaviour, independent of the OCPP version.

`Ocpp16ChargePoint` and `Ocpp2xChargePoint` (in `ocpp16` / `ocpp2x`) say how each step is
spelled on the wire and how the central system's calls are answered. Every frame goes
through the project's sans-I/O `Session`, so everything sent is schema-validated; the
outgoing-call machinery is the appliance's own (`station.Calls`).
"""

from __future__ import annotations

import json
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, Protocol

import trio
from websockets.protocol import State

from appliance.rpc import (
    DIALECTS,
    CallReceived,
    Fault,
    LocalProtocolError,
    ProtocolViolation,
    SchemaSet,
    Session,
)
from appliance.simulator.minimal import minimal_response
from appliance.simulator.options import Options, Stats
from appliance.simulator.physics import Meter, Reading, Vehicle
from appliance.station.calls import CallFailed, Calls
from appliance.transport.client import ConnectError, open_websocket
from appliance.transport.websocket import WebSocket
from appliance.versions.tables import FROM_CSMS


class Fleet(Protocol):
    """What a charge point uses of the fleet it belongs to (`fleet.Fleet`)."""

    options: Options
    stats: Stats
    stopping: bool
    #: some charge point of the fleet got in (fleet.Fleet)
    reached: bool
    ssl_context: ssl.SSLContext | None
    schemas: dict[str, SchemaSet]

    def fatal(self, message: str) -> None: ...

    def notice(self, message: str) -> None: ...


log = logging.getLogger("appliance.simulator")

#: simulated seconds a real charge point spends in each phase of a session
IDLE_SEC = (60.0, 240.0)
PLUG_TO_AUTHORIZE_SEC = 10.0
CHARGE_SEC = (600.0, 1500.0)
UNPLUG_AFTER_SEC = 60.0
#: seconds (real) a charge point waits before reconnecting after a lost connection; doubled
#: per failure up to the maximum, as firmware does to spare a recovering server
RECONNECT_SEC = (1.0, 30.0)
#: seconds (real) after a Reset before the charge point is back (a quick reboot)
REBOOT_SEC = 0.5
#: on shutdown: time for the running transaction's stop and the close handshake
CLOSE_GRACE_SEC = 2.0
#: OCPP-J call timeout of the simulated firmware
CALL_TIMEOUT_SEC = 30.0
#: the shortest real sleep between two steps however high --speed is
MIN_STEP_SEC = 0.01

Answer = tuple[dict[str, Any], Callable[[], Awaitable[None]] | None]


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def vin_of(index: int) -> str:
    # "WVW": a European WMI, where the check digit in position 9 is optional (ISO 3779)
    return f"WVWZZZ1JZXW{index % 1_000_000:06d}"


@dataclass(slots=True)
class Transaction:
    id: str
    id_token: str
    remote_start_id: int | None
    started: float  # trio clock
    meter_start_wh: float
    seq_no: int = 0
    #: why it must end now (the spec's stop reason), set by a remote stop, reset or shutdown
    stop_reason: str | None = None


class ChargePoint:
    """The version-independent part. Subclasses implement the `send_*` steps and the
    `on_<Action>` answers to the central system."""

    version: str = ""
    #: the status names of this version, by what the wallbox is doing
    STATUS: ClassVar[dict[str, str]] = {}

    def __init__(self, fleet: Fleet, index: int, identity: str) -> None:
        self.fleet = fleet
        self.options = fleet.options
        self.index = index
        self.identity = identity
        self.rng = random.Random(f"{identity}")
        self.meter = Meter(energy_wh=1_000_000 + self.rng.uniform(0, 500_000), rng=self.rng)
        self.vehicle: Vehicle | None = None
        self.vin = vin_of(index)
        self.tx: Transaction | None = None
        self.operative = True
        self.status = "Available"
        #: (id token, remoteStartId) of an accepted remote start, until it is acted on
        self.remote_start: tuple[str, int | None] | None = None
        self.meter_interval_s = self.options.meter_interval
        self.heartbeat_interval_s = 300.0
        self.boot_reason = "PowerUp"
        self.session: Session
        self.calls: Calls
        self.ws: WebSocket | None = None
        self._wake = trio.Event()
        self._live_scope = trio.CancelScope()
        self._run_scope = trio.CancelScope()
        self._rebooting = False
        self._nursery: trio.Nursery | None = None

    # ---------------------------------------------------------------- time

    def real(self, simulated_s: float) -> float:
        """Real seconds for `simulated_s` at --speed."""
        return max(MIN_STEP_SEC, simulated_s / self.options.speed)

    async def pause(self, simulated_s: float) -> None:
        """Sleep, but wake early when the central system changed something."""
        with trio.move_on_after(self.real(simulated_s)):
            await self._wake.wait()

    def nudge(self) -> None:
        self._wake.set()
        self._wake = trio.Event()

    # ---------------------------------------------------------------- life cycle

    async def run(self) -> None:
        """Connect, live, reconnect: until the fleet stops. A first connection that
        fails before any charge point of the fleet got in is fatal (a wrong URL or
        password should stop the run at once); after that it is retried (a storm of
        a thousand at once may see a timeout or a 503)."""
        delay = RECONNECT_SEC[0]
        first = True
        with self._run_scope:
            while not self.fleet.stopping:
                connecting = time.perf_counter()
                try:
                    ws = await open_websocket(
                        self.options.url,
                        self.identity,
                        self.version,
                        password=self.options.password,
                        context=self.fleet.ssl_context,
                    )
                except ConnectError as exc:
                    if first and not self.fleet.reached:
                        self.fleet.fatal(str(exc))
                        return
                    # a first connection retried (its server busy) is not a reconnect
                    self.fleet.stats.error("connect failed" if first else "reconnect failed")
                    wait = delay * self.rng.uniform(0.8, 1.2)
                    self.fleet.notice(f"{self.identity} {exc}; trying again in {wait:.0f} s")
                    await trio.sleep(wait)
                    delay = min(delay * 2, RECONNECT_SEC[1])
                    continue
                self.fleet.reached = True
                if not first:
                    self.fleet.stats.reconnected(time.perf_counter() - connecting)
                again = "reconnected" if not first else "connected"
                self.fleet.notice(f"{self.identity} {again} to {self.options.url} ({self.version})")
                first, delay = False, RECONNECT_SEC[0]
                self.ws = ws
                why = await self._connection()
                if self._rebooting:
                    self._rebooting = False
                    self.boot_reason = "RemoteReset"
                    self.fleet.notice(f"{self.identity} rebooting after a reset ({why})")
                    await trio.sleep(REBOOT_SEC)
                elif not self.fleet.stopping:
                    self.fleet.stats.error("connection lost")
                    self.fleet.notice(
                        f"{self.identity} disconnected: {why}; reconnecting in {delay:g} s"
                    )
                    await trio.sleep(delay)

    def stop(self) -> None:
        """The fleet is stopping: end the session, close with 1000."""
        self._live_scope.cancel()
        if self.ws is None:
            self._run_scope.cancel()

    async def _connection(self) -> str:
        """Live on the open connection until it ends; returns how it ended."""
        self.session = Session(
            DIALECTS[self.version],
            self.fleet.schemas[self.version],
            FROM_CSMS[self.version],
            call_timeout=CALL_TIMEOUT_SEC,
            wait_for_peer=False,
        )
        self.calls = Calls(self.identity, self.session, self._send_outgoing)
        self._live_scope = trio.CancelScope()
        if self.fleet.stopping:
            self._live_scope.cancel()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self.calls.attach(nursery)
                nursery.start_soon(self._drive)
                await self._read()
                nursery.cancel_scope.cancel()
        finally:
            self.calls.fail_pending("connection closed before the answer")
            self.tx = None
            self.vehicle = None
            ws = self._open_ws()
            with trio.CancelScope(shield=True):
                await ws.aclose()
            self.ws = None
        return _how_it_ended(ws)

    async def _drive(self) -> None:
        with self._live_scope:
            if self.options.load:
                await self.load()
            else:
                await self.live()
        # stopping, or rebooting: end a running transaction as firmware does, then close
        with trio.move_on_after(CLOSE_GRACE_SEC):
            if self.tx is not None:
                reason = "Reboot" if self._rebooting else "Local"
                await self.end_transaction(self.tx.stop_reason or reason)
        await self.close(1000, "reset" if self._rebooting else "simulation ended")

    async def close(self, code: int, reason: str) -> None:
        ws = self._open_ws()
        if ws.machine.state is State.OPEN:
            ws.machine.send_close(code, reason)
            await ws.flush()
        # the reader sees the peer's close echo and ends the connection; don't wait forever
        with trio.move_on_after(CLOSE_GRACE_SEC):
            while not ws.done:
                await trio.sleep(0.02)
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    # ---------------------------------------------------------------- reading

    async def _read(self) -> None:
        ws = self._open_ws()
        while not ws.done:
            for text in await ws.receive_messages():
                self._on_text(text)
            await self._send_outgoing()

    def _open_ws(self) -> WebSocket:
        assert self.ws is not None, "not connected"
        return self.ws

    async def _send_outgoing(self) -> None:
        frames = self.session.take_outgoing()
        ws = self.ws
        if not frames or ws is None or ws.machine.state is not State.OPEN:
            return  # closing: nothing more may be sent; the waiters fail when it ends
        for frame in frames:
            ws.machine.send_text(frame.text.encode())
        await ws.flush()

    def _on_text(self, text: str) -> None:
        received = self.session.receive(text, trio.current_time())
        event = received.event
        if isinstance(event, CallReceived):
            self._answer(event)
        elif self.calls.settle(event):
            pass
        elif isinstance(event, ProtocolViolation):
            self.fleet.stats.error("protocol violation by the central system")
            log.warning("%s: %s", self.identity, event.reason)

    def _answer(self, call: CallReceived) -> None:
        handler = getattr(self, f"on_{call.action}", None)
        followup = None
        try:
            if handler is None:
                payload = minimal_response(self.fleet.schemas[self.version], call.action)
                if payload is None:
                    self.session.fail(call, Fault.NOT_IMPLEMENTED, f"{call.action} not simulated")
                    return
            else:
                payload, followup = handler(call.payload)
            self.session.answer(call, payload)
        except LocalProtocolError as exc:
            self.fleet.stats.error("invalid answer (simulator bug)")
            log.error("%s: %s", self.identity, exc)
            return
        except (KeyError, TypeError, ValueError) as exc:
            self.session.fail(call, Fault.INTERNAL, f"cannot process {call.action}: {exc}")
            return
        self.fleet.stats.answered += 1
        if followup is not None and self._nursery is not None:
            self._nursery.start_soon(self._after_answer, followup)

    async def _after_answer(self, followup: Callable[[], Awaitable[None]]) -> None:
        await trio.sleep(0)  # the answer goes out first
        await followup()

    # ---------------------------------------------------------------- calling

    async def request(self, action: str, payload: dict[str, Any]) -> dict[str, Any] | None:
        """A CALL; a failure is counted by kind and returns None."""
        started = time.perf_counter()
        try:
            result = await self.calls.call(action, payload)
        except CallFailed as exc:
            self.fleet.stats.error(_error_kind(str(exc)))
            log.info("%s: %s failed: %s", self.identity, action, exc)
            return None
        self.fleet.stats.call_done(time.perf_counter() - started)
        return result

    # ---------------------------------------------------------------- behaviour

    async def boot(self) -> None:
        """BootNotification until Accepted (Pending/Rejected: retry after `interval`)."""
        while True:
            answer = await self.request("BootNotification", self.boot_payload())
            if answer is not None and answer.get("status") == "Accepted":
                interval = answer.get("interval") or 0
                if interval > 0:
                    self.heartbeat_interval_s = float(interval)
                self.boot_reason = "PowerUp"
                return
            retry = (answer or {}).get("interval") or 10
            await trio.sleep(max(1.0, self.real(float(retry))))

    async def live(self) -> None:
        await self.boot()
        assert self._nursery is not None
        self._nursery.start_soon(self._heartbeat)
        await self.set_status("Available" if self.operative else "Unavailable")
        while True:
            if not self.operative:
                await self.set_status("Unavailable")
                while not self.operative:
                    await self.pause(3600)
                await self.set_status("Available")
            await self.pause(self.rng.uniform(*IDLE_SEC))
            if self.operative:
                await self.charging_session()

    async def charging_session(self) -> None:
        remote, self.remote_start = self.remote_start, None
        await self.set_status("Preparing")
        self.vehicle = Vehicle(soc=self.rng.uniform(15, 50))
        await self.send_vin()
        if remote is None:
            await self.pause(PLUG_TO_AUTHORIZE_SEC)
            token = f"TAG{self.index:05d}"
            if not await self.authorize(token):
                await self.unplug()
                return
            remote_start_id = None
        else:
            token, remote_start_id = remote
        if not await self.start_transaction(token, remote_start_id):
            await self.unplug()
            return
        await self.set_status("Charging")
        tx = self.tx
        assert tx is not None
        ends = trio.current_time() + self.real(self.rng.uniform(*CHARGE_SEC))
        last = trio.current_time()
        while tx.stop_reason is None and trio.current_time() < ends:
            await self.pause(self.meter_interval_s)
            now = trio.current_time()
            simulated = (now - last) * self.options.speed
            charging_for = (now - tx.started) * self.options.speed
            last = now
            reading = self.meter.advance(self.vehicle, charging_for, simulated)
            if tx.stop_reason is None:
                await self.send_meter_values(tx, reading)
        await self.end_transaction(tx.stop_reason or "Local")
        await self.unplug()

    async def end_transaction(self, reason: str) -> None:
        tx = self.tx
        if tx is None:
            return
        self.tx = None
        reading = self.meter.read(self.vehicle)
        if await self.stop_transaction(tx, reason, reading):
            self.fleet.stats.sessions += 1
        await self.set_status("Finishing")

    async def unplug(self) -> None:
        await self.pause(UNPLUG_AFTER_SEC)
        self.vehicle = None
        await self.set_status("Available" if self.operative else "Unavailable")

    async def load(self) -> None:
        """--load: boot, then MeterValues back to back, one CALL in flight."""
        await self.boot()
        vehicle = Vehicle(soc=50.0)
        while True:
            reading = self.meter.advance(vehicle, 3600.0, 1.0)
            if vehicle.soc >= 99:
                vehicle.soc = 20.0
            await self.send_load_meter_values(reading)

    async def set_status(self, status: str) -> None:
        self.status = status
        await self.send_status(self.STATUS.get(status, status))

    async def _heartbeat(self) -> None:
        while True:
            await trio.sleep(max(1.0, self.real(self.heartbeat_interval_s)))
            await self.request("Heartbeat", {})

    # ------------------------------------------------- what the central system asks

    def change_availability(self, operative: bool) -> str:
        """Accepted, or Scheduled while a transaction runs (1.6 §5.2, 2.x G03)."""
        self.operative = operative
        self.nudge()
        if not operative and self.tx is not None:
            return "Scheduled"
        return "Accepted"

    def set_cap(self, profile_id: int, watts: float) -> None:
        self.meter.caps[profile_id] = watts
        self.nudge()

    def clear_caps(self, profile_id: int | None) -> bool:
        if profile_id is None:
            found = bool(self.meter.caps)
            self.meter.caps.clear()
        else:
            found = self.meter.caps.pop(profile_id, None) is not None
        self.nudge()
        return found

    def accept_remote_start(self, token: str, remote_start_id: int | None) -> bool:
        if not self.operative or self.tx is not None or self.vehicle is not None:
            return False
        if self.remote_start is not None:
            return False
        self.remote_start = (token, remote_start_id)
        self.nudge()
        return True

    def accept_remote_stop(self, transaction_id: str, reason: str) -> bool:
        if self.tx is None or self.tx.id != transaction_id:
            return False
        self.tx.stop_reason = reason
        self.nudge()
        return True

    def reset(self) -> Callable[[], Awaitable[None]]:
        async def reboot() -> None:
            self._rebooting = True
            if self.tx is not None and self.tx.stop_reason is None:
                self.tx.stop_reason = self.reset_stop_reason
            self._live_scope.cancel()

        return reboot

    reset_stop_reason = "Reboot"

    # ------------------------------------------------------------- version-specific

    def boot_payload(self) -> dict[str, Any]:
        raise NotImplementedError

    async def send_status(self, status: str) -> None:
        raise NotImplementedError

    async def send_vin(self) -> None:
        raise NotImplementedError

    async def authorize(self, token: str) -> bool:
        raise NotImplementedError

    async def start_transaction(self, token: str, remote_start_id: int | None) -> bool:
        raise NotImplementedError

    async def send_meter_values(self, tx: Transaction, reading: Reading) -> None:
        raise NotImplementedError

    async def stop_transaction(self, tx: Transaction, reason: str, reading: Reading) -> bool:
        raise NotImplementedError

    async def send_load_meter_values(self, reading: Reading) -> None:
        raise NotImplementedError

    def vin_data(self) -> str:
        return json.dumps({"vin": self.vin})

    def on_DataTransfer(self, p: dict[str, Any]) -> Answer:
        if p["vendorId"] != "sim":
            return {"status": "UnknownVendorId"}, None
        return {"status": "Accepted", "data": self.vin_data()}, None

    def triggers(self) -> dict[str, Callable[[], Awaitable[Any]]]:
        """What TriggerMessage can ask for; each version adds its own."""
        return {
            "BootNotification": lambda: self.request("BootNotification", self.boot_payload()),
            "Heartbeat": lambda: self.request("Heartbeat", {}),
            "StatusNotification": lambda: self.send_status(self.STATUS[self.status]),
            "FirmwareStatusNotification": lambda: self.request(
                "FirmwareStatusNotification", {"status": "Idle"}
            ),
        }

    def on_TriggerMessage(self, p: dict[str, Any]) -> Answer:
        action = self.triggers().get(p["requestedMessage"])
        if action is None:
            return {"status": "NotImplemented"}, None

        async def followup() -> None:
            await action()

        return {"status": "Accepted"}, followup


def _how_it_ended(ws: WebSocket) -> str:
    """The close the server sent (RFC 6455 §7.1.5), or that there was none."""
    close = ws.machine.close_rcvd
    if close is None:
        return "the connection was lost (no close frame)"
    reason = f" {close.reason}" if close.reason else ""
    return f"the server closed it ({close.code}{reason})"


def _error_kind(reason: str) -> str:
    """Errors are counted by kind: the CALLERROR code, timeout, closed, invalid."""
    if reason.startswith("CALLERROR "):
        return reason.split(":", 1)[0]
    if "breaks the schema" in reason:
        return "invalid call (simulator bug)"
    if reason.startswith(("no answer within", "not sent within")):
        return "timeout"
    if "closed" in reason:
        return "connection closed before the answer"
    return reason
