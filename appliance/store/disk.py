"""The disk guard (README "Storage design"): below `[storage] min_free_disk_mb` of free
space on the database's file system, the writer stops storing what the appliance can
afford to lose, in two steps, and stores it again by itself once space returns.

1. below the floor (`frames`): the verbatim frames (`messages` rows, calls and their
   answers) of the high-rate actions: MeterValues, Heartbeat, StatusNotification. They
   are most of what the database grows by (README "Readings the appliance asks for": 1.3 of a
   charging charge point's 2.2 MB a day) and say nothing that is not kept elsewhere:
   the readings are in `meter_values` and the states, a heartbeat in
   `info.lastHeartbeat`, a status in the connector's states.
2. below half the floor (`leaves`): also the payload states of every action, the latest
   call's `….raw`, its `.response` and its flattened `.data.*` leaves (one row per id,
   rewritten with each message: what they cost is mostly writes on a card that is
   nearly full).

Transactions, meter values, the other states, controls, the connection log and the
frames of every other action (BootNotification, StartTransaction, …) are always stored.

The free space is read with `os.statvfs` of the database's folder (a system call of a
few microseconds) at each commit, at most once per CHECK_EVERY_SEC. Each step lifts once
the free space is a quarter of the floor above where it began (HYSTERESIS): a disk
hovering at the floor does not make the guard, and its log lines, flap.
"""

from __future__ import annotations

import enum
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.domain import clock

MB = 1024 * 1024
#: the actions whose frames go first (step 1)
HIGH_RATE_ACTIONS = frozenset({"MeterValues", "Heartbeat", "StatusNotification"})
#: the payload states of step 2: `<prefix>.ocpp.<version>.<in|out>.<Action>.raw`,
#: `.response` and `.data.<path>` (README "`states` and `objects`")
PAYLOAD_STATE = re.compile(r"\.ocpp\.[^.]+\.(?:in|out)\.[^.]+\.(?:raw|response|data\..+)\Z")
#: the free space is read at most this often (each commit otherwise)
CHECK_EVERY_SEC = 1.0
#: a step lifts once the free space is this share of the floor above where it began
HYSTERESIS = 0.25
#: `meta` key of the guard's state, for `ocpp-appliance status`
META_KEY = "disk_guard"


class Level(enum.IntEnum):
    """How much the guard holds back; each level includes the ones below it."""

    OFF = 0
    FRAMES = 1
    LEAVES = 2


#: what each level stops storing, in the words of the log, the status and /api/status
NOT_STORED = {
    Level.OFF: "",
    Level.FRAMES: "the frames of " + ", ".join(sorted(HIGH_RATE_ACTIONS)),
    Level.LEAVES: "the frames of "
    + ", ".join(sorted(HIGH_RATE_ACTIONS))
    + " and the payload states (….raw, .response, .data.*)",
}


def free_bytes(folder: Path) -> int | None:
    """Bytes an unprivileged writer may still use on the file system of `folder`; None if
    it cannot be told (the folder is gone)."""
    try:
        found = os.statvfs(folder)
    except OSError:
        return None
    return found.f_bavail * found.f_frsize


def mb(size: int | None) -> str:
    """A size in whole MB, as the log and the status say it."""
    return "?" if size is None else f"{size // MB}"


def level_for(free: int, floor: int, current: Level) -> Level:
    """The level `free` bytes call for, given the current one (hysteresis): a step starts
    below its threshold (the floor, half the floor) and lifts at its threshold plus a
    quarter of the floor."""
    if floor <= 0:
        return Level.OFF
    margin = int(floor * HYSTERESIS)
    level = Level.OFF
    for step, threshold in ((Level.FRAMES, floor), (Level.LEAVES, floor // 2)):
        if free < threshold + (margin if current >= step else 0):
            level = step
    return level


def describe(
    level: Level | str, free: int | None, floor_mb: int, folder: Path | None = None
) -> str:
    """One line: what the guard does and why."""
    level = Level[level.upper()] if isinstance(level, str) else level
    where = "" if folder is None else f" in {folder}"
    if level is Level.OFF:
        return f"off ({mb(free)} MB free{where}; [storage] min_free_disk_mb = {floor_mb})"
    below = "below" if level is Level.FRAMES else "below half of"
    return (
        f"on: {mb(free)} MB free{where}, {below} [storage] min_free_disk_mb = {floor_mb};"
        f" not storing {NOT_STORED[level]}"
    )


@dataclass(slots=True)
class DiskGuard:
    """The guard's state. Changed by the writer thread only; read by anyone (the web's
    /api/status and /healthz): each attribute is replaced whole."""

    folder: Path
    floor_mb: int
    #: how free space is read (a test may give another)
    measure: Callable[[Path], int | None] = free_bytes
    level: Level = Level.OFF
    #: free bytes at the last check
    free: int | None = None
    #: when the level last changed (ms since the epoch); None before the first check
    since: int | None = None
    #: rows not stored since the guard last turned on
    frames_dropped: int = 0
    states_dropped: int = 0
    _next_check: float = 0.0

    @property
    def floor(self) -> int:
        return self.floor_mb * MB

    @property
    def lifts_at_mb(self) -> int:
        """The free space (MB) at which the current level lifts."""
        start = {Level.OFF: 0, Level.FRAMES: self.floor, Level.LEAVES: self.floor // 2}
        return (start[self.level] + int(self.floor * HYSTERESIS)) // MB

    def check(self, now: float | None = None, force: bool = False) -> Level | None:
        """Read the free space (at most once per CHECK_EVERY_SEC unless `force`); the new
        level if it changed, or on the first check. Writer thread only."""
        now = time.monotonic() if now is None else now
        if now < self._next_check and not force:
            return None
        self._next_check = now + CHECK_EVERY_SEC
        free = self.measure(self.folder)
        if free is None:
            return None  # nothing known: the guard stays as it is
        self.free = free
        level = level_for(free, self.floor, self.level)
        if level == self.level and self.since is not None:
            return None
        if self.level is Level.OFF and level is not Level.OFF:
            self.frames_dropped = self.states_dropped = 0
        self.level = level
        self.since = clock.wall_ms()
        return level

    @property
    def notice(self) -> str | None:
        """One line while the guard is on (for /healthz), else None."""
        if self.level is Level.OFF:
            return None
        return "disk guard " + describe(self.level, self.free, self.floor_mb)

    def as_dict(self) -> dict[str, Any]:
        """The guard as `/api/status` and the `meta` row show it."""
        return {
            "guard": self.level.name.lower(),
            "since": self.since,
            "free_mb": None if self.free is None else self.free // MB,
            "min_free_disk_mb": self.floor_mb,
            "folder": str(self.folder),
            "not_stored": NOT_STORED[self.level] or None,
            "dropped": {"frames": self.frames_dropped, "states": self.states_dropped},
        }

    def meta_value(self) -> str:
        return json.dumps(self.as_dict())
