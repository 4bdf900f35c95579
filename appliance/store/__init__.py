"""The only code that touches SQLite.

One writer thread owns the write connection. The event loop hands it rows through a
thread-safe queue (`put` never blocks the loop) and the thread commits them together at
most every `commit_interval_ms`: one transaction, one fsync (WAL, synchronous=FULL) per
interval whatever the load. The write transaction itself is short (rows are gathered in
memory first), so another process writing a control, or reading, waits at most one
commit.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.store.schema import MIGRATIONS, SCHEMA_VERSION

log = logging.getLogger("appliance.store")

#: SQLite waits this long for another process's lock before the batch is retried later
BUSY_TIMEOUT_MS = 5000


class StoreError(Exception):
    """The database cannot be used (newer schema, not a database, unwritable)."""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# Statements the writer runs; the queue carries (statement, parameters).
INSERT_MESSAGE = (
    "INSERT INTO messages (ts, identity, protocol, direction, message_type, message_id,"
    " action, payload, violation) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
INSERT_CONNECTION = (
    "INSERT INTO connection_log (ts, identity, remote_addr, protocol, event, reason)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)
# One statement for every session event, 1.6 or 2.x: fields already known are kept, so
# late, repeated or out-of-order events converge on the same row (energy = stop − start).
TRANSACTION_EVENT = (
    "INSERT INTO transactions (identity, transaction_id, evse_id, connector_id, id_token,"
    " started_at, stopped_at, meter_start_wh, meter_stop_wh, energy_wh, stop_reason,"
    " received_at, time_suspect, seq_no, offline, updated_at)"
    " VALUES (:identity, :transaction_id, :evse_id, :connector_id, :id_token, :started_at,"
    " :stopped_at, :meter_start_wh, :meter_stop_wh, :meter_stop_wh - :meter_start_wh,"
    " :stop_reason, :received_at, :time_suspect, :seq_no, :offline, :received_at)"
    " ON CONFLICT (identity, transaction_id) WHERE transaction_id <> '-1' DO UPDATE SET"
    " evse_id = coalesce(evse_id, excluded.evse_id),"
    " connector_id = coalesce(connector_id, excluded.connector_id),"
    " id_token = coalesce(id_token, excluded.id_token),"
    " started_at = coalesce(started_at, excluded.started_at),"
    " stopped_at = coalesce(stopped_at, excluded.stopped_at),"
    " meter_start_wh = coalesce(meter_start_wh, excluded.meter_start_wh),"
    " meter_stop_wh = coalesce(meter_stop_wh, excluded.meter_stop_wh),"
    " energy_wh = coalesce(meter_stop_wh, excluded.meter_stop_wh)"
    "   - coalesce(meter_start_wh, excluded.meter_start_wh),"
    " stop_reason = coalesce(stop_reason, excluded.stop_reason),"
    " time_suspect = time_suspect OR excluded.time_suspect,"
    " seq_no = max(coalesce(seq_no, excluded.seq_no), coalesce(excluded.seq_no, seq_no)),"
    " offline = offline OR excluded.offline,"
    " updated_at = excluded.updated_at"
)
INSERT_METER_VALUE = (
    "INSERT INTO meter_values (identity, evse_id, connector_id, transaction_id, sampled_at,"
    " measurand, phase, location, context, unit, value, received_at, time_suspect)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
INSERT_CHARGE_POINT = (
    "INSERT INTO charge_points (identity, prefix, first_seen) VALUES (?, ?, ?)"
    " ON CONFLICT (identity) DO NOTHING"
)
# ack = 1: the appliance confirms what it writes; lc moves only when the value changes
UPSERT_STATE = (
    "INSERT INTO states (id, val, ack, ts, lc) VALUES (?1, ?2, 1, ?3, ?3)"
    " ON CONFLICT (id) DO UPDATE SET val = excluded.val, ack = 1, ts = excluded.ts,"
    " lc = CASE WHEN val IS excluded.val THEN lc ELSE excluded.ts END"
)
INSERT_STATE_DEFAULT = (
    "INSERT INTO states (id, val, ack, ts, lc) VALUES (?1, ?2, 1, ?3, ?3)"
    " ON CONFLICT (id) DO NOTHING"
)
UPSERT_OBJECT = (
    "INSERT INTO objects (id, type, role, unit, writable, name) VALUES (?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (id) DO UPDATE SET type = excluded.type, role = excluded.role,"
    " unit = excluded.unit, writable = excluded.writable, name = excluded.name"
)
SET_META = "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)"
# Controls (SPEC §6). A command is acknowledged only if no newer command for the same id
# is queued: that one runs next, and its row must stay at ack = 0 until it has.
ACK_COMMAND = (
    "UPDATE states SET ack = 1, val = ?2, ts = ?3,"
    " lc = CASE WHEN val IS ?2 THEN lc ELSE ?3 END"
    " WHERE id = ?1 AND ack = 0"
    " AND NOT EXISTS (SELECT 1 FROM control_queue WHERE id = ?1 AND seq > ?4)"
)
COMMAND_DONE = "DELETE FROM control_queue WHERE seq = ?"

_STOP = object()
_STATES = object()
_LAZY = object()
_MANY = object()
_DEFAULTS = object()

#: describes a state in `objects`: (type, role, unit, writable, name)
Meta = tuple[str, str, str | None, bool, str]
#: one state write: id, value, and its description (None: inferred from the value)
StateWrite = tuple[str, Any, Meta | None]


@dataclass(frozen=True, slots=True)
class Opened:
    """What the appliance reads once at start, before serving."""

    #: 1.6 transaction ids above this and up to `transaction_id_reserved` are free
    transaction_id_floor: int
    transaction_id_reserved: int
    recent_starts: dict[tuple[Any, ...], int]
    #: sessions still running and recently stopped, oldest first: (identity, transaction id,
    #: evse, connector, start register, stop register, stopped)
    sessions: list[tuple[str, str, int | None, int | None, float | None, float | None, bool]]


@dataclass(frozen=True, slots=True)
class Retention:
    """How long history rows are kept, in days (SPEC §4 [storage])."""

    messages_days: float = 30
    meter_values_days: float = 365


#: rows deleted per short transaction when pruning: a reader or a control writer waits at
#: most for one such batch, a few milliseconds on an SD card
PRUNE_BATCH = 500
#: batches per pass; the rest waits for the next pass, so commits keep flowing
PRUNE_BATCHES_PER_PASS = 20
PRUNE_EVERY_SEC = 60
#: (table, time column) pruned by age; both grow in seq order, which is time order
_PRUNED = (
    ("messages", "ts", "messages_days"),
    ("meter_values", "received_at", "meter_values_days"),
)


#: rows per write transaction when a backlog is written: a few tenths of a second of
#: lock on a Pi, so that a user's control write is not kept waiting
ROWS_PER_TRANSACTION = 4_000
#: rows kept in memory while the database cannot be written (locked, disk full): about
#: 50 MB of frames, hours of a home installation, seconds of a load test
MAX_PENDING_ROWS = 50_000
#: queue items (five to seven per message) waiting for a commit before the connections
#: pause reading: several thousand messages, about a second of the writer's work. Normal
#: traffic never gets near it; a load test does, and then a crash still loses only about
#: one commit interval plus one commit
MAX_BACKLOG = 30_000


class _Batch:
    """What one commit writes. Survives failed commits: states stay one per id, lazy
    producers one per key, so a long outage grows only the rows."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, Any]] = []
        self._states: dict[str, tuple[Any, int, Meta | None]] = {}
        self._lazy: dict[Hashable, tuple[Callable[[], list[StateWrite]], int]] = {}
        self.defaults: list[tuple[Any, ...]] = []
        #: queue items absorbed (the store's backlog counts them)
        self.items = 0

    @property
    def empty(self) -> bool:
        return not (self.rows or self._states or self._lazy)

    @property
    def size(self) -> int:
        return len(self.rows) + len(self._states) + len(self._lazy)

    def absorb(self, item: Any) -> None:
        self.items += 1
        tag = item[0]
        if tag is _STATES:
            for state_id, value, meta in item[1]:
                self._states[state_id] = (value, item[2], meta)
        elif tag is _LAZY:
            self._lazy.pop(item[1], None)  # keep arrival order: the latest goes last
            self._lazy[item[1]] = (item[2], item[3])
        elif tag is _MANY:
            self.rows.extend((item[1], params) for params in item[2])
        elif tag is _DEFAULTS:
            for state_id, value, meta in item[1]:
                self.rows.append((INSERT_STATE_DEFAULT, (state_id, _encode(value), item[2])))
                self.defaults.append((state_id, *(meta or _infer_meta(value))))
        else:
            self.rows.append(item)

    def states(self) -> dict[str, tuple[Any, int, Meta | None]]:
        """The latest value per id: lazy producers in arrival order, explicit writes on top."""
        latest: dict[str, tuple[Any, int, Meta | None]] = {}
        for produce, ts in self._lazy.values():
            for state_id, value, meta in produce():
                latest[state_id] = (value, ts, meta)
        latest.update(self._states)
        return latest

    def shed(self, limit: int) -> str:
        """Drop the oldest frame copies, then meter values, until `limit` rows remain."""
        excess = len(self.rows) - limit
        dropped = []
        for statement, what in (
            (INSERT_MESSAGE, "frame copies"),
            (INSERT_METER_VALUE, "meter values"),
        ):
            if excess <= 0:
                break
            kept, count = [], 0
            for row in self.rows:
                if count < excess and row[0] is statement:
                    count += 1
                else:
                    kept.append(row)
            if count:
                self.rows = kept
                excess -= count
                dropped.append(f"{count} {what}")
        return ", ".join(dropped)


class Store:
    def __init__(
        self, path: Path, commit_interval_ms: int = 1000, retention: Retention | None = None
    ) -> None:
        self.path = path
        self.commit_interval = commit_interval_ms / 1000
        self.retention = retention or Retention()
        self._next_prune = time.monotonic() + PRUNE_EVERY_SEC
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._failing: str | None = None
        #: what `objects` already says, by id (writer thread only)
        self._described: dict[str, Meta] = {}
        self._stopping = threading.Event()
        self._shedding = False
        self._queued = 0
        self._committed = 0  # writer thread only
        self.commits = 0

    # ------------------------------------------------------------------ life cycle

    def open(self) -> Opened:
        """Create or migrate the database and start the writer thread. Blocking: call it
        before serving (or from a worker thread)."""
        _create_private(self.path)
        try:
            connection = connect(self.path)
            migrate(connection, self.path)
            opened = self._read_start_state(connection)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: {exc}") from None
        self._thread = threading.Thread(
            target=self._run, args=(connection,), name="sqlite-writer", daemon=True
        )
        self._thread.start()
        return opened

    def close(self) -> None:
        """Write everything still queued, commit, and stop the writer. Blocking."""
        if self._thread is None:
            return
        self._stopping.set()
        self._queue.put(_STOP)
        self._thread.join()
        self._thread = None

    # -------------------------------------------------------------------- writing

    def _enqueue(self, item: Any) -> None:
        self._queued += 1  # event-loop thread only
        self._queue.put(item)

    @property
    def overloaded(self) -> bool:
        """The writer falls behind: more than MAX_BACKLOG items wait for a commit. The
        connections then pause reading, so the loss window on a crash stays one commit
        interval. Not while the database cannot be written at all: then the charge points
        are answered on and the buffer is bounded instead (see `_bound`)."""
        return self._failing is None and self._queued - self._committed > MAX_BACKLOG

    def put(self, statement: str, params: tuple[Any, ...] | dict[str, Any]) -> None:
        """Queue one row; never blocks. Committed within one commit interval."""
        self._enqueue((statement, params))

    def create_states(self, writes: list[StateWrite], ts: int | None = None) -> None:
        """Queue states that are created if missing and never overwritten (a control's
        default must not undo what a user wrote)."""
        self._enqueue((_DEFAULTS, writes, ts or now_ms()))

    def put_many(self, statement: str, rows: list[Any]) -> None:
        """Queue several rows of one statement as one item."""
        if rows:
            self._enqueue((_MANY, statement, rows))

    def set_states(self, writes: list[StateWrite], ts: int | None = None) -> None:
        """Queue state writes; per commit only the latest value of each id is written."""
        self._enqueue((_STATES, writes, ts or now_ms()))

    def set_states_lazily(
        self, key: Hashable, produce: Callable[[], list[StateWrite]], ts: int | None = None
    ) -> None:
        """Queue writes computed in the writer thread at commit time; of several with the
        same key in one commit only the latest is computed (a payload flattened into
        dozens of states costs once per commit, not once per message). `produce` must not
        touch shared mutable state."""
        self._enqueue((_LAZY, key, produce, ts or now_ms()))

    def record_frame(
        self,
        identity: str,
        protocol: str | None,
        direction: str,
        text: str,
        message_type: int | None,
        message_id: str | None,
        action: str | None,
        violation: str | None,
        ts: int | None = None,
    ) -> None:
        self.put(
            INSERT_MESSAGE,
            (
                ts or now_ms(),
                identity,
                protocol,
                direction,
                message_type,
                message_id,
                action,
                text,
                violation,
            ),
        )

    def log_connection(
        self,
        event: str,
        identity: str | None,
        remote_addr: str | None,
        protocol: str | None,
        reason: str | None,
    ) -> None:
        self.put(INSERT_CONNECTION, (now_ms(), identity, remote_addr, protocol, event, reason))

    # -------------------------------------------------------------- writer thread

    def _run(self, connection: sqlite3.Connection) -> None:
        batch = _Batch()
        stopping = False
        while not stopping:
            if batch.empty:
                first = self._queue.get()
                if first is _STOP:
                    break
                batch.absorb(first)
                deadline = time.monotonic() + self.commit_interval
            # Group commit: gather until the deadline, then write in one transaction; a
            # shutdown cuts the wait short (SPEC §2: exit within 5 s, whatever the interval).
            self._stopping.wait(max(0.0, deadline - time.monotonic()))
            stopping = self._drain(batch)
            deadline = time.monotonic() + self.commit_interval
            if self._write(connection, batch):
                batch = _Batch()
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
        connection.close()

    def _drain(self, batch: _Batch) -> bool:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return False
            if item is _STOP:
                return True
            batch.absorb(item)

    def _bound(self, batch: _Batch) -> None:
        """While the database cannot be written, memory stays bounded: past MAX_PENDING
        rows the oldest copies of frames go first, then the oldest meter values; states
        (one per id), sessions and the rest are always kept."""
        dropped = batch.shed(MAX_PENDING_ROWS)
        if dropped and not self._shedding:
            self._shedding = True
            log.error(
                "database: unwritable for too long; dropping the oldest buffered rows"
                " (%s) to stay within %d rows of memory",
                dropped,
                MAX_PENDING_ROWS,
            )

    def _write(self, connection: sqlite3.Connection, batch: _Batch) -> bool:
        latest = batch.states()
        new_objects = [
            (state_id, *(meta or _infer_meta(value)))
            for state_id, (value, _, meta) in latest.items()
            if self._described.get(state_id) != (meta or _infer_meta(value))
        ]
        new_objects += [d for d in batch.defaults if self._described.get(d[0]) != d[1:]]
        try:
            # history first, in transactions of at most ROWS_PER_TRANSACTION rows: another
            # writer (a user's control) never waits long behind a backlog
            rows = batch.rows
            while len(rows) > ROWS_PER_TRANSACTION:
                with connection:
                    for statement, group in _runs(rows[:ROWS_PER_TRANSACTION]):
                        connection.executemany(statement, group)
                rows = batch.rows = rows[ROWS_PER_TRANSACTION:]
            with connection:  # one transaction: commit, or roll back on error
                for statement, group in _runs(rows):
                    connection.executemany(statement, group)
                connection.executemany(
                    UPSERT_STATE,
                    [(i, _encode(value), ts) for i, (value, ts, _) in latest.items()],
                )
                connection.executemany(UPSERT_OBJECT, new_objects)
        except sqlite3.OperationalError as exc:
            # Locked by another process, disk full: keep everything, retry next interval.
            if self._failing is None:
                log.error(
                    "database: cannot write (%s); answering charge points on, keeping"
                    " %d rows in memory and retrying every %g s",
                    exc,
                    batch.size,
                    self.commit_interval,
                )
            self._failing = str(exc)
            return False
        for state_id, *meta in new_objects:
            self._described[state_id] = tuple(meta)  # type: ignore[assignment]
        self._committed += batch.items
        if self._failing is not None:
            log.warning(
                "database: writing again (%s cleared), %d rows caught up", self._failing, batch.size
            )
            self._failing = None
            self._shedding = False
        self.commits += 1
        return True

    def prune(self, connection: sqlite3.Connection) -> int:
        """Delete history older than the retention, oldest first, in small batches, then
        hand the freed pages back to the file system (incremental vacuum)."""
        deleted = 0
        for table, column, setting in _PRUNED:
            cutoff = now_ms() - int(getattr(self.retention, setting) * 86_400_000)
            for _ in range(PRUNE_BATCHES_PER_PASS):
                oldest = connection.execute(
                    f"SELECT seq, {column} FROM {table} ORDER BY seq LIMIT 1"
                ).fetchone()
                if oldest is None or oldest[1] >= cutoff:
                    break
                try:
                    with connection:
                        cursor = connection.execute(
                            f"DELETE FROM {table} WHERE seq < ? AND {column} < ?",
                            (oldest[0] + PRUNE_BATCH, cutoff),
                        )
                except sqlite3.OperationalError as exc:
                    log.warning("database: pruning %s postponed: %s", table, exc)
                    return deleted
                deleted += cursor.rowcount
        if deleted:
            log.info("database: pruned %d history rows past their retention", deleted)
            try:
                # (executescript steps the pragma to the end: execute() frees one page)
                connection.executescript("PRAGMA incremental_vacuum;")
            except sqlite3.OperationalError as exc:
                log.warning("database: incremental vacuum postponed: %s", exc)
        return deleted

    # ------------------------------------------------------------------ start state

    def _read_start_state(self, connection: sqlite3.Connection) -> Opened:
        row = connection.execute(
            "SELECT value FROM meta WHERE key = 'transaction_id_reserved'"
        ).fetchone()
        floor = int(row[0]) if row else 0
        # Reserve the next block durably before any id of it is handed out: ids answered
        # but lost in a crash can then never be handed out again.
        with connection:
            connection.execute(SET_META, ("transaction_id_reserved", floor + TRANSACTION_ID_BLOCK))
        starts = connection.execute(
            "SELECT identity, evse_id, id_token, meter_start_wh, started_at, transaction_id"
            " FROM transactions WHERE started_at IS NOT NULL ORDER BY seq DESC LIMIT ?",
            (RECENT_STARTS,),
        ).fetchall()
        recent = {tuple(r[:5]): int(r[5]) for r in starts if str(r[5]).isdigit()}
        sessions = connection.execute(
            "SELECT identity, transaction_id, evse_id, connector_id, meter_start_wh,"
            " meter_stop_wh, stopped_at IS NOT NULL FROM transactions WHERE seq IN ("
            "  SELECT seq FROM transactions WHERE stopped_at IS NULL AND transaction_id <> '-1'"
            "   AND updated_at > ?"
            "  UNION SELECT seq FROM (SELECT seq FROM transactions WHERE stopped_at IS NOT NULL"
            "   ORDER BY seq DESC LIMIT ?)"
            ") ORDER BY seq",
            (now_ms() - OPEN_SESSION_MAX_AGE_MS, RECENT_STARTS),
        ).fetchall()
        # Nobody is connected before the first connection of this run.
        with connection:
            connection.execute(
                "UPDATE states SET val = 0, ack = 1, ts = ?1,"
                " lc = CASE WHEN val IS 0 THEN lc ELSE ?1 END WHERE id LIKE '%.info.connected'",
                (now_ms(),),
            )
        restored = [(*row[:6], bool(row[6])) for row in sessions]
        return Opened(floor, floor + TRANSACTION_ID_BLOCK, recent, restored)


class TransactionIds:
    """OCPP 1.6 transactionId: unique per appliance, monotonic, and it survives restarts
    (a restart skips the rest of the reserved block). A StartTransaction repeated after a
    lost answer gets its first id again."""

    def __init__(self, store: Store, opened: Opened) -> None:
        self._store = store
        self._next = opened.transaction_id_floor + 1
        self._reserved = opened.transaction_id_reserved
        self._recent: dict[tuple[Any, ...], int] = dict(opened.recent_starts)

    def start(self, key: tuple[Any, ...]) -> tuple[int, bool]:
        """The id for a start identified by `key`, and whether it is new."""
        known = self._recent.get(key)
        if known is not None:
            return known, False
        transaction_id = self._next
        self._next += 1
        if self._reserved - transaction_id < TRANSACTION_ID_BLOCK // 2:
            self._reserved += TRANSACTION_ID_BLOCK
            self._store.put(SET_META, ("transaction_id_reserved", self._reserved))
        self._recent[key] = transaction_id
        if len(self._recent) > RECENT_STARTS:
            del self._recent[next(iter(self._recent))]
        return transaction_id, True


#: ids reserved ahead; renewed half-way, so the renewal has hundreds of starts to commit
TRANSACTION_ID_BLOCK = 1000
#: a session without a stop for this long is not taken as still running after a restart
OPEN_SESSION_MAX_AGE_MS = 7 * 24 * 3600 * 1000
#: how many 1.6 starts are remembered to recognise a StartTransaction repeated after a
#: lost answer; repeats come within minutes, a charger's offline queue is far shorter.
RECENT_STARTS = 1000


def _runs(
    rows: Iterable[tuple[str, tuple[Any, ...]]],
) -> Iterable[tuple[str, list[tuple[Any, ...]]]]:
    """Consecutive rows of the same statement, so each run is one executemany and the
    order between statements is kept."""
    statement: str | None = None
    group: list[tuple[Any, ...]] = []
    for row_statement, params in rows:
        if row_statement != statement:
            if group and statement is not None:
                yield statement, group
            statement, group = row_statement, []
        group.append(params)
    if group and statement is not None:
        yield statement, group


def _encode(value: Any) -> Any:
    """A Python value as the `val` column holds it: booleans 0/1, JSON as text."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return value


def _infer_meta(value: Any) -> Meta:
    if isinstance(value, bool):
        kind = "boolean"
    elif isinstance(value, (int, float)):
        kind = "number"
    elif isinstance(value, (dict, list)):
        kind = "json"
    else:
        kind = "string"
    return (kind, "state", None, False, "")


def connect(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    # Before anything writes (journal_mode does): a newer file is left exactly as it was.
    _refuse_newer(connection, path)
    if connection.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0] == 0:
        # A new file: freed pages go back to the file system as retention prunes.
        # auto_vacuum can only be chosen before the first page is written.
        connection.execute("PRAGMA auto_vacuum = INCREMENTAL")
    connection.execute("PRAGMA journal_mode = WAL")
    # FULL: each commit is fsynced, so at most one commit interval is lost on power loss.
    connection.execute("PRAGMA synchronous = FULL")
    connection.isolation_level = "DEFERRED"
    return connection


def _refuse_newer(connection: sqlite3.Connection, path: Path) -> None:
    version = connection.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        connection.close()
        raise StoreError(
            f"{path} has schema version {version}, newer than this appliance knows"
            f" ({SCHEMA_VERSION}): refusing to touch it; run a newer ocpp-appliance"
        )


def migrate(connection: sqlite3.Connection, path: Path) -> None:
    version = connection.execute("PRAGMA user_version").fetchone()[0]
    _refuse_newer(connection, path)
    for number in range(version, SCHEMA_VERSION):
        with connection:
            connection.executescript(
                "BEGIN IMMEDIATE;" + MIGRATIONS[number] + f";PRAGMA user_version = {number + 1};"
            )
        log.info("database: migrated %s to schema version %d", path, number + 1)


def _create_private(path: Path) -> None:
    """Create the file group-readable/writable, never world-readable (SPEC §9); SQLite
    gives the -wal and -shm files the same mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o660))
        os.chmod(path, 0o660)  # the umask may have taken the group's write bit


class CommandReader:
    """The controls' own read connection: what users wrote, and the states a command
    needs. Blocking; called from a worker thread."""

    def __init__(self, path: Path) -> None:
        self.connection = sqlite3.connect(path, check_same_thread=False, timeout=5)
        self.connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        self._data_version: int | None = None

    def close(self) -> None:
        self.connection.close()

    def commands(self, after_seq: int) -> list[tuple[int, str, Any, int]]:
        """Queued commands newer than `after_seq`, oldest first. Cheap when nothing was
        committed since the last look (PRAGMA data_version)."""
        version = self.connection.execute("PRAGMA data_version").fetchone()[0]
        if version == self._data_version:
            return []
        self._data_version = version
        return self.connection.execute(
            "SELECT seq, id, val, written_at FROM control_queue WHERE seq > ? ORDER BY seq",
            (after_seq,),
        ).fetchall()

    def values(self, ids: list[str]) -> dict[str, Any]:
        marks = ",".join("?" * len(ids))
        rows = self.connection.execute(f"SELECT id, val FROM states WHERE id IN ({marks})", ids)
        return dict(rows.fetchall())

    def identities(self) -> dict[str, str]:
        """prefix → identity of every charge point seen."""
        return dict(self.connection.execute("SELECT prefix, identity FROM charge_points"))

    def writable(self, state_id: str) -> bool:
        row = self.connection.execute(
            "SELECT writable FROM objects WHERE id = ?", (state_id,)
        ).fetchone()
        return bool(row and row[0])
