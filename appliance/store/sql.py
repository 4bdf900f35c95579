"""Every statement the writer runs, by the record type it writes."""

from __future__ import annotations

from appliance.store.rows import (
    ChargePointRow,
    CommandDone,
    ConnectionRow,
    ControlOutcome,
    FrameRow,
    InForce,
    MetaValue,
    MeterValueRow,
    Replicated,
    SessionsShifted,
    TransactionRow,
    UpstreamDelivered,
    UpstreamQueued,
    UpstreamTransaction,
)

INSERT_MESSAGE = (
    "INSERT INTO messages (ts, identity, protocol, direction, message_type, message_id,"
    " action, payload, violation, redacted, peer) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# README "A second backend": what waits for an upstream, and its 1.6 transaction ids
QUEUE_UPSTREAM = (
    "INSERT OR IGNORE INTO upstream_queue (upstream, identity, key, action, payload,"
    " queued_at, local_id) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
UPSTREAM_DELIVERED = "DELETE FROM upstream_queue WHERE upstream = ? AND identity = ? AND key = ?"
UPSTREAM_TRANSACTION = (
    "INSERT OR REPLACE INTO upstream_transactions (upstream, identity, local_id, remote_id)"
    " VALUES (?, ?, ?, ?)"
)
INSERT_CONNECTION = (
    "INSERT INTO connection_log (ts, identity, remote_addr, protocol, event, reason)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)
INSERT_CHARGE_POINT = (
    "INSERT INTO charge_points (identity, prefix, first_seen) VALUES (?, ?, ?)"
    " ON CONFLICT (identity) DO NOTHING"
)
INSERT_METER_VALUE = (
    "INSERT INTO meter_values (identity, evse_id, connector_id, transaction_id, sampled_at,"
    " measurand, phase, location, context, unit, value, received_at, time_suspect)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# One statement for every session event, 1.6 or 2.x (README "On the wire"): fields already
# known are kept; energy = stop − start. Parameters in TransactionRow's order.
TRANSACTION_EVENT = (
    "INSERT INTO transactions (identity, transaction_id, evse_id, connector_id, id_token,"
    " started_at, stopped_at, meter_start_wh, meter_stop_wh, energy_wh, stop_reason,"
    " received_at, time_suspect, seq_no, offline, updated_at)"
    " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9 - ?8, ?10, ?11, ?12, ?13, ?14, ?11)"
    " ON CONFLICT (identity, transaction_id) WHERE transaction_id <> '-1' DO UPDATE SET"
    " evse_id = coalesce(evse_id, excluded.evse_id),"
    " connector_id = coalesce(connector_id, excluded.connector_id),"
    " id_token = coalesce(id_token, excluded.id_token),"
    " started_at = coalesce(started_at, excluded.started_at),"
    " stopped_at = coalesce(stopped_at, excluded.stopped_at),"
    " meter_start_wh = coalesce(meter_start_wh, excluded.meter_start_wh),"
    " meter_stop_wh = coalesce(meter_stop_wh, excluded.meter_stop_wh),"
    " energy_wh = coalesce(meter_stop_wh, excluded.meter_stop_wh)"
    "   - coalesce(meter_start_wh, excluded.meter_start_wh),"
    " stop_reason = coalesce(stop_reason, excluded.stop_reason),"
    " time_suspect = time_suspect OR excluded.time_suspect,"
    " seq_no = max(coalesce(seq_no, excluded.seq_no), coalesce(excluded.seq_no, seq_no)),"
    " offline = offline OR excluded.offline,"
    " updated_at = excluded.updated_at"
)
# README "Storage design": a step of the appliance's clock moves the running sessions
# onto the new clock
SHIFT_SESSIONS = (
    "UPDATE transactions SET received_at = received_at + ?1, updated_at = updated_at + ?1"
    " WHERE stopped_at IS NULL AND updated_at >= ?2"
)
SET_META = "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)"
SET_OUTCOME = (
    "INSERT OR REPLACE INTO control_outcomes (id, ts, value, ok, response, error, in_force,"
    " note) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
SET_REPLICATED = "INSERT OR REPLACE INTO replication (name, watermark, ts) VALUES (?, ?, ?)"
# README "Controls": in_force is what the state shows, also when the charge point changed
# the value itself
SET_IN_FORCE = "UPDATE control_outcomes SET in_force = ?1 WHERE id = ?2 AND in_force IS NOT ?1"
# ack = 1: the appliance confirms what it writes; lc moves only when the value changes
# (parameters id, val, ts, ts: positional only, so that many rows go in one statement)
UPSERT_STATE = (
    "INSERT INTO states (id, val, ack, ts, lc) VALUES (?, ?, 1, ?, ?)"
    " ON CONFLICT (id) DO UPDATE SET val = excluded.val, ack = 1, ts = excluded.ts,"
    " lc = CASE WHEN val IS excluded.val THEN lc ELSE excluded.ts END"
)
INSERT_STATE_DEFAULT = (
    "INSERT INTO states (id, val, ack, ts, lc) VALUES (?1, ?2, 1, ?3, ?3)"
    " ON CONFLICT (id) DO NOTHING"
)
UPSERT_OBJECT = (
    "INSERT INTO objects (id, type, role, unit, writable, name) VALUES (?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (id) DO UPDATE SET type = excluded.type, role = excluded.role,"
    " unit = excluded.unit, writable = excluded.writable, name = excluded.name"
)
# Controls (README "Controls"). A command is acknowledged only if no newer command for
# the same id is queued: that one runs next, and its row must stay at ack = 0 until it has.
ACK_COMMAND = (
    "UPDATE states SET ack = 1, val = ?2, ts = ?3,"
    " lc = CASE WHEN val IS ?2 THEN lc ELSE ?3 END"
    " WHERE id = ?1 AND ack = 0"
    " AND NOT EXISTS (SELECT 1 FROM control_queue WHERE id = ?1 AND seq > ?4)"
)
COMMAND_DONE = "DELETE FROM control_queue WHERE seq = ?"
# What any tool may do (README "Controls"): the trigger on `states` queues it
WRITE_CONTROL = (
    "INSERT INTO states (id, val, ack) VALUES (?, ?, 0)"
    " ON CONFLICT (id) DO UPDATE SET val = excluded.val, ack = 0, ts = excluded.ts,"
    " lc = CASE WHEN val IS excluded.val THEN lc ELSE excluded.ts END"
)

#: the statement of each row type: the row's fields are its parameters, in order
STATEMENT: dict[type, str] = {
    FrameRow: INSERT_MESSAGE,
    ConnectionRow: INSERT_CONNECTION,
    ChargePointRow: INSERT_CHARGE_POINT,
    MeterValueRow: INSERT_METER_VALUE,
    TransactionRow: TRANSACTION_EVENT,
    MetaValue: SET_META,
    SessionsShifted: SHIFT_SESSIONS,
    ControlOutcome: SET_OUTCOME,
    InForce: SET_IN_FORCE,
    Replicated: SET_REPLICATED,
    UpstreamQueued: QUEUE_UPSTREAM,
    UpstreamDelivered: UPSTREAM_DELIVERED,
    UpstreamTransaction: UPSTREAM_TRANSACTION,
}

#: the tables that only grow, written in arrival order apart from the other rows
#: (writer `_Batch`)
APPENDED = (INSERT_MESSAGE, INSERT_METER_VALUE)


def _multi_row(statement: str) -> tuple[str, str, str]:
    """A single-row INSERT … VALUES (…) [tail] as (head, one row's values, tail)."""
    head, _, rest = statement.partition(" VALUES ")
    values, _, tail = rest.partition(")")
    return head + " VALUES ", values + ")", tail


#: statements that take many rows at once: INSERT … VALUES with positional parameters
MULTI_ROW: dict[str, tuple[str, str, str]] = {
    s: _multi_row(s)
    for s in (INSERT_MESSAGE, INSERT_METER_VALUE, INSERT_CONNECTION, UPSERT_STATE, UPSERT_OBJECT)
}
#: rows per multi-row statement, largest first: a few fixed shapes the statement cache
#: keeps. Not 256: SQLite holds a prepared statement's program and registers for as long
#: as it is cached, 0.3 MB for 256 rows of `messages` or `meter_values`, 1 MB for the
#: five tables, for the gain of a few steps in a flush of thousands of rows (issue 21)
CHUNK_SIZES = (64, 16, 4, 1)

#: rows shed first while the database cannot be written: copies of frames, then readings
SHED_ORDER: tuple[tuple[type, str], ...] = (
    (FrameRow, "frame copies"),
    (MeterValueRow, "meter values"),
)

__all__ = ["STATEMENT", "CommandDone"]
