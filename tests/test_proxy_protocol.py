"""The PROXY protocol header (appliance/transport/proxy.py), pure: the examples of
HAProxy's specification, every cut of a valid header asks for more, and arbitrary bytes
give an answer or a ProxyError, never anything else. The listener reading it from a
real HAProxy is tested in tests/test_haproxy.py."""

from __future__ import annotations

import socket
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.transport.proxy import SIGNATURE_V2, Proxied, ProxyError, parse


def v2(source: str, port: int, family: int = 0x11, command: int = 0x21, tlv: bytes = b"") -> bytes:
    kind = socket.AF_INET if family in (0x11, 0x12) else socket.AF_INET6
    raw = socket.inet_pton(kind, source)
    destination = socket.inet_pton(kind, "10.0.0.1" if kind == socket.AF_INET else "::1")
    body = raw + destination + struct.pack("!HH", port, 9000) + tlv
    return SIGNATURE_V2 + bytes([command, family]) + struct.pack("!H", len(body)) + body


VALID = [
    (b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n", ("192.168.0.1", 56324)),
    (b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 9000\r\n", ("2001:db8::1", 4000)),
    (b"PROXY UNKNOWN\r\n", None),
    (b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n", None),
    (v2("203.0.113.7", 51000), ("203.0.113.7", 51000)),
    (v2("2001:db8::7", 443, family=0x21), ("2001:db8::7", 443)),
    (v2("::ffff:198.51.100.4", 80, family=0x21), ("198.51.100.4", 80)),
    (v2("203.0.113.8", 1, tlv=b"\x04\x00\x03abc"), ("203.0.113.8", 1)),  # a TLV: skipped
    (v2("203.0.113.9", 2, command=0x20), None),  # LOCAL: HAProxy's own health check
]


@pytest.mark.parametrize(("header", "source"), VALID)
def test_a_valid_header_gives_the_client_and_its_length(header: bytes, source: object) -> None:
    after = b"GET /ocpp/CP1 HTTP/1.1\r\n"
    assert parse(header + after) == Proxied(source, len(header))  # type: ignore[arg-type]
    for cut in range(len(header)):
        assert parse(header[:cut]) is None, cut


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"GET / HTTP/1.1\r\n", "no PROXY header"),
        (b"\x16\x03\x01\x02\x00", "no PROXY header"),  # a TLS ClientHello
        (b"PROXY TCP4 1.2.3.4\r\n", "not understood"),
        (b"PROXY TCP4 1.2.3.999 1.2.3.4 1 2\r\n", "address not understood"),
        (b"PROXY TCP4 2001:db8::1 1.2.3.4 1 2\r\n", "address not understood"),
        (b"PROXY TCP4 1.2.3.4 1.2.3.4 70000 2\r\n", "address not understood"),
        (b"PROXY " + b"x" * 120, "longer than 107"),
        (SIGNATURE_V2 + b"\x31\x11\x00\x0c" + bytes(12), "version/command"),
        (SIGNATURE_V2 + b"\x21\x11\xff\xff", "too long"),
        (SIGNATURE_V2 + b"\x21\x11\x00\x04" + bytes(4), "cut short"),
    ],
)
def test_anything_else_is_refused_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(ProxyError, match=reason):
        parse(data)


@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_break_the_parser(data: bytes) -> None:
    try:
        found = parse(data)
    except ProxyError:
        return
    assert found is None or 0 < found.length <= len(data)


@given(st.binary(max_size=60))
def test_arbitrary_bytes_after_a_v2_signature(tail: bytes) -> None:
    try:
        found = parse(SIGNATURE_V2 + tail)
    except ProxyError:
        return
    assert found is None or found.length <= len(SIGNATURE_V2) + len(tail)
