"""What the appliance reads once at start, and the one thing a handler may ask of the
store before its answer: a 1.6 transaction id."""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

from appliance.domain import clock, start_key
from appliance.domain.meter import DEFAULT_MEASURAND, INSTANTANEOUS_UNITS
from appliance.domain.recent import forget_oldest
from appliance.store.rows import MetaValue

log = logging.getLogger("appliance.store")

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
    #: blocks of ids PostgreSQL granted this file, [first, end), ascending, those
    #: beyond the floor (README "A big site on several processes")
    transaction_id_grants: list[tuple[int, int]]
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
    now = clock.wall_ms()
    row = connection.execute(
        "SELECT value FROM meta WHERE key = 'transaction_id_reserved'"
    ).fetchone()
    floor = int(row[0]) if row else 0
    row = connection.execute(
        "SELECT value FROM meta WHERE key = 'transaction_id_grants'"
    ).fetchone()
    grants = [(a, b) for a, b in json.loads(row[0]) if b > floor + 1] if row else []
    reserved = ahead(floor, TRANSACTION_ID_BLOCK, grants)
    # Reserve the next block durably before any id of it is handed out: ids answered
    # but lost in a crash can then never be handed out again.
    with connection:
        connection.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('transaction_id_reserved', ?)",
            (reserved,),
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
            " lc = CASE WHEN val IS 0 THEN lc ELSE ?1 END WHERE id LIKE '%.info.connected'"
            " OR id GLOB '*.upstream.*.connected'",
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
    return Opened(floor, reserved, grants, recent, restored, statuses, charging_states, booted)


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


def following(after: int, grants: Sequence[tuple[int, int]]) -> int:
    """The id handed out after `after`: the next one of a granted block; without blocks,
    or past the last one, the next number."""
    for first, end in grants:
        if after + 1 < end:
            return max(after + 1, first)
    return after + 1


def ahead(after: int, count: int, grants: Sequence[tuple[int, int]]) -> int:
    """The id `count` ids after `after`."""
    for _ in range(count):
        after = following(after, grants)
    return after


def between(after: int, upto: int, grants: Sequence[tuple[int, int]]) -> int:
    """How many ids are handed out after `after` up to `upto`."""
    if not grants:
        return max(0, upto - after)
    spans = [*grants, (grants[-1][1], upto + 1)]
    return sum(max(0, min(end, upto + 1) - max(first, after + 1)) for first, end in spans)


class TransactionIds:
    """OCPP 1.6 transactionId: unique per appliance, monotonic, and it survives restarts
    (a restart skips the rest of the reserved block). A StartTransaction repeated after a
    lost answer gets its first id again.

    The one exception to "handlers write nothing" (README "On the wire"): the id must be
    durable before the answer. Ids are reserved in blocks at start and renewed half-way
    through a block, so handing one out writes nothing on the hot path.

    With [central], PostgreSQL grants the processes of a site disjoint blocks: a block
    is used once the file holds it (`confirm`), so a restart never hands out an id of a
    block twice (README "A big site on several processes")."""

    def __init__(self, opened: Opened, reserve: Callable[[MetaValue], None]) -> None:
        self._reserve = reserve
        self._grants = list(opened.transaction_id_grants)
        self._pending: list[tuple[int, int]] = []
        self._next = following(opened.transaction_id_floor, self._grants)
        self._reserved = opened.transaction_id_reserved
        self._recent: dict[Hashable, int] = dict(opened.recent_starts)
        self._warned = False
        #: with [central]: ids come from blocks PostgreSQL grants (`offer`)
        self.coordinated = False

    def start(self, key: Hashable) -> tuple[int, bool]:
        """The id for a start identified by `key` (see `start_key`), and whether it is new."""
        known = self._recent.get(key)
        if known is not None:
            return known, False
        transaction_id = self._next
        self._next = following(transaction_id, self._grants)
        if len(self._grants) > 1 and self._grants[0][1] <= self._next:
            del self._grants[0]  # used up (the last block stays: ids count on past it)
        if between(transaction_id, self._reserved, self._grants) < TRANSACTION_ID_BLOCK // 2:
            self._reserved = ahead(transaction_id, TRANSACTION_ID_BLOCK, self._grants)
            self._reserve(MetaValue("transaction_id_reserved", self._reserved))
        outside = not self._grants or transaction_id >= self._grants[-1][1]
        if self.coordinated and outside and not self._warned:
            self._warned = True
            log.warning(
                "1.6 transaction ids: no block granted by PostgreSQL left; counting on"
                " from %d until it grants one (another process of the site may hand out"
                " the same ids meanwhile)",
                transaction_id,
            )
        self._recent[key] = transaction_id
        self._recent = forget_oldest(self._recent, RECENT_STARTS)
        return transaction_id, True

    @property
    def floor(self) -> int:
        """No id at or below this is handed out again by this file."""
        return max(self._reserved, *(end - 1 for _, end in self._pending), 0)

    def left(self) -> int:
        """Ids left in the granted blocks, those waiting for `confirm` included."""
        blocks = [*self._grants, *self._pending]
        return sum(max(0, end - max(first, self._next)) for first, end in blocks)

    def offer(self, first: int, end: int) -> None:
        """A block PostgreSQL granted: written into the file; used once `confirm` sees it
        there. Without a block in use, the reservation moves into it in the same write."""
        self._pending.append((first, end))
        self._reserve(MetaValue("transaction_id_grants", self._held()))
        if not self._grants or self._next >= self._grants[-1][1]:
            self._reserved = max(self._reserved, first + TRANSACTION_ID_BLOCK - 1)
            self._reserve(MetaValue("transaction_id_reserved", self._reserved))

    def confirm(self, committed: Sequence[Sequence[int]]) -> None:
        """The blocks the file holds now (meta `transaction_id_grants`): those offered
        are used from now on."""
        held = {(int(a), int(b)) for a, b in committed}
        for block in [b for b in self._pending if b in held]:
            self._pending.remove(block)
            log.info("1.6 transaction ids: from PostgreSQL's block %d–%d", block[0], block[1] - 1)
            self._grants.append(block)
            self._grants.sort()
            self._warned = False
            self._next = following(self._next - 1, self._grants)

    def _held(self) -> str:
        blocks = sorted(b for b in [*self._grants, *self._pending] if b[1] > self._next)
        return json.dumps(blocks)
