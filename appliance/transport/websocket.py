"""A thin trio driver for `websockets`' sans-I/O protocol: bytes in, events out, bytes to
send. One object per TCP stream; no tasks of its own."""

from __future__ import annotations

import trio
from websockets.frames import Frame
from websockets.http11 import Request, Response
from websockets.protocol import Protocol, State

#: bytes read per receive; OCPP frames are small, a NotifyReport takes a few reads
RECEIVE_SIZE = 65536


class WebSocket:
    def __init__(self, stream: trio.abc.Stream, protocol: Protocol) -> None:
        self.stream = stream
        self.protocol = protocol
        self._pending: list[bytes] = []
        self._sending = False
        self.eof_sent = False
        self.peer_eof = False

    async def receive(self) -> list[Request | Response | Frame]:
        """Read once and return what the protocol parsed; `done` tells when to stop."""
        try:
            data = await self.stream.receive_some(RECEIVE_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        if data:
            self.protocol.receive_data(data)
        else:
            self.peer_eof = True
            self.protocol.receive_eof()
        events = self.protocol.events_received()
        # the protocol may have something to say (pong, close echo, 1009 on a big frame)
        await self.flush()
        return events

    @property
    def done(self) -> bool:
        return self.eof_sent or self.peer_eof or self.protocol.state is State.CLOSED

    async def flush(self) -> None:
        """Send what the protocol has queued.

        Several tasks call this (reader, pinger, call timer). Whoever finds no send in
        progress becomes the sender and loops until the buffer is empty; the others only
        append. Cheaper than a lock (no scheduler round trip when there is nothing to
        send, or while another task sends) and the bytes keep their order.
        """
        chunks = self.protocol.data_to_send()
        if not chunks:
            return
        self._pending.extend(chunks)
        if self._sending:
            return
        self._sending = True
        try:
            while self._pending and not self.eof_sent:
                # a b"" chunk means: close the TCP stream now (websockets' convention)
                eof = b"" in self._pending
                data = b"".join(self._pending)
                self._pending.clear()
                try:
                    if data:
                        await self.stream.send_all(data)
                    if eof:
                        self.eof_sent = True
                        await self.stream.aclose()
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self.eof_sent = True
        finally:
            self._sending = False

    async def send_text(self, text: str) -> None:
        self.protocol.send_text(text.encode())
        await self.flush()

    async def aclose(self) -> None:
        self.eof_sent = True
        await trio.aclose_forcefully(self.stream)
