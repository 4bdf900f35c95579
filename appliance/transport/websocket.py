"""A thin trio driver for `websockets`' sans-I/O protocol: bytes in, events out, bytes to
send, and RFC 6455 messages assembled from their frames. One object per TCP stream; no
tasks of its own. The simulator's client side uses it too.

What the protocol object does by itself (websockets, RFC 6455): frame parsing, masking,
control frames (pongs, the close handshake, close codes checked: 1002 for a bad one),
continuation rules and the size limit across fragments (1009). What is left to a driver
and done here: joining the fragments of a message, checking its UTF-8 (1007, RFC 6455
§8.1), and closing so that the peer reads the close frame (a half-close, then the rest of
what it sends is read and dropped, bounded in time and bytes, before the socket closes:
closing with unread data would reset the connection and lose the close frame).
"""

from __future__ import annotations

import trio
from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import Protocol, State

#: bytes read per receive; OCPP frames are small, a NotifyReport takes a few reads
RECEIVE_SIZE = 65536
#: after our close frame, how long and how much of the peer's data is still read (and
#: dropped) so that it can read the close frame before the socket closes: one 16 MiB
#: frame on a LAN, a few seconds of a slow link
DRAIN_SEC = 2.0
DRAIN_BYTES = 16 * 1024 * 1024


class WebSocket:
    def __init__(self, stream: trio.abc.Stream, machine: Protocol) -> None:
        self.stream = stream
        #: websockets' sans-I/O protocol object: the RFC 6455 state machine
        self.machine = machine
        self._pending: list[bytes] = []
        self._sending = False
        #: our side of the stream is finished: nothing more will be sent
        self.eof_sent = False
        self.peer_eof = False
        self._drain_deadline = 0.0
        self._drained = 0
        #: the fragments of a message being received, and whether it is binary
        self._parts: list[bytes] = []
        self._binary = False
        #: a pong arrived since the last look (the keep-alive resets it)
        self.pong_received = False
        #: this read failed the connection: later messages of it are not passed on
        self._failed = False
        #: events parsed but not yet handed out (what came in the read of the handshake)
        self._held: list[Request | Response | Frame] = []

    async def receive(self) -> list[Request | Response | Frame]:
        """Read once and return what the state machine parsed; `done` tells when to stop."""
        if self._held:
            held, self._held = self._held, []
            return held
        data = b""
        if self.eof_sent:
            # closing: read on only to let the peer read our close frame (see module doc)
            with trio.move_on_at(self._drain_deadline):
                data = await self._receive_some()
            self._drained += len(data)
            late = trio.current_time() >= self._drain_deadline
            if not data or late or self._drained > DRAIN_BYTES:
                self.peer_eof = True
                return []
        else:
            data = await self._receive_some()
        if data:
            self.machine.receive_data(data)
        else:
            self.peer_eof = True
            self.machine.receive_eof()
        events = self.machine.events_received()
        # the state machine may have something to say (pong, close echo, 1009 on a big frame)
        await self.flush()
        return events

    def hold(self, events: list[Request | Response | Frame]) -> None:
        """Give `events` back: the next `receive` returns them without reading (a peer
        may send its first frame in the same read as the handshake's end)."""
        self._held = events + self._held

    async def _receive_some(self) -> bytes:
        try:
            return bytes(await self.stream.receive_some(RECEIVE_SIZE))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return b""

    async def receive_messages(self) -> list[str]:
        """Read once and return the text messages completed by it, assembled from their
        fragments (RFC 6455 §5.4). Invalid UTF-8 closes with 1007, a binary message with
        1003 (OCPP-J travels in text messages only); pongs set `pong_received`."""
        texts: list[str] = []
        self._failed = False
        for event in await self.receive():
            if not isinstance(event, Frame):
                continue
            opcode = event.opcode
            if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
                self._binary = opcode is Opcode.BINARY
                if event.fin:
                    self._message(bytes(event.data), texts)
                else:
                    self._parts = [bytes(event.data)]
            elif opcode is Opcode.CONT:
                self._parts.append(bytes(event.data))
                if event.fin:
                    data, self._parts = b"".join(self._parts), []
                    self._message(data, texts)
            elif opcode is Opcode.PONG:
                self.pong_received = True
        await self.flush()
        # what arrived before a close or a failure crossed the wire and is passed on
        # (its answer may no longer go out); nothing after it is (RFC 6455 §7.1.7)
        return texts

    def _message(self, data: bytes, texts: list[str]) -> None:
        if self._failed:
            return
        if self._binary:
            self.fail(CloseCode.UNSUPPORTED_DATA, "OCPP-J uses text frames, not binary")
            return
        try:
            texts.append(data.decode())
        except UnicodeDecodeError as exc:
            self.fail(CloseCode.INVALID_DATA, f"invalid UTF-8 at byte {exc.start}")

    def fail(self, code: int, reason: str) -> None:
        """Close at once with `code` (the close frame goes out with the next flush)."""
        self._failed = True
        if self.machine.state is State.OPEN:
            self.machine.fail(code, reason)

    @property
    def done(self) -> bool:
        """Nothing more will arrive: the peer closed, or the drain after our close ended."""
        return self.peer_eof

    async def flush(self) -> None:
        """Send what the state machine has queued.

        Several tasks call this (reader, pinger, call timer). Whoever finds no send in
        progress becomes the sender and loops until the buffer is empty; the others only
        append. Cheaper than a lock (no scheduler round trip when there is nothing to
        send, or while another task sends) and the bytes keep their order.
        """
        chunks = self.machine.data_to_send()
        if not chunks:
            return
        self._pending.extend(chunks)
        if self._sending:
            return
        self._sending = True
        try:
            while self._pending and not self.eof_sent:
                # a b"" chunk means: our side is finished (websockets' convention)
                eof = b"" in self._pending
                data = b"".join(self._pending)
                self._pending.clear()
                try:
                    if data:
                        await self.stream.send_all(data)
                    if eof:
                        await self._finish_sending()
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self.eof_sent = True
                    self.peer_eof = True
        finally:
            self._sending = False

    async def _finish_sending(self) -> None:
        """Half-close where the stream can (the peer sees FIN after our close frame);
        the reader then drains what the peer still sends (see `receive`)."""
        self.eof_sent = True
        self._drain_deadline = trio.current_time() + DRAIN_SEC
        if isinstance(self.stream, trio.abc.HalfCloseableStream):
            await self.stream.send_eof()

    async def send_text(self, text: str) -> None:
        self.machine.send_text(text.encode())
        await self.flush()

    async def aclose(self) -> None:
        self.eof_sent = True
        await trio.aclose_forcefully(self.stream)
