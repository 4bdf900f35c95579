"""Opening a client WebSocket with `websockets`' sans-I/O ClientProtocol on trio (the
simulator's charge points; the upstream links of README "A second backend"), and turning
every way that can fail into one sentence for the user."""

from __future__ import annotations

import base64
import os
import ssl
import weakref
from urllib.parse import quote

import trio
from websockets.client import ClientProtocol
from websockets.exceptions import InvalidStatus, InvalidURI
from websockets.http11 import Response
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from appliance.transport.websocket import WebSocket

#: a CSMS that has not answered the upgrade by then is not going to
HANDSHAKE_TIMEOUT_SEC = 10.0
#: the appliance's own default frame limit; a NotifyReport answer is far smaller
MAX_FRAME_BYTES = 1 << 20


class ConnectError(Exception):
    """The connection could not be opened; the message says why, in one line."""


#: the contexts `ssl_context` gave a client certificate (a failure's hint depends on it)
_WITH_CERTIFICATE: weakref.WeakSet[ssl.SSLContext] = weakref.WeakSet()


def ssl_context(cafile: str | None, cert: str | None, key: str | None) -> ssl.SSLContext:
    """TLS for wss:// (OCPP security profile 2; with a client certificate, profile 3)."""
    try:
        context = ssl.create_default_context(cafile=cafile)
        if cert:
            context.load_cert_chain(cert, key)
            _WITH_CERTIFICATE.add(context)
    except (OSError, ssl.SSLError) as exc:
        raise ConnectError(f"cannot load TLS files: {exc}") from None
    return context


def charge_point_url(url: str, identity: str) -> str:
    return f"{url.rstrip('/')}/{quote(identity, safe='')}"


async def open_websocket(
    url: str,
    identity: str,
    subprotocol: str,
    *,
    password: str | None = None,
    context: ssl.SSLContext | None = None,
) -> WebSocket:
    """Connect, upgrade offering `subprotocol`, and return the open WebSocket."""
    target = charge_point_url(url, identity)
    try:
        uri = parse_uri(target)
    except InvalidURI as exc:
        raise ConnectError(f"not a ws:// or wss:// URL: {exc}") from None
    where = f"{uri.host}:{uri.port}"
    watched: _Watched | None = None
    with trio.move_on_after(HANDSHAKE_TIMEOUT_SEC) as scope:
        try:
            stream: trio.abc.Stream = await trio.open_tcp_stream(uri.host, uri.port)
        except OSError as exc:
            raise ConnectError(f"cannot connect to {where}: {_os_reason(exc)}") from None
        if uri.secure:
            tls = trio.SSLStream(
                stream, context or ssl_context(None, None, None), server_hostname=uri.host
            )
            try:
                await tls.do_handshake()
            except (trio.BrokenResourceError, ssl.SSLError) as exc:
                await trio.aclose_forcefully(stream)
                cause = exc.__cause__ or exc
                hint = ""
                if isinstance(cause, ssl.SSLCertVerificationError):
                    hint = " (a server certificate of your own CA? --cafile; an upstream's ca)"
                raise ConnectError(f"TLS handshake with {where} failed: {cause}{hint}") from None
            stream = watched = _Watched(tls)
        protocol = ClientProtocol(
            uri, subprotocols=[Subprotocol(subprotocol)], max_size=MAX_FRAME_BYTES
        )
        request = protocol.connect()
        if password is not None:
            token = base64.b64encode(f"{identity}:{password}".encode()).decode()
            request.headers["Authorization"] = f"Basic {token}"
        protocol.send_request(request)
        ws = WebSocket(stream, protocol)
        await ws.flush()
        while not ws.done:
            events = await ws.receive()
            for at, event in enumerate(events):
                if isinstance(event, Response):
                    _check_response(protocol, event, target)
                    if watched is not None:
                        ws.stream = watched.stream
                    # a server may send its first frame right behind the 101
                    ws.hold(events[at + 1 :])
                    return ws
        await ws.aclose()
        if watched is not None and watched.failure is not None:
            certificate = context is not None and context in _WITH_CERTIFICATE
            raise ConnectError(_tls_failure(where, watched.failure, certificate))
        raise ConnectError(f"{where} closed the connection during the WebSocket handshake")
    assert scope.cancelled_caught
    raise ConnectError(
        f"{where} did not complete the WebSocket handshake within {HANDSHAKE_TIMEOUT_SEC:g} s"
    )


class _Watched(trio.abc.Stream):
    """The TLS stream during the WebSocket handshake, keeping why it failed: with TLS 1.3
    a server that refuses the client's certificate (or its absence) says so only after
    the TLS handshake, in an alert the next read or write gets, and WebSocket takes a
    failed read or write for the end of the stream."""

    def __init__(self, stream: trio.SSLStream[trio.abc.Stream]) -> None:
        self.stream = stream
        self.failure: BaseException | None = None

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        try:
            return await self.stream.receive_some(max_bytes)
        except trio.BrokenResourceError as exc:
            self.failure = self.failure or exc.__cause__ or exc
            raise

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        # TLS reads while it writes: the alert may end a send too
        try:
            await self.stream.send_all(data)
        except trio.BrokenResourceError as exc:
            self.failure = self.failure or exc.__cause__ or exc
            raise

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.stream.aclose()


def _tls_failure(where: str, failure: BaseException, certificate: bool) -> str:
    """Why the TLS connection ended before the WebSocket handshake did, in one line, with
    what to do. With TLS 1.3 the server checks the client's certificate only after the
    TLS handshake: a good one says so in an alert, many (asyncio's) just hang up."""
    text = str(failure)
    wants = "--cert and --key; an upstream's cert and key"
    trusted = "is it signed by a CA the server trusts?"
    if "CERTIFICATE_REQUIRED" in text:
        hint = f"it wants a client certificate: {wants}"
    elif any(word in text for word in ("UNKNOWN_CA", "BAD_CERTIFICATE", "CERTIFICATE_UNKNOWN")):
        hint = f"it does not accept the client certificate: {trusted}"
    elif certificate:
        hint = f"does it accept the client certificate? {trusted}"
    else:
        hint = f"no client certificate was offered: does it want one? {wants}"
    return f"{where} ended the TLS connection during the WebSocket handshake: {text} ({hint})"


def _check_response(protocol: ClientProtocol, response: Response, target: str) -> None:
    error = protocol.handshake_exc
    if isinstance(error, InvalidStatus) or response.status_code != 101:
        body = response.body.decode(errors="replace").strip().splitlines() if response.body else []
        why = f": {body[0]}" if body else ""
        hint = " (wrong or missing --password?)" if response.status_code == 401 else ""
        raise ConnectError(
            f"{target}: handshake refused with HTTP {response.status_code} "
            f"{response.reason_phrase}{why}{hint}"
        )
    if error is not None:
        raise ConnectError(f"{target}: bad WebSocket handshake: {error}")


def _os_reason(exc: OSError) -> str:
    """ "Connection refused" rather than trio's "all attempts to connect … failed"."""
    group = exc.__cause__
    if isinstance(group, BaseExceptionGroup) and group.exceptions:
        first = group.exceptions[0]
        if isinstance(first, OSError) and first.errno:
            return os.strerror(first.errno)
    return exc.strerror or str(exc)
