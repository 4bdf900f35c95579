"""Bounded resources, from anyone (issue 27, points 1 and 3; README "Bad peers"): the
handshakes in progress at once (the rest wait in the kernel's listen backlog, not
accepted), per source address the handshakes and the open connections of the OCPP port
and the connections of the web port, the 503 with Retry-After, one log line per peer,
and backpressure on a charge point that sends faster than the database is written.

Many peers are real sockets from loopback sources (127.0.0.2, 127.0.0.3, …: Linux routes
all of 127/8 to lo), against a real `ocpp-appliance serve`; the backpressure test runs
the appliance in this process so that it can lower the writer's backlog bound."""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import sqlite3
import ssl
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from test_security import make_pki, tls_config
from websockets.exceptions import InvalidStatus, WebSocketException
from websockets.sync.client import ClientConnection, connect

from conftest import Appliance, in_process_server, wait_for

BOOT16 = {"chargePointVendor": "Vendor", "chargePointModel": "Model"}
#: a few seconds of nothing is how a test sees that something waits (never a duration it
#: asserts): long enough for the appliance to have acted had it wanted to
QUIET_SEC = 0.5


# --------------------------------------------------------------------------- helpers


def source(n: int) -> str:
    """Loopback source address n: a peer of its own to the appliance."""
    return f"127.0.0.{n}"


def tcp_from(address: str, port: int) -> socket.socket:
    """A TCP connection to the appliance's port from `address`."""
    sock = socket.socket()
    sock.settimeout(10)
    sock.bind((address, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def upgrade(identity: str, protocol: str = "ocpp1.6") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET /{identity} HTTP/1.1\r\nHost: box\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Sec-WebSocket-Protocol: {protocol}\r\n\r\n"
    ).encode()


def response_head(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-case names) and the bytes after the head; raises
    ConnectionError when the server closes or resets before a head."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionAbortedError(f"closed before a response head: {data!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status.split()[1]), headers, rest


def reset_at_once(port: int, address: str) -> bool:
    """An upgrade from `address` is cut off without a byte of an answer (the reset may
    come before connect() returns, or before the request is sent)."""
    try:
        sock = tcp_from(address, port)
    except ConnectionResetError:
        return True
    with closing(sock):
        try:
            sock.sendall(upgrade("CP-EXTRA"))
            return sock.recv(65536) == b""
        except (ConnectionResetError, BrokenPipeError):
            return True


def silent(sock: socket.socket) -> bool:
    """Nothing arrives for QUIET_SEC: the connection waits."""
    sock.settimeout(QUIET_SEC)
    try:
        data = sock.recv(65536)
    except TimeoutError:
        return True
    finally:
        sock.settimeout(10)
    raise AssertionError(f"expected to wait, got {data!r}")


def charge_point(appliance: Appliance, identity: str, address: str) -> ClientConnection:
    """A 1.6 charge point from `address`, booted."""
    ws = connect(
        f"{appliance.url}/{identity}",
        subprotocols=["ocpp1.6"],
        source_address=(address, 0),
        open_timeout=10,
    ).__enter__()
    assert call(ws, "BootNotification", BOOT16)["status"] == "Accepted"
    return ws


def call(ws: ClientConnection, action: str, payload: dict[str, Any]) -> dict[str, Any]:
    message_id = os.urandom(4).hex()
    ws.send(json.dumps([2, message_id, action, payload]))
    answer = json.loads(ws.recv(timeout=10))
    assert answer[:2] == [3, message_id], answer
    return answer[2]


def refusal(appliance: Appliance, identity: str, address: str) -> Any:
    """The HTTP response that refuses `identity`'s upgrade from `address`."""
    with pytest.raises(InvalidStatus) as refused:
        connect(
            f"{appliance.url}/{identity}",
            subprotocols=["ocpp1.6"],
            source_address=(address, 0),
            open_timeout=10,
        ).close()
    return refused.value.response


def accept_queue(port: int) -> int:
    """Connections the kernel holds for the listening socket on `port`, not yet accepted
    (/proc/net/tcp: a listening socket's rx_queue is its accept queue)."""
    with open("/proc/net/tcp") as table:
        rows = table.read().splitlines()[1:]
    for line in rows:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == "0A":
            return int(fields[4].split(":")[1], 16)
    raise AssertionError(f"nothing listens on {port}")


def listen_backlog(port: int) -> int | None:
    """The listen backlog of the socket on `port` (`ss`: Send-Q of a listening socket)."""
    if shutil.which("ss") is None:
        return None
    out = subprocess.run(
        ["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout
    return int(out.split()[2])


def lines(appliance: Appliance, *words: str) -> list[str]:
    return [line for line in appliance.log().splitlines() if all(w in line for w in words)]


@contextmanager
def closing(*socks: socket.socket | ClientConnection) -> Iterator[None]:
    try:
        yield
    finally:
        for sock in socks:
            sock.close()


# ------------------------------------------------------------- the whole listener


def test_503_at_max_connections_says_when_to_come_back(start_appliance):
    appliance = start_appliance("[limits]\nmax_connections = 1\n")
    first = charge_point(appliance, "CP-FIRST", source(1))
    with closing(first):
        answer = refusal(appliance, "CP-SECOND", source(1))
        assert answer.status_code == 503
        assert answer.headers["Retry-After"] == "30"
        assert b"max_connections = 1" in answer.body
        assert call(first, "Heartbeat", {})


def test_handshakes_beyond_max_handshakes_wait_in_the_listen_backlog(start_appliance):
    """Two peers that never finish their handshake hold both places: the next connection
    is not accepted (it waits in the kernel's accept queue, nothing of the appliance's
    memory), the charge point already up is served meanwhile, and a place that frees up
    takes the waiting one in."""
    appliance = start_appliance("[limits]\nmax_handshakes = 2\nhandshake_timeout_sec = 60\n")
    port = appliance.port
    backlog = listen_backlog(port)
    assert backlog is None or backlog >= 1024, backlog
    up = charge_point(appliance, "CP-UP", source(1))
    stalled = [tcp_from(source(2), port) for _ in range(2)]
    with closing(up, *stalled):
        wait_for(lambda: accept_queue(port) == 0, 10, "the two stalled peers accepted")
        waiting = tcp_from(source(3), port)
        with closing(waiting):
            waiting.sendall(upgrade("CP-WAITING"))
            wait_for(lambda: accept_queue(port) == 1, 10, "a connection in the accept queue")
            assert silent(waiting)
            assert accept_queue(port) == 1, "accepted while both places were taken"
            # the connection already up is not held up by the handshakes
            assert "currentTime" in call(up, "Heartbeat", {})
            stalled[0].close()
            status, _, _ = response_head(waiting)
            assert status == 101
    assert appliance.query("SELECT count(*) FROM connection_log WHERE identity = 'CP-WAITING'")


def test_a_crowd_from_one_address_all_get_in_with_the_defaults(start_appliance):
    """Charge points behind one router, or HAProxy, share an address: by default no
    per-address cap refuses them, and more handshakes than max_handshakes at once only
    wait their turn."""
    appliance = start_appliance("[limits]\nmax_handshakes = 4\n")
    count = 40
    barrier = threading.Barrier(count)

    def one(i: int) -> str:
        barrier.wait()
        ws = charge_point(appliance, f"CROWD-{i:02d}", "127.0.0.1")
        with closing(ws):
            return call(ws, "Heartbeat", {})["currentTime"]

    with ThreadPoolExecutor(count) as pool:
        answers = list(pool.map(one, range(count)))
    assert len(answers) == count
    assert appliance.query("SELECT count(*) FROM connection_log WHERE event = 'refused'") == [(0,)]


# -------------------------------------------------------------- per source address


def test_handshakes_per_address_beyond_the_cap_are_reset(start_appliance):
    appliance = start_appliance(
        "[limits]\nmax_handshakes_per_address = 2\nhandshake_timeout_sec = 60\n"
    )
    port = appliance.port
    stalled = [tcp_from(source(2), port) for _ in range(2)]
    with closing(*stalled):
        wait_for(lambda: accept_queue(port) == 0, 10, "the two stalled peers accepted")
        for _ in range(4):
            assert reset_at_once(port, source(2)), "a third handshake from one address served"
        # another address is not affected
        other = charge_point(appliance, "CP-OTHER", source(3))
        other.close()
        # one log line for the peer, not one per attempt
        logged = lines(appliance, "refused from 127.0.0.2", "max_handshakes_per_address = 2")
        assert len(logged) == 1, logged
        rows = appliance.wait_rows(
            "SELECT reason FROM connection_log WHERE event = 'refused' AND remote_addr LIKE ?",
            "127.0.0.2:%",
            count=4,
        )
        assert all("max_handshakes_per_address" in reason for (reason,) in rows), rows
    # once the stalled ones are gone the address gets in again
    ws = wait_for(
        lambda: _try(lambda: charge_point(appliance, "CP-LATER", source(2))), 10, "a place again"
    )
    ws.close()


def _try(attempt: Any) -> Any:
    try:
        return attempt()
    except (OSError, WebSocketException):
        # InvalidStatus, InvalidMessage or ConnectionClosed: reset before any answer (the
        # appliance may not have seen the stalled peers leave yet)
        return None


def test_connections_per_address_beyond_the_cap_get_503_with_retry_after(start_appliance):
    appliance = start_appliance("[limits]\nmax_connections_per_address = 2\n")
    a = charge_point(appliance, "CP-A", source(2))
    b = charge_point(appliance, "CP-B", source(2))
    with closing(a, b):
        for _ in range(3):
            answer = refusal(appliance, "CP-C", source(2))
            assert answer.status_code == 503
            assert answer.headers["Retry-After"] == "30"
            assert b"max_connections_per_address = 2" in answer.body
        logged = lines(appliance, "refused from 127.0.0.2", "max_connections_per_address = 2")
        assert len(logged) == 1, logged
        # another address is not affected
        d = charge_point(appliance, "CP-D", source(3))
        d.close()
        # a charge point that reconnects replaces its own old connection: not refused
        again = charge_point(appliance, "CP-A", source(2))
        with closing(again):
            assert call(b, "Heartbeat", {})
            b.close()
            c = wait_for(
                lambda: _try(lambda: charge_point(appliance, "CP-C", source(2))),
                10,
                "CP-B's place for CP-C",
            )
            c.close()


# ------------------------------------------------------------------ the web port


def web_port(appliance: Appliance) -> int:
    return wait_for(lambda: "web dashboard" in appliance.log(), 10, "web") and appliance.web_port


def event_stream(port: int, address: str, context: ssl.SSLContext | None = None) -> Any:
    """`GET /api/events` from `address`, its head read: a connection that stays open."""
    sock: Any = tcp_from(address, port)
    if context is not None:
        sock = context.wrap_socket(sock, server_hostname="localhost")
    sock.sendall(b"GET /api/events HTTP/1.1\r\nHost: box\r\n\r\n")
    status, _, _ = response_head(sock)
    assert status == 200
    return sock


def get(port: int, address: str, path: str = "/healthz") -> tuple[int, dict[str, str], bytes]:
    sock = tcp_from(address, port)
    with closing(sock):
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: box\r\nConnection: close\r\n\r\n".encode())
        return response_head(sock)


def test_web_connections_per_address_beyond_the_cap_get_503(start_appliance):
    appliance = start_appliance(
        '\n[web]\nhost = "127.0.0.1"\nport = 0\nmax_connections_per_address = 3\n'
    )
    port = web_port(appliance)
    streams = [event_stream(port, source(2)) for _ in range(3)]
    with closing(*streams):
        for _ in range(3):
            status, headers, body = get(port, source(2))
            assert status == 503
            assert headers["retry-after"] == "10"
            assert b"at most 3" in body
        assert get(port, source(3))[0] == 200
        logged = lines(appliance, "web: refused from 127.0.0.2", "max_connections_per_address")
        assert len(logged) == 1, logged
        streams[0].close()
        wait_for(lambda: get(port, source(2))[0] == 200, 10, "a place again for 127.0.0.2")


def test_web_https_beyond_the_cap_is_reset_before_tls(start_appliance, tmp_path):
    pki = make_pki(tmp_path / "pki", [])
    appliance = start_appliance(
        tls_config(pki) + '\n[web]\nhost = "127.0.0.1"\nport = 0\nmax_connections_per_address = 1\n'
    )
    port = web_port(appliance)
    context = ssl.create_default_context(cafile=str(pki.server_ca))
    stream = event_stream(port, source(2), context)
    with closing(stream):
        # the reset may come before the TLS hello, or even during connect() on a busy machine
        with pytest.raises((ssl.SSLError, OSError)):
            extra = tcp_from(source(2), port)
            with closing(extra):
                context.wrap_socket(extra, server_hostname="localhost")
        other = event_stream(port, source(3), context)
        other.close()
    logged = lines(appliance, "web: refused from 127.0.0.2", "max_connections_per_address = 1")
    assert len(logged) == 1, logged


# -------------------------------------------------------------------- backpressure


def _frame(text: str) -> bytes:
    """A masked client text frame (mask key 0: the payload as it is)."""
    data = text.encode()
    size = len(data)
    if size < 126:
        head = bytes([0x81, 0x80 | size])
    elif size < 65536:
        head = bytes([0x81, 0x80 | 126]) + size.to_bytes(2, "big")
    else:
        head = bytes([0x81, 0x80 | 127]) + size.to_bytes(8, "big")
    return head + b"\0\0\0\0" + data


class Flood:
    """A charge point that sends `count` DataTransfers of a kilobyte as fast as TCP takes
    them, while a thread of its own reads every answer (so that nothing but the
    appliance's reading can hold it up)."""

    def __init__(self, port: int, count: int) -> None:
        self.count = count
        self.sock = tcp_from("127.0.0.1", port)
        self.sock.settimeout(None)
        self.sock.sendall(upgrade("FLOOD"))
        status, _, rest = response_head(self.sock)
        assert status == 101
        self.buffer = bytearray(rest)
        self.sent = 0
        self.answered = 0
        self.sender = threading.Thread(target=self._send, daemon=True)
        self.reader = threading.Thread(target=self._read, daemon=True)

    def start(self) -> None:
        self.reader.start()
        self.sender.start()

    def _send(self) -> None:
        data = "x" * 1000
        for i in range(self.count):
            payload = {"vendorId": "test", "data": data}
            self.sock.sendall(_frame(json.dumps([2, f"f{i}", "DataTransfer", payload])))
            self.sent += 1

    def _read(self) -> None:
        while self.answered < self.count:
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            self.buffer += chunk
            while len(self.buffer) >= 2:
                size, offset = self.buffer[1] & 0x7F, 2
                if size == 126:
                    size, offset = int.from_bytes(self.buffer[2:4], "big"), 4
                if len(self.buffer) < offset + size:
                    break
                if self.buffer[0] & 0x0F == 0x1:
                    self.answered += 1
                del self.buffer[: offset + size]

    def close(self) -> None:
        self.sock.close()


@asynccontextmanager
async def paused_flood(tmp_path: Path, count: int) -> AsyncIterator[tuple[Any, Flood]]:
    """A charge point flooding DataTransfers while another program holds the database's
    write lock (for less than the busy timeout): yields once the flood is no longer
    read (its answers and its sending have stopped); afterwards the lock goes and every
    frame is answered before the appliance stops."""
    with trio.fail_after(60):
        async with in_process_server(tmp_path) as running:
            store = running.server.store
            flood = await trio.to_thread.run_sync(Flood, running.port, count)
            try:
                lock = sqlite3.connect(running.db, isolation_level=None)
                lock.execute("BEGIN IMMEDIATE")
                try:
                    flood.start()
                    while not store.overloaded:
                        await trio.sleep(0.01)
                    seen: tuple[int, int] | None = None
                    while (flood.answered, flood.sent) != seen:
                        seen = (flood.answered, flood.sent)
                        await trio.sleep(QUIET_SEC)
                    yield running, flood
                finally:
                    lock.execute("COMMIT")
                    lock.close()
                while flood.answered < count:
                    await trio.sleep(0.05)
            finally:
                await trio.to_thread.run_sync(flood.close)


async def test_a_flood_faster_than_the_database_waits_in_tcp_not_in_memory(tmp_path, monkeypatch):
    """While the writer cannot keep up (here: another program holds the write lock, for
    less than the busy timeout), a charge point that keeps sending is no longer read
    once the writer's backlog is full: its frames wait in TCP's buffers and its own
    send blocks, the appliance's memory holds at most the backlog. Once the writer
    catches up every frame is read, answered and stored: nothing lost."""
    from appliance.store import writer

    # the bound, lowered so that a hundred frames reach it (the default is 10 MB: a
    # second of the writer's work)
    monkeypatch.setattr(writer, "MAX_BACKLOG", 200_000)
    count = 20_000
    async with paused_flood(tmp_path, count) as (running, flood):
        # the charge point is no longer read: answers stop, and so does its sending,
        # long before all of it is sent
        assert running.server.store.overloaded
        assert flood.sent < count, "the flood was read in full: no backpressure"
        # each DataTransfer weighs at least its kilobyte and two rows (in and out): what
        # was taken in is bounded by the backlog, not by what the charge point sent
        most = writer.MAX_BACKLOG // (1000 + 2 * writer.ITEM_WEIGHT) + 10
        assert flood.answered <= most, flood.answered
    # the appliance has stopped: everything it took is in the file

    with sqlite3.connect(running.db) as db:
        stored = db.execute(
            "SELECT count(*) FROM messages WHERE identity = 'FLOOD' AND action = 'DataTransfer'"
            " AND direction = 'in'"
        ).fetchone()[0]
    assert stored == count


async def test_backpressure_pauses_the_charge_point_that_floods_not_the_others(
    tmp_path, monkeypatch
):
    """Backpressure is per connection (issue 21, README "Bad peers"): while the writer
    falls behind because one charge point floods it, that one is no longer read, and
    another charge point's Heartbeats are answered one after another meanwhile — not
    held until the writer has caught up."""
    from appliance.store import writer

    monkeypatch.setattr(writer, "MAX_BACKLOG", 200_000)
    count = 20_000
    async with paused_flood(tmp_path, count) as (running, flood):
        assert flood.sent < count, "the flood was read in full: no backpressure"
        paused_at = flood.answered
        url = f"ws://127.0.0.1:{running.port}/QUIET"

        def heartbeats() -> list[Any]:
            # connected now, while the flood is paused
            with connect(url, subprotocols=["ocpp1.6"]) as quiet:  # type: ignore[list-item]
                answers = []
                for i in range(20):
                    quiet.send(json.dumps([2, f"h{i}", "Heartbeat", {}]))
                    answers.append(json.loads(quiet.recv(timeout=2)))
                return answers

        answers = await trio.to_thread.run_sync(heartbeats)
        assert [a[:2] for a in answers] == [[3, f"h{i}"] for i in range(20)]
        assert "currentTime" in answers[-1][2]
        # the flood is still paused: the writer has not caught up
        assert running.server.store.overloaded
        assert flood.answered == paused_at
    with sqlite3.connect(running.db) as db:
        stored = db.execute(
            "SELECT identity, count(*) FROM messages WHERE direction = 'in'"
            " AND action IN ('DataTransfer', 'Heartbeat') GROUP BY identity ORDER BY identity"
        ).fetchall()
    assert stored == [("FLOOD", count), ("QUIET", 20)]
