"""Read-only queries for the command line: what `status` and `get` print. Opens its own
read-only connection; the appliance may be running."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from appliance.errors import ReaderError


@contextlib.contextmanager
def _read(path: Path) -> Iterator[sqlite3.Connection]:
    if not path.exists():
        raise ReaderError(
            f"no database at {path} (has `ocpp-appliance serve` run with this config?)"
        )
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
