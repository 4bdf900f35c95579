"""What both ends of an OCPP-J connection do with their own CALLs: queue one in the
Session, send the frames, wait for the answer, time it out. The appliance's `Connection`
and the simulator's charge point are both an `Endpoint`; each says how it records frames."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import trio
from websockets.protocol import State

from appliance.rpc import CallTimedOut, Frame, LocalProtocolError, Session
from appliance.transport.websocket import WebSocket

log = logging.getLogger("appliance")


class CallFailed(Exception):
    """An outgoing call got no usable answer; the message says why in plain words."""


@dataclass(slots=True, eq=False)
class _Waiter:
    done: trio.Event = field(default_factory=trio.Event)
    payload: dict[str, Any] | None = None
    error: str | None = None


class Endpoint:
    """Outgoing calls over `self.session` and `self.ws`. Subclasses set `identity`,
    `session` and `ws`, call `_init_calls()`, run `_expire_calls()` in their nursery and
    feed answers to `_resolve()`."""

    identity: str
    session: Session
    ws: WebSocket

    def _init_calls(self) -> None:
        self._waiters: dict[str, _Waiter] = {}
        self._deadline_changed = trio.Event()

    def _record(self, frame: Frame) -> None:
        """Hook: a frame crossed the wire (either direction)."""

    def _call_queued(self, action: str, payload: dict[str, Any]) -> None:
        """Hook: a CALL passed validation and is queued."""

    async def call(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Send a CALL and wait for its result. Raises CallFailed with the reason (schema
        violation, CALLERROR, timeout, connection closed)."""
        try:
            call = self.session.call(action, payload, trio.current_time())
        except LocalProtocolError as exc:
            raise CallFailed(str(exc)) from None
        self._call_queued(action, payload)
        waiter = self._waiters[call.message_id] = _Waiter()
        self._deadline_changed.set()
        await self._send_outgoing()
        await waiter.done.wait()
        if waiter.error is not None:
            raise CallFailed(waiter.error)
        assert waiter.payload is not None
        return waiter.payload

    def _resolve(
        self, message_id: str, *, payload: dict[str, Any] | None = None, error: str | None = None
    ) -> None:
        waiter = self._waiters.pop(message_id, None)
        if waiter is not None:
            waiter.payload, waiter.error = payload, error
            waiter.done.set()

    def _fail_pending(self, reason: str) -> None:
        """The session ended: every call still waiting fails with `reason`."""
        for call in self.session.close():
            self._resolve(call.message_id, error=reason)

    async def _send_outgoing(self) -> None:
        frames = self.session.take_outgoing()
        if not frames:
            return
        protocol = self.ws.protocol
        if protocol.state is not State.OPEN:
            return  # closing: nothing more may be sent; the waiters fail when it ends
        for frame in frames:
            self._record(frame)
            protocol.send_text(frame.text.encode())
        await self.ws.flush()

    async def _expire_calls(self) -> None:
        while True:
            deadline = self.session.next_deadline()
            with trio.move_on_at(math.inf if deadline is None else deadline):
                await self._deadline_changed.wait()
                self._deadline_changed = trio.Event()
                continue
            timed_out: list[CallTimedOut] = self.session.expire(trio.current_time())
            for event in timed_out:
                log.warning("%s: %s: %s", self.identity, event.call.action, event.reason)
                self._resolve(event.call.message_id, error=event.reason)
            await self._send_outgoing()
