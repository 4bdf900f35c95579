"""One charge point between the wire and the tree: rpc events → version mapping →
updates, frames recorded, the after-boot fetch, and the charge point's command worker.
Runs in its connection's nursery; nothing it starts outlives the connection.

Decide, then do (README "Architecture"): the version mapping answers a call and returns
the updates it implies without applying anything; the updates are applied only once the
`Session` has accepted the answer for sending. A call answered with a CALLERROR leaves
its frame and the error in `messages`, nothing else.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from appliance.config import Config
from appliance.domain import (
    ConfigurationReport,
    DeviceModelReport,
    DeviceModelValue,
    Setting,
    secrets,
)
from appliance.rpc import (
    CallReceived,
    ErrorReceived,
    Fault,
    Frame,
    LocalProtocolError,
    ProtocolViolation,
    Received,
    ResultReceived,
    SchemaSet,
    SendReceived,
    Session,
    Validation,
    encode,
)
from appliance.station.calls import CallFailed, Calls
from appliance.store import FrameRow, Store, now_ms
from appliance.transport import Link
from appliance.tree import Tree
from appliance.versions import Answer, Context, TransactionIdSource, Unprocessable, Version
from appliance.versions.tables import RETRIED

log = logging.getLogger("appliance")

#: how long the NotifyReports of a GetBaseReport may take in all; what has not come by
#: then is taken as not reported (so not written to)
REPORT_TIMEOUT_SEC = 60.0
#: README "On the wire": a charge point whose boot the appliance has seen (in this run or
#: before a restart) and that reconnects without a word may be called after this long;
#: one that reboots sends its BootNotification well within it
RECONNECT_GRACE_SEC = 5.0


class Job(Protocol):
    """Work for a charge point's command worker (a control command)."""

    async def run(self, station: Station) -> None: ...

    def abandon(self, reason: str) -> None:
        """The connection ended before the job ran."""


# ------------------------------------------------------------------------ events


@dataclass(frozen=True, slots=True)
class Connected:
    station: Station


@dataclass(frozen=True, slots=True)
class Booted:
    station: Station


@dataclass(frozen=True, slots=True)
class Reported:
    """What the charge point reported of its settings after its boot (1.6
    GetConfiguration, 2.x the NotifyReports of GetBaseReport): what README "Readings the
    appliance asks for" compares with `[readings]`."""

    station: Station
    settings: list[Setting]


@dataclass(frozen=True, slots=True)
class Disconnected:
    station: Station
    #: False when a newer connection of the same identity replaced this one
    current: bool


Event = Connected | Booted | Reported | Disconnected


#: README "A second backend": waits for the upstream's answer to a call (at most a few
#: seconds); None if none came
Decision = Callable[[], Awaitable[dict[str, Any] | None]]


class Hub(Protocol):
    """What a station uses of the appliance around it (`hub.Stations`)."""

    store: Store
    tree: Tree
    schemas: dict[str, SchemaSet]
    transaction_ids: TransactionIdSource
    #: the stations connected now, by identity
    stations: dict[str, Station]

    @property
    def config(self) -> Config: ...
    @property
    def fetch_on_boot(self) -> bool: ...

    def token_accepted(self, token: str | None) -> bool: ...
    def attach(self, station: Station) -> None: ...
    def detach(self, station: Station) -> None: ...
    def publish(self, event: Event) -> None: ...
    def forward(
        self, identity: str, subprotocol: str, action: str, payload: Any, answer: Any
    ) -> None: ...
    def upstream_decides(self, identity: str) -> bool: ...
    def ask_upstream(
        self, identity: str, subprotocol: str, action: str, payload: Any, answer: Any
    ) -> Decision: ...
    def request_id(self) -> int: ...
    def repeated(self, identity: str, action: str, payload_text: str) -> bool: ...
    def log_violation_once(
        self, identity: str, action: str | None, kind: str, text: str
    ) -> None: ...


class Station:
    def __init__(self, hub: Hub, link: Link, version: Version) -> None:
        config = hub.config
        identity = link.identity
        self.hub = hub
        self.link = link
        self.identity = identity
        self.version = version
        self.subprotocol = link.subprotocol
        self.tree = hub.tree
        self.session = Session(
            version.dialect,
            hub.schemas[self.subprotocol],
            version.from_charge_point,
            validation=Validation(config.validation_for(identity)),
            call_timeout=config.call_timeout_sec,
            max_depth=config.limits.max_json_depth,
        )
        self.context = Context(
            identity,
            self.subprotocol,
            config.heartbeat_interval_sec,
            hub.transaction_ids,
            hub.token_accepted,
        )
        self.calls = Calls(identity, self.session, self._send_outgoing, self._call_queued)
        #: the command worker's queue; the worker runs only while it holds jobs (issue 21:
        #: no idle task and channel per connection)
        self._jobs: collections.deque[Job] = collections.deque()
        self._working = False
        self._closed = False
        self._nursery: trio.Nursery | None = None
        #: the Device Model report being gathered after boot (2.x)
        self._report: _Report | None = None

    # --------------------------------------------------------------- life cycle

    async def run(self) -> None:
        """Serve the connection until it ends."""
        hub = self.hub
        hub.attach(self)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self.calls.attach(nursery)
                self._work_on()  # what was submitted before
                if self.tree.booted(self.identity):
                    nursery.start_soon(self._permit_after_grace)
                store = hub.store
                share = store.share()
                async for text in self.link.messages():
                    start = store.position
                    self._on_text(text)  # synchronous: what it queued is this station's
                    share.queued(start)
                    await self._send_outgoing()
                    if store.overloaded:
                        # backpressure (README "Bad peers"): while the database writer
                        # falls behind, a connection with more than its share unwritten
                        # reads on only once the writer has caught up with it
                        while store.pause(share, len(hub.stations)):
                            await store.progress()
                nursery.cancel_scope.cancel()
        finally:
            self._closed = True
            self._nursery = None
            self.calls.fail_pending("connection closed before the answer")
            while self._jobs:
                self._jobs.popleft().abandon("not connected")
            hub.detach(self)
            self.calls.let_go()

    async def call(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Send a CALL to the charge point and wait for its result (CallFailed says why
        there is none)."""
        return await self.calls.call(action, payload)

    def submit(self, job: Job) -> None:
        """Queue work for this charge point's command worker (one job at a time)."""
        if self._closed:
            job.abandon("not connected")
            return
        self._jobs.append(job)
        self._work_on()

    async def close(self, code: int, reason: str) -> None:
        await self.link.close(code, reason)

    async def _permit_after_grace(self) -> None:
        """A charge point that booted before and reconnects silently (MicroOcpp speaks
        only at its next Heartbeat) gets its controls after RECONNECT_GRACE_SEC."""
        await trio.sleep(RECONNECT_GRACE_SEC)
        session = self.session
        if not session.peer_has_called:
            if session.pending_calls:
                log.info(
                    "%s: silent since it reconnected %g s ago; sending its calls",
                    self.identity,
                    RECONNECT_GRACE_SEC,
                )
            session.permit(trio.current_time())
            await self._send_outgoing()

    def _work_on(self) -> None:
        """Start the command worker if there is work and it is not running."""
        if self._jobs and not self._working and self._nursery is not None:
            self._working = True
            self._nursery.start_soon(self._work)

    async def _work(self) -> None:
        # one job at a time, in the order submitted; done when none is left
        try:
            while self._jobs:
                await self._jobs.popleft().run(self)
        finally:
            self._working = False

    # ------------------------------------------------------------------ reading

    def _on_text(self, text: str) -> None:
        session = self.session
        received = session.receive(text, trio.current_time())
        redacted = secrets.may_hold(text)
        if redacted:
            received, redacted = masked(received)
        self._record(received.frame, redacted)
        self.tree.seen(self.identity)
        event = received.event
        if isinstance(event, CallReceived):
            if event.violation is not None:
                self._note_violation(event.action, event.violation.kind, event.violation.text)
            self._answer(event, received.frame)
        elif isinstance(event, ResultReceived):
            if event.violation is not None:
                self._note_violation(event.call.action, event.violation.kind, event.violation.text)
            self.tree.capture_response(
                self.identity, self.subprotocol, "out", event.call.action, event.payload
            )
            self.calls.resolve(event.call.message_id, payload=event.payload)
        elif isinstance(event, ErrorReceived):
            error = f"CALLERROR {event.code}: {event.description}".rstrip(": ")
            self.calls.resolve(event.call.message_id, error=error)
        elif isinstance(event, SendReceived):
            if event.violation is not None:
                self._note_violation(event.action, event.violation.kind, event.violation.text)
        elif isinstance(event, ProtocolViolation):
            kind = event.fault.name if event.fault else "reply"
            self.hub.log_violation_once(self.identity, received.frame.action, kind, event.reason)

    def _answer(self, call: CallReceived, frame: Frame) -> None:
        """Decide (the version mapping, pure), then do: answer, apply, capture."""
        try:
            answer = self.version.respond(self.context, call.action, call.payload)
        except Unprocessable as exc:
            self.session.fail(call, exc.fault, str(exc))
            return
        except Exception:
            log.exception("%s: %s: handler failed", self.identity, call.action)
            self.session.fail(call, Fault.INTERNAL, "the central system failed to process it")
            return
        verdict = self.version.token_verdict.get(call.action)
        if verdict in answer.payload and self.hub.upstream_decides(self.identity):
            # README "A second backend", authorize = "upstream": its verdict on the token,
            # asked for now (the call goes upstream first), waited for a few seconds
            if not self._repeated(call, frame) and self._nursery is not None:
                decision = self.hub.ask_upstream(
                    self.identity, self.subprotocol, call.action, call.payload, answer.payload
                )
                self._nursery.start_soon(self._answer_decided, call, frame, answer, decision)
                return
            self._complete(call, frame, answer, repeated=True)
            return
        self._complete(call, frame, answer)

    async def _answer_decided(
        self, call: CallReceived, frame: Frame, answer: Answer, decision: Decision
    ) -> None:
        """The upstream's idTagInfo / idTokenInfo in place of the local one, if it came in
        time; else the local rules' (the upstream's state says which decided)."""
        verdict = self.version.token_verdict[call.action]
        theirs = await decision()
        if isinstance(theirs, dict) and isinstance(theirs.get(verdict), dict):
            answer = answer._replace(payload={**answer.payload, verdict: theirs[verdict]})
        self._complete(call, frame, answer, repeated=False, forwarded=True)
        await self._send_outgoing()

    def _repeated(self, call: CallReceived, frame: Frame) -> bool:
        """A retry of a call applied already (answered again, applied once)."""
        return call.action in RETRIED and self.hub.repeated(
            self.identity, call.action, _payload_text(frame.text, call.message_id)
        )

    def _complete(
        self,
        call: CallReceived,
        frame: Frame,
        answer: Answer,
        repeated: bool | None = None,
        forwarded: bool = False,
    ) -> None:
        """Answer, then apply what the answer implies (once), capture, forward."""
        try:
            self.session.answer(call, answer.payload)
        except LocalProtocolError as exc:
            # the peer got a CALLERROR instead: nothing of the request is applied
            log.error("%s: %s", self.identity, exc)
            return
        if repeated is None:
            repeated = self._repeated(call, frame)
        if not repeated:  # a retry is answered again and applied once
            apply = self.tree.apply
            for update in answer.updates:
                apply(self.identity, update)
                if type(update) is DeviceModelReport and self._report is not None:
                    self._report.add(update)
            for reason in answer.unusable:
                self._note_violation(call.action, "Unusable", reason)
            if not forwarded:  # README "A second backend": on to the upstreams
                self.hub.forward(
                    self.identity, self.subprotocol, call.action, call.payload, answer.payload
                )
        self.tree.capture(
            self.identity, self.subprotocol, "in", call.action, call.payload, answer.payload
        )
        if call.action == "BootNotification":
            self.hub.publish(Booted(self))
            if self.hub.fetch_on_boot and self._nursery is not None:
                # queued now, sent once the answer above is out (Session sends in order)
                self._nursery.start_soon(self._fetch_after_boot)

    def _note_violation(self, action: str, kind: str, text: str) -> None:
        self.tree.violation(self.identity, f"{action}: {text}")
        self.hub.log_violation_once(self.identity, action, kind, text)

    # ------------------------------------------------------------------ writing

    def _record(self, frame: Frame, redacted: bool = False) -> None:
        self.hub.store.put(
            FrameRow(
                now_ms(),
                self.identity,
                self.subprotocol,
                frame.direction,
                frame.message_type,
                frame.message_id,
                frame.action,
                frame.text,
                frame.violation,
                int(redacted),
            )
        )

    async def _send_outgoing(self) -> None:
        frames = self.session.take_outgoing()
        if not frames or not self.link.open:
            return  # closing: nothing more may be sent; the waiters fail when it ends
        for frame in frames:
            if secrets.may_hold(frame.text):
                # the wire carries the secret the user wrote; the database never does
                stored, redacted = masked(Received(frame, None))
                self._record(stored.frame, redacted)
            else:
                self._record(frame)
        await self.link.send([frame.text for frame in frames])

    def _call_queued(self, action: str, payload: dict[str, Any]) -> None:
        shown, _ = secrets.redact(payload)
        self.tree.capture(self.identity, self.subprotocol, "out", action, shown)

    # ---------------------------------------------------------------- after boot

    async def _fetch_after_boot(self) -> None:
        """After each boot: ask for the configuration (1.6) or the Device Model (2.x:
        it comes in NotifyReport calls), then publish what was reported."""
        request_id = self.hub.request_id()
        action, payload = self.version.controls["fetchOnBoot"]({"requestId": request_id})
        report = self._report = _Report(request_id)
        try:
            response = await self.call(action, payload)
        except CallFailed as exc:
            log.warning("%s: %s after boot: %s", self.identity, action, exc)
            return
        keys = response.get("configurationKey")
        found: list[Any]
        if isinstance(keys, list):
            self.tree.apply(self.identity, ConfigurationReport(keys))
            found = keys
        else:
            with trio.move_on_after(REPORT_TIMEOUT_SEC) as waiting:
                await report.complete.wait()
            if waiting.cancelled_caught:
                log.warning(
                    "%s: the Device Model report was not complete after %g s",
                    self.identity,
                    REPORT_TIMEOUT_SEC,
                )
            found = report.values
        if self._report is report:
            self._report = None
        self.hub.publish(Reported(self, self.version.settings(found)))


@dataclass(slots=True, eq=False)
class _Report:
    """The parts of one Device Model report (NotifyReport with `tbc`, Part 2 B07)."""

    request_id: int
    values: list[DeviceModelValue] = dataclasses.field(default_factory=list)
    complete: trio.Event = dataclasses.field(default_factory=trio.Event)

    def add(self, part: DeviceModelReport) -> None:
        if part.request_id != self.request_id:
            return  # another report (a user's GetBaseReport)
        self.values.extend(part.values)
        if not part.more:
            self.complete.set()


def _payload_text(text: str, message_id: str) -> str:
    """A CALL's text without its message id: what a retry with a new id has in common."""
    return text.replace(message_id, "", 1)


def masked(received: Received) -> tuple[Received, bool]:
    """`received` with every secret masked in its frame text and its payload (README
    "Security"); whether there was one."""
    frame, event = received.frame, received.event
    try:
        message = json.loads(frame.text)
    except (ValueError, RecursionError):
        return received, False  # not JSON: no field to find a secret in
    masked, found = secrets.redact(message)
    if not found:
        return received, False
    frame = dataclasses.replace(frame, text=encode(masked))
    if isinstance(event, CallReceived | SendReceived | ResultReceived):
        event = dataclasses.replace(event, payload=secrets.redact(event.payload)[0])
    return Received(frame, event), True
