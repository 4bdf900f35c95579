"""The database as the command line sees it: what `status` and `get` print, and the
control writes of `set` and `call`, which the running appliance picks up (SPEC §6). The
appliance may be running; this opens connections of its own."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from appliance.errors import ReaderError

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


def age(ms: int | None, now: float | None = None) -> str:
    """How long ago, in the largest unit that fits: 4 s, 12 min, 3 h, 2 d."""
    if ms is None:
        return "-"
    seconds = max(0.0, (now or time.time()) - ms / 1000)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit}"
    return f"{int(seconds)} s"


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = [header, ["-" * w for w in widths], *rows]
    return "".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() + "\n"
        for line in lines
    )


def _number(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def status_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no charge point has connected yet\n"
    header = ["IDENTITY", "CONNECTED", "STATUS", "PROTOCOL", "POWER W", "ENERGY kWh",
              "SOC %", "CHARGING", "SESSION kWh", "LAST SEEN"]  # fmt: skip
    body = [
        [
            row["identity"],
            "yes" if row["connected"] else "no",
            row["status"] or "-",
            row["protocol"] or "-",
            _number(row["power_w"], 0),
            _number(row["energy_kwh"], 3),
            _number(row["soc"], 0),
            "yes" if row["tx_active"] else "no",
            _number(row["tx_energy_kwh"], 3),
            age(row["last_seen"]) + (" ago" if row["last_seen"] else ""),
        ]
        for row in rows
    ]
    return _table(header, body)


def states_table(states: list[dict[str, Any]]) -> str:
    body = [
        [
            s["id"],
            "NULL" if s["val"] is None else str(s["val"]),
            s["unit"] or "",
            age(s["ts"]),
            "" if s["ack"] else "(command, not yet processed)",
        ]
        for s in states
    ]
    return _table(["ID", "VALUE", "UNIT", "AGE", ""], body) if body else ""


# what any tool may do (SPEC §6); the appliance's trigger queues it
WRITE_CONTROL = (
    "INSERT INTO states (id, val, ack) VALUES (?, ?, 0)"
    " ON CONFLICT (id) DO UPDATE SET val = excluded.val, ack = 0, ts = excluded.ts,"
    " lc = CASE WHEN val IS excluded.val THEN lc ELSE excluded.ts END"
)


def write_controls(path: Path, values: list[tuple[str, Any]]) -> int:
    """Write controls with ack = 0 in one transaction, as any tool may; returns the queue
    position of the last, to wait for its outcome."""
    if not path.exists():
        raise ReaderError(_NO_DATABASE.format(path))
    connection = sqlite3.connect(path, timeout=10)
    try:
        with connection:
            for state_id, value in values:
                if isinstance(value, (dict, list)):
                    value = json.dumps(value)
                connection.execute(WRITE_CONTROL, (state_id, value))
            return connection.execute("SELECT max(seq) FROM control_queue").fetchone()[0]
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
