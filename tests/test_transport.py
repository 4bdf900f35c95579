"""The transport as a charge point (and its owner) sees it: the handshake and its refusals,
subprotocol negotiation, limits against bad peers, keep-alive, replacement of a duplicate
identity, server-initiated calls and the orderly shutdown (README "On the wire",
"Security", "Controls")."""

from __future__ import annotations

import base64
import functools
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

import conftest
from appliance.station import CallFailed
from conftest import Appliance, in_process_server, query

BOOT16 = {"chargePointVendor": "Vendor", "chargePointModel": "Model"}

# --------------------------------------------------------------------------- helpers


def heartbeat(ws: ClientConnection, message_id: str = "hb") -> list[Any]:
    """Send a Heartbeat and return the answer frame."""
    ws.send(json.dumps([2, message_id, "Heartbeat", {}]))
    return json.loads(ws.recv(timeout=5))


def assert_heartbeat_answered(ws: ClientConnection, message_id: str = "hb") -> None:
    answer = heartbeat(ws, message_id)
    assert answer[:2] == [3, message_id], answer
    assert isinstance(answer[2].get("currentTime"), str), answer


def open_client(url: str, subprotocols: list[str] | None = None) -> ClientConnection:
    """A connected client for tests that close it themselves (entered, because websockets
    17 warns about a connection opened outside `with`)."""
    return connect(url, subprotocols=subprotocols).__enter__()


def refused_status(url: str, subprotocols: list[str] | None = None) -> int:
    """The HTTP status with which the server refuses the upgrade (fails if it accepts)."""
    with pytest.raises(InvalidStatus) as refused:
        connect(url, subprotocols=subprotocols, open_timeout=5).close()
    return refused.value.response.status_code


def closed_by_server(ws: ClientConnection, timeout: float = 5) -> int | None:
    """Wait for the server's close; returns the close code it sent (None: no close frame)."""
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            ws.recv(timeout=timeout)
    return None if closed.value.rcvd is None else closed.value.rcvd.code


def address(ws: ClientConnection) -> str:
    host, port = ws.local_address[:2]
    return f"{host}:{port}"


def connection_log(db: Any, identity: str) -> list[tuple]:
    sql = "SELECT event, reason, remote_addr, protocol FROM connection_log WHERE identity = ?"
    return query(db, sql + " ORDER BY seq", identity)


def refused_rows(appliance: Appliance, count: int = 1) -> list[tuple]:
    return appliance.wait_rows(
        "SELECT identity, reason FROM connection_log WHERE event = 'refused' ORDER BY seq",
        count=count,
    )


def nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = {"v": value}
    return value


def top_level(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    """Put top-level keys before TEST_CONFIG: it ends in a [storage] table, so keys passed
    as `extra_config` would land in that table."""
    monkeypatch.setattr(conftest, "TEST_CONFIG", text + conftest.TEST_CONFIG)


def config_replacing(old: str, new: str) -> str:
    """conftest.TEST_CONFIG with one line changed (a repeated TOML key would be an error)."""
    assert old in conftest.TEST_CONFIG, f"{old!r} is no longer in TEST_CONFIG"
    return conftest.TEST_CONFIG.replace(old, new)


# A raw client, for what `websockets` would not send or would answer by itself.


@dataclass
class RawResponse:
    status: int
    headers: dict[str, list[str]]
    sock: socket.socket
    rest: bytes = b""
    buffer: bytearray = field(default_factory=bytearray)

    def header(self, name: str) -> list[str]:
        return self.headers.get(name.lower(), [])

    def send_text(self, text: str) -> None:
        self.sock.sendall(client_frame(0x1, text.encode()))

    def recv_frame(self) -> tuple[int, bytes]:
        if not self.buffer and self.rest:
            self.buffer += self.rest
            self.rest = b""
        self._need(2)
        length, offset = self.buffer[1] & 0x7F, 2
        if length == 126:
            self._need(4)
            length, offset = int.from_bytes(self.buffer[2:4], "big"), 4
        elif length == 127:
            self._need(10)
            length, offset = int.from_bytes(self.buffer[2:10], "big"), 10
        self._need(offset + length)
        opcode = self.buffer[0] & 0x0F
        payload = bytes(self.buffer[offset : offset + length])
        del self.buffer[: offset + length]
        return opcode, payload

    def recv_json(self) -> Any:
        """The next text frame, skipping pings (this client never answers them)."""
        while True:
            opcode, payload = self.recv_frame()
            if opcode == 0x1:
                return json.loads(payload)
            assert opcode == 0x9, f"unexpected frame opcode {opcode}: {payload!r}"

    def _need(self, count: int) -> None:
        while len(self.buffer) < count:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("the server closed the connection")
            self.buffer += chunk


def client_frame(opcode: int, payload: bytes) -> bytes:
    """One masked, final client frame (RFC 6455 §5.2)."""
    mask = os.urandom(4)
    size = len(payload)
    if size < 126:
        head = bytes([0x80 | opcode, 0x80 | size])
    elif size < 65536:
        head = bytes([0x80 | opcode, 0x80 | 126]) + size.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + size.to_bytes(8, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def raw_request(port: int, request: bytes) -> RawResponse:
    """Send `request` as is and read the response head."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before a response head: {data!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, list[str]] = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    return RawResponse(int(status_line.split()[1]), headers, sock, rest)


def raw_upgrade(port: int, path: str, protocol_header: str | None = None) -> RawResponse:
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}",
        "Sec-WebSocket-Version: 13",
    ]
    if protocol_header is not None:
        lines.append(f"Sec-WebSocket-Protocol: {protocol_header}")
    return raw_request(port, ("\r\n".join(lines) + "\r\n\r\n").encode())


def seconds_until_closed(sock: socket.socket, timeout: float = 5) -> float:
    """Read (never answering anything) until the server closes; returns the seconds taken."""
    start = time.monotonic()
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        raise AssertionError(
            f"the server did not close the connection within {timeout} s"
        ) from None
    except ConnectionResetError:
        pass
    return time.monotonic() - start


# In-process helpers: every blocking client call goes to a thread, the server runs here.


async def in_thread(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return await trio.to_thread.run_sync(functools.partial(function, *args, **kwargs))


async def eventually(check: Callable[[], Any], timeout: float = 5, what: str = "it") -> Any:
    deadline = trio.current_time() + timeout
    while True:
        result = check()
        if result:
            return result
        if trio.current_time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await trio.sleep(0.02)


# --------------------------------------------------------------------------- refusals


def test_no_common_subprotocol_is_refused_with_400(appliance):
    assert refused_status(f"{appliance.url}/CP400", ["ocpp9"]) == 400
    [(identity, reason)] = refused_rows(appliance)
    assert identity == "CP400"
    assert "subprotocol" in reason
    assert appliance.query("SELECT count(*) FROM connection_log WHERE event = 'connect'") == [(0,)]


def test_identity_not_in_allowlist_is_refused_with_403(start_appliance, monkeypatch):
    top_level(monkeypatch, 'identity_allowlist = ["CP-OK"]\n')
    appliance = start_appliance()
    assert refused_status(f"{appliance.url}/CP-STRANGER", ["ocpp2.0.1"]) == 403
    with connect(f"{appliance.url}/CP-OK", subprotocols=["ocpp2.0.1"]) as ws:
        assert_heartbeat_answered(ws)
    [(identity, reason)] = refused_rows(appliance)
    assert identity == "CP-STRANGER"
    assert "allowlist" in reason or "not allowed" in reason


@pytest.mark.parametrize("path", ["/", "/ocpp/"])
def test_no_identity_in_path_is_refused_with_404(appliance, path):
    assert refused_status(f"{appliance.url}{path}", ["ocpp2.0.1"]) == 404
    [(identity, reason)] = refused_rows(appliance)
    assert identity is None
    assert "identity" in reason


def test_connection_limit_is_refused_with_503(start_appliance):
    appliance = start_appliance("[limits]\nmax_connections = 2\n")
    first = open_client(f"{appliance.url}/CP-A", subprotocols=["ocpp2.0.1"])
    second = open_client(f"{appliance.url}/CP-B", subprotocols=["ocpp2.0.1"])
    try:
        assert_heartbeat_answered(first)
        assert_heartbeat_answered(second)
        assert refused_status(f"{appliance.url}/CP-C", ["ocpp2.0.1"]) == 503
        [(identity, reason)] = refused_rows(appliance)
        assert identity == "CP-C"
        assert "limit" in reason
        # both are still served
        assert_heartbeat_answered(second, "hb2")
        first.close()
        # a place is free again once the first connection is gone
        deadline = time.monotonic() + 5
        while True:
            try:
                third = open_client(f"{appliance.url}/CP-C", subprotocols=["ocpp2.0.1"])
                break
            except InvalidStatus:
                assert time.monotonic() < deadline, "a closed connection still counts"
                time.sleep(0.1)
        with third:
            assert_heartbeat_answered(third)
    finally:
        first.close()
        second.close()


def test_plain_http_get_is_refused(appliance):
    response = raw_request(appliance.port, b"GET /CP1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    response.sock.close()
    assert 400 <= response.status < 500
    [(_, reason)] = refused_rows(appliance)
    assert reason
    assert appliance.query("SELECT count(*) FROM connection_log WHERE event = 'connect'") == [(0,)]


def test_refused_upgrade_does_not_harm_the_server(appliance):
    for _ in range(3):
        assert refused_status(f"{appliance.url}/CPX", ["ocpp9"]) == 400
    with connect(f"{appliance.url}/CPX", subprotocols=["ocpp2.1"]) as ws:
        assert_heartbeat_answered(ws)
    refused_rows(appliance, count=3)


# ---------------------------------------------------------------- identity and subprotocol


def test_identity_is_last_path_segment_percent_decoded(appliance):
    url = f"{appliance.url}/some/prefix/CP%2F7%20x"
    with connect(url, subprotocols=["ocpp1.6"]) as ws:
        ws.send(json.dumps([2, "b1", "BootNotification", BOOT16]))
        answer = json.loads(ws.recv(timeout=5))
    assert answer[0] == 3 and answer[2]["status"] == "Accepted"
    rows = appliance.wait_rows("SELECT DISTINCT identity FROM messages")
    assert rows == [("CP/7 x",)]
    log = appliance.wait_rows(
        "SELECT identity, event FROM connection_log ORDER BY seq", count=2, timeout=5
    )
    assert log == [("CP/7 x", "connect"), ("CP/7 x", "disconnect")]


def test_newest_offered_subprotocol_is_chosen(appliance):
    offered = ["ocpp1.6", "ocpp2.0.1", "ocpp2.1"]
    with connect(f"{appliance.url}/CP21", subprotocols=offered) as ws:
        assert ws.subprotocol == "ocpp2.1"
        assert_heartbeat_answered(ws)
    rows = appliance.wait_rows("SELECT DISTINCT protocol FROM messages")
    assert rows == [("ocpp2.1",)]
    log = appliance.wait_rows("SELECT protocol FROM connection_log WHERE event = 'connect'")
    assert log == [("ocpp2.1",)]


def test_disabled_subprotocol_is_not_chosen(start_appliance, monkeypatch):
    top_level(monkeypatch, "enable21 = false\n")
    appliance = start_appliance()
    offered = ["ocpp1.6", "ocpp2.0.1", "ocpp2.1"]
    with connect(f"{appliance.url}/CP201", subprotocols=offered) as ws:
        assert ws.subprotocol == "ocpp2.0.1"
        assert_heartbeat_answered(ws)
    assert refused_status(f"{appliance.url}/CP201", ["ocpp2.1"]) == 400


def test_subprotocol_header_with_stray_commas_and_spaces_is_understood(appliance):
    response = raw_upgrade(appliance.port, "/CP-COMMAS", ",ocpp1.6, ,ocpp2.0.1,")
    with response.sock:
        assert response.status == 101
        assert response.header("Sec-WebSocket-Protocol") == ["ocpp2.0.1"]
        response.send_text(json.dumps([2, "h1", "Heartbeat", {}]))
        answer = response.recv_json()
    assert answer[:2] == [3, "h1"]
    assert "currentTime" in answer[2]
    rows = appliance.wait_rows("SELECT protocol, direction FROM messages ORDER BY seq", count=2)
    assert rows[:2] == [("ocpp2.0.1", "in"), ("ocpp2.0.1", "out")]


def test_no_subprotocol_offered_is_taken_as_ocpp16(appliance):
    with connect(f"{appliance.url}/CP-OLD") as ws:
        assert ws.response.status_code == 101
        assert "Sec-WebSocket-Protocol" not in ws.response.headers
        assert ws.subprotocol is None
        ws.send(json.dumps([2, "b1", "BootNotification", BOOT16]))
        answer = json.loads(ws.recv(timeout=5))
    assert answer[:2] == [3, "b1"]
    # the 1.6 shape: status, currentTime and interval (2.x would nest the status differently)
    assert answer[2]["status"] == "Accepted"
    assert answer[2]["interval"] == 300
    rows = appliance.wait_rows("SELECT protocol FROM messages ORDER BY seq", count=2)
    assert {protocol for (protocol,) in rows} == {"ocpp1.6"}


def test_no_subprotocol_offered_with_16_disabled_is_refused(start_appliance, monkeypatch):
    top_level(monkeypatch, "enable16 = false\n")
    appliance = start_appliance()
    assert refused_status(f"{appliance.url}/CP-OLD") == 400
    [(identity, reason)] = refused_rows(appliance)
    assert identity == "CP-OLD"
    assert "subprotocol" in reason


# ----------------------------------------------------------------- duplicate identity


async def test_second_connection_with_same_identity_replaces_the_first(tmp_path):
    with trio.fail_after(30):
        async with in_process_server(tmp_path) as running:
            url = f"{running.url}/DUP"
            old = await in_thread(open_client, url, subprotocols=["ocpp2.0.1"])
            old_address = address(old)
            await in_thread(assert_heartbeat_answered, old, "old")
            new = await in_thread(open_client, url, subprotocols=["ocpp2.0.1"])
            code = await in_thread(closed_by_server, old)
            assert code is not None, "the old connection was cut without a close frame"
            await in_thread(assert_heartbeat_answered, new, "new")

            rows = await eventually(
                lambda: (r := connection_log(running.db, "DUP")) and len(r) >= 3 and r,
                what="the old connection's disconnect row",
            )
            assert [event for event, *_ in rows] == ["connect", "connect", "disconnect"]
            _, reason, remote, _ = rows[2]
            assert "replaced" in reason
            assert remote == old_address
            assert rows[1][2] == address(new)

            # the registry still holds the new connection after the old one is gone
            await trio.sleep(0.2)
            current = running.stations.get("DUP")
            assert current is not None, "the replaced connection took the new one with it"
            assert current.link.remote == address(new)

            def answer_reset() -> list[Any]:
                call = json.loads(new.recv(timeout=5))
                new.send(json.dumps([3, call[1], {"status": "Accepted"}]))
                return call

            got: dict[str, Any] = {}

            async def charge_point() -> None:
                got["call"] = await in_thread(answer_reset)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(charge_point)
                result = await current.call("Reset", {"type": "Immediate"})
            assert result == {"status": "Accepted"}
            assert got["call"][2] == "Reset"
            await in_thread(assert_heartbeat_answered, new, "still")
            await in_thread(new.close)


# ----------------------------------------------------------------------------- frames


def test_binary_frame_closes_cleanly_with_1003(appliance):
    with connect(f"{appliance.url}/CP-BIN", subprotocols=["ocpp2.0.1"]) as ws:
        assert_heartbeat_answered(ws)
        ws.send(b'[2,"1","Heartbeat",{}]')
        assert closed_by_server(ws) == 1003
    # the connection's end is logged once its peer has read the close (the drain); a new
    # connection before that would replace it (and say so instead)
    [(reason,)] = appliance.wait_rows(
        "SELECT reason FROM connection_log WHERE identity = 'CP-BIN' AND event = 'disconnect'"
    )
    assert "1003" in reason, reason
    with connect(f"{appliance.url}/CP-BIN", subprotocols=["ocpp2.0.1"]) as ws:
        assert_heartbeat_answered(ws)
    rows = appliance.wait_rows(
        "SELECT event FROM connection_log WHERE identity = 'CP-BIN' ORDER BY seq", count=3
    )
    assert [event for (event,) in rows][:3] == ["connect", "disconnect", "connect"], rows


def test_oversized_frame_closes_with_1009(start_appliance):
    appliance = start_appliance("[limits]\nmax_frame_bytes = 1000\n")
    with connect(f"{appliance.url}/CP-BIG", subprotocols=["ocpp2.0.1"]) as ws:
        # just under the limit is fine (vendor fields are tolerated)
        small = json.dumps([2, "small", "Heartbeat", {"vendorPad": "x" * 900}])
        assert len(small) <= 1000
        ws.send(small)
        answer = json.loads(ws.recv(timeout=5))
        assert answer[:2] == [3, "small"]
        ws.send(json.dumps([2, "big", "Heartbeat", {"vendorPad": "x" * 5000}]))
        assert closed_by_server(ws) == 1009
    with connect(f"{appliance.url}/CP-BIG", subprotocols=["ocpp2.0.1"]) as ws:
        assert_heartbeat_answered(ws)
    rows = appliance.wait_rows(
        "SELECT message_id FROM messages WHERE direction = 'in' ORDER BY seq", count=2
    )
    assert ("big",) not in rows


@pytest.mark.parametrize(
    ("version", "code"),
    [
        ("ocpp1.6", "FormationViolation"),
        ("ocpp2.0.1", "RpcFrameworkError"),
        ("ocpp2.1", "RpcFrameworkError"),
    ],
)
def test_deeply_nested_json_gets_callerror_and_connection_stays(start_appliance, version, code):
    appliance = start_appliance("[limits]\nmax_json_depth = 8\n")
    with connect(f"{appliance.url}/CP-DEEP", subprotocols=[version]) as ws:
        # a little nesting in a vendor field is fine
        ws.send(json.dumps([2, "shallow", "Heartbeat", {"vendorData": nested(3)}]))
        answer = json.loads(ws.recv(timeout=5))
        assert answer[:2] == [3, "shallow"], answer
        ws.send(json.dumps([2, "deep", "Heartbeat", {"vendorData": nested(20)}]))
        answer = json.loads(ws.recv(timeout=5))
        assert answer[0] == 4, answer
        assert answer[1] == "deep"
        assert answer[2] == code
        assert_heartbeat_answered(ws)


# ------------------------------------------------------------------ bad or dead peers


def test_handshake_timeout_drops_silent_and_half_requests(start_appliance):
    appliance = start_appliance("[limits]\nhandshake_timeout_sec = 1\n")
    silent = socket.create_connection(("127.0.0.1", appliance.port), timeout=5)
    half = socket.create_connection(("127.0.0.1", appliance.port), timeout=5)
    half.sendall(b"GET /CP-HALF HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n")
    with silent, half:
        first = seconds_until_closed(silent)
        second = seconds_until_closed(half)
    assert 0.5 <= first <= 4, first
    assert second <= 4, second
    rows = refused_rows(appliance, count=2)
    assert len(rows) == 2
    for _, reason in rows:
        assert "handshake" in reason
        assert re.search(r"\b1(\.0+)? ?s(ec)?\b|time", reason), reason
    # the server is unharmed
    with connect(f"{appliance.url}/CP-AFTER", subprotocols=["ocpp2.0.1"]) as ws:
        assert_heartbeat_answered(ws)


def test_dead_peer_is_dropped_after_missing_pong(start_appliance, monkeypatch):
    monkeypatch.setattr(
        conftest,
        "TEST_CONFIG",
        config_replacing("ping_interval_sec = 30", "ping_interval_sec = 1"),
    )
    appliance = start_appliance()
    alive = open_client(f"{appliance.url}/CP-ALIVE", subprotocols=["ocpp2.0.1"])
    dead = raw_upgrade(appliance.port, "/CP-DEAD", "ocpp2.0.1")
    try:
        assert dead.status == 101
        elapsed = seconds_until_closed(dead.sock, timeout=6)
        assert elapsed <= 4, f"dead peer dropped only after {elapsed:.1f} s"
        rows = appliance.wait_rows(
            "SELECT reason FROM connection_log WHERE identity = 'CP-DEAD' AND event = 'disconnect'"
        )
        assert "pong" in rows[0][0]
        # a peer that answers pings (websockets does) is kept past several intervals
        time.sleep(max(0.0, 3.2 - elapsed))
        assert_heartbeat_answered(alive)
        assert appliance.query(
            "SELECT count(*) FROM connection_log WHERE identity = 'CP-ALIVE'"
            " AND event = 'disconnect'"
        ) == [(0,)]
    finally:
        dead.sock.close()
        alive.close()


# ------------------------------------------------------------ server-initiated calls


async def test_nothing_is_sent_before_the_first_call_of_the_charge_point(tmp_path, monkeypatch):
    top_level(monkeypatch, "call_timeout_sec = 5\n")
    with trio.fail_after(30):
        async with in_process_server(tmp_path) as running:
            ws = await in_thread(open_client, f"{running.url}/QUIET", subprotocols=["ocpp2.0.1"])
            connection = await eventually(lambda: running.stations.get("QUIET"))
            results: dict[str, Any] = {}
            async with trio.open_nursery() as nursery:

                async def reset() -> None:
                    results["reset"] = await connection.call("Reset", {"type": "Immediate"})

                nursery.start_soon(reset)
                with pytest.raises(TimeoutError):
                    await in_thread(ws.recv, timeout=1.0)
                assert query(running.db, "SELECT count(*) FROM messages") == [(0,)]

                # the charge point speaks: the waiting call follows promptly
                await in_thread(ws.send, json.dumps([2, "hb", "Heartbeat", {}]))
                first = json.loads(await in_thread(ws.recv, timeout=2))
                assert first[:2] == [3, "hb"]
                try:
                    second = json.loads(await in_thread(ws.recv, timeout=2))
                except TimeoutError:
                    pytest.fail(
                        "the call queued before the charge point's first CALL was still not"
                        " sent 2 s after that CALL (call_timeout_sec = 5)"
                    )
                assert second[0] == 2 and second[2] == "Reset", second
                await in_thread(ws.send, json.dumps([3, second[1], {"status": "Accepted"}]))
            assert results["reset"] == {"status": "Accepted"}
            await in_thread(ws.close)


async def test_outgoing_calls_wait_for_the_previous_answer(tmp_path, monkeypatch):
    top_level(monkeypatch, "call_timeout_sec = 5\n")
    with trio.fail_after(30):
        async with in_process_server(tmp_path) as running:
            ws = await in_thread(open_client, f"{running.url}/SERIAL", subprotocols=["ocpp2.0.1"])
            await in_thread(assert_heartbeat_answered, ws)
            connection = running.stations["SERIAL"]
            results: dict[str, Any] = {}

            async def reset(kind: str) -> None:
                results[kind] = await connection.call("Reset", {"type": kind})

            async with trio.open_nursery() as nursery:
                nursery.start_soon(reset, "Immediate")
                await trio.sleep(0.1)
                nursery.start_soon(reset, "OnIdle")
                first = json.loads(await in_thread(ws.recv, timeout=2))
                assert first[0] == 2 and first[2:] == ["Reset", {"type": "Immediate"}], first
                # the second call is not sent while the first is unanswered
                with pytest.raises(TimeoutError):
                    await in_thread(ws.recv, timeout=0.7)
                await in_thread(ws.send, json.dumps([3, first[1], {"status": "Accepted"}]))
                second = json.loads(await in_thread(ws.recv, timeout=2))
                assert second[0] == 2 and second[2:] == ["Reset", {"type": "OnIdle"}], second
                assert second[1] != first[1]
                await in_thread(ws.send, json.dumps([3, second[1], {"status": "Rejected"}]))
            assert results == {
                "Immediate": {"status": "Accepted"},
                "OnIdle": {"status": "Rejected"},
            }
            await in_thread(ws.close)


async def test_call_timeout_is_reported_and_stale_result_ignored(tmp_path, monkeypatch):
    top_level(monkeypatch, "call_timeout_sec = 1\n")
    with trio.fail_after(30):
        async with in_process_server(tmp_path) as running:
            ws = await in_thread(open_client, f"{running.url}/SLOW", subprotocols=["ocpp2.0.1"])
            await in_thread(assert_heartbeat_answered, ws)
            connection = running.stations["SLOW"]
            failure: dict[str, Any] = {}

            async def reset() -> None:
                started = trio.current_time()
                try:
                    await connection.call("Reset", {"type": "Immediate"})
                except CallFailed as exc:
                    failure["message"] = str(exc)
                failure["after"] = trio.current_time() - started

            async with trio.open_nursery() as nursery:
                nursery.start_soon(reset)
                call = json.loads(await in_thread(ws.recv, timeout=2))
                assert call[2] == "Reset"
            assert "message" in failure, "the call did not fail"
            assert re.search(r"\b1(\.0+)? ?s(ec(ond)?s?)?\b", failure["message"]), failure
            assert 0.8 <= failure["after"] <= 3, failure

            # the late answer is dropped; the connection keeps working both ways
            await in_thread(ws.send, json.dumps([3, call[1], {"status": "Accepted"}]))
            await in_thread(assert_heartbeat_answered, ws, "after-stale")
            assert running.stations.get("SLOW") is connection

            async with trio.open_nursery() as nursery:
                answered: dict[str, Any] = {}

                async def reset_again() -> None:
                    answered["result"] = await connection.call("Reset", {"type": "OnIdle"})

                nursery.start_soon(reset_again)
                again = json.loads(await in_thread(ws.recv, timeout=2))
                assert again[2:] == ["Reset", {"type": "OnIdle"}]
                assert again[1] != call[1]
                await in_thread(ws.send, json.dumps([3, again[1], {"status": "Accepted"}]))
            assert answered["result"] == {"status": "Accepted"}
            stale = await eventually(
                lambda: query(
                    running.db,
                    "SELECT count(*) FROM messages WHERE direction = 'in' AND message_id = ?",
                    call[1],
                )[0][0],
                what="the stale result in messages",
            )
            assert stale == 1

            # the deadlines are kept again after a quiet spell with no call pending
            await trio.sleep(1.5)
            failure.clear()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(reset)
                late = json.loads(await in_thread(ws.recv, timeout=2))
                assert late[2] == "Reset"
            assert "1 s" in failure.get("message", ""), failure
            assert 0.8 <= failure["after"] <= 3, failure
            await in_thread(ws.close)


# ---------------------------------------------------------------------------- shutdown


def exit_status_within(appliance: Appliance, deadline: float) -> int:
    try:
        return appliance.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        raise AssertionError("the appliance did not exit within 5 s of the signal") from None


@pytest.mark.parametrize("commit_interval_ms", [1000, 10000])
def test_sigterm_closes_with_1001_flushes_and_exits_0(
    start_appliance, monkeypatch, commit_interval_ms
):
    # The default interval, and a long one a user may pick to spare an SD card: either
    # way the last frames reach the file only through the final flush, within the 5 s.
    monkeypatch.setattr(
        conftest,
        "TEST_CONFIG",
        config_replacing("commit_interval_ms = 50", f"commit_interval_ms = {commit_interval_ms}"),
    )
    # no GetConfiguration after the 1.6 boot: the clients below only expect answers
    appliance = start_appliance("[device_model]\nfetch_on_boot = false\n")
    clients = {
        "TERM16": open_client(f"{appliance.url}/TERM16", subprotocols=["ocpp1.6"]),
        "TERM201": open_client(f"{appliance.url}/TERM201", subprotocols=["ocpp2.0.1"]),
        "TERM21": open_client(f"{appliance.url}/TERM21", subprotocols=["ocpp2.1"]),
    }
    # a peer that never answers the close, and one that never finishes its handshake
    mute = raw_upgrade(appliance.port, "/TERM-MUTE", "ocpp2.0.1")
    silent = socket.create_connection(("127.0.0.1", appliance.port), timeout=5)
    try:
        assert mute.status == 101
        expected = set()
        for identity, ws in clients.items():
            if identity == "TERM16":
                ws.send(json.dumps([2, "boot", "BootNotification", BOOT16]))
                assert json.loads(ws.recv(timeout=5))[:2] == [3, "boot"]
                expected |= {(identity, "in", "boot"), (identity, "out", "boot")}
            for n in range(3):
                assert_heartbeat_answered(ws, f"hb{n}")
                expected |= {(identity, "in", f"hb{n}"), (identity, "out", f"hb{n}")}

        started = time.monotonic()
        appliance.proc.send_signal(signal.SIGTERM)
        for ws in clients.values():
            assert closed_by_server(ws) == 1001
        assert exit_status_within(appliance, started + 5) == 0
    finally:
        for ws in clients.values():
            ws.close()
        mute.sock.close()
        silent.close()
    assert appliance.query("PRAGMA integrity_check") == [("ok",)]
    stored = appliance.query("SELECT identity, direction, message_id FROM messages")
    assert expected - set(stored) == set()


def test_sigint_closes_with_1001_and_exits_0(appliance):
    with connect(f"{appliance.url}/INT", subprotocols=["ocpp2.0.1"]) as ws:
        assert_heartbeat_answered(ws)
        started = time.monotonic()
        appliance.proc.send_signal(signal.SIGINT)
        assert closed_by_server(ws) == 1001
        assert exit_status_within(appliance, started + 5) == 0
    assert appliance.query("PRAGMA integrity_check") == [("ok",)]
    assert appliance.query("SELECT direction, message_id FROM messages ORDER BY seq") == [
        ("in", "hb"),
        ("out", "hb"),
    ]


async def test_a_frame_in_the_same_read_as_the_101_is_not_lost():
    """The appliance's own client (upstream links, the simulator) hands out a frame the
    server sent right behind its 101 in the same TCP segment: an upstream that sends a
    CALL at once (a GetConfiguration after connect) is heard."""
    import hashlib

    from appliance.transport.client import open_websocket

    call = '[2,"first","GetConfiguration",{}]'

    async def server(stream: trio.SocketStream) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            request += await stream.receive_some(4096)
        key = re.search(rb"Sec-WebSocket-Key: (\S+)", request, re.IGNORECASE)
        assert key is not None
        magic = key.group(1) + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
        accept = base64.b64encode(hashlib.sha1(magic).digest())
        head = (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\nSec-WebSocket-Protocol: ocpp1.6\r\n\r\n"
        )
        frame = bytes([0x81, len(call)]) + call.encode()
        await stream.send_all(head + frame)  # one write: one segment on loopback
        await trio.sleep(5)

    async with trio.open_nursery() as nursery:
        serve = functools.partial(trio.serve_tcp, server, 0, host="127.0.0.1")
        listeners = await nursery.start(serve)
        port = listeners[0].socket.getsockname()[1]
        with trio.fail_after(5):
            ws = await open_websocket(f"ws://127.0.0.1:{port}", "CP", "ocpp1.6")
            assert await ws.receive_messages() == [call]
        await ws.aclose()
        nursery.cancel_scope.cancel()
