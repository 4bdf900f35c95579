"""The database as the command line sees it: what `status` and `get` print, and the
control writes of `set` and `call`, which the running appliance picks up (README "Controls"). The
appliance may be running; this opens connections of its own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from appliance.domain import clock
from appliance.store.disk import MB, Level, describe, free_bytes, level_for
from appliance.store.queries import (
    carry_out,
    charge_points,
    disk_guard,
    explain,
    heartbeat,
    is_down,
    note,
    outcome,
    refusal,
    stale_after_ms,
    states,
    wait_done,
    write_controls,
)


def age(ms: int | None, now: float | None = None) -> str:
    """How long ago, in the largest unit that fits: 4 s, 12 min, 3 h, 2 d."""
    if ms is None:
        return "-"
    seconds = max(0.0, (now or clock.wall()) - ms / 1000)
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


def upstream_lines(rows: list[dict[str, Any]], now: float | None = None) -> str:
    """README "A second backend": a line per charge point and upstream."""
    lines = []
    for row in rows:
        for name, link in sorted((row.get("upstreams") or {}).items()):
            since = age(link.get("since"), now)
            if link.get("connected"):
                said = f"connected for {since}"
            else:
                said = f"not connected for {since}"
                if link.get("reason"):
                    said += f" ({link['reason']})"
            waiting = link.get("waiting") or 0
            lines.append(
                f"upstream {name} of {row['identity']}: {said};"
                f" {waiting} transaction message{'' if waiting == 1 else 's'} waiting\n"
            )
    return "".join(lines)


#: less free space than this is a full disk (SQLite needs a few pages per commit)
FULL = MB


def disk_line(database: Path, floor_mb: int, now: float | None = None) -> str:
    """README "Storage design": a line while the disk guard is on (as the appliance last
    said, with the free space now), or while the free space is below the floor whatever
    the appliance said (it may be stopped, or unable to write even that); else nothing."""
    folder = database.absolute().parent
    free = free_bytes(folder)
    guard = disk_guard(database) or {}
    level = guard.get("guard")
    if free is not None and free < FULL:
        return (
            f"disk full: {free // MB} MB free in {folder}: the appliance cannot write its"
            " database; it answers charge points on and keeps their rows in memory until"
            " there is space\n"
        )
    if level in ("frames", "leaves"):
        since = age(guard.get("since"), now)
        said = Level[level.upper()]
        # the free space now: the level the appliance's next check comes to
        level = said if free is None else level_for(free, floor_mb * MB, said)
        if level is Level.OFF:
            return (
                f"disk guard on since {since} ago; {free // MB if free else 0} MB free in"
                f" {folder} now: a running appliance lifts it within seconds\n"
            )
        return f"disk guard {describe(level, free, floor_mb, folder)} (since {since} ago)\n"
    if floor_mb and free is not None and free < floor_mb * MB:
        return (
            f"disk: {free // MB} MB free in {folder}, below [storage] min_free_disk_mb ="
            f" {floor_mb}: the disk guard is on while the appliance runs\n"
        )
    return ""


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


__all__ = [
    "age",
    "carry_out",
    "charge_points",
    "disk_guard",
    "disk_line",
    "explain",
    "heartbeat",
    "is_down",
    "note",
    "outcome",
    "refusal",
    "stale_after_ms",
    "states",
    "states_table",
    "status_table",
    "upstream_lines",
    "wait_done",
    "write_controls",
]
