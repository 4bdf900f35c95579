"""Every site into one PostgreSQL (README "Many sites into one PostgreSQL", issue 22).

One task replicates the SQLite file's committed rows into the fleet's PostgreSQL, table
by table in commit order, in batches, beyond per-table watermarks: PostgreSQL's (what it
holds) decides where to go on, the SQLite file's copy (`replication`) keeps retention
from deleting what is not there yet and tells `status` the backlog. The charge points
never wait for it: it only reads the file, on a connection of its own, in a worker thread.
An outage is logged once when it starts and once when it ends; retries back off to 30 s.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import sqlite3
import time
from typing import Any

import trio

from appliance.central.commands import Commands
from appliance.config import Central as CentralConfig
from appliance.config import Config, redact_url
from appliance.station import Stations
from appliance.store import MetaValue, Store, TransactionIds, now_ms
from appliance.store.replication import SOURCES, STATUS_KEY, ReplicationReader
from appliance.store.rows import Replicated

log = logging.getLogger("appliance.central")

#: how often the file is looked at for new commits (README: lag p99 ≤ 2 s)
POLL_SEC = 0.25
#: rows per batch (one PostgreSQL transaction)
BATCH_ROWS = 5000
#: README "Many sites into one PostgreSQL": retries back off up to this
MAX_BACKOFF_SEC = 30.0
#: 1.6 transaction ids PostgreSQL grants a process at a time; it asks for the next block
#: while it still has this many left (README "A big site on several processes": an outage
#: of PostgreSQL is bridged by up to two blocks)
GRANT_IDS = 10_000
#: latest-value tables are sent whole this often (and at every (re)connection), so a
#: write stamped by a clock that stepped back is not missed for long
SWEEP_SEC = 600.0
#: the state in the meta table is refreshed at least this often (status shows its age)
STATUS_EVERY_SEC = 5.0


def site_of(config: CentralConfig) -> str:
    return config.site or socket.gethostname()


def password_of(config: Config) -> str | None:
    central = config.central
    if central is None or central.password_file is None:
        return None
    lines = config.path(central.password_file).read_text().splitlines()
    return lines[0] if lines else ""


class Central:
    def __init__(
        self,
        config: Config,
        store: Store,
        stations: Stations,
        port: int,
        transaction_ids: TransactionIds,
    ) -> None:
        self.config = config
        self.store = store
        self.stations = stations
        self.transaction_ids = transaction_ids
        transaction_ids.coordinated = True
        self.origin = ""
        assert config.central is not None
        self.site = site_of(config.central)
        #: README "Commands from the centre": this process among the site's
        self.process = config.central.process or f"{socket.gethostname()}:{port}"
        self._limiter = trio.CapacityLimiter(1)
        self._marks: dict[str, int] = {}
        self._stored: dict[str, int] = {}
        self._state = ""
        self._status_at = 0.0
        self._swept = 0.0
        self._busy = False
        self._reconnect = False
        self._woken = trio.Event()
        self.rows = 0

    async def _thread(self, function: Any, *args: Any) -> Any:
        return await trio.to_thread.run_sync(function, *args, limiter=self._limiter)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        import psycopg  # only a fleet box pays for it

        from appliance.store.central import Postgres

        task_status.started()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(Commands(self, self.stations, self.process).run)
            await self._replicate(psycopg, Postgres)

    async def _replicate(self, psycopg: Any, Postgres: Any) -> None:
        reader = ReplicationReader(self.store.path)
        self._stored = await self._thread(reader.watermarks)
        self.origin = await self._thread(reader.origin)
        central = self.config.central
        assert central is not None
        url = redact_url(central.postgresql_url)
        backoff = 1.0
        postgres: Any = None
        try:
            while True:
                try:
                    central = self.config.central or central
                    if self._reconnect and postgres is not None:
                        await self._thread(_quietly_close, postgres)
                        postgres = None
                    self._reconnect = False
                    if postgres is None:
                        url = redact_url(central.postgresql_url)
                        postgres = await self._thread(self._connect, Postgres)
                        await self._thread(postgres.migrate)
                        self._marks = {**self._stored, **await self._thread(postgres.watermarks)}
                        self._swept = 0.0
                    busy = await self._thread(self._cycle, reader, postgres)
                    await self._grant(reader, postgres)
                    self._report(f"replicating into {url} as site {self.site!r}", ok=True)
                    backoff = 1.0
                    if not busy:
                        await trio.sleep(POLL_SEC)
                except (psycopg.Error, OSError, RuntimeError) as exc:
                    self._report(f"PostgreSQL at {url}: {_reason(exc)}", ok=False, kind=_kind(exc))
                    if postgres is not None:
                        await self._thread(_quietly_close, postgres)
                        postgres = None
                    await self._pause(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF_SEC)
                except sqlite3.Error as exc:
                    self._report(f"cannot read the database: {exc}", ok=False)
                    await trio.sleep(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF_SEC)
        finally:
            with trio.CancelScope(shield=True):
                if postgres is not None:
                    await self._thread(_quietly_close, postgres)
                await self._thread(reader.close)

    async def _pause(self, seconds: float) -> None:
        """The back-off between two attempts; a SIGHUP (a new url, password) ends it."""
        if self._reconnect:  # a SIGHUP came during the attempt
            return
        self._woken = trio.Event()
        with trio.move_on_after(seconds):
            await self._woken.wait()

    def connection_options(self) -> tuple[str, str, str | None, str | None]:
        """(url, site, password, CA file) as the config in force says now (worker
        thread: the password file is read at each connection)."""
        central = self.config.central
        assert central is not None
        ca = str(self.config.path(central.ca)) if central.ca else None
        return central.postgresql_url, self.site, password_of(self.config), ca

    def _connect(self, kind: Any) -> Any:
        return kind(*self.connection_options(), origin=self.origin)

    async def _grant(self, reader: ReplicationReader, postgres: Any) -> None:
        """Keep a block of 1.6 transaction ids ahead: one asked for while fewer than a
        block are left, used once the file holds it (README "A big site on several
        processes")."""
        ids = self.transaction_ids
        ids.confirm(await self._thread(reader.grants))
        if ids.left() < GRANT_IDS:
            first = await self._thread(postgres.grant, ids.floor, GRANT_IDS)
            ids.offer(first, first + GRANT_IDS)

    def reload(self, config: Config) -> None:
        """SIGHUP: a changed url, password, CA or site applies at once (reconnects)."""
        if config.central is not None and config.central != self.config.central:
            self.site = site_of(config.central)
            self._reconnect = True
            self._woken.set()
            log.info("central: settings changed; reconnecting")
        self.config = config

    def _cycle(self, reader: ReplicationReader, postgres: Any) -> bool:
        """Worker thread: one batch of every table with rows beyond its watermark; whether
        a table has more waiting."""
        sweep = time.monotonic() - self._swept > SWEEP_SEC
        if not reader.changed() and not sweep and not self._busy:
            return False
        if sweep:
            for source in SOURCES:
                if source.latest_value:
                    self._marks[source.name] = -1  # all of it
            self._swept = time.monotonic()
        # twice the commit interval and a second: a write stamped before the last read
        # may be committed after it
        overlap = 2 * self.config.storage.commit_interval_ms + 1000
        busy = False
        for source in SOURCES:
            mark = self._marks.get(source.name, -1 if source.latest_value else 0)
            batch = reader.batch(source, mark, BATCH_ROWS, overlap)
            if batch.rows or batch.watermark != mark:
                self.rows += postgres.write(batch)
                self._marks[source.name] = batch.watermark
            busy = busy or (len(batch.rows) >= BATCH_ROWS and not source.latest_value)
        self._busy = busy
        return busy

    def _report(self, state: str, ok: bool, kind: str = "down") -> None:
        """Log once per change of state; keep the state and the watermarks in the file."""
        now = time.monotonic()
        # a state is up (and where to) or down for a kind of reason: a retry that fails
        # the same way is no news (debug)
        key = state if ok else kind
        changed = key != self._state
        if changed:
            (log.info if ok else log.warning)("central: %s", state)
            self._state = key
        elif not ok:
            log.debug("central: %s", state)
        ts = now_ms()
        for name, mark in self._marks.items():
            if self._stored.get(name) != mark:
                self.store.put(Replicated(name, mark, ts))
                self._stored[name] = mark
        if changed or now - self._status_at > STATUS_EVERY_SEC:
            self._status_at = now
            status = {"site": self.site, "ok": ok, "state": state, "at": ts, "rows": self.rows}
            self.store.put(MetaValue(STATUS_KEY, json.dumps(status)))


#: SQLSTATE classes that are a state of their own, a wrong password or a full disk;
#: anything else is "unreachable" (README "Many sites into one PostgreSQL": outages)
_KINDS = {"28": "authentication", "53": "resources"}


def _kind(exc: BaseException) -> str:
    state = getattr(exc, "sqlstate", None)
    if state is None and "authentication failed" in str(exc):
        return "authentication"  # refused before a session exists: no SQLSTATE
    return _KINDS.get((state or "")[:2], "unreachable")


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _quietly_close(postgres: Any) -> None:
    with contextlib.suppress(Exception):  # a broken connection: nothing to do about it
        postgres.close()
