"""The web listener: Hypercorn's trio worker serving the dashboard's Starlette
application in the appliance's own nursery (README "Web dashboard and API").

The socket is bound at start, before the database is opened, like the OCPP port: a
taken port stops `serve` at once. Hypercorn, Starlette and Jinja2 are imported when the
first connection waits on it, in a worker thread while the OCPP side goes on: until a
page or the API is first used they cost neither memory (9 MB of RSS) nor start time
(0.1 s here) (issue 21); that first connection waits in the socket's backlog meanwhile
(0.2 s here). With [tls] everything is built at start, so that a certificate that
cannot be loaded stops `serve` at once. The OCPP side never waits on anything here: the web
side reads the database through its own connections in worker threads (at most
READ_THREADS at a time), writes controls the way `ocpp-appliance set` does, and hears
of connections through the hub's never-blocking events.
"""

from __future__ import annotations

import importlib
import logging
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from appliance.config import Config
from appliance.station import Stations
from appliance.store.web_queries import WebReader
from appliance.web.access import Access, load_secret
from appliance.web.live import Live

if TYPE_CHECKING:
    # imported when the first browser or script connects (see Dashboard.run)
    from hypercorn.config import Config as HypercornConfig

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
    host = config.web_host
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
        self,
        config: Callable[[], Config],
        stations: Stations | None,
        sock: socket.socket,
        unready: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.config = config
        #: why the process should get no new charge points, or None (`/healthz`)
        self.unready = unready
        self.sock = sock
        self.port: int = sock.getsockname()[1]
        self.stopping = trio.Event()
        current = config()
        self.tls = current.tls is not None
        self.limiter = trio.CapacityLimiter(READ_THREADS)
        self.live = Live(WebReader(current.database_path, shared=True), stations, self._run)
        self.access = Access(lambda: config().web, load_secret(secret_path(current)))
        #: the Starlette application, built with the first connection (with [tls]: at start)
        self.app: Any = None

    async def _run(self, fn: Callable, *args: object) -> object:
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)

    def _build(self) -> None:
        from appliance.web.routes import Web, build

        reader = WebReader(self.config().database_path)
        web = Web(self.config, reader, self.live, self.access, self.limiter, self.unready)
        self.app = build(web, self.tls)

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    def hypercorn_config(self) -> HypercornConfig:
        from hypercorn.config import Config as HypercornConfig

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
        try:
            async with trio.open_nursery() as outer:
                await outer.start(self.live.run_forever)
                if self.tls:
                    self._build()
                    await self._serve(task_status)
                else:
                    task_status.started()
                    if await self._first_connection():
                        await self._serve()
                outer.cancel_scope.cancel()
        finally:
            # the port is free again when the appliance stops (once Hypercorn has the
            # socket, this one is detached and closing it does nothing)
            self.sock.close()

    async def _first_connection(self) -> bool:
        """Wait until a connection is there to accept, then load and build the web side
        (False: the appliance stops first, or the web side cannot be built)."""
        async with trio.open_nursery() as nursery:

            async def stop_waiting() -> None:
                await self.stopping.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(stop_waiting)
            await trio.lowlevel.wait_readable(self.sock)
            nursery.cancel_scope.cancel()
        if self.stopping.is_set():
            return False
        try:
            await trio.to_thread.run_sync(_import_web_side)
            self._build()
        except Exception as exc:
            # a damaged installation (the package data missing): the OCPP side goes on
            log.error("web: the dashboard and API cannot start: %s", exc)
            return False
        return True

    async def _serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        from hypercorn.trio import serve

        settings = self.hypercorn_config()
        async with trio.open_nursery() as inner:
            await inner.start(
                lambda task_status: serve(
                    self.app,
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

    def stop(self) -> None:
        self.stopping.set()


def _import_web_side() -> None:
    """In a worker thread: the modules the web side needs beyond the appliance's own
    (a second or more on a Raspberry Pi, which the OCPP side need not wait for)."""
    for name in ("hypercorn.trio", "appliance.web.routes"):  # routes: Starlette, Jinja2
        importlib.import_module(name)
