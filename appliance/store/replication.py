"""What replication reads of the SQLite file (README "Many sites into one PostgreSQL"):
per table, the rows committed beyond a watermark, in commit order.

- `messages`, `connection_log`, `meter_values` only grow: their `seq` is the watermark
  (retention keeps the newest row, so a `seq` is never handed out twice);
- `transactions` and `control_outcomes` change after their insert: the revision the
  triggers of schema 7 give every insert and update (`rev`) is the watermark;
- `states` and `charge_points` are latest values: the `ts` of the write, read again with
  an overlap (a write is stamped before its commit) and swept whole from time to time;
  sending a value twice changes nothing.

Blocking; run in a worker thread, on a connection of its own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.domain import clock
from appliance.store.migrations import reading


@dataclass(frozen=True, slots=True)
class Source:
    """One replicated table: its columns (the local key first) and its watermark."""

    name: str
    columns: tuple[str, ...]
    #: the column the watermark is of: seq, rev or ts
    mark: str
    #: how rows are keyed: by the first column (seq, id, identity)
    key: str

    @property
    def latest_value(self) -> bool:
        return self.mark == "ts"


SOURCES: tuple[Source, ...] = (
    Source(
        "charge_points", ("identity", "prefix", "first_seen"), "first_seen", "identity"
    ),
    Source(
        "messages",
        ("seq", "ts", "identity", "protocol", "direction", "message_type", "message_id",
         "action", "payload", "violation", "redacted", "peer"),
        "seq",
        "seq",
    ),
    Source(
        "connection_log",
        ("seq", "ts", "identity", "remote_addr", "protocol", "event", "reason"),
        "seq",
        "seq",
    ),
    Source(
        "transactions",
        ("seq", "identity", "transaction_id", "evse_id", "connector_id", "id_token",
         "started_at", "stopped_at", "meter_start_wh", "meter_stop_wh", "energy_wh",
         "stop_reason", "received_at", "time_suspect", "seq_no", "offline", "updated_at"),
        "rev",
        "seq",
    ),
    Source(
        "meter_values",
        ("seq", "identity", "evse_id", "connector_id", "transaction_id", "sampled_at",
         "measurand", "phase", "location", "context", "unit", "value", "received_at",
         "time_suspect"),
        "seq",
        "seq",
    ),
    Source(
        "control_outcomes",
        ("id", "ts", "value", "ok", "response", "error", "in_force", "note"),
        "rev",
        "id",
    ),
    Source("states", ("id", "val", "ack", "ts", "lc"), "ts", "id"),
)  # fmt: skip
BY_NAME = {source.name: source for source in SOURCES}


#: the meta key of the replication state (`ocpp-appliance status`)
STATUS_KEY = "central"


@dataclass(frozen=True, slots=True)
class Batch:
    source: Source
    rows: list[tuple[Any, ...]]
    #: the watermark once these rows are in PostgreSQL
    watermark: int


class ReplicationReader:
    def __init__(self, path: Path) -> None:
        self.connection = reading(path)
        self._data_version: int | None = None

    def close(self) -> None:
        self.connection.close()

    def origin(self) -> str:
        """The file's own id (schema 8): the `origin` of its rows in PostgreSQL."""
        row = self.connection.execute("SELECT value FROM meta WHERE key = 'origin'").fetchone()
        return str(row[0]) if row else ""

    def grants(self) -> list[list[int]]:
        """The blocks of 1.6 transaction ids the file holds (store.TransactionIds)."""
        row = self.connection.execute(
            "SELECT value FROM meta WHERE key = 'transaction_id_grants'"
        ).fetchone()
        return json.loads(row[0]) if row else []

    def watermarks(self) -> dict[str, int]:
        """The watermarks kept in the SQLite file (`replication`)."""
        return dict(self.connection.execute("SELECT name, watermark FROM replication"))

    def changed(self) -> bool:
        """Whether anything was committed since the last call (PRAGMA data_version)."""
        version = self.connection.execute("PRAGMA data_version").fetchone()[0]
        changed, self._data_version = version != self._data_version, version
        return changed

    def batch(self, source: Source, watermark: int, limit: int, overlap_ms: int) -> Batch:
        """Rows beyond `watermark`, oldest first, at most `limit`. A latest-value table:
        every row stamped since `watermark` less `overlap_ms` (a write is stamped when it
        is made and committed up to a commit interval later); `watermark` < 0: all."""
        columns = ", ".join(source.columns)
        if source.latest_value:
            since = watermark - overlap_ms if watermark >= 0 else -(2**62)
            rows = self.connection.execute(
                f"SELECT {columns}, {source.mark} FROM {source.name} WHERE {source.mark} >= ?",
                (since,),
            ).fetchall()
            newest = max((row[-1] for row in rows), default=watermark)
            return Batch(source, [row[:-1] for row in rows], max(newest, watermark))
        rows = self.connection.execute(
            f"SELECT {columns}, {source.mark} FROM {source.name} WHERE {source.mark} > ?"
            f" ORDER BY {source.mark} LIMIT ?",
            (watermark, limit),
        ).fetchall()
        newest = rows[-1][-1] if rows else watermark
        return Batch(source, [row[:-1] for row in rows], newest)

    def backlog(self, watermarks: dict[str, int]) -> dict[str, tuple[int, int | None]]:
        """Per ordered table: (rows not replicated yet, when the oldest of them was
        written, ms). Latest-value tables have no backlog to count."""
        found: dict[str, tuple[int, int | None]] = {}
        for source in SOURCES:
            if source.latest_value:
                continue
            mark = watermarks.get(source.name, 0)
            count = self.connection.execute(
                f"SELECT count(*) FROM {source.name} WHERE {source.mark} > ?", (mark,)
            ).fetchone()[0]
            found[source.name] = (count, self._oldest(source, mark) if count else None)
        return found

    def _oldest(self, source: Source, mark: int) -> int | None:
        column = {"messages": "ts", "connection_log": "ts", "meter_values": "received_at",
                  "transactions": "updated_at", "control_outcomes": "ts"}[source.name]  # fmt: skip
        row = self.connection.execute(
            f"SELECT {column} FROM {source.name} WHERE {source.mark} > ?"
            f" ORDER BY {source.mark} LIMIT 1",
            (mark,),
        ).fetchone()
        return row[0] if row else None


def backlog(path: Path) -> dict[str, Any]:
    """What `status` shows of replication: its state (as the replication task left it in
    `meta`), and per table the rows not in PostgreSQL yet and how old the oldest is (s)."""
    reader = ReplicationReader(path)
    try:
        row = reader.connection.execute(
            "SELECT value FROM meta WHERE key = ?", (STATUS_KEY,)
        ).fetchone()
        state = json.loads(row[0]) if row else None
        found = reader.backlog(reader.watermarks())
    finally:
        reader.close()
    now = clock.wall_ms()
    tables = {
        name: {"rows": count, "lag_s": None if oldest is None else round((now - oldest) / 1000, 1)}
        for name, (count, oldest) in found.items()
    }
    return {"central": state, "backlog": tables}
