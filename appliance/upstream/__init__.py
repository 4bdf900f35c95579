"""A second backend (README "A second backend", issue 24): the appliance stays each charge
point's central system and also speaks, as that charge point, to the upstream central
systems `[[upstream]]` names for it — the same identity (or `identity_map`'s) and the
charge point's own OCPP version.

- The charge point's CALLs go on upstream once the appliance has answered them
  (`Stations.forward`). The upstream's answers are recorded, never sent to the charge
  point. Transaction messages wait durably while the upstream is away (`Backlog`,
  `upstream_queue`); the rest is sent only while it is connected.
- The upstream's CALLs reach the charge point when `allow_calls` has their action (the
  station's own calls and these never share a message id: the station numbers its own);
  the others are refused with the version's CALLERROR by the upstream session.
- Every frame to and from an upstream is in `messages`, its `peer` the upstream's name.

One `Link` per connected charge point and upstream, in the task group of `Upstreams`; a
`Backlog` per charge point and upstream lives as long as the process (a reconnecting
charge point finds what its last connection left).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio
from websockets.protocol import State

from appliance.config import Config
from appliance.config import Upstream as Settings
from appliance.domain import secrets
from appliance.rpc import (
    DIALECTS,
    CallReceived,
    Fault,
    Frame,
    LocalProtocolError,
    ProtocolViolation,
    Received,
    Session,
    encode,
)
from appliance.station import CallFailed, Calls, Connected, Disconnected, Station, Stations, masked
from appliance.store import FrameRow, Store, now_ms
from appliance.store.rows import UpstreamDelivered, UpstreamQueued, UpstreamTransaction
from appliance.store.upstream import backlog as stored_backlog
from appliance.transport.client import ConnectError, open_websocket, ssl_context
from appliance.tree.ids import subprotocol_segment
from appliance.versions import VERSIONS, Version
from appliance.versions.tables import FROM_CSMS

log = logging.getLogger("appliance.upstream")

#: README "A second backend": reconnection back-off
RECONNECT_SEC = (1.0, 60.0)
#: after the charge point left, how long what waits may still take to go out
LINGER_SEC = 10.0
#: README "A second backend": authorize = "upstream" waits this long for its verdict
AUTHORIZE_WAIT_SEC = 5.0
#: how long the upstream has to answer one forwarded call
CALL_TIMEOUT_SEC = 30.0
#: beyond two commit intervals, how long a new link waits for a boot not yet committed
#: before it connects without it (a database that cannot be written)
BOOT_WAIT_SEC = 5.0
#: messages waiting for an upstream beyond this are logged (and shown); none is dropped
#: from the durable queue, the live ones beyond it are
WAITING_BOUND = 10_000


def queued(version: Version, action: str, payload: dict[str, Any]) -> bool:
    """Whether the message waits durably for the upstream: transaction messages (1.6
    MeterValues only when they belong to a transaction)."""
    if action not in version.offline_queued:
        return False
    return action != "MeterValues" or payload.get("transactionId") is not None


@dataclass(slots=True)
class Message:
    """A charge point's CALL on its way upstream."""

    key: str
    action: str
    payload: dict[str, Any]
    durable: bool
    #: StartTransaction (1.6): the transactionId the appliance answered
    local_id: str | None = None
    #: set once the upstream answered (or the call failed): `result` is its answer
    answered: trio.Event = field(default_factory=trio.Event)
    result: dict[str, Any] | None = None


@dataclass(slots=True, eq=False)
class Backlog:
    """What one upstream has yet to get from one charge point, oldest first, and the
    1.6 transaction ids it gave (the charge point's → the upstream's)."""

    upstream: str
    identity: str
    waiting: deque[Message] = field(default_factory=deque)
    transactions: dict[str, int] = field(default_factory=dict)
    #: the last BootNotification and the last status per connector: sent first on each
    #: new upstream connection (README "A second backend")
    boot: dict[str, Any] | None = None
    statuses: dict[tuple[Any, ...], dict[str, Any]] = field(default_factory=dict)
    loaded: bool = False
    counter: int = 0
    arrived: trio.Event = field(default_factory=trio.Event)
    dropped: int = 0

    def add(self, message: Message) -> None:
        if not message.durable and len(self.waiting) >= WAITING_BOUND:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning(
                    "%s → %s: %d messages wait; %d live ones dropped (transaction messages"
                    " are kept)",
                    self.identity,
                    self.upstream,
                    len(self.waiting),
                    self.dropped,
                )
            return
        self.waiting.append(message)
        self.arrived.set()

    def next_key(self) -> str:
        self.counter += 1
        return f"{now_ms()}-{self.counter}"


class Upstreams:
    """The upstream links of every connected charge point (`[[upstream]]`)."""

    def __init__(self, stations: Stations, store: Store, config: Config) -> None:
        self.stations = stations
        self.store = store
        self.config = config
        self._backlogs: dict[tuple[str, str], Backlog] = {}
        self._links: dict[str, list[Link]] = {}
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        events = self.stations.subscribe()
        self.stations.relay = self
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            async for event in events:
                if isinstance(event, Connected):
                    self._connect(event.station)
                elif isinstance(event, Disconnected):
                    self._disconnect(event.station)

    def reload(self, config: Config) -> None:
        """SIGHUP: links of changed upstreams start again with the new settings."""
        old = self.config
        self.config = config
        if old.upstream == config.upstream:
            return
        for links in list(self._links.values()):
            for link in list(links):
                link.stop()
        self.connect_all()

    def connect_all(self) -> None:
        """Links for every charge point connected now."""
        for station in list(self.stations.stations.values()):
            self._connect(station)

    def _connect(self, station: Station) -> None:
        if self._nursery is None:
            return
        links = self._links.setdefault(station.identity, [])
        for link in links:
            link.stop()
        links.clear()
        for settings in self.config.upstream:
            if not settings.serves(station.identity):
                continue
            backlog = self._backlog(settings.label, station.identity)
            link = Link(self, station, settings, backlog)
            links.append(link)
            self._nursery.start_soon(link.run)

    def _disconnect(self, station: Station) -> None:
        links = self._links.get(station.identity, [])
        for link in [link for link in links if link.station is station]:
            link.finish()
            links.remove(link)

    def _backlog(self, upstream: str, identity: str) -> Backlog:
        key = (upstream, identity)
        backlog = self._backlogs.get(key)
        if backlog is None:
            backlog = self._backlogs[key] = Backlog(upstream, identity)
        return backlog

    # ------------------------------------------------------- from the stations

    def decides(self, identity: str) -> bool:
        """Whether an upstream with authorize = "upstream" is connected for it now."""
        return self._decider(identity) is not None

    def _decider(self, identity: str) -> Link | None:
        for link in self._links.get(identity, []):
            if link.settings.authorize == "upstream" and link.connected:
                return link
        return None

    def ask(
        self, identity: str, subprotocol: str, action: str, payload: Any, answer: Any
    ) -> Callable[[], Awaitable[dict[str, Any] | None]]:
        """Forward now; the wait for the deciding upstream's answer (README: at most
        AUTHORIZE_WAIT_SEC, then the local rules decide and its state says so)."""
        link = self._decider(identity)
        messages = self.forward(identity, subprotocol, action, payload, answer)
        mine = next((m for name, m in messages if link and name == link.name), None)

        async def decision() -> dict[str, Any] | None:
            if link is None or mine is None:
                return None
            with trio.move_on_after(AUTHORIZE_WAIT_SEC):
                await mine.answered.wait()
            link.decided(action, mine.result)
            return mine.result

        return decision

    def forward(
        self, identity: str, subprotocol: str, action: str, payload: Any, answer: Any
    ) -> list[tuple[str, Message]]:
        """A CALL the charge point made and the appliance answered: on to its upstreams;
        transaction messages are written to `upstream_queue` first. Returns them, per
        upstream."""
        sent: list[tuple[str, Message]] = []
        for settings in self.config.upstream:
            if not settings.serves(identity):
                continue
            backlog = self._backlog(settings.label, identity)
            if action == "BootNotification":
                backlog.boot = payload
            elif action == "StatusNotification":
                backlog.statuses[_connector(payload)] = payload
            durable = queued(VERSIONS[subprotocol], action, payload)
            local = answer.get("transactionId") if action == "StartTransaction" else None
            local_id = None if local is None else str(local)
            message = Message(backlog.next_key(), action, payload, durable, local_id)
            if durable:
                self.store.put(
                    UpstreamQueued(
                        settings.label,
                        identity,
                        message.key,
                        action,
                        encode(payload),
                        now_ms(),
                        local_id,
                    )
                )
            backlog.add(message)
            if durable:  # `.waiting` counts it while the upstream is away
                for link in self._links.get(identity, []):
                    if link.name == settings.label and not link.connected:
                        link.refresh()
            sent.append((settings.label, message))
        return sent


def _connector(payload: dict[str, Any]) -> tuple[Any, ...]:
    """Which connector a StatusNotification is of (1.6 connectorId; 2.x evse, connector)."""
    return (payload.get("connectorId"), payload.get("evseId"))


class Link:
    """One charge point's connection to one upstream, for the charge point's connection's
    life: connect (back-off), send the boot, the statuses and what waits, forward what
    comes, carry out the upstream's allowed calls."""

    def __init__(
        self, upstreams: Upstreams, station: Station, settings: Settings, backlog: Backlog
    ) -> None:
        self.upstreams = upstreams
        self.station = station
        self.settings = settings
        self.backlog = backlog
        self.name = settings.label
        self.identity = settings.identity_map.get(station.identity, station.identity)
        self.subprotocol = station.subprotocol
        self._scope = trio.CancelScope()
        self._closing = False
        self._state = ""
        #: what the states show now: (connected, reason, waiting)
        self._shown: tuple[bool, str, int] | None = None
        self.ws: Any = None

    @property
    def connected(self) -> bool:
        return self.ws is not None and not self.ws.done

    def stop(self) -> None:
        self._scope.cancel()

    def decided(self, action: str, result: dict[str, Any] | None) -> None:
        """README: which verdict on a token held, in the upstream's states (and the log
        when it was not the upstream's)."""
        verdict = self.station.version.token_verdict[action]
        info = (result or {}).get(verdict)
        if isinstance(info, dict) and "status" in info:
            said = f"{action}: the upstream's verdict, {info['status']}"
        else:
            said = f"{action}: no answer from the upstream within {AUTHORIZE_WAIT_SEC:g} s;"
            said += " the local rules decided"
            log.warning("%s → upstream %s: %s", self.station.identity, self.name, said)
        with contextlib.suppress(KeyError):
            self.station.tree.upstream_authorization(self.station.identity, self.name, said)

    def finish(self) -> None:
        """The charge point left: what waits goes out first if the upstream is connected
        (for at most LINGER_SEC), then the link closes; transaction messages still
        waiting wait in `upstream_queue` for the next connection."""
        self._closing = True
        if self.ws is None:
            self.stop()
            return
        self._scope.deadline = min(self._scope.deadline, trio.current_time() + LINGER_SEC)
        self.backlog.arrived.set()

    async def run(self) -> None:
        with self._scope:
            try:
                await self._run()
            finally:
                self._show(False, "")

    async def _run(self) -> None:
        if not self.backlog.loaded:
            await self._load()
        delay = RECONNECT_SEC[0]
        while True:
            try:
                ws = await open_websocket(
                    self.settings.url,
                    self.identity,
                    self.subprotocol,
                    password=self.upstreams.config.upstream_password(self.settings),
                    context=self._tls(),
                )
            except ConnectError as exc:
                self._report(f"cannot connect: {exc}", False)
                self._drop_live()
                if self._closing:
                    return
                await trio.sleep(delay)
                delay = min(delay * 2, RECONNECT_SEC[1])
                continue
            agreed = ws.machine.subprotocol
            if agreed != self.subprotocol:
                self._report(
                    f"does not speak {self.subprotocol} (it chose {agreed or 'none'}); the"
                    " charge point is served as before",
                    False,
                )
                with trio.CancelScope(shield=True):
                    await ws.aclose()
                await trio.sleep(RECONNECT_SEC[1])
                continue
            delay = RECONNECT_SEC[0]
            self._report(f"connected ({self.subprotocol})", True)
            how = await self._connection(ws)
            if self._closing:
                return
            self._report(f"connection ended: {how}", False)
            await trio.sleep(delay)

    def _tls(self) -> Any:
        settings = self.settings
        if not settings.url.startswith("wss:"):
            return None
        config = self.upstreams.config
        return ssl_context(
            str(config.path(settings.ca)) if settings.ca else None,
            str(config.path(settings.cert)) if settings.cert else None,
            str(config.path(settings.key)) if settings.key else None,
        )

    async def _load(self) -> None:
        """What the last run left for this upstream (README: across a restart too)."""
        store, backlog = self.upstreams.store, self.backlog
        tree, identity = self.station.tree, self.station.identity
        boot_state = (
            f"{tree.prefix(identity)}.ocpp.{subprotocol_segment(self.subprotocol)}"
            ".in.BootNotification.raw"
        )
        stored = functools.partial(
            stored_backlog, store.path, backlog.upstream, backlog.identity, boot_state
        )
        rows, transactions, boot = await trio.to_thread.run_sync(stored)
        if boot is None and backlog.boot is None and tree.booted(identity):
            # It booted, and its BootNotification is not committed yet (an upstream a
            # SIGHUP added right after the boot): the commits after this have it.
            with trio.move_on_after(2 * store.commit_interval + BOOT_WAIT_SEC):
                await store.committed()
            rows, transactions, boot = await trio.to_thread.run_sync(stored)
        if not backlog.loaded:
            backlog.loaded = True
            if backlog.boot is None and boot is not None:
                backlog.boot = json.loads(boot)  # the one before a restart
            earlier = [
                Message(key, action, json.loads(text), True, local)
                for key, action, text, local in rows
            ]
            known = {m.key for m in backlog.waiting}
            backlog.waiting.extendleft(reversed([m for m in earlier if m.key not in known]))
            backlog.transactions.update(transactions)

    def _drop_live(self) -> None:
        """While the upstream is away only transaction messages wait (README)."""
        waiting = self.backlog.waiting
        if any(not m.durable for m in waiting):
            self.backlog.waiting = deque(m for m in waiting if m.durable)

    # ------------------------------------------------------------ connection

    async def _connection(self, ws: Any) -> str:
        self.ws = ws
        session = Session(
            DIALECTS[self.subprotocol],
            self.station.hub.schemas[self.subprotocol],
            FROM_CSMS[self.subprotocol] & frozenset(self.settings.allow_calls),
            call_timeout=CALL_TIMEOUT_SEC,
            wait_for_peer=False,
        )
        self.session = session
        self.calls = Calls(self.station.identity, session, self._send_outgoing)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self.calls.attach(nursery)
                nursery.start_soon(self._forward)
                while not ws.done:
                    for text in await ws.receive_messages():
                        self._on_text(text)
                    await self._send_outgoing()
                nursery.cancel_scope.cancel()
        finally:
            self.calls.fail_pending("the upstream connection closed")
            with trio.CancelScope(shield=True):
                await ws.aclose()
            self.ws = None
        return "closed"

    async def _forward(self) -> None:
        """The boot and the statuses first, then what waits, oldest first; one CALL in
        flight (OCPP-J)."""
        backlog = self.backlog
        # unless the charge point's own boot waits (it is booting: its statuses follow)
        waiting = {m.action: m for m in backlog.waiting if not m.durable}
        if "BootNotification" not in waiting:
            first = [] if backlog.boot is None else [("BootNotification", backlog.boot)]
            waiting_statuses = {
                _connector(m.payload) for m in backlog.waiting if m.action == "StatusNotification"
            }
            first += [
                ("StatusNotification", status)
                for connector, status in list(backlog.statuses.items())
                if connector not in waiting_statuses
            ]
            for action, payload in first:
                if not await self._send(Message("", action, payload, False)):
                    return
        while True:
            while backlog.waiting:
                message = backlog.waiting[0]
                delivered = await self._send(message)
                if not delivered:
                    return  # the connection failed: the message waits for the next one
                if backlog.waiting and backlog.waiting[0] is message:
                    backlog.waiting.popleft()
                if message.durable:
                    self.upstreams.store.put(
                        UpstreamDelivered(backlog.upstream, backlog.identity, message.key)
                    )
                    self.refresh()
            if self._closing:
                await self._close()
                return
            backlog.arrived = trio.Event()
            await backlog.arrived.wait()

    async def _close(self) -> None:
        """Close with 1000 and let the reader see the upstream's echo (or give up)."""
        ws = self.ws
        if ws is not None and ws.machine.state is State.OPEN:
            ws.machine.send_close(1000, "the charge point disconnected")
            await ws.flush()
        with trio.move_on_after(2):
            while ws is not None and not ws.done:
                await trio.sleep(0.02)
        self._nursery.cancel_scope.cancel()

    async def _send(self, message: Message) -> bool:
        """One message upstream; False when the connection failed before its answer (it
        is sent again on the next). A CALLERROR or a timeout is an answer: recorded."""
        payload = self._mapped(message)
        try:
            result = await self.calls.call(message.action, payload)
        except CallFailed as exc:
            if self.ws is None or self.ws.done:
                return False
            log.warning("%s → %s: %s: %s", self.station.identity, self.name, message.action, exc)
            if message.durable and "CALLERROR" not in str(exc):
                # no answer at all: it is sent again over a new connection, never dropped
                message.answered.set()
                self._nursery.cancel_scope.cancel()
                return False
            message.answered.set()
            return True
        message.result = result
        message.answered.set()
        remote = result.get("transactionId")
        if message.action == "StartTransaction" and message.local_id and isinstance(remote, int):
            backlog = self.backlog
            backlog.transactions[message.local_id] = remote
            self.upstreams.store.put(
                UpstreamTransaction(backlog.upstream, backlog.identity, message.local_id, remote)
            )
        return True

    def _mapped(self, message: Message) -> dict[str, Any]:
        """1.6: the upstream's own transaction id in place of the appliance's (README)."""
        payload = message.payload
        if message.action not in self.station.version.given_transaction_id:
            return payload
        local = payload.get("transactionId")
        remote = self.backlog.transactions.get(str(local))
        if remote is None:
            return payload
        return {**payload, "transactionId": remote}

    # --------------------------------------------------------------- reading

    def _on_text(self, text: str) -> None:
        received = self.session.receive(text, trio.current_time())
        hidden = False
        if secrets.may_hold(text):
            received, hidden = masked(received)
        self._record(received.frame, hidden)
        event = received.event
        if isinstance(event, CallReceived):
            self._nursery.start_soon(self._relay, event)
        elif self.calls.settle(event):
            pass
        elif isinstance(event, ProtocolViolation):
            log.warning("%s → %s: %s", self.station.identity, self.name, event.reason)

    async def _relay(self, call: CallReceived) -> None:
        """An upstream CALL `allow_calls` lets through: to the charge point, and its
        answer back (the session refused the others already)."""
        try:
            result = await self.station.call(call.action, call.payload)
        except CallFailed as exc:
            self.session.fail(call, Fault.GENERIC, f"the charge point: {exc}"[:200])
        else:
            try:
                self.session.answer(call, result)
            except LocalProtocolError as exc:
                log.warning("%s → %s: %s", self.station.identity, self.name, exc)
        await self._send_outgoing()

    async def _send_outgoing(self) -> None:
        frames = self.session.take_outgoing()
        ws = self.ws
        if not frames or ws is None or ws.machine.state is not State.OPEN:
            return
        for frame in frames:
            if secrets.may_hold(frame.text):
                stored, hidden = masked(Received(frame, None))
                self._record(stored.frame, hidden)
            else:
                self._record(frame)
            ws.machine.send_text(frame.text.encode())
        await ws.flush()

    def _record(self, frame: Frame, hidden: bool = False) -> None:
        self.upstreams.store.put(
            FrameRow(
                now_ms(),
                self.station.identity,
                self.subprotocol,
                frame.direction,
                frame.message_type,
                frame.message_id,
                frame.action,
                frame.text,
                frame.violation,
                int(hidden),
                self.name,
            )
        )

    # --------------------------------------------------------------- showing

    def _report(self, state: str, connected: bool) -> None:
        """One log line per change of state (not per retry); the tree shows it."""
        kind = "connected" if connected else state.split(":")[0]
        if kind != self._state:
            self._state = kind
            (log.info if connected else log.warning)(
                "%s → upstream %s: %s", self.station.identity, self.name, state
            )
        self._show(connected, "" if connected else state)

    def refresh(self) -> None:
        """`.waiting` after a transaction message was queued or delivered."""
        if self._shown is not None:
            self._show(self._shown[0], self._shown[1])

    def _show(self, connected: bool, reason: str) -> None:
        shown = (connected, reason, sum(1 for m in self.backlog.waiting if m.durable))
        if shown == self._shown:
            return
        self._shown = shown
        with contextlib.suppress(KeyError):
            self.station.tree.upstream(self.station.identity, self.name, *shown)
