"""What the appliance reads once at start, and the one thing a handler may ask of the
store before its answer: a 1.6 transaction id."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from appliance.domain import start_key
from appliance.domain.meter import DEFAULT_MEASURAND, INSTANTANEOUS_UNITS
from appliance.store.rows import MetaValue

#: ids reserved ahead; renewed half-way, so the renewal has hundreds of starts to commit
TRANSACTION_ID_BLOCK = 1000
#: a session without a stop for this long is not taken as still running after a restart
OPEN_SESSION_MAX_AGE_MS = 7 * 24 * 3600 * 1000
#: how many 1.6 starts are remembered to recognise a StartTransaction repeated after a
#: lost answer; repeats come within minutes, a charger's offline queue is far shorter.
RECENT_STARTS = 1000


@dataclass(frozen=True, slots=True)
class SessionFacts:
    """A session as the appliance knew it before it stopped (`transactions`)."""

    identity: str
    transaction_id: str
    evse_id: int | None
    connector_id: int | None
    start: float | None  # energy register at start
    stop: float | None
    stopped: bool
    #: appliance clock (ms) of its latest event
    updated_at: int
    #: the latest register reading of a running session (`meter_values`)
    now: float | None


@dataclass(frozen=True, slots=True)
class StatusFact:
    """The latest raw status of a connector (evse None: the station, 1.6 connector 0),
    and when it last changed (ms, `states.lc`)."""

    identity: str
    evse_id: int | None
    connector_id: int | None
    status: str
    changed_at: int


@dataclass(frozen=True, slots=True)
class Opened:
    """What the appliance reads once at start, before serving."""

    #: 1.6 transaction ids above this and up to `transaction_id_reserved` are free
    transaction_id_floor: int
    transaction_id_reserved: int
    recent_starts: dict[Hashable, int]
    #: sessions still running and recently stopped, oldest first
    sessions: list[SessionFacts]
    #: what each charge point said last about its connectors (README "`charge_point_status`": the
    #: state follows the last known status at once when it reconnects)
    statuses: list[StatusFact]
    #: (identity, evse) → 2.x chargingState last reported
    charging_states: dict[tuple[str, int], str]
    #: charge points whose boot the database has seen (README "On the wire": a CALL to
    #: one that reconnects silently goes out after a grace)
    booted: frozenset[str]


def read_start_state(connection: sqlite3.Connection) -> Opened:
    now = time.time_ns() // 1_000_000
    row = connection.execute(
        "SELECT value FROM meta WHERE key = 'transaction_id_reserved'"
    ).fetchone()
    floor = int(row[0]) if row else 0
    # Reserve the next block durably before any id of it is handed out: ids answered
    # but lost in a crash can then never be handed out again.
    with connection:
        connection.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('transaction_id_reserved', ?)",
            (floor + TRANSACTION_ID_BLOCK,),
        )
    starts = connection.execute(
        "SELECT identity, evse_id, id_token, meter_start_wh, started_at, transaction_id"
        " FROM transactions WHERE started_at IS NOT NULL ORDER BY seq DESC LIMIT ?",
        (RECENT_STARTS,),
    ).fetchall()
    recent: dict[Hashable, int] = {
        start_key(*r[:5]): int(r[5]) for r in starts if str(r[5]).isdigit()
    }
    sessions = connection.execute(
        "SELECT identity, transaction_id, evse_id, connector_id, meter_start_wh,"
        " meter_stop_wh, stopped_at IS NOT NULL, updated_at, received_at FROM transactions"
        " WHERE seq IN ("
        "  SELECT seq FROM transactions WHERE stopped_at IS NULL AND transaction_id <> '-1'"
        "   AND updated_at > ?"
        "  UNION SELECT seq FROM (SELECT seq FROM transactions WHERE stopped_at IS NOT NULL"
        "   ORDER BY seq DESC LIMIT ?)"
        ") ORDER BY seq",
        (now - OPEN_SESSION_MAX_AGE_MS, RECENT_STARTS),
    ).fetchall()
    restored = [
        SessionFacts(
            identity,
            tid,
            evse,
            connector,
            start,
            stop,
            bool(stopped),
            updated_at or 0,
            None if stopped else _last_register(connection, identity, tid, evse, received_at),
        )
        for identity, tid, evse, connector, start, stop, stopped, updated_at, received_at in (
            sessions
        )
    ]
    statuses, charging_states, booted = _connectors(connection)
    # Nobody is connected before the first connection of this run (also after a crash,
    # which wrote no disconnect): every state is `offline`, and power and current are
    # not known (README "Readings").
    with connection:
        connection.execute(
            "UPDATE states SET val = 0, ack = 1, ts = ?1,"
            " lc = CASE WHEN val IS 0 THEN lc ELSE ?1 END WHERE id LIKE '%.info.connected'",
            (now,),
        )
        connection.execute(
            "UPDATE states SET val = 'offline', ack = 1, ts = ?1, lc = ?1"
            " WHERE val IS NOT 'offline' AND id IN ("
            "  SELECT s.id FROM charge_points AS cp JOIN states AS s"
            "  ON s.id = cp.prefix || '.info.state' OR s.id > cp.prefix || '.evse.'"
            "   AND s.id < cp.prefix || '.evse/' AND s.id GLOB '*.connector.*.state')",
            (now,),
        )
        units = ", ".join(f"'{unit}'" for unit in sorted(INSTANTANEOUS_UNITS))
        connection.execute(
            "UPDATE states SET val = NULL, ts = ?1, lc = ?1 WHERE val IS NOT NULL AND id IN ("
            " SELECT o.id FROM charge_points AS cp JOIN objects AS o"
            f" ON o.unit IN ({units}) AND ("
            "  o.id > cp.prefix || '.meterValues.' AND o.id < cp.prefix || '.meterValues/'"
            "  OR o.id > cp.prefix || '.evse.' AND o.id < cp.prefix || '.evse/'))",
            (now,),
        )
    return Opened(
        floor, floor + TRANSACTION_ID_BLOCK, recent, restored, statuses, charging_states, booted
    )


def _last_register(
    connection: sqlite3.Connection,
    identity: str,
    transaction_id: str,
    evse_id: int | None,
    since_ms: int,
) -> float | None:
    """The newest energy register stored for a running session: its own, or (1.6 leaves
    transactionId out of MeterValues) its connector's since it started. The newest rows
    come first in the identity's index, so this reads only the session's own rows."""
    row = connection.execute(
        "SELECT value FROM meter_values WHERE identity = ? AND received_at >= ?"
        " AND measurand = ? AND phase IS NULL"
        " AND (transaction_id = ? OR transaction_id IS NULL AND evse_id IS ?)"
        " ORDER BY received_at DESC, seq DESC LIMIT 1",
        (identity, since_ms, DEFAULT_MEASURAND, transaction_id, evse_id),
    ).fetchone()
    return None if row is None else float(row[0])


def _connectors(
    connection: sqlite3.Connection,
) -> tuple[list[StatusFact], dict[tuple[str, int], str], frozenset[str]]:
    """The last status of every connector, the 2.x charging state of every EVSE, and
    which charge points booted, from `states`."""
    statuses: list[StatusFact] = []
    charging: dict[tuple[str, int], str] = {}
    booted: set[str] = set()
    rows = connection.execute(
        "SELECT cp.identity, substr(s.id, length(cp.prefix) + 2), s.val, s.lc"
        " FROM charge_points AS cp JOIN states AS s"
        " ON s.id > cp.prefix || '.evse.' AND s.id < cp.prefix || '.evse/'"
        "  AND (s.id GLOB '*.status' OR s.id GLOB '*.chargingState')"
        " OR s.id IN (cp.prefix || '.info.status', cp.prefix || '.info.lastBoot')"
    ).fetchall()
    for identity, path, value, changed_at in rows:
        parts = path.split(".")
        if path == "info.lastBoot":
            booted.add(identity)
        elif not isinstance(value, str):
            continue
        elif path == "info.status":
            statuses.append(StatusFact(identity, None, None, value, changed_at or 0))
        elif len(parts) == 5 and parts[1].isdigit() and parts[3].isdigit():
            if parts[2] == "connector" and parts[4] == "status":
                statuses.append(
                    StatusFact(identity, int(parts[1]), int(parts[3]), value, changed_at or 0)
                )
        elif len(parts) == 3 and parts[1].isdigit() and parts[2] == "chargingState":
            charging[(identity, int(parts[1]))] = value
    return statuses, charging, frozenset(booted)


class TransactionIds:
    """OCPP 1.6 transactionId: unique per appliance, monotonic, and it survives restarts
    (a restart skips the rest of the reserved block). A StartTransaction repeated after a
    lost answer gets its first id again.

    The one exception to "handlers write nothing" (README "On the wire"): the id must be
    durable before the answer. Ids are reserved in blocks at start and renewed half-way
    through a block, so handing one out writes nothing on the hot path."""

    def __init__(self, opened: Opened, reserve: Callable[[MetaValue], None]) -> None:
        self._reserve = reserve
        self._next = opened.transaction_id_floor + 1
        self._reserved = opened.transaction_id_reserved
        self._recent: dict[Hashable, int] = dict(opened.recent_starts)

    def start(self, key: Hashable) -> tuple[int, bool]:
        """The id for a start identified by `key` (see `start_key`), and whether it is new."""
        known = self._recent.get(key)
        if known is not None:
            return known, False
        transaction_id = self._next
        self._next += 1
        if self._reserved - transaction_id < TRANSACTION_ID_BLOCK // 2:
            self._reserved += TRANSACTION_ID_BLOCK
            self._reserve(MetaValue("transaction_id_reserved", self._reserved))
        self._recent[key] = transaction_id
        if len(self._recent) > RECENT_STARTS:
            del self._recent[next(iter(self._recent))]
        return transaction_id, True
