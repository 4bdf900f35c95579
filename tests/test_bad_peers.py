"""One bad peer never harms the appliance or another charge point (issue 12 point 1, issue
16's eight defects): each test lets a misbehaving peer do its thing through a real socket
while a second, well-behaved charge point is connected, then checks that the good one's
Heartbeats are still answered *and* still land in `messages`, that the process lives on,
and that it stops cleanly (exit 0, no traceback in its log)."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from conftest import Appliance, response_schema_name, schema_errors

TEXT, BINARY, CLOSE, PING, PONG, CONTINUATION = 0x1, 0x2, 0x8, 0x9, 0xA, 0x0
BIG = 9223372036854775808  # 2**63: one more than SQLite's largest INTEGER
NOT_JSON = {"ocpp1.6": "FormationViolation", "ocpp2.0.1": "RpcFrameworkError"}
NOT_JSON["ocpp2.1"] = NOT_JSON["ocpp2.0.1"]
STRICT_BAD = '[charge_points."BAD"]\nvalidation = "strict"\n'


# --------------------------------------------------------------------- the good peer


@dataclass
class GoodPeer:
    """A well-behaved 1.6 charge point: its Heartbeats must be answered and recorded."""

    appliance: Appliance
    ws: ClientConnection
    identity: str = "GOOD"
    sent: int = 0

    def heartbeat(self) -> str:
        self.sent += 1
        message_id = f"good-{self.sent}"
        self.ws.send(json.dumps([2, message_id, "Heartbeat", {}]))
        answer = json.loads(self.ws.recv(timeout=5))
        assert answer[:2] == [3, message_id], f"the good peer got {answer}"
        return message_id

    def assert_still_served(self) -> None:
        """Its Heartbeat is answered, both frames land in `messages` and its states
        (`info.lastHeartbeat`, the `.raw` capture) are written again: the writer still
        writes everything for everyone."""
        alive = self.appliance.proc.poll()
        assert alive is None, f"the appliance exited ({alive}):\n{self.appliance.log()[-3000:]}"
        sent_ms = int(time.time() * 1000) - 1
        message_id = self.heartbeat()
        stored(
            self.appliance,
            "SELECT direction FROM messages WHERE identity = ? AND message_id = ?",
            self.identity,
            message_id,
            count=2,
        )
        for state in ("info.lastHeartbeat", "ocpp.ocpp1_6.in.Heartbeat.raw"):
            stored(
                self.appliance,
                "SELECT val FROM states WHERE id = ? AND ts >= ?",
                f"{self.identity}.{state}",
                sent_ms,
            )


@contextlib.contextmanager
def good_peer(appliance: Appliance) -> Iterator[GoodPeer]:
    with connect(f"{appliance.url}/GOOD", subprotocols=["ocpp1.6"]) as ws:
        peer = GoodPeer(appliance, ws)
        peer.assert_still_served()
        yield peer


def assert_clean_exit(appliance: Appliance, traceback_expected: bool = False) -> None:
    """SIGTERM ends it with 0, and (unless the case logs one on purpose) no traceback."""
    assert appliance.proc.poll() is None, "the appliance had already exited"
    assert appliance.stop() == 0, appliance.log()[-3000:]
    if not traceback_expected:
        assert "Traceback" not in appliance.log(), appliance.log()[-3000:]
    assert appliance.query("PRAGMA integrity_check") == [("ok",)]


# ------------------------------------------------------------ a hand-written client


def client_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """One masked client frame (RFC 6455 §5.2); `fin=False` for all but a message's last."""
    mask = os.urandom(4)
    size = len(payload)
    first = (0x80 if fin else 0) | opcode
    if size < 126:
        head = bytes([first, 0x80 | size])
    elif size < 65536:
        head = bytes([first, 0x80 | 126]) + size.to_bytes(2, "big")
    else:
        head = bytes([first, 0x80 | 127]) + size.to_bytes(8, "big")
    repeated = (mask * (size // 4 + 1))[:size]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(
        size, "big"
    )
    return head + mask + masked


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return code.to_bytes(2, "big") + reason


@dataclass
class RawPeer:
    """A WebSocket client written out by hand, for what `websockets` would never send
    (broken UTF-8, bad close codes, fragments) and to see exactly what comes back."""

    sock: socket.socket
    buffer: bytearray = field(default_factory=bytearray)

    @classmethod
    def connect(cls, port: int, identity: str = "BAD", subprotocol: str = "ocpp1.6") -> RawPeer:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET /{identity} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Protocol: {subprotocol}\r\n\r\n"
        )
        sock.sendall(request.encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, f"closed before the upgrade answer: {data!r}"
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(sock, bytearray(rest))

    def send(self, opcode: int, payload: bytes, fin: bool = True) -> None:
        self.sock.sendall(client_frame(opcode, payload, fin))

    def send_text(self, text: str | bytes) -> None:
        self.send(TEXT, text.encode() if isinstance(text, str) else text)

    def recv_frame(self, timeout: float = 5) -> tuple[bool, int, bytes]:
        """The next frame but pings: (fin, opcode, payload). EOFError if the server
        closed TCP."""
        self.sock.settimeout(timeout)
        self._need(2)
        length, offset = self.buffer[1] & 0x7F, 2
        if length == 126:
            self._need(4)
            length, offset = int.from_bytes(self.buffer[2:4], "big"), 4
        elif length == 127:
            self._need(10)
            length, offset = int.from_bytes(self.buffer[2:10], "big"), 10
        self._need(offset + length)
        fin, opcode = bool(self.buffer[0] & 0x80), self.buffer[0] & 0x0F
        payload = bytes(self.buffer[offset : offset + length])
        del self.buffer[: offset + length]
        if opcode == PING:
            # the appliance's keep-alive: answered, as any client does, and read past
            with contextlib.suppress(OSError):
                self.send(PONG, payload)
            return self.recv_frame(timeout)
        return fin, opcode, payload

    def recv_json(self, timeout: float = 5) -> Any:
        """The next text message, skipping pongs."""
        while True:
            _, opcode, payload = self.recv_frame(timeout)
            if opcode == TEXT:
                return json.loads(payload)
            assert opcode == PONG, f"got opcode {opcode} ({payload!r}), not a text frame"

    def closing(self, timeout: float = 5) -> tuple[int | str, list[Any]]:
        """Read until the server's close frame: (its code, the text messages before it).
        Instead of a code: "reset" or "no close frame" if the connection just ended."""
        texts: list[Any] = []
        try:
            while True:
                _, opcode, payload = self.recv_frame(timeout)
                if opcode == CLOSE:
                    code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                    return code, texts
                if opcode == TEXT:
                    texts.append(json.loads(payload))
        except ConnectionResetError:
            return "reset (no close frame)", texts
        except EOFError:
            return "no close frame before the end of the connection", texts

    def _need(self, count: int) -> None:
        while len(self.buffer) < count:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("the server closed the connection")
            self.buffer += chunk

    def close(self) -> None:
        self.sock.close()


@contextlib.contextmanager
def raw_peer(appliance: Appliance, identity: str = "BAD", subprotocol: str = "ocpp1.6"):
    peer = RawPeer.connect(appliance.port, identity, subprotocol)
    try:
        yield peer
    finally:
        peer.close()


def call(ws: ClientConnection, text: str) -> Any:
    ws.send(text)
    return json.loads(ws.recv(timeout=5))


def stored(appliance: Appliance, sql: str, *params: Any, count: int = 1) -> list[tuple]:
    """`wait_rows`, failing with the end of the appliance's log (the writer's fate)."""
    try:
        return appliance.wait_rows(sql, *params, count=count, timeout=5)
    except AssertionError as exc:
        where = f" with {params}" if params else ""
        log = appliance.log()[-3000:]
        raise AssertionError(f"{exc}{where}\n--- server.log:\n{log}") from None


def in_rows(appliance: Appliance, message_id: str, identity: str = "BAD") -> list[tuple]:
    """The incoming frames of `identity` with that message id, once they are stored."""
    return stored(
        appliance,
        "SELECT payload, message_type, violation FROM messages"
        " WHERE identity = ? AND direction = 'in' AND message_id = ?",
        identity,
        message_id,
    )


# ============================================================== issue 12 point 1: frames


def test_invalid_utf8_in_a_text_frame_is_closed_with_1007_and_nobody_else_notices(appliance):
    """Issue 12.1 / issue 16 #8: invalid UTF-8 in a text frame closes that peer (1007)."""
    with good_peer(appliance) as good, raw_peer(appliance) as bad:
        bad.send_text(b'[2,"1","Heartbeat",{"x":"\xff"}]')
        code, answers = bad.closing()
        assert code == 1007, f"close code {code}, answers {answers}"
        assert answers == []
        good.assert_still_served()
    assert_clean_exit(appliance)


def test_a_fragmented_call_is_assembled_and_answered(appliance):
    """Issue 12.1 / 12.2: a CALL in a TEXT frame and two continuation frames."""
    text = json.dumps([2, "frag", "Heartbeat", {"vendorPad": "ab" * 20}])
    parts = [text[:10], text[10:30], text[30:]]
    with good_peer(appliance) as good, raw_peer(appliance) as bad:
        bad.send(TEXT, parts[0].encode(), fin=False)
        bad.send(CONTINUATION, parts[1].encode(), fin=False)
        bad.send(CONTINUATION, parts[2].encode())
        answer = bad.recv_json()
        assert answer[:2] == [3, "frag"], answer
        assert "currentTime" in answer[2]
        [(payload, message_type, _)] = in_rows(appliance, "frag")
        assert (payload, message_type) == (text, 2)
        good.assert_still_served()
        # one message in, one answer out: the fragments are not rows of their own
        rows = appliance.query("SELECT direction FROM messages WHERE identity = 'BAD' ORDER BY seq")
        assert rows == [("in",), ("out",)]
    assert_clean_exit(appliance)


def test_a_fragmented_message_over_max_frame_bytes_is_closed_with_1009(start_appliance):
    """Issue 12.1: fragments that are each small but together exceed the limit (1009)."""
    appliance = start_appliance("[limits]\nmax_frame_bytes = 4096\n")
    text = json.dumps([2, "huge", "Heartbeat", {"vendorPad": "x" * 6000}])
    with good_peer(appliance) as good, raw_peer(appliance) as bad:
        bad.send(TEXT, text[:3000].encode(), fin=False)
        bad.send(CONTINUATION, text[3000:].encode())
        code, answers = bad.closing()
        assert code == 1009, f"close code {code}"
        assert answers == [], "a fragment was answered as if it were a message"
        good.assert_still_served()
    assert appliance.query("SELECT count(*) FROM messages WHERE identity = 'BAD'") == [(0,)]
    assert_clean_exit(appliance)


def test_pings_inside_a_fragmented_message_are_answered_and_the_message_too(appliance):
    """Issue 12.1: control frames may come between fragments (RFC 6455 §5.4)."""
    text = json.dumps([2, "pinged", "Heartbeat", {}])
    with good_peer(appliance) as good, raw_peer(appliance) as bad:
        bad.send(TEXT, text[:8].encode(), fin=False)
        bad.send(PING, b"first")
        bad.send(CONTINUATION, text[8:20].encode(), fin=False)
        bad.send(PING, b"second")
        bad.send(CONTINUATION, text[20:].encode())
        pongs, texts = [], []
        while len(pongs) < 2 or not texts:
            _, opcode, payload = bad.recv_frame()
            assert opcode in (PONG, TEXT), f"opcode {opcode}: {payload!r}"
            (pongs if opcode == PONG else texts).append(payload)
        assert pongs == [b"first", b"second"]
        assert [json.loads(t)[:2] for t in texts] == [[3, "pinged"]], texts
        good.assert_still_served()
    assert_clean_exit(appliance)


@pytest.mark.parametrize("code", [999, 1005, 1006, 1015, 2999, 5000])
def test_a_close_frame_with_an_invalid_code_is_answered_with_1002(appliance, code):
    """Issue 12.1: a close code RFC 6455 §7.4 forbids on the wire is a protocol error."""
    with good_peer(appliance) as good, raw_peer(appliance) as bad:
        bad.send_text(json.dumps([2, "before", "Heartbeat", {}]))
        assert bad.recv_json()[:2] == [3, "before"]
        bad.send(CLOSE, close_payload(code, b"bye"))
        answered, _ = bad.closing()
        assert answered == 1002, f"close code {answered}"
        good.assert_still_served()
    assert_clean_exit(appliance)


def test_a_frame_after_the_close_frame_is_ignored(appliance):
    """Issue 12.1: nothing after a peer's close frame is processed."""
    with good_peer(appliance) as good, raw_peer(appliance) as bad:
        bad.sock.sendall(
            client_frame(CLOSE, close_payload(1000))
            + client_frame(TEXT, json.dumps([2, "late", "Heartbeat", {}]).encode())
        )
        code, answers = bad.closing()
        assert code == 1000, f"close code {code}"
        assert answers == []
        good.assert_still_served()
        assert appliance.query("SELECT count(*) FROM messages WHERE identity = 'BAD'") == [(0,)]
    assert_clean_exit(appliance)


ENDINGS = {
    "close": (client_frame(CLOSE, close_payload(1000)), 1000),
    "invalid-utf8": (client_frame(TEXT, b'["\xff"]'), 1007),
    "binary": (client_frame(BINARY, b"[]"), 1003),
}


@pytest.mark.parametrize("ending", list(ENDINGS))
def test_a_message_just_before_the_end_of_the_connection_is_still_recorded(appliance, ending):
    """Issue 12.1 / 12.6: a complete message that arrives in the same packet as a close
    (or a frame that fails the connection) crossed the wire: it is in `messages`."""
    last, code = ENDINGS[ending]
    with good_peer(appliance) as good, raw_peer(appliance) as bad:
        bad.sock.sendall(
            client_frame(TEXT, json.dumps([2, "last", "Heartbeat", {}]).encode()) + last
        )
        closed, _ = bad.closing()
        assert closed == code, f"close code {closed}"
        good.assert_still_served()
        in_rows(appliance, "last")
    assert_clean_exit(appliance)


FORGED = "\n1999-01-01T00:00:00 ERROR   GARAGE: forged line"
FORGING = {
    "action": ("BAD", [2, "f1", f"Foo{FORGED}", {}]),
    "reply-id": ("BAD", [3, f"nope{FORGED}", {}]),
    "identity": (f"BAD{quote(FORGED, safe='')}", [2, "f1", "Foo", {}]),
}


@pytest.mark.parametrize("where", list(FORGING))
def test_a_peer_cannot_forge_lines_of_the_log(appliance, where):
    """Issue 12.1: what a peer sends (action, message id, identity) never starts a line
    of its own in the log: every line is the appliance's, with its time and level."""
    path, frame = FORGING[where]
    with good_peer(appliance) as good, connect(f"{appliance.url}/{path}") as bad:
        bad.send(json.dumps(frame))
        bad.send(json.dumps([2, "after", "Heartbeat", {}]))
        while json.loads(bad.recv(timeout=5))[1] != "after":
            pass
        good.assert_still_served()
    assert_clean_exit(appliance)
    lines = appliance.log().splitlines()
    assert [text for text in lines if text.startswith(FORGED[1:20])] == []
    own = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR) ")
    assert [text for text in lines if not own.match(text)] == []


# ================================================================ issue 16: the defects


BIG_FRAMES = {
    "connectorId": (
        "ocpp1.6",
        [
            2,
            "big",
            "StatusNotification",
            {"connectorId": BIG, "errorCode": "NoError", "status": "Available"},
        ],
        "BAD.ocpp.ocpp1_6.in.StatusNotification.data.connectorId",
        BIG,
    ),
    "unknown-field": (
        "ocpp1.6",
        [2, "big", "Heartbeat", {"x": BIG}],
        "BAD.ocpp.ocpp1_6.in.Heartbeat.data.x",
        BIG,
    ),
    "negative": (
        "ocpp1.6",
        [2, "big", "Heartbeat", {"x": -4 * BIG}],
        "BAD.ocpp.ocpp1_6.in.Heartbeat.data.x",
        -4 * BIG,
    ),
    "customData": (
        "ocpp2.0.1",
        [2, "big", "Heartbeat", {"customData": {"vendorId": "ACME", "counter": BIG}}],
        "BAD.ocpp.ocpp2_0_1.in.Heartbeat.data.customData.counter",
        BIG,
    ),
    "message-type-id": ("ocpp1.6", [BIG, "big"], None, BIG),
}


@pytest.mark.parametrize("case", list(BIG_FRAMES))
def test_an_integer_beyond_64_bits_is_answered_and_storage_goes_on(appliance, case):
    """Issue 16 #1: 2**63 anywhere in a frame must not kill the database writer."""
    version, frame, state, value = BIG_FRAMES[case]
    with (
        good_peer(appliance) as good,
        connect(f"{appliance.url}/BAD", subprotocols=[version]) as bad,
    ):
        answer = call(bad, json.dumps(frame))
        if frame[0] == 2:
            assert answer[:2] == [3, "big"], answer
        else:
            assert answer[0] == 4, answer
            assert answer[2] in {"ProtocolError", "FormationViolation"}, answer
        # the bad frame itself is stored, digits and all
        [(payload, _, _)] = in_rows(appliance, "big")
        assert str(value) in payload
        good.assert_still_served()
        # the same connection is still served and recorded, too
        assert call(bad, json.dumps([2, "after", "Heartbeat", {}]))[:2] == [3, "after"]
        in_rows(appliance, "after")
    if state is not None:
        # kept losslessly (e.g. as text), not rounded through a float
        [(stored,)] = appliance.query("SELECT CAST(val AS TEXT) FROM states WHERE id = ?", state)
        assert stored == str(value)
    assert_clean_exit(appliance)


METER_VALUE_400 = {
    "timestamp": "2025-01-01T00:00:00Z",
    "sampledValue": [{"value": 1.0, "unitOfMeasure": {"unit": "Wh", "multiplier": 400}}],
}
MULTIPLIER_FRAMES = {
    "MeterValues": {"evseId": 1, "meterValue": [METER_VALUE_400]},
    "TransactionEvent": {
        "eventType": "Updated",
        "timestamp": "2025-01-01T00:00:00Z",
        "triggerReason": "MeterValuePeriodic",
        "seqNo": 1,
        "transactionInfo": {"transactionId": "TX-400"},
        "meterValue": [METER_VALUE_400],
    },
}


@pytest.mark.parametrize("action", list(MULTIPLIER_FRAMES))
@pytest.mark.parametrize("version", ["ocpp2.0.1", "ocpp2.1"])
def test_a_multiplier_of_400_is_answered_and_recorded_as_a_violation(appliance, version, action):
    """Issue 16 #2: 10**400 overflows a float; the reading is skipped, never InternalError."""
    with (
        good_peer(appliance) as good,
        connect(f"{appliance.url}/BAD", subprotocols=[version]) as bad,
    ):
        answer = call(bad, json.dumps([2, "m400", action, MULTIPLIER_FRAMES[action]]))
        assert answer[:2] == [3, "m400"], answer
        assert schema_errors(version, response_schema_name(version, action), answer[2]) == []
        [(payload, _, violation)] = in_rows(appliance, "m400")
        assert '"multiplier": 400' in payload
        good.assert_still_served()
        last = appliance.query("SELECT val FROM states WHERE id = 'BAD.info.lastViolation'")
        assert violation is not None or (last and last[0][0]), "the skipped reading is not recorded"
    assert_clean_exit(appliance)


@pytest.mark.parametrize("validation", ["lenient", "strict"])
def test_a_lone_surrogate_escape_is_answered_and_the_connection_stays(start_appliance, validation):
    """Issue 16 #3: `\\ud800` (valid JSON, no valid Unicode) gets an answer, not a drop."""
    appliance = start_appliance(STRICT_BAD if validation == "strict" else "")
    frame = r'[2,"a","Authorize",{"idTag":"\ud800"}]'
    assert frame.isascii()
    with good_peer(appliance) as good, raw_peer(appliance) as bad:
        bad.send_text(frame)
        try:
            answer = bad.recv_json()
        except (EOFError, ConnectionResetError, TimeoutError) as exc:
            pytest.fail(f"no answer to the lone surrogate: {exc!r}")
        assert answer[1] == "a", answer
        if validation == "lenient":
            assert answer[0] == 3, answer
        else:
            assert answer[0] == 4 and answer[2] != "InternalError", answer
        bad.send_text(json.dumps([2, "after", "Heartbeat", {}]))
        assert bad.recv_json()[:2] == [3, "after"]
        in_rows(appliance, "a")
        in_rows(appliance, "after")
        good.assert_still_served()
    assert_clean_exit(appliance)


def test_a_lone_surrogate_in_a_key_is_answered_and_no_state_is_lost(appliance):
    """Issue 16 #3 / issue 12.1: `\udde9` as a customData key; the states of that frame,
    and of the other charge point in the same commit, are still written."""
    frame = r'[2,"k","Heartbeat",{"customData":{"vendorId":"ACME","\udde9":1}}]'
    with good_peer(appliance) as good, raw_peer(appliance, subprotocol="ocpp2.0.1") as bad:
        bad.send_text(frame)
        good.assert_still_served()  # its Heartbeat lands in the same commit, mostly
        answer = bad.recv_json()
        assert answer[:2] == [3, "k"], answer
        in_rows(appliance, "k")
        [(raw,)] = stored(
            appliance, "SELECT val FROM states WHERE id = 'BAD.ocpp.ocpp2_0_1.in.Heartbeat.raw'"
        )
        assert "ACME" in raw
        bad.send_text(json.dumps([2, "after", "Heartbeat", {}]))
        assert bad.recv_json()[:2] == [3, "after"]
    assert_clean_exit(appliance)


ECHOING_REQUESTS = {
    "empty-certificateStatusRequests": (
        "GetCertificateChainStatus",
        {"certificateStatusRequests": []},
    ),
    "evseId-as-string": ("VatNumberValidation", {"vatNumber": "DE123456789", "evseId": "355"}),
}
TABLE_CODES_2X = {
    "OccurrenceConstraintViolation",
    "TypeConstraintViolation",
    "PropertyConstraintViolation",
    "FormatViolation",
}


@pytest.mark.parametrize("case", list(ECHOING_REQUESTS))
def test_a_lenient_answer_that_echoes_the_request_is_never_internal_error(appliance, case):
    """Issue 16 #4: a valid answer built from the taken values, or the table's code."""
    action, payload = ECHOING_REQUESTS[case]
    with (
        good_peer(appliance) as good,
        connect(f"{appliance.url}/BAD", subprotocols=["ocpp2.1"]) as bad,
    ):
        answer = call(bad, json.dumps([2, "echo", action, payload]))
        assert answer[1] == "echo", answer
        if answer[0] == 3:
            assert schema_errors("ocpp2.1", f"{action}Response", answer[2]) == []
            if case == "evseId-as-string":
                assert answer[2].get("evseId") in (None, 355), answer
        else:
            assert answer[0] == 4 and answer[2] in TABLE_CODES_2X, answer
        in_rows(appliance, "echo")
        good.assert_still_served()
    assert_clean_exit(appliance)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize("version", ["ocpp1.6", "ocpp2.0.1", "ocpp2.1"])
def test_nan_and_infinity_are_not_json(appliance, version, literal):
    """Issue 16 #5: NaN / Infinity get the table's "not JSON" code (RFC 8259)."""
    with (
        good_peer(appliance) as good,
        connect(f"{appliance.url}/BAD", subprotocols=[version]) as bad,
    ):
        frame = f'[2,"nan","Heartbeat",{{"x":{literal}}}]'
        answer = call(bad, frame)
        assert answer[0] == 4, answer
        assert answer[2] == NOT_JSON[version], answer
        assert call(bad, json.dumps([2, "after", "Heartbeat", {}]))[:2] == [3, "after"]
        in_rows(appliance, "after")
        good.assert_still_served()
    # the frame itself is kept, verbatim
    kept = "SELECT count(*) FROM messages WHERE direction = 'in' AND payload = ?"
    assert appliance.query(kept, frame) == [(1,)]
    # every frame the README's queries can select (a readable message type) is JSON
    # to SQLite; unreadable frames are kept verbatim with message_type NULL
    broken = appliance.query(
        "SELECT payload FROM messages WHERE message_type IS NOT NULL AND NOT json_valid(payload)"
    )
    assert broken == []
    appliance.query("SELECT json_extract(payload, '$[3]') FROM messages WHERE message_type = 2")
    assert_clean_exit(appliance)


def test_a_number_beyond_a_double_is_answered_and_kept_as_valid_json(appliance):
    """Issue 16 #5, the class: 1e400 is JSON (RFC 8259), so what the appliance keeps of
    it must be JSON to SQLite too (README: `json` states are JSON text)."""
    frame = '[2,"e400","Heartbeat",{"x":1e400,"y":-1e400,"z":1e-400}]'
    with (
        good_peer(appliance) as good,
        connect(f"{appliance.url}/BAD", subprotocols=["ocpp1.6"]) as bad,
    ):
        assert call(bad, frame)[:2] == [3, "e400"]
        [(payload, _, _)] = in_rows(appliance, "e400")
        assert payload == frame
        good.assert_still_served()
    not_json = appliance.query(
        "SELECT s.id, s.val FROM states s JOIN objects o ON o.id = s.id"
        " WHERE s.id GLOB 'BAD.ocpp.*' AND o.type = 'json' AND NOT json_valid(s.val)"
    )
    assert not_json == []
    assert_clean_exit(appliance)


class BackgroundSend(threading.Thread):
    """Send without blocking the test (the server may stop reading at any time); `error`
    is what the send ran into, if anything."""

    def __init__(self, sock: socket.socket, data: bytes) -> None:
        super().__init__(daemon=True)
        self.sock, self.data = sock, data
        self.error: OSError | None = None
        self.start()

    def run(self) -> None:
        try:
            self.sock.sendall(self.data)
        except OSError as exc:
            self.error = exc


@pytest.mark.parametrize(
    "size", [pytest.param(4 * 2**20, id="4MiB"), pytest.param(2**20 + 1, id="1MiB+1")]
)
def test_a_too_big_frame_gets_its_1009_close_frame_not_a_reset(appliance, size):
    """Issue 16 #6: the peer must learn why (close 1009), not see a connection reset."""
    head = '[2,"big","Heartbeat",{"vendorPad":"'
    text = (head + "x" * (size - len(head) - 3) + '"}]').encode()
    assert len(text) == size
    with good_peer(appliance) as good, raw_peer(appliance) as bad:
        sender = BackgroundSend(bad.sock, client_frame(TEXT, text))
        sender.join(timeout=10)
        code, answers = bad.closing()
        assert code == 1009, f"close code {code}"
        assert answers == []
        # a client library that takes a failed send as the end never reads that 1009
        assert sender.error is None, f"the frame could not be sent to its end: {sender.error!r}"
        good.assert_still_served()
    assert_clean_exit(appliance)


def test_a_standard_client_sending_4_mib_learns_1009(appliance):
    """Issue 16 #6, as a charge point built on a WebSocket library would see it."""
    with (
        good_peer(appliance) as good,
        connect(f"{appliance.url}/BAD", subprotocols=["ocpp1.6"], max_size=None) as bad,
    ):
        with contextlib.suppress(ConnectionClosed):
            bad.send(json.dumps([2, "big", "Heartbeat", {"vendorPad": "x" * 4 * 2**20}]))
        with pytest.raises(ConnectionClosed) as closed:
            bad.recv(timeout=5)
        received = closed.value.rcvd
        assert received is not None, "no close frame: the connection was reset"
        assert received.code == 1009
        good.assert_still_served()
    assert_clean_exit(appliance)


def test_start_transactions_differing_beyond_float_precision_get_different_ids(appliance):
    """Issue 16 #7: meterStart 2**53 and 2**53 + 1 are two transactions, not a repeat."""
    start = {"connectorId": 1, "idTag": "TAG1", "timestamp": "2025-01-01T00:00:00Z"}
    with (
        good_peer(appliance) as good,
        connect(f"{appliance.url}/BAD", subprotocols=["ocpp1.6"]) as bad,
    ):
        first = call(bad, json.dumps([2, "s1", "StartTransaction", {**start, "meterStart": 2**53}]))
        second = call(
            bad, json.dumps([2, "s2", "StartTransaction", {**start, "meterStart": 2**53 + 1}])
        )
        assert first[:2] == [3, "s1"] and second[:2] == [3, "s2"], (first, second)
        assert first[2]["transactionId"] != second[2]["transactionId"]
        # an exact repeat (a lost answer) still gets the same id again
        again = call(bad, json.dumps([2, "s3", "StartTransaction", {**start, "meterStart": 2**53}]))
        assert again[2]["transactionId"] == first[2]["transactionId"]
        good.assert_still_served()
    assert_clean_exit(appliance)
