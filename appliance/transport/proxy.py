"""The PROXY protocol (HAProxy's, versions 1 and 2: https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt),
sans-I/O: behind a load balancer every connection comes from the balancer's address;
the header it sends first says whose connection it really is (README "A big site on
several processes"). Only addresses `[limits] proxy_from` names may send one (anyone
else could claim any address); from them it is required.

`parse(data)` reads the header at the start of what arrived: None while more bytes are
needed, else the client's address and how many bytes the header took. A malformed header
raises `ProxyError`."""

from __future__ import annotations

import ipaddress
import struct
from typing import NamedTuple

#: version 2 starts with these 12 bytes (§2.2), version 1 with "PROXY " (§2.1)
SIGNATURE_V2 = b"\r\n\r\n\x00\r\nQUIT\n"
PREFIX_V1 = b"PROXY "
#: §2.1: a version 1 line is at most 107 bytes, CRLF included
MAX_V1 = 107
#: version 2: 16 bytes, then at most 65 535 of addresses and TLVs; a balancer sends a few
#: dozen, so more than this is refused rather than buffered
MAX_V2 = 16 + 512

_FAMILIES = {0x11: (4, 4), 0x12: (4, 4), 0x21: (16, 16), 0x22: (16, 16)}


class ProxyError(ValueError):
    """Not a PROXY header (the reason says what is wrong)."""


class Proxied(NamedTuple):
    #: the client's address and port, None for a LOCAL / UNKNOWN header (the balancer's
    #: own health check: the connection's own address stands)
    source: tuple[str, int] | None
    #: bytes of the header: what follows is the client's own first bytes
    length: int


def parse(data: bytes) -> Proxied | None:
    if data[:1] == b"\r":
        return _v2(data)
    if data[:1] == b"P":
        return _v1(data)
    if not data:
        return None
    raise ProxyError("no PROXY header from a proxy_from address")


def _v1(data: bytes) -> Proxied | None:
    if len(data) < len(PREFIX_V1):
        if PREFIX_V1.startswith(data):
            return None
        raise ProxyError("no PROXY header from a proxy_from address")
    if not data.startswith(PREFIX_V1):
        raise ProxyError("no PROXY header from a proxy_from address")
    end = data.find(b"\r\n", 0, MAX_V1)
    if end < 0:
        if len(data) >= MAX_V1:
            raise ProxyError("PROXY v1 line longer than 107 bytes")
        return None
    try:
        words = data[:end].decode("ascii").split(" ")
    except UnicodeDecodeError:
        raise ProxyError("PROXY v1 line is not ASCII") from None
    if len(words) >= 2 and words[1] == "UNKNOWN":
        return Proxied(None, end + 2)
    if len(words) != 6 or words[1] not in ("TCP4", "TCP6"):
        raise ProxyError(f"PROXY v1 line not understood: {' '.join(words)[:60]!r}")
    _, family, source, _destination, port, _ = words
    try:
        address = ipaddress.ip_address(source)
        number = int(port)
    except ValueError:
        raise ProxyError(f"PROXY v1 address not understood: {source[:40]!r}") from None
    if address.version != (4 if family == "TCP4" else 6) or not 0 <= number <= 65535:
        raise ProxyError(f"PROXY v1 address not understood: {source[:40]!r}")
    return Proxied((_text(address), number), end + 2)


def _v2(data: bytes) -> Proxied | None:
    if len(data) < 16:
        if SIGNATURE_V2.startswith(data[:12]):
            return None
        raise ProxyError("no PROXY header from a proxy_from address")
    if not data.startswith(SIGNATURE_V2):
        raise ProxyError("no PROXY header from a proxy_from address")
    version_command, family, size = struct.unpack("!BBH", data[12:16])
    if version_command >> 4 != 2 or version_command & 0x0F > 1:
        raise ProxyError(f"PROXY v2 version/command {version_command:#x} not understood")
    if 16 + size > MAX_V2:
        raise ProxyError(f"PROXY v2 header of {16 + size} bytes is too long")
    if len(data) < 16 + size:
        return None
    length = 16 + size
    if version_command & 0x0F == 0 or family not in _FAMILIES:
        return Proxied(None, length)  # LOCAL (a health check), or not TCP/UDP over IP
    width, _ = _FAMILIES[family]
    if size < 2 * width + 4:
        raise ProxyError("PROXY v2 addresses cut short")
    source = ipaddress.ip_address(data[16 : 16 + width])
    (port,) = struct.unpack("!H", data[16 + 2 * width : 18 + 2 * width])
    return Proxied((_text(source), port), length)


def _text(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """As the kernel would name it: an IPv4 client behind an IPv6 balancer is 1.2.3.4."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)
