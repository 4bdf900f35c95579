"""Retention: history older than `[storage] *_keep_days` is deleted in small batches,
its age measured by a clock that never runs ahead of the time that really passed
(`RetentionClock`)."""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass, field

from appliance.domain import clock

log = logging.getLogger("appliance.store")

#: `meta` key: the retention clock of the last pass (ms), for the next start
CLOCK_KEY = "retention_clock_ms"
#: the retention clock lagging the wall clock by more than this is said in the log
LAG_NOTED_SEC = 60.0


class RetentionClock:
    """The time retention measures age by (README "Storage design"): the appliance's
    clock, except that it never advances faster than time really passes while the
    appliance runs (the monotonic clock) and is never ahead of the wall clock.

    - A step of the wall clock forward (NTP finding a Pi days behind, a clock set wrong)
      ages nothing: the retention clock goes on at the pace of real time, and rows are
      kept the step longer — until the next start with a synchronised clock.
    - A step back is followed at once: nothing is deleted earlier than before.
    - At start it is the wall clock if the system says the clock is synchronised; if
      not, it is no later than where the previous run left it (`meta`
      `retention_clock_ms`): a clock set wrong before a reboot ages nothing either, and
      on a box whose clock is never synchronised data ages only while the appliance runs.
    """

    def __init__(self) -> None:
        self._value = clock.wall()
        self._at = clock.elapsed()
        #: what the system said at start; None once the first pass has looked at `meta`
        self._synchronised_at_start: bool | None = clock.synchronised()
        self._lag_noted = 0.0

    def now(self, connection: sqlite3.Connection) -> float:
        """The retention clock now (seconds since the epoch), kept in `meta` for the
        next start."""
        wall, at = clock.wall(), clock.elapsed()
        value = min(self._value + max(0.0, at - self._at), wall)
        if self._synchronised_at_start is not None:
            if not self._synchronised_at_start:
                row = connection.execute(
                    "SELECT value FROM meta WHERE key = ?", (CLOCK_KEY,)
                ).fetchone()
                if row is not None and isinstance(row[0], int | float):
                    value = min(value, row[0] / 1000 + max(0.0, at - self._at))
            self._synchronised_at_start = None
        self._value, self._at = value, at
        lag = wall - value
        if abs(lag - self._lag_noted) > LAG_NOTED_SEC:
            self._lag_noted = lag
            if lag > LAG_NOTED_SEC:
                log.info(
                    "database: retention counts age from %s, %s behind the clock (it"
                    " stepped forward, or was not synchronised at start): rows are kept"
                    " that much longer",
                    clock.iso(value),
                    clock.span(lag),
                )
        try:
            with connection:
                connection.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                    (CLOCK_KEY, int(value * 1000)),
                )
        except sqlite3.OperationalError as exc:
            log.debug("database: retention clock not stored: %s", exc)
        return value


@dataclass(frozen=True, slots=True)
class Retention:
    """How long history rows are kept, in days (README "Configuration", [storage])."""

    messages_days: float = 30
    meter_values_days: float = 365
    #: [central] is on: a row not replicated yet is kept whatever its age
    #: (README "Many sites into one PostgreSQL")
    replicated: bool = False
    #: what age is measured by (one per appliance run)
    clock: RetentionClock = field(default_factory=RetentionClock, compare=False, repr=False)


#: rows deleted per short transaction when pruning: a reader or a control writer waits at
#: most for one such batch, a few milliseconds on an SD card
PRUNE_BATCH = 500
#: batches per pass; the rest waits for the next pass, so commits keep flowing
PRUNE_BATCHES_PER_PASS = 20
#: (table, time column) pruned by age; both grow in seq order, which is time order
#: unless the clock stepped back (then a row may be deleted as much later)
_PRUNED = (
    ("messages", "ts", "messages_days"),
    ("meter_values", "received_at", "meter_values_days"),
)


def prune(connection: sqlite3.Connection, retention: Retention) -> int:
    """Delete history older than the retention, oldest first, in small batches, then
    hand the freed pages back to the file system (incremental vacuum)."""
    deleted = 0
    now = int(retention.clock.now(connection) * 1000)
    for table, column, setting in _PRUNED:
        cutoff = now - int(getattr(retention, setting) * 86_400_000)
        # the newest row stays: a seq is never handed out twice (replication's watermark)
        newest = connection.execute(f"SELECT max(seq) FROM {table}").fetchone()[0] or 0
        if retention.replicated:
            mark = connection.execute(
                "SELECT watermark FROM replication WHERE name = ?", (table,)
            ).fetchone()
            newest = min(newest, (mark[0] if mark else 0) + 1)
        for _ in range(PRUNE_BATCHES_PER_PASS):
            oldest = connection.execute(
                f"SELECT seq, {column} FROM {table} ORDER BY seq LIMIT 1"
            ).fetchone()
            if oldest is None or oldest[1] >= cutoff or oldest[0] >= newest:
                break
            try:
                with connection:
                    cursor = connection.execute(
                        f"DELETE FROM {table} WHERE seq < ? AND {column} < ? AND seq < ?",
                        (oldest[0] + PRUNE_BATCH, cutoff, newest),
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
