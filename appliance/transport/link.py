"""One accepted charge point connection as the layers above see it: text messages in,
text messages out, a close with a code. Keep-alive pings and the close handshake stay
here; nothing in this module knows OCPP."""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator

import trio
from websockets.protocol import State

from appliance.transport.websocket import WebSocket

log = logging.getLogger("appliance")

#: how long a peer gets to answer our close frame before the TCP stream is cut; short
#: enough that shutdown (README "Set-up": exit within 5 s) has time left to flush
CLOSE_GRACE_SEC = 1.5


class Link:
    def __init__(
        self,
        ws: WebSocket,
        identity: str,
        subprotocol: str,
        remote: str,
        host: str,
        credential: object = None,
    ) -> None:
        self.ws = ws
        self.identity = identity
        #: the OCPP-J subprotocol agreed in the handshake ("ocpp1.6", …)
        self.subprotocol = subprotocol
        self.remote = remote
        self.host = host
        #: what it was admitted with: a SIGHUP that changes it closes the connection
        self.credential = credential
        #: why the appliance closed it, in words (None: the peer did, or it was lost)
        self.close_reason: str | None = None
        #: the whole life of the connection; `close` gives it a deadline
        self.scope = trio.CancelScope()

    @property
    def open(self) -> bool:
        return self.ws.machine.state is State.OPEN

    async def messages(self) -> AsyncIterator[str]:
        """The text messages of the peer, until the connection ends."""
        ws = self.ws
        while not ws.done:
            for text in await ws.receive_messages():
                yield text

    async def send(self, texts: list[str]) -> bool:
        """Send text messages in order; False (nothing sent) once closing."""
        machine = self.ws.machine
        if machine.state is not State.OPEN:
            return False
        for text in texts:
            machine.send_text(text.encode())
        await self.ws.flush()
        return True

    async def close(self, code: int, reason: str) -> None:
        """Send a close frame; the peer has CLOSE_GRACE_SEC to answer before the cut."""
        if self.close_reason is None:
            self.close_reason = reason
        self.scope.deadline = min(self.scope.deadline, trio.current_time() + CLOSE_GRACE_SEC)
        if self.ws.machine.state is State.OPEN:
            self.ws.machine.send_close(code, reason)
            await self.ws.flush()

    async def keep_alive(self, interval: float) -> None:
        """Ping every `interval` seconds; no pong by the next ping: the peer is gone."""
        if not math.isfinite(interval) or interval <= 0:
            return
        ws = self.ws
        ws.pong_received = True
        while True:
            await trio.sleep(interval)
            if not ws.pong_received:
                self.close_reason = f"no pong within {interval:g} s: peer presumed dead"
                log.warning("%s: %s", self.identity, self.close_reason)
                self.scope.cancel()
                return
            ws.pong_received = False
            if ws.machine.state is State.OPEN:
                ws.machine.send_ping(b"ocpp-appliance")
                await ws.flush()

    def ended_reason(self) -> str:
        """Why the connection ended, in words."""
        if self.close_reason is not None:
            return self.close_reason
        machine = self.ws.machine
        received = machine.close_rcvd
        if received is not None:
            text = f": {received.reason}" if received.reason else ""
            return f"closed by the charge point ({received.code}{text})"
        sent = machine.close_sent
        if sent is not None:
            return f"closed by the appliance ({sent.code}: {sent.reason})"
        return "connection lost"
