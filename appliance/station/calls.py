"""Outgoing calls of one OCPP-J connection, for either end: queue one in the `Session`,
send its frames, wait for the answer, time it out. The appliance's station and the
simulator's charge point each own one (composition: they say how frames are sent)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from appliance.rpc import (
    CallTimedOut,
    ErrorReceived,
    LocalProtocolError,
    ResultReceived,
    Session,
)

log = logging.getLogger("appliance")


class CallFailed(Exception):
    """An outgoing call got no usable answer; the message says why in plain words."""


@dataclass(slots=True, eq=False)
class _Waiter:
    done: trio.Event = field(default_factory=trio.Event)
    payload: dict[str, Any] | None = None
    error: str | None = None


class Calls:
    """The calls `session` has in flight or queued, and who waits for them.

    `flush` sends what the session has queued; `queued(action, payload)` is told of
    each call that passed validation (the station captures it in the tree)."""

    def __init__(
        self,
        identity: str,
        session: Session,
        flush: Callable[[], Awaitable[None]],
        queued: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self.identity = identity
        self.session = session
        self._flush = flush
        self._queued = queued
        self._waiters: dict[str, _Waiter] = {}
        self._deadline_changed = trio.Event()
        #: where the timer runs while calls are pending (issue 21: not one idle task per
        #: connection for its whole life)
        self._nursery: trio.Nursery | None = None
        self._timing = False

    def attach(self, nursery: trio.Nursery) -> None:
        """The connection's nursery: each call's deadline is kept by a task in it."""
        self._nursery = nursery

    async def call(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Send a CALL and wait for its result. Raises CallFailed with the reason (schema
        violation, CALLERROR, timeout, connection closed)."""
        try:
            call = self.session.call(action, payload, trio.current_time())
        except LocalProtocolError as exc:
            raise CallFailed(str(exc)) from None
        if self._queued is not None:
            self._queued(action, payload)
        waiter = self._waiters[call.message_id] = _Waiter()
        self._deadline_changed.set()
        if not self._timing and self._nursery is not None:
            self._timing = True
            self._nursery.start_soon(self._expire)
        await self._flush()
        await waiter.done.wait()
        if waiter.error is not None:
            raise CallFailed(waiter.error)
        assert waiter.payload is not None
        return waiter.payload

    def resolve(
        self, message_id: str, *, payload: dict[str, Any] | None = None, error: str | None = None
    ) -> None:
        waiter = self._waiters.pop(message_id, None)
        if waiter is not None:
            waiter.payload, waiter.error = payload, error
            waiter.done.set()

    def settle(self, event: object) -> bool:
        """An answer to one of our calls (a CALLRESULT or a CALLERROR event of the
        session) ends its wait; whether `event` was one."""
        if isinstance(event, ResultReceived):
            self.resolve(event.call.message_id, payload=event.payload)
        elif isinstance(event, ErrorReceived):
            error = f"CALLERROR {event.code}: {event.description}".rstrip(": ")
            self.resolve(event.call.message_id, error=error)
        else:
            return False
        return True

    def fail_pending(self, reason: str) -> None:
        """The session ended: every call still waiting fails with `reason`."""
        for call in self.session.close():
            self.resolve(call.message_id, error=reason)

    def let_go(self) -> None:
        """The station's connection has ended for good: drop its callbacks. They refer to
        the station, which refers to this: a reference cycle that would keep the station,
        its connection and their buffers until a full garbage collection (issue 21)."""
        self._flush = _nothing
        self._queued = None

    async def _expire(self) -> None:
        """Time out calls at their deadlines; ends when none is pending (the next call
        starts it again)."""
        while True:
            deadline = self.session.next_deadline()
            if deadline is None:
                self._timing = False
                return
            with trio.move_on_at(deadline):
                await self._deadline_changed.wait()
                self._deadline_changed = trio.Event()
                continue
            timed_out: list[CallTimedOut] = self.session.expire(trio.current_time())
            for event in timed_out:
                log.warning("%s: %s: %s", self.identity, event.call.action, event.reason)
                self.resolve(event.call.message_id, error=event.reason)
            await self._flush()


async def _nothing() -> None:
    """What a let-go Calls flushes: nothing, its connection is gone."""
