"""The writer: one thread owns the write connection.

The event loop hands it typed rows through a thread-safe queue (`put` never blocks the
loop) and the thread commits them together at most every `commit_interval_ms`: one
transaction, one fsync (WAL, synchronous=FULL) per interval whatever the load. The write
transaction itself is short (rows are gathered in memory first), so another process
writing a control, or reading, waits at most one commit.

The thread cannot die from a row (README "Storage design"): a value SQLite cannot bind as
given is written in another form (`bindable`), a row that still fails is logged and
skipped, and should the thread stop anyway `health` says so and `close` does not claim
that anything was flushed.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import math
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Iterator
from pathlib import Path
from typing import Any

import trio

from appliance.domain import clock, jsontext
from appliance.domain.recent import forget_oldest
from appliance.store.disk import (
    HIGH_RATE_ACTIONS,
    PAYLOAD_STATE,
    DiskGuard,
    Level,
    describe,
    free_bytes,
    mb,
)
from appliance.store.disk import META_KEY as DISK_META_KEY
from appliance.store.migrations import NewerSchema, connect, create_private, migrate
from appliance.store.queries import ALIVE_KEY
from appliance.store.retention import Retention, prune
from appliance.store.rows import (
    CommandDone,
    DefaultStates,
    FrameRow,
    Item,
    LazyStates,
    Meta,
    MeterValueRows,
    States,
    StateWrite,
)
from appliance.store.sql import (
    ACK_COMMAND,
    APPENDED,
    CHUNK_SIZES,
    COMMAND_DONE,
    INSERT_MESSAGE,
    INSERT_METER_VALUE,
    INSERT_STATE_DEFAULT,
    MULTI_ROW,
    SET_META,
    SHED_ORDER,
    STATEMENT,
    UPSERT_OBJECT,
    UPSERT_STATE,
)
from appliance.store.start import Opened, read_start_state

log = logging.getLogger("appliance.store")


class StoreError(Exception):
    """The database cannot be used (newer schema, not a database, unwritable)."""


#: the appliance's clock in ms (`domain.clock`: the one seam for the wall clock)
now_ms = clock.wall_ms


#: rows per write transaction when a backlog is written: a few tenths of a second of
#: lock on a Pi, so that a user's control write is not kept waiting
ROWS_PER_TRANSACTION = 4_000
#: rows kept in memory while the database cannot be written (locked, disk full): hours of
#: a home installation, seconds of a load test; and at most MAX_PENDING_BYTES of them
MAX_PENDING_ROWS = 50_000
#: what those rows may weigh (`weigh`: the frames' text and a fixed cost per row), so that
#: large frames (a 500 KB DataTransfer) do not multiply the memory a Pi Zero has
MAX_PENDING_BYTES = 48 * 2**20
#: the backlog (`weigh`: the frames' text and a fixed cost per queued item) waiting to be
#: written before connections pause reading: several thousand messages, about a second
#: of the writer's work. Normal traffic never gets near it; a load test does, and then a
#: crash still loses only about one commit interval plus one commit. Past it, only the
#: connections that queued more than their share of it pause (`Store.pause`); past
#: twice it, all do
MAX_BACKLOG = 10 * 2**20
#: what a queued item weighs beyond a frame's text (a record, its tuple, the states or
#: meter rows it leads to): 30 000 items weigh about MAX_BACKLOG with their frames
ITEM_WEIGHT = 200
#: SQLite's INTEGER is 64 bits (https://sqlite.org/datatype3.html)
INT64 = range(-(2**63), 2**63)

#: what `health` says while all is well
HEALTHY = "ok"

_STOP = object()

#: a state as a commit writes it: value, ts, description, written only when it changed
_Latest = tuple[Any, int, Meta | None, bool]
#: leaves whose last written value is remembered (about 150 bytes each): a few payloads
#: of each action of a thousand charge points; one forgotten is merely written again
LEAVES_REMEMBERED = 100_000

#: a statement and its parameters, as the batch keeps them
_Pending = tuple[str, tuple[Any, ...]]
#: where a FrameRow has its action (also on results: the action answered)
_ACTION = FrameRow._fields.index("action")


class _Batch:
    """What one commit writes. Survives failed commits: states stay one per id, lazy
    producers one per key, so a long outage grows only the rows.

    The history tables that only ever grow (`messages`, `meter_values`: APPENDED) are
    kept apart from the other rows: nothing else in a commit reads them, so they are
    written table by table in arrival order, many rows per statement, while the other
    rows keep their order across tables."""

    def __init__(self) -> None:
        self.rows: list[_Pending] = []
        self.appended: dict[str, list[tuple[Any, ...]]] = {s: [] for s in APPENDED}
        self._states: dict[str, _Latest] = {}
        self._lazy: dict[Hashable, tuple[Callable[[], list[StateWrite]], int]] = {}
        self.defaults: list[tuple[Any, ...]] = []
        #: what the items absorbed weigh (`weigh`: the store's backlog counts it)
        self.weight = 0

    @property
    def empty(self) -> bool:
        return not (self.rows or self._states or self._lazy or self.appended_count)

    @property
    def appended_count(self) -> int:
        return sum(map(len, self.appended.values()))

    @property
    def sign_of_life_only(self) -> bool:
        """Whether all this commit writes is the appliance's heartbeat (README "Command
        line", is the appliance running): no data, nothing a power loss could take."""
        return (
            not (self._states or self._lazy or self.appended_count)
            and bool(self.rows)
            and all(statement == SET_META and row[0] == ALIVE_KEY for statement, row in self.rows)
        )

    @property
    def size(self) -> int:
        return len(self.rows) + len(self._states) + len(self._lazy) + self.appended_count

    def absorb(self, item: Item) -> None:
        self.weight += weigh(item)
        kind = type(item)
        statement = STATEMENT.get(kind)
        if statement is not None:
            self._add(statement, item)  # type: ignore[arg-type]
        elif kind is list:
            assert isinstance(item, list)
            for row in item:
                self._add(STATEMENT[type(row)], row)
        elif kind is MeterValueRows:
            assert isinstance(item, MeterValueRows)
            self.appended[INSERT_METER_VALUE].extend(item.rows)
        elif kind is States:
            assert isinstance(item, States)
            for state_id, value, meta, ts, changes_only in item.writes:
                self._states[state_id] = (value, ts or item.ts, meta, changes_only)
        elif kind is LazyStates:
            assert isinstance(item, LazyStates)
            self._lazy.pop(item.key, None)  # keep arrival order: the latest goes last
            self._lazy[item.key] = (item.produce, item.ts)
        elif kind is CommandDone:
            assert isinstance(item, CommandDone)
            self.rows.append((ACK_COMMAND, tuple(item)))
            self.rows.append((COMMAND_DONE, (item.seq,)))
        elif kind is DefaultStates:
            assert isinstance(item, DefaultStates)
            for state_id, value, meta, *_ in item.writes:
                self.rows.append((INSERT_STATE_DEFAULT, (state_id, encode(value), item.ts)))
                self.defaults.append((state_id, *(meta or infer_meta(value))))
        else:
            raise TypeError(f"the store cannot write a {kind.__name__}")

    def _add(self, statement: str, row: tuple[Any, ...]) -> None:
        appended = self.appended.get(statement)
        if appended is not None:
            appended.append(row)
        else:
            self.rows.append((statement, row))

    def states(self) -> Iterator[tuple[str, Any, int, Meta | None, bool]]:
        """Each state to write once, as (id, value, ts, description, changes only): lazy
        producers one at a time in arrival order, then the explicit writes, which win over
        a producer's value of the same id. Streamed: a commit of a hundred charge points'
        payloads never holds all their flattened leaves at once (issue 21). A producer
        that fails costs only its own states (logged), never the batch."""
        for key, (produce, ts) in self._lazy.items():
            yield from self._produced(key, produce, ts)
        for state_id, (value, ts, meta, changes_only) in self._states.items():
            yield state_id, value, ts, meta, changes_only

    def _produced(
        self, key: Hashable, produce: Callable[[], list[StateWrite]], ts: int
    ) -> Iterator[tuple[str, Any, int, Meta | None, bool]]:
        # a generator of its own: its list is let go before the next producer runs
        try:
            produced = produce()
        except Exception:
            log.exception("database: the states of %.100r could not be computed", key)
            return
        explicit = self._states
        for state_id, value, meta, own, changes_only in produced:
            if state_id not in explicit:
                yield state_id, value, own or ts, meta, changes_only

    def drop_frames(self, actions: frozenset[str]) -> int:
        """The disk guard: forget the frames of `actions` gathered so far; how many."""
        frames = self.appended[INSERT_MESSAGE]
        kept = [row for row in frames if row[_ACTION] not in actions]
        dropped = len(frames) - len(kept)
        if dropped:
            frames[:] = kept
        return dropped

    def shed(self, limit: int, limit_weight: int) -> str:
        """Drop the oldest frame copies, then meter values, until at most `limit` rows
        weighing at most `limit_weight` (`weigh`) remain."""
        excess = self.size - len(self._states) - len(self._lazy) - limit
        excess_weight = (
            sum(weigh(row) for rows in self.appended.values() for row in rows)
            + ITEM_WEIGHT * len(self.rows)
            - limit_weight
        )
        dropped = []
        for kind, what in SHED_ORDER:
            rows = self.appended[STATEMENT[kind]]
            count = 0
            while count < len(rows) and (excess > 0 or excess_weight > 0):
                excess -= 1
                excess_weight -= weigh(rows[count])
                count += 1
            if count:
                del rows[:count]
                dropped.append(f"{count} {what}")
        return ", ".join(dropped)


class Store:
    def __init__(
        self,
        path: Path,
        commit_interval_ms: int = 1000,
        retention: Retention | None = None,
        min_free_disk_mb: int = 0,
    ) -> None:
        self.path = path
        #: README "Storage design": what is not stored while the disk is nearly full
        self.disk = DiskGuard(path.absolute().parent, min_free_disk_mb)
        self.commit_interval = commit_interval_ms / 1000
        self.retention = retention or Retention()
        self._next_prune = time.monotonic() + PRUNE_EVERY_SEC
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._failing: str | None = None
        #: why the writer thread stopped, if it ever does (it should not)
        self._stopped: str | None = None
        #: what `objects` already says, by id (writer thread only)
        self._described: dict[str, tuple[Any, ...]] = {}
        #: each description once: 100 charge points share a few hundred (writer thread only)
        self._metas: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        #: the value last written of each `changes_only` state (writer thread only)
        self._leaves: dict[str, tuple[type, Any]] = {}
        self._stopping = threading.Event()
        self._shedding = False
        #: what has been queued and what of it written (`weigh`), in queue order
        self._queued = 0  # event-loop thread only
        self._committed = 0  # writer thread only
        #: the connections paused by backpressure wait for the writer's next progress
        self._progress: trio.Event | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self.commits = 0
        #: rows the writer could not write in any form and skipped (logged each)
        self.skipped = 0
        self._slow_path_logged = -math.inf
        #: states the disk guard held back from the commit being made
        self._held_back = 0

    # ------------------------------------------------------------------ life cycle

    def open(self) -> Opened:
        """Create or migrate the database and start the writer thread. Blocking: call it
        before serving (or from a worker thread)."""
        create_private(self.path)
        try:
            connection = connect(self.path)
            migrate(connection, self.path)
            opened = read_start_state(connection)
        except NewerSchema as exc:
            raise StoreError(str(exc)) from None
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: {exc}") from None
        self._thread = threading.Thread(
            target=self._run, args=(connection,), name="sqlite-writer", daemon=True
        )
        self._thread.start()
        return opened

    def close(self) -> bool:
        """Write everything still queued, commit, and stop the writer. Blocking. True if
        everything queued is in the database."""
        if self._thread is None:
            return self._stopped is None
        self._stopping.set()
        self._queue.put(_STOP)
        self._thread.join()
        self._thread = None
        return self._stopped is None and self._failing is None

    @property
    def health(self) -> str:
        """`ok`; `failing: <why>` while the database cannot be written (rows are kept
        and retried); `stopped: <why>` if the writer thread ended (nothing is written)."""
        if self._stopped is not None:
            return f"stopped: {self._stopped}"
        if self._failing is not None:
            return f"failing: {self._failing}"
        return HEALTHY

    # -------------------------------------------------------------------- writing

    def put(self, item: Item) -> None:
        """Queue a typed record (see `rows`); never blocks. Committed within one commit
        interval."""
        self._queued += weigh(item)  # event-loop thread only
        self._queue.put(item)

    def set_states(self, writes: list[StateWrite], ts: int | None = None) -> None:
        self.put(States(writes, ts or now_ms()))

    def create_states(self, writes: list[StateWrite], ts: int | None = None) -> None:
        self.put(DefaultStates(writes, ts or now_ms()))

    def set_states_lazily(
        self, key: Hashable, produce: Callable[[], list[StateWrite]], ts: int | None = None
    ) -> None:
        self.put(LazyStates(key, produce, ts or now_ms()))

    @property
    def overloaded(self) -> bool:
        """The writer falls behind: more than MAX_BACKLOG waits to be written. Not while
        the database cannot be written at all: then the charge points are answered on
        and the buffer is bounded instead (see `_bound`)."""
        return self._failing is None and self._queued - self._committed > MAX_BACKLOG

    @property
    def position(self) -> int:
        """How much has been queued so far (`weigh`); what was queued before a position
        is written once `written` reaches it."""
        return self._queued

    @property
    def written(self) -> int:
        return self._committed

    def share(self) -> Share:
        """A connection's account of what it queued (for `pause`)."""
        return Share(self)

    def pause(self, share: Share, connections: int) -> bool:
        """Backpressure (README "Bad peers"): should the connection of `share` stop
        reading for now? Only while `overloaded`, and then only one that has more than
        its share (among `connections`) of the backlog unwritten: a charge point that
        sends faster than the writer takes waits, the others read on. Past twice
        MAX_BACKLOG (the backlog is not the connections'), every one waits."""
        if not self.overloaded:
            return False
        if self._queued - self._committed > 2 * MAX_BACKLOG:
            return True
        return share.unwritten() * max(connections, 1) > MAX_BACKLOG

    async def progress(self) -> None:
        """Wait until the writer has written more (a commit, or history written ahead).
        The writer thread wakes the waiters; nobody polls."""
        if self._progress is None:
            self._token = trio.lowlevel.current_trio_token()
            self._progress = trio.Event()
        await self._progress.wait()

    async def committed(self) -> None:
        """Wait until what was queued before this call is in the database: two commits
        on (the one being made may have gathered its rows before). A database that cannot
        be written keeps the caller waiting: it bounds the wait."""
        until = self.commits + 2
        while self.commits < until:
            await self.progress()

    def _wake(self) -> None:
        """Writer thread: after a commit, let the paused connections look again."""
        progress, token = self._progress, self._token
        if progress is not None and token is not None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(self._release, progress)

    def _release(self, progress: trio.Event) -> None:
        if self._progress is progress:
            self._progress = None
        progress.set()

    # -------------------------------------------------------------- writer thread

    def _run(self, connection: sqlite3.Connection) -> None:
        try:
            self._loop(connection)
        except BaseException as exc:
            # Should never happen (every row error is handled in `_write`): say so
            # loudly, once, and let `health` and `close` tell the truth.
            self._stopped = f"{type(exc).__name__}: {exc}"
            log.critical(
                "database: the writer stopped (%s); NOTHING more is written",
                self._stopped,
                exc_info=True,
            )
            raise
        finally:
            with contextlib.suppress(sqlite3.Error):
                connection.close()

    def _loop(self, connection: sqlite3.Connection) -> None:
        batch = _Batch()
        stopping = False
        deadline = time.monotonic()
        while not stopping:
            if batch.empty:
                first = self._queue.get()
                if first is _STOP:
                    break
                _take(batch, first)
                deadline = time.monotonic() + self.commit_interval
            # Group commit: gather until the deadline, then write in one transaction; a
            # shutdown cuts the wait short (README "Set-up": exit within 5 s). Meanwhile
            # the items are taken as they come and a large history is written ahead
            # (`_flush`): the writer's work is spread over the interval instead of
            # arriving all at once, which would halve what the event loop gets of a
            # shared core for a moment every interval.
            flushing = self._failing is None
            while not stopping:
                left = deadline - time.monotonic()
                if left <= 0 or self._stopping.wait(min(left, GATHER_SLICE_SEC)):
                    break
                stopping = self._drain(batch)
                if flushing and batch.appended_count >= FLUSH_ROWS:
                    flushing = self._flush(connection, batch)
            stopping = self._drain(batch) or stopping
            deadline = time.monotonic() + self.commit_interval
            if self._write(connection, batch):
                batch = _Batch()
                self._wake()
                if time.monotonic() >= self._next_prune and not stopping:
                    self._next_prune = time.monotonic() + PRUNE_EVERY_SEC
                    self.prune(connection)
            else:
                self._bound(batch)
                if stopping:
                    # One last chance: another process may hold the lock briefly.
                    time.sleep(min(self.commit_interval, 1.0))
                    if not self._write(connection, batch):
                        log.error("database: %d rows could not be written at exit", batch.size)
        try:
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            log.warning("database: checkpoint at exit failed: %s", exc)

    def _drain(self, batch: _Batch) -> bool:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return False
            if item is _STOP:
                return True
            _take(batch, item)

    def _bound(self, batch: _Batch) -> None:
        """While the database cannot be written, memory stays bounded: past MAX_PENDING
        rows the oldest copies of frames go first, then the oldest meter values; states
        (one per id), sessions and the rest are always kept."""
        dropped = batch.shed(MAX_PENDING_ROWS, MAX_PENDING_BYTES)
        if dropped and not self._shedding:
            self._shedding = True
            log.error(
                "database: unwritable for too long; dropping the oldest buffered rows"
                " (%s) to stay within %d rows and %d MB of memory",
                dropped,
                MAX_PENDING_ROWS,
                MAX_PENDING_BYTES >> 20,
            )

    def _guard(self, batch: _Batch, force: bool = False) -> None:
        """The disk guard (README "Storage design"): read the free space (at once while
        commits fail: a full disk), say a change once in the log and in `meta`, and
        forget the frames the guard holds back."""
        guard = self.disk
        before = guard.level
        level = guard.check(force=force or self._failing is not None)
        if level is not None:
            batch.rows.append((SET_META, (DISK_META_KEY, guard.meta_value())))
            if level != before:
                self._log_guard(before, level)
        if guard.level >= Level.FRAMES:
            guard.frames_dropped += batch.drop_frames(HIGH_RATE_ACTIONS)

    def _log_guard(self, before: Level, level: Level) -> None:
        guard = self.disk
        if level > before:
            log.warning(
                "database: disk guard %s; transactions, meter values, the other states and"
                " controls are stored; it lifts by itself at %d MB free",
                describe(level, guard.free, guard.floor_mb, guard.folder),
                guard.lifts_at_mb,
            )
        elif level is Level.OFF:
            log.warning(
                "database: disk guard off: %s MB free in %s, storing everything again (not"
                " stored while it was on: %d frames, %d payload states)",
                mb(guard.free),
                guard.folder,
                guard.frames_dropped,
                guard.states_dropped,
            )
        else:
            log.warning(
                "database: disk guard eased: %s MB free in %s; payload states are stored"
                " again, the frames of %s still not",
                mb(guard.free),
                guard.folder,
                ", ".join(sorted(HIGH_RATE_ACTIONS)),
            )

    def _write(self, connection: sqlite3.Connection, batch: _Batch) -> bool:
        self._guard(batch)
        self._held_back = 0
        touched: list[str] = []
        try:
            try:
                self._commit(connection, batch, touched)
            except sqlite3.OperationalError:
                raise
            except Exception as exc:
                # A value SQLite cannot bind as given (an integer beyond 64 bits, a lone
                # surrogate): write everything in a form it can take, row by row. Said
                # once per SLOW_PATH_LOG_SEC: a peer sending such values every second
                # must not fill the log.
                now = time.monotonic()
                if now >= self._slow_path_logged + SLOW_PATH_LOG_SEC:
                    self._slow_path_logged = now
                    log.warning(
                        "database: %s; writing such batches value by value (logged once"
                        " per %d min)",
                        exc,
                        SLOW_PATH_LOG_SEC // 60,
                    )
                self._forget(touched)
                self._commit_each(connection, batch, touched)
        except sqlite3.OperationalError as exc:
            # Locked by another process, disk full: keep everything, retry next interval.
            self._forget(touched)
            if self._failing is None:
                detail, outlook = self._full(exc)
                log.error(
                    "database: cannot write (%s%s); answering charge points on, keeping"
                    " %d rows in memory and retrying every %g s%s",
                    exc,
                    detail,
                    batch.size,
                    self.commit_interval,
                    outlook,
                )
                if outlook:  # a full disk: the guard holds back what it can at once
                    self._guard(batch, force=True)
            self._failing = str(exc)
            return False
        self.disk.states_dropped += self._held_back
        # the oldest first: rewritten next time
        self._leaves = forget_oldest(self._leaves, LEAVES_REMEMBERED)
        self._committed += batch.weight
        if self._failing is not None:
            log.warning(
                "database: writing again (%s cleared), %d rows caught up", self._failing, batch.size
            )
            self._failing = None
            self._shedding = False
        self.commits += 1
        return True

    def _state_rows(self, batch: _Batch, touched: list[str]) -> Iterator[_Pending]:
        """The batch's states as UPSERT_STATE rows, with an UPSERT_OBJECT row where
        `objects` does not describe one so yet; streamed (issue 21: the first commit after
        100 charge points connect has 5 000 of one and 7 600 of the other). What they write
        is remembered as they are made, their ids in `touched`: a commit that fails
        forgets them (`_forget`)."""
        leaves, described, metas = self._leaves, self._described, self._metas
        holding = self.disk.level >= Level.LEAVES
        for i, value, ts, meta, changes_only in batch.states():
            if holding and PAYLOAD_STATE.search(i):
                self._held_back += 1
                continue
            description = tuple(meta or infer_meta(value))
            if described.get(i) != description:
                described[i] = metas.setdefault(description, description)
                touched.append(i)
                yield UPSERT_OBJECT, (i, *description)
            encoded = encode(value)
            if changes_only:
                # typed: 1, 1.0 and True are different values of a leaf
                seen = (type(encoded), encoded)
                if leaves.get(i) == seen:
                    continue
                leaves[i] = seen
                touched.append(i)
            yield UPSERT_STATE, (i, encoded, ts, ts)
        for state_id, *fields in batch.defaults:
            description = tuple(fields)
            if described.get(state_id) != description:
                described[state_id] = metas.setdefault(description, description)
                touched.append(state_id)
                yield UPSERT_OBJECT, (state_id, *description)

    def _forget(self, touched: list[str]) -> None:
        """A commit failed: what its states were remembered to have written is not known
        to be written. Forgotten, they are written again by the next commit."""
        for state_id in touched:
            self._leaves.pop(state_id, None)
            self._described.pop(state_id, None)
        touched.clear()
        self._held_back = 0

    def _full(self, exc: sqlite3.OperationalError) -> tuple[str, str]:
        """What the log adds when the disk is full: how full, and what becomes of the rows."""
        if getattr(exc, "sqlite_errorcode", None) != sqlite3.SQLITE_FULL:
            return "", ""
        return (
            f": {mb(free_bytes(self.disk.folder))} MB free in {self.disk.folder}",
            f"; they are written once there is space again (nothing is lost up to"
            f" {MAX_PENDING_ROWS} rows or {MAX_PENDING_BYTES >> 20} MB; beyond, the oldest"
            f" frame copies go first)",
        )

    def _flush(self, connection: sqlite3.Connection, batch: _Batch) -> bool:
        """Write the gathered history ahead of the commit, without an fsync of its own:
        the commit at the end of the interval (synchronous = FULL) makes it durable
        with everything else, so at most one interval is lost, as before (README
        "Storage design"). A failure leaves the rows in the batch for the commit (and
        False: no more flushes this interval)."""
        if self.disk.level >= Level.FRAMES:
            self.disk.frames_dropped += batch.drop_frames(HIGH_RATE_ACTIONS)
        try:
            with unsynced(connection), connection:
                for statement, appended in batch.appended.items():
                    insert_many(connection, statement, appended)
        except sqlite3.Error:
            return False  # the commit retries them, and says why if it fails too
        except Exception:
            return False  # a value SQLite cannot bind as given: the commit's slow path
        for appended in batch.appended.values():
            appended.clear()
        # what these items held is on disk now (the states they carry are one per id):
        # the connections paused by backpressure read on, also with a long interval
        self._committed += batch.weight
        batch.weight = 0
        self._wake()
        return True

    def _commit(self, connection: sqlite3.Connection, batch: _Batch, touched: list[str]) -> None:
        # history first, in transactions of at most ROWS_PER_TRANSACTION rows: another
        # writer (a user's control) never waits long behind a backlog
        for statement, appended in batch.appended.items():
            while len(appended) > ROWS_PER_TRANSACTION:
                with connection:
                    insert_many(connection, statement, appended[:ROWS_PER_TRANSACTION])
                del appended[:ROWS_PER_TRANSACTION]
        rows = batch.rows
        while len(rows) > ROWS_PER_TRANSACTION:
            with connection:
                for statement, group in _runs(rows[:ROWS_PER_TRANSACTION]):
                    insert_many(connection, statement, group)
            rows = batch.rows = rows[ROWS_PER_TRANSACTION:]
        # Nothing but the heartbeat: committed without an fsync (the next commit of data
        # or a checkpoint makes it durable). Idle, this was the only fsync, every 2 s; and
        # a WAL frame is 4 120 bytes, so each synced beat wrote two 4 KB file pages where
        # the kernel now writes the beats of half a minute in one go.
        sync = unsynced(connection) if batch.sign_of_life_only else contextlib.nullcontext()
        with sync, connection:  # one transaction: commit, or roll back on error
            for statement, appended in batch.appended.items():
                insert_many(connection, statement, appended)
            for statement, group in _runs(rows):
                insert_many(connection, statement, group)
            insert_streamed(connection, self._state_rows(batch, touched))

    def _commit_each(
        self, connection: sqlite3.Connection, batch: _Batch, touched: list[str]
    ) -> None:
        """The slow path: one statement per row, each value made bindable; a row that
        still fails is logged and skipped, never the batch."""
        every = itertools.chain(
            ((statement, row) for statement, rows in batch.appended.items() for row in rows),
            batch.rows,
            self._state_rows(batch, touched),
        )
        with connection:
            for statement, params in every:
                try:
                    connection.execute(statement, [bindable(value) for value in params])
                except sqlite3.OperationalError:
                    raise
                except Exception as exc:
                    self.skipped += 1
                    log.error("database: row skipped (%s): %.300r", exc, params)
        batch.rows = []
        batch.appended = {s: [] for s in APPENDED}

    def prune(self, connection: sqlite3.Connection) -> int:
        return prune(connection, self.retention)


#: while gathering a commit, the writer takes what has been queued this often
GATHER_SLICE_SEC = 0.05
#: history rows gathered that are written ahead of the commit (`_flush`): only a busy
#: appliance has as many within one interval; a home installation never does. Each flush
#: writes every page it touched to the WAL, a leaf of each per-identity index for most
#: charge points: at 1 000 rows a busy site flushed every slice (issue 21: 4 000 cost
#: ~9 % less CPU a call and 14 % fewer bytes written at 100 charge points back to back)
FLUSH_ROWS = 4000
#: how often the slow path of `_write` may say so in the log
SLOW_PATH_LOG_SEC = 600
#: how often retention runs (README "Storage design")
PRUNE_EVERY_SEC = 60


class Share:
    """What one connection queued that is not written yet (backpressure: `Store.pause`).
    `queued(start)` after the connection's synchronous work adds what the store's
    position advanced by since `start`."""

    __slots__ = ("_marks", "_store", "_unwritten")

    def __init__(self, store: Store) -> None:
        self._store = store
        #: (the store's position after it, its weight), oldest first
        self._marks: collections.deque[tuple[int, int]] = collections.deque()
        self._unwritten = 0

    def queued(self, start: int) -> None:
        end = self._store.position
        if end > start:
            self._marks.append((end, end - start))
            self._unwritten += end - start
            self._settle()  # else the marks of a connection never paused pile up

    def unwritten(self) -> int:
        self._settle()
        return self._unwritten

    def __len__(self) -> int:
        """How many marks are kept: those not known to be written yet."""
        return len(self._marks)

    def _settle(self) -> None:
        """Forget the marks the writer has written past."""
        written, marks = self._store.written, self._marks
        while marks and marks[0][0] <= written:
            self._unwritten -= marks.popleft()[1]


def weigh(item: Any) -> int:
    """What a queued item or a pending row weighs for the backlog's and the buffer's
    bounds: its frame's text (the bulk of a large frame, and of the states flattened
    from it) and a fixed cost per row."""
    kind = type(item)
    if kind is FrameRow:
        return ITEM_WEIGHT + len(item.payload)
    if kind is MeterValueRows:
        return ITEM_WEIGHT * len(item.rows)
    return ITEM_WEIGHT


def _take(batch: _Batch, item: Item) -> None:
    try:
        batch.absorb(item)
    except Exception:  # a caller's bug: the rest of the batch goes on
        log.exception("database: a queued item could not be taken: %.200r", item)


def insert_many(
    connection: sqlite3.Connection, statement: str, rows: list[tuple[Any, ...]]
) -> None:
    """`executemany`, with MULTI_ROW rows per statement where the statement allows it: one
    SQLite step per chunk instead of one per row (and one release of the GIL, which the
    event loop holds most of the time under load, instead of one per row). Chunks of
    fixed sizes, so the statement cache holds each shape."""
    shape = MULTI_ROW.get(statement)
    if shape is None or len(rows) < 2:
        if rows:
            connection.executemany(statement, rows)
        return
    head, values, tail = shape
    start = 0
    for size in CHUNK_SIZES:
        count = (len(rows) - start) // size
        if count:
            sql = head + ",".join([values] * size) + tail
            for _ in range(count):
                chunk = rows[start : start + size]
                connection.execute(sql, list(itertools.chain.from_iterable(chunk)))
                start += size


#: rows of a statement gathered before `insert_streamed` writes them: four of the
#: largest chunk
STREAMED_ROWS = 4 * CHUNK_SIZES[0]


def insert_streamed(connection: sqlite3.Connection, pending: Iterable[_Pending]) -> None:
    """`insert_many` for rows made as they are written, STREAMED_ROWS at a time per
    statement. Rows of different statements are not kept in order: for statements whose
    order does not matter (`states` and `objects`, each row about its own id)."""
    gathered: dict[str, list[tuple[Any, ...]]] = {}
    for statement, params in pending:
        rows = gathered.get(statement)
        if rows is None:
            rows = gathered[statement] = []
        rows.append(params)
        if len(rows) >= STREAMED_ROWS:
            insert_many(connection, statement, rows)
            rows.clear()
    for statement, rows in gathered.items():
        insert_many(connection, statement, rows)


def _runs(rows: Iterable[_Pending]) -> Iterable[tuple[str, list[tuple[Any, ...]]]]:
    """Consecutive rows of the same statement, so each run is one executemany and the
    order between statements is kept."""
    statement: str | None = None
    group: list[tuple[Any, ...]] = []
    for row_statement, params in rows:
        if row_statement is not statement:
            if group and statement is not None:
                yield statement, group
            statement, group = row_statement, []
        group.append(params)
    if group and statement is not None:
        yield statement, group


def encode(value: Any) -> Any:
    """A Python value as the `val` column holds it: booleans 0/1, JSON as text."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (dict, list)):
        return jsontext.dumps(value)
    return value


def bindable(value: Any) -> Any:
    """`value` in a form SQLite takes, losing nothing: an integer beyond 64 bits as its
    decimal text, a string with a lone surrogate (JSON allows `\\ud800`, UTF-8 does not)
    with that surrogate as its JSON escape, anything else as its JSON or str text.
    (README "Storage design": in `states.val` and TEXT columns the text stays as written; a
    column of INTEGER or REAL affinity keeps SQLite's nearest REAL.)"""
    kind = type(value)
    if kind is int:
        return value if value in INT64 else str(value)
    if kind is float:
        return value if math.isfinite(value) else str(value)
    if kind is str:
        try:
            value.encode()
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode()
        return value
    if value is None or kind is bytes:
        return value
    if kind is bool:
        return int(value)
    try:
        return bindable(jsontext.dumps(value, ensure_ascii=True))
    except (ValueError, TypeError):
        return str(value)


@contextlib.contextmanager
def unsynced(connection: sqlite3.Connection) -> Iterator[None]:
    """Commits within are not fsynced (WAL, synchronous = NORMAL: never corrupt, and the
    next commit with synchronous = FULL makes them durable too)."""
    connection.execute("PRAGMA synchronous = NORMAL")
    try:
        yield
    finally:
        connection.execute("PRAGMA synchronous = FULL")


def infer_meta(value: Any) -> Meta:
    if isinstance(value, bool):
        kind = "boolean"
    elif isinstance(value, (int, float)):
        kind = "number"
    elif isinstance(value, (dict, list)):
        kind = "json"
    else:
        kind = "string"
    return Meta(kind, "state", None, False, "")
