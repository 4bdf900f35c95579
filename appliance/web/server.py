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

The listener is ours, Hypercorn serves what it accepts: `_accept` counts the open
connections of each source address and refuses one beyond `[web]
max_connections_per_address` at once, before TLS and before a byte of HTTP is read, so
that no address can hold more than its share of descriptors and memory (plain http: a
503 with Retry-After, then closed; https: closed, a TLS handshake would cost what the cap
saves). Each accepted connection runs Hypercorn's own per-connection server
(`hypercorn.trio.tcp_server.TCPServer`), as `hypercorn.trio.serve` would run it.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import logging
import socket
import ssl
import struct
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from appliance.config import Config
from appliance.security.guard import Reporter, peer
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
#: connections waiting to be accepted: a page's burst of requests, a few browsers
LISTEN_BACKLOG = 1024
#: a 503 for an address at its cap asks to come back after this many seconds
RETRY_AFTER_SEC = 10
#: how long a refused connection may take to read its 503 (what it sends meanwhile is
#: read and dropped, so that the close does not reset the answer away), and how many such
#: goodbyes run at once (beyond that: closed at once)
REFUSAL_LINGER_SEC = 1.0
REFUSAL_LINGER_BYTES = 65_536
REFUSALS_LINGERING = 32
#: accept(2) errors that say the process or the system is out of something
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
ACCEPT_RETRY_SEC = 0.1


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
        sock.listen(LISTEN_BACKLOG)
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
        status: Callable[[], dict[str, Any]] = dict,
    ) -> None:
        self.config = config
        #: why the process should get no new charge points, or None (`/healthz`)
        self.unready = unready
        #: the process's own state (`/api/status`)
        self.status = status
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
        #: open connections per source address ([web] max_connections_per_address)
        self.connected: Counter[str] = Counter()
        self.reporter = Reporter()
        self._lingering = trio.CapacityLimiter(REFUSALS_LINGERING)

    async def _run(self, fn: Callable, *args: object) -> object:
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)

    def _build(self) -> None:
        from appliance.web.routes import Web, build

        reader = WebReader(self.config().database_path)
        web = Web(
            self.config, reader, self.live, self.access, self.limiter, self.unready, self.status
        )
        self.app = build(web, self.tls)

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    def hypercorn_config(self) -> HypercornConfig:
        from hypercorn.config import Config as HypercornConfig

        current = self.config()
        settings = HypercornConfig()
        # the socket is ours, bound at start, and so is the accepting (`_accept`)
        settings.bind = []
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
            # the port is free again when the appliance stops
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
        """What `hypercorn.trio.serve` does, with our accept loop: each connection gets
        Hypercorn's TCPServer; on stop, idle connections close, open event streams end
        and requests in progress get GRACE_SEC."""
        from hypercorn.trio.tcp_server import TCPServer
        from hypercorn.trio.worker_context import WorkerContext
        from hypercorn.typing import ConnectionState
        from hypercorn.utils import wrap_app

        settings = self.hypercorn_config()
        app = wrap_app(self.app, settings.wsgi_max_body_size, "asgi")
        context = WorkerContext(None)
        tls = settings.create_ssl_context() if settings.ssl_enabled else None

        async def serve(stream: trio.abc.Stream) -> None:
            await TCPServer(app, settings, context, ConnectionState({}), stream)  # type: ignore[arg-type]

        listener = trio.SocketListener(trio.socket.from_stdlib_socket(self.sock))
        async with trio.open_nursery() as connections:
            async with trio.open_nursery() as accepting:
                accepting.start_soon(self._accept, listener, connections, tls, serve)
                task_status.started()
                await self.stopping.wait()
                accepting.cancel_scope.cancel()
            # open event streams end now; idle connections close when Hypercorn hears
            # `terminated`; other requests get GRACE_SEC
            for stream in list(self.live.streams):
                self.live.close(stream)
            await context.terminated.set()
            connections.cancel_scope.deadline = trio.current_time() + GRACE_SEC

    async def _accept(
        self,
        listener: trio.SocketListener,
        nursery: trio.Nursery,
        tls: ssl.SSLContext | None,
        serve: Callable[[trio.abc.Stream], Awaitable[None]],
    ) -> None:
        while True:
            try:
                tcp = await listener.accept()
            except OSError as exc:
                if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                    raise
                report = self.reporter.refusal("-", f"accept: {exc.strerror}", trio.current_time())
                if report.log:
                    log.error("web: cannot accept connections: %s%s", exc.strerror, report.log_note)
                await trio.sleep(ACCEPT_RETRY_SEC)
                continue
            host, remote = peer(tcp)
            cap = self.config().web.max_connections_per_address
            if cap and self.connected[host] >= cap:
                self._refuse(tcp, host, remote, cap, nursery, tls is not None)
                continue
            self.connected[host] += 1
            nursery.start_soon(self._connection, tcp, host, tls, serve)

    async def _connection(
        self,
        tcp: trio.SocketStream,
        host: str,
        tls: ssl.SSLContext | None,
        serve: Callable[[trio.abc.Stream], Awaitable[None]],
    ) -> None:
        stream: trio.abc.Stream = tcp
        if tls is not None:
            stream = trio.SSLStream(tcp, tls, server_side=True, https_compatible=True)
        try:
            await serve(stream)
        finally:
            await trio.aclose_forcefully(stream)
            self.connected[host] -= 1
            if self.connected[host] <= 0:
                del self.connected[host]

    def _refuse(
        self,
        tcp: trio.SocketStream,
        host: str,
        remote: str,
        cap: int,
        nursery: trio.Nursery,
        secure: bool,
    ) -> None:
        """An address at its cap: one log line per address (per 10 minutes), and for
        plain http a 503 the peer can read; https, or too many goodbyes at once: reset."""
        reason = f"connections from this address at max_connections_per_address = {cap}"
        report = self.reporter.refusal(host, reason, trio.current_time())
        if report.log:
            log.warning("web: refused from %s: %s%s", remote, reason, report.log_note)
        if not secure:
            borrower = object()
            with contextlib.suppress(trio.WouldBlock):
                self._lingering.acquire_on_behalf_of_nowait(borrower)
                nursery.start_soon(self._goodbye, tcp, cap, borrower)
                return
        _reset(tcp)

    async def _goodbye(self, tcp: trio.SocketStream, cap: int, borrower: object) -> None:
        """The 503, our end closed, and what the peer still sends read and dropped for a
        moment: closing with its request unread would reset the answer away."""
        text = (
            f"too many connections from your address (at most {cap}); "
            f"try again in {RETRY_AFTER_SEC} s\n"
        ).encode()
        head = (
            "HTTP/1.1 503 Service Unavailable\r\n"
            f"Retry-After: {RETRY_AFTER_SEC}\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(text)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        try:
            with trio.move_on_after(REFUSAL_LINGER_SEC):
                await tcp.send_all(head + text)
                await tcp.send_eof()
                drained = 0
                while drained < REFUSAL_LINGER_BYTES:
                    data = await tcp.receive_some(REFUSAL_LINGER_BYTES)
                    if not data:
                        break
                    drained += len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self._lingering.release_on_behalf_of(borrower)
            await trio.aclose_forcefully(tcp)

    def stop(self) -> None:
        self.stopping.set()


def _reset(tcp: trio.SocketStream) -> None:
    """Close at once with a TCP reset (SO_LINGER 0): nothing read, nothing sent."""
    with contextlib.suppress(OSError):
        tcp.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    tcp.socket.close()


def _import_web_side() -> None:
    """In a worker thread: the modules the web side needs beyond the appliance's own
    (a second or more on a Raspberry Pi, which the OCPP side need not wait for)."""
    for name in ("hypercorn.trio", "appliance.web.routes"):  # routes: Starlette, Jinja2
        importlib.import_module(name)
