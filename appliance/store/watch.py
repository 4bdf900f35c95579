"""What the MQTT bridge reads (README "Home Assistant and MQTT"): the `charge_point_status`
view, the few states discovery needs, control outcomes and — for `publish_all` — states
changed since the last look. One read connection of its own; blocking, called from a
worker thread. Cheap while nothing is committed (PRAGMA data_version)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.store.migrations import reading

#: states under `<prefix>.` that discovery and the switch/number entities need beside
#: the status view: the device (BootNotification) and controls the view does not show
EXTRA_STATES = (
    "info.vendor",
    "info.model",
    "info.firmwareVersion",
    "info.serialNumber",
    "info.chargeBoxSerialNumber",
    "control.availability",
    "control.chargeLimitType",
    "control.requestStartTransaction.idToken",
)


@dataclass(slots=True)
class Snapshot:
    """One look at the database; `status` is None when nothing was committed since the
    last look (and no re-read was asked for)."""

    #: identity → its charge_point_status row (with `prefix`)
    status: dict[str, dict[str, Any]] | None = None
    #: prefix → {name under the prefix: value} of EXTRA_STATES
    extra: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: control_outcomes rows (id, ts, value, ok, response, error, in_force) with ts >= since
    outcomes: list[tuple[Any, ...]] = field(default_factory=list)
    #: (id, val, lc) of states changed since the last look (publish_all)
    changed: list[tuple[str, Any, int]] = field(default_factory=list)


class StatusReader:
    def __init__(self, path: Path) -> None:
        self.connection = reading(path, read_only=True)
        self._data_version: int | None = None

    def close(self) -> None:
        self.connection.close()

    def look(self, force: bool, outcomes_since: int, states_since: int | None) -> Snapshot:
        """The status of every charge point (if anything was committed, or `force`),
        outcomes since `outcomes_since` (ms) and, when `states_since` is not None, the
        states whose value changed at or after it (a later commit may hold changes of
        the same millisecond)."""
        version = self.connection.execute("PRAGMA data_version").fetchone()[0]
        if version == self._data_version and not force:
            return Snapshot()
        self._data_version = version
        db = self.connection
        with db:  # one read transaction: one consistent moment
            db.execute("BEGIN")
            cursor = db.execute(
                "SELECT s.*, cp.prefix FROM charge_point_status AS s"
                " JOIN charge_points AS cp ON cp.identity = s.identity"
            )
            names = [d[0] for d in cursor.description]
            status = {row[0]: dict(zip(names, row, strict=True)) for row in cursor}
            extra: dict[str, dict[str, Any]] = {}
            for row in status.values():
                prefix = row["prefix"]
                ids = [f"{prefix}.{name}" for name in EXTRA_STATES]
                marks = ",".join("?" * len(ids))
                found = db.execute(f"SELECT id, val FROM states WHERE id IN ({marks})", ids)
                extra[prefix] = {i[len(prefix) + 1 :]: v for i, v in found}
            outcomes = db.execute(
                "SELECT id, ts, value, ok, response, error, in_force FROM control_outcomes"
                " WHERE ts >= ? ORDER BY ts",
                (outcomes_since,),
            ).fetchall()
            changed: list[tuple[str, Any, int]] = []
            if states_since is not None:
                changed = db.execute(
                    "SELECT id, val, lc FROM states WHERE lc >= ? ORDER BY id", (states_since,)
                ).fetchall()
        return Snapshot(status, extra, outcomes, changed)
