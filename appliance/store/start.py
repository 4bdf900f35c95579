"""What the appliance reads once at start, and the one thing a handler may ask of the
store before its answer: a 1.6 transaction id."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from appliance.domain import start_key
from appliance.store.rows import MetaValue

#: ids reserved ahead; renewed half-way, so the renewal has hundreds of starts to commit
TRANSACTION_ID_BLOCK = 1000
#: a session without a stop for this long is not taken as still running after a restart
OPEN_SESSION_MAX_AGE_MS = 7 * 24 * 3600 * 1000
#: how many 1.6 starts are remembered to recognise a StartTransaction repeated after a
#: lost answer; repeats come within minutes, a charger's offline queue is far shorter.
RECENT_STARTS = 1000

#: (identity, transaction id, evse, connector, start register, stop register, stopped)
SessionFacts = tuple[str, str, int | None, int | None, float | None, float | None, bool]


@dataclass(frozen=True, slots=True)
class Opened:
    """What the appliance reads once at start, before serving."""

    #: 1.6 transaction ids above this and up to `transaction_id_reserved` are free
    transaction_id_floor: int
    transaction_id_reserved: int
    recent_starts: dict[Hashable, int]
    #: sessions still running and recently stopped, oldest first
    sessions: list[SessionFacts]


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
        " meter_stop_wh, stopped_at IS NOT NULL FROM transactions WHERE seq IN ("
        "  SELECT seq FROM transactions WHERE stopped_at IS NULL AND transaction_id <> '-1'"
        "   AND updated_at > ?"
        "  UNION SELECT seq FROM (SELECT seq FROM transactions WHERE stopped_at IS NOT NULL"
        "   ORDER BY seq DESC LIMIT ?)"
        ") ORDER BY seq",
        (now - OPEN_SESSION_MAX_AGE_MS, RECENT_STARTS),
    ).fetchall()
    # Nobody is connected before the first connection of this run.
    with connection:
        connection.execute(
            "UPDATE states SET val = 0, ack = 1, ts = ?1,"
            " lc = CASE WHEN val IS 0 THEN lc ELSE ?1 END WHERE id LIKE '%.info.connected'",
            (now,),
        )
    restored = [(*row[:6], bool(row[6])) for row in sessions]
    return Opened(floor, floor + TRANSACTION_ID_BLOCK, recent, restored)


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
