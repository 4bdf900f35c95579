"""What the web dashboard and its HTTP API read (README "Web dashboard and API"): the
charge points, states by glob, sessions, downsampled meter-value series, the connection
log, recent frames, control outcomes, and what changed since the last look.

Blocking: every call runs in a worker thread of the web side, never on the event loop.
Each worker thread keeps one read-only connection of its own (SQLite connections are
not shared between threads); WAL readers never hold up the appliance's writer.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

from appliance.store.migrations import reading, status_row

#: at most this many points per series in one answer: a phone draws 500 points as fast as
#: 50, and a week of 10 s samples (60 480) would be a 2 MB answer
MAX_POINTS = 2000
#: rows per page of the logs and the session history
MAX_ROWS = 1000


#: charge_point_status with each identity's id prefix (for state ids) and, while a session
#: runs, when it started (ms): the charge point's time where its clock is plausible, else
#: when the appliance heard of it (README "Readings": clocks are never mixed up)
_CHARGE_POINTS = """
SELECT s.*, c.prefix, c.first_seen,
  CASE WHEN s.tx_active THEN (
    SELECT coalesce(
      CASE WHEN t.time_suspect = 0
        THEN CAST((julianday(t.started_at) - 2440587.5) * 86400000 AS INTEGER) END,
      t.received_at)
    FROM transactions AS t
    WHERE t.identity = s.identity AND t.stopped_at IS NULL
      AND t.transaction_id = (
        SELECT CAST(val AS TEXT) FROM states WHERE id = c.prefix || '.transactions.last.id')
  ) END AS tx_started
FROM charge_point_status AS s JOIN charge_points AS c ON c.identity = s.identity"""


class WebReader:
    """Read-only queries for the web side; one connection per worker thread."""

    def __init__(self, path: Path, shared: bool = False) -> None:
        """`shared`: one connection whatever the thread, for one task that calls it
        from a worker thread at a time (the poller: PRAGMA data_version is per
        connection)."""
        self.path = path
        self._local = threading.local()
        self._shared: sqlite3.Connection | None = None
        self._is_shared = shared

    def _db(self) -> sqlite3.Connection:
        if self._is_shared and self._shared is not None:
            return self._shared
        db = getattr(self._local, "db", None)
        if db is None:
            db = reading(self.path, read_only=True)
            db.row_factory = sqlite3.Row
            self._local.db = db
            if self._is_shared:
                self._shared = db
        return db

    def _rows(self, sql: str, *params: Any) -> list[dict[str, Any]]:
        return [dict(row) for row in self._db().execute(sql, params).fetchall()]

    # ---------------------------------------------------------------- the fleet

    def data_version(self) -> int:
        """Changes whenever another connection (the writer) commits: a cheap "anything
        new?" before a real query."""
        return int(self._db().execute("PRAGMA data_version").fetchone()[0])

    def charge_points(self) -> list[dict[str, Any]]:
        """_CHARGE_POINTS, by identity."""
        return self._statuses(f"{_CHARGE_POINTS} ORDER BY s.identity")

    def charge_point(self, identity: str) -> dict[str, Any] | None:
        rows = self._statuses(f"{_CHARGE_POINTS} WHERE s.identity = ?", identity)
        return rows[0] if rows else None

    def _statuses(self, sql: str, *params: Any) -> list[dict[str, Any]]:
        return [status_row(row) for row in self._db().execute(sql, params).fetchall()]

    def states(self, pattern: str) -> list[dict[str, Any]]:
        return self._rows(
            "SELECT s.id, s.val, s.ack, s.ts, s.lc, o.type, o.unit, o.writable FROM states AS s"
            " LEFT JOIN objects AS o ON o.id = s.id WHERE s.id GLOB ? ORDER BY s.id",
            pattern,
        )

    def states_since(self, since_ts: int) -> list[dict[str, Any]]:
        """States written at or after `since_ts` (ms), oldest write first. All of them:
        a limit would lose the rest of a large report written in one millisecond. At,
        not only after: the next commit may hold writes of the same millisecond."""
        return self._rows("SELECT id, val, ts FROM states WHERE ts >= ? ORDER BY ts", since_ts)

    def newest_states(self) -> tuple[int, set[str]]:
        """The newest write's time (ms) and the ids written then: where a stream of the
        states written from now on starts."""
        rows = (
            self._db()
            .execute("SELECT ts, id FROM states WHERE ts = (SELECT max(ts) FROM states)")
            .fetchall()
        )
        return (int(rows[0][0]), {row[1] for row in rows}) if rows else (0, set())

    # ------------------------------------------------------------------ history

    def sessions(
        self, identity: str | None, since_ms: int, until_ms: int, limit: int = MAX_ROWS
    ) -> list[dict[str, Any]]:
        """Sessions whose first event reached the appliance in [since, until), newest
        first."""
        where = "received_at >= ? AND received_at < ?"
        params: list[Any] = [since_ms, until_ms]
        if identity is not None:
            where += " AND identity = ?"
            params.append(identity)
        return self._rows(
            "SELECT identity, transaction_id, evse_id, connector_id, id_token, started_at,"
            " stopped_at, meter_start_wh, meter_stop_wh, energy_wh, stop_reason, received_at,"
            f" updated_at, time_suspect FROM transactions WHERE {where}"
            " ORDER BY received_at DESC LIMIT ?",
            *params,
            min(limit, MAX_ROWS),
        )

    def series(
        self, identity: str, measurand: str, since_ms: int, until_ms: int, points: int
    ) -> list[dict[str, Any]]:
        """One measurand's samples in [since, until), per phase, averaged into at most
        `points` buckets of equal time (min and max kept, so a short peak still shows)."""
        points = max(1, min(points, MAX_POINTS))
        bucket = max(1, (until_ms - since_ms) // points)
        return self._rows(
            "SELECT (received_at - ?) / ? * ? + ? AS t, phase, avg(value) AS value,"
            " min(value) AS min, max(value) AS max, count(*) AS samples, max(unit) AS unit"
            " FROM meter_values WHERE identity = ? AND measurand = ?"
            " AND received_at >= ? AND received_at < ?"
            " AND (location IS NULL OR location = 'Outlet')"
            " GROUP BY t, phase ORDER BY t",
            since_ms,
            bucket,
            bucket,
            since_ms,
            identity,
            measurand,
            since_ms,
            until_ms,
        )

    def session_ends(self, identity: str, since_ms: int, until_ms: int) -> list[int]:
        """When sessions of `identity` ended in [since, until), by the appliance's clock
        (ms: the latest event of a stopped session): where its power and current fell
        to 0 (README "Readings"), which no sample in `meter_values` says."""
        rows = self._db().execute(
            "SELECT updated_at FROM transactions WHERE identity = ? AND stopped_at IS NOT NULL"
            " AND updated_at >= ? AND updated_at < ? ORDER BY updated_at",
            (identity, since_ms, until_ms),
        )
        return [row[0] for row in rows]

    def measurands(self, identity: str, since_ms: int) -> list[str]:
        rows = self._db().execute(
            "SELECT DISTINCT measurand FROM meter_values WHERE identity = ? AND received_at >= ?"
            " ORDER BY measurand",
            (identity, since_ms),
        )
        return [row[0] for row in rows]

    def connection_log(
        self, identity: str | None, event: str | None, limit: int
    ) -> list[dict[str, Any]]:
        where, params = ["1"], []
        if identity is not None:
            where.append("identity = ?")
            params.append(identity)
        if event is not None:
            where.append("event = ?")
            params.append(event)
        return self._rows(
            "SELECT ts, identity, remote_addr, protocol, event, reason FROM connection_log"
            f" WHERE {' AND '.join(where)} ORDER BY ts DESC, rowid DESC LIMIT ?",
            *params,
            min(limit, MAX_ROWS),
        )

    def refused(self, since_ms: int) -> list[dict[str, Any]]:
        """Identities turned away since `since_ms` that are not connected now, with the
        reason: why a new wallbox does not appear."""
        return self._rows(
            "SELECT identity, remote_addr, reason, count(*) AS attempts, max(ts) AS last_ts"
            " FROM connection_log WHERE event = 'refused' AND ts >= ?"
            " GROUP BY identity, remote_addr, reason ORDER BY last_ts DESC LIMIT 100",
            since_ms,
        )

    def frames(self, identity: str, action: str | None, limit: int) -> list[dict[str, Any]]:
        where, params = "identity = ?", [identity]
        if action:
            where += " AND action = ?"
            params.append(action)
        return self._rows(
            "SELECT seq, ts, protocol, direction, message_type, message_id, action, payload,"
            f" violation FROM messages WHERE {where} ORDER BY seq DESC LIMIT ?",
            *params,
            min(limit, MAX_ROWS),
        )

    def actions(self, identity: str) -> list[str]:
        rows = self._db().execute(
            "SELECT DISTINCT action FROM messages WHERE identity = ? AND action IS NOT NULL"
            " ORDER BY action",
            (identity,),
        )
        return [row[0] for row in rows]

    # ----------------------------------------------------------------- controls

    def queued(self, seq: int) -> bool:
        """Whether command `seq` still waits in the control queue."""
        found = self._db().execute("SELECT 1 FROM control_queue WHERE seq = ?", (seq,))
        return found.fetchone() is not None

    def outcome(self, state_id: str) -> dict[str, Any] | None:
        rows = self._rows(
            "SELECT id, ts, value, ok, response, error, in_force, note FROM control_outcomes"
            " WHERE id = ?",
            state_id,
        )
        return rows[0] if rows else None
