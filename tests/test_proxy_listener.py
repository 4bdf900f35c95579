"""The PROXY protocol on the OCPP listener (README "A big site on several processes"):
from an address of `[limits] proxy_from` a connection starts with a PROXY header (v1 or
v2, read before TLS and the upgrade), and the address it names is the charge point's in
connection_log, the log and the per-address caps; a connection from there without a
valid header is closed, one log line per peer; from any other address a PROXY header is
a bad request, as before. Real `ocpp-appliance serve` processes, raw sockets from
loopback sources (127.0.0.1 plays the balancer), and Debian's HAProxy on the sample
packaging/haproxy.cfg (tests/haproxy.py) with its send-proxy-v2."""

from __future__ import annotations

import json
import signal
import socket
import ssl
import time
from typing import Any

import pytest
import trio
import trio.testing
from test_limits import (
    BOOT16,
    _frame,
    call,
    closing,
    lines,
    response_head,
    tcp_from,
    upgrade,
)
from test_proxy_protocol import v2
from test_security import make_pki, tls_config
from websockets.exceptions import InvalidHandshake, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from appliance.transport.prefixed import PrefixedStream
from conftest import Appliance, wait_for

#: the balancer, as the appliance sees it, and its config line
BALANCER = "127.0.0.1"
PROXY_FROM = f'[limits]\nproxy_from = ["{BALANCER}"]\n'
#: addresses the headers claim (TEST-NET-1: never a real peer of the test machine)
CLAIMED = "192.0.2.7"
OTHER = "192.0.2.8"


def v1(source: str, port: int) -> bytes:
    family, destination = ("TCP6", "::1") if ":" in source else ("TCP4", "127.0.0.1")
    return f"PROXY {family} {source} {destination} {port} 9000\r\n".encode()


def proxied(appliance: Appliance, identity: str, header: bytes) -> ClientConnection:
    """A 1.6 charge point through the balancer: the header, then a real WebSocket
    client on the same socket, booted."""
    sock = tcp_from(BALANCER, appliance.port)
    sock.sendall(header)
    ws = connect(
        f"{appliance.url}/{identity}", sock=sock, subprotocols=["ocpp1.6"], open_timeout=10
    ).__enter__()
    assert call(ws, "BootNotification", BOOT16)["status"] == "Accepted"
    return ws


def proxied_refusal(appliance: Appliance, identity: str, header: bytes) -> Any:
    """The HTTP response that refuses `identity`'s upgrade after `header`."""
    sock = tcp_from(BALANCER, appliance.port)
    sock.sendall(header)
    url = f"{appliance.url}/{identity}"
    with (
        pytest.raises(InvalidStatus) as refused,
        connect(url, sock=sock, subprotocols=["ocpp1.6"], open_timeout=10),
    ):
        pass
    return refused.value.response


def remote_addrs(appliance: Appliance, identity: str, event: str = "connect") -> list[str]:
    """The remote_addr of `identity`'s `event` rows, once there is one."""
    rows = appliance.wait_rows(
        "SELECT remote_addr FROM connection_log WHERE identity = ? AND event = ? ORDER BY seq",
        identity,
        event,
    )
    return [address for (address,) in rows]


def booted(appliance: Appliance, identity: str) -> int:
    rows = appliance.query(
        "SELECT count(*) FROM messages WHERE identity = ? AND action = 'BootNotification'"
        " AND direction = 'in'",
        identity,
    )
    return rows[0][0]


def closed_without_answer(sock: socket.socket) -> bool:
    """The appliance closes (or resets) the connection without a byte of an answer."""
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True


def receive_text(sock: socket.socket, buffer: bytearray) -> str:
    """The next text frame from the appliance (unmasked, at most 64 KiB)."""
    while True:
        if len(buffer) >= 2:
            size, offset = buffer[1] & 0x7F, 2
            if size == 126 and len(buffer) >= 4:
                size, offset = int.from_bytes(buffer[2:4], "big"), 4
            if size < 127 and len(buffer) >= offset + size:
                opcode, data = buffer[0] & 0x0F, bytes(buffer[offset : offset + size])
                del buffer[: offset + size]
                if opcode == 0x1:
                    return data.decode()
                continue
        chunk = sock.recv(65536)
        assert chunk, "closed before a text frame"
        buffer += chunk


def raw_boot(sock: socket.socket, rest: bytes) -> dict[str, Any]:
    """A BootNotification over an upgraded raw socket; its answer's payload."""
    sock.sendall(_frame(json.dumps([2, "boot-1", "BootNotification", BOOT16])))
    answer = json.loads(receive_text(sock, bytearray(rest)))
    assert answer[:2] == [3, "boot-1"], answer
    return answer[2]


# ------------------------------------------------------- the stream with a prefix


async def test_the_prefixed_stream_gives_the_bytes_read_with_the_header_first():
    left, right = trio.testing.memory_stream_pair()
    stream = PrefixedStream(right, b"GET /CP1 HTTP/1.1")
    await left.send_all(b"\r\n\r\n")
    assert await stream.receive_some(4) == b"GET "
    assert await stream.receive_some() == b"/CP1 HTTP/1.1"
    assert await stream.receive_some() == b"\r\n\r\n"
    await stream.send_all(b"HTTP/1.1 101")
    assert await left.receive_some() == b"HTTP/1.1 101"
    await stream.send_eof()  # the half-close after a close frame (websocket.py)
    assert await left.receive_some() == b""
    await stream.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await stream.receive_some()


async def test_the_prefixed_stream_is_a_half_closeable_stream():
    """trio's own conformance check, over a socket pair as the listener has it."""

    def wrapped(clog: bool) -> tuple[PrefixedStream, PrefixedStream]:
        ends = socket.socketpair()
        for end in ends:
            end.setblocking(False)
            while clog:
                try:
                    end.send(b"x" * 65536)
                except BlockingIOError:
                    break
        left, right = (trio.SocketStream(trio.socket.from_stdlib_socket(e)) for e in ends)
        return PrefixedStream(left, b""), PrefixedStream(right, b"")

    async def pair() -> tuple[PrefixedStream, PrefixedStream]:
        return wrapped(clog=False)

    async def clogged() -> tuple[PrefixedStream, PrefixedStream]:
        return wrapped(clog=True)

    await trio.testing.check_half_closeable_stream(pair, clogged)


# ------------------------------------------------------------- the address it names


@pytest.mark.parametrize(
    ("header", "shown"),
    [
        (v1(CLAIMED, 51000), f"{CLAIMED}:51000"),
        (v2(CLAIMED, 51001), f"{CLAIMED}:51001"),
        (v1("2001:db8::7", 443), "[2001:db8::7]:443"),
        (v2("2001:db8::7", 444, family=0x21), "[2001:db8::7]:444"),
    ],
    ids=["v1", "v2", "v1-ipv6", "v2-ipv6"],
)
def test_the_address_the_header_names_is_the_charge_points(start_appliance, header, shown):
    appliance = start_appliance(PROXY_FROM)
    ws = proxied(appliance, "CP-BEHIND", header)
    with closing(ws):
        assert "currentTime" in call(ws, "Heartbeat", {})
    appliance.wait_rows(
        "SELECT 1 FROM connection_log WHERE identity = 'CP-BEHIND' AND event = 'disconnect'"
    )
    assert remote_addrs(appliance, "CP-BEHIND") == [shown]
    assert remote_addrs(appliance, "CP-BEHIND", "disconnect") == [shown]
    assert booted(appliance, "CP-BEHIND") == 1
    assert lines(appliance, f"CP-BEHIND: connected from {shown} (ocpp1.6)")
    assert not lines(appliance, f"connected from {BALANCER}")


@pytest.mark.parametrize(
    "header", [b"PROXY UNKNOWN\r\n", v2(CLAIMED, 1, command=0x20)], ids=["v1-unknown", "v2-local"]
)
def test_a_local_or_unknown_header_keeps_the_balancers_address(start_appliance, header):
    appliance = start_appliance(PROXY_FROM)
    ws = proxied(appliance, "CP-LOCAL", header)
    ws.close()
    [(address,)] = appliance.wait_rows(
        "SELECT remote_addr FROM connection_log WHERE identity = 'CP-LOCAL' AND event = 'connect'"
    )
    assert address.startswith(f"{BALANCER}:"), address
    assert CLAIMED not in appliance.log()


def test_a_header_in_pieces_and_one_with_the_request_in_the_same_send(start_appliance):
    appliance = start_appliance(PROXY_FROM)
    # v2 cut inside its signature and inside the addresses, v1 inside "PROXY" and the
    # address: each piece its own segment (no Nagle), a pause between them
    for identity, header, cuts in [
        ("CP-V2-PIECES", v2(CLAIMED, 40000), [5, 14, 20]),
        ("CP-V1-PIECES", v1(CLAIMED, 40001), [3, 12, 30]),
    ]:
        sock = tcp_from(BALANCER, appliance.port)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with closing(sock):
            for start, end in zip([0, *cuts], [*cuts, len(header)], strict=True):
                sock.sendall(header[start:end])
                time.sleep(0.1)
            sock.sendall(upgrade(identity))
            status, _, rest = response_head(sock)
            assert status == 101
            assert raw_boot(sock, rest)["status"] == "Accepted"
    # the header and the whole upgrade request in one send: the request's bytes, read
    # with the header, are not lost
    for identity, header in [("CP-V1-ONE", v1(OTHER, 40002)), ("CP-V2-ONE", v2(OTHER, 40003))]:
        sock = tcp_from(BALANCER, appliance.port)
        with closing(sock):
            sock.sendall(header + upgrade(identity))
            status, _, rest = response_head(sock)
            assert status == 101
            assert raw_boot(sock, rest)["status"] == "Accepted"
    assert remote_addrs(appliance, "CP-V2-PIECES") == [f"{CLAIMED}:40000"]
    assert remote_addrs(appliance, "CP-V1-PIECES") == [f"{CLAIMED}:40001"]
    assert remote_addrs(appliance, "CP-V1-ONE") == [f"{OTHER}:40002"]
    assert remote_addrs(appliance, "CP-V2-ONE") == [f"{OTHER}:40003"]


def test_the_header_comes_before_tls_and_a_client_hello_read_with_it_is_not_lost(
    start_appliance, tmp_path
):
    """TLS passed through (HAProxy in mode tcp): the header, then the charge point's
    ClientHello. TCP_CORK holds both back until they leave in one segment, so the
    appliance reads the start of the TLS handshake together with the header."""
    pki = make_pki(tmp_path / "pki", [])
    appliance = start_appliance(PROXY_FROM + "\n" + tls_config(pki))
    assert appliance.scheme == "wss"
    context = ssl.create_default_context(cafile=str(pki.server_ca))
    for identity, header in [("CP-TLS-V1", v1(CLAIMED, 41000)), ("CP-TLS-V2", v2(OTHER, 41001))]:
        sock = tcp_from(BALANCER, appliance.port)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
        sock.sendall(header)
        # the ClientHello is corked with the header; the kernel lets them go within 200 ms
        tls = context.wrap_socket(sock, server_hostname="localhost")
        with closing(tls):
            tls.sendall(upgrade(identity))
            status, _, rest = response_head(tls)
            assert status == 101
            assert raw_boot(tls, rest)["status"] == "Accepted"
    assert remote_addrs(appliance, "CP-TLS-V1") == [f"{CLAIMED}:41000"]
    assert remote_addrs(appliance, "CP-TLS-V2") == [f"{OTHER}:41001"]


# -------------------------------------------------------------------- no valid header


BAD_HEADERS = [
    # (what the balancer sends, then whether it closes its side, the reason recorded)
    (upgrade("CP-NO-HEADER"), False, "no PROXY header from a proxy_from address"),
    (b"PROXY TCP4 192.0.2.999 127.0.0.1 1 9000\r\n" + upgrade("CP-BAD"), False,
     "PROXY v1 address not understood: '192.0.2.999'"),
    (b"PROXY " + b"x" * 200, False, "PROXY v1 line longer than 107 bytes"),
    (v2(CLAIMED, 1)[:20], True, "connection closed before its PROXY header"),
    (b"PROXY TCP4 192.0", False, "no PROXY header within 1 s"),
]  # fmt: skip


def test_from_a_proxy_from_address_a_missing_or_bad_header_closes_the_connection(
    start_appliance,
):
    appliance = start_appliance(
        f'[limits]\nproxy_from = ["{BALANCER}"]\nhandshake_timeout_sec = 1\n'
    )
    for data, half_close, _ in BAD_HEADERS:
        for _ in range(2):
            sock = tcp_from(BALANCER, appliance.port)
            with closing(sock):
                sock.sendall(data)
                if half_close:
                    sock.shutdown(socket.SHUT_WR)
                assert closed_without_answer(sock), data
    for _, _, reason in BAD_HEADERS:
        # one line per peer and reason, however often it comes
        logged = lines(appliance, f"-: refused from {BALANCER}:", reason)
        assert len(logged) == 1, (reason, appliance.log())
        rows = appliance.wait_rows(
            "SELECT remote_addr FROM connection_log WHERE event = 'refused' AND reason = ?",
            reason,
            count=2,
        )
        assert all(address.startswith(f"{BALANCER}:") for (address,) in rows), rows
    # no charge point got in, and nothing the headers claimed was believed
    assert appliance.query("SELECT count(*) FROM connection_log WHERE event = 'connect'") == [(0,)]
    assert appliance.query("SELECT count(*) FROM messages") == [(0,)]
    assert not lines(appliance, "from 192.0.2.")
    # the balancer itself is not held against it: its next good header gets in
    ws = proxied(appliance, "CP-GOOD", v1(CLAIMED, 42000))
    ws.close()
    assert remote_addrs(appliance, "CP-GOOD") == [f"{CLAIMED}:42000"]


@pytest.mark.parametrize("header", [v1(CLAIMED, 43000), v2(CLAIMED, 43000)], ids=["v1", "v2"])
def test_from_any_other_address_a_proxy_header_is_a_bad_request(start_appliance, header):
    appliance = start_appliance(PROXY_FROM)
    sock = tcp_from("127.0.0.2", appliance.port)
    with closing(sock):
        sock.sendall(header + upgrade("CP-SPOOF"))
        # as any request that is not HTTP: closed without an answer
        assert closed_without_answer(sock)
    [(address, reason)] = appliance.wait_rows(
        "SELECT remote_addr, reason FROM connection_log WHERE event = 'refused'"
    )
    assert address.startswith("127.0.0.2:"), address
    assert reason.startswith("bad HTTP request"), reason
    assert not appliance.query("SELECT 1 FROM connection_log WHERE remote_addr LIKE '192.0.2.%'")
    assert lines(appliance, "-: refused from 127.0.0.2:", "bad HTTP request")


def test_proxy_from_is_put_in_force_by_sighup(start_appliance):
    appliance = start_appliance("")
    sock = tcp_from(BALANCER, appliance.port)
    with closing(sock):
        sock.sendall(v1(CLAIMED, 44000) + upgrade("CP-BEFORE"))
        assert closed_without_answer(sock)
    [(reason,)] = appliance.wait_rows("SELECT reason FROM connection_log WHERE event = 'refused'")
    assert reason.startswith("bad HTTP request"), reason
    config = appliance.folder / "appliance.toml"
    config.write_text(config.read_text() + "\n" + PROXY_FROM)
    appliance.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "SIGHUP: config reloaded" in appliance.log(), 10, "the reload")
    ws = proxied(appliance, "CP-AFTER", v1(CLAIMED, 44001))
    ws.close()
    assert remote_addrs(appliance, "CP-AFTER") == [f"{CLAIMED}:44001"]


# --------------------------------------------------------- the per-address caps


def test_max_connections_per_address_counts_the_address_the_header_names(start_appliance):
    appliance = start_appliance(PROXY_FROM + "max_connections_per_address = 1\n")
    first = proxied(appliance, "CP-FIRST", v2(CLAIMED, 45000))
    with closing(first):
        answer = proxied_refusal(appliance, "CP-SECOND", v2(CLAIMED, 45001))
        assert answer.status_code == 503
        assert b"max_connections_per_address = 1" in answer.body
        # all of them come from the balancer's address: another claimed one gets in
        other = proxied(appliance, "CP-OTHER", v1(OTHER, 45002))
        other.close()
        assert call(first, "Heartbeat", {})
    [(address,)] = appliance.wait_rows(
        "SELECT remote_addr FROM connection_log WHERE event = 'refused' AND identity = 'CP-SECOND'"
    )
    assert address == f"{CLAIMED}:45001"
    assert (
        len(lines(appliance, f"refused from {CLAIMED}:45001", "max_connections_per_address")) == 1
    )
    assert remote_addrs(appliance, "CP-OTHER") == [f"{OTHER}:45002"]
    # CP-FIRST gone, the address has its place again
    third = wait_for(
        lambda: _try(lambda: proxied(appliance, "CP-THIRD", v2(CLAIMED, 45003))), 10, "a place"
    )
    third.close()


def _try(attempt: Any) -> Any:
    """None when refused, or reset (the appliance may not have seen the last close yet)."""
    try:
        return attempt()
    except (OSError, InvalidHandshake):
        return None


def test_max_handshakes_per_address_counts_the_address_the_header_names(start_appliance):
    """The cap is taken once the header has named the address and given back when the
    handshake ends: a stalled handshake of CLAIMED holds CLAIMED's one place (not the
    balancer's), and frees it when it goes."""
    appliance = start_appliance(
        PROXY_FROM + "max_handshakes_per_address = 1\nhandshake_timeout_sec = 60\n"
    )
    port = appliance.port
    stalled = tcp_from(BALANCER, port)
    stalled.sendall(v1(CLAIMED, 46000))  # and nothing more
    with closing(stalled):
        wait_for(lambda: reset_proxied(port, v1(CLAIMED, 46001)), 10, "CLAIMED's place taken")
        # the balancer's own address holds no place: another claimed address gets in
        other = proxied(appliance, "CP-OTHER", v1(OTHER, 46002))
        other.close()
        logged = lines(appliance, f"refused from {CLAIMED}:46001", "max_handshakes_per_address = 1")
        assert len(logged) == 1, appliance.log()
    # the stalled one gone, its place is free again (counted once, given back once)
    ws = wait_for(
        lambda: _try(lambda: proxied(appliance, "CP-LATER", v1(CLAIMED, 46003))), 10, "a place"
    )
    ws.close()
    assert remote_addrs(appliance, "CP-LATER") == [f"{CLAIMED}:46003"]
    # and the cap still holds for it: the count neither leaked nor went below zero
    stalled = tcp_from(BALANCER, port)
    stalled.sendall(v2(CLAIMED, 46004))
    with closing(stalled):
        wait_for(lambda: reset_proxied(port, v1(CLAIMED, 46005)), 10, "CLAIMED's place taken")


def reset_proxied(port: int, header: bytes) -> bool:
    """Through the balancer, `header` and an upgrade are cut off without an answer."""
    sock = tcp_from(BALANCER, port)
    with closing(sock):
        try:
            sock.sendall(header + upgrade("CP-EXTRA"))
            return sock.recv(65536) == b""
        except (ConnectionResetError, BrokenPipeError):
            return True


# ------------------------------------------------------------------ a real HAProxy


def test_behind_the_sample_haproxy_the_charge_points_own_address_is_seen(start_appliance, haproxy):
    """packaging/haproxy.cfg as shipped (send-proxy-v2 on its servers) in front of a
    process with proxy_from = HAProxy's address: a charge point connecting to HAProxy
    from 127.0.0.5 is 127.0.0.5 to the appliance, and the health checks (to the web
    port) pass."""
    appliance = start_appliance(PROXY_FROM)
    proxy = haproxy([(appliance.port, appliance.web_port)])
    proxy.wait_for("p1", "UP")
    ws = connect(
        f"{proxy.url}/CP-HA",
        subprotocols=["ocpp1.6"],
        source_address=("127.0.0.5", 0),
        open_timeout=10,
    ).__enter__()
    with closing(ws):
        assert call(ws, "BootNotification", BOOT16)["status"] == "Accepted"
        [address] = remote_addrs(appliance, "CP-HA")
        host, _, port = address.rpartition(":")
        assert host == "127.0.0.5"
        # the port is the charge point's own, not the one HAProxy connected from
        assert int(port) == ws.socket.getsockname()[1]
    assert lines(appliance, f"CP-HA: connected from {address}")
    assert appliance.query("SELECT count(*) FROM connection_log WHERE event = 'refused'") == [(0,)]


def test_behind_the_sample_haproxy_a_process_without_proxy_from_refuses_everything(
    start_appliance, haproxy
):
    """What the sample's comment warns of: send-proxy-v2 towards a process that does not
    list HAProxy in proxy_from is a bad request on every connection."""
    appliance = start_appliance("")
    proxy = haproxy([(appliance.port, appliance.web_port)])
    proxy.wait_for("p1", "UP")
    with (
        pytest.raises((InvalidStatus, OSError, EOFError)),
        connect(f"{proxy.url}/CP-HA", subprotocols=["ocpp1.6"], open_timeout=10),
    ):
        pass
    [(reason,)] = appliance.wait_rows("SELECT reason FROM connection_log WHERE event = 'refused'")
    assert reason.startswith("bad HTTP request"), reason
    assert appliance.query("SELECT count(*) FROM connection_log WHERE event = 'connect'") == [(0,)]
