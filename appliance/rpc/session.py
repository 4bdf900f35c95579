"""OCPP-J RPC as a sans-I/O state machine, in the manner of h11.

Text frames go in with `receive(text, now)`; what arrived comes back as a record of the
frame and at most one event. Frames to send accumulate and are taken with
`take_outgoing()`. The caller supplies the clock; `expire(now)` reports the calls whose
time ran out, `next_deadline()` says when to call it next. Nothing here does I/O, imports
trio or touches the database.

Rules (OCPP-J 1.6 §4, OCPP 2.0.1 / 2.1 Part 4 §4): at most one CALL in flight per
direction; outgoing CALLs queue behind it; a result or error with an unknown or stale
message id is dropped without harming the connection; malformed input gets the error the
version prescribes. Until the peer has sent its first CALL, none of ours goes out
(README "On the wire": some chargers reboot-loop when the
central system speaks first).
"""

from __future__ import annotations

import enum
import json
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any

import msgspec

from appliance.domain import jsontext
from appliance.rpc.dialects import Dialect, Fault, MessageType
from appliance.rpc.validation import SchemaSet, Violation, has_lone_surrogate

#: OCPP 2.x Part 4 §4.1.4 caps message ids at 36 characters; 1.6 sets no cap but the
#: appliance's own ids (UUIDs) fit it.
_JSON_SEPARATORS = (",", ":")
#: OCPP 2.x Part 4 §4.2.3: errorDescription is string[0..255]; 1.6 sets no limit
MAX_ERROR_DESCRIPTION = 255


class Validation(enum.Enum):
    LENIENT = "lenient"
    STRICT = "strict"


class LocalProtocolError(Exception):
    """We were about to break the protocol: the frame was not sent."""


class SessionClosed(LocalProtocolError):
    """The session ended before the call could be answered."""


def encode(frame: list[Any]) -> str:
    text = jsontext.dumps(frame)
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            # a lone surrogate (JSON allows "\ud800", UTF-8 does not): send it escaped
            text = jsontext.dumps(frame, ensure_ascii=True)
    return text


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON (RFC 8259 §6)")


#: JSON as RFC 8259 has it: NaN and Infinity, which Python's json takes, are refused
_DECODER = json.JSONDecoder(parse_constant=_not_json)
#: the fast path (msgspec, in C: a third of the time); whatever it does not take (a
#: number beyond a double, a lone surrogate, bad JSON) goes to `_DECODER`, which says
#: what the README says about it
_FAST_DECODER = msgspec.json.Decoder()


def decode(text: str) -> Any:
    try:
        return _FAST_DECODER.decode(text)
    except msgspec.DecodeError:
        return _DECODER.decode(text)


# ---------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class Frame:
    """A frame as it crossed the wire, with what the RPC layer made of it."""

    direction: str  # "in" | "out"
    text: str
    message_type: int | None = None
    message_id: str | None = None
    action: str | None = None
    violation: str | None = None


@dataclass(slots=True, eq=False)
class OutgoingCall:
    message_id: str
    action: str
    payload: dict[str, Any]
    queued_at: float
    deadline: float
    sent_at: float | None = None


# ----------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class CallReceived:
    """A CALL to answer with `Session.answer` or `Session.fail` (in lenient mode it may
    carry a violation that still left the payload usable)."""

    message_id: str
    action: str
    payload: dict[str, Any]
    violation: Violation | None


@dataclass(frozen=True, slots=True)
class SendReceived:
    """OCPP 2.1 SEND: a one-way message, never answered."""

    message_id: str
    action: str
    payload: dict[str, Any]
    violation: Violation | None


@dataclass(frozen=True, slots=True)
class ResultReceived:
    call: OutgoingCall
    payload: dict[str, Any]
    violation: Violation | None


@dataclass(frozen=True, slots=True)
class ErrorReceived:
    call: OutgoingCall
    code: str
    description: str
    details: Any


@dataclass(frozen=True, slots=True)
class CallTimedOut:
    call: OutgoingCall
    reason: str


@dataclass(frozen=True, slots=True)
class ProtocolViolation:
    """The peer broke the protocol; already answered where the spec wants an answer.
    Reported so that the caller can log it."""

    fault: Fault | None
    reason: str


Event = (
    CallReceived | SendReceived | ResultReceived | ErrorReceived | CallTimedOut | ProtocolViolation
)


@dataclass(frozen=True, slots=True)
class Received:
    frame: Frame
    event: Event | None


# ---------------------------------------------------------------------------- session


@dataclass(slots=True)
class _Inbound:
    """Why a frame was refused, and with which id to answer (None: no answer at all)."""

    fault: Fault
    reason: str
    answer_id: str | None
    message_type: int | None = None
    action: str | None = None
    #: the id on the wire, where it differs from the one answered (a SEND is never answered)
    message_id: str | None = None


class Session:
    """One OCPP-J connection seen from one side.

    `accepts` names the actions this side serves (for the appliance: what charge points
    initiate); everything else the schemas know is answered NotSupported.
    """

    def __init__(
        self,
        dialect: Dialect,
        schemas: SchemaSet,
        accepts: frozenset[str],
        *,
        validation: Validation = Validation.LENIENT,
        call_timeout: float = 30.0,
        max_depth: int = 64,
        wait_for_peer: bool = True,
    ) -> None:
        self.dialect = dialect
        self.schemas = schemas
        self.accepts = accepts
        self.validation = validation
        self.call_timeout = call_timeout
        self.max_depth = max_depth
        self.peer_has_called = not wait_for_peer
        self.closed = False
        self._queue: deque[OutgoingCall] = deque()
        self._in_flight: OutgoingCall | None = None
        self._outgoing: list[Frame] = []
        #: the clock of the latest `receive`, for calls released by an answer
        self._now = 0.0

    # ------------------------------------------------------------------ outgoing side

    def call(self, action: str, payload: dict[str, Any], now: float) -> OutgoingCall:
        """Queue a CALL. Raises LocalProtocolError if the payload breaks the schema."""
        if self.closed:
            raise SessionClosed("the connection is closed")
        if not self.schemas.knows(action):
            raise LocalProtocolError(f"{action} is not an action of {self.dialect.subprotocol}")
        if not self.schemas.knows_response(action):
            raise LocalProtocolError(f"{action} is a SEND message; it cannot be a CALL")
        violation = self.schemas.check_request(action, payload, inbound=False)
        if violation is not None:
            raise LocalProtocolError(f"{action} not sent, it breaks the schema: {violation}")
        call = OutgoingCall(str(uuid.uuid4()), action, payload, now, now + self.call_timeout)
        self._queue.append(call)
        self._send_next(now)
        return call

    def answer(self, call: CallReceived, payload: dict[str, Any]) -> None:
        """Send the CALLRESULT. A response that breaks the schema is never sent and
        LocalProtocolError is raised; the peer gets instead the code of its own request's
        violation, where a leniently taken request made a valid answer impossible (README
        "Validation"), else InternalError."""
        violation = self.schemas.check_response(call.action, payload, inbound=False)
        if violation is not None:
            taken = call.violation
            if taken is not None:
                self.fail(call, taken.fault, taken.detail)
            else:
                self.fail(call, Fault.INTERNAL, "the central system could not build a valid answer")
            raise LocalProtocolError(f"{call.action} response breaks the schema: {violation}")
        self._emit([MessageType.CALLRESULT, call.message_id, payload], call.message_id, call.action)
        self._send_next(self._now)

    def fail(self, call: CallReceived, fault: Fault, description: str, details: Any = None) -> None:
        self._send_error(call.message_id, fault, description, call.action, details)
        self._send_next(self._now)

    def expire(self, now: float) -> list[CallTimedOut]:
        """Calls whose time ran out, in flight or still queued."""
        expired: list[CallTimedOut] = []
        flight = self._in_flight
        if flight is not None and flight.deadline <= now:
            self._in_flight = None
            expired.append(CallTimedOut(flight, f"no answer within {self.call_timeout:g} s"))
        while self._queue and self._queue[0].deadline <= now and not self._can_send():
            waiting = self._queue.popleft()
            why = (
                "the charge point has sent no message yet"
                if not self.peer_has_called
                else f"{flight.action if flight else 'an earlier call'} was still in flight"
            )
            expired.append(CallTimedOut(waiting, f"not sent within {self.call_timeout:g} s: {why}"))
        self._send_next(now)
        return expired

    def permit(self, now: float) -> None:
        """Calls may go out before the peer's first CALL from now on (the station
        decides when: README "On the wire", a charge point that reconnects silently)."""
        self.peer_has_called = True
        self._send_next(now)

    def next_deadline(self) -> float | None:
        deadlines = [self._queue[0].deadline] if self._queue else []
        if self._in_flight is not None:
            deadlines.append(self._in_flight.deadline)
        return min(deadlines, default=None)

    def close(self) -> list[OutgoingCall]:
        """End the session; returns the calls that will never be answered."""
        self.closed = True
        pending = list(self._queue)
        if self._in_flight is not None:
            pending.insert(0, self._in_flight)
        self._queue.clear()
        self._in_flight = None
        return pending

    def take_outgoing(self) -> list[Frame]:
        frames, self._outgoing = self._outgoing, []
        return frames

    @property
    def pending_calls(self) -> int:
        return len(self._queue) + (self._in_flight is not None)

    def _can_send(self) -> bool:
        return self._in_flight is None and self.peer_has_called and not self.closed

    def _send_next(self, now: float) -> None:
        if self._queue and self._can_send():
            call = self._queue.popleft()
            call.sent_at = now
            call.deadline = now + self.call_timeout
            self._in_flight = call
            self._emit(
                [MessageType.CALL, call.message_id, call.action, call.payload],
                call.message_id,
                call.action,
            )

    def _emit(self, frame: list[Any], message_id: str, action: str | None) -> None:
        self._outgoing.append(Frame("out", encode(frame), int(frame[0]), message_id, action))

    def _send_error(
        self,
        message_id: str,
        fault: Fault,
        description: str,
        action: str | None = None,
        details: Any = None,
        message_type: MessageType = MessageType.CALLERROR,
    ) -> None:
        code = self.dialect.error_code(fault)
        if len(description) > MAX_ERROR_DESCRIPTION:
            description = description[: MAX_ERROR_DESCRIPTION - 1] + "…"
        frame = [message_type, message_id, code, description, details or {}]
        self._emit(frame, message_id, action)

    # ------------------------------------------------------------------- incoming side

    def receive(self, text: str, now: float) -> Received:
        self._now = now
        try:
            message = self._parse(text)
            return self._dispatch(text, message, now)
        except _Refused as refused:
            bad = refused.inbound
            if bad.answer_id is not None:
                self._send_error(bad.answer_id, bad.fault, bad.reason, bad.action)
            self._send_next(now)
            code = self.dialect.error_code(bad.fault)
            message_id = bad.answer_id if bad.message_id is None else bad.message_id
            frame = Frame(
                "in", text, bad.message_type, message_id, bad.action, f"{code}: {bad.reason}"
            )
            return Received(frame, ProtocolViolation(bad.fault, bad.reason))

    def _parse(self, text: str) -> list[Any]:
        try:
            message = decode(text)
        except (ValueError, RecursionError) as exc:
            raise _Refused(
                _Inbound(Fault.FRAME, f"not JSON: {exc}", self.dialect.unreadable_id)
            ) from None
        # Cheap guard first: a frame with fewer brackets than the limit cannot nest deeper.
        if text.count("[") + text.count("{") > self.max_depth and _too_deep(
            message, self.max_depth
        ):
            raise _Refused(
                _Inbound(
                    Fault.FRAME,
                    f"JSON nested deeper than {self.max_depth} levels",
                    _readable_id(message) or self.dialect.unreadable_id,
                )
            )
        if not isinstance(message, list) or not message or type(message[0]) is not int:
            raise _Refused(
                _Inbound(
                    Fault.FRAME,
                    "not an OCPP-J array starting with a message type number",
                    _readable_id(message) or self.dialect.unreadable_id,
                )
            )
        return message

    def _dispatch(self, text: str, message: list[Any], now: float) -> Received:
        kind = message[0]
        message_id = _readable_id(message)
        if kind not in self.dialect.message_types:
            raise _Refused(
                _Inbound(
                    Fault.MESSAGE_TYPE,
                    f"message type {kind} is not part of {self.dialect.subprotocol}",
                    message_id or self.dialect.unreadable_id,
                    kind,
                )
            )
        if kind == MessageType.CALL or kind == MessageType.SEND:
            return self._receive_call(text, message, kind)
        return self._receive_reply(text, message, kind, now)

    def _receive_call(self, text: str, message: list[Any], kind: int) -> Received:
        is_send = kind == MessageType.SEND
        # A SEND is never answered, not even with an error (2.1 Part 4 §4.2.5).
        if len(message) != 4 or not isinstance(message[1], str) or not isinstance(message[2], str):
            readable = _readable_id(message)
            answer = None if is_send else (readable or self.dialect.unreadable_id)
            shape = "[6, id, action, payload]" if is_send else "[2, id, action, payload]"
            raise _Refused(
                _Inbound(Fault.FRAME, f"expected {shape}", answer, kind, message_id=readable)
            )
        _, message_id, action, payload = message
        self.peer_has_called = True

        def refuse(fault: Fault, reason: str) -> _Refused:
            answer_id = None if is_send else message_id
            return _Refused(_Inbound(fault, reason, answer_id, kind, action, message_id))

        if not self.schemas.knows(action):
            raise refuse(
                Fault.NOT_IMPLEMENTED, f"unknown action {action!r} in {self.dialect.subprotocol}"
            )
        if action not in self.accepts:
            raise refuse(Fault.NOT_SUPPORTED, f"{action} is not sent to this side")
        if is_send == self.schemas.knows_response(action):
            # 2.1: NotifyPeriodicEventStream is only ever a SEND; everything else a CALL
            expected = "a CALL" if is_send else "a SEND"
            raise refuse(Fault.NOT_SUPPORTED, f"{action} must be sent as {expected}")
        violation = self.schemas.check_request(
            action, payload, surrogates=_escapes(text) and has_lone_surrogate(payload)
        )
        if violation is not None and (
            violation.fault is Fault.FORMAT or self.validation is Validation.STRICT
        ):
            raise refuse(violation.fault, violation.detail)
        recorded = None if violation is None else violation.text
        frame = Frame("in", text, kind, message_id, action, recorded)
        event_type = SendReceived if is_send else CallReceived
        return Received(frame, event_type(message_id, action, payload, violation))

    def _receive_reply(self, text: str, message: list[Any], kind: int, now: float) -> Received:
        message_id = _readable_id(message)
        call = self._in_flight
        matched = call is not None and call.message_id == message_id
        action = call.action if (call is not None and matched) else None
        frame = Frame("in", text, kind, message_id, action)

        if kind == MessageType.CALLRESULT:
            shape_ok = len(message) == 3 and message_id is not None
        else:  # CALLERROR / CALLRESULTERROR; some firmware leaves out the details
            shape_ok = (
                len(message) in (4, 5)
                and message_id is not None
                and isinstance(message[2], str)
                and isinstance(message[3], str)
            )
        if not shape_ok or message_id is None:
            # Results are never answered (OCPP-J): drop and report.
            return Received(frame, ProtocolViolation(Fault.FRAME, f"malformed reply: {text[:200]}"))
        if kind == MessageType.CALLRESULTERROR:
            reason = f"peer could not process our result {message_id}: {message[2]} {message[3]}"
            return Received(frame, ProtocolViolation(None, reason))
        if not matched or call is None:
            reason = f"reply {message_id} matches no call in flight: dropped"
            return Received(frame, ProtocolViolation(None, reason))

        self._in_flight = None
        self._send_next(now)
        if kind == MessageType.CALLERROR:
            details = message[4] if len(message) == 5 else None
            return Received(frame, ErrorReceived(call, message[2], message[3], details))
        payload = message[2]
        violation = self.schemas.check_response(
            call.action, payload, surrogates=_escapes(text) and has_lone_surrogate(payload)
        )
        if violation is not None:
            frame = Frame("in", text, kind, message_id, call.action, violation.text)
            if MessageType.CALLRESULTERROR in self.dialect.message_types and (
                self.validation is Validation.STRICT or violation.fault is Fault.FORMAT
            ):
                self._send_error(
                    message_id,
                    violation.fault,
                    violation.detail,
                    call.action,
                    message_type=MessageType.CALLRESULTERROR,
                )
        if violation is not None and violation.fault is Fault.FORMAT:
            code = self.dialect.error_code(Fault.FORMAT)
            return Received(frame, ErrorReceived(call, code, violation.text, None))
        return Received(frame, ResultReceived(call, payload, violation))


class _Refused(Exception):
    def __init__(self, inbound: _Inbound) -> None:
        self.inbound = inbound


def _escapes(text: str) -> bool:
    """Whether `text` may hold a lone surrogate: only a \\u escape can write one."""
    return "\\u" in text


def _readable_id(message: object) -> str | None:
    if isinstance(message, list) and len(message) > 1 and isinstance(message[1], str):
        return message[1]
    return None


def _too_deep(value: object, limit: int) -> bool:
    """Whether parsed JSON nests deeper than `limit`; iterative, stops at the first excess."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(node, dict):
            stack.extend(
                (child, depth + 1) for child in node.values() if isinstance(child, (dict, list))
            )
        elif isinstance(node, list):
            stack.extend((child, depth + 1) for child in node if isinstance(child, (dict, list)))
    return False


__all__ = [
    "CallReceived",
    "CallTimedOut",
    "ErrorReceived",
    "Event",
    "Frame",
    "LocalProtocolError",
    "OutgoingCall",
    "ProtocolViolation",
    "Received",
    "ResultReceived",
    "SendReceived",
    "Session",
    "SessionClosed",
    "Validation",
]
