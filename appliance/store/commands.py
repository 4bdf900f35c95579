"""The control queue as seen from outside the writer: what users wrote (read by the
controls) and the writes of `ocpp-appliance set` / `call`."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from appliance.store.migrations import reading
from appliance.store.sql import WRITE_CONTROL


class CommandReader:
    """The controls' own read connection: what users wrote, and the states a command
    needs. Blocking; called from a worker thread."""

    def __init__(self, path: Path) -> None:
        self.connection = reading(path)
        self._data_version: int | None = None

    def close(self) -> None:
        self.connection.close()

    def commands(self, after_seq: int) -> list[tuple[int, str, Any, Any, bool]]:
        """Queued commands newer than `after_seq`, oldest first: (seq, id, value, value in
        force before, whether that is known). Cheap when nothing was committed since the
        last look (PRAGMA data_version)."""
        version = self.connection.execute("PRAGMA data_version").fetchone()[0]
        if version == self._data_version:
            return []
        self._data_version = version
        rows = self.connection.execute(
            "SELECT seq, id, val, previous, had_previous FROM control_queue WHERE seq > ?"
            " ORDER BY seq",
            (after_seq,),
        ).fetchall()
        return [(seq, i, val, previous, bool(had)) for seq, i, val, previous, had in rows]

    def in_force(self) -> dict[str, Any]:
        """The value in force of every control that was ever used (`control_outcomes`)."""
        return dict(self.connection.execute("SELECT id, in_force FROM control_outcomes"))

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


def write_controls(connection: sqlite3.Connection, values: list[tuple[str, Any]]) -> int:
    """Write controls with ack = 0 in one transaction, as any tool may; returns the queue
    position of the last, to wait for its outcome."""
    with connection:
        for state_id, value in values:
            if isinstance(value, (dict, list)):
                value = json.dumps(value)
            connection.execute(WRITE_CONTROL, (state_id, value))
        return connection.execute("SELECT max(seq) FROM control_queue").fetchone()[0]
