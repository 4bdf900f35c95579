"""The live part of the dashboard: one poller for every open page, fanned out to each
Server-Sent Events stream (README "Web dashboard and API").

At most once a second, and only while a page is open, the poller asks the database
whether anything was committed since its last look (PRAGMA data_version, one cheap
call), and if so reads `charge_point_status` and sends each row that changed; pages
that asked for states by glob also get the states written since. Connection events
come from the stations' hub at once. A stream that does not keep up (a slow or hostile
browser) is dropped — the browser's EventSource reconnects and starts with a fresh
snapshot — so nothing here ever waits on a client, and the OCPP side never waits on
anything here (the hub's `publish` never blocks).
"""

from __future__ import annotations

import fnmatch
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from appliance.station import Stations
from appliance.station.station import Connected, Disconnected
from appliance.store.web_queries import WebReader

log = logging.getLogger("appliance")

#: the poller's period: "live" to a person, and at most one query a second whatever
#: the number of open pages
POLL_SEC = 1.0
#: events one stream may fall behind by before it is dropped (a full snapshot of 100
#: charge points is 100 events)
STREAM_BUFFER = 256
#: open streams at once: a household's phones, tablets and Home Assistant are a handful;
#: a script that opens more gets 503 instead of the appliance's memory
MAX_STREAMS = 100


def sse(name: str, data: Any) -> str:
    """One Server-Sent Event (https://html.spec.whatwg.org/multipage/server-sent-events.html):
    the data is one line of compact JSON."""
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


@dataclass(eq=False, slots=True)
class Stream:
    """One open page's feed: events encoded as SSE text, once for every page."""

    send: trio.MemorySendChannel[str]
    #: states GLOB patterns this page wants (full ids), empty: none
    globs: tuple[str, ...] = ()
    matcher: Callable[[str], bool] = field(default=lambda _id: False)
    #: states written after this (ms) are new to this page: the newest write when it
    #: opened, then the newest it has been sent
    since: int = 0
    #: the ids it was sent as written at `since` exactly: a write of the same millisecond
    #: that lands in a later commit is new, these are not
    sent_at_since: set[str] = field(default_factory=set)


class Live:
    def __init__(self, reader: WebReader, stations: Stations | None, run: Any) -> None:
        """`run(fn, *args)`: a blocking call in a worker thread (the web side's limiter)."""
        self.reader = reader
        self.stations = stations
        self.run = run
        self.streams: set[Stream] = set()
        self._snapshot: dict[str, dict[str, Any]] = {}
        self._version: int | None = None

    def open(
        self, globs: tuple[str, ...] = (), since: int = 0, written: set[str] | None = None
    ) -> tuple[Stream, trio.MemoryReceiveChannel[str]]:
        """A stream; with `globs`, of the states written after `since` (ms) and those
        written at `since` that are not in `written` (already there when it opened)."""
        send, receive = trio.open_memory_channel[str](STREAM_BUFFER)
        patterns = tuple(globs)

        def matcher(state_id: str) -> bool:
            return any(fnmatch.fnmatchcase(state_id, p) for p in patterns)

        stream = Stream(send, patterns, matcher, since, set(written or ()))
        self.streams.add(stream)
        return stream, receive

    def close(self, stream: Stream) -> None:
        self.streams.discard(stream)
        stream.send.close()

    def _publish(self, name: str, data: Any) -> None:
        text = sse(name, data)  # encoded once, however many pages are open
        for stream in list(self.streams):
            self._send(stream, text)

    def _send(self, stream: Stream, text: str) -> None:
        try:
            stream.send.send_nowait(text)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            # it fell behind: drop it, the browser reconnects with a fresh snapshot
            self.close(stream)

    async def run_forever(
        self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        async with trio.open_nursery() as nursery:
            if self.stations is not None:
                nursery.start_soon(self._connections, self.stations.subscribe())
            task_status.started()
            while True:
                await trio.sleep(POLL_SEC)
                if not self.streams:
                    self._version = None
                    continue
                try:
                    await self._poll()
                except Exception as exc:  # a locked or busy database: try again
                    log.warning("web: reading the database for live updates failed: %s", exc)

    async def _poll(self) -> None:
        version = await self.run(self.reader.data_version)
        if version == self._version:
            return
        self._version = version
        rows = await self.run(self.reader.charge_points)
        for row in rows:
            if self._snapshot.get(row["identity"]) != row:
                self._snapshot[row["identity"]] = row
                self._publish("status", row)
        wanting = [stream for stream in self.streams if stream.globs]
        if wanting:
            since = min(stream.since for stream in wanting)
            changed = await self.run(self.reader.states_since, since)
            if not changed:
                return
            newest = changed[-1]["ts"]
            at_newest = {row["id"] for row in changed if row["ts"] == newest}
            for stream in wanting:
                mine = [
                    row
                    for row in changed
                    if (
                        row["ts"] > stream.since
                        or (row["ts"] == stream.since and row["id"] not in stream.sent_at_since)
                    )
                    and stream.matcher(row["id"])
                ]
                if newest > stream.since:
                    stream.since, stream.sent_at_since = newest, set(at_newest)
                else:
                    stream.sent_at_since |= at_newest
                if mine:
                    self._send(stream, sse("states", mine))

    async def _connections(self, events: trio.MemoryReceiveChannel[Any]) -> None:
        async with events:
            async for event in events:
                identity = event.station.identity
                if isinstance(event, Connected):
                    self._publish("connection", {"identity": identity, "connected": 1})
                elif isinstance(event, Disconnected) and event.current:
                    self._publish("connection", {"identity": identity, "connected": 0})
