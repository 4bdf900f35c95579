"""`serve`: wire config, store, schemas and the listener together; re-read the config on
SIGHUP; stop cleanly on SIGTERM/SIGINT."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import gc
import logging
import os
import resource
import signal
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from appliance import __version__
from appliance import config as configuration
from appliance.config import Config, ConfigError
from appliance.controls import Controls
from appliance.domain import clock
from appliance.readings import Readings
from appliance.rpc import DIALECTS, SchemaSet
from appliance.security.policy import Policy, config_warnings
from appliance.station import Stations
from appliance.store import (
    HEALTHY,
    MetaValue,
    Opened,
    Retention,
    SessionsShifted,
    Store,
    StoreError,
    TransactionIds,
    now_ms,
)
from appliance.store.migrations import NewerSchema
from appliance.store.queries import ALIVE_KEY, HEARTBEAT_SEC, STOPPED_KEY, explain
from appliance.store.queries import heartbeat as last_heartbeat
from appliance.store.start import OPEN_SESSION_MAX_AGE_MS
from appliance.transport import Server
from appliance.tree import Tree

if TYPE_CHECKING:
    # imported by `running` only when [mqtt] is configured (paho-mqtt: 1.4 MB of RSS)
    from appliance.central import Central
    from appliance.mqtt import Bridge

    # imported when an [[upstream]] is configured, at start or at a SIGHUP (issue 21)
    from appliance.upstream import Upstreams

log = logging.getLogger("appliance")

SHUTDOWN_SIGNALS = (signal.SIGTERM, signal.SIGINT)
RELOAD_SIGNAL = signal.SIGHUP

#: keys a running server cannot change: the listener, the database and the enabled
#: versions' schemas are set up once at start. A SIGHUP that changes them says so and
#: keeps them.
RESTART_KEYS = ("host", "port", "database", "storage", *(d.config_key for d in DIALECTS.values()))
#: [web] keys that take a restart (README "Web dashboard and API")
WEB_RESTART_KEYS = ("enabled", "host", "port")


def setup_logging(level: str) -> None:
    """One line per event on stderr (journald adds its own timestamps under systemd)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%Y-%m-%dT%H:%M:%S")
    )
    handler.addFilter(one_line)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The appliance logs every connection event itself, once, with the identity; the
    # library's own lines (one per open, tracebacks for bad handshakes) would repeat them.
    logging.getLogger("websockets").setLevel(logging.CRITICAL)


#: control characters a peer could put into what is logged (an action name, a message
#: id, an identity): a newline would forge a line of the log
_CONTROL = {code: f"\\x{code:02x}" for code in (*range(32), 127)} | {
    ord("\n"): "\\n",
    ord("\r"): "\\r",
    ord("\t"): "\\t",
    0x2028: "\\u2028",
    0x2029: "\\u2029",
}


def one_line(record: logging.LogRecord) -> bool:
    """A logging filter: each message stays one line, whatever a peer sent (the
    traceback of an error is not part of the message and keeps its lines)."""
    message = record.getMessage()
    if not message.isprintable():
        # a lone surrogate (valid JSON, no text) is written as its escape too
        safe = message.translate(_CONTROL).encode("utf-8", "backslashreplace").decode()
        record.msg, record.args = safe, None
    return True


def compile_schemas(config: Config) -> dict[str, SchemaSet]:
    """Validators for every enabled version (each schema is compiled the first time a
    charge point's message needs it: `SchemaSet`)."""
    return {name: SchemaSet(DIALECTS[name]) for name in config.subprotocols}


#: the command line's changes to a config (`serve --port`, `--instance`)
Overrides = Callable[[Config], Config]


@dataclass(slots=True)
class Running:
    server: Server
    stations: Stations
    store: Store
    port: int
    #: set once the block has ended: everything queued is in the database
    flushed: bool = False
    #: what the command line sets over the file's keys (`serve --port`, `--instance`);
    #: a SIGHUP applies it to the file read again
    overrides: Overrides = field(default=lambda config: config)
    #: the web dashboard and API ([web]), None when disabled
    dashboard: Any = None
    #: the MQTT bridge, when [mqtt] is configured
    mqtt: Bridge | None = None
    #: replication into the fleet's PostgreSQL, when [central] is configured
    central: Central | None = None
    #: the second backends ([[upstream]]; README "A second backend"), None until one is
    #: configured
    upstreams: Upstreams | None = None
    #: starts `upstreams` (at a SIGHUP that adds the first [[upstream]])
    start_upstreams: Callable[[Config], Awaitable[None]] | None = None


class CannotListen(Exception):
    """The port cannot be had (the CLI exits 1; nothing was written)."""


class DatabaseUnusable(Exception):
    """The database cannot be created or opened; the message names the file and the fix
    (the CLI exits 1)."""


async def listen(config: Config) -> list[trio.SocketListener]:
    """The listening sockets, first of all: a port that is taken must not leave a new
    database behind."""
    try:
        return await trio.open_tcp_listeners(config.port, host=config.host or None)
    except OSError as exc:
        where = f"{config.host}:{config.port}"
        reason = exc.strerror or str(exc)
        hint = ""
        if exc.errno == errno.EADDRINUSE:
            hint = ": another program uses it; pick another (serve --port N, or `port`)"
        elif exc.errno == errno.EACCES and 0 < config.port < 1024:
            hint = ": ports below 1024 need privileges; pick one above"
        raise CannotListen(f"cannot listen on {where}: {reason}{hint}") from None


def listen_web(config: Config) -> Any:
    """The web dashboard's socket ([web]), bound at start like the OCPP port; None when
    disabled."""
    if not config.web.enabled:
        return None
    from appliance.web import bind

    try:
        return bind(config)
    except OSError as exc:
        where = f"{config.web_host}:{config.web.port}"
        hint = ""
        if exc.errno == errno.EADDRINUSE:
            hint = ": another program uses it; pick another ([web] port) or [web] enabled = false"
        raise CannotListen(f"cannot listen on {where} (web): {exc.strerror or exc}{hint}") from None


def open_store(store: Store) -> Opened:
    """Create or open the database (blocking); every OS or SQLite error becomes
    DatabaseUnusable naming the file and the likely fix."""
    verb = "open" if store.path.exists() else "create"
    try:
        return store.open()
    except OSError as exc:
        raise DatabaseUnusable(explain(store.path, exc, verb)) from None
    except StoreError as exc:
        # the store says what it knows; where SQLite gave a reason, say it as a user can act
        cause = exc.__context__
        if isinstance(cause, sqlite3.Error) and not isinstance(cause, NewerSchema):
            raise DatabaseUnusable(explain(store.path, cause, verb)) from None
        raise DatabaseUnusable(str(exc)) from None
    except sqlite3.Error as exc:
        raise DatabaseUnusable(explain(store.path, exc, verb)) from None


async def heartbeat(
    store: Store, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """The appliance's sign of life in `meta`, for `ocpp-appliance set`/`call` (and any
    tool) to tell at once whether anyone will take a command."""
    store.put(MetaValue(ALIVE_KEY, now_ms()))
    task_status.started()
    while True:
        await trio.sleep(HEARTBEAT_SEC)
        store.put(MetaValue(ALIVE_KEY, now_ms()))


#: how often the clock is looked at while nothing else reads it (seconds)
CLOCK_CHECK_SEC = 1.0


async def watch_clock(
    store: Store, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """The appliance's clock (`domain.clock`): the previous run's last sign of life is
    the first time it knows (while the system's clock is not synchronised, `currentTime`
    is never earlier); a step of the clock moves the running sessions onto the new clock;
    a step is noticed within CLOCK_CHECK_SEC even while no charge point talks, and the
    log says when the clock becomes synchronised or stops being so."""
    try:
        alive, stopped = await trio.to_thread.run_sync(last_heartbeat, store.path)
    except Exception:  # an older file without them, or one that cannot be read now
        alive = stopped = None
    last = max(alive or 0, stopped or 0)
    if last:
        clock.CLOCK.learn(last / 1000, own=True)

    def shift(step: clock.Step) -> None:
        since = int(step.before * 1000) - OPEN_SESSION_MAX_AGE_MS
        store.put(SessionsShifted(round(step.by * 1000), since))

    unsubscribe = clock.CLOCK.subscribe(shift)
    try:
        if clock.CLOCK.seam is not None:
            log.warning(
                "clock: $%s is set: this process's clock follows %s (for tests)",
                clock.SEAM_ENV,
                clock.CLOCK.seam,
            )
        synchronised = clock.synchronised()
        if not synchronised:
            log.info(
                "clock: the system says its clock is not synchronised: BootNotification"
                " and Heartbeat answer the newest time the appliance knows (%s)",
                clock.current_time(),
            )
        task_status.started()
        while True:
            await trio.sleep(CLOCK_CHECK_SEC)
            clock.CLOCK.check()
            now = clock.synchronised()
            if now != synchronised:
                synchronised = now
                if now:
                    log.info("clock: the system's clock is synchronised now: %s", clock.iso_now())
                else:
                    log.info(
                        "clock: the system's clock is not synchronised any more:"
                        " BootNotification and Heartbeat answer the newest time the"
                        " appliance knows (%s)",
                        clock.current_time(),
                    )
    finally:
        unsubscribe()


#: how often the appliance looks whether memory can go back to the system (seconds)
TRIM_SEC = 20
#: RSS growth since the last trim that makes a peak (bytes)
TRIM_GROWTH = 4 << 20
#: CPU time per second of the last TRIM_SEC below which the load is over
TRIM_QUIET = 0.1


def malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim; None where the C library has none (musl, macOS)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def resident_bytes() -> int | None:
    """This process's RSS (Linux), None where /proc cannot tell."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


async def give_back_memory(
    trim: Callable[[int], int], task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """After a peak of load, the memory it took and no longer uses goes back to the
    system: glibc keeps the pages of what Python frees in its heap, and nothing asks for
    them back (issue 21). When RSS has grown by TRIM_GROWTH since the last time and the
    last TRIM_SEC were quiet: a full garbage collection (the thresholds `serve` sets make
    them rare) and glibc's malloc_trim (2 ms here for a heap of 120 MB)."""
    task_status.started()
    low = resident_bytes()
    cpu = time.process_time()
    while low is not None:
        await trio.sleep(TRIM_SEC)
        now, busy = resident_bytes(), time.process_time() - cpu
        cpu += busy
        if now is None or now < low + TRIM_GROWTH or busy > TRIM_QUIET * TRIM_SEC:
            low = min(low, now or low)
            continue
        gc.collect()
        trim(0)
        low = resident_bytes()
        cpu = time.process_time()


#: file descriptors besides the charge points' connections: the database (its file, -wal
#: and -shm per connection, a connection per reader thread), the dashboard's clients,
#: MQTT, the log
SPARE_DESCRIPTORS = 256


def ensure_descriptors(max_connections: int) -> None:
    """Enough file descriptors for `[limits] max_connections` (README "Bad peers"): the
    soft limit is raised as far as the hard one allows (outside systemd; the unit sets
    LimitNOFILE); if that is not enough, the log says so at start."""
    needed = max_connections + SPARE_DESCRIPTORS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    if soft < needed:
        log.warning(
            "only %d file descriptors: [limits] max_connections = %d needs about %d; with"
            " that many connections new ones and database readers would fail (raise"
            " LimitNOFILE= of the service or `ulimit -n`, or lower max_connections)",
            soft,
            max_connections,
            needed,
        )


def unready(server: Server, store: Store) -> str | None:
    """Why this process should get no new charge points now (`/healthz` answers 503 with
    it: README "A big site on several processes"), or None. The writer's own state says
    whether the database is written: it fails a commit after waiting out another
    program's lock (BUSY_TIMEOUT_MS) and on a full disk, and clears at the next commit."""
    why = server.turning_away()
    if why is None and store.health != HEALTHY:
        why = f"database writer {store.health}"
    return why


def status(server: Server, store: Store) -> dict[str, Any]:
    """`GET /api/status`: what `/healthz` says (`ok`, or why not), the database writer's
    health and the disk guard's state (README "Storage design"). `notice`: one line while
    the disk guard is on (a 200 of `/healthz` carries it), else None."""
    why = unready(server, store)
    return {
        "healthz": why or "ok",
        "database": store.health,
        "disk": store.disk.as_dict(),
        "notice": store.disk.notice,
    }


@contextlib.asynccontextmanager
async def running(config: Config, policy: Policy | None = None) -> AsyncIterator[Running]:
    """The appliance, serving until the block ends; then every connection is closed with
    1001 and the database flushed."""
    policy = policy if policy is not None else Policy.build(config)
    for warning in config_warnings(config):
        log.warning("config: %s", warning)
    ensure_descriptors(config.limits.max_connections)
    listeners = await listen(config)
    try:
        web_socket = listen_web(config)
    except CannotListen:
        for listener in listeners:
            await listener.aclose()
        raise
    store = Store(
        config.database_path,
        config.storage.commit_interval_ms,
        Retention(
            config.storage.messages_keep_days,
            config.storage.meter_values_keep_days,
            replicated=config.central is not None,
        ),
        config.storage.min_free_disk_mb,
    )
    try:
        opened = await trio.to_thread.run_sync(open_store, store)
    except BaseException:
        for listener in listeners:
            await listener.aclose()
        if web_socket is not None:
            web_socket.close()
        raise
    running = None
    try:
        schemas = compile_schemas(config)
        tree = Tree(store, opened)
        transaction_ids = TransactionIds(opened, store.put)
        stations = Stations(policy, store, tree, schemas, transaction_ids)
        server = Server(config, store, stations.serve, policy)
        controls = Controls(stations, store, tree)
        readings = Readings(stations, store, tree)
        async with trio.open_nursery() as nursery:
            # stale commands are swept before the first charge point can connect
            await nursery.start(controls.run)
            await nursery.start(readings.run)
            await nursery.start(watch_clock, store)
            await nursery.start(heartbeat, store)
            trim = malloc_trim()
            if trim is not None:
                await nursery.start(give_back_memory, trim)
            bridge = None
            if config.mqtt is not None:
                from appliance.mqtt import Bridge

                bridge = Bridge(config, stations)
                await nursery.start(bridge.run)
            await nursery.start(server.run, listeners)
            running = Running(server, stations, store, listeners[0].socket.getsockname()[1])
            if web_socket is not None:
                from appliance.web import Dashboard

                running.dashboard = Dashboard(
                    lambda: stations.config,
                    stations,
                    web_socket,
                    lambda: unready(server, store),
                    lambda: status(server, store),
                )
                await nursery.start(running.dashboard.run)
                log.info(
                    "web dashboard and API on %s://%s:%d/",
                    running.dashboard.scheme,
                    config.web_host,
                    running.dashboard.port,
                )
            running.mqtt = bridge

            async def start_upstreams(config: Config) -> None:
                from appliance.upstream import Upstreams

                assert running is not None
                running.upstreams = Upstreams(stations, store, config)
                await nursery.start(running.upstreams.run)
                running.upstreams.connect_all()  # those connected before a SIGHUP added it

            running.start_upstreams = start_upstreams
            if config.upstream:
                await start_upstreams(config)
            if config.central is not None:
                from appliance.central import Central

                running.central = Central(config, store, stations, running.port, transaction_ids)
                await nursery.start(running.central.run)
            yield running
            if running.dashboard is not None:
                running.dashboard.stop()
            await server.shutdown()
            # connections got CLOSE_GRACE_SEC to answer the close frame
            with trio.move_on_after(2):
                while server.links or server.streams:
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
    finally:
        # `set` and `call` now know at once that nobody takes their commands
        store.put(MetaValue(STOPPED_KEY, now_ms()))
        flushed = await trio.to_thread.run_sync(store.close)
        if running is not None:
            running.flushed = flushed


async def serve(
    config: Config, policy: Policy | None = None, overrides: Overrides | None = None
) -> None:
    with trio.open_signal_receiver(*SHUTDOWN_SIGNALS, RELOAD_SIGNAL) as signals:
        async with running(config, policy) as appliance:
            if overrides is not None:
                appliance.overrides = overrides
            server = appliance.server
            # What start-up built lives for the whole run: keep it out of every
            # collection. Each frame then allocates a few dozen short-lived containers;
            # collecting the young generation every 700 allocations (the default) costs
            # more than it frees.
            gc.freeze()
            gc.set_threshold(20_000, 20, 50)
            log.info(
                "ocpp-appliance %s%s listening on %s://%s:%d/<identity> (%s), database %s%s",
                __version__,
                "" if config.instance is None else f" (instance {config.instance})",
                server.policy.scheme,
                config.host,
                appliance.port,
                ", ".join(config.subprotocols),
                config.database_path,
                ", client certificates required" if server.policy.mutual_tls else "",
            )
            async for signum in signals:
                if signum == RELOAD_SIGNAL:
                    await reload(appliance)
                    continue
                log.info("%s: closing connections", signal.Signals(signum).name)
                break
    if not appliance.flushed:
        # README "Storage design": never "flushed" when it was not
        raise NotFlushed(f"database NOT flushed: the writer is {appliance.store.health}")
    log.info("database flushed; bye")


class NotFlushed(Exception):
    """Shutdown could not write everything queued (the CLI exits 1)."""


async def reload(appliance: Running) -> None:
    """SIGHUP: read the config file again and put it in force (Server.reload). A config
    that does not load changes nothing: one log line naming the key, the old one stays."""
    server = appliance.server
    old = server.config
    if old.source is None:
        log.warning("SIGHUP: no config file to re-read (running on built-in defaults)")
        return
    try:
        new = await trio.to_thread.run_sync(configuration.load, str(old.source))
        new = appliance.overrides(new)
        kept = [key for key in RESTART_KEYS if getattr(new, key) != getattr(old, key)]
        if (new.tls is None) != (old.tls is None):
            kept.append("tls")  # ws:// ↔ wss:// on the same port would surprise everyone
        if (new.mqtt is None) != (old.mqtt is None):
            kept.append("mqtt")  # the bridge is a task started with the appliance
        if (new.central is None) != (old.central is None):
            kept.append("central")  # so is replication
        if kept:
            new = configuration.replace(new, **{key: getattr(old, key) for key in kept})
        # the web socket is bound once at start; the password and tokens apply now
        web = [key for key in WEB_RESTART_KEYS if getattr(new.web, key) != getattr(old.web, key)]
        if web:
            kept.extend(f"web.{key}" for key in web)
            kept_web = {key: getattr(old.web, key) for key in web}
            new = configuration.replace(new, web=configuration.replace(new.web, **kept_web))
        if kept:
            log.warning(
                "SIGHUP: %s changed: takes a restart; the running value stays", ", ".join(kept)
            )
        # the TLS files are read again too: a renewed certificate applies to new handshakes
        policy = await trio.to_thread.run_sync(Policy.build, new)
    except ConfigError as exc:
        log.error("SIGHUP: config not reloaded, the running one stays in force: %s", exc)
        return
    for warning in config_warnings(new):
        log.warning("config: %s", warning)
    logging.getLogger().setLevel(new.log_level.upper())
    appliance.stations.policy = policy
    await server.reload(policy)
    if appliance.mqtt is not None:
        appliance.mqtt.reload(new)
    if appliance.central is not None:
        appliance.central.reload(new)
    if appliance.upstreams is not None:
        appliance.upstreams.reload(new)
    elif new.upstream and appliance.start_upstreams is not None:
        await appliance.start_upstreams(new)
    log.info("SIGHUP: config reloaded from %s", old.source)
