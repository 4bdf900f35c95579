"""A stream some of whose first bytes were already read: the PROXY header's read may
take the start of what follows it (a TLS ClientHello, the HTTP upgrade request) in the
same receive. Those bytes are handed out again first, then the stream's own."""

from __future__ import annotations

import trio


class PrefixedStream(trio.abc.HalfCloseableStream):
    def __init__(self, stream: trio.abc.HalfCloseableStream, prefix: bytes) -> None:
        self.stream = stream
        self._prefix = prefix

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if not self._prefix:
            return await self.stream.receive_some(max_bytes)
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        # a checkpoint, as every receive_some is (trio's Stream contract)
        await trio.lowlevel.checkpoint()
        size = len(self._prefix) if max_bytes is None else max_bytes
        data, self._prefix = self._prefix[:size], self._prefix[size:]
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.stream.send_eof()

    async def aclose(self) -> None:
        self._prefix = b""
        await self.stream.aclose()
