"""What the command line reads and writes while the appliance may be running: the
`charge_point_status` view, states by glob, control writes and their outcome (README
"Command line", "Controls"). Each call opens connections of its own."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from appliance.errors import ReaderError
from appliance.store.commands import write_controls as _write

_NO_DATABASE = "no database at {} (has `ocpp-appliance serve` run with this config?)"


@contextlib.contextmanager
def _read(path: Path) -> Iterator[sqlite3.Connection]:
    if not path.exists():
        raise ReaderError(_NO_DATABASE.format(path))
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error as exc:
        raise ReaderError(f"{path}: {exc}") from None
    connection.row_factory = sqlite3.Row
    try:
        yield connection
    except sqlite3.Error as exc:
        raise ReaderError(f"{path}: {exc}") from None
    finally:
        connection.close()


def charge_points(path: Path) -> list[dict[str, Any]]:
    with _read(path) as db:
        rows = db.execute("SELECT * FROM charge_point_status ORDER BY identity").fetchall()
    return [dict(row) for row in rows]


def states(path: Path, pattern: str) -> list[dict[str, Any]]:
    with _read(path) as db:
        rows = db.execute(
            "SELECT s.id, s.val, s.ack, s.ts, s.lc, o.type, o.unit FROM states AS s"
            " LEFT JOIN objects AS o ON o.id = s.id WHERE s.id GLOB ? ORDER BY s.id",
            (pattern,),
        ).fetchall()
    return [dict(row) for row in rows]


def write_controls(path: Path, values: list[tuple[str, Any]]) -> int:
    """Write controls with ack = 0 in one transaction, as any tool may; returns the queue
    position of the last, to wait for its outcome."""
    if not path.exists():
        raise ReaderError(_NO_DATABASE.format(path))
    connection = sqlite3.connect(path, timeout=10)
    try:
        return _write(connection, values)
    except sqlite3.Error as exc:
        raise ReaderError(f"{path}: {exc}") from None
    finally:
        connection.close()


def wait_done(path: Path, seq: int, timeout: float) -> bool:
    """Whether the appliance took command `seq` off the queue within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    with _read(path) as db:
        while time.monotonic() < deadline:
            if db.execute("SELECT 1 FROM control_queue WHERE seq = ?", (seq,)).fetchone() is None:
                return True
            time.sleep(0.1)
    return False


def outcome(path: Path, base: str) -> tuple[str, str]:
    """(lastResponse, lastError) under `base` (e.g. `CP1.control.rpc`)."""
    with _read(path) as db:
        found = dict(
            db.execute(
                "SELECT id, val FROM states WHERE id IN (?, ?)",
                (f"{base}.lastResponse", f"{base}.lastError"),
            ).fetchall()
        )
    return found.get(f"{base}.lastResponse") or "", found.get(f"{base}.lastError") or ""
