"""Retention: history older than `[storage] *_keep_days` is deleted in small batches."""

from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import dataclass

log = logging.getLogger("appliance.store")


@dataclass(frozen=True, slots=True)
class Retention:
    """How long history rows are kept, in days (README "Configuration", [storage])."""

    messages_days: float = 30
    meter_values_days: float = 365
    #: [central] is on: a row not replicated yet is kept whatever its age
    #: (README "Many sites into one PostgreSQL")
    replicated: bool = False


#: rows deleted per short transaction when pruning: a reader or a control writer waits at
#: most for one such batch, a few milliseconds on an SD card
PRUNE_BATCH = 500
#: batches per pass; the rest waits for the next pass, so commits keep flowing
PRUNE_BATCHES_PER_PASS = 20
#: (table, time column) pruned by age; both grow in seq order, which is time order
_PRUNED = (
    ("messages", "ts", "messages_days"),
    ("meter_values", "received_at", "meter_values_days"),
)


def prune(connection: sqlite3.Connection, retention: Retention) -> int:
    """Delete history older than the retention, oldest first, in small batches, then
    hand the freed pages back to the file system (incremental vacuum)."""
    deleted = 0
    now = time.time_ns() // 1_000_000
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
