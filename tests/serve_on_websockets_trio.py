"""The appliance's core (station layer, tree, store) behind websockets' own trio server
instead of the project's transport: only to measure the transport choice inside the
appliance (`tests/benchmark.py --shared …` runs it beside the real thing). No TLS, no
authentication, no refusals: not a product.

    python tests/serve_on_websockets_trio.py CONFIG PORT
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from typing import Any

import trio
from websockets.exceptions import ConnectionClosed
from websockets.trio.server import ServerConnection, serve

from appliance import config as configuration
from appliance.app import compile_schemas
from appliance.security.policy import Policy
from appliance.station import Stations
from appliance.store import Retention, Store, TransactionIds
from appliance.transport import identity_from_path
from appliance.tree import Tree


class LibraryLink:
    """What the station uses of a `transport.Link`, over a websockets.trio connection."""

    def __init__(self, connection: ServerConnection) -> None:
        self.connection = connection
        self.identity = identity_from_path(connection.request.path)
        self.subprotocol = connection.subprotocol or "ocpp1.6"
        host, port, *_ = connection.remote_address
        self.remote = f"{host}:{port}"

    @property
    def open(self) -> bool:
        return self.connection.protocol.state.name == "OPEN"

    async def messages(self) -> AsyncIterator[str]:
        try:
            async for message in self.connection:
                if isinstance(message, str):
                    yield message
        except ConnectionClosed:
            return

    async def send(self, texts: list[str]) -> bool:
        try:
            for text in texts:
                await self.connection.send(text)
        except ConnectionClosed:
            return False
        return True

    async def close(self, code: int, reason: str) -> None:
        await self.connection.aclose(code, reason)


async def main(path: str, port: int) -> None:
    config = configuration.load(path)
    store = Store(
        config.database_path,
        config.storage.commit_interval_ms,
        Retention(config.storage.messages_keep_days, config.storage.meter_values_keep_days),
    )
    opened = await trio.to_thread.run_sync(store.open)
    tree = Tree(store, opened)
    hub = Stations(
        Policy.build(config),
        store,
        tree,
        compile_schemas(config),
        TransactionIds(opened, store.put),
    )

    async def handle(connection: ServerConnection) -> None:
        link: Any = LibraryLink(connection)
        await hub.serve(link)

    try:
        await serve(
            handle,
            port,
            host="127.0.0.1",
            compression=None,
            subprotocols=config.subprotocols,  # type: ignore[arg-type]
            max_size=config.limits.max_frame_bytes,
            ping_interval=config.ping_interval_sec,
        )
    finally:
        await trio.to_thread.run_sync(store.close)


if __name__ == "__main__":
    trio.run(main, sys.argv[1], int(sys.argv[2]))
