"""The web listener: Hypercorn's trio worker serving the dashboard's Starlette
application in the appliance's own nursery (README "Web dashboard and API").

The socket is bound at start, before the database is opened, like the OCPP port: a
taken port stops `serve` at once. The OCPP side never waits on anything here: the web
side reads the database through its own connections in worker threads (at most
READ_THREADS at a time), writes controls the way `ocpp-appliance set` does, and hears
of connections through the hub's never-blocking events.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from pathlib import Path

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from appliance.config import Config
from appliance.station import Stations
from appliance.store.web_queries import WebReader
from appliance.web.access import Access, load_secret
from appliance.web.live import Live
from appliance.web.routes import Web, build

log = logging.getLogger("appliance")

#: worker threads reading for the web side at once: two cores, and the appliance's own
#: writer thread must keep one
READ_THREADS = 2
#: how long open pages (event streams) get to finish when the appliance stops
GRACE_SEC = 1.0
#: a connection whose peer takes nothing of what we send (a browser that stopped reading)
#: for this long is aborted by the kernel: Hypercorn's writes cannot be cancelled, and
#: one that waits for ever would keep the appliance from stopping
STALLED_MS = 3_000


def bind(config: Config) -> socket.socket:
    """The web port, bound and listening (OSError if it cannot be had)."""
    host = config.web.host or "0.0.0.0"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "TCP_USER_TIMEOUT"):  # Linux; accepted sockets inherit it
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, STALLED_MS)
        sock.bind((host, config.web.port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def secret_path(config: Config) -> Path:
    """The key file that signs the cookies, beside the database."""
    database = config.database_path
    return database.with_name(database.name + ".web-key")


class Dashboard:
    def __init__(
        self, config: Callable[[], Config], stations: Stations | None, sock: socket.socket
    ) -> None:
        self.config = config
        self.sock = sock
        self.port: int = sock.getsockname()[1]
        self.stopping = trio.Event()
        current = config()
        self.tls = current.tls is not None
        reader = WebReader(current.database_path)
        limiter = trio.CapacityLimiter(READ_THREADS)

        async def run(fn: Callable, *args: object) -> object:
            return await trio.to_thread.run_sync(fn, *args, limiter=limiter)

        self.live = Live(WebReader(current.database_path, shared=True), stations, run)
        access = Access(lambda: config().web, load_secret(secret_path(current)))
        self.web = Web(config, reader, self.live, access, limiter)
        self.app = build(self.web, self.tls)

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    def hypercorn_config(self) -> HypercornConfig:
        current = self.config()
        settings = HypercornConfig()
        # the socket is ours, bound at start; Hypercorn takes its descriptor over
        settings.bind = [f"fd://{self.sock.detach()}"]
        if current.tls is not None:
            settings.certfile = str(current.path(current.tls.cert))
            settings.keyfile = str(current.path(current.tls.key))
        settings.graceful_timeout = GRACE_SEC
        settings.accesslog = None
        quiet = logging.getLogger("appliance.web.hypercorn")
        quiet.setLevel(logging.WARNING)
        settings.errorlog = quiet
        settings.include_server_header = False
        # a request body larger than this is refused (a control is a few hundred bytes)
        settings.h11_max_incomplete_size = 16 * 1024
        return settings

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        settings = self.hypercorn_config()
        async with trio.open_nursery() as outer:
            await outer.start(self.live.run_forever)
            async with trio.open_nursery() as inner:
                await inner.start(
                    lambda task_status: serve(
                        self.app,  # type: ignore[arg-type]
                        settings,
                        shutdown_trigger=self.stopping.wait,
                        task_status=task_status,
                    )
                )
                task_status.started()
                await self.stopping.wait()
                # open event streams end now; other requests get GRACE_SEC from Hypercorn
                for stream in list(self.live.streams):
                    self.live.close(stream)
            outer.cancel_scope.cancel()

    def stop(self) -> None:
        self.stopping.set()
